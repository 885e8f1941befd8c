"""Writers of realistic test documents (PDF, scanned PDF, damaged PDF, HTML, DOCX) for tests and bench/.

Every writer is deterministic (fixed dates, ids and zip timestamps: the same call gives the same bytes)
and fast (a few milliseconds a document). The texts come from the caller; `SAMPLE_PAGES` is a ready
three-page patient leaflet whose last page holds facts found nowhere else (`SAMPLE_PAGE3_FACTS`).

Blocks: a document body is a list of `(kind, content)` blocks:
    ("h1", text)          a section heading (PDF: Helvetica-Bold 16; HTML: <h2>; DOCX: Heading 1)
    ("h2", text)          a subsection heading (PDF: Helvetica-Bold 13; HTML: <h3>; DOCX: Heading 2)
    ("p", text)           a paragraph (PDF: Helvetica 10.5, wrapped)
    ("li", text)          a bullet item; consecutive items form one list
    ("table", rows)       rows of cell strings, the first row is the header
A PDF takes `pages`, a list of such block lists (one page break after each); HTML and DOCX take one
block list (`flatten(pages)` joins pages). The document title is separate: it goes into the metadata,
the running header of each PDF page, the HTML <title>/<h1> and the DOCX core properties/Title paragraph.

    make_pdf(path, pages, title=None, outline=False, password=None) -> Path
    make_image_pdf(path, text, title=None) -> Path
    make_damaged_pdf(path) -> Path
    make_html(path, title, sections, nav_words, cookie_words, footer_words, semantic=True) -> Path
    make_docx(path, title, sections) -> Path
    flatten(pages) -> blocks;  blocks_text(blocks) -> str (the body text a perfect extractor returns)
"""

from __future__ import annotations

import datetime as _dt
import html as _html
import io
import random
import zipfile
from pathlib import Path
from typing import Iterable, Sequence

Block = tuple  # ("h1" | "h2" | "p" | "li", str) or ("table", list[list[str]])

FIXED_DATE = _dt.datetime(2024, 1, 15, 9, 30, 0)
AUTHOR = "medsearch test factory"

# ---------------------------------------------------------------------------------------------
# Sample content: a patient leaflet, 3 pages of ~250-400 words each. Written for medsearch tests;
# general information only, not medical advice.
# ---------------------------------------------------------------------------------------------

SAMPLE_TITLE = "Paracetamol 500 mg tablets: information for the patient"

SAMPLE_PAGES: list[list[Block]] = [
    [  # page 1: overview, symptoms
        ("h1", "Overview"),
        ("p", "Paracetamol is a pain reliever and a fever reducer. It is used for mild to moderate pain "
              "such as headache, toothache, period pain, back pain and the aches of colds and flu, and to "
              "bring down a high temperature. It does not reduce swelling in the way that ibuprofen and "
              "other anti-inflammatory medicines do, but it is gentler on the stomach and can be taken by "
              "most people, including those with asthma or a history of stomach ulcers."),
        ("p", "Each white, capsule-shaped tablet contains 500 milligrams of paracetamol. The other "
              "ingredients are maize starch, povidone, potassium sorbate, talc and stearic acid. The "
              "tablets are scored so that they can be broken in half to make them easier to swallow, "
              "but the halves are not meant to give a smaller dose."),
        ("p", "Read all of this leaflet carefully before you start taking this medicine, because it "
              "contains important information for you. Keep the leaflet: you may need to read it again. "
              "Ask your pharmacist if you need more information or advice."),
        ("h1", "Symptoms it can help with"),
        ("p", "Paracetamol eases pain and lowers a raised temperature, but it does not treat the cause. "
              "A cold usually clears up on its own within seven to ten days, and most tension headaches "
              "settle within a few hours. Typical reasons to take a dose include:"),
        ("li", "a headache or migraine without vomiting"),
        ("li", "toothache or pain after a dental procedure"),
        ("li", "muscle aches, sprains and back pain"),
        ("li", "fever and aches caused by a cold, flu or COVID-19"),
        ("li", "pain and fever after childhood vaccinations"),
        ("p", "The tablets start to work within about thirty to sixty minutes, and the effect lasts for "
              "roughly four to six hours. Taking more than the recommended dose does not relieve pain any "
              "better, and it can seriously harm your liver."),
    ],
    [  # page 2: dosage
        ("h1", "Dosage"),
        ("p", "Always take this medicine exactly as described in this leaflet or as your doctor or "
              "pharmacist has told you. Swallow the tablets whole with a glass of water. They can be taken "
              "with or without food. Leave at least four hours between doses."),
        ("h2", "Adults"),
        ("p", "Adults and young people aged 16 years and over should take one or two tablets every four "
              "to six hours when needed. Do not take more than eight tablets, which is 4 grams, in any 24 "
              "hours. If you weigh less than 50 kilograms, drink alcohol regularly or have liver problems, "
              "your doctor may advise a lower maximum dose. Do not take this medicine for more than three "
              "days for a fever or more than five days for pain without speaking to a doctor."),
        ("h2", "Children"),
        ("p", "Children aged 10 to 15 years can take one tablet every four to six hours, with no more than "
              "four doses in 24 hours. Tablets are not suitable for children under 10 years; use a liquid "
              "paracetamol made for children instead, measured with the syringe or spoon provided. The "
              "dose for a child depends on age and weight, so always check the label of the liquid."),
        ("table", [
            ["Age", "Dose", "How often", "Maximum in 24 hours"],
            ["16 years and over", "1 or 2 tablets", "every 4 to 6 hours", "8 tablets"],
            ["12 to 15 years", "1 tablet", "every 4 to 6 hours", "4 tablets"],
            ["10 to 11 years", "1 tablet", "every 4 to 6 hours", "4 tablets"],
        ]),
        ("h2", "Other medicines that contain paracetamol"),
        ("p", "Many cold and flu remedies, powders and combined painkillers already contain paracetamol. "
              "Do not take them together with these tablets, because it is easy to go over the maximum "
              "daily dose without noticing. Check the label of every other medicine you take, or ask "
              "your pharmacist to check for you. Tell your doctor if you take warfarin regularly, because "
              "daily paracetamol for several days can make your blood thinner than intended."),
    ],
    [  # page 3: side effects, when to see a doctor, storage (facts found only here)
        ("h1", "Side effects"),
        ("p", "Like all medicines, paracetamol can cause side effects, although they are rare when it is "
              "taken at the recommended dose. Stop taking the tablets and get medical help at once if you "
              "notice a skin rash with peeling or blistering, swelling of the lips, tongue or throat, or "
              "difficulty breathing: these can be signs of a serious allergic reaction."),
        ("p", "Very rarely, fewer than one in ten thousand people develop a blood disorder with unusual "
              "bruising, bleeding or frequent infections such as sore throats and mouth ulcers. Long-term "
              "use at high doses has been linked to kidney and liver damage."),
        ("h1", "When to see a doctor"),
        ("p", "Speak to a doctor if the pain or fever lasts longer than three days, keeps coming back, or "
              "gets worse despite the tablets. A temperature above 39.5 degrees Celsius in an adult, a stiff "
              "neck, a purple rash that does not fade under a pressed glass, confusion or severe drowsiness "
              "needs urgent medical attention."),
        ("p", "If you take too many tablets, go to the nearest emergency department straight away, even if "
              "you feel well. The first signs of liver damage may not appear until 24 to 72 hours after an "
              "overdose, when treatment with the antidote acetylcysteine works less well. Take the carton "
              "and this leaflet with you. An overdose is most dangerous in people who are fasting, "
              "underweight or who drink more than 14 units of alcohol a week."),
        ("h1", "Storage and further information"),
        ("p", "Store the tablets below 25 degrees Celsius in the original blister strips to protect them "
              "from moisture. Keep them out of the sight and reach of children. Do not use them after the "
              "expiry date printed on the carton, which is 36 months after manufacture. Do not throw "
              "medicines away in household waste water; ask your pharmacist how to dispose of them."),
        ("p", "The marketing authorisation holder is Northbrook Generics Limited, and the tablets are made "
              "at its plant in Lindfield under licence number PL 40917/0032. This leaflet was last revised "
              "in March 2023."),
    ],
]

# Questions answered only on page 3 of SAMPLE_PAGES (word sets a test can look for in the answer).
SAMPLE_PAGE3_FACTS = [
    {"question": "How long after a paracetamol overdose do signs of liver damage appear?",
     "answer": "24 to 72 hours", "page": 3},
    {"question": "What is the antidote for a paracetamol overdose?", "answer": "acetylcysteine", "page": 3},
    {"question": "What is the licence number of the paracetamol tablets?", "answer": "PL 40917/0032", "page": 3},
    {"question": "At what temperature should paracetamol tablets be stored?",
     "answer": "below 25 degrees Celsius", "page": 3},
]

SAMPLE_NAV_WORDS = ["Home", "Conditions", "Medicines", "Symptoms checker", "Find a pharmacy", "Newsletter"]
SAMPLE_COOKIE_WORDS = ["cookies", "analytics", "personalise", "advertising", "preferences"]
SAMPLE_FOOTER_WORDS = ["Copyright", "Accessibility", "Privacy", "Terms", "Contact", "Sitemap"]


def flatten(pages: Sequence[Sequence[Block]]) -> list[Block]:
    """One block list from a list of pages."""
    return [block for page in pages for block in page]


def blocks_text(blocks: Iterable[Block], *, tables: bool = True) -> str:
    """The body text of `blocks`, one block a line (table rows as cells joined by spaces)."""
    lines = []
    for kind, content in blocks:
        if kind == "table":
            if tables:
                lines.extend(" ".join(row) for row in content)
        else:
            lines.append(content)
    return "\n".join(lines)


def _group(blocks: Iterable[Block]) -> list[Block]:
    """Consecutive "li" blocks as one ("ul", [items]) block."""
    out: list[Block] = []
    for kind, content in blocks:
        if kind == "li":
            if out and out[-1][0] == "ul":
                out[-1][1].append(content)
            else:
                out.append(("ul", [content]))
        elif kind in ("h1", "h2", "p", "table"):
            out.append((kind, content))
        else:
            raise ValueError(f"unknown block kind {kind!r}")
    return out


# ---------------------------------------------------------------------------------------------
# PDF
# ---------------------------------------------------------------------------------------------


def _pdf_styles():
    from reportlab.lib.styles import ParagraphStyle

    return {
        "h1": ParagraphStyle("h1", fontName="Helvetica-Bold", fontSize=16, leading=20, spaceBefore=8, spaceAfter=6),
        "h2": ParagraphStyle("h2", fontName="Helvetica-Bold", fontSize=13, leading=16, spaceBefore=6, spaceAfter=4),
        "p": ParagraphStyle("p", fontName="Helvetica", fontSize=10.5, leading=14, spaceAfter=6),
        "li": ParagraphStyle("li", fontName="Helvetica", fontSize=10.5, leading=14, leftIndent=18,
                             bulletIndent=6, spaceAfter=2),
        "cell": ParagraphStyle("cell", fontName="Helvetica", fontSize=9.5, leading=12),
    }


def make_pdf(path, pages: Sequence[Sequence[Block]], title: str | None = None, outline: bool = False,
             password: str | None = None) -> Path:
    """An A4 text PDF: one PDF page per item of `pages` (raises ValueError if a page's blocks overflow).

    Each page has a running header (the title, or "Patient information") with a rule under it and a
    "Page N of M" footer. `title` goes into the metadata; `outline=True` adds a bookmark per heading
    (h1 level 0, h2 level 1); `password` encrypts with RC4 (user password = owner password = `password`).
    """
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.units import mm
    from reportlab.platypus import (
        BaseDocTemplate,
        Frame,
        PageBreak,
        PageTemplate,
        Paragraph,
        Table,
        TableStyle,
    )

    path = Path(path)
    styles = _pdf_styles()
    total = len(pages)
    header_text = title or "Patient information"
    width, height = A4

    def decorate(canv, doc):
        canv.saveState()
        canv.setFont("Helvetica", 8.5)
        canv.setFillColor(colors.HexColor("#444444"))
        canv.drawString(20 * mm, height - 13 * mm, header_text)
        canv.drawRightString(width - 20 * mm, height - 13 * mm, "Northbrook Health")
        canv.setStrokeColor(colors.HexColor("#888888"))
        canv.line(20 * mm, height - 15 * mm, width - 20 * mm, height - 15 * mm)
        canv.drawCentredString(width / 2, 10 * mm, f"Page {doc.page} of {total}")
        canv.restoreState()

    class _Doc(BaseDocTemplate):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._level = -1
            self._n = 0

        def afterFlowable(self, flowable):
            if not outline or not isinstance(flowable, Paragraph):
                return
            name = flowable.style.name
            if name not in ("h1", "h2"):
                return
            level = min(0 if name == "h1" else 1, self._level + 1)
            self._level = level
            self._n += 1
            key = f"heading-{self._n}"
            self.canv.bookmarkPage(key)
            self.canv.addOutlineEntry(flowable.getPlainText(), key, level=level, closed=False)

    buffer = io.BytesIO()
    doc = _Doc(buffer, pagesize=A4, leftMargin=20 * mm, rightMargin=20 * mm, topMargin=22 * mm,
               bottomMargin=18 * mm, title=title or "", author=AUTHOR, subject=title or "",
               creator="medsearch tests", producer="medsearch tests", invariant=1, encrypt=password,
               pageCompression=1)
    frame = Frame(doc.leftMargin, doc.bottomMargin, doc.width, doc.height, id="body")
    doc.addPageTemplates([PageTemplate(id="page", frames=[frame], onPage=decorate)])

    story = []
    for number, page in enumerate(pages):
        for kind, content in _group(page):
            if kind == "ul":
                story.extend(Paragraph(_html.escape(item, quote=False), styles["li"], bulletText="\u2022")
                             for item in content)
            elif kind == "table":
                rows = [[Paragraph(_html.escape(c, quote=False), styles["cell"]) for c in row] for row in content]
                table = Table(rows, colWidths=[doc.width / len(content[0])] * len(content[0]), hAlign="LEFT")
                table.setStyle(TableStyle([
                    ("GRID", (0, 0), (-1, -1), 0.5, colors.grey),
                    ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#e8eef4")),
                    ("VALIGN", (0, 0), (-1, -1), "TOP"),
                ]))
                story.append(table)
            else:
                story.append(Paragraph(_html.escape(content, quote=False), styles[kind]))
        if number < total - 1:
            story.append(PageBreak())
    doc.build(story)
    if doc.page != total:
        raise ValueError(f"{total} pages of blocks laid out on {doc.page} PDF pages: a page overflows")
    path.write_bytes(buffer.getvalue())
    return path


def _font(size: int):
    from PIL import ImageFont

    try:
        import matplotlib

        ttf = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
        return ImageFont.truetype(str(ttf), size)
    except Exception:  # noqa: BLE001 - no matplotlib / no freetype: Pillow's own font
        return ImageFont.load_default(size)


def make_image_pdf(path, text: str, title: str | None = None) -> Path:
    """A scanned-looking one-page A4 PDF: `text` rendered into a grey PNG (150 dpi, slight tilt and
    speckle) drawn over the whole page. There is no text layer: text extractors find nothing."""
    from PIL import Image, ImageDraw
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.utils import ImageReader
    from reportlab.pdfgen import canvas

    path = Path(path)
    dpi = 150
    w_px, h_px = int(A4[0] / 72 * dpi), int(A4[1] / 72 * dpi)
    image = Image.new("L", (w_px, h_px), 246)
    draw = ImageDraw.Draw(image)
    font = _font(26)
    margin, y, line_h = 120, 140, 38
    max_w = w_px - 2 * margin
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split():
            trial = f"{line} {word}".strip()
            if draw.textlength(trial, font=font) > max_w and line:
                draw.text((margin, y), line, fill=25, font=font)
                y += line_h
                line = word
            else:
                line = trial
        if line:
            draw.text((margin, y), line, fill=25, font=font)
            y += line_h
        y += line_h // 2
        if y > h_px - 150:
            break
    rng = random.Random(1234)  # speckle, deterministic
    pixels = image.load()
    for _ in range(2500):
        pixels[rng.randrange(w_px), rng.randrange(h_px)] = rng.randrange(120, 200)
    image = image.rotate(0.6, resample=Image.BICUBIC, fillcolor=246)
    png = io.BytesIO()
    image.save(png, format="PNG", optimize=False)
    png.seek(0)

    buffer = io.BytesIO()
    canv = canvas.Canvas(buffer, pagesize=A4, invariant=1, pageCompression=1)
    canv.setTitle(title or "Scanned document")
    canv.setAuthor(AUTHOR)
    canv.drawImage(ImageReader(png), 0, 0, width=A4[0], height=A4[1])
    canv.showPage()
    canv.save()
    path.write_bytes(buffer.getvalue())
    return path


def make_damaged_pdf(path) -> Path:
    """A corrupted real PDF: SAMPLE_PAGES written by make_pdf, cut to its first half (no xref table,
    no trailer, no %%EOF) with 200 bytes in the middle of that half overwritten by garbage.
    pypdf raises pypdf.errors.PdfStreamError ("Stream has ended unexpectedly", a PdfReadError) after
    warning "EOF marker not found"; pdfminer raises pdfminer.psexceptions.PSEOF ("Unexpected EOF")."""
    path = Path(path)
    full = _pdf_bytes(SAMPLE_PAGES, SAMPLE_TITLE)
    half = bytearray(full[: len(full) // 2])
    middle = len(half) // 2
    rng = random.Random(42)
    half[middle: middle + 200] = bytes(rng.randrange(256) for _ in range(200))
    path.write_bytes(bytes(half))
    return path


def _pdf_bytes(pages, title) -> bytes:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return make_pdf(Path(tmp) / "doc.pdf", pages, title=title).read_bytes()


# ---------------------------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------------------------


def _e(text: str) -> str:
    return _html.escape(text, quote=True)


def _slug(text: str) -> str:
    return "-".join("".join(c if c.isalnum() else " " for c in text.lower()).split())


def make_html(path, title: str, sections: Sequence[Block], nav_words: Sequence[str],
              cookie_words: Sequence[str], footer_words: Sequence[str], semantic: bool = True) -> Path:
    """A health-site web page around the article `sections` (blocks: h1 -> <h2>, h2 -> <h3>, p, li, table).

    Boilerplate: a header with a logo, a search form and a nav menu (one link per `nav_words` item), a
    cookie-consent banner (a paragraph naming every `cookie_words` item, Accept/Reject buttons),
    breadcrumbs, an aside of related links, a newsletter box and a footer naming every `footer_words`
    item. `semantic=False` uses <div>s only (class names "menu", "content", "sidebar", "footer", ...).
    """
    path = Path(path)
    sem = semantic

    def tag(name: str, div_class: str, inner: str, attrs: str = "") -> str:
        if sem:
            return f"<{name}{attrs}>{inner}</{name}>"
        return f'<div class="{div_class}"{attrs}>{inner}</div>'

    nav_links = "".join(f'<li><a href="/{_slug(w)}/">{_e(w)}</a></li>' for w in nav_words)
    nav = tag("nav", "menu", f'<ul class="menu-list">{nav_links}</ul>', ' aria-label="Main menu"' if sem else "")
    header = tag("header", "header",
                 '<a class="logo" href="/">Northbrook Health</a>'
                 '<form class="search" action="/search"><input type="search" name="q" placeholder="Search">'
                 '<button type="submit">Search</button></form>' + nav)
    cookie_text = ("We use " + ", ".join(cookie_words[:-1]) + (" and " if len(cookie_words) > 1 else "")
                   + (cookie_words[-1] if cookie_words else "") +
                   " to make this website work and to improve it. You can change your choices at any time.")
    cookie = ('<div id="cookie-consent" class="cookie-banner" role="dialog" aria-label="Cookie consent">'
              f"<p>{_e(cookie_text)}</p>"
              '<button class="accept">Accept all</button> <button class="reject">Reject optional</button>'
              "</div>")
    crumbs = ('<a href="/">Home</a> &rsaquo; <a href="/health-a-z/">Health A to Z</a> &rsaquo; '
              f"<span>{_e(title)}</span>")
    breadcrumbs = (f'<nav class="breadcrumbs" aria-label="Breadcrumb">{crumbs}</nav>' if sem
                   else f'<div class="breadcrumbs">{crumbs}</div>')

    body = [f"<h1>{_e(title)}</h1>",
            '<p class="meta">Page last reviewed: 15 January 2024 &middot; Next review due: 15 January 2027</p>']
    for kind, content in _group(sections):
        if kind == "h1":
            body.append(f'<h2 id="{_slug(content)}">{_e(content)}</h2>')
        elif kind == "h2":
            body.append(f"<h3>{_e(content)}</h3>")
        elif kind == "p":
            body.append(f"<p>{_e(content)}</p>")
        elif kind == "ul":
            body.append("<ul>" + "".join(f"<li>{_e(item)}</li>" for item in content) + "</ul>")
        elif kind == "table":
            head = "".join(f"<th>{_e(c)}</th>" for c in content[0])
            rows = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in content[1:])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
    article = tag("article", "article-body", "\n".join(body))
    main = (f'<main id="maincontent">{article}</main>' if sem
            else f'<div class="content" id="content">{article}</div>')

    related = "".join(f'<li><a href="/related/{i}/">Related: {_e(w)} guide</a></li>'
                      for i, w in enumerate(["Pain relief", "Fever in adults", "Medicines A to Z"]))
    aside = tag("aside", "sidebar", f"<h2>Related topics</h2><ul>{related}</ul>"
                "<div class=\"newsletter\"><p>Sign up for our monthly health newsletter.</p>"
                '<input type="email" placeholder="Email address"><button>Subscribe</button></div>')
    footer_links = "".join(f'<li><a href="/{_slug(w)}/">{_e(w)}</a></li>' for w in footer_words)
    footer = tag("footer", "footer", f"<ul class=\"footer-links\">{footer_links}</ul>"
                 "<p>&copy; 2024 Northbrook Health. Information only, not a substitute for medical advice.</p>")

    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)} - Northbrook Health</title>
<meta name="description" content="{_e(title)}">
<meta property="og:title" content="{_e(title)}">
<link rel="stylesheet" href="/static/site.css">
<script>window.dataLayer = window.dataLayer || []; function gtag(){{dataLayer.push(arguments);}}</script>
</head>
<body>
<a class="skip-link" href="#maincontent">Skip to main content</a>
{cookie}
{header}
{breadcrumbs}
<div class="page">
{main}
{aside}
</div>
{footer}
<script src="/static/site.js"></script>
</body>
</html>
"""
    path.write_text(page, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------
# DOCX
# ---------------------------------------------------------------------------------------------


def make_docx(path, title: str, sections: Sequence[Block]) -> Path:
    """A Word document: core_properties.title = `title`, a Title paragraph, blocks as Heading 1 /
    Heading 2 / Normal / List Bullet paragraphs and tables (style "Table Grid"), a page header
    (title) and footer text. Zip entries carry a fixed timestamp, so the bytes are reproducible."""
    import docx

    path = Path(path)
    document = docx.Document()
    props = document.core_properties
    props.title = title
    props.author = AUTHOR
    props.last_modified_by = AUTHOR
    props.created = FIXED_DATE
    props.modified = FIXED_DATE
    props.last_printed = FIXED_DATE
    props.revision = 1
    section = document.sections[0]
    section.header.paragraphs[0].text = f"{title} | Northbrook Health"
    section.footer.paragraphs[0].text = "Northbrook Health patient information. Not a substitute for medical advice."
    document.add_paragraph(title, style="Title")
    for kind, content in _group(sections):
        if kind == "h1":
            document.add_heading(content, level=1)
        elif kind == "h2":
            document.add_heading(content, level=2)
        elif kind == "p":
            document.add_paragraph(content)
        elif kind == "ul":
            for item in content:
                document.add_paragraph(item, style="List Bullet")
        elif kind == "table":
            table = document.add_table(rows=len(content), cols=len(content[0]))
            table.style = "Table Grid"
            for r, row in enumerate(content):
                for c, value in enumerate(row):
                    table.cell(r, c).text = value
    raw = io.BytesIO()
    document.save(raw)
    raw.seek(0)
    fixed = io.BytesIO()
    with zipfile.ZipFile(raw) as src, zipfile.ZipFile(fixed, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            entry = zipfile.ZipInfo(info.filename, date_time=FIXED_DATE.timetuple()[:6])
            entry.compress_type = zipfile.ZIP_DEFLATED
            dst.writestr(entry, src.read(info.filename))
    path.write_bytes(fixed.getvalue())
    return path


def make_text_bomb_pdf(path, chars: int) -> Path:
    """A PDF of a few kilobytes whose one page shows `chars` characters (a compressed content stream
    of repeated text): cheap to store, slow and large to lay out."""
    import zlib

    line = b"(" + b"abcdefghij " * 10 + b") Tj T* "
    content = zlib.compress(b"BT /F1 2 Tf 3 TL 0 780 Td " + line * (chars // 110 + 1) + b"ET", 9)
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>",
        f"<< /Length {len(content)} /Filter /FlateDecode >>\nstream\n".encode() + content + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out, offsets = bytearray(b"%PDF-1.7\n"), []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{offset:010d} 00000 n \n".encode() for offset in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    path = Path(path)
    path.write_bytes(bytes(out))
    return path

"""Text extractors for ingesting PDF, HTML and DOCX, side by side on the same generated documents.

Documents are written by tests/documents_factory.py from the bundled corpus (corpus/corpus.jsonl):
section headings are corpus titles, paragraphs, bullet lists and tables are corpus text, so the exact
body text (the reference) is known. Per format and candidate:

- PDF (3-8 page A4 PDFs with a running header and a "Page N of M" footer): pypdf (default and
  layout mode), pdfminer.six (extract_text; extract_pages with font sizes), pdfplumber, pypdfium2.
  Word-token F1 and word-sequence ratio (difflib) against the body text, joined/split words per
  1000 words, list items and table cells kept, heading recovery from font sizes (F1 of lines larger
  than the body text against the true headings), median ms per page, and what each one does on an
  encrypted (with and without the password), a damaged and an image-only (scanned) PDF. Real PDFs
  (`--real-pdfs`, e.g. the pypdf sdist's resources/) have no reference text: per library, files
  read, exceptions by class, empty results, ms per page and agreement (token F1) with the others.
- HTML (health-site pages with a nav menu, cookie banner, breadcrumbs, aside and footer; semantic
  tags and a div-only variant): trafilatura (txt default, favor_recall, markdown, xml),
  readability-lxml, jusText, BeautifulSoup get_text (baseline): recall of article words, precision,
  leakage of nav / cookie / footer marker words, list items kept, headings kept (text present) and
  marked (as # / <head> / <hN> / is_heading), median ms per page.
- DOCX: python-docx (paragraphs only; body in order with tables), mammoth (raw text; HTML),
  docx2python: token F1, sequence ratio, headings marked, tables and list items kept, ms per doc.

    python bench/extractors.py
    pip download --no-binary :all: --no-deps pypdf -d /tmp/sd && tar xzf /tmp/sd/pypdf-*.tar.gz -C /tmp/sd
    python bench/extractors.py --real-pdfs /tmp/sd/pypdf-*/resources

Candidates that are not installed are skipped (their rows say so).
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import logging
import random
import re
import signal
import statistics
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(REPO / "tests"))

from common import RESULTS, print_table, write_results  # noqa: E402

import documents_factory as factory  # noqa: E402

warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)  # pypdf / pdfminer / trafilatura log every oddity of a damaged file

WORD = re.compile(r"[a-z0-9]+")

# Boilerplate marker words: realistic site words, kept only where the article does not use them.
NAV_POOL = ["Home", "Conditions", "Medicines", "Services", "Pharmacy", "Newsletter", "Appointments", "Careers",
            "Volunteering", "Donate", "Shop", "Login", "Register", "Blog", "Podcasts", "Events"]
COOKIE_POOL = ["cookies", "analytics", "personalise", "advertising", "preferences", "tracking", "partners",
               "consent", "marketing"]
FOOTER_POOL = ["Copyright", "Accessibility", "Privacy", "Terms", "Contact", "Sitemap", "Disclaimer", "Press",
               "Investors", "Modern slavery statement"]


# ------------------------------------------------------------------------------------------------
# metrics
# ------------------------------------------------------------------------------------------------


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def token_prf(ref: list[str], out: list[str]) -> tuple[float, float, float]:
    if not ref or not out:
        return 0.0, 0.0, 0.0
    common = sum((Counter(ref) & Counter(out)).values())
    p, r = common / len(out), common / len(ref)
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def seq_ratio(ref: list[str], out: list[str]) -> float:
    """Similarity of the word sequences (order matters): difflib's ratio, without its junk heuristic."""
    if not ref or not out:
        return 0.0
    return difflib.SequenceMatcher(None, ref, out, autojunk=False).ratio()


def join_split_errors(ref: list[str], out_text: str) -> tuple[int, int]:
    """(joined, split): output words that are two adjacent reference words run together, and pairs of
    adjacent output words that make one reference word (each a word the reference never has)."""
    vocab = set(ref)
    bigrams = {a + b for a, b in zip(ref, ref[1:])}
    out = words(out_text)
    joined = sum(1 for w in out if w not in vocab and w in bigrams)
    split = sum(1 for a, b in zip(out, out[1:]) if (a not in vocab or b not in vocab) and a + b in vocab)
    return joined, split


def squash(text: str) -> str:
    return " ".join(words(text))


def kept(items: list[str], out_text: str) -> float:
    """Fraction of `items` (list items, table cells, headings) whose words appear in order in the output."""
    if not items:
        return float("nan")
    hay = " " + squash(out_text) + " "
    return sum(f" {squash(i)} " in hay for i in items) / len(items)


def heading_f1(true: list[str], found: list[str]) -> float:
    t, f = Counter(squash(h) for h in true), Counter(squash(h) for h in found if squash(h))
    if not t or not f:
        return 0.0
    common = sum((t & f).values())
    p, r = common / sum(f.values()), common / sum(t.values())
    return 2 * p * r / (p + r) if p + r else 0.0


def mean(values) -> float:
    values = [v for v in values if v == v]  # drop NaN
    return round(statistics.fmean(values), 4) if values else float("nan")


def median_ms(values) -> float:
    return round(statistics.median(values) * 1000, 2) if values else float("nan")


class Timeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: int):
    def handler(signum, frame):
        raise Timeout(f"over {seconds}s")

    old = signal.signal(signal.SIGALRM, handler)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# ------------------------------------------------------------------------------------------------
# documents from the corpus
# ------------------------------------------------------------------------------------------------


def load_corpus() -> list[dict]:
    return [json.loads(line) for line in (REPO / "corpus" / "corpus.jsonl").read_text().splitlines() if line.strip()]


def sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+(?=[A-Z0-9])", text) if s.strip()]


def section_blocks(doc: dict, rng: random.Random, style: str) -> list:
    """A corpus document as blocks: its title as a heading, then paragraphs, or paragraphs + a bullet
    list of its later sentences, or an h2 subsection, or a small table."""
    sents = sentences(doc["text"])
    blocks = [("h1", doc["title"])]
    if style == "list" and len(sents) >= 5:
        blocks.append(("p", " ".join(sents[:3])))
        blocks.extend(("li", s.rstrip(".")) for s in sents[3:7])
        if sents[7:]:
            blocks.append(("p", " ".join(sents[7:])))
    elif style == "sub" and len(sents) >= 4:
        half = len(sents) // 2
        blocks.append(("p", " ".join(sents[:half])))
        blocks.append(("h2", rng.choice(["What to do", "Key points", "Who is affected", "Treatment options"])))
        blocks.append(("p", " ".join(sents[half:])))
    elif style == "table" and len(sents) >= 3:
        blocks.append(("p", " ".join(sents)))
        ws = [w for w in re.findall(r"[A-Za-z]{5,}", doc["text"])][:9]
        rows = [["Item", "Detail", "Notes"]] + [ws[i: i + 3] for i in range(0, 9, 3) if len(ws[i: i + 3]) == 3]
        if len(rows) > 1:
            blocks.append(("table", rows))
    else:
        paragraphs = doc["text"].split("\n\n") if "\n\n" in doc["text"] else [
            " ".join(sents[: len(sents) // 2]), " ".join(sents[len(sents) // 2:])]
        blocks.extend(("p", p) for p in paragraphs if p.strip())
    return blocks


def n_words(blocks) -> int:
    return len(words(factory.blocks_text(blocks)))


def make_pdf_pages(short: list[dict], rng: random.Random, n_pages: int) -> list[list]:
    pages = []
    for _ in range(n_pages):
        page: list = []
        while True:
            blocks = section_blocks(rng.choice(short), rng, rng.choice(["plain", "plain", "list", "sub", "table"]))
            if n_words(page + blocks) > 380 and page:
                break
            page += blocks
        pages.append(page)
    return pages


def positioned_pdf(path: Path, pages: list[list], title: str) -> Path:
    """The same pages typeset the way LaTeX and many DTP tools write PDFs: no space glyphs, every word
    placed at its own position (a 3.3 pt gap, a little over a normal Helvetica space), and long words
    hyphenated at line ends ("medi-" / "cation"). Extractors must infer the spaces from the gaps and
    cannot know that a line-end hyphen is not part of the word."""
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.units import mm
    from reportlab.pdfbase.pdfmetrics import stringWidth
    from reportlab.pdfgen import canvas

    width, height = A4
    left, right, top, bottom = 20 * mm, width - 20 * mm, height - 25 * mm, 20 * mm
    canv = canvas.Canvas(str(path), pagesize=A4, invariant=1)
    canv.setTitle(title)
    fonts = {"h1": ("Helvetica-Bold", 16, 20), "h2": ("Helvetica-Bold", 13, 16), "p": ("Helvetica", 10.5, 13.5),
             "li": ("Helvetica", 10.5, 13.5), "table": ("Helvetica", 9.5, 12)}
    gap = 3.3

    def typeset(text, x0, x1, y, font, size, lead):
        line_x = x0
        for word in text.split():
            w = stringWidth(word, font, size)
            if line_x > x0 and line_x + w > x1:
                room = x1 - line_x
                cut = max((i for i in range(3, len(word) - 2) if stringWidth(word[:i] + "-", font, size) <= room),
                          default=0) if len(word) >= 8 and word.isalpha() else 0
                if cut:
                    canv.drawString(line_x, y, word[:cut] + "-")
                    word, w = word[cut:], stringWidth(word[cut:], font, size)
                y -= lead
                line_x = x0
            canv.drawString(line_x, y, word)
            line_x += w + gap
        return y - lead

    for number, page in enumerate(pages, 1):
        canv.setFont("Helvetica", 8.5)
        canv.drawString(left, height - 13 * mm, title)
        canv.drawCentredString(width / 2, 10 * mm, f"Page {number} of {len(pages)}")
        y = top
        for kind, content in page:
            font, size, lead = fonts[kind]
            canv.setFont(font, size)
            if kind == "table":
                col = (right - left) / len(content[0])
                for row in content:
                    for i, cell in enumerate(row):
                        typeset(cell, left + i * col + 3, left + (i + 1) * col - 3, y, font, size, lead)
                    y -= lead
                y -= 4
            elif kind == "li":
                canv.drawString(left + 4, y, "\u2022")
                y = typeset(content, left + 14, right, y, font, size, lead) - 1
            else:
                y = typeset(content, left, right, y - (6 if kind != "p" else 0), font, size, lead) - 4
            if y < 12 * mm:
                raise ValueError("page overflows")
        canv.showPage()
    canv.save()
    return path


def headings_of(blocks) -> list[str]:
    return [c for k, c in blocks if k in ("h1", "h2")]


def list_items(blocks) -> list[str]:
    return [c for k, c in blocks if k == "li"]


def table_cells(blocks) -> list[str]:
    return [cell for k, c in blocks if k == "table" for row in c for cell in row]


# ------------------------------------------------------------------------------------------------
# PDF candidates: name -> (text function, heading function or None)
# ------------------------------------------------------------------------------------------------


def pdf_pypdf(path, password=None):
    import pypdf

    reader = pypdf.PdfReader(path)
    if reader.is_encrypted and password is not None:
        reader.decrypt(password)
    return "\n".join(page.extract_text() for page in reader.pages)


def pdf_pypdf_layout(path, password=None):
    import pypdf

    reader = pypdf.PdfReader(path)
    if reader.is_encrypted and password is not None:
        reader.decrypt(password)
    return "\n".join(page.extract_text(extraction_mode="layout") for page in reader.pages)


def pdf_pdfminer(path, password=None):
    from pdfminer.high_level import extract_text

    return extract_text(path, password=password or "")


def _pdfminer_lines(path, password=None):
    """(text, font size, bold) per text line: LTChar.size is the glyph's height in points (its font
    size for unrotated text), LTChar.fontname the PostScript font name."""
    from pdfminer.high_level import extract_pages
    from pdfminer.layout import LTChar, LTTextContainer, LTTextLine

    lines = []
    for page in extract_pages(path, password=password or ""):
        for element in page:
            if not isinstance(element, LTTextContainer):
                continue
            for line in element:
                if not isinstance(line, LTTextLine):
                    continue
                chars = [c for c in line if isinstance(c, LTChar)]
                if not chars:
                    continue
                sizes = Counter(round(c.size, 1) for c in chars)
                size = sizes.most_common(1)[0][0]
                bold = sum("Bold" in c.fontname for c in chars) > len(chars) / 2
                lines.append((line.get_text().strip(), size, bold))
    return lines


def pdf_pdfminer_pages(path, password=None):
    return "\n".join(text for text, _, _ in _pdfminer_lines(path, password))


def _larger_than_body(lines) -> list[str]:
    """Lines set in a font at least 15% larger than the most common (body) size."""
    weights = Counter()
    for text, size, *_ in lines:
        weights[size] += len(text)
    if not weights:
        return []
    body = weights.most_common(1)[0][0]
    return [text for text, size, *_ in lines if size >= body * 1.15 and text.strip()]


def head_pdfminer(path):
    return _larger_than_body(_pdfminer_lines(path))


def pdf_pdfplumber(path, password=None):
    import pdfplumber

    with pdfplumber.open(path, password=password or "") as pdf:
        return "\n".join(page.extract_text() or "" for page in pdf.pages)


def head_pdfplumber(path):
    import pdfplumber

    lines = []
    with pdfplumber.open(path) as pdf:
        for page in pdf.pages:
            for line in page.extract_text_lines(return_chars=True):
                sizes = Counter(round(c["size"], 1) for c in line["chars"])
                lines.append((line["text"], sizes.most_common(1)[0][0]))
    return _larger_than_body(lines)


def head_pypdf(path):
    """pypdf's visitor_text gets each shown string with its Tf font size and the text matrix: the
    effective size is the font size times the matrices' vertical scale; pieces on the same baseline
    (tm[5] + cm[5]) in the same size make a line (a PDF may show each word on its own)."""
    import pypdf

    reader = pypdf.PdfReader(path)
    lines = []
    for page in reader.pages:
        runs: list[list] = []  # [text, size, baseline]

        def visit(text, cm, tm, font_dict, font_size):
            if not text.strip():
                return
            size = round(font_size * abs(tm[3]) * abs(cm[3] or 1), 1)
            y = round(tm[5] + cm[5])
            if runs and runs[-1][1] == size and abs(runs[-1][2] - y) <= 1:
                runs[-1][0] += " " + text
            else:
                runs.append([text, size, y])

        page.extract_text(visitor_text=visit)
        lines.extend((" ".join(t.split()), s) for t, s, _ in runs)
    return _larger_than_body(lines)


def pdf_pypdfium2(path, password=None):
    import pypdfium2 as pdfium

    pdf = pdfium.PdfDocument(str(path), password=password)
    try:
        return "\n".join(page.get_textpage().get_text_range() for page in pdf)
    finally:
        pdf.close()


def head_pypdfium2(path):
    """pdfium's FPDFText_GetFontSize per character of the text page, aligned with get_text_range()."""
    import pypdfium2 as pdfium
    import pypdfium2.raw as raw

    pdf = pdfium.PdfDocument(str(path))
    lines = []
    try:
        for page in pdf:
            textpage = page.get_textpage()
            n = textpage.count_chars()
            text = textpage.get_text_range()
            sizes = [round(raw.FPDFText_GetFontSize(textpage.raw, i), 1) for i in range(n)]
            if len(text) != n:  # surrogate pairs or the like: skip the page
                continue
            start = 0
            for i, ch in enumerate(text + "\n"):
                if ch in "\r\n":
                    if text[start:i].strip():
                        lines.append((text[start:i], Counter(sizes[start:i]).most_common(1)[0][0]))
                    start = i + 1
    finally:
        pdf.close()
    return _larger_than_body(lines)


PDF_CANDIDATES = {
    "pypdf": (pdf_pypdf, head_pypdf, "pypdf"),
    "pypdf layout": (pdf_pypdf_layout, None, "pypdf"),
    "pdfminer extract_text": (pdf_pdfminer, None, "pdfminer"),
    "pdfminer extract_pages": (pdf_pdfminer_pages, head_pdfminer, "pdfminer"),
    "pdfplumber": (pdf_pdfplumber, head_pdfplumber, "pdfplumber"),
    "pypdfium2": (pdf_pypdfium2, head_pypdfium2, "pypdfium2"),
}


def installed(module: str) -> bool:
    try:
        __import__(module)
        return True
    except ImportError:
        return False


def outcome(fn, *args, **kwargs) -> str:
    """What a call gives: 'text (N words)', 'empty' or the exception's class."""
    try:
        with time_limit(20):
            text = fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the class is the result
        return f"{type(exc).__module__}.{type(exc).__name__}"
    n = len(words(text or ""))
    return f"text ({n} words)" if n else "empty"


def bench_pdf(args, corpus, tmp: Path) -> dict:
    rng = random.Random(args.seed)
    short = [d for d in corpus if not d["_id"].startswith("doc-long")]
    docs = []
    for i in range(args.docs):
        pages = make_pdf_pages(short, rng, rng.randint(3, 8))
        title = rng.choice(short)["title"]
        path = tmp / f"doc{i:02d}.pdf"
        while True:  # a page that overflows loses its last block
            try:
                factory.make_pdf(path, pages, title=title, outline=i % 2 == 0)
                break
            except ValueError:
                pages = [p[:-1] if n_words(p) == max(n_words(q) for q in pages) else p for p in pages]
        docs.append((path, pages, title))
    total_pages = sum(len(p) for _, p, _ in docs)
    sets = {"reportlab": [(p, pages) for p, pages, _ in docs],
            "positioned": [(positioned_pdf(tmp / f"pos{i:02d}.pdf", pages, title), pages)
                           for i, (_, pages, title) in enumerate(docs[: max(1, args.docs // 2)])]}
    print(f"PDF: {len(docs)} documents, {total_pages} pages (reportlab platypus); "
          f"{len(sets['positioned'])} of them typeset with positioned words and hyphens", flush=True)

    special = {
        "encrypted": factory.make_pdf(tmp / "enc.pdf", factory.SAMPLE_PAGES, title=factory.SAMPLE_TITLE, password="secret"),
        "damaged": factory.make_damaged_pdf(tmp / "damaged.pdf"),
        "image-only": factory.make_image_pdf(tmp / "scan.pdf", factory.blocks_text(factory.SAMPLE_PAGES[0])),
    }

    rows = []
    for name, (fn, head_fn, module) in PDF_CANDIDATES.items():
        if not installed(module):
            rows.append({"candidate": name, "note": f"{module} not installed"})
            continue
        first = None
        for set_name, set_docs in sets.items():
            rows.append(pdf_row(name, set_name, set_docs, fn, head_fn))
            first = first or rows[-1]
        for kind, path in special.items():
            first[kind] = outcome(fn, path)
        first["encrypted+pw"] = outcome(fn, special["encrypted"], password="secret")
        print(f"  {name}: done", flush=True)
    return {"documents": len(docs), "pages": total_pages, "positioned_documents": len(sets["positioned"]), "rows": rows}


def pdf_row(name, set_name, docs, fn, head_fn) -> dict:
    """One candidate on one set of PDFs: fidelity against the body text, errors, headings, speed."""
    f1s, ratios, joined, split, lis, cells, per_page, heads = [], [], [], [], [], [], [], []
    n_out = 0
    for path, pages in docs:
        blocks = factory.flatten(pages)
        ref = words(factory.blocks_text(blocks))
        started = time.perf_counter()
        text = fn(path)
        per_page.append((time.perf_counter() - started) / len(pages))
        out = words(text)
        n_out += len(out)
        f1s.append(token_prf(ref, out)[2])
        ratios.append(seq_ratio(ref, out))
        j, s = join_split_errors(ref, text)
        joined.append(j)
        split.append(s)
        lis.append(kept(list_items(blocks), text))
        cells.append(kept(table_cells(blocks), text))
        if head_fn:
            heads.append(heading_f1(headings_of(blocks), head_fn(path)))
    return {
        "candidate": name,
        "pdfs": set_name,
        "token_f1": mean(f1s),
        "seq_ratio": mean(ratios),
        "joined_per_1k": round(1000 * sum(joined) / max(n_out, 1), 2),
        "split_per_1k": round(1000 * sum(split) / max(n_out, 1), 2),
        "list_kept": mean(lis),
        "cells_kept": mean(cells),
        "heading_f1": mean(heads) if heads else "n/a",
        "ms_page": median_ms(per_page),
    }


def bench_real_pdfs(folders: list[str], max_pages: int, max_mb: float) -> dict:
    files = sorted({p for f in folders for p in Path(f).rglob("*.pdf") if p.stat().st_size <= max_mb * 1e6})
    if not files:
        return {}
    print(f"real PDFs: {len(files)} files (<= {max_mb} MB, first {max_pages} pages)", flush=True)
    truncated = Path(tempfile.mkdtemp(prefix="extractors-real-"))
    inputs = []
    import pypdf  # cut every file to its first pages with pypdf where it can; else use it whole

    for path in files:
        try:
            reader = pypdf.PdfReader(path)
            if not reader.is_encrypted and len(reader.pages) > max_pages:
                writer = pypdf.PdfWriter()
                for page in reader.pages[:max_pages]:
                    writer.add_page(page)
                cut = truncated / path.name
                writer.write(cut)
                inputs.append((path, cut, max_pages))
                continue
            inputs.append((path, path, len(reader.pages) if not reader.is_encrypted else 1))
        except Exception:  # noqa: BLE001
            inputs.append((path, path, 1))

    outputs: dict[str, dict[str, list[str] | None]] = {}
    summary = []
    for name, (fn, _, module) in PDF_CANDIDATES.items():
        if name == "pdfminer extract_pages" or not installed(module):
            continue
        errors, empty, per_page, texts = Counter(), 0, [], {}
        for original, path, n in inputs:
            started = time.perf_counter()
            try:
                with time_limit(20):
                    text = fn(path)
            except Exception as exc:  # noqa: BLE001
                errors[type(exc).__name__] += 1
                texts[original.name] = None
                continue
            per_page.append((time.perf_counter() - started) / max(n, 1))
            texts[original.name] = words(text)
            empty += not texts[original.name]
        outputs[name] = texts
        summary.append({"candidate": name, "files": len(inputs), "read": len(inputs) - sum(errors.values()),
                        "empty": empty, "errors": dict(errors), "ms_page": median_ms(per_page)})
        print(f"  {name}: done", flush=True)
    for row in summary:  # agreement: token F1 with each other library, on files both read with text
        scores, joined, split, n = [], 0, 0, 0
        for fname, mine in outputs[row["candidate"]].items():
            others = [texts.get(fname) for other, texts in outputs.items() if other != row["candidate"]]
            others = [o for o in others if o]
            if not mine or not others:
                continue
            scores.extend(token_prf(theirs, mine)[2] for theirs in others)
            # joined / split words: against every other library's words (a word none of them has, that
            # is two adjacent words of one of them run together, or half of one of their words)
            vocab = set().union(*others)
            bigrams = {a + b for o in others for a, b in zip(o, o[1:])}
            joined += sum(1 for w in mine if w not in vocab and w in bigrams)
            split += sum(1 for a, b in zip(mine, mine[1:]) if (a not in vocab or b not in vocab) and a + b in vocab)
            n += len(mine)
        row["agreement_f1"] = mean(scores)
        row["joined_per_1k"] = round(1000 * joined / max(n, 1), 2)
        row["split_per_1k"] = round(1000 * split / max(n, 1), 2)
    return {"files": [str(p) for p in files], "rows": summary}


# ------------------------------------------------------------------------------------------------
# HTML
# ------------------------------------------------------------------------------------------------


def html_bs4(html):
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "lxml")
    for tag in soup(["script", "style", "noscript"]):
        tag.decompose()
    return soup.get_text("\n"), [h.get_text() for h in soup.find_all(["h1", "h2", "h3"])]


def _traf(html, **kwargs):
    import trafilatura

    return trafilatura.extract(html, **kwargs) or ""  # defaults: tables kept; no include_formatting (see docs)


def html_traf(html):
    return _traf(html), []


def html_traf_recall(html):
    return _traf(html, favor_recall=True), []


def html_traf_markdown(html):
    text = _traf(html, output_format="markdown")
    return text, [line.lstrip("#").strip() for line in text.splitlines() if line.startswith("#")]


def html_traf_xml(html):
    from lxml import etree

    xml = _traf(html, output_format="xml")
    if not xml:
        return "", []
    root = etree.fromstring(xml.encode())
    return "\n".join(root.itertext()), ["".join(h.itertext()) for h in root.iter("head")]


BLOCK_TAGS = ("p", "h1", "h2", "h3", "h4", "h5", "h6", "li", "td", "th", "tr", "div", "br", "ul", "ol", "table")


def block_text(root) -> str:
    """Text of an lxml tree with a newline after every block element. lxml's text_content() alone
    runs adjacent blocks together: "<li>vomiting</li><li>toothache" gives "vomitingtoothache"."""
    for el in root.iter(*BLOCK_TAGS):
        el.tail = "\n" + (el.tail or "")
    return root.text_content()


def html_readability(html):
    import lxml.html
    from readability import Document

    summary = Document(html).summary(html_partial=True)
    root = lxml.html.fromstring(summary)
    return block_text(root), [h.text_content() for h in root.iter("h1", "h2", "h3", "h4")]


def html_justext(html):
    import justext

    paragraphs = [p for p in justext.justext(html.encode(), justext.get_stoplist("English")) if not p.is_boilerplate]
    return "\n".join(p.text for p in paragraphs), [p.text for p in paragraphs if p.is_heading]


HTML_CANDIDATES = {
    "bs4 get_text (baseline)": (html_bs4, "bs4"),
    "trafilatura": (html_traf, "trafilatura"),
    "trafilatura favor_recall": (html_traf_recall, "trafilatura"),
    "trafilatura markdown": (html_traf_markdown, "trafilatura"),
    "trafilatura xml": (html_traf_xml, "trafilatura"),
    "readability-lxml": (html_readability, "readability"),
    "justext": (html_justext, "justext"),
}


WIDGETS = ["Share this page on WhatsApp", "Was this page helpful", "Report a problem with this page"]


def clutter(html: str, cookie_words: list[str], teasers: list[str]) -> str:
    """A div-only page made harder the way real sites are: a long cookie notice (about 70 words of
    ordinary prose), and after the article, inside the content column, share and feedback widgets and
    "Related articles" cards whose teaser sentences come from other documents."""
    long_cookie = ("<p>We and our partners use " + ", ".join(cookie_words) + " on this website. Some of them are "
                   "essential to make the site work, while others help us to understand how you use the site so that "
                   "we can improve it for everyone who visits. You can accept all of them, reject the optional ones, "
                   "or choose which ones you are happy with. You can change your mind at any time by visiting the "
                   "settings page, which you will find at the bottom of every page.</p>")
    html = re.sub(r'(<div id="cookie-consent"[^>]*>)<p>.*?</p>', lambda m: m.group(1) + long_cookie, html, count=1)
    cards = "".join(f'<div class="card"><a href="/related/{i}/"><h3 class="card-title">Read more</h3></a><p>{t}</p></div>'
                    for i, t in enumerate(teasers))
    widgets = (f'<div class="share"><p>{WIDGETS[0]}, Facebook or email</p></div>'
               f'<div class="feedback"><p>{WIDGETS[1]}?</p><button>Yes</button><button>No</button>'
               f'<p><a href="/feedback">{WIDGETS[2]}</a></p></div>'
               f'<div class="related"><h2>Related articles</h2>{cards}</div>')
    return html.replace('</div>\n<div class="sidebar">', widgets + '</div>\n<div class="sidebar">', 1)


def pick_markers(pool, vocab, rng, k):
    choices = [w for w in pool if not set(words(w)) & vocab]
    rng.shuffle(choices)
    return choices[:k]


def bench_html(args, corpus, tmp: Path) -> dict:
    rng = random.Random(args.seed + 1)
    short = [d for d in corpus if not d["_id"].startswith("doc-long")]
    long = [d for d in corpus if d["_id"].startswith("doc-long")]
    pages = []
    for i in range(args.docs):
        if i < len(long):
            blocks = section_blocks(long[i], rng, "plain")[1:]  # a long guide: its paragraphs, no heading
            title = long[i]["title"]
            blocks = [("h1", "Overview")] + blocks
        else:
            title = rng.choice(short)["title"]
            blocks = []
            for _ in range(rng.randint(2, 5)):
                blocks += section_blocks(rng.choice(short), rng, rng.choice(["plain", "list", "sub", "table"]))
        vocab = set(words(title + " " + factory.blocks_text(blocks)))
        nav = pick_markers(NAV_POOL, vocab, rng, 6)
        cookie = pick_markers(COOKIE_POOL, vocab, rng, 4)
        footer = pick_markers(FOOTER_POOL, vocab, rng, 5)
        article = squash(factory.blocks_text(blocks))
        teasers = [t for t in (sentences(d["text"])[0] for d in rng.sample(short, 4)) if squash(t) not in article][:3]
        for variant in ("semantic", "div-only", "cluttered"):
            path = factory.make_html(tmp / f"page{i:02d}-{variant}.html", title, blocks, nav, cookie, footer,
                                     semantic=variant == "semantic")
            html = path.read_text()
            if variant == "cluttered":
                html = clutter(html, cookie, teasers)
            pages.append({"html": html, "variant": variant, "title": title, "blocks": blocks, "nav": nav,
                          "cookie": cookie, "footer": footer, "teasers": teasers})
    print(f"HTML: {len(pages)} pages ({args.docs} each semantic, div-only, cluttered)", flush=True)

    rows = []
    for name, (fn, module) in HTML_CANDIDATES.items():
        if not installed(module):
            rows.append({"candidate": name, "note": f"{module} not installed"})
            continue
        for variant in ("semantic", "div-only", "cluttered"):
            teaser_leak, widget_leak = [], []
            recall, precision, leak, lis, h_text, h_marked, ms = [], [], {"nav": [], "cookie": [], "footer": []}, [], [], [], []
            for page in (p for p in pages if p["variant"] == variant):
                ref = words(page["title"] + "\n" + factory.blocks_text(page["blocks"]))
                started = time.perf_counter()
                text, heads = fn(page["html"])
                ms.append(time.perf_counter() - started)
                out = words(text)
                p, r, _ = token_prf(ref, out)
                recall.append(r)
                precision.append(p)
                out_set = set(out)
                for kind in leak:
                    markers = page[kind]
                    leak[kind].append(sum(all(w in out_set for w in words(m)) for m in markers) / len(markers)
                                      if markers else float("nan"))
                if variant == "cluttered":
                    teaser_leak.append(kept(page["teasers"], text))
                    widget_leak.append(kept(WIDGETS, text))
                lis.append(kept(list_items(page["blocks"]), text))
                true_heads = headings_of(page["blocks"])
                h_text.append(kept(true_heads, text))
                h_marked.append(sum(squash(h) in {squash(x) for x in heads} for h in true_heads) / len(true_heads))
            rows.append({
                "candidate": name, "page": variant,
                "recall": mean(recall), "precision": mean(precision),
                "nav_leak": mean(leak["nav"]), "cookie_leak": mean(leak["cookie"]), "footer_leak": mean(leak["footer"]),
                "teaser_leak": mean(teaser_leak) if teaser_leak else "", "widget_leak": mean(widget_leak) if widget_leak else "",
                "list_kept": mean(lis), "headings_text": mean(h_text), "headings_marked": mean(h_marked),
                "ms_page": median_ms(ms),
            })
        print(f"  {name}: done", flush=True)
    return {"pages": len(pages), "rows": rows}


# ------------------------------------------------------------------------------------------------
# DOCX
# ------------------------------------------------------------------------------------------------


def docx_paragraphs(path):
    import docx

    document = docx.Document(path)
    paragraphs = document.paragraphs
    return "\n".join(p.text for p in paragraphs), [p.text for p in paragraphs if p.style.name.startswith("Heading")]


def docx_body(path):
    """The body in document order, tables included: iter_inner_content() yields Paragraph and Table."""
    import docx
    from docx.table import Table

    document = docx.Document(path)
    lines, heads = [], []
    for item in document.iter_inner_content():
        if isinstance(item, Table):
            lines.extend(" ".join(cell.text for cell in row.cells) for row in item.rows)
        else:
            lines.append(item.text)
            if item.style.name.startswith("Heading"):
                heads.append(item.text)
    return "\n".join(lines), heads


def docx_mammoth_raw(path):
    import mammoth

    with open(path, "rb") as f:
        return mammoth.extract_raw_text(f).value, []


def docx_mammoth_html(path):
    import lxml.html
    import mammoth

    with open(path, "rb") as f:
        html = mammoth.convert_to_html(f).value
    root = lxml.html.fromstring(f"<div>{html}</div>")
    heads = [h.text_content() for h in root.iter("h1", "h2", "h3")]
    return block_text(root), heads


def docx_docx2python(path):
    from docx2python import docx2python

    with docx2python(path, html=True) as result:
        text = result.text
    heads = re.findall(r"<h[1-6]>(.*?)</h[1-6]>", text)
    return re.sub(r"</?h[1-6]>", "", text), heads


DOCX_CANDIDATES = {
    "python-docx paragraphs": (docx_paragraphs, "docx"),
    "python-docx body+tables": (docx_body, "docx"),
    "mammoth raw text": (docx_mammoth_raw, "mammoth"),
    "mammoth html": (docx_mammoth_html, "mammoth"),
    "docx2python": (docx_docx2python, "docx2python"),
}


def bench_docx(args, corpus, tmp: Path) -> dict:
    rng = random.Random(args.seed + 2)
    short = [d for d in corpus if not d["_id"].startswith("doc-long")]
    docs = []
    for i in range(args.docs):
        title = rng.choice(short)["title"]
        blocks = []
        for j in range(rng.randint(3, 6)):
            blocks += section_blocks(rng.choice(short), rng, ["list", "table", "sub", "plain"][j] if j < 4 else "plain")
        docs.append((factory.make_docx(tmp / f"doc{i:02d}.docx", title, blocks), title, blocks))
    print(f"DOCX: {len(docs)} documents", flush=True)
    header_words = set(words("Northbrook Health patient information Not a substitute for medical advice"))
    rows = []
    for name, (fn, module) in DOCX_CANDIDATES.items():
        if not installed(module):
            rows.append({"candidate": name, "note": f"{module} not installed"})
            continue
        f1s, ratios, heads, lis, cells, ms, hf = [], [], [], [], [], [], []
        for path, title, blocks in docs:
            ref = words(title + "\n" + factory.blocks_text(blocks))
            started = time.perf_counter()
            text, found = fn(path)
            ms.append(time.perf_counter() - started)
            out = words(text)
            f1s.append(token_prf(ref, out)[2])
            ratios.append(seq_ratio(ref, out))
            true_heads = headings_of(blocks)
            heads.append(sum(squash(h) in {squash(x) for x in found} for h in true_heads) / len(true_heads))
            lis.append(kept(list_items(blocks), text))
            cells.append(kept(table_cells(blocks), text))
            hf.append("northbrook" in out and header_words - set(ref) <= set(out))
        rows.append({"candidate": name, "token_f1": mean(f1s), "seq_ratio": mean(ratios), "headings_marked": mean(heads),
                     "list_kept": mean(lis), "cells_kept": mean(cells), "header_footer": mean(hf),
                     "ms_doc": median_ms(ms)})
        print(f"  {name}: done", flush=True)
    return {"documents": len(docs), "rows": rows}


# ------------------------------------------------------------------------------------------------


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ["pypdf", "pdfminer.six", "pdfplumber", "pypdfium2", "trafilatura", "readability-lxml", "jusText",
                 "beautifulsoup4", "lxml", "python-docx", "mammoth", "docx2python", "reportlab"]:
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=30, help="documents per format (HTML: each in two variants)")
    parser.add_argument("--formats", default="pdf,html,docx")
    parser.add_argument("--real-pdfs", nargs="*", default=[], help="folders of real PDFs (searched recursively)")
    parser.add_argument("--real-max-pages", type=int, default=5)
    parser.add_argument("--real-max-mb", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--name", default="extractors")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()

    corpus = load_corpus()
    formats = args.formats.split(",")
    payload: dict = {"versions": versions(), "docs": args.docs, "seed": args.seed}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if "pdf" in formats:
            (tmp / "pdf").mkdir()
            payload["pdf"] = bench_pdf(args, corpus, tmp / "pdf")
            print()
            print_table(payload["pdf"]["rows"], ["candidate", "pdfs", "token_f1", "seq_ratio", "joined_per_1k", "split_per_1k",
                                                 "list_kept", "cells_kept", "heading_f1", "ms_page"])
            print()
            print_table([r for r in payload["pdf"]["rows"] if "encrypted" in r],
                        ["candidate", "encrypted", "encrypted+pw", "damaged", "image-only"])
            print()
            if args.real_pdfs:
                payload["real_pdfs"] = bench_real_pdfs(args.real_pdfs, args.real_max_pages, args.real_max_mb)
                if payload["real_pdfs"]:
                    print()
                    print_table(payload["real_pdfs"]["rows"], ["candidate", "files", "read", "empty", "agreement_f1",
                                                               "joined_per_1k", "split_per_1k",
                                                               "ms_page", "errors"])
                    print()
        if "html" in formats:
            (tmp / "html").mkdir()
            payload["html"] = bench_html(args, corpus, tmp / "html")
            print()
            print_table(payload["html"]["rows"], ["candidate", "page", "recall", "precision", "nav_leak", "cookie_leak",
                                                  "footer_leak", "teaser_leak", "widget_leak", "list_kept",
                                                  "headings_text", "headings_marked", "ms_page"])
            print()
        if "docx" in formats:
            (tmp / "docx").mkdir()
            payload["docx"] = bench_docx(args, corpus, tmp / "docx")
            print()
            print_table(payload["docx"]["rows"], ["candidate", "token_f1", "seq_ratio", "headings_marked", "list_kept",
                                                  "cells_kept", "header_footer", "ms_doc"])
    payload["seconds"] = round(time.perf_counter() - started, 1)
    print(f"\n{payload['seconds']} s")
    write_results(args.name, payload, Path(args.out))


if __name__ == "__main__":
    main()

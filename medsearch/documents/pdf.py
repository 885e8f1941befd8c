"""PDF files through pdfminer.six (chosen by bench/extractors.py): the text of each page in reading
order, the running headers, footers and page numbers that repeat in the margins left out, and the
sections: the file's outline (bookmarks) where it has one, else headings told by their font (larger
than the body text, or a short bold line followed by body text)."""

from __future__ import annotations

import itertools
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from pdfminer.layout import LAParams, LTChar, LTTextContainer, LTTextLine
from pdfminer.pdfdocument import PDFDocument, PDFPasswordIncorrect
from pdfminer.pdfpage import PDFPage
from pdfminer.pdfparser import PDFParser
from pdfminer.pdftypes import resolve1
from pdfminer.psparser import PSLiteral
from pdfminer.utils import decode_text

from medsearch.documents.base import Extracted, Limits, TextBuilder, Unreadable

MARGIN = 0.09  # the top and bottom share of a page where running headers and footers sit
HEADING_RATIO = 1.15  # a line this much larger than the body text is a heading
MAX_HEADING_CHARS = 150
_PAGE_NUMBER = re.compile(r"^(page|p\.|seite|página|pagina)?\s*\d+\s*((of|/|de|sur|von)\s*\d+)?$", re.I)
_BOLD = re.compile(r"bold|black|heavy|semibold|demi", re.I)
_UNMAPPED = re.compile(r"\(cid:\d+\)")  # a glyph the font maps to no character (bullets, dingbats)
_MACHINE_TITLE = re.compile(r"^(untitled( document)?|microsoft word - .*|document\d*|.*\.(docx?|pdf|odt|rtf))$", re.I)


@dataclass
class _Line:
    page: int
    top: float  # share of the page height from the top, 0..1
    text: str
    size: float
    bold: bool
    box: int  # the text box it belongs to (a paragraph)


def extract(path: Path, limits: Limits) -> Extracted:
    from pdfminer.converter import PDFPageAggregator
    from pdfminer.pdfinterp import PDFPageInterpreter, PDFResourceManager

    with open(path, "rb") as file:
        try:
            document = PDFDocument(PDFParser(file), password="")
        except PDFPasswordIncorrect:
            raise Unreadable("encrypted: it needs a password (save a copy without one)") from None
        except Exception as err:  # pdfminer raises many kinds for a broken file
            raise Unreadable(f"damaged or not a PDF ({_what(err)})") from None
        _check_page_count(document, limits)
        try:
            pages = list(itertools.islice(PDFPage.create_pages(document), limits.max_pages + 1))
        except Exception as err:
            raise Unreadable(f"damaged: its pages cannot be read ({_what(err)})") from None
        if len(pages) > limits.max_pages:
            raise Unreadable(f"over the {limits.max_pages}-page limit (--max-pages)")
        manager = PDFResourceManager()
        device = PDFPageAggregator(manager, laparams=LAParams())
        interpreter = PDFPageInterpreter(manager, device)
        lines: list[_Line] = []
        box = 0
        for number, page in enumerate(pages, start=1):
            try:
                interpreter.process_page(page)
            except MemoryError:
                raise
            except Exception as err:
                raise Unreadable(f"damaged: page {number} cannot be read ({_what(err)})") from None
            layout = device.get_result()
            height = (layout.y1 - layout.y0) or 1.0
            for element in layout:
                if not isinstance(element, LTTextContainer):
                    continue
                box += 1
                for line in element:
                    if isinstance(line, LTTextLine) and (text := " ".join(_UNMAPPED.sub("", line.get_text()).split())):
                        sizes = [c.size for c in line if isinstance(c, LTChar)]
                        fonts = [c.fontname for c in line if isinstance(c, LTChar) and c.get_text().strip()]
                        lines.append(_Line(number, (layout.y1 - line.y1) / height, text,
                                           round(_median(sizes), 1) if sizes else 0.0,
                                           bool(fonts) and all(_BOLD.search(f) for f in fonts), box))
        outline = _outline(document, {page.pageid: number for number, page in enumerate(pages, start=1)})
        title = _info_title(document)
    if not lines:
        raise Unreadable("no text found: a scanned or image-only PDF has no text layer (run OCR on it first, e.g. ocrmypdf)")
    lines = _without_running_lines(lines, len(pages)) or lines  # (a text that is all margin lines stays)
    builder, headings = _assemble(lines, len(pages), fonts=len(outline) < 2)
    if len(outline) >= 2:
        builder.layout.sections = _place(outline, "".join(builder.parts), builder.layout.pages)
        headings = [(level, title) for _, level, title in builder.layout.sections]
    return builder.result(title=title or _font_title(lines) or "")


def _check_page_count(document: PDFDocument, limits: Limits) -> None:
    """Unreadable when the page tree says it holds more pages than the limit (before any is read)."""
    try:
        count = resolve1(resolve1(document.catalog.get("Pages")).get("Count"))
    except Exception:  # no usable count: the pages are counted as they are read
        return
    if isinstance(count, int) and count > limits.max_pages:
        raise Unreadable(f"{count} pages, over the {limits.max_pages}-page limit (--max-pages)")


def _what(err: Exception) -> str:
    return f"{type(err).__name__}: {err}"[:160] if str(err) else type(err).__name__


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def _without_running_lines(lines: list[_Line], pages: int) -> list[_Line]:
    """`lines` without page numbers and without the lines that repeat, digits aside, in the top or
    bottom margin of at least half the pages (running headers and footers)."""
    def in_margin(line: _Line) -> bool:
        return line.top < MARGIN or line.top > 1 - MARGIN

    def key(line: _Line) -> str:
        return re.sub(r"\d+", "#", line.text.lower())

    pages_with = Counter(k for _, k in {(line.page, key(line)) for line in lines if in_margin(line)})
    repeated = {k for k, n in pages_with.items() if pages >= 2 and n >= max(2, pages / 2)}
    return [line for line in lines
            if not (in_margin(line) and (_PAGE_NUMBER.match(line.text) or key(line) in repeated))]


def _outline(document: PDFDocument, page_numbers: dict) -> list[tuple[int, str, int]]:
    """The file's outline as (level, title, page); entries whose page cannot be told are left out."""
    try:
        entries = list(document.get_outlines())
    except Exception:  # PDFNoOutlines, or an outline too broken to walk: none
        return []
    out = []
    for level, title, dest, action, _ in entries:
        try:
            if dest is None and action is not None:
                action = resolve1(action)
                dest = action.get("D") if isinstance(action, dict) else None
            dest = resolve1(dest)
            if isinstance(dest, (str, bytes, PSLiteral)):  # a named destination
                dest = resolve1(document.get_dest(dest.name if isinstance(dest, PSLiteral) else dest))
            if isinstance(dest, dict):
                dest = resolve1(dest.get("D"))
            page = page_numbers.get(getattr(dest[0], "objid", None)) if isinstance(dest, list) and dest else None
        except Exception:  # a destination that does not resolve: that entry only
            page = None
        title = " ".join(str(title or "").split())
        if page and title:
            out.append((int(level), title, page))
    return out


def _place(outline: list[tuple[int, str, int]], text: str, pages: list[int]) -> list[tuple[int, int, str]]:
    """Sections at the outline's entries: each where its title first appears on its page (after the
    previous entry), else where its page starts."""
    sections, last = [], 0
    folded = text.casefold()
    for level, title, page in outline:
        start = pages[page - 1] if page <= len(pages) else len(text)
        end = pages[page] if page < len(pages) else len(text)
        at = folded.find(title.casefold(), max(start, last), end)
        at = at if at >= 0 else max(start, last)
        sections.append((at, level, title))
        last = at
    return sections


def _assemble(lines: list[_Line], pages: int, fonts: bool = True) -> tuple[TextBuilder, list[tuple[int, str]]]:
    """The text, page by page: each text box a paragraph (hyphenated line ends joined); with `fonts`,
    each heading line (or run of them) a heading at its font's level; also the headings as (level, text)."""
    weights = Counter()
    for line in lines:
        weights[line.size] += len(line.text)
    body = weights.most_common(1)[0][0]
    sizes = sorted({line.size for line in lines if _is_large(line, body)}, reverse=True)
    levels = {size: i + 1 for i, size in enumerate(sizes)}
    bold_level = len(sizes) + 1
    box_lines = Counter(line.box for line in lines)

    def level_of(i: int) -> int | None:
        line = lines[i]
        if not fonts:
            return None
        if _is_large(line, body):
            return levels[line.size]
        if (line.bold and box_lines[line.box] <= 2 and len(line.text) <= 80 and not line.text.endswith((".", ":", ";", ","))
                and _body_follows(lines, i, body)):
            return bold_level
        return None

    builder, headings = TextBuilder(), []
    page, paragraph, heading = 0, [], None  # heading: (level, box, [texts])

    def flush():
        nonlocal paragraph, heading
        if heading:
            text = " ".join(heading[2])
            builder.heading(text, heading[0])
            headings.append((heading[0], text))
            heading = None
        if paragraph:
            builder.paragraph(_join_lines(paragraph))
            paragraph = []

    last_box = None
    for i, line in enumerate(lines):
        while page < line.page:
            flush()
            builder.page()
            page += 1
        level = level_of(i)
        if level is not None:
            if heading and heading[0] == level and heading[1] == line.box:
                heading[2].append(line.text)
            else:
                flush()
                heading = (level, line.box, [line.text])
        else:
            if heading or line.box != last_box:
                flush()
            paragraph.append(line.text)
        last_box = line.box
    flush()
    while page < pages:  # trailing pages with no text keep their numbers
        builder.page()
        page += 1
    return builder, headings


def _body_follows(lines: list[_Line], i: int, body: float) -> bool:
    """Whether the first line after line i's box is body text (neither bold nor large): a bold line
    over a paragraph is a heading, one of a list of bold lines (names, labels) is not."""
    box = lines[i].box
    following = next((line for line in lines[i + 1:] if line.box != box), None)
    return following is not None and not following.bold and not _is_large(following, body)


def _is_large(line: _Line, body: float) -> bool:
    return line.size >= body * HEADING_RATIO and len(line.text) <= MAX_HEADING_CHARS


def _join_lines(lines: list[str]) -> str:
    """A paragraph's lines as one: a word hyphenated across a line end ("treat-" + "ment") is joined."""
    out = lines[0]
    for line in lines[1:]:
        if re.search(r"[^\W\d_]-$", out) and line[:1].islower():
            out = out[:-1] + line
        else:
            out = out.rstrip("\u00ad") + ("" if out.endswith("\u00ad") else " ") + line
    return out


def _font_title(lines: list[_Line]) -> str | None:
    """The largest text on the first page with text, when it is larger than the body text (a title)."""
    weights = Counter()
    for line in lines:
        weights[line.size] += len(line.text)
    body = weights.most_common(1)[0][0]
    first = [line for line in lines if line.page == lines[0].page]
    size = max(line.size for line in first)
    largest = [line for line in first if line.size == size]
    if not _is_large(largest[0], body):
        return None
    return " ".join(line.text for line in largest if line.box == largest[0].box)[:MAX_HEADING_CHARS]


def _info_title(document: PDFDocument) -> str | None:
    """The title in the file's metadata, unless a program's placeholder (the caller falls back on the
    first top-level heading)."""
    for info in document.info or []:
        value = info.get("Title")
        if isinstance(value, PSLiteral):
            value = value.name
        if isinstance(value, bytes):
            value = decode_text(value)
        if isinstance(value, str) and value.strip() and not _MACHINE_TITLE.match(value.strip()):
            return value.strip()
    return None

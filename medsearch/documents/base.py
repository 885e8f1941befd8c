"""What every extractor gives (an `Extracted`: text, title, layout) or raises (`Unreadable`), the
bounds on what it reads, and `extract`, which picks the extractor by the file's suffix."""

from __future__ import annotations

import bisect
import importlib
import logging
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

# suffix -> the module under medsearch.documents that reads it
FORMATS = {".pdf": "pdf", ".html": "html", ".htm": "html", ".docx": "docx"}
log = logging.getLogger("medsearch")
EXTRA_HINT = "pip install 'medsearch[documents]'"
# characters a PDF or a Word file can carry that are not text: C0/C1 controls but tab and newline,
# lone surrogates, and the private-use area fonts map symbols to
# and the bidirectional overrides and isolates, and the byte-order mark, that let a text display
# as other than it is
_NOT_TEXT = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff\ue000-\uf8ff\u202a-\u202e\u2066-\u2069\ufeff]")
MAX_TITLE_CHARS = 300  # a title or heading longer is cut: it is passed with every chunk and every hit


@dataclass(frozen=True)
class Limits:
    """Bounds on one file: a larger one is skipped whole, with a line saying which bound it passed."""

    max_bytes: int = 100 * 1024 * 1024
    max_pages: int = 2000  # PDF pages
    max_chars: int = 20_000_000  # extracted text (a compressed file can hold far more than its bytes)
    max_seconds: float = 120.0  # to read one file (documents.worker)
    max_memory: int = 4 * 1024**3  # to read one file, above what the reading process holds (Linux)


DEFAULT_LIMITS = Limits()


class Unreadable(Exception):
    """A file that yields no document: `reason` says why in a few words ("encrypted: ...")."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class Layout:
    """Where things start in a document's text: `pages[i]` is the offset of page i + 1 (PDF);
    `sections` are (offset of the heading, level 1 = top, heading text), in text order."""

    pages: list[int] = field(default_factory=list)
    sections: list[tuple[int, int, str]] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"pages": self.pages, "sections": [list(s) for s in self.sections]}

    @classmethod
    def from_json(cls, data: dict | None) -> "Layout":
        data = data or {}
        return cls(list(data.get("pages") or []), [tuple(s) for s in data.get("sections") or []])

    def __bool__(self) -> bool:
        return bool(self.pages or self.sections)

    def page_at(self, offset: int) -> int | None:
        """The page (1-based) holding character `offset`; None for a text without pages."""
        return bisect.bisect_right(self.pages, offset) if self.pages else None

    def section_at(self, offset: int) -> str | None:
        """The heading path ("Dosage > Children") of the section holding `offset`; None before the first heading."""
        path: list[tuple[int, str]] = []
        for start, level, heading in self.sections:
            if start > offset:
                break
            path = [(lvl, text) for lvl, text in path if lvl < level] + [(level, heading)]
        return " > ".join(text for _, text in path) or None


@dataclass
class Extracted:
    text: str
    title: str = ""
    layout: Layout = field(default_factory=Layout)
    url: str = ""
    metadata: dict = field(default_factory=dict)


class TextBuilder:
    """Text assembled block by block (paragraphs, headings, page breaks), recording the layout:
    blocks are separated by a blank line, a heading is a block of its own."""

    def __init__(self):
        self.parts: list[str] = []
        self.length = 0
        self.layout = Layout()

    def _add(self, text: str) -> int:
        if self.parts:
            self.parts.append("\n\n")
            self.length += 2
        start = self.length
        self.parts.append(text)
        self.length += len(text)
        return start

    def paragraph(self, text: str) -> None:
        text = clean(text)
        if text:
            self._add(text)

    def heading(self, text: str, level: int) -> None:
        """A heading: all of it in the text, its first MAX_TITLE_CHARS characters as the section's name."""
        text = " ".join(clean(text).split())
        if text:
            self.layout.sections.append((self._add(text), max(0, level), text[:MAX_TITLE_CHARS]))

    def page(self) -> None:
        """The next block starts a new page."""
        self.layout.pages.append(self.length + (2 if self.parts else 0))

    def result(self, title: str = "", url: str = "", metadata: dict | None = None) -> Extracted:
        """The document; a lone top heading that repeats the title (a page's <h1>, a Word file's
        Title paragraph) stays in the text but is not a section: paths start below it."""
        text = "".join(self.parts)
        title = " ".join(clean(title).split())[:MAX_TITLE_CHARS]
        pages = [min(p, len(text)) for p in self.layout.pages]
        sections = self.layout.sections
        if sections and title and sections[0][2].casefold() == title.casefold():
            top = sections[0][1]
            if all(level > top for _, level, _ in sections[1:]):
                sections = sections[1:]
        return Extracted(text, title, Layout(pages, sections), url, metadata or {})


def clean(text: str) -> str:
    """Text as an index keeps it: NFC, no control or private-use characters, no trailing spaces."""
    text = _NOT_TEXT.sub("", unicodedata.normalize("NFC", text or ""))
    return "\n".join(line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")).strip()


def extract(path: Path, limits: Limits = DEFAULT_LIMITS) -> Extracted:
    """The document in the file at `path`, by its suffix; Unreadable with the reason otherwise."""
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise Unreadable(f"unsupported file type '{path.suffix}'")
    size = path.stat().st_size
    if size > limits.max_bytes:
        raise Unreadable(f"{size / 1e6:.1f} MB, over the {limits.max_bytes / 1e6:g} MB limit (--max-file-mb)")
    if size == 0:
        raise Unreadable("empty file")
    try:
        module = importlib.import_module(f"medsearch.documents.{FORMATS[suffix]}")
    except ImportError as err:
        raise Unreadable(f"reading {suffix} files needs the documents extra ({err.name} is missing): {EXTRA_HINT}") from None
    try:
        extracted = module.extract(path, limits)
    except (Unreadable, OSError, MemoryError):
        raise
    except Exception as err:  # a file the format's library fails on in a way it does not name: skipped, said why
        log.debug("%s: %s failed", path, FORMATS[suffix], exc_info=True)
        raise Unreadable(f"could not be read ({type(err).__name__}: {err})"[:200]) from None
    if len(extracted.text) > limits.max_chars:
        raise Unreadable(f"{len(extracted.text):,} characters of text, over the {limits.max_chars:,} limit")
    if not extracted.text.strip():
        raise Unreadable("no text found in it")
    return extracted

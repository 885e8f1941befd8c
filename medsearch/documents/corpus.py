"""Read a corpus from disk into Document records, with errors that name the file and line.

Accepted inputs (a file or a folder):
- BEIR folder: a folder holding `corpus.jsonl`: that file is read, and the PDF, web pages and Word
  files beside it or below it, not BEIR's queries, qrels or README.
- `.jsonl`: one JSON object a line: `id` or `_id`, `text` (required), `title`, `url`, `source`;
  every other field is kept as metadata.
- `.csv`: a header row with a `text` column; the same optional columns as JSONL.
- `.txt` / `.md`: one document per file; id = path relative to the corpus folder; title = the
  first `# heading` of a Markdown file, else the file name; a Markdown file's headings are its sections.
- `.pdf`, `.html` / `.htm`, `.docx` (the `documents` extra; documents/): one document per file, id =
  path relative to the corpus folder; title from the file's metadata or first heading; its layout
  (pages, heading path of each section) kept for citations.
A folder without `corpus.jsonl` is walked recursively (hidden files skipped, sorted order).

A record file that is malformed (JSONL, CSV, bad UTF-8) is an error, as is an empty corpus. A
document file that yields nothing (damaged, encrypted, no text layer, unsupported type, past a
size limit) is skipped with one warning line naming it and why, and counted in `Corpus.skipped`;
with `strict`, the first one is an error instead.

Ids are taken exactly (never stripped): one with whitespace at either end or a control character
is refused; one not in Unicode NFC form is normalised to it, with one warning for the whole run
(validation.check_id), so the NFC and NFD spellings of an id are one document.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from medsearch.documents.base import (
    DEFAULT_LIMITS,
    FORMATS,
    Layout,
    Limits,
    Unreadable,
    extract,
)
from medsearch.documents.worker import Reader
from medsearch.errors import BadInputError, NotFoundError
from medsearch.validation import check_id, check_text, check_value

RECORD_SUFFIXES = (".jsonl", ".csv", ".txt", ".md")
SUFFIXES = RECORD_SUFFIXES + tuple(FORMATS)
_MARKDOWN_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)
_HIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\u202a-\u202e\u2066-\u2069]")
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
_KNOWN_FIELDS = {"id", "_id", "title", "text", "url", "source"}
log = logging.getLogger("medsearch")
# The corpora whose normalised ids this process has told of (`medsearch index` may read one twice)
_told: set[tuple[str, int]] = set()


@dataclass
class Document:
    id: str
    text: str
    title: str = ""
    url: str = ""
    source: str = ""
    metadata: dict = field(default_factory=dict)
    origin: str = ""  # "file:line", for error messages only
    # where pages and sections start in `text` (documents.Layout.to_json()); None: none known
    layout: dict | None = None

    @property
    def content_hash(self) -> str:
        layout = f"\n{json.dumps(self.layout, sort_keys=True)}" if self.layout else ""
        return hashlib.sha256(f"{self.title}\n{self.text}{layout}".encode()).hexdigest()[:16]


@dataclass
class Corpus:
    documents: list[Document]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason) of each file that gave nothing

    def skipped_summary(self) -> str:
        """"Skipped 3 files (see the lines above)", or "" when none was."""
        n = len(self.skipped)
        return f"Skipped {n} file{'s' if n != 1 else ''} that gave no document (see the lines above)" if n else ""


def read_corpus(path: str | Path) -> list[Document]:
    """Read every document under `path`; raise BadInputError on any bad record or an empty corpus
    (files that give no document are skipped with a warning: load_corpus)."""
    return load_corpus(path).documents


def load_corpus(path: str | Path, *, strict: bool = False, limits: Limits = DEFAULT_LIMITS,
                progress: bool = False) -> Corpus:
    """Every document under `path`, and the document files skipped (each logged as one warning:
    'skipped FILE: reason'); with `strict`, the first such file is a BadInputError. Malformed record
    files and an empty corpus are errors either way."""
    root = Path(path)
    if not root.exists():
        raise NotFoundError(f"corpus path not found: {root}")
    if root.is_dir():
        files, base = _corpus_files(root), root
        if not files:
            raise BadInputError(f"no corpus files ({', '.join(SUFFIXES)}) in {root}")
    else:
        if root.suffix.lower() not in SUFFIXES:
            raise BadInputError(f"{root}: unsupported file type '{root.suffix}' (use {', '.join(SUFFIXES)})")
        files, base = [root], root.parent
    documents, skipped = [], []
    reader = Reader(limits)  # document files are read in a process of their own, each within the limits
    bar = None
    if progress and sum(f.suffix.lower() in FORMATS for f in files) > 20:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(files), desc="Reading", unit="file")
    try:
        for file in files:
            try:
                if file.suffix.lower() not in SUFFIXES:
                    raise Unreadable(f"unsupported file type '{file.suffix or file.name}' (medsearch reads {', '.join(SUFFIXES)})")
                documents.extend(_read_file(file, base, reader))
            except Unreadable as err:
                name = file.relative_to(base).as_posix()
                skipped.append((name, err.reason))
                _skip(name, err.reason, strict)
            if bar is not None:
                bar.update()
    finally:
        reader.close()
        if bar is not None:
            bar.close()
    documents = normalised_ids(documents, str(root), once=True)
    seen: dict[str, str] = {}
    for doc in documents:
        if doc.id in seen:
            raise BadInputError(f"{doc.origin}: duplicate document id '{doc.id}' (first seen at {seen[doc.id]})")
        seen[doc.id] = doc.origin
    if not documents:
        raise BadInputError(f"no documents found in {root}: the corpus is empty"
                            + (f" ({len(skipped)} file{'s' if len(skipped) != 1 else ''} skipped)" if skipped else ""))
    return Corpus(documents, skipped)


def _skip(name: str, reason: str, strict: bool) -> None:
    name = printable(name)
    if strict:
        raise BadInputError(f"{name}: {reason} (--strict stops at the first file that gives no document)")
    log.warning("skipped %s: %s", name, reason)


def printable(name: str) -> str:
    """A file name as one line can show it: control characters, lone surrogates (bytes that were not
    UTF-8) and the bidirectional controls escaped, so a name cannot forge a line or move the cursor."""
    return "".join(char.encode("unicode_escape").decode("ascii") if _HIDDEN.match(char) else char for char in name)


def normalised_ids(documents: list[Document], where: str, once: bool = False) -> list[Document]:
    """`documents` with their ids as stored (validation.check_id: refused with one line naming the
    record, or NFC-normalised); one warning for all the ids that changed, naming how many, not which
    (ids can be personal); with `once`, only the first time this process reads `where`."""
    out, changed, seen = [], 0, {}
    for number, doc in enumerate(documents, start=1):
        origin = doc.origin or f"{where}: document {number}"
        doc_id = check_id(doc.id, origin)
        if doc_id in seen:  # (two spellings of one id, NFC and NFD, are one id)
            raise BadInputError(f"{origin}: duplicate document id '{doc_id}' (first seen at {seen[doc_id]})")
        seen[doc_id] = origin
        if doc_id != doc.id:
            doc, changed = dataclasses.replace(doc, id=doc_id), changed + 1
        out.append(doc)
    if changed and not (once and (where, changed) in _told):
        if once:
            _told.add((where, changed))
        log.warning("%s: %d document id%s not in Unicode NFC form: normalised to it (the NFC and NFD spellings "
                    "of an id are one document)", where, changed, " was" if changed == 1 else "s were")
    return out


def _corpus_files(root: Path) -> list[Path]:
    """The files under `root` (hidden ones aside), in sorted order; those of an unsupported type are
    there to be reported. In a BEIR folder (one holding corpus.jsonl) and below it, every file but
    corpus.jsonl and the documents is BEIR's own (queries, qrels, README): left out, unreported."""
    paths = sorted(p for p in root.rglob("*") if not any(part.startswith(".") for part in p.relative_to(root).parts))
    beir = [p.parent for p in paths if p.name == "corpus.jsonl" and p.is_file()]
    return [p for p in paths if p.is_file() and (p.suffix.lower() in FORMATS or p.name == "corpus.jsonl"
                                                 or not any(folder == p.parent or folder in p.parents for folder in beir))]


def _read_file(file: Path, base: Path, reader: "Reader | None" = None) -> Iterator[Document]:
    name = file.relative_to(base).as_posix()
    suffix = file.suffix.lower()
    if suffix in FORMATS:
        yield _read_document(file, name, reader)
        return
    if suffix in (".txt", ".md"):  # the file's name is its id
        _check_name(name)
    name = printable(name)  # (record files: the name is in messages only)
    content = read_text(file)
    if suffix == ".jsonl":
        yield from _read_jsonl(content, name)
    elif suffix == ".csv":
        yield from _read_csv(content, name)
    else:
        yield _read_plain(content, name, markdown=suffix == ".md")


def read_text(file: Path) -> str:
    data = file.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise BadInputError(f"{printable(str(file))}:{line}: not valid UTF-8 (byte {err.start}); re-save the file as UTF-8") from None


def _record_to_document(record: dict, origin: str, source: str, default_id: str) -> Document:
    check_value(record, origin)  # lone surrogates, NUL, NaN / Infinity / 1e400: one line naming the field
    for key in record:
        if '"' in str(key):  # a filter names keys as JSON paths, where '"' cannot be written
            raise BadInputError(f"{origin}: metadata key {key!r} contains '\"', which a filter cannot name; rename it")
    for name in ("_id", "id", "title", "url", "source"):  # text or a number, never an object or a list
        if isinstance(record.get(name), (dict, list, bool)):
            raise BadInputError(f"{origin}: '{name}' must be text, not {type(record[name]).__name__}")
    raw_id = record.get("_id", record.get("id"))
    doc_id = default_id if raw_id is None or raw_id == "" else str(raw_id)
    check_id(doc_id, origin)  # taken exactly: whitespace at either end or a control character is refused
    text = record.get("text")
    if not isinstance(text, str) or not text.strip():
        raise BadInputError(f"{origin}: missing or empty 'text' field")
    return Document(
        id=doc_id,
        text=text.strip(),
        title=str(record.get("title") or "").strip(),
        url=str(record.get("url") or ""),
        source=str(record.get("source") or source),
        metadata={k: v for k, v in record.items() if k not in _KNOWN_FIELDS},
        origin=origin,
    )


def json_records(content: str, name: str) -> Iterator[tuple[str, dict]]:
    """(origin, object) for each non-blank line of a JSONL text (lines end at '\n' only: U+2028 and
    U+2029 are valid inside a JSON string)."""
    for number, line in enumerate(content.split("\n"), start=1):
        if not line.strip():
            continue
        origin = f"{name}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise BadInputError(f"{origin}: malformed JSON ({err.msg} at column {err.colno})") from None
        except RecursionError:
            raise BadInputError(f"{origin}: JSON nested too deep to read") from None
        except ValueError as err:  # e.g. an integer of more digits than Python converts
            raise BadInputError(f"{origin}: unreadable JSON ({err})") from None
        if not isinstance(record, dict):
            raise BadInputError(f"{origin}: expected a JSON object, got {type(record).__name__}")
        yield origin, record


def _read_jsonl(content: str, name: str) -> Iterator[Document]:
    for origin, record in json_records(content, name):
        yield _record_to_document(record, origin, name, default_id=origin)


def _read_csv(content: str, name: str) -> Iterator[Document]:
    reader = csv.DictReader(io.StringIO(content, newline=""))
    try:
        if not reader.fieldnames or "text" not in reader.fieldnames:
            raise BadInputError(f"{name}:1: CSV header needs a 'text' column (found: {reader.fieldnames or 'nothing'})")
        for record in reader:
            origin = f"{name}:{reader.line_num}"
            if None in record:
                raise BadInputError(f"{origin}: more fields than the header has columns")
            yield _record_to_document(record, origin, name, default_id=origin)
    except csv.Error as err:
        raise BadInputError(f"{name}:{reader.line_num}: malformed CSV ({err})") from None


def _read_plain(content: str, name: str, markdown: bool) -> Document:
    text = check_text(content.strip(), name)
    if not text:
        raise BadInputError(f"{name}: empty file")
    title, layout = Path(name).stem, None
    if markdown:
        heading = next((ln for ln in text.splitlines() if ln.startswith("# ")), None)
        if heading:
            title = heading[2:].strip()
        layout = markdown_layout(text)
    check_id(name, name)  # the file's path is its id: the same rules as an id in a record
    return Document(id=name, text=text, title=title, source=name, origin=name, layout=layout)


def markdown_layout(text: str) -> dict | None:
    """A Markdown text's sections: its ATX headings (`## Dosage`) outside code fences."""
    fenced = [(m.start(), m.end()) for m in _FENCE.finditer(text)]
    sections = [(m.start(), len(m.group(1)), m.group(2).strip()) for m in _MARKDOWN_HEADING.finditer(text)
                if not any(a <= m.start() < b for a, b in fenced)]
    return Layout(sections=sections).to_json() if sections else None


def _check_name(name: str) -> None:
    """Unreadable when a file's name cannot be its document's id (validation.check_id)."""
    try:
        check_id(name, printable(name))
    except BadInputError as err:
        raise Unreadable(f"its name cannot be a document id ({str(err).split(': ', 1)[-1]}); rename the file") from None


def _read_document(file: Path, name: str, reader: "Reader | None") -> Document:
    """A PDF, web page or Word file as one document (documents/; in `reader`'s process when given);
    Unreadable when it gives none, or when its name cannot be an id."""
    _check_name(name)
    try:
        extracted = reader.read(file) if reader is not None else extract(file)
    except OSError as err:
        raise Unreadable(f"cannot be read ({err.strerror or err})") from None
    return Document(id=name, text=extracted.text, title=extracted.title or file.stem, url=extracted.url,
                    source=name, metadata=extracted.metadata, origin=name,
                    layout=extracted.layout.to_json() if extracted.layout else None)


def documents_from_records(records: list, where: str = "document") -> list[Document]:
    """Documents from JSON objects (an HTTP request body): each needs an `id` and a `text`; the
    other fields as in a .jsonl corpus."""
    documents = []
    for number, record in enumerate(records, start=1):
        origin = f"{where} {number}"
        if not isinstance(record, dict):
            raise BadInputError(f"{origin}: expected a JSON object, got {type(record).__name__}")
        if record.get("_id", record.get("id")) in (None, ""):
            raise BadInputError(f"{origin}: missing or empty 'id'")
        documents.append(_record_to_document(record, origin, source="", default_id=""))
    if not documents:
        raise BadInputError("no documents given")
    documents, seen = normalised_ids(documents, f"{where}s"), set()
    for doc in documents:
        if doc.id in seen:
            raise BadInputError(f"{doc.origin}: duplicate document id '{doc.id}'")
        seen.add(doc.id)
    return documents


def read_queries(path: str | Path) -> tuple[list[str], list[str]]:
    """(ids, texts) from a JSONL file (`_id`/`id`/`query_id`, `text`/`query`) or a text file, one a line."""
    file = Path(path)
    if not file.is_file():
        raise NotFoundError(f"queries file not found: {file}")
    content = read_text(file)
    if file.suffix.lower() == ".jsonl":
        pairs = [
            (str(record.get("_id", record.get("id", record.get("query_id", origin)))), record.get("text", record.get("query")), origin)
            for origin, record in json_records(content, file.name)
        ]
    else:
        pairs = [(str(n), line, f"{file.name}:{n}") for n, line in enumerate(content.splitlines(), 1) if line.strip()]
    for qid, text, origin in pairs:
        if not isinstance(text, str) or not text.strip():
            raise BadInputError(f"{origin}: missing or empty 'text' field")
        check_text(text, f"{origin}: the query text")
        check_text(qid, f"{origin}: the query id")
    ids, texts = [qid for qid, _, _ in pairs], [text.strip() for _, text, _ in pairs]
    if not texts:
        raise BadInputError(f"{file}: no queries in the file")
    return ids, texts

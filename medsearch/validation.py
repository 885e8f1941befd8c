"""Checks on text and numbers from outside (request bodies, query parameters, corpus files) before
anything is encoded or stored.

JSON lets through what the rest of the stack cannot take: a lone surrogate (`"\\ud800"`) is a
valid JSON escape but no UTF-8 text, so the tokenizer, SQLite and the response encoder fail on it;
NUL cuts strings short in C code (metadata keys, FTS5); `NaN`, `Infinity` and `1e400` (read as
inf) are accepted by Python's json module but are no JSON a client can read back. One walk over
the parsed value finds them all and names where:

    check_value({"metadata": {"dose": float("nan")}}, "document 3")
    -> BadInputError("document 3: metadata.dose: not a finite number (NaN, Infinity and numbers past
       1e308 cannot be stored)")
"""

from __future__ import annotations

import math
import re
import unicodedata

from medsearch.errors import BadInputError

_SURROGATE = re.compile("[\ud800-\udfff]")


def text_problem(text: str) -> str | None:
    """What makes `text` unusable (a lone surrogate, a NUL character), or None."""
    if "\x00" in text:
        return "contains a NUL character (\\u0000)"
    match = _SURROGATE.search(text)
    if match:
        return f"contains a lone surrogate (\\u{ord(match.group()):04x}) at character {match.start()}: not valid Unicode text"
    return None


def check_text(text: str, where: str) -> str:
    """`text`, or BadInputError naming `where` when it holds a lone surrogate or NUL."""
    problem = text_problem(text)
    if problem:
        raise BadInputError(f"{where}: {problem}")
    return text


def normal_id(doc_id: str) -> str:
    """A document id as it is stored and looked up: Unicode NFC, so that the NFC and NFD spellings
    of an id ("café" as one character or as 'e' + a combining accent; macOS names files in NFD) are
    one document, and a lookup by either finds it."""
    return unicodedata.normalize("NFC", doc_id)


JOINERS = ("\u200c", "\u200d")  # zero-width (non-)joiners: part of how some scripts (Persian, Hindi) are written


def _invisible(char: str) -> bool:
    """A control character, a format character (zero-width space, byte-order mark, bidi override:
    one that prints as nothing) other than the joiners, or a line or paragraph separator."""
    return unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp") and char not in JOINERS


def check_id(doc_id: str, where: str) -> str:
    """A document id as it is stored (`normal_id`), or BadInputError naming `where` when it has
    whitespace at either end or an invisible or control character (_invisible): ids are taken exactly,
    so 'pad ' and 'pad' would be two documents that print alike. Every way in (corpus records, file names, the API's
    writes) goes through here."""
    check_text(doc_id, f"{where}: the document id")
    if doc_id != doc_id.strip():
        raise BadInputError(f"{where}: document id {doc_id!r} has whitespace at its start or end; ids are "
                            "taken exactly: remove it")
    control = next((c for c in doc_id if _invisible(c)), None)
    if control is not None:
        raise BadInputError(f"{where}: document id {doc_id!r} contains an invisible or control character "
                            f"(U+{ord(control):04X}): ids that print alike must not be two documents")
    return normal_id(doc_id)


MAX_DEPTH = 32  # nested objects and lists in one value (a deeper one fails JSON encoding on answer)
MAX_KEY_CHARS = 200  # a metadata key's length (keys are echoed in filter errors and /info)


def check_value(value, where: str, field: str = "", depth: int = 0) -> None:
    """Walk a parsed JSON value: every string (keys included) must be valid text, every number
    finite, keys at most MAX_KEY_CHARS long, nesting at most MAX_DEPTH deep. Messages name `where`
    and the field: 'document 3: metadata.dose: not a finite number ...'."""
    place = f"{where}: {field}" if field else where
    if depth > MAX_DEPTH:
        raise BadInputError(f"{place}: nested more than {MAX_DEPTH} levels deep")
    if isinstance(value, str):
        check_text(value, place)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise BadInputError(f"{place}: not a finite number (NaN, Infinity and numbers past 1e308 cannot be stored)")
    elif isinstance(value, dict):
        for key, item in value.items():
            name = str(key)
            if len(name) > MAX_KEY_CHARS:
                raise BadInputError(f"{where}: a key of {len(name)} characters" + (f" in {field}" if field else "")
                                    + f"; the limit is {MAX_KEY_CHARS}")
            check_text(name, f"{where}: key {name!r}" + (f" in {field}" if field else ""))
            check_value(item, where, f"{field}.{name}" if field else name, depth + 1)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_value(item, where, f"{field}[{i}]", depth + 1)

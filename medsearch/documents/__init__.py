"""Files that are documents rather than records: PDF, web pages and Word files (the `documents`
extra), each read by one extractor into an `Extracted` (text, title, and its layout: where each page
and section starts), or refused with `Unreadable` (one reason, one line).

corpus.py walks the folders and turns an `Extracted` into a Document; citations.py turns a layout
and a character offset back into a page and a section path.
"""

from __future__ import annotations

from medsearch.documents.base import (
    DEFAULT_LIMITS,
    FORMATS,
    Extracted,
    Layout,
    Limits,
    Unreadable,
    extract,
)

__all__ = ["DEFAULT_LIMITS", "FORMATS", "Extracted", "Layout", "Limits", "Unreadable", "extract"]

"""Word files (.docx) through python-docx (chosen by bench/extractors.py): paragraphs and tables in
document order, headings from the paragraph styles (Title, Heading 1, Heading 2 ...), the title
from the file's properties or its first heading. Headers and footers are left out."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import docx
from docx.table import Table

from medsearch.documents.base import Extracted, Limits, TextBuilder, Unreadable

_HEADING = re.compile(r"^heading\s*(\d)$", re.I)


def extract(path: Path, limits: Limits) -> Extracted:
    try:
        with zipfile.ZipFile(path) as archive:  # a zip bomb is refused before python-docx inflates it
            inflated = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError) as err:
        raise Unreadable(f"damaged or not a Word file ({type(err).__name__}: {err})"[:200]) from None
    if inflated > 4 * limits.max_bytes:
        raise Unreadable(f"{inflated / 1e6:.0f} MB once unzipped, over the {4 * limits.max_bytes / 1e6:g} MB limit (--max-file-mb x 4)")
    try:
        document = docx.Document(str(path))
    except Exception as err:  # python-docx raises KeyError, ValueError, lxml errors ... on a broken package
        raise Unreadable(f"damaged or not a Word file ({type(err).__name__})") from None
    builder, first_heading = TextBuilder(), None
    # style names by id, read once: `paragraph.style` looks the default style up again for every
    # paragraph without one (a millisecond each in a long file)
    names = {style.style_id: style.name or "" for style in document.styles}
    for block in document.iter_inner_content():
        if isinstance(block, Table):
            rows = []
            for row in block.rows:
                cells = list(dict.fromkeys(" ".join(cell.text.split()) for cell in row.cells))  # merged cells repeat
                rows.append(" | ".join(cells))
            builder.paragraph("\n".join(row for row in rows if row.strip(" |")))
            continue
        style = names.get(block._p.style or "", "")
        level = 0 if style.lower() == "title" else int(m.group(1)) if (m := _HEADING.match(style)) else None
        if level is not None:
            builder.heading(block.text, level)
            first_heading = first_heading or block.text.strip()
        elif block.text.strip():
            builder.paragraph(block.text)
    title = (document.core_properties.title or "").strip() or first_heading or ""
    return builder.result(title=title)

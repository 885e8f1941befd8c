"""Web pages through trafilatura (chosen by bench/extractors.py): the main content only (navigation,
cookie banners, headers, footers and sidebars left out), its headings, lists and tables; the title
and the canonical URL from the page's metadata."""

from __future__ import annotations

from pathlib import Path

import trafilatura
from lxml import etree

from medsearch.documents.base import Extracted, Limits, TextBuilder, Unreadable


def extract(path: Path, limits: Limits) -> Extracted:
    data = path.read_bytes()
    try:
        xml = trafilatura.extract(data, output_format="xml", include_formatting=True, include_tables=True,
                                  include_comments=False, with_metadata=True, favor_recall=True)
    except Exception as err:  # trafilatura and lxml raise several kinds on a broken page
        raise Unreadable(f"not a readable web page ({type(err).__name__})") from None
    if not xml:
        raise Unreadable("no main text found in the page")
    root = etree.fromstring(xml.encode(), parser=etree.XMLParser(huge_tree=False, resolve_entities=False, no_network=True))
    builder = TextBuilder()
    main = root.find("main")
    for element in (main if main is not None else root):
        _add(builder, element)
    if not builder.parts:
        raise Unreadable("no main text found in the page")
    url = root.get("url") or ""
    return builder.result(title=root.get("title") or "", url=url if url.startswith(("http://", "https://")) else "")


def _add(builder: TextBuilder, element) -> None:
    tag = element.tag
    if tag == "head":
        rend = element.get("rend") or "h2"
        builder.heading(_text(element), int(rend[1]) if rend[1:2].isdigit() else 2)
    elif tag == "list":
        builder.paragraph("\n".join(f"- {_text(item)}" for item in element.iter("item") if _text(item)))
    elif tag == "table":
        rows = [" | ".join(_text(cell) for cell in row.iter("cell")) for row in element.iter("row")]
        builder.paragraph("\n".join(row for row in rows if row.strip(" |")))
    else:
        builder.paragraph(_text(element))


def _text(element) -> str:
    return " ".join("".join(element.itertext()).split())

"""Metadata filters: `field=value`, `field!=value`, `field>=number`, `field<=number` (ANDed).

A field is a document column (id, title, source, url) or a top-level metadata key. Filters
become one SQL condition, evaluated in SQLite (expression indexes on metadata keys, store.py);
the chunk rows it keeps go into the vector search as a faiss IDSelector (search.py), so a filter
that keeps few documents still gets k of them when k exist.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from medsearch.errors import BadInputError
from medsearch.store import COLUMNS, metadata_expression
from medsearch.validation import check_text

OPERATORS = ("!=", ">=", "<=", "=")
_OPERATOR_START = re.compile(r"[=!<>]")


@dataclass(frozen=True)
class Filter:
    field: str
    op: str
    value: str

    def __str__(self) -> str:
        return f"{self.field}{self.op}{self.value}"


def parse_filter(text: str) -> Filter:
    """`topic=symptom` -> Filter("topic", "=", "symptom"); BadInputError for anything else."""
    if not isinstance(text, str):
        raise BadInputError(f"a filter must be text like field=value; got {type(text).__name__}")
    check_text(text, "a filter")
    parts = _split(text)
    if parts is None:
        raise BadInputError(f"malformed filter '{text}': use field=value, field!=value, field>=number or field<=number")
    field, op, value = parts
    if not value:
        raise BadInputError(f"malformed filter '{text}': no value after '{op}'")
    if op in (">=", "<="):
        try:
            number = float(value)
        except ValueError:
            raise BadInputError(f"filter '{text}': '{op}' needs a number, not '{value}'") from None
        if not math.isfinite(number):
            raise BadInputError(f"filter '{text}': '{op}' needs a finite number")
    return Filter(field, op, value)


def _split(text: str) -> tuple[str, str, str] | None:
    """(field, operator, value) around the first operator, stripped; None when there is none. One
    pass over the text (a backtracking pattern took seconds for a long run of spaces)."""
    start = _OPERATOR_START.search(text)
    if start is None:
        return None
    i = start.start()
    op = "=" if text[i] == "=" else text[i:i + 2]
    field = text[:i].strip()
    if op not in OPERATORS or not field:
        return None
    return field, op, text[i + len(op):].strip()


def parse_filters(texts) -> list[Filter]:
    return [f if isinstance(f, Filter) else parse_filter(f) for f in texts or ()]


def filter_number(value: str) -> float | None:
    """The number a filter value also stands for (an `=` filter matches it too), or None."""
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def filter_sql(filters: list[Filter], metadata_fields: list[str]) -> tuple[str, list]:
    """One SQL condition over documents `d` (and its parameters) for all filters together."""
    known = set(metadata_fields)
    conditions, params = [], []
    for f in filters:
        if f.field in COLUMNS:
            expr = f"d.{f.field}"
        elif f.field in known:
            expr = metadata_expression(f.field)
        else:
            fields = ", ".join([*COLUMNS, *sorted(known)])
            raise BadInputError(f"unknown filter field '{f.field}' (fields of this index: {fields})")
        number = filter_number(f.value)
        if f.op in ("=", "!="):
            equal = f"({expr} = ? OR {expr} = ?)" if number is not None else f"{expr} = ?"
            values = [f.value, number] if number is not None else [f.value]
            conditions.append(equal if f.op == "=" else f"({expr} IS NULL OR NOT {equal})")
            params += values
        else:  # >= and <= compare numbers: JSON numbers, or text that is a number (CSV columns)
            numeric = f"(typeof({expr}) IN ('integer', 'real') OR ({expr} <> '' AND NOT {expr} GLOB '*[^0-9.eE+-]*'))"
            conditions.append(f"({numeric} AND CAST({expr} AS REAL) {f.op} ?)")
            params.append(number)
    return " AND ".join(conditions) or "1", params

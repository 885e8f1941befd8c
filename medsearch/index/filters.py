"""Metadata filters: `field=value`, `field!=value`, `field>=number`, `field<=number` (ANDed).

A field is a document column (id, title, source, url) or a top-level metadata key. What matches,
on every backend (the FAISS backend through this SQL, Qdrant through backends/qdrant.query_filter):

- `=`: a text value equal to the filter's text (columns are text: `id=5` is the text "5"); a JSON
  number equal to the filter's number (`year=2020` matches 2020 and 2020.0, not "2020.0"); a JSON
  boolean only for `=true` / `=false`, never for a number (`flag=1` does not match true); a list
  when any of its elements matches by these rules (`tags=a` matches ["a", "b"]). An object or null
  never matches. `!=` matches exactly what `=` does not, documents without the field included.
- `>=`, `<=`: a JSON number, or text that reads as one (a CSV column's "2019"), never a boolean
  nor a list.

Filters become one SQL condition, evaluated in SQLite (expression indexes on metadata keys' values
and JSON types, store.py); the chunk rows it keeps go into the vector search as a faiss IDSelector
(search.py), so a filter that keeps few documents still gets k of them when k exist.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from medsearch.errors import BadInputError
from medsearch.index.store import COLUMNS, metadata_expression
from medsearch.validation import check_text, normal_id

OPERATORS = ("!=", ">=", "<=", "=")
BOOLEANS = ("true", "false")  # the values that match a JSON boolean (JSON's spelling)
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
    if field == "id":
        value = normal_id(value)  # ids are stored in NFC: an NFD spelling finds the document
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
    """One SQL condition over documents `d` (and its parameters) for all filters together, matching
    as the module's docstring says."""
    known = set(metadata_fields)
    conditions, params = [], []
    for f in filters:
        if f.field not in COLUMNS and f.field not in known:
            fields = ", ".join([*COLUMNS, *sorted(known)])
            raise BadInputError(f"unknown filter field '{f.field}' (fields of this index: {fields})")
        column = f.field in COLUMNS
        expr = f"d.{f.field}" if column else metadata_expression(f.field)
        kind = "'text'" if column else metadata_expression(f.field, function="json_type")  # JSON type
        if f.op in ("=", "!="):
            if column:
                equal, values = f"{expr} = ?", [f.value]
            else:  # the value itself, or (a list) any of its elements
                value, value_params = _equal(expr, kind, f, guard="+")  # '+': SQLite looks the value up in its index
                element, element_params = _equal("j.value", "j.type", f)
                each = metadata_expression(f.field, function="json_each")
                equal = f"({value} OR ({kind} = 'array' AND EXISTS (SELECT 1 FROM {each} j WHERE {element})))"
                values = value_params + element_params
            conditions.append(equal if f.op == "=" else f"NOT coalesce({equal}, 0)")
            params += values
        else:  # >= and <= compare numbers: JSON numbers, or text that is a number (CSV columns)
            numeric = f"({kind} IN ('integer', 'real') OR ({kind} = 'text' AND {expr} <> '' AND NOT {expr} GLOB '*[^0-9.eE+-]*'))"
            conditions.append(f"({numeric} AND CAST({expr} AS REAL) {f.op} ?)")
            params.append(filter_number(f.value))
    return " AND ".join(conditions) or "1", params


def _equal(value: str, kind: str, f: Filter, guard: str = "") -> tuple[str, list]:
    """SQL for `=`: the JSON value `value` (of JSON type `kind`) equals the filter's text, its number,
    or (`true` / `false`) is that boolean. The type checks cost a JSON parse per row, so they are
    written only where a wrong type could be equal (`guard` prefixes them): an array's or object's
    JSON text ('[...]', '{...}') and a boolean's 0 or 1."""
    text = f"{value} = ?" + (f" AND {guard}{kind} = 'text'" if f.value[:1] in ("[", "{") else "")
    terms, params = [f"({text})"], [f.value]
    number = filter_number(f.value)
    if number is not None:
        terms.append(f"({value} = ?" + (f" AND {guard}{kind} IN ('integer', 'real'))" if number in (0, 1) else ")"))
        params.append(number)
    if f.value in BOOLEANS:
        terms.append(f"{kind} = '{f.value}'")
    return "(" + " OR ".join(terms) + ")", params

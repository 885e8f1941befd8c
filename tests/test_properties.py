"""Property-based tests: whatever bytes, JSON or strings come in, the corpus readers and the
filter parser answer with a MedsearchError that has a message, never with a traceback."""

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medsearch.documents.corpus import documents_from_records, read_corpus
from medsearch.errors import MedsearchError
from medsearch.index.filters import filter_sql, parse_filter

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def read_or_refuse(path):
    try:
        documents = read_corpus(path)
    except MedsearchError as err:
        assert str(err)
        return None
    assert documents, "a corpus that reads without error has documents"
    assert all(d.text.strip() for d in documents), "every document has non-blank text"
    assert all(d.id for d in documents), "every document has an id"
    return documents


@SETTINGS
@given(data=st.binary(max_size=300), suffix=st.sampled_from([".jsonl", ".csv", ".txt", ".md"]))
def test_random_bytes_in_any_corpus_format(tmp_path, data, suffix):
    path = tmp_path / f"corpus{suffix}"
    path.write_bytes(data)
    read_or_refuse(path)


@SETTINGS
@given(records=st.lists(json_values, max_size=5))
def test_random_json_lines(tmp_path, records):
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records), encoding="utf-8")
    read_or_refuse(path)


@SETTINGS
@given(records=st.lists(json_values, max_size=5))
def test_random_json_documents_over_http(records):
    try:
        documents = documents_from_records(records)
    except MedsearchError as err:
        assert str(err)
    else:
        assert len({d.id for d in documents}) == len(documents)


@settings(max_examples=400, deadline=None)
@given(text=st.text(max_size=40))
def test_random_filter_strings(text):
    try:
        parsed = parse_filter(text)
    except MedsearchError as err:
        assert str(err)
        return
    assert parsed.op in ("=", "!=", ">=", "<=")
    assert parsed.field, "a parsed filter names a field"
    assert parsed.value, "a parsed filter has a value"
    try:
        where, params = filter_sql([parsed], [parsed.field])  # a known metadata field: always valid SQL
    except MedsearchError as err:
        assert str(err)
        return
    import sqlite3

    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE documents (ordinal, id, title, text, source, url, metadata)")
    db.execute("INSERT INTO documents VALUES (0, 'a', 't', 'x', 's', 'u', ?)", [json.dumps({parsed.field: parsed.value})])
    db.execute(f"SELECT count(*) FROM documents d WHERE {where}", params).fetchone()

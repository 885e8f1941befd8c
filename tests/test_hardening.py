"""Hardening: one bad request never hurts another, writes never break searches, nothing in use is
deleted. Each test names the finding of the review it covers (issue 18: 1 body limit, 2 a bad query
fails its neighbours, 3 writes break searches, 4 generations in use deleted, 5 unbounded work,
6 numbers and bytes, 7 exposure, 8 files, 9 noise)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import pytest
from click.testing import CliRunner
from conftest import BUNDLED, REPO, SMALL_DOCS, backend_settings, write_jsonl
from hypothesis import given, settings
from hypothesis import strategies as st
from servers import free_port, get, start_serve, wait_ready

from medsearch.cli import cli
from medsearch.documents.corpus import Document
from medsearch.errors import BadInputError, NotFoundError
from medsearch.index import generations
from medsearch.index.build import build_index
from medsearch.index.folder import open_index
from medsearch.index.writes import compact, upsert
from medsearch.retrieval.search import Searcher
from medsearch.validation import check_value

TOKEN = "hardening-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
QUESTIONS = [json.loads(line)["text"] for line in open(BUNDLED / "queries.jsonl")]


# ---- 6. numbers and bytes: the validator, the corpus reader, `medsearch add` ----

_bad_text = st.sampled_from(["\ud800", "\udfff", "\x00"]).flatmap(
    lambda bad: st.tuples(st.text(max_size=5), st.text(max_size=5)).map(lambda ab: ab[0] + bad + ab[1]))
_good_text = st.text(alphabet=st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=20)
_good = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | _good_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_good_text, inner, max_size=4), max_leaves=12)
_bad_leaf = _bad_text | st.sampled_from([float("nan"), float("inf"), float("-inf")])


@settings(max_examples=200, deadline=None)
@given(_good)
def test_valid_json_values_pass_the_check(value):
    check_value(value, "document 1")


@settings(max_examples=200, deadline=None)
@given(_good, _bad_leaf, st.lists(_good_text, min_size=1, max_size=3), st.booleans())
def test_a_bad_string_or_number_anywhere_is_refused_with_its_place(value, bad, path, as_key):
    """One bad leaf (or key) hidden at any depth of an otherwise good value: refused, and the
    message names the place (the keys on the way to it)."""
    nested = {path[-1]: bad} if not as_key or not isinstance(bad, str) else {bad: 1}
    for key in reversed(path[:-1]):
        nested = {key: nested}
    with pytest.raises(BadInputError) as caught:
        check_value({"ok": value, "x": nested}, "document 7")
    message = str(caught.value)
    assert message.startswith("document 7: "), message
    assert "x" in message.split(": ")[1], f"the place of the bad value is not named: {message}"
    assert ("NUL" in message or "surrogate" in message or "finite" in message), message


@pytest.mark.parametrize("line, problem", [
    ('{"id": "a", "text": "ok", "dose": NaN}', "document.jsonl:2: dose: not a finite number"),
    ('{"id": "a", "text": "ok", "dose": 1e400}', "document.jsonl:2: dose: not a finite number"),
    ('{"id": "a", "text": "ok", "dose": -Infinity}', "document.jsonl:2: dose: not a finite number"),
    ('{"id": "a", "text": "bad \\ud800 text"}', "document.jsonl:2: text: contains a lone surrogate"),
    ('{"id": "a\\u0000b", "text": "ok"}', "document.jsonl:2: id: contains a NUL character"),
    ('{"id": "a", "text": "ok", "ke\\u0000y": 1}', "document.jsonl:2: key 'ke\\x00y': contains a NUL character"),
    ('{"id": "a", "text": "ok", "say \\"hi\\"": 1}', "which a filter cannot name"),
    ('{"id": "a", "text": "ok", "title": {"x": 1}}', "document.jsonl:2: 'title' must be text, not dict"),
])
def test_add_refuses_bad_numbers_and_bytes_with_one_line_naming_the_line(tmp_path, small_corpus, minilm, line, problem):
    build_index(small_corpus, tmp_path / "idx", minilm)
    bad = tmp_path / "document.jsonl"
    bad.write_text('{"id": "fine", "text": "a good line"}\n' + line + "\n", encoding="utf-8")
    result = CliRunner().invoke(cli, ["add", str(bad), "--index", str(tmp_path / "idx"), "-q"])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output  # one line, no traceback
    assert "document.jsonl:2" in lines[0], lines[0]
    assert problem in lines[0], lines[0]
    assert open_index(tmp_path / "idx").generation == 1, "nothing may be written"


# ---- 3. writes break searches: chunking while queries encode ----

def test_chunking_while_queries_encode_never_collides(minilm):
    """An HTTP write chunks documents while the encode workers tokenize queries. With one shared
    fast tokenizer this raised 'Already borrowed' thousands of times in 8 s (measured); the
    encoder's chunking has a tokenizer of its own."""
    docs = [Document(id=str(i), text="word " * 600, title="t") for i in range(20)]
    errors: list[str] = []
    stop = time.monotonic() + 3

    def queries():
        while time.monotonic() < stop:
            try:
                minilm.encode_queries(["chest pain when climbing stairs"] * 4)
            except Exception as err:  # noqa: BLE001 (any failure is the finding)
                errors.append(repr(err))

    def chunks():
        while time.monotonic() < stop:
            try:
                assert len(minilm.chunk(docs)) > len(docs)
            except Exception as err:  # noqa: BLE001
                errors.append(repr(err))

    threads = [threading.Thread(target=queries) for _ in range(2)] + [threading.Thread(target=chunks)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [], f"{len(errors)} failures, first: {errors[:1]}"


# ---- 4. generations in use are deleted ----

def test_a_generation_is_kept_while_a_reader_has_it_open_and_removed_once_none_does(tmp_path, small_corpus, minilm):
    """Issue 30: a generation was kept for 5 minutes after it was retired, read or not (60 writes in a
    row grew a 1.7 MB folder to 92 MB); it is now kept exactly while a reader leases it."""
    build_index(small_corpus, tmp_path / "idx", minilm)
    root = tmp_path / "idx"
    reader = open_index(root)  # a process that has the first generation open
    first = reader.folder
    for i in range(3):
        upsert(root, [Document(id=f"n{i}", text=f"New document {i} about ankle sprains.")], minilm)
    assert first.is_dir() and (first / "vectors.faiss").is_file(), "read: kept"
    assert sorted(p.name for p in root.glob("gen-*")) == ["gen-000001", "gen-000004"], "unread: removed at once"
    with pytest.raises(NotFoundError):  # the reader's own generation answers, as it was
        reader.store.document("n0")
    reader.close()
    upsert(root, [Document(id="n9", text="One more document about wrist fractures.")], minilm)
    assert sorted(p.name for p in root.glob("gen-*")) == ["gen-000005"], "closed: removed at the next write"
    assert not list(root.glob(".del-*"))


def test_a_reader_killed_holding_a_generation_lets_it_go(tmp_path, small_corpus, minilm):
    build_index(small_corpus, tmp_path / "idx", minilm)
    root = tmp_path / "idx"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import time\nfrom medsearch.index.folder import open_index\n"
        f"index = open_index({str(root)!r})\nprint('open', flush=True); time.sleep(600)\n")],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "open"
    first = generations.current(root)
    upsert(root, [Document(id="n1", text="A new document about ankle sprains.")], minilm)
    assert first.is_dir(), "another process reads it"
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    upsert(root, [Document(id="n2", text="Another document about wrist fractures.")], minilm)
    assert not first.exists(), "its reader died (kill -9): the kernel let go of its lease"


def test_sixty_writes_in_a_row_keep_the_folder_within_a_few_generations(tmp_path, small_corpus, minilm):
    """Issue 30's bar, in the library: a searcher that answers between writes (as the service does)
    and 60 single-document writes leave the folder under 4x one generation."""
    build_index(small_corpus, tmp_path / "idx", minilm)
    root = tmp_path / "idx"
    searcher = Searcher.open(root, load_model=False)
    for i in range(60):
        upsert(root, [Document(id=f"w{i}", text=f"Write number {i} about a sprained ankle and its care.")], minilm)
        searcher.search(["ankle"], mode="lexical", k=3)

    def size(folder) -> int:
        return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())

    one = size(generations.current(root))
    seen, total = set(), 0  # hard-linked files count once, as on disk
    for path in root.rglob("*"):
        if path.is_file() and (path.stat().st_ino not in seen):
            seen.add(path.stat().st_ino)
            total += path.stat().st_size
    assert total < 4 * one, (total, one, sorted(p.name for p in root.iterdir()))


def test_a_folder_left_by_a_failed_switch_is_never_kept(tmp_path, small_corpus, minilm):
    build_index(small_corpus, tmp_path / "idx", minilm)
    root = tmp_path / "idx"
    upsert(root, [Document(id="n1", text="A new document about ankle sprains.")], minilm)  # gen 2 current
    orphan = root / "gen-000003"  # renamed into place, then the CURRENT switch failed: never read
    shutil.copytree(root / "gen-000002", orphan)
    upsert(root, [Document(id="n2", text="Another document about wrist fractures.")], minilm)
    current = generations.current(root)
    assert current.name == "gen-000003"
    assert (current / "manifest.json").is_file()
    assert json.loads((current / "manifest.json").read_text())["documents"] == len(SMALL_DOCS) + 2
    assert sorted(p.name for p in root.glob("gen-*")) == ["gen-000003"], "the orphan went, and nobody reads the rest"


def test_a_searcher_closes_the_generation_it_left_once_no_query_reads_it(tmp_path, small_corpus, minilm):
    build_index(small_corpus, tmp_path / "idx", minilm)
    searcher = Searcher.open(tmp_path / "idx")
    searcher.encoder = minilm
    searcher.search(["fever and cough"], k=2)
    old = searcher.index
    vectors = old.backend
    assert old.store._connections, "a query opens the store"
    assert "matrix" in vars(vectors), "a query opens the stored matrix"
    with searcher.pinned() as held:  # a query still reading the old generation
        upsert(tmp_path / "idx", [Document(id="n1", text="A new document about ankle sprains.")], minilm)
        searcher.search(["ankle sprain"], k=2)  # moves to generation 2
        assert searcher.index is not old, "the searcher moved to generation 2"
        assert held is old, "the pinned query keeps the old generation"
        assert "store" in old.__dict__, "closed under a reader"
        assert old.store._connections, "closed under a reader"
        assert held.store.document("flu")["title"] == "Influenza"
    assert "store" not in old.__dict__, "the left generation stayed open"
    assert "matrix" not in vars(vectors), "the left generation's matrix stayed open"


@pytest.mark.parametrize("umask, mode", [(0o022, 0o755), (0o077, 0o700)])
def test_generation_folders_follow_the_umask(tmp_path, small_corpus, minilm, umask, mode):
    previous = os.umask(umask)
    try:
        build_index(small_corpus, tmp_path / "idx", minilm)
    finally:
        os.umask(previous)
    folder = generations.current(tmp_path / "idx")
    assert folder.stat().st_mode & 0o777 == mode
    assert (folder / "docs.db").stat().st_mode & 0o777 == mode & 0o666


# ---- 8. a failed Qdrant delete is retried ----

def test_a_failed_qdrant_delete_is_retried_by_the_next_write_and_by_compact(tmp_path, memo_minilm, monkeypatch):
    from medsearch.errors import BackendUnavailableError
    from medsearch.index.backends.qdrant import QdrantBackend

    build_index(BUNDLED, tmp_path / "idx", memo_minilm, backend=backend_settings("qdrant", tmp_path))
    root = tmp_path / "idx"
    points = lambda: open_index(root).backend.count()  # noqa: E731
    before = points()
    real = QdrantBackend.delete_documents

    def refuse(self, ids, below_row):
        raise BackendUnavailableError("the Qdrant server did not answer")

    for retry in ("write", "compact"):
        monkeypatch.setattr(QdrantBackend, "delete_documents", refuse)
        replaced = Document(id="doc-001" if retry == "write" else "doc-002", text=f"Replaced text, {retry}.")
        upsert(root, [replaced], memo_minilm)  # committed; the old version's points could not go
        stale = points()
        assert stale > before, "the refused delete should have left the old points"
        monkeypatch.setattr(QdrantBackend, "delete_documents", real)
        if retry == "write":
            upsert(root, [Document(id="zz-new", text="An unrelated new document.")], memo_minilm)
            assert points() == stale - (stale - before) + 1, "the next write did not delete the old points"
            before = points()
        else:
            compact(root)
            assert points() == before, "compact did not delete the old points"
    searcher = Searcher.open(root)
    searcher.encoder = memo_minilm
    hits = searcher.search(["Replaced text"], tier="deep", k=5)[0].hits
    assert [h.id for h in hits].count("doc-001") == 1


# ---- the service as users run it: `medsearch serve --writable --token-file` ----

@pytest.fixture(scope="module")
def service(tmp_path_factory, bundled_index):
    """`medsearch serve --writable --token-file T --read-timeout 3` over a copy of the bundled index."""
    work = tmp_path_factory.mktemp("hardening")
    shutil.copytree(bundled_index, work / "idx")
    (work / "token").write_text(TOKEN)
    port = free_port()
    process = start_serve("--index", str(work / "idx"), "--port", str(port), "--writable", "--token-file",
                          str(work / "token"), "--read-timeout", "3", "--log-level", "warning")
    try:
        wait_ready(port, process)
        yield {"port": port, "index": work / "idx", "process": process}
    finally:
        process.terminate()
        process.wait(timeout=30)


def request(port, method, path, body=None, headers=None, raw=None, timeout=60):
    """(status, JSON body) of one request; `raw`: bytes sent as the body as they are."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    connection.request(method, path, body=data, headers={**AUTH, "Content-Type": "application/json", **(headers or {})})
    response = connection.getresponse()
    payload = response.read()
    connection.close()
    return response.status, json.loads(payload) if payload else None


def exchange(port: int, head: str, body_parts=()) -> bytes:
    """Send a request by hand (the head, then body parts until the server stops reading) and return
    what the server answered before it closed the connection."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        sock.sendall(head.encode())
        for part in body_parts:
            sock.sendall(part)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server answered and closed before the whole body was sent: what should happen
    answer = b""
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            break
        if not data:
            break
        answer += data
    sock.close()
    return answer


def test_a_chunked_body_over_the_limit_is_refused_while_read(service):
    """Finding 1: the limit read only Content-Length; a chunked body was read whole (200 MB taken).
    The bar: a 3 MB chunked POST -> 413."""
    head = (f"POST /documents HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Content-Type: application/json\r\n")
    chunk = b"x" * 65536
    chunks = (f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n" for _ in range(3_000_000 // len(chunk) + 1))
    answer = exchange(service["port"], head + "Transfer-Encoding: chunked\r\n\r\n", chunks)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"request body over the limit; the limit is 1000000" in answer
    answer = exchange(service["port"], head + "Content-Length: 1100000\r\n\r\n")  # refused before any byte of it
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"request body of 1100000 bytes" in answer, answer[:200]


def test_a_bad_query_among_good_ones_fails_alone(service):
    """Finding 2: a lone surrogate passed validation and failed every query of its encoder pass
    (30 of 48 good queries failed). The bar: 6 rounds of 8 good + 1 bad, concurrently."""
    port = service["port"]

    def good(i):
        return request(port, "GET", "/search?" + urllib.parse.urlencode({"q": QUESTIONS[i % len(QUESTIONS)], "k": 3}))

    def bad(_):
        return request(port, "POST", "/search", raw=b'{"queries": [{"text": "chest pain \\ud800 at night"}]}')

    for _ in range(6):
        with ThreadPoolExecutor(9) as pool:
            goods = [pool.submit(good, i) for i in range(8)]
            worse = pool.submit(bad, 0)
            answers = [f.result() for f in goods]
        assert [status for status, _ in answers] == [200] * 8, answers
        assert all(len(body["results"]) == 3 for _, body in answers)
        status, body = worse.result()
        assert status == 400, body
        assert "lone surrogate" in body["error"], body


@pytest.mark.parametrize("method, path, raw, needle", [
    ("GET", "/search?q=chest+pain&" + "&".join(f"filter=topic%3Dsymptom{i}" for i in range(1100)), None, "1100 filters; the limit is 64"),
    ("GET", "/search?q=chest+pain&" + "filter=topic%3D" + "x" * 600, None, "filter 1 has 606 characters"),
    # spaces: bounded before the filter is parsed (a backtracking parse of 900 spaces took seconds)
    ("GET", "/search?q=chest+pain&filter=" + "+" * 900 + "x", None, "filter 1 has 901 characters"),
    ("GET", "/search?q=chest+pain&k=1000&oversample=1000", None, "1000000 candidates; the limit is 100000"),
    ("GET", "/search?q=chest%00pain", None, "the query: contains a NUL character"),
    ("GET", "/search?q=chest+pain&filter=topic%3Dsym%00ptom", None, "filter 1: contains a NUL character"),
    ("POST", "/search", b'{"queries": [{"id": "q\\ud83d", "text": "chest pain"}]}', "the id of query 1: contains a lone surrogate"),
    ("POST", "/search", b'{"queries": [{"text": "chest pain"}], "filters": ["topic=\\udc00"]}', "filter 1: contains a lone surrogate"),
    ("POST", "/documents", b'{"documents": [{"id": "nan", "text": "t", "dose": NaN}]}', "document 1: dose: not a finite number"),
    ("POST", "/documents", b'{"documents": [{"id": "big", "text": "t", "dose": 1e400}]}', "document 1: dose: not a finite number"),
    ("POST", "/documents", b'{"documents": [{"id": "key", "text": "t", "a\\u0000b": 1}]}', "contains a NUL character"),
    ("POST", "/documents", b'{"documents": [{"id": "q", "text": "t", "a\\"b": 1}]}', "which a filter cannot name"),
    ("POST", "/documents", b'{"documents": [{"id": "s", "text": "t"}], "\\ud800": 1}', "request body"),
])
def test_unbounded_and_malformed_requests_get_a_4xx_json_answer(service, method, path, raw, needle):
    """Findings 5 and 6: 1,100 filters, 10^6 candidates, NUL, surrogates and non-finite numbers
    answered 500 (some after encoding). Nothing here may be stored either."""
    status, body = request(service["port"], method, path, raw=raw)
    assert 400 <= status < 500, (status, body)
    assert needle in body["error"], body
    info = request(service["port"], "GET", "/info")[1]
    assert info["documents"] == 187 or info["generation"] > 1  # a write test may have run first
    for doc_id in ("nan", "big", "key", "q", "s"):
        assert request(service["port"], "GET", f"/documents/{doc_id}")[0] == 404


def test_half_open_connections_do_not_block_searches_and_are_dropped(service):
    """Finding 5: idle, half-header and half-body connections stayed open (25 s and more). The bar:
    with 200 of them a search answers within 2 s, and the server drops them (here: --read-timeout 3)."""
    port = service["port"]
    sockets = []
    for i in range(200):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        if i % 3 == 1:
            sock.sendall(b"GET /search?q=chest HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # half a header
        elif i % 3 == 2:
            sock.sendall(f"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
                         "Content-Type: application/json\r\nContent-Length: 500\r\n\r\n{\"queries\": [".encode())
        sockets.append(sock)  # i % 3 == 0: connected, silent
    started = time.monotonic()
    status, body = request(port, "GET", "/search?q=chest+pain+when+climbing+stairs&k=3", timeout=10)
    assert status == 200
    assert len(body["results"]) == 3
    assert time.monotonic() - started < 2, "a search took over 2 s beside 200 half-open connections"
    deadline = time.monotonic() + 20
    open_ones = list(sockets)
    while open_ones and time.monotonic() < deadline:
        still = []
        for sock in open_ones:
            sock.settimeout(0.05)
            try:
                if sock.recv(4096) == b"":
                    continue  # closed by the server
            except socket.timeout:
                still.append(sock)
                continue
            except ConnectionResetError:
                continue
        open_ones = still
    for sock in sockets:
        sock.close()
    assert not open_ones, f"{len(open_ones)} of 200 half-open connections still open after 20 s"


def test_hosts_paths_and_pids_stay_private(service):
    """Finding 7: no Host check (DNS rebinding), and /readyz and 409 messages showed absolute paths
    and the writer's pid."""
    port = service["port"]
    status, body = request(port, "GET", "/search?q=chest+pain", headers={"Host": "evil.example:8000"})
    assert status == 400
    assert "host 'evil.example' is not served here" in body["error"]
    assert request(port, "GET", "/search?q=chest+pain&k=1", headers={"Host": f"localhost:{port}"})[0] == 200
    status, ready = get(port, "/readyz")
    assert status == 200
    assert ready["index"] == "idx"
    assert "/" not in json.dumps(ready)
    with generations.writer_lock(service["index"]):  # another process is writing
        status, body = request(port, "POST", "/documents", {"documents": [{"id": "locked", "text": "t"}]})
    assert status == 409, body
    assert body["error"] == "the index is being written by another process; try again when it has finished"
    info = request(port, "GET", "/info")[1]
    assert str(service["index"].parent) not in json.dumps(info)


def test_writes_while_keep_alive_clients_search(service):
    """Finding 3: during a write, concurrent searches answered 500 ('Already borrowed') and
    keep-alive clients got connection resets. The bar: 8 clients searching on keep-alive
    connections while 200 documents are posted in 10 writes: no failed search, every write 200."""
    import http.client

    port = service["port"]
    before = request(port, "GET", "/info")[1]["documents"]
    stop = threading.Event()
    failures: list[str] = []
    done = [0]

    def client(n):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        i = n
        while not stop.is_set():
            query = urllib.parse.urlencode({"q": QUESTIONS[i % len(QUESTIONS)], "k": 5, "tier": ("fast", "deep")[i % 2]})
            try:
                connection.request("GET", "/search?" + query, headers=AUTH)
                response = connection.getresponse()
                body = response.read()
                if response.status != 200 or len(json.loads(body)["results"]) != 5:
                    failures.append(f"{response.status}: {body[:200]!r}")
                done[0] += 1
            except (OSError, http.client.HTTPException) as err:
                failures.append(repr(err))
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            i += 8

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    statuses = []
    try:
        for w in range(10):
            documents = [{"id": f"w{w}-{j}", "title": f"Note {w}-{j}", "topic": "note",
                          "text": f"Clinic note {w}-{j}: follow-up for knee pain after a fall, week {j}."} for j in range(20)]
            statuses.append(request(port, "POST", "/documents", {"documents": documents}))
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert [s for s, _ in statuses] == [200] * 10, statuses
    assert failures == [], failures[:5]
    assert done[0] > 8
    assert request(port, "GET", "/info")[1]["documents"] == before + 200


def test_a_client_that_leaves_is_dropped_before_encoding(bundled_index, minilm):
    """Finding 5: queries of clients that had gone were still encoded. One encoder worker is kept
    busy with a large batch; a client sends a query and leaves; its query never reaches the encoder."""
    from servers import uvicorn_thread

    from medsearch.server.app import create_app
    from medsearch.server.settings import ServerSettings

    app = create_app(Searcher(open_index(bundled_index), minilm), ServerSettings(encode_workers=1, warm_up=False))
    with uvicorn_thread(app) as url:
        port = int(url.rsplit(":", 1)[1])
        busy = {"queries": [{"text": (f"{QUESTIONS[i % len(QUESTIONS)]} " * 20)[:990]} for i in range(64)], "k": 1}
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(request, port, "POST", "/search", busy)
            time.sleep(0.05)
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(b"GET /search?q=the+query+of+a+client+that+left HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            time.sleep(0.05)
            sock.close()
            status, body = first.result()
            assert status == 200, body
        time.sleep(0.3)
        batcher = app.state.service.batcher
        assert batcher.texts == 64, f"{batcher.texts - 64} texts encoded for a client that had left"


# ---- 7 and 9: refusing to start, quiet output ----

def test_writable_without_a_token_refuses_to_start(bundled_index, monkeypatch):
    monkeypatch.delenv("MEDSEARCH_TOKEN", raising=False)
    result = CliRunner().invoke(cli, ["serve", "--index", str(bundled_index), "--writable"], prog_name="medsearch")
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "Error: --writable needs a token: give --token-file FILE or set MEDSEARCH_TOKEN (see: medsearch serve --help)"]


def test_a_json_query_writes_nothing_to_stderr(bundled_index):
    result = subprocess.run([sys.executable, "-m", "medsearch", "query", "early signs of type 2 diabetes", "--json",
                             "--index", str(bundled_index)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert json.loads(result.stdout)["results"][0]["id"] == "doc-020"


def test_a_full_queue_and_a_passed_deadline_answer_503_with_retry_after(bundled_index, minilm):
    """Finding 5: the batcher's queue had no bound and requests no deadline. Past the bound (here 2
    queries waiting) and past the deadline the answer is 503 + Retry-After, never a 500, and the
    requests that got in are answered."""
    from servers import uvicorn_thread

    from medsearch.server.app import create_app
    from medsearch.server.settings import ServerSettings

    searcher = Searcher(open_index(bundled_index), minilm)
    long_query = (" ".join(QUESTIONS) * 2)[:990]
    app = create_app(searcher, ServerSettings(encode_workers=1, max_batch=1, max_pending=2, warm_up=False))
    with uvicorn_thread(app) as url:
        port = int(url.rsplit(":", 1)[1])
        path = "/search?" + urllib.parse.urlencode({"q": long_query, "k": 1})
        with ThreadPoolExecutor(24) as pool:
            answers = list(pool.map(lambda _: request(port, "GET", path), range(24)))
    statuses = sorted(status for status, _ in answers)
    assert set(statuses) == {200, 503}, statuses
    busy = next(body for status, body in answers if status == 503)
    assert "at capacity" in busy["error"]
    assert "waiting for the encoder" in busy["error"]

    app = create_app(searcher, ServerSettings(request_timeout_s=0.001, warm_up=False))
    with uvicorn_thread(app) as url:
        port = int(url.rsplit(":", 1)[1])
        import http.client

        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("GET", "/search?q=chest+pain")
        response = connection.getresponse()
        body = json.loads(response.read())
    assert response.status == 503
    assert response.getheader("Retry-After") == "2"
    assert "longer than the service's limit of 0.001 s" in body["error"]


# ---- the second review (an hour of attacks on the hardened service) ----

def test_headers_past_64_kb_get_431_and_the_connection_closes(service):
    """httptools has no header limit: 40 MB of headers on 4 connections took the server from 1.2 to
    4.2 GB, and one 145 MB header value held the event loop 8.8 s (quadratic concatenation)."""
    head = "GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    many = (f"x-pad-{i}: {'a' * 90}\r\n" for i in range(20_000))  # ~2 MB of headers, never ended
    answer = exchange(service["port"], head, (line.encode() for line in many))
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    assert b"request line and headers over 65536 bytes" in answer
    long_value = exchange(service["port"], head + "x-long: ", (b"b" * 65536 for _ in range(40)))
    assert long_value.startswith(b"HTTP/1.1 431"), long_value[:200]
    assert get(service["port"], "/livez")[0] == 200


def test_a_client_that_stops_reading_its_answers_is_dropped(service):
    """A client that never read its answers held their memory and its connection slot for good (a
    graceful close waits for the unsent bytes). Six pipelined requests for 2.3 MB answers, never
    read: more than the kernel's socket buffers hold, so the server's writes stall; the write
    deadline (--read-timeout, 3 s here) drops the connection before all six are sent."""
    body = json.dumps({"queries": [{"text": QUESTIONS[i]} for i in range(50)], "k": 187, "tier": "deep",
                       "mode": "lexical"}).encode()
    one = (f"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
           f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", service["port"]))
    sock.sendall(one * 6)
    time.sleep(15)  # six answers take a few seconds to make; the server waits 3 s for the client to read
    received, ended = b"", False
    sock.settimeout(5)
    try:
        while True:
            data = sock.recv(1 << 20)
            if not data:
                ended = True
                break
            received += data
    except ConnectionResetError:
        ended = True
    except socket.timeout:
        pass
    sock.close()
    assert received.startswith(b"HTTP/1.1 200"), received[:100]
    answers = received.count(b"HTTP/1.1 200 OK")
    assert ended, "the connection is still open"
    assert answers < 6, "every answer was sent: the socket buffers took them all, nothing was tested"


@pytest.mark.parametrize("method, path, raw, needle", [
    ("POST", "/documents", ('{"documents": [{"id": "deep", "text": "t", "m": ' + "[" * 40 + "]" * 40 + "}]}").encode(),
     "document 1: m" + "[0]" * 32 + ": nested more than 32 levels deep"),
    ("POST", "/documents", ('{"documents": [{"id": "key", "text": "t", "' + "k" * 300 + '": 1}]}').encode(),
     "document 1: a key of 300 characters; the limit is 200"),
    ("DELETE", "/documents/a%00b", None, "the document id: contains a NUL character"),
    ("POST", "/search", json.dumps({"queries": [{"text": q} for q in QUESTIONS[:20]], "k": 600}).encode(),
     "20 queries x k=600 asks for 12000 results; the limit is 10000 a request"),
])
def test_more_bounds_found_by_the_second_review(service, method, path, raw, needle):
    status, body = request(service["port"], method, path, raw=raw)
    assert status == 400, (status, body)
    assert needle in body["error"], body


def test_two_host_headers_are_refused(service):
    answer = exchange(service["port"], "GET /livez HTTP/1.1\r\nHost: evil.example\r\nHost: localhost\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert b"one Host header is required, 2 were sent" in answer, answer[:200]
    for host in ("[::1]evil.example", "localhost:evil", "[localhost]"):
        status, _ = request(service["port"], "GET", "/livez", headers={"Host": host})
        assert status == 400, host


@pytest.mark.parametrize("line, problem", [
    ('{"id": "c1", "text": "hello", "dose": ' + "9" * 5000 + "}", "document.jsonl:2: unreadable JSON (Exceeds the limit"),
    ('{"id": "c1", "text": "hello", "m": ' + "[" * 3000 + "]" * 3000 + "}", "document.jsonl:2: JSON nested too deep to read"),
    ('{"id": "c1", "text": "hello", "m": ' + "[" * 40 + "]" * 40 + "}", "nested more than 32 levels deep"),
])
def test_add_of_unreadable_json_is_one_line(tmp_path, small_corpus, minilm, line, problem):
    build_index(small_corpus, tmp_path / "idx", minilm)
    bad = tmp_path / "document.jsonl"
    bad.write_text('{"id": "fine", "text": "a good line"}\n' + line + "\n", encoding="utf-8")
    result = CliRunner().invoke(cli, ["add", str(bad), "--index", str(tmp_path / "idx"), "-q"])
    assert result.exit_code == 1, repr(result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert problem in result.output, result.output


def test_a_line_separator_inside_a_json_string_is_text(tmp_path):
    from medsearch.documents.corpus import read_corpus

    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"id": "a", "text": "one\u2028two"}\n{"id": "b", "text": "three"}\n', encoding="utf-8")
    assert [(d.id, d.text) for d in read_corpus(corpus)] == [("a", "one\u2028two"), ("b", "three")]


def test_writes_close_the_generation_they_read(tmp_path, small_corpus, minilm):
    """A write's view of the current generation held its SQLite connection until the garbage
    collector ran: a pruned generation kept its disk space meanwhile."""
    import gc

    build_index(small_corpus, tmp_path / "idx", minilm)
    gc.disable()
    try:
        for i in range(3):
            upsert(tmp_path / "idx", [Document(id=f"n{i}", text=f"New document {i} about sprains.")], minilm)
        open_files = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                open_files.append(os.readlink(f"/proc/self/fd/{fd}"))
            except FileNotFoundError:  # the listing's own descriptor, closed by now
                pass
    finally:
        gc.enable()
    held = [f for f in open_files if str(tmp_path / "idx") in f]
    assert held == [], held


def test_trailers_are_refused_and_a_pipelined_body_is_not_a_head(service):
    """The re-check of the fixes: trailers after a chunked body went past the head cap (290 MB in
    20 s, 1.1 -> 6.6 GB); and a large body pipelined behind another request was counted as its head
    (431)."""
    port = service["port"]
    head = (f"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
    body = b'{"queries": [{"text": "chest pain"}]}'
    trailers = (b"a: b\r\n" * 10_000 for _ in range(100))  # 6 MB of trailers, never ended
    started = time.monotonic()
    answer = exchange(port, head, [f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n", *trailers])
    assert not answer.startswith(b"HTTP/1.1 200"), answer[:200]
    # dropped at the first trailer, well before the fixture's 3 s read deadline would have ended it
    assert time.monotonic() - started < 2, "the connection was kept while trailers streamed in"
    padded = json.dumps({"queries": [{"text": "chest pain"}], "k": 1}).encode()
    padded = padded[:-1] + b" " * 900_000 + b"}"
    pipelined = ("GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                 f"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
                 f"Content-Type: application/json\r\nContent-Length: {len(padded)}\r\nConnection: close\r\n\r\n")
    answer = exchange(port, pipelined, [padded])
    assert answer.count(b"HTTP/1.1 200 OK") == 2, answer[:300]


# ---- issue 30: uvicorn's own answers, in JSON like every other error ----

def split_answer(answer: bytes) -> tuple[str, dict, bytes]:
    """(status line, headers by lower-case name, body) of an answer read off the socket."""
    head, _, body = answer.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    return status, {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}, body


@pytest.mark.parametrize("head", [
    "GARBAGE\r\n\r\n",  # no method, path or version
    "GET /search?q=chest pain HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",  # a space in the target
    "GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: ten\r\n\r\n",
])
def test_a_request_httptools_cannot_parse_gets_a_json_400(service, head):
    """uvicorn answered it in plain text: 'Invalid HTTP request received.'"""
    status, headers, body = split_answer(exchange(service["port"], head))
    assert status == "HTTP/1.1 400 Bad Request", (status, body)
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    assert json.loads(body) == {"error": "malformed HTTP request: its request line or headers cannot be parsed"}


def test_past_max_connections_the_answer_is_a_json_503_with_retry_after(bundled_index):
    """uvicorn answered past --max-connections in plain text: 'Service Unavailable'. With
    --max-connections 2 and one connection held open, a request on another connection is refused
    (the connection asking counts too, as uvicorn counts it); once the first closes, it is served."""
    import http.client

    port = free_port()
    process = start_serve("--index", str(bundled_index), "--port", str(port), "--max-connections", "2",
                          "--log-level", "warning")
    try:
        wait_ready(port, process)
        held = socket.create_connection(("127.0.0.1", port), timeout=10)
        time.sleep(0.3)  # accepted by the server
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", "/search?q=chest+pain")
        response = connection.getresponse()
        body = response.read()
        connection.close()
        assert response.status == 503, body
        assert response.getheader("Content-Type") == "application/json"
        assert response.getheader("Retry-After") == "2"
        assert json.loads(body) == {"error": "the service is at its limit of 2 connections; try again in a moment"}
        held.close()
        deadline = time.monotonic() + 10
        while (status := get(port, "/search?q=chest+pain&k=1")[0]) == 503 and time.monotonic() < deadline:
            time.sleep(0.1)  # until the server has seen the held connection close
        assert status == 200
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_medsearch_add_leaves_only_the_generation_it_committed(tmp_path, small_corpus, minilm):
    """A second hostile review: the add command held its base open through the write's prune."""
    build_index(small_corpus, tmp_path / "idx", minilm)
    write_jsonl(tmp_path / "new.jsonl", [{"id": "n1", "text": "A new document about ankle sprains."}])
    result = CliRunner().invoke(cli, ["add", str(tmp_path / "new.jsonl"), "--index", str(tmp_path / "idx"), "-q"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "idx").glob("gen-*")) == ["gen-000002"]

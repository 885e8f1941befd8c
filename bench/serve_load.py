"""Load on the search service: requests/s and latency per number of concurrent clients,
with the micro-batcher on and off, in the same run.

Starts `medsearch serve` on loopback (once per mode), waits for /readyz, then for each
concurrency N runs N clients for a bounded time: each client sends `GET /search` requests one
after another on its own keep-alive connection (one thread a client, http.client), cycling
through the queries file from its own offset. Reports requests/s, p50/p95/p99 latency and
errors per (mode, N), and each N's requests/s as a multiple of one client's in the same mode.
Clients and server share this machine's cores; the clients' own cost is in every figure.

    python bench/serve_load.py --index indexes/default --concurrency 1,4,16,32,64 --seconds 30
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

from common import RESULTS, free_port, print_table, wait_ready, write_results
from medsearch.documents.corpus import read_queries
from medsearch.encoding.encoder import Encoder
from medsearch.index.build import build_index
from medsearch.index.folder import index_exists

REPO = Path(__file__).resolve().parent.parent


class Server:
    """`medsearch serve` in a child process on a free loopback port; stopped with SIGTERM."""

    def __init__(self, index: str, extra: list[str], ready_timeout: float = 120):
        self.port = free_port()
        command = [sys.executable, "-m", "medsearch", "serve", "--index", index, "--port", str(self.port),
                   "--log-level", "warning", *extra]
        self.process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            wait_ready(self.port, self.process, ready_timeout)
        except SystemExit:
            if self.process.poll() is None:
                self.stop()
            raise

    def stop(self) -> float:
        """SIGTERM; seconds until the process exited."""
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        return time.monotonic() - started


def client(port: int, paths: list[str], offset: int, stop_at: float, latencies: list[float], errors: list[str]) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    i = offset
    while time.monotonic() < stop_at:
        path = paths[i % len(paths)]
        i += 1
        started = time.perf_counter()
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            body = response.read()
            if response.status != 200:
                errors.append(f"{response.status}: {body[:200]!r}")
                continue
            if not json.loads(body)["results"]:
                errors.append("no results")
                continue
        except (OSError, http.client.HTTPException, ValueError) as err:
            errors.append(f"{type(err).__name__}: {err}")
            connection.close()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            continue
        latencies.append(time.perf_counter() - started)
    connection.close()


def run_load(port: int, paths: list[str], clients: int, seconds: float) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    stop_at = time.monotonic() + seconds
    threads = [
        threading.Thread(target=client, args=(port, paths, n * len(paths) // clients, stop_at, latencies, errors))
        for n in range(clients)
    ]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    ordered = sorted(latencies)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000 if ordered else float("nan")

    return {
        "clients": clients, "seconds": round(elapsed, 2), "requests": len(latencies), "errors": len(errors),
        "rps": round(len(latencies) / elapsed, 1), "p50_ms": round(pct(0.50), 2), "p95_ms": round(pct(0.95), 2),
        "p99_ms": round(pct(0.99), 2), "error_samples": errors[:5],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", default="indexes/default", help="index to serve (built from --corpus if missing)")
    parser.add_argument("--corpus", default="corpus")
    parser.add_argument("--queries", default="corpus/queries.jsonl")
    parser.add_argument("--concurrency", default="1,4,16,32,64", help="comma-separated client counts")
    parser.add_argument("--seconds", type=float, default=30, help="load time per client count")
    parser.add_argument("--warmup", type=float, default=3, help="unmeasured load before each mode")
    parser.add_argument("--tier", default="fast")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--modes", default="batching,no-batching", help="batching, no-batching, or both")
    parser.add_argument("--serve-args", default="", help="more `medsearch serve` options for both modes, e.g. '--threads 1'")
    parser.add_argument("--name", default="serve-load")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()

    if not index_exists(args.index):
        print(f"building {args.index} from {args.corpus}")
        build_index(args.corpus, args.index, Encoder())
    _, texts = read_queries(args.queries)
    paths = [f"/search?{urllib.parse.urlencode({'q': t, 'tier': args.tier, 'k': args.k})}" for t in texts]
    levels = [int(x) for x in args.concurrency.split(",")]
    rows = []
    for mode in args.modes.split(","):
        extra = (["--no-batching"] if mode == "no-batching" else []) + args.serve_args.split()
        server = Server(args.index, extra)
        run_load(server.port, paths, max(levels), args.warmup)
        base = None
        for clients in levels:
            row = {"mode": mode, **run_load(server.port, paths, clients, args.seconds)}
            base = row["rps"] if clients == 1 else base
            row["x_one_client"] = round(row["rps"] / base, 2) if base else None
            rows.append(row)
            print(f"{mode:>12} {clients:>3} clients: {row['rps']:7.1f} req/s  p50 {row['p50_ms']:7.2f}  "
                  f"p95 {row['p95_ms']:7.2f}  p99 {row['p99_ms']:7.2f} ms  errors {row['errors']}", flush=True)
        row_stop = server.stop()
        print(f"{mode:>12} SIGTERM -> exited in {row_stop:.2f}s with code {server.process.returncode}")
        rows[-1]["shutdown_seconds"] = round(row_stop, 2)
    print(f"\n{os.cpu_count()} cores shared by server and clients; tier {args.tier}, k {args.k}, "
          f"{args.seconds:g} s per level\n")
    print_table(rows, ["mode", "clients", "requests", "errors", "rps", "x_one_client", "p50_ms", "p95_ms", "p99_ms"])
    write_results(args.name, {"index": args.index, "serve_args": args.serve_args, "tier": args.tier, "k": args.k, "seconds": args.seconds, "rows": rows},
                  Path(args.out))


if __name__ == "__main__":
    main()

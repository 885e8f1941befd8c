"""Does a re-ranking flood starve plain searches? (issue 30's bar)

`medsearch serve --reranker CE` on an index of the bundled corpus, with a cross-encoder made here
offline (the default model's transformer with a seeded scoring head, as the tests make one: its
scores mean nothing, its cost is a real MiniLM-L6 cross-encoder's). For `--seconds`, `--flooders`
clients each send POST /search with 5 queries and rerank 200 (1,000 pairs: the most one request may
ask) and hang up after `--hang-up` s, again and again; meanwhile one client sends a plain
GET /search?rerank=0 every 0.5 s. Prints the plain searches' statuses and p50/p95/max latency, and
what the flooders got; writes bench/results/rerank_isolation.json.

    python bench/rerank_isolation.py                      # builds the bundled index in a temp folder
    python bench/rerank_isolation.py --index indexes/bundled --seconds 30
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import free_port, machine, print_table, wait_ready, write_results  # noqa: E402

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # the cross-encoder made here: no load report
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

REPO = Path(__file__).resolve().parent.parent
QUERIES = ["fever in children", "what causes asthma", "high blood pressure treatment", "diabetes symptoms",
           "how is measles spread"]


def make_cross_encoder(folder: Path) -> str:
    import torch
    from sentence_transformers import CrossEncoder

    from medsearch.encoding.loading import default_model_path

    torch.manual_seed(0)
    CrossEncoder(default_model_path(), num_labels=1, device="cpu").save(str(folder))
    return str(folder)


def flood(port: int, stop_at: float, hang_up: float, outcomes: list) -> None:
    body = json.dumps({"queries": [{"text": q} for q in QUERIES], "rerank": 200, "k": 10})
    while time.monotonic() < stop_at:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=hang_up)
        try:
            connection.request("POST", "/search", body=body, headers={"Content-Type": "application/json"})
            outcomes.append(connection.getresponse().status)
        except (TimeoutError, socket.timeout):
            outcomes.append("hung up")
        except OSError as err:
            outcomes.append(type(err).__name__)
        finally:
            connection.close()


def plain(port: int, stop_at: float, every: float, samples: list) -> None:
    i = 0
    while time.monotonic() < stop_at:
        started = time.monotonic()
        query = urllib.parse.quote(QUERIES[i % len(QUERIES)])
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            connection.request("GET", f"/search?q={query}&rerank=0&k=10")
            response = connection.getresponse()
            response.read()
            samples.append((response.status, time.monotonic() - started))
        except OSError as err:
            samples.append((type(err).__name__, time.monotonic() - started))
        finally:
            connection.close()
        i += 1
        time.sleep(max(0.0, every - (time.monotonic() - started)))


def run(index: str, reranker: str, seconds: float, flooders: int, hang_up: float) -> dict:
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "medsearch", "serve", "--index", index, "--port", str(port),
                                "--reranker", reranker, "--log-level", "warning"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        wait_ready(port, process)
        stop_at = time.monotonic() + seconds
        outcomes: list = []
        samples: list = []
        threads = [threading.Thread(target=flood, args=(port, stop_at, hang_up, outcomes)) for _ in range(flooders)]
        for thread in threads:
            thread.start()
        time.sleep(0.5)  # the flood first
        plain(port, stop_at, 0.5, samples)
        for thread in threads:
            thread.join()
    finally:
        process.terminate()
        process.wait(timeout=30)
    latencies = sorted(s for _, s in samples)
    statuses = [status for status, _ in samples]
    return {
        "plain_searches": len(samples), "plain_200": statuses.count(200),
        "plain_other": sorted({str(s) for s in statuses if s != 200}),
        "plain_p50_s": round(statistics.median(latencies), 3),
        "plain_p95_s": round(latencies[max(0, int(round(0.95 * len(latencies))) - 1)], 3),
        "plain_max_s": round(latencies[-1], 3),
        "flood_requests": len(outcomes),
        "flood_outcomes": {str(o): sum(1 for x in outcomes if str(x) == str(o)) for o in set(map(str, outcomes))},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", help="an index folder (default: the bundled corpus, indexed into a temp folder)")
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--flooders", type=int, default=4)
    parser.add_argument("--hang-up", type=float, default=0.5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        index = args.index
        if index is None:
            index = str(Path(tmp) / "index")
            subprocess.run([sys.executable, "-m", "medsearch", "index", str(REPO / "corpus"), "--index", index, "-q"],
                           check=True)
        reranker = make_cross_encoder(Path(tmp) / "cross-encoder")
        result = run(index, reranker, args.seconds, args.flooders, args.hang_up)
    print_table([result], ["plain_searches", "plain_200", "plain_p50_s", "plain_p95_s", "plain_max_s", "flood_requests"])
    print("flood:", result["flood_outcomes"], " plain other than 200:", result["plain_other"] or "none")
    write_results("rerank_isolation", {"machine": machine(), "seconds": args.seconds, "flooders": args.flooders,
                                       "hang_up_s": args.hang_up, **result})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

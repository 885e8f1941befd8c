"""Can clients fill the disk through the API? (issue 30's bar)

`medsearch serve --writable --snapshot-dir DIR` on a copy of an index of the bundled corpus, default
settings otherwise: `--snapshots` POST /snapshot in a row, then the archives left in DIR; then
`--writes` POST /documents of one document each in a row, each followed by a search (as a live
service sees them), then the index folder's size on disk (hard-linked files counted once, as `du`
counts them) against one generation's. Prints a table; writes bench/results/disk_growth.json.

    python bench/disk_growth.py                       # builds the bundled index in a temp folder
    python bench/disk_growth.py --snapshots 150 --writes 60
"""

from __future__ import annotations

import argparse
import http.client
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import free_port, machine, print_table, wait_ready, write_results  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TOKEN = "disk-growth-bench-token"


def call(port: int, method: str, path: str, body=None) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    connection.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response.status, json.loads(data) if data else {}


def on_disk(folder: Path) -> int:
    """Bytes of the files under `folder`, each inode once (generations share files by hard links)."""
    seen, total = set(), 0
    for path in folder.rglob("*"):
        if path.is_file():
            stat = path.stat()
            if stat.st_ino not in seen:
                seen.add(stat.st_ino)
                total += stat.st_size
    return total


def current_generation(index: Path) -> Path:
    return index / (index / "CURRENT").read_text().strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--snapshots", type=int, default=150)
    parser.add_argument("--writes", type=int, default=60)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        index, backups, token = Path(tmp) / "index", Path(tmp) / "backups", Path(tmp) / "token"
        backups.mkdir()
        token.write_text(TOKEN)
        subprocess.run([sys.executable, "-m", "medsearch", "index", str(REPO / "corpus"), "--index", str(index), "-q"],
                       check=True, stdout=subprocess.DEVNULL)
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "medsearch", "serve", "--index", str(index), "--port", str(port),
                                   "--writable", "--token-file", str(token), "--snapshot-dir", str(backups),
                                   "--log-level", "warning"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_ready(port, server)
            started = time.monotonic()
            statuses = [call(port, "POST", "/snapshot")[0] for _ in range(args.snapshots)]
            snapshot_seconds = time.monotonic() - started
            archives = [p for p in backups.iterdir() if p.name.endswith(".tar.zst")]
            one_generation = on_disk(current_generation(index))
            started = time.monotonic()
            writes = []
            for i in range(args.writes):
                doc = {"id": f"bench-{i}", "title": f"Note {i}", "text": f"A short note number {i} about ankle sprains."}
                writes.append(call(port, "POST", "/documents", {"documents": [doc]})[0])
                call(port, "GET", "/search?q=ankle&k=3")
            write_seconds = time.monotonic() - started
            after = on_disk(index)
            last_generation = on_disk(current_generation(index))
        finally:
            server.terminate()
            server.wait(timeout=60)
        result = {
            "snapshots_posted": args.snapshots, "snapshot_statuses": {str(s): statuses.count(s) for s in set(statuses)},
            "archives_left": len(archives), "archives_mb": round(sum(p.stat().st_size for p in archives) / 1e6, 2),
            "snapshot_seconds": round(snapshot_seconds, 1),
            "writes": args.writes, "write_statuses": {str(s): writes.count(s) for s in set(writes)},
            "write_seconds": round(write_seconds, 1),
            "generation_mb_before": round(one_generation / 1e6, 2), "generation_mb_after": round(last_generation / 1e6, 2),
            "folder_mb_after": round(after / 1e6, 2), "folder_over_generation": round(after / last_generation, 2),
            "generations_left": sorted(p.name for p in index.glob("gen-*")),
        }
    print_table([result], ["snapshots_posted", "archives_left", "archives_mb", "writes", "generation_mb_after",
                           "folder_mb_after", "folder_over_generation"])
    print("statuses:", result["snapshot_statuses"], result["write_statuses"], " generations left:", result["generations_left"])
    write_results("disk_growth", {"machine": machine(), **result})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

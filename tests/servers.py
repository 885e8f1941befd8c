"""Real servers on loopback for the tests: uvicorn in a thread, or `medsearch serve` as a process."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import uvicorn

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def uvicorn_thread(app, port: int | None = None):
    """Serve `app` on 127.0.0.1 from a thread (lifespan included); yield the base URL."""
    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def get(port: int, path: str, headers: dict | None = None, timeout: float = 30) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    connection.request("GET", path, headers=headers or {})
    response = connection.getresponse()
    body = response.read()
    connection.close()
    return response.status, json.loads(body) if body else None


def post(port: int, path: str, payload, timeout: float = 60) -> tuple[int, object]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    connection.request("POST", path, body=json.dumps(payload), headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    body = response.read()
    connection.close()
    return response.status, json.loads(body)


def start_serve(*args: str) -> subprocess.Popen:
    """`python -m medsearch serve ARGS` with stderr captured."""
    return subprocess.Popen([sys.executable, "-m", "medsearch", "serve", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_ready(port: int, process: subprocess.Popen, timeout: float = 90) -> list[int]:
    """Poll /readyz until 200; return the statuses seen (503 while loading, then 200)."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"serve exited with {process.returncode}: {process.stderr.read()}")
        try:
            status, _ = get(port, "/readyz", timeout=5)
            seen.append(status)
            if status == 200:
                return seen
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError("serve not ready in time")

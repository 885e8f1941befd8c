"""Document files read in a process of their own, one at a time, each within a time and a memory
bound: a small hostile file (a PDF page that shows two million characters, a compression bomb) can
take minutes and gigabytes in pdfminer or python-docx, and its bytes alone do not tell. A file past
either bound is Unreadable (skipped with its line); the process is replaced and the run goes on.

The process is a fresh interpreter (`python -m medsearch.documents.worker`), not a multiprocessing
child: spawn would run the caller's script again in it (a script without a main guard would index
nothing of its documents) and fork would copy the caller's threads (torch, OpenVINO). Requests and
answers are pickled over two pipes of its own; its stdout and stderr are closed off, and it ignores
Ctrl-C (the caller stops it)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from multiprocessing.connection import Connection
from pathlib import Path

from medsearch.documents.base import Extracted, Limits, Unreadable, extract


class Reader:
    """`read(path)`: the file's Extracted, read in the worker process (started at the first call)."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self._process: subprocess.Popen | None = None
        self._send: Connection | None = None
        self._receive: Connection | None = None

    def read(self, path: Path) -> Extracted:
        if self._process is None:
            self._start()
        try:
            self._send.send(str(path))
            if not self._receive.poll(self.limits.max_seconds):
                self.close()
                raise Unreadable(f"took longer than {self.limits.max_seconds:g} s to read (--max-file-seconds)")
            kind, value = self._receive.recv()
        except (EOFError, OSError):  # the process died: the kernel's out-of-memory killer, most likely
            self.close()
            raise Unreadable("its reader stopped before the end (out of memory?)") from None
        if kind == "unreadable":
            raise Unreadable(value)
        return value

    def _start(self) -> None:
        to_child, from_parent = os.pipe()
        to_parent, from_child = os.pipe()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "medsearch.documents.worker", str(to_child), str(from_child)],
            pass_fds=(to_child, from_child), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        os.close(to_child)
        os.close(from_child)
        self._send = Connection(from_parent, readable=False)
        self._receive = Connection(to_parent, writable=False)
        self._send.send(self.limits)

    def close(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._send.close()
            self._receive.close()
        self._process = self._send = self._receive = None

    def __enter__(self) -> "Reader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _serve(receive: Connection, send: Connection) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the caller's to handle: it kills this process
    limits = receive.recv()
    _limit_memory(limits.max_memory)
    while True:
        try:
            path = receive.recv()
        except (EOFError, OSError):  # the caller has gone
            return
        try:
            result = ("ok", extract(Path(path), limits))
        except Unreadable as err:
            result = ("unreadable", err.reason)
        except MemoryError:
            result = ("unreadable", f"needs more than {limits.max_memory / 2**30:g} GB of memory to read")
        except OSError as err:
            result = ("unreadable", f"cannot be read ({err.strerror or err})")
        send.send(result)


def _limit_memory(extra: int) -> None:
    """Cap this process's address space at what it holds now plus `extra` bytes (Linux; elsewhere
    the time bound alone holds)."""
    if not sys.platform.startswith("linux"):
        return
    import resource

    with open("/proc/self/statm") as statm:
        size = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = size + extra
    resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))


if __name__ == "__main__":
    _serve(Connection(int(sys.argv[1]), writable=False), Connection(int(sys.argv[2]), readable=False))

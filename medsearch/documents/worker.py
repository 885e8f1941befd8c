"""Document files read in a process of their own, one at a time, each within a time and a memory
bound: a small hostile file (a PDF page that shows two million characters, a compression bomb) can
take minutes and gigabytes in pdfminer or python-docx, and its bytes alone do not tell. A file past
either bound is Unreadable (skipped with its line); the process is replaced and the run goes on."""

from __future__ import annotations

import multiprocessing
import os
import sys
from pathlib import Path

from medsearch.documents.base import Extracted, Limits, Unreadable, extract


class Reader:
    """`read(path)`: the file's Extracted, read in the worker process (started at the first call)."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self._process = None
        self._conn = None

    def read(self, path: Path) -> Extracted:
        if self._process is None:
            self._start()
        self._conn.send(str(path))
        if not self._conn.poll(self.limits.max_seconds):
            self.close()
            raise Unreadable(f"took longer than {self.limits.max_seconds:g} s to read (--max-file-seconds)")
        try:
            kind, value = self._conn.recv()
        except (EOFError, OSError):  # the process died: the kernel's out-of-memory killer, most likely
            self.close()
            raise Unreadable("its reader stopped before the end (out of memory?)") from None
        if kind == "unreadable":
            raise Unreadable(value)
        return value

    def _start(self) -> None:
        # spawn, not fork: the parent may hold threads (OpenVINO, torch, faiss) that a fork copies badly
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(child, self.limits), daemon=True,
                                        name="medsearch-documents")
        self._process.start()
        child.close()

    def close(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.join()
            self._conn.close()
        self._process = self._conn = None

    def __enter__(self) -> "Reader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _serve(conn, limits: Limits) -> None:
    _limit_memory(limits.max_memory)
    while True:
        try:
            path = conn.recv()
        except (EOFError, OSError):
            return
        try:
            result = ("ok", extract(Path(path), limits))
        except Unreadable as err:
            result = ("unreadable", err.reason)
        except MemoryError:
            result = ("unreadable", f"needs more than {limits.max_memory / 2**30:g} GB of memory to read")
        except OSError as err:
            result = ("unreadable", f"cannot be read ({err.strerror or err})")
        conn.send(result)


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

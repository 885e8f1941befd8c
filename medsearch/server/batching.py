"""Micro-batching: queries that arrive together are encoded together, in one encoder pass.

Requests call `await batcher.encode(texts)`. One loop takes the first waiting request, gathers
whatever else arrives within `max_wait_ms` (or until `max_batch` texts), and runs one encoder
call for all of them on the encoder's own thread. While that call runs, new requests queue up
and form the next batch, so under load batches grow by themselves and throughput grows with
them; at low load a request waits at most `max_wait_ms` for company.

With batching off, every request makes its own encoder call on the same single thread: the
baseline that `bench/serve_load.py` compares against.

One request never fails another: when an encoder pass fails, each request in it is encoded again
alone, so only the one the encoder cannot take gets the error. The queue is bounded in texts, not
requests (`max_pending` texts waiting for a pass, all requests together: a request that would take
it past the bound makes `encode` raise `Overloaded` at once; one larger than the whole bound is
taken when nothing waits, so every request can be served), and a caller that has gone (its await
cancelled: a client that disconnected, a deadline that passed) is dropped before its pass.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np


class Overloaded(Exception):
    """The texts waiting for the encoder, with a request's, would be more than `max_pending`."""


@dataclass
class _Pending:
    texts: list[str]
    future: asyncio.Future = field(repr=False)


class MicroBatcher:
    """Encode texts from concurrent callers in shared encoder passes on `executor`.

    `encode(texts) -> (vectors, ms)`: vectors has one row per text; ms is the wall time of the
    encoder pass that included them (shared by everyone in that pass)."""

    def __init__(
        self,
        encode: Callable[[list[str]], np.ndarray],
        executor: Executor,
        *,
        enabled: bool = True,
        max_wait_ms: float = 1.0,
        max_batch: int = 64,
        workers: int = 1,
        max_pending: int = 0,
        on_pass: Callable[[int], None] | None = None,
    ):
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be at least 0; got {max_wait_ms}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1; got {max_batch}")
        if workers < 1:
            raise ValueError(f"workers must be at least 1; got {workers}")
        self._encode = encode
        self._executor = executor
        self.enabled = enabled
        self.max_wait = max_wait_ms / 1000
        self.max_batch = max_batch
        self.workers = workers  # encoder passes in flight at once (the executor needs as many threads)
        self.max_pending = max_pending  # texts waiting for a pass, all requests together; 0: no bound
        self.on_pass = on_pass  # called with the number of texts of each encoder pass (the service's metrics)
        self._queue: asyncio.Queue[_Pending] | None = None
        self._task: asyncio.Task | None = None
        self.passes = 0  # encoder calls made, and texts encoded: passes < texts means batching happened
        self.texts = 0
        self.pending_texts = 0  # texts in the queue (callers that left included, until their pass drops them)

    async def start(self) -> None:
        if self.enabled and self._task is None:
            self._queue = asyncio.Queue()  # bounded in texts by encode()
            self._task = asyncio.create_task(self._run(), name="medsearch-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        while self._queue is not None and not self._queue.empty():
            pending = self._queue.get_nowait()
            if not pending.future.done():
                pending.future.set_exception(RuntimeError("the service is shutting down"))
        self.pending_texts = 0

    @property
    def pending(self) -> int:
        """Requests waiting for an encoder pass now (0 with batching off: they wait on the executor).
        The metrics server's thread reads it too: the length of the queue's deque, one atomic read."""
        return self._queue.qsize() if self._queue is not None else 0

    async def encode(self, texts: list[str]) -> tuple[np.ndarray, float]:
        if not self.enabled:
            return await self._call(texts)
        if self._task is None:
            raise RuntimeError("the batcher is not running (call start() first)")
        waiting = self.pending_texts
        if self.max_pending and waiting and waiting + len(texts) > self.max_pending:
            raise Overloaded(f"queries waiting for the encoder: {waiting}, and {len(texts)} more would pass "
                             f"the limit of {self.max_pending}")
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(list(texts), future))
        self.pending_texts += len(texts)
        return await future

    async def _call(self, texts: list[str]) -> tuple[np.ndarray, float]:
        started = time.perf_counter()
        vectors = await asyncio.get_running_loop().run_in_executor(self._executor, self._encode, texts)
        self.passes += 1
        self.texts += len(texts)
        if self.on_pass is not None:
            self.on_pass(len(texts))
        return vectors, (time.perf_counter() - started) * 1000

    async def _gather(self) -> list[_Pending]:
        """The first waiting request and whatever joins it within max_wait (up to max_batch texts)."""
        batch = [self._take(await self._queue.get())]
        size = len(batch[0].texts)
        deadline = asyncio.get_running_loop().time() + self.max_wait
        while size < self.max_batch:
            try:
                pending = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    break
                try:
                    pending = await asyncio.wait_for(self._queue.get(), left)
                except asyncio.TimeoutError:  # the builtin TimeoutError only from 3.11
                    break
            batch.append(self._take(pending))
            size += len(pending.texts)
        return batch

    def _take(self, pending: _Pending) -> _Pending:
        """A request out of the queue: its texts no longer wait."""
        self.pending_texts -= len(pending.texts)
        return pending

    async def _run(self) -> None:
        free = asyncio.Semaphore(self.workers)
        running: set[asyncio.Task] = set()
        try:
            while True:
                await free.acquire()  # gather only once a worker can take the pass: meanwhile queries pile up
                batch = [p for p in await self._gather() if not p.future.done()]  # drop callers that left
                if not batch:
                    free.release()
                    continue
                task = asyncio.create_task(self._pass(batch))
                running.add(task)
                task.add_done_callback(lambda t: (running.discard(t), free.release()))
        finally:
            for task in running:
                task.cancel()

    async def _pass(self, batch: list[_Pending]) -> None:
        try:
            vectors, ms = await self._call([text for p in batch for text in p.texts])
        except Exception as err:
            if len(batch) > 1:  # find the request the encoder cannot take: each one again, alone
                for pending in batch:
                    if not pending.future.done():
                        await self._pass([pending])
                return
            if not batch[0].future.done():
                batch[0].future.set_exception(err)
            return
        start = 0
        for pending in batch:
            end = start + len(pending.texts)
            if not pending.future.done():
                pending.future.set_result((vectors[start:end], ms))
            start = end

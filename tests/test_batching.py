"""The micro-batcher on its own: grouping, limits, errors and callers that leave."""

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from medsearch.server.batching import MicroBatcher


class SlowEncoder:
    """Encodes a text as [len(text), call number]; each call takes `seconds` (so callers pile up)."""

    def __init__(self, seconds=0.05, fail_on=None):
        self.seconds, self.fail_on = seconds, fail_on
        self.calls: list[list[str]] = []
        self.lock = threading.Lock()

    def __call__(self, texts):
        with self.lock:
            self.calls.append(list(texts))
            number = len(self.calls)
            self.running = getattr(self, "running", 0) + 1
            self.most_at_once = max(getattr(self, "most_at_once", 0), self.running)
        time.sleep(self.seconds)
        with self.lock:
            self.running -= 1
        if self.fail_on and self.fail_on in texts:
            raise RuntimeError(f"cannot encode {self.fail_on}")
        return np.array([[len(t), number] for t in texts], dtype=np.float32)


def run(coroutine):
    return asyncio.run(coroutine)


async def concurrently(batcher, requests, stagger=0.0):
    await batcher.start()
    try:
        tasks = []
        for texts in requests:
            tasks.append(asyncio.create_task(batcher.encode(texts)))
            if stagger:
                await asyncio.sleep(stagger)
        return await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await batcher.stop()


def test_concurrent_callers_share_passes_and_get_their_own_rows():
    encoder = SlowEncoder()
    with ThreadPoolExecutor(1) as pool:
        batcher = MicroBatcher(encoder, pool, max_wait_ms=5, max_batch=64)
        requests = [[f"q{i}" + "x" * i] for i in range(20)] + [["two", "texts!"]]
        results = run(concurrently(batcher, requests))
    assert len(encoder.calls) < 5  # 21 requests, a handful of passes
    assert sorted(t for call in encoder.calls for t in call) == sorted(t for r in requests for t in r)
    for texts, (vectors, ms) in zip(requests, results):
        assert vectors[:, 0].tolist() == [len(t) for t in texts]  # each caller gets its own rows, in order
        assert ms >= 40  # the shared pass's wall time
    assert batcher.passes == len(encoder.calls)
    assert batcher.texts == 22


def test_requests_that_arrive_while_encoding_form_the_next_pass():
    encoder = SlowEncoder(seconds=0.1)
    with ThreadPoolExecutor(1) as pool:
        batcher = MicroBatcher(encoder, pool, max_wait_ms=0, max_batch=64)
        run(concurrently(batcher, [[f"q{i}"] for i in range(10)], stagger=0.02))
    assert encoder.calls[0] == ["q0"]  # no wait: the first goes alone
    assert len(encoder.calls) <= 3
    assert sum(map(len, encoder.calls)) == 10


def test_max_batch_caps_a_pass():
    encoder = SlowEncoder()
    with ThreadPoolExecutor(1) as pool:
        batcher = MicroBatcher(encoder, pool, max_wait_ms=20, max_batch=4)
        run(concurrently(batcher, [[f"q{i}"] for i in range(10)]))
    assert max(map(len, encoder.calls)) == 4
    assert sum(map(len, encoder.calls)) == 10


@pytest.mark.parametrize("workers", [1, 2])
def test_workers_bound_the_passes_in_flight(workers):
    encoder = SlowEncoder(seconds=0.05)
    with ThreadPoolExecutor(workers) as pool:
        batcher = MicroBatcher(encoder, pool, max_wait_ms=0, max_batch=2, workers=workers)
        results = run(concurrently(batcher, [[f"q{i}"] for i in range(12)]))
    assert encoder.most_at_once == workers
    assert max(map(len, encoder.calls)) <= 2
    assert [r[0][0, 0] for r in results] == [2.0] * 10 + [3.0] * 2


def test_batching_off_makes_one_call_per_request():
    encoder = SlowEncoder(seconds=0.01)
    with ThreadPoolExecutor(1) as pool:
        batcher = MicroBatcher(encoder, pool, enabled=False)
        results = run(concurrently(batcher, [[f"q{i}"] for i in range(6)]))
    assert len(encoder.calls) == 6
    assert all(len(c) == 1 for c in encoder.calls), "batching off: each encoder call holds one request's text"
    assert all(r[0].shape == (1, 2) for r in results)


def test_an_encoder_error_fails_only_the_caller_whose_text_the_encoder_cannot_take():
    encoder = SlowEncoder(fail_on="bad", seconds=0.01)
    with ThreadPoolExecutor(1) as pool:
        batcher = MicroBatcher(encoder, pool, max_wait_ms=20)
        first = run(concurrently(batcher, [["ok"], ["bad"], ["fine", "also"]]))
        second = run(concurrently(batcher, [["ok"], ["fine"]]))  # the batcher survives
    assert isinstance(first[1], RuntimeError), first[1]
    assert "cannot encode bad" in str(first[1])
    assert first[0][0][:, 0].tolist() == [2.0], "the good caller before the bad one lost its answer"
    assert first[2][0][:, 0].tolist() == [4.0, 4.0], "the good caller after the bad one lost its answer"
    assert encoder.calls[0] == ["ok", "bad", "fine", "also"], "the three callers did not share the first pass"
    assert encoder.calls[1:4] == [["ok"], ["bad"], ["fine", "also"]], "the failed pass was not retried caller by caller"
    assert [r[0][:, 0].tolist() for r in second] == [[2.0], [4.0]]


def test_a_full_queue_refuses_at_once_and_the_queued_are_still_answered():
    from medsearch.server.batching import Overloaded

    encoder = SlowEncoder(seconds=0.1)
    with ThreadPoolExecutor(1) as pool:
        batcher = MicroBatcher(encoder, pool, max_wait_ms=0, max_batch=1, max_pending=2)
        results = run(concurrently(batcher, [["a"], ["b"], ["c"], ["d"], ["e"]]))
    refused = [r for r in results if isinstance(r, Overloaded)]
    answered = [r for r in results if not isinstance(r, Exception)]
    assert refused, "five requests into a queue of two while the encoder is busy: some must be refused"
    assert "waiting for the encoder" in str(refused[0])
    assert len(answered) + len(refused) == 5, results
    assert len(answered) >= 2, results


def test_the_queue_is_bounded_in_queries_not_requests():
    """Issue 30: max_pending counted requests, so 512 requests of 64 queries each could wait. Now
    it counts queries: with 4 allowed and 3 waiting, a request of 2 is refused at once and one of 1
    gets in; every request that got in is answered."""
    from medsearch.server.batching import Overloaded

    async def scenario(batcher):
        await batcher.start()
        try:
            busy = asyncio.create_task(batcher.encode(["busy"]))
            await asyncio.sleep(0.05)  # in the only worker's pass: nothing waits
            three = asyncio.create_task(batcher.encode(["a", "b", "c"]))
            await asyncio.sleep(0)
            with pytest.raises(Overloaded, match="waiting for the encoder: 3, and 2 more would pass the limit of 4"):
                await batcher.encode(["d", "e"])
            one = asyncio.create_task(batcher.encode(["f"]))
            return await asyncio.gather(busy, three, one)
        finally:
            await batcher.stop()

    encoder = SlowEncoder(seconds=0.2)
    with ThreadPoolExecutor(1) as pool:
        batcher = MicroBatcher(encoder, pool, max_wait_ms=0, max_batch=64, max_pending=4)
        answers = run(scenario(batcher))
    assert [len(vectors) for vectors, _ in answers] == [1, 3, 1]
    assert encoder.calls == [["busy"], ["a", "b", "c", "f"]]
    assert batcher.pending_texts == 0


def test_a_request_larger_than_the_bound_is_taken_when_none_wait():
    """max_pending 2: a request of 5 queries is encoded when nothing waits (else it could never be
    served), and refused while another query waits."""
    from medsearch.server.batching import Overloaded

    async def scenario(batcher):
        await batcher.start()
        try:
            alone = await batcher.encode(list("abcde"))
            busy = asyncio.create_task(batcher.encode(["busy"]))
            await asyncio.sleep(0.05)
            waiting = asyncio.create_task(batcher.encode(["w"]))
            await asyncio.sleep(0)
            with pytest.raises(Overloaded, match="waiting for the encoder: 1, and 5 more"):
                await batcher.encode(list("abcde"))
            await asyncio.gather(busy, waiting)
            return alone
        finally:
            await batcher.stop()

    encoder = SlowEncoder(seconds=0.1)
    with ThreadPoolExecutor(1) as pool:
        vectors, _ = run(scenario(MicroBatcher(encoder, pool, max_wait_ms=0, max_pending=2)))
    assert vectors[:, 0].tolist() == [1.0] * 5
    assert encoder.calls == [list("abcde"), ["busy"], ["w"]]


def test_a_caller_that_leaves_does_not_break_the_pass():
    encoder = SlowEncoder(seconds=0.05)

    async def scenario(batcher):
        await batcher.start()
        try:
            leaving = asyncio.create_task(batcher.encode(["leaves"]))
            staying = asyncio.create_task(batcher.encode(["stays"]))
            await asyncio.sleep(0.001)
            leaving.cancel()
            return await staying
        finally:
            await batcher.stop()

    with ThreadPoolExecutor(1) as pool:
        vectors, _ = run(scenario(MicroBatcher(encoder, pool, max_wait_ms=10)))
    assert vectors[:, 0].tolist() == [5.0]


def test_bad_settings_and_use_before_start():
    with ThreadPoolExecutor(1) as pool:
        with pytest.raises(ValueError, match="max_wait_ms must be at least 0"):
            MicroBatcher(SlowEncoder(), pool, max_wait_ms=-1)
        with pytest.raises(ValueError, match="max_batch must be at least 1"):
            MicroBatcher(SlowEncoder(), pool, max_batch=0)
        with pytest.raises(ValueError, match="workers must be at least 1"):
            MicroBatcher(SlowEncoder(), pool, workers=0)
        with pytest.raises(RuntimeError, match="not running"):
            run(MicroBatcher(SlowEncoder(), pool).encode(["x"]))

"""The next batch formed while one runs: ``prefetch=True`` (docs/semantics.md, 15).

On every front end whose batch function runs on the processor's worker
threads (conftest.THREAD_DRIVER_FRONT_ENDS): the function never runs on two threads at once, a full batch is
formed (and padded) while one runs, a batch that could still grow waits for
the running one, every caller gets its own results, and errors, splits and
shutdown with a batch formed ahead lose nothing.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest
from conftest import THREAD_DRIVER_FRONT_ENDS, TIMEOUT, FrontEnd, Gate, queued, wait_until

worker_front_ends = pytest.mark.parametrize("submit", THREAD_DRIVER_FRONT_ENDS, indirect=True)


def dispatched(proc: Any) -> int:
    """Batches formed so far (an asyncio caller's push may come after submit returns)."""
    return sum(proc.stats.batches_by_reason.values())


class _Serial(Gate):
    """A Gate that counts the times its function was entered while it ran."""

    def __init__(self) -> None:
        super().__init__(lambda items: [(x, "done") for x in items])
        self.running = threading.Lock()
        self.overlaps = 0

    def __call__(self, items: list[Any]) -> list[Any]:
        if not self.running.acquire(blocking=False):
            self.overlaps += 1
            self.running.acquire()
        try:
            return super().__call__(items)
        finally:
            self.running.release()

    @property
    def sizes(self) -> list[int]:
        return [len(b) for b in self.batches]


@worker_front_ends
def test_a_full_batch_is_formed_while_one_runs_and_one_that_could_grow_waits(submit: FrontEnd) -> None:
    fn = _Serial()
    proc = submit.make(fn, batch_size=4, timeout_ms=1, prefetch=True)
    first = submit(proc, "first")
    assert fn.entered.wait(TIMEOUT)
    early = [submit(proc, f"early{i}") for i in range(2)]
    time.sleep(0.05)  # 50 timeouts: half a batch is not formed ahead
    assert queued(proc) == 2
    early += [submit(proc, f"early{i}") for i in range(2, 4)]
    wait_until(lambda: queued(proc) == 0, "the full batch to be formed while the first runs")
    late = submit(proc, "late")
    time.sleep(0.05)  # one batch ahead at most
    assert queued(proc) == 1
    fn.open()
    assert first.result(TIMEOUT) == ("first", "done")
    assert [f.result(TIMEOUT) for f in early] == [(f"early{i}", "done") for i in range(4)]
    assert late.result(TIMEOUT) == ("late", "done")
    assert fn.sizes == [1, 4, 1]
    assert fn.overlaps == 0


@worker_front_ends
def test_under_saturation_every_caller_gets_its_own_results_from_full_batches(submit: FrontEnd) -> None:
    active = [0]
    overlaps = [0]
    sizes: list[int] = []

    def fn(items: list[int]) -> list[int]:
        active[0] += 1
        overlaps[0] += active[0] > 1
        sizes.append(len(items))
        time.sleep(0.002)  # the GIL released, as a device computes
        active[0] -= 1
        return [x * 3 for x in items]

    proc = submit.make(fn, batch_size=8, timeout_ms=50, prefetch=True)
    futures = [submit(proc, i) for i in range(400)]
    assert [f.result(TIMEOUT) for f in futures] == [i * 3 for i in range(400)]
    assert overlaps[0] == 0
    assert sum(sizes) == 400 and max(sizes) == 8
    assert sizes.count(8) >= 45  # full batches, not halves (50 if the callers keep up)


@worker_front_ends
def test_an_error_reaches_the_callers_of_its_own_batch_only(submit: FrontEnd) -> None:
    fn = _Serial()

    def failing(items: list[Any]) -> list[Any]:
        out = fn(items)
        if any(x == "bad" for x in items):
            raise ValueError("this batch failed")
        return out

    proc = submit.make(failing, batch_size=2, timeout_ms=1, prefetch=True)
    first = submit(proc, "first")
    assert fn.entered.wait(TIMEOUT)
    bad = [submit(proc, "bad"), submit(proc, "with-bad")]
    wait_until(lambda: dispatched(proc) == 2, "the failing batch to be formed ahead")
    good = [submit(proc, "good0"), submit(proc, "good1")]
    fn.open()
    assert first.result(TIMEOUT) == ("first", "done")
    for f in bad:
        with pytest.raises(ValueError, match="this batch failed"):
            f.result(TIMEOUT)
    assert [f.result(TIMEOUT) for f in good] == [("good0", "done"), ("good1", "done")]
    assert fn.overlaps == 0


@worker_front_ends
def test_a_batch_too_big_is_split_before_the_batch_formed_ahead_runs(submit: FrontEnd) -> None:
    class TooBig(RuntimeError):
        pass

    fn = _Serial()
    runs: list[list[str]] = []

    def model(items: list[str]) -> list[Any]:
        runs.append(list(items))
        if len(items) > 2 and items[0].startswith("big"):
            raise TooBig("out of memory")
        return fn(items)

    proc = submit.make(model, batch_size=4, timeout_ms=1, prefetch=True, split_on=(TooBig,))
    first = submit(proc, "first")
    assert fn.entered.wait(TIMEOUT)
    big = [submit(proc, f"big{i}") for i in range(4)]
    wait_until(lambda: dispatched(proc) == 2, "the big batch to be formed ahead")
    after = [submit(proc, f"after{i}") for i in range(4)]
    wait_until(lambda: queued(proc) == 4, "the next calls to queue (one batch ahead at most)")
    fn.open()
    assert first.result(TIMEOUT) == ("first", "done")
    assert [f.result(TIMEOUT) for f in big] == [(f"big{i}", "done") for i in range(4)]
    assert [f.result(TIMEOUT) for f in after] == [(f"after{i}", "done") for i in range(4)]
    assert runs[1:4] == [["big0", "big1", "big2", "big3"], ["big0", "big1"], ["big2", "big3"]]
    assert proc.stats.split_batches == 1
    assert fn.overlaps == 0


@worker_front_ends
def test_shutdown_with_a_batch_formed_ahead_runs_it(submit: FrontEnd) -> None:
    fn = _Serial()
    proc = submit.make(fn, batch_size=2, timeout_ms=1, prefetch=True)
    first = submit(proc, "first")
    assert fn.entered.wait(TIMEOUT)
    ahead = [submit(proc, "a0"), submit(proc, "a1")]
    wait_until(lambda: dispatched(proc) == 2, "the batch to be formed ahead")
    last = submit(proc, "last")
    wait_until(lambda: queued(proc) == 1, "the last call to queue")
    stopper = threading.Thread(target=proc.shutdown)
    stopper.start()
    time.sleep(0.02)
    fn.open()
    stopper.join(TIMEOUT)
    assert not stopper.is_alive()
    assert first.result(TIMEOUT) == ("first", "done")
    assert [f.result(TIMEOUT) for f in ahead] == [("a0", "done"), ("a1", "done")]
    from batched import ShutdownError

    with pytest.raises(ShutdownError):
        last.result(TIMEOUT)
    assert fn.sizes == [1, 2]


@worker_front_ends
def test_shutdown_from_inside_the_batch_function_with_a_batch_formed_ahead(submit: FrontEnd) -> None:
    holder: dict[str, Any] = {}
    fn = _Serial()

    def stopping(items: list[Any]) -> list[Any]:
        out = fn(items)
        holder["proc"].shutdown()  # waits for no worker: the other one may be waiting for this one
        return out

    proc = holder["proc"] = submit.make(stopping, batch_size=2, timeout_ms=1, prefetch=True)
    first = submit(proc, "first")
    assert fn.entered.wait(TIMEOUT)
    ahead = [submit(proc, "a0"), submit(proc, "a1")]
    wait_until(lambda: dispatched(proc) == 2, "the batch to be formed ahead")
    fn.open()
    assert first.result(TIMEOUT) == ("first", "done")
    assert [f.result(TIMEOUT) for f in ahead] == [("a0", "done"), ("a1", "done")]
    from batched import ShutdownError

    with pytest.raises(ShutdownError):
        submit(proc, "after").result(TIMEOUT)


@worker_front_ends
def test_an_internal_error_fails_the_batch_formed_ahead_and_later_calls_still_run(submit: FrontEnd) -> None:
    class _Exploding(type):
        def __instancecheck__(cls, instance: Any) -> bool:
            raise RuntimeError("the split check exploded")

    class Exploding(Exception, metaclass=_Exploding):  # a split_on class whose check fails: a bug in the worker
        pass

    fn = _Serial()

    def failing(items: list[Any]) -> list[Any]:
        out = fn(items)
        if items[0] == "f0":
            raise ValueError("the first batch failed")
        return out

    proc = submit.make(failing, batch_size=2, timeout_ms=1, prefetch=True, split_on=(Exploding,))
    first = submit(proc, ["f0", "f1"])  # one call: one batch of 2, which a split could cut
    assert fn.entered.wait(TIMEOUT)
    ahead = [submit(proc, "a0"), submit(proc, "a1")]
    wait_until(lambda: dispatched(proc) == 2, "the batch to be formed ahead")
    time.sleep(0.05)  # (popped already; now parked too, waiting for the running batch)
    fn.open()
    with pytest.raises(RuntimeError, match="the split check exploded"):
        first.result(TIMEOUT)
    for f in ahead:  # the batch formed ahead fails with the same error; nobody waits for ever
        with pytest.raises(RuntimeError, match="the split check exploded"):
            f.result(TIMEOUT)
    assert submit(proc, "late").result(TIMEOUT) == ("late", "done")  # half a batch leaves on its timeout again
    assert fn.overlaps == 0


@worker_front_ends
def test_padded_batches_formed_ahead_give_each_caller_its_rows(submit: FrontEnd) -> None:
    sizes: list[int] = []

    def model(features: dict[str, Any]) -> Any:
        ids = features["ids"]
        sizes.append(len(ids))
        time.sleep(0.002)
        return ids.sum(axis=1)

    proc = submit.make_model(model, batch_size=8, timeout_ms=50, prefetch=True)
    rng = np.random.default_rng(3)
    rows = [rng.integers(1, 1000, size=(1, int(rng.integers(1, 40)))) for _ in range(200)]
    futures = [submit(proc, {"ids": r}) for r in rows]
    assert [f.result(TIMEOUT).tolist() for f in futures] == [[int(r.sum())] for r in rows]
    assert sum(sizes) == 200 and max(sizes) == 8


def test_prefetch_options_are_checked() -> None:
    import batched
    from batched import aio

    with pytest.raises(ValueError, match="prefetch .* num_workers=1"):
        batched.BatchProcessor(lambda xs: xs, num_workers=2, prefetch=True)
    with pytest.raises(TypeError, match="prefetch must be True or False"):
        batched.BatchProcessor(lambda xs: xs, prefetch=1)

    async def model(xs: list[int]) -> list[int]:
        return xs

    with pytest.raises(ValueError, match="prefetch needs a plain"):
        aio.dynamically(prefetch=True)(model)
    assert batched.BatchProcessor(lambda xs: xs, prefetch=True).options.prefetch is True

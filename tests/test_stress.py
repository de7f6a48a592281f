"""Stress: many callers at once, every result checked against its own input,
every item seen by the batch function exactly once, counts reconciled with
``stats`` (issue 6: nothing lost, nothing misrouted, nothing hangs).

Sizes: the default (CI) sizes are those of issue 6 and take about 20 s on 2
cores: 1,000,000 items from 64 threads, 100,000 asyncio tasks over 4 event
loops (per kind of batch function), cancellation storms of 10,000 tasks.
``BATCHED_SOAK=1`` runs a soak: 5,000,000 items, 400,000 tasks, storms of
50,000 (about 2 minutes).

Every item is a unique int ``caller * STRIDE + seq``; the batch function
returns ``~item`` (bitwise not), so a result names its own input: a lost,
duplicated or misrouted result fails an assertion.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import random
import sys
import threading
from collections import Counter
from concurrent.futures import CancelledError as FutureCancelledError
from typing import Any

import pytest
from conftest import ASYNCIO_FRONT_ENDS, TIMEOUT, Gate, _LoopThread, run_threads, wait_until, worker_threads

import batched
from batched import BatchProcessor, aio

SOAK = os.environ.get("BATCHED_SOAK") == "1"
STRIDE = 1 << 24  # items per caller, at most
HANG = 120.0  # seconds: a whole stress run far past its size means a hang


def encode(caller: int, seq: int) -> int:
    return caller * STRIDE + seq


def assert_each_once(seen: list[int], sent: Counter[int] | list[int]) -> None:
    counts = Counter(seen)
    twice = [x for x, n in counts.items() if n > 1]
    assert not twice, f"{len(twice)} items reached the batch function more than once, e.g. {twice[:5]}"
    expected = set(sent)
    missing = expected - counts.keys()
    extra = counts.keys() - expected
    assert not missing, f"{len(missing)} items never reached the batch function"
    assert not extra, f"{len(extra)} unknown items reached the batch function"


def assert_stats_reconcile(stats: Any, total: int, batch_size: int) -> None:
    assert stats.total_processed == total
    assert stats.queue_size == 0
    assert max(stats.batch_size_histogram) <= batch_size
    assert sum(n * c for n, c in stats.batch_size_histogram.items()) == total
    assert sum(stats.batch_size_histogram.values()) == stats.total_batches
    assert sum(stats.batches_by_reason.values()) == stats.total_batches


# ---- threads ----

THREADS = 64
THREAD_ITEMS = 5_000_000 if SOAK else 1_000_000


def test_64_threads_mixing_single_and_list_calls() -> None:
    batch_size, num_workers = 64, 2
    seen: list[int] = []

    @batched.dynamically(batch_size=batch_size, timeout_ms=1, num_workers=num_workers)
    def stress_invert(items: list[int]) -> list[int]:
        seen.extend(items)  # one C call: atomic under the GIL, with 2 workers too
        return [~x for x in items]

    quota = THREAD_ITEMS // THREADS
    sent = [0] * THREADS

    def caller(k: int) -> None:
        rng = random.Random(k)
        seq = 0
        while seq < quota:
            if rng.random() < 0.5:
                x = encode(k, seq)
                got = stress_invert(x)
                assert got == ~x, f"caller {k} sent {x} and got {got}"
                seq += 1
            else:
                # 1..100 items: often more than a batch, split and reassembled
                n = min(rng.randint(1, 100), quota - seq)
                xs = [encode(k, seq + j) for j in range(n)]
                got = stress_invert(xs)
                assert got == [~x for x in xs], f"caller {k}: wrong results for its list of {n}"
                seq += n
        sent[k] = seq

    run_threads(THREADS, caller, HANG)
    total = sum(sent)
    assert total == quota * THREADS
    assert len(worker_threads("stress_invert")) == num_workers  # no worker died
    assert_stats_reconcile(stress_invert.stats, total, batch_size)
    assert_each_once(seen, [encode(k, s) for k in range(THREADS) for s in range(quota)])
    stress_invert.shutdown()
    assert not worker_threads("stress_invert")


# ---- asyncio: several event loops on several threads ----

LOOPS = 4
ASYNC_TASKS = 400_000 if SOAK else 100_000


@pytest.mark.parametrize("kind", ["aio-async", "aio"])
def test_concurrent_tasks_on_4_event_loops(kind: str) -> None:
    batch_size = 64
    seen: list[int] = []
    loops_seen: set[int] = set()

    if kind == "aio-async":

        @aio.dynamically(batch_size=batch_size, timeout_ms=1)
        async def invert(items: list[int]) -> list[int]:
            loops_seen.add(id(asyncio.get_running_loop()))
            seen.extend(items)
            await asyncio.sleep(0)
            return [~x for x in items]

    else:

        @aio.dynamically(batch_size=batch_size, timeout_ms=1, num_workers=2)
        def invert(items: list[int]) -> list[int]:
            seen.extend(items)
            return [~x for x in items]

    per_loop = ASYNC_TASKS // LOOPS
    sent: list[list[int]] = [[] for _ in range(LOOPS)]

    def loop_main(k: int) -> None:
        rng = random.Random(100 + k)

        async def one(i: int) -> None:
            if rng.random() < 0.8:
                x = encode(k, 1000 * i)
                sent[k].append(x)
                got = await invert(x)
                assert got == ~x, f"loop {k} task {i} sent {x} and got {got}"
            else:
                xs = [encode(k, 1000 * i + j) for j in range(rng.randint(1, 100))]
                sent[k].extend(xs)
                got = await invert(xs)
                assert got == [~x for x in xs], f"loop {k} task {i}: wrong results"

        async def main() -> None:
            await asyncio.gather(*(one(i) for i in range(per_loop)))

        asyncio.run(asyncio.wait_for(main(), HANG))

    run_threads(LOOPS, loop_main, HANG)
    all_sent = [x for part in sent for x in part]
    if kind == "aio-async":
        assert len(loops_seen) == LOOPS  # each loop ran its own batches
    # async: one engine per loop, their stats merged; sync: one engine
    assert_stats_reconcile(invert.stats, len(all_sent), batch_size)
    assert_each_once(seen, all_sent)
    invert.shutdown()


# ---- cancellation storms (asyncio) ----

STORM_TASKS = 50_000 if SOAK else 10_000


class AsyncioLog(logging.Handler):
    """Collects what asyncio logs: 'Future exception was never retrieved',
    'Task was destroyed but it is pending!', exceptions in callbacks."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record.getMessage())

    def __enter__(self) -> AsyncioLog:
        logging.getLogger("asyncio").addHandler(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        gc.collect()  # futures and tasks complain when they are collected
        logging.getLogger("asyncio").removeHandler(self)


class Storm:
    """Who cancels whom: tasks to cancel from inside the batch that holds
    their first item (so, surely after dispatch), on the callers' loop."""

    def __init__(self) -> None:
        self.seen: list[int] = []
        self.in_batch: dict[int, asyncio.Task[Any]] = {}
        self.loop: asyncio.AbstractEventLoop | None = None

    def look(self, items: list[int]) -> None:
        self.seen.extend(items)
        for x in items:
            task = self.in_batch.pop(x, None)
            if task is not None:
                self.loop.call_soon_threadsafe(task.cancel)  # type: ignore[union-attr]


def make_storm_processor(front: str, storm: Storm) -> tuple[Any, Any]:
    """A processor of ``~x`` whose batches take a little while (so that timed
    cancellations land before and during dispatch), and how to call it."""
    if front == "aio-async":

        async def slow_invert(items: list[int]) -> list[int]:
            storm.look(items)
            await asyncio.sleep(0.0005)
            return [~x for x in items]

        proc = aio.AsyncBatchProcessor(slow_invert, batch_size=16, timeout_ms=0.5, num_workers=2)
        return proc, proc

    def slow_invert_sync(items: list[int]) -> list[int]:
        storm.look(items)
        threading.Event().wait(0.0005)
        return [~x for x in items]

    if front == "aio":
        proc = aio.AsyncBatchProcessor(slow_invert_sync, batch_size=16, timeout_ms=0.5, num_workers=2)
        return proc, proc
    proc = BatchProcessor(slow_invert_sync, batch_size=16, timeout_ms=0.5, num_workers=2)
    return proc, proc.acall


@pytest.mark.parametrize("front", ASYNCIO_FRONT_ENDS)
def test_cancellation_storm(front: str) -> None:
    """A random third of the tasks is cancelled: at once, after a random
    delay, or from inside the batch holding its first item. Lists of up to
    40 items span batches, so some are cancelled part-way through."""
    storm = Storm()
    proc, call = make_storm_processor(front, storm)
    rng = random.Random(7)
    plan = []  # (items, single, how it is cancelled: None, "now", "in batch", or a delay)
    for i in range(STORM_TASKS):
        single = rng.random() < 0.6
        n = 1 if single else rng.randint(1, 40)
        how: Any = None
        if rng.random() < 1 / 3:
            how = rng.choice(["now", "in batch", rng.uniform(0, 0.05)])
        plan.append(([encode(i, j) for j in range(n)], single, how))

    async def main() -> list[asyncio.Task[Any]]:
        loop = storm.loop = asyncio.get_running_loop()
        tasks = []
        for items, single, how in plan:
            task = asyncio.ensure_future(call(items[0] if single else items))
            if how == "now":
                task.cancel()  # before its first step: never queued
            elif how == "in batch":
                storm.in_batch[items[0]] = task
            elif how is not None:
                loop.call_later(how, task.cancel)
            tasks.append(task)
            if len(tasks) % 200 == 0:
                await asyncio.sleep(0.001)  # let batches go meanwhile
        await asyncio.wait(tasks, timeout=HANG)
        return tasks

    with AsyncioLog() as log:
        tasks = asyncio.run(asyncio.wait_for(main(), HANG))
        assert all(t.done() for t in tasks), "a caller hung"
        kept_items: list[int] = []
        cancelled: list[tuple[list[int], Any]] = []
        for task, (items, single, how) in zip(tasks, plan):
            if how == "in batch" or how == "now":
                assert task.cancelled()
            if task.cancelled():
                cancelled.append((items, how))
                continue
            got = task.result()  # raises if the caller got an error: none is expected
            assert got == (~items[0] if single else [~x for x in items])
            kept_items.extend(items)
        del tasks, task  # a cancelled task's traceback holds its call's frames
    assert log.records == []
    assert STORM_TASKS // 5 < len(cancelled) < STORM_TASKS // 2
    counts = Counter(storm.seen)
    assert max(counts.values()) == 1  # each item at most once
    assert set(kept_items) <= counts.keys()  # every kept caller's items ran
    for items, how in cancelled:
        if how == "now":  # never queued
            assert not any(x in counts for x in items)
    # the storm hit both sides of dispatch
    after = sum(any(x in counts for x in items) for items, _ in cancelled)
    partly = sum(0 < sum(x in counts for x in items) < len(items) for items, _ in cancelled)
    print(f"{front}: {len(cancelled)} cancelled, {after} after dispatch, {partly} part-way through a list")
    assert 0 < after < len(cancelled)
    assert partly > 0
    stats = proc.stats
    assert stats.queue_size == 0
    assert stats.total_processed == len(storm.seen)
    # later calls still work
    assert asyncio.run(asyncio.wait_for(call([1, 2, 3]), TIMEOUT)) == [~1, ~2, ~3]
    # Nothing leaks (docs/semantics.md, 7): once the test lets go of them, each item is
    # held by its call's list in `plan` alone; a call record kept by the core
    # would still hold its items.
    del storm.seen, counts, kept_items, cancelled
    gc.collect()
    held = [x for items, _, _ in plan for x in items if x > 256 and sys.getrefcount(x) != 3]
    assert not held, f"{len(held)} items still referenced after the storm"
    proc.shutdown()


def test_cancelled_while_queued_never_reach_the_function_many_at_once() -> None:
    """A storm where every cancellation lands before dispatch (the queue is
    held behind a running batch): exactly the cancelled items never run."""
    gate = Gate(lambda xs: [~x for x in xs])
    proc = aio.AsyncBatchProcessor(gate, batch_size=32, timeout_ms=0)
    n = 5_000 if SOAK else 2_000
    rng = random.Random(3)

    async def main() -> None:
        first = asyncio.ensure_future(proc(-1))
        while not gate.entered.is_set():
            await asyncio.sleep(0.001)
        tasks = [asyncio.ensure_future(proc([encode(i, 0), encode(i, 1)] if i % 3 else encode(i, 0))) for i in range(n)]
        while proc.stats.queue_size < n + n - (n + 2) // 3:
            await asyncio.sleep(0.001)
        doomed = set(rng.sample(range(n), n // 3))
        for i in doomed:
            tasks[i].cancel()
        await asyncio.sleep(0)
        gate.open()
        assert await first == ~-1
        await asyncio.wait(tasks, timeout=HANG)
        for i, t in enumerate(tasks):
            if i in doomed:
                assert t.cancelled()
            elif i % 3:
                assert t.result() == [~encode(i, 0), ~encode(i, 1)]
            else:
                assert t.result() == ~encode(i, 0)
        ran = {x for batch in gate.batches for x in batch}
        for i in doomed:
            assert encode(i, 0) not in ran and encode(i, 1) not in ran

    with AsyncioLog() as log:
        asyncio.run(asyncio.wait_for(main(), HANG))
    assert log.records == []
    assert proc.stats.queue_size == 0
    proc.shutdown()


# ---- concurrent.futures interplay ----


def test_concurrent_futures_cancel_and_wait_for_timeouts() -> None:
    """Calls handed to a loop from other threads (run_coroutine_threadsafe):
    cancelling the concurrent.futures.Future cancels the task, which takes its
    items out of the queue; asyncio.wait_for timeouts do the same."""
    gate = Gate(lambda xs: [~x for x in xs])
    proc = BatchProcessor(gate, batch_size=8, timeout_ms=0)
    lt = _LoopThread()
    try:
        first = lt.submit(proc.acall(-1))
        assert gate.entered.wait(TIMEOUT)
        futures = [lt.submit(proc.acall(encode(i, 0))) for i in range(400)]

        async def with_deadline(x: int) -> Any:
            return await asyncio.wait_for(proc.acall(x), 0.05)

        timed_out = [lt.submit(with_deadline(encode(1000 + i, 0))) for i in range(100)]
        wait_until(lambda: proc.stats.queue_size == 500, "500 items queued")
        doomed = set(range(0, 400, 2))
        for i in doomed:
            assert futures[i].cancel()
        for f in timed_out:  # their deadline passes while the gate is shut
            with pytest.raises(asyncio.TimeoutError):
                f.result(TIMEOUT)
        wait_until(lambda: proc.stats.queue_size == 200, "cancelled items to leave the queue")
        gate.open()
        assert first.result(TIMEOUT) == ~-1
        for i, f in enumerate(futures):
            if i in doomed:
                with pytest.raises(FutureCancelledError):
                    f.result(TIMEOUT)
            else:
                assert f.result(TIMEOUT) == ~encode(i, 0)
        ran = sorted(x for batch in gate.batches for x in batch)
        assert ran == sorted([-1] + [encode(i, 0) for i in range(400) if i not in doomed])
        assert proc.stats.queue_size == 0
    finally:
        lt.close()
        proc.shutdown()

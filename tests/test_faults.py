"""Fault injection (issue 6): batch functions that raise at random, return the
wrong length, return an Exception for some items, run past the timeout, raise
KeyboardInterrupt/SystemExit, or call their own processor from inside a batch;
shutdown under load; interpreter exit with queued work.

What must hold under any mix of these: a worker never dies (later calls
work), each caller gets its own correct result or the error of ITS batch (or
item), never another caller's; nothing hangs.

Sizes: by default (CI) each fault mix is 10,000 calls (about 95,000 items)
and the whole module takes about 15 s on 2 cores; ``BATCHED_SOAK=1`` runs
mixes of 50,000 calls, shutdown storms of 20,000 tasks and more shutdown
rounds.

A re-entrant call (the batch function calling its own processor) is refused
at once with a RuntimeError: it would wait for the batch that makes it.

Every item is a unique int and its result is ``~item``. The batch function
records, for every item it sees, what it did to it (its *fate*); each caller
then derives the one outcome it may get from the fates of its own items.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import os
import random
import re
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import pytest
from conftest import FRONT_ENDS, THREAD_DRIVER_FRONT_ENDS, TIMEOUT, _LoopThread, wait_until, worker_threads

from batched import BatchProcessor, ShutdownError, aio

SOAK = os.environ.get("BATCHED_SOAK") == "1"
CALLS = 50_000 if SOAK else 10_000  # calls per fault-mix run
STRIDE = 1 << 16
BOUND = 120.0  # seconds: every caller of a run has its outcome by then, or it hung
REENTRY = "called its own processor from inside a batch"


class BatchFault(Exception):
    """Raised by the batch function for a whole batch."""


class ItemFault(Exception):
    """Returned by the batch function in place of one item's result."""


# Faults a batch may get, with their weights. "ok" and "slow" give results.
FAULTS = {
    "ok": 50,
    "slow": 6,  # runs past timeout_ms, then returns
    "raise": 8,
    "short": 4,  # returns one result too few
    "long": 4,  # one too many
    "items": 10,  # an ItemFault for some items
    "keyboard": 4,  # KeyboardInterrupt
    "exit": 4,  # SystemExit
    "reentrant": 4,  # calls its own processor
}
BATCH_FAILURES = {"raise", "short", "long", "keyboard", "exit", "reentrant", "cancel"}


def raise_fault(kind: str, bid: int) -> None:
    """The faults that are an exception raised by the batch function."""
    error = {"raise": BatchFault, "keyboard": KeyboardInterrupt, "exit": SystemExit}.get(kind)
    if error is not None:
        raise error(f"batch {bid}")


class Faulty:
    """The fault-injecting batch function's state and the callers' checks.

    ``fate[x]`` is what happened to item ``x``: ("ok",) / ("slow",) / ("item",)
    or (kind, batch id, batch size) for a whole-batch failure.
    """

    def __init__(self, seed: int, timeout_ms: float, faults: dict[str, int] = FAULTS) -> None:
        self.faults = faults
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.batch_ids = itertools.count()
        self.fate: dict[int, tuple[Any, ...]] = {}
        self.seen = 0
        self.failed_batches = 0
        self.enabled = True
        self.sleep_s = 3 * timeout_ms / 1000
        self.reentry: Any = None  # how the function calls its own processor

    def plan(self, items: list[int]) -> tuple[str, int]:
        with self.lock:
            bid = next(self.batch_ids)
            kind = self.rng.choices(list(self.faults), weights=list(self.faults.values()))[0] if self.enabled else "ok"
            bad = {x for x in items if self.rng.random() < 0.3} if kind == "items" else set()
            self.seen += len(items)
            for x in items:
                assert x not in self.fate, f"item {x} reached the batch function twice"
                if kind in BATCH_FAILURES:
                    self.fate[x] = (kind, bid, len(items))
                else:
                    self.fate[x] = ("item",) if x in bad else ("slow",) if kind == "slow" else ("ok",)
            if kind in BATCH_FAILURES:
                self.failed_batches += 1
        return kind, bid

    def results(self, kind: str, bid: int, items: list[int]) -> list[Any]:
        """What a batch whose fault is not an exception returns."""
        out: list[Any] = [ItemFault(f"item {x}") if self.fate[x] == ("item",) else ~x for x in items]
        if kind == "short":
            return out[:-1]
        if kind == "long":
            return [*out, 0]
        return out

    def sync_fn(self) -> Any:
        def faulty_batch_fn(items: list[int]) -> list[Any]:
            kind, bid = self.plan(items)
            raise_fault(kind, bid)
            if kind == "slow":
                time.sleep(self.sleep_s)
            elif kind == "reentrant":
                start = time.monotonic()
                try:
                    self.reentry(items[0])
                finally:  # it must fail at once, not wait for this batch
                    assert time.monotonic() - start < 5.0
                raise AssertionError("a re-entrant call returned")
            return self.results(kind, bid, items)

        return faulty_batch_fn

    def async_fn(self, proc_of: Any) -> Any:
        async def faulty_async_fn(items: list[int]) -> list[Any]:
            kind, bid = self.plan(items)
            await asyncio.sleep(0)
            raise_fault(kind, bid)
            if kind == "slow":
                await asyncio.sleep(self.sleep_s)
            elif kind == "cancel":
                raise asyncio.CancelledError(f"batch {bid}")
            elif kind == "reentrant":
                await asyncio.wait_for(proc_of()(items[0]), 5.0)  # fails at once, or times out
                raise AssertionError("a re-entrant call returned")
            return self.results(kind, bid, items)

        return faulty_async_fn

    def check(self, items: Any, outcome: Any, thread_caller: bool) -> None:
        """``outcome`` (a result, or the exception raised) is the one the
        fates of this call's own items allow, and nothing else."""
        single = not isinstance(items, list)
        xs = [items] if single else items
        assert all(x in self.fate for x in xs), f"{outcome!r} for items that never reached the function"
        failed = [x for x in xs if self.fate[x][0] not in ("ok", "slow")]
        if not failed:
            assert outcome == (~xs[0] if single else [~x for x in xs]), f"call {items} got {outcome!r}"
            return
        assert isinstance(outcome, BaseException), f"call {items} should have failed; got {outcome!r}"
        first = self.fate[failed[0]]  # a call raises the error of its earliest failed item
        kind = first[0]
        if kind == "item":
            assert type(outcome) is ItemFault and str(outcome) == f"item {failed[0]}", repr(outcome)
        elif kind == "raise":
            assert type(outcome) is BatchFault and str(outcome) == f"batch {first[1]}", repr(outcome)
        elif kind in ("keyboard", "exit", "cancel"):
            expected = {"keyboard": KeyboardInterrupt, "exit": SystemExit, "cancel": asyncio.CancelledError}[kind]
            if not thread_caller:  # asyncio callers get it wrapped
                assert type(outcome) is RuntimeError, repr(outcome)
                assert f"the batch function raised {expected.__name__}" in str(outcome)
                outcome = outcome.__cause__
            assert type(outcome) is expected and str(outcome) == f"batch {first[1]}", repr(outcome)
        elif kind in ("short", "long"):
            returned = first[2] - 1 if kind == "short" else first[2] + 1
            assert type(outcome) is ValueError, repr(outcome)
            assert f"returned {returned} results for a batch of {first[2]} items" in str(outcome)
        elif kind == "reentrant":
            assert type(outcome) is RuntimeError and REENTRY in str(outcome), repr(outcome)
        else:
            raise AssertionError(f"unknown fate {first}")


def call_plan(seed: int, n: int, base: int = 0) -> list[Any]:
    """n calls: 60% single items, the rest lists of 1..40 (often split over batches)."""
    rng = random.Random(seed)
    calls: list[Any] = []
    for i in range(base, base + n):
        if rng.random() < 0.6:
            calls.append(i * STRIDE)
        else:
            calls.append([i * STRIDE + j for j in range(rng.randint(1, 40))])
    return calls


def outcome_of(future: Any) -> Any:
    """A concurrent Future's result, or the exception it holds; fails if the
    call is still not done after BOUND seconds (a hang)."""
    try:
        error = future.exception(BOUND)
    except concurrent.futures.TimeoutError as e:  # not done
        raise AssertionError("a caller hung") from e
    return future.result() if error is None else error


def bounded(fn: Any, *args: Any, limit: float = TIMEOUT) -> Any:
    """``fn(*args)`` on a daemon thread: its result, or the exception it
    raised; fails the test (instead of hanging it) after ``limit`` seconds."""
    box: list[Any] = []

    def body() -> None:
        try:
            box.append(fn(*args))
        except BaseException as e:  # noqa: BLE001 - handed back
            box.append(e)

    t = threading.Thread(target=body, daemon=True)
    t.start()
    t.join(limit)
    if t.is_alive():
        pytest.fail(f"{getattr(fn, '__name__', fn)}{args} hung")
    return box[0]


@pytest.mark.parametrize("workers", [{"num_workers": 2}, {"prefetch": True}], ids=["2-workers", "prefetch"])
@pytest.mark.parametrize("submit", THREAD_DRIVER_FRONT_ENDS, indirect=True)
def test_random_fault_mix_with_many_concurrent_callers(submit, workers: dict[str, Any]) -> None:
    """Thread callers, asyncio callers (acall) and aio callers of one plain
    batch function run by 2 worker threads (2 workers, or one and the one
    that forms the next batch: docs/semantics.md, 15), under a random mix of
    faults (an async def function: the next test)."""
    faulty = Faulty(seed=11, timeout_ms=2)
    proc = submit.make(faulty.sync_fn(), batch_size=16, timeout_ms=2, **workers)
    if submit.name == "aio":
        faulty.reentry = lambda x: asyncio.run(proc(x))
    else:
        faulty.reentry = proc
    calls = call_plan(seed=5, n=CALLS)
    try:
        futures = [submit(proc, c) for c in calls]
        for c, f in zip(calls, futures):
            faulty.check(c, outcome_of(f), thread_caller=submit.name == "thread")
        assert len(worker_threads("faulty_batch_fn")) == 2  # no worker died
        faulty.enabled = False
        assert submit(proc, [-1, -2, -3]).result(TIMEOUT) == [~-1, ~-2, ~-3]  # later calls work
        stats = proc.stats
        assert stats.total_processed == faulty.seen
        assert stats.failed_batches == faulty.failed_batches > 0
        assert stats.queue_size == 0
        kinds = {f[0] for f in faulty.fate.values()}
        assert kinds == {"ok", "slow", "item", *BATCH_FAILURES} - {"cancel"}, kinds  # every fault was injected
    finally:
        proc.shutdown(wait=False)  # after a failure: frees queued callers, so teardown can end
    proc.shutdown()
    assert not worker_threads("faulty_batch_fn")


def test_random_fault_mix_async_batch_function_on_two_loops() -> None:
    """The same mix for an ``async def`` batch function (run on the callers'
    loops, 2 batches at once per loop), plus CancelledError raised by it."""
    faulty = Faulty(seed=12, timeout_ms=2, faults={**FAULTS, "cancel": 3})
    proc: Any = None
    faulty_async_fn = faulty.async_fn(lambda: proc)
    proc = aio.AsyncBatchProcessor(faulty_async_fn, batch_size=16, timeout_ms=2, num_workers=2)
    loops = [_LoopThread(), _LoopThread()]

    async def one(c: Any) -> Any:
        try:
            return await proc(c)
        except BaseException as e:  # noqa: BLE001 - the outcome under test
            return e

    try:
        calls = call_plan(seed=6, n=CALLS)
        futures = [loops[i % 2].submit(one(c)) for i, c in enumerate(calls)]
        for c, f in zip(calls, futures):
            faulty.check(c, f.result(BOUND), thread_caller=False)
        faulty.enabled = False
        for k, lt in enumerate(loops):  # each loop's driver survived
            xs = [-1 - 10 * k, -2 - 10 * k]
            assert lt.submit(proc(xs)).result(TIMEOUT) == [~x for x in xs]
    finally:
        for lt in loops:
            lt.close()
    stats = proc.stats
    assert stats.total_processed == faulty.seen
    assert stats.failed_batches == faulty.failed_batches > 0
    assert stats.queue_size == 0
    kinds = {f[0] for f in faulty.fate.values()}
    assert kinds == {"ok", "slow", "item", *BATCH_FAILURES}, kinds
    proc.shutdown()


def test_keyboard_interrupt_and_system_exit_in_an_async_batch_function_do_not_stop_the_loop() -> None:
    """A plain function's are covered in test_semantics; an ``async def``
    one's run on the caller's loop, and raised from its task they would stop
    that loop (asyncio.run would raise them)."""
    raised = iter([KeyboardInterrupt("stop"), SystemExit("bye")])

    async def fn(items: list[int]) -> list[int]:
        exc = next(raised, None)
        if exc is not None:
            raise exc
        return items

    proc = aio.AsyncBatchProcessor(fn, batch_size=1, timeout_ms=0)

    async def main() -> None:
        for exc in (KeyboardInterrupt, SystemExit):
            with pytest.raises(RuntimeError, match=f"the batch function raised {exc.__name__}") as info:
                await proc(1)
            assert type(info.value.__cause__) is exc
        assert await proc(2) == 2  # same loop, still running

    try:
        asyncio.run(asyncio.wait_for(main(), TIMEOUT))
    except (KeyboardInterrupt, SystemExit) as e:  # not pytest's own Ctrl-C: the function's
        pytest.fail(f"the batch function's {e!r} stopped the callers' event loop")
    proc.shutdown()


# ---- re-entrant calls ----


@pytest.mark.parametrize("num_workers", [1, 2])
@pytest.mark.parametrize("front", [*FRONT_ENDS, "aio-async-child-task"])
def test_reentrant_call_fails_fast_and_other_processors_still_work(front: str, num_workers: int) -> None:
    """A batch function that calls its own processor would wait for the batch
    that makes the call: with one worker, forever. It gets a RuntimeError at
    once instead; the worker survives; calling *another* processor from a
    batch function (a pipeline) works."""
    other = BatchProcessor(lambda xs: [x * 10 for x in xs], timeout_ms=0)
    other_async = aio.AsyncBatchProcessor(lambda xs: [x * 10 for x in xs], timeout_ms=0)
    procs: dict[str, Any] = {}
    detached: list[Any] = []

    if front.startswith("aio-async"):

        async def fn(items: list[int]) -> list[int]:
            if items[0] < 0:
                if front == "aio-async-child-task":  # tasks the batch starts and awaits
                    return list(await asyncio.gather(*(procs["p"](x) for x in items)))
                return await procs["p"](items)
            if items[0] == 0:  # a task left behind calls once this batch is over: allowed
                done = asyncio.Event()

                async def later() -> Any:
                    await done.wait()
                    await asyncio.sleep(0.01)
                    return await procs["p"](5)

                detached.append(asyncio.ensure_future(later()))
                done.set()
            return [*(await other_async(items))]

        proc = aio.AsyncBatchProcessor(fn, timeout_ms=0, num_workers=num_workers)
    else:

        def fn(items: list[int]) -> list[int]:
            if items[0] < 0:
                if front == "thread":
                    return procs["p"](items)
                if front == "acall":
                    return asyncio.run(procs["p"].acall(items))
                return asyncio.run(procs["p"](items))
            if front == "aio":
                return asyncio.run(other_async(items))
            return other(items)

        proc = (aio.AsyncBatchProcessor if front == "aio" else BatchProcessor)(
            fn, timeout_ms=0, num_workers=num_workers
        )
    procs["p"] = proc

    def call(items: Any) -> Any:
        if isinstance(proc, BatchProcessor):
            return proc(items)
        return asyncio.run(asyncio.wait_for(proc(items), TIMEOUT))

    start = time.monotonic()
    error = bounded(call, [-1, -2])
    assert type(error) is RuntimeError, repr(error)
    assert re.search(f"batch function '[^']*fn' {REENTRY}", str(error)), str(error)
    assert time.monotonic() - start < 5.0  # at once, not after some timeout
    assert bounded(call, [1, 2]) == [10, 20]  # the worker survived; pipelines work
    if front.startswith("aio-async"):

        async def detach() -> Any:
            assert await proc([0]) == [0]
            return await detached[0]

        assert asyncio.run(asyncio.wait_for(detach(), TIMEOUT)) == 50
    for p in (proc, other, other_async):
        p.shutdown()


# ---- shutdown under load ----


def _check_shutdown_outcomes(outcomes: list[tuple[Any, Any]]) -> tuple[int, int]:
    """Each outcome is the caller's own result or a ShutdownError; returns
    (results, shutdown errors)."""
    ok = failed = 0
    for items, got in outcomes:
        if isinstance(got, ShutdownError):
            failed += 1
        else:
            assert got == ([~x for x in items] if isinstance(items, list) else ~items), (items, got)
            ok += 1
    return ok, failed


@pytest.mark.parametrize("front", ["thread+acall", "aio", "aio-async"])
def test_shutdown_with_thousands_queued_and_a_batch_in_flight(front: str) -> None:
    """shutdown() while a batch runs and thousands of calls wait: the queued
    ones fail with ShutdownError at once (the running batch is still
    running), the running batch's callers get their results, every caller
    returns, and no worker thread is left."""
    entered: list[list[int]] = []
    release = threading.Event()

    def held_batch(items: list[int]) -> list[int]:  # every batch waits for release
        entered.append(items)
        assert release.wait(TIMEOUT)
        return [~x for x in items]

    async def held_async_batch(items: list[int]) -> list[int]:
        entered.append(items)
        while not release.is_set():
            await asyncio.sleep(0.001)
        return [~x for x in items]

    if front == "aio-async":
        proc: Any = aio.AsyncBatchProcessor(held_async_batch, batch_size=16, timeout_ms=1, num_workers=2)
    elif front == "aio":
        proc = aio.AsyncBatchProcessor(held_batch, batch_size=16, timeout_ms=1, num_workers=2)
    else:
        proc = BatchProcessor(held_batch, batch_size=16, timeout_ms=1, num_workers=2)
    acall = proc.acall if isinstance(proc, BatchProcessor) else proc
    loop_thread = _LoopThread()
    n_tasks = 20_000 if SOAK else 3_000
    thread_outcomes: list[tuple[Any, Any]] = []

    async def one(items: Any) -> tuple[Any, Any]:
        try:
            return items, await acall(items)
        except ShutdownError as e:
            return items, e

    def thread_caller(k: int) -> None:
        items: Any = [k * STRIDE + j for j in range(k % 40 + 1)] if k % 2 else k * STRIDE
        try:
            thread_outcomes.append((items, proc(items)))
        except ShutdownError as e:
            thread_outcomes.append((items, e))

    try:
        in_flight = [loop_thread.submit(one([-1, -2]))]
        wait_until(lambda: len(entered) == 1, "the first batch to run")
        in_flight.append(loop_thread.submit(one([-3, -4])))
        wait_until(lambda: len(entered) == 2, "both workers busy")
        calls = call_plan(seed=9, n=n_tasks, base=1000)
        futures = [loop_thread.submit(one(c)) for c in calls]
        threads = []
        if isinstance(proc, BatchProcessor):  # blocking callers too
            threads = [threading.Thread(target=thread_caller, args=(k,)) for k in range(1, 129)]
            for t in threads:
                t.start()
        queued_items = sum(len(c) if isinstance(c, list) else 1 for c in calls)
        queued_items += sum(k % 40 + 1 if k % 2 else 1 for k in range(1, 1 + len(threads)))
        wait_until(lambda: proc.stats.queue_size == queued_items, f"{queued_items} items queued")

        stopper = threading.Thread(target=proc.shutdown)  # waits for the running batch
        stopper.start()
        # the queued ones fail while the batch is still running
        outcomes = [f.result(TIMEOUT) for f in futures]
        for t in threads:
            t.join(BOUND)
            assert not t.is_alive(), "a blocked caller hung"
        ok, failed = _check_shutdown_outcomes(outcomes + thread_outcomes)
        assert (ok, failed) == (0, len(calls) + len(threads))
        assert not any(f.done() for f in in_flight)
        release.set()
        stopper.join(BOUND)
        assert not stopper.is_alive(), "shutdown hung"
        # the running batches finished, and nothing else ran
        assert [f.result(BOUND) for f in in_flight] == [([-1, -2], [~-1, ~-2]), ([-3, -4], [~-3, ~-4])]
        assert entered == [[-1, -2], [-3, -4]]
        with pytest.raises(ShutdownError, match="has been shut down"):
            loop_thread.submit(acall(1)).result(TIMEOUT)
    finally:
        release.set()
        loop_thread.close()
    assert not worker_threads("held_batch"), "a worker thread outlived shutdown()"
    assert proc.stats.queue_size == 0


def test_shutdown_at_random_moments_of_continuous_load() -> None:
    """64 threads and 2 event loops call nonstop; shutdown() comes at a
    random moment (before, during or between batches): every caller stops
    within a bound, with its own results up to then and a ShutdownError
    after; every item ran at most once; no worker thread is left."""
    for seed in range(6 if SOAK else 3):
        rng = random.Random(seed)
        seen: list[int] = []

        def load_batch_fn(items: list[int]) -> list[int]:
            seen.extend(items)
            time.sleep(rng.choice([0, 0, 0.0005, 0.002]))
            return [~x for x in items]

        proc = BatchProcessor(load_batch_fn, batch_size=16, timeout_ms=1, num_workers=2)
        outcomes: list[tuple[Any, Any]] = []
        loops = [_LoopThread(), _LoopThread()]

        def thread_caller(k: int) -> None:
            r = random.Random(k)
            for i in itertools.count():
                base = (k * 100_000 + i) * STRIDE
                items: Any = [base + j for j in range(r.randint(1, 40))] if r.random() < 0.4 else base
                try:
                    outcomes.append((items, proc(items)))
                except ShutdownError as e:
                    outcomes.append((items, e))
                    return

        async def loop_caller(k: int) -> None:
            async def one(i: int) -> None:
                base = (k * 100_000 + i) * STRIDE
                items: Any = [base + 1, base + 2] if i % 3 == 0 else base
                try:
                    outcomes.append((items, await proc.acall(items)))
                except ShutdownError as e:
                    outcomes.append((items, e))

            await asyncio.gather(*(one(i) for i in range(3_000)))

        threads = [threading.Thread(target=thread_caller, args=(k,)) for k in range(64)]
        for t in threads:
            t.start()
        loop_futures = [lt.submit(loop_caller(100 + i)) for i, lt in enumerate(loops)]
        time.sleep(rng.uniform(0.05, 0.3))
        proc.shutdown()
        try:
            for t in threads:
                t.join(BOUND)
                assert not t.is_alive(), "a caller hung after shutdown()"
            for f in loop_futures:
                f.result(BOUND)
        finally:
            for lt in loops:
                lt.close()
        ok, failed = _check_shutdown_outcomes(outcomes)
        print(f"seed {seed}: {ok} calls done, {failed} refused or drained")
        assert ok > 0 and failed >= 64
        assert len(seen) == len(set(seen))
        delivered = sum(len(i) if isinstance(i, list) else 1 for i, got in outcomes if not isinstance(got, ShutdownError))
        assert delivered <= len(seen) == proc.stats.total_processed
        assert proc.stats.queue_size == 0
        assert not worker_threads("load_batch_fn")


# ---- interpreter exit ----


def test_interpreter_exits_with_queued_work_everywhere_and_a_batch_that_never_returns() -> None:
    """test_lifecycle covers an idle and a busy processor; here: thousands of
    queued calls from daemon threads and from event loops in daemon threads,
    thread and aio processors with 2 workers each, one of them stuck for good
    in its batch function, and an async processor with a batch in flight."""
    code = """
        import asyncio, threading, time
        import batched
        from batched import aio

        stuck = threading.Event()

        @batched.dynamically(batch_size=4, timeout_ms=0, num_workers=2)
        def never_returns(xs):
            stuck.wait()  # never set
            return xs

        @aio.dynamically(batch_size=4, timeout_ms=0, num_workers=2)
        def slow_sync(xs):
            time.sleep(0.05)
            return xs

        @aio.dynamically(batch_size=4, timeout_ms=0)
        async def slow_async(xs):
            await asyncio.sleep(3600)
            return xs

        for k in range(100):
            threading.Thread(target=never_returns, args=([k] * 10,), daemon=True).start()

        def loop_main():
            async def main():
                await asyncio.gather(*(slow_sync(i) for i in range(2000)),
                                     *(slow_async(i) for i in range(2000)))
            asyncio.run(main())

        for _ in range(2):
            threading.Thread(target=loop_main, daemon=True).start()
        while never_returns.stats.queue_size < 900 or slow_sync.stats.queue_size < 1000:
            time.sleep(0.01)
        print("exiting", flush=True)
    """
    start = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "exiting"
    assert "Fatal Python error" not in out.stderr
    assert time.monotonic() - start < 30

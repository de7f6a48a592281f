"""Leaks: nothing grows with the number of calls, and every Python object the
C++ core held on a caller's behalf is freed once the call is over.

Volume tests run N calls through a front end and compare, at 10% and at 100%
of the run (after gc.collect(), all callers idle), the process RSS
(/proc/self/statm) and tracemalloc's total of traced Python memory; a sentinel
input and a sentinel result, passed many times, must end with the refcounts
they started with.

Bounds. By 10% everything that is allocated once has been: worker threads,
caller threads and their stacks, the scheduler's buffers, interned ints,
pymalloc arenas, the stats histograms (fixed size). What a leak of one call
costs: its record (_Call with a tuple of inputs and a list of results: well
over 100 bytes of Python memory), its C++ Completion (a mutex and a condition
variable, ~100 bytes of malloc), or one input or result reference. Over the
90% of the run between the two samples (>= 18,000 calls even in the smallest
run below) a leak of one such Python object per call, or even one per 20
calls, is over 90 KiB: above TRACED_BOUND (64 KiB). A leaked Completion costs
~110 B of RSS per blocking call (measured: 20 MB over the 180,000 calls of the
threaded run), five times RSS_BOUND (4 MiB). The bounds leave room for noise
only: with callers parked at the same point for both samples tracemalloc
moves by a few KiB (free lists, frames); RSS by up to ~1 MiB (glibc's
per-thread arenas), and not in proportion to the number of calls.

BATCHED_SOAK=1 runs the issue's full 2,000,000 calls through batched.dynamically
and 10x more through the others.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys
import threading
import tracemalloc
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

import pytest
from conftest import TIMEOUT, Gate, queued, wait_until

import batched
from batched import ShutdownError

SOAK = os.environ.get("BATCHED_SOAK") == "1"

TRACED_BOUND = 64 * 1024  # bytes of Python memory between 10% and 100%
RSS_BOUND = 4 * 1024 * 1024  # bytes of resident memory between 10% and 100%
PAGE = os.sysconf("SC_PAGE_SIZE")


@pytest.fixture(autouse=True)
def _logs_go_out_not_into_memory(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Failed batches are logged with their exception. pytest's log capture
    keeps every record (and so the exception's frames and the items they
    refer to) until the test ends; a real handler writes records out and
    drops them. Log through one of those here, on a logger pytest does not
    know of, so the logging path is measured too."""
    import batched._log

    with open(os.devnull, "w") as sink:
        isolated = logging.Logger("batched")  # not in logging's registry: pytest attaches nothing
        isolated.addHandler(logging.StreamHandler(sink))
        monkeypatch.setattr(batched._log, "_guarded", batched._log._Guarded(isolated))
        yield


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class Sample:
    def __init__(self) -> None:
        gc.collect()
        self.rss = rss()
        self.traced = tracemalloc.get_traced_memory()[0]


class Growth:
    """Samples memory at 10% and at 100% of a run; checks the bounds."""

    def __init__(self) -> None:
        self.at_10: Sample | None = None

    def __enter__(self) -> Growth:
        tracemalloc.start()
        return self

    def mark_10(self) -> None:
        self.at_10 = Sample()

    def check(self, what: str, calls_after_10: int) -> None:
        end = Sample()
        assert self.at_10 is not None
        traced = end.traced - self.at_10.traced
        grown = end.rss - self.at_10.rss
        print(f"{what}: over {calls_after_10} calls, traced {traced:+d} B, RSS {grown:+d} B")
        assert traced < TRACED_BOUND, (
            f"{what}: Python memory grew by {traced} bytes over {calls_after_10} calls "
            f"({traced / calls_after_10:.1f} B/call)")
        assert grown < RSS_BOUND, (
            f"{what}: RSS grew by {grown} bytes over {calls_after_10} calls ({grown / calls_after_10:.1f} B/call)")

    def __exit__(self, *exc: object) -> None:
        tracemalloc.stop()


class Sentinels:
    """An input passed many times and the result returned for it: their
    refcounts must come back to where they started. ``base()`` once the
    test's own references (locals, closures) are in place; ``check()`` at
    the end."""

    def __init__(self) -> None:
        self.item = object()
        self.result = object()

    def counts(self) -> tuple[int, int]:
        gc.collect()
        return sys.getrefcount(self.item), sys.getrefcount(self.result)

    def base(self) -> None:
        self._base = self.counts()

    def check(self) -> None:
        now = self.counts()
        assert now == self._base, f"refcounts of (input, result) went from {self._base} to {now}"


# ---- volume: threaded callers ----


def run_callers(threads: int, per: int, call: Callable[[int], str | None], what: str) -> None:
    """``threads`` threads each make ``per`` calls, ``call(i)`` for i in
    range(per), which returns an error message or None. Memory is sampled
    with every caller parked (at a barrier) at 10% and at 100%, so the same
    threads, frames and locals are alive both times."""
    parked = threading.Barrier(threads + 1)
    resume = threading.Barrier(threads + 1)
    errors: list[str] = []

    def caller() -> None:
        try:
            for i in range(per):
                if i == per // 10:
                    parked.wait(TIMEOUT)
                    resume.wait(TIMEOUT)
                err = call(i)
                if err is not None:
                    errors.append(err)
            parked.wait(TIMEOUT)
            resume.wait(TIMEOUT)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))
            parked.abort()
            resume.abort()

    # daemon threads: a caller that never returns fails the test, and cannot hang the run at exit
    ts = [threading.Thread(target=caller, name=f"leak-caller-{k}", daemon=True) for k in range(threads)]
    with Growth() as g:
        for t in ts:
            t.start()
        try:
            parked.wait(TIMEOUT)
            g.mark_10()
            resume.wait(TIMEOUT)
            parked.wait(TIMEOUT * 4)
            assert not errors, errors[:5]
            g.check(what, threads * (per - per // 10))
        except BaseException:
            parked.abort()
            resume.abort()
            raise
        else:
            resume.wait(TIMEOUT)
        finally:
            for t in ts:
                t.join(TIMEOUT)
    assert not errors, errors[:5]


def test_threaded_calls_do_not_grow_memory_or_refcounts() -> None:
    """batched.dynamically: single and list calls from 64 threads."""
    calls = 2_000_000 if SOAK else 200_000
    threads = 64
    per = calls // threads
    s = Sentinels()
    item, result = s.item, s.result

    @batched.dynamically(batch_size=32, timeout_ms=1)  # 64 callers keep batches full
    def echo(xs: list[Any]) -> list[Any]:
        return [result if x is item else x + 1 for x in xs]

    def call(i: int) -> str | None:
        if i % 4 == 0:  # a list call, every other one with the sentinel in it
            xs = [item, i, item] if i % 8 == 0 else [i, i + 1]
            out = echo(xs)
            want = [result, i + 1, result] if i % 8 == 0 else [i + 1, i + 2]
            return None if out == want else f"{xs} -> {out}"
        if i % 4 == 1:
            return None if echo(item) is result else "sentinel"
        return None if echo(i) == i + 1 else f"{i}"

    s.base()
    run_callers(threads, per, call, "batched.dynamically")
    items = sum((3 if i % 8 == 0 else 2) if i % 4 == 0 else 1 for i in range(per)) * threads
    assert echo.stats.total_processed == items
    echo.shutdown()
    del echo
    s.check()


def test_inference_calls_do_not_grow_memory_or_refcounts() -> None:
    """batched.inference.dynamically (numpy): 16 threads, rows of varied shapes."""
    np = pytest.importorskip("numpy")
    calls = 200_000 if SOAK else 20_000
    threads = 16
    per = calls // threads
    sentinel = np.arange(6, dtype=np.int64).reshape(2, 3)  # passed by every 4th call
    rows = {n: np.full((n % 3 + 1, n % 5 + 1), n, np.int64) for n in range(15)}

    @batched.inference.dynamically(batch_size=32, timeout_ms=1, pad_tokens={"ids": -1})
    def model(features: dict[str, Any]) -> Any:
        ids = features["ids"]
        return ids[:, 0] * 10 + (ids >= 0).sum(axis=1)  # first token, row length

    def call(i: int) -> str | None:
        x = sentinel if i % 4 == 0 else rows[i % 15]
        out = model({"ids": x})
        want = x[:, 0] * 10 + x.shape[1]
        return None if out.tolist() == want.tolist() else f"{x.tolist()} -> {out.tolist()}"

    gc.collect()
    base = sys.getrefcount(sentinel)
    run_callers(threads, per, call, "batched.inference.dynamically")
    model.shutdown()
    del model
    gc.collect()
    assert sys.getrefcount(sentinel) == base


# ---- volume: batched.aio.dynamically ----


@pytest.mark.parametrize("kind", ["aio", "aio-async"])
def test_asyncio_calls_do_not_grow_memory_or_refcounts(kind: str) -> None:
    """aio with a plain function (worker threads) and with an ``async def`` one
    (the event-loop driver), many tasks at once on one loop."""
    calls = 400_000 if SOAK else 40_000
    wave = 1000  # tasks in flight at once
    s = Sentinels()
    item, result = s.item, s.result

    def body(xs: list[Any]) -> list[Any]:
        return [result if x is item else x + 1 for x in xs]

    if kind == "aio":
        fn: Callable[..., Any] = body
    else:

        async def fn(xs: list[Any]) -> list[Any]:
            await asyncio.sleep(0)
            return body(xs)

    proc = batched.aio.dynamically(fn, batch_size=64, timeout_ms=1)
    s.base()

    async def one(i: int) -> None:
        if i % 4 == 0:
            out = await proc([item, i])
            assert out[0] is result and out[1] == i + 1
        elif i % 4 == 1:
            assert await proc(item) is result
        else:
            assert await proc(i) == i + 1

    async def run(g: Growth) -> None:
        for start in range(0, calls, wave):
            if start == calls // 10:
                for _ in range(3):  # let the last wave's callbacks run: a quiet point
                    await asyncio.sleep(0)
                g.mark_10()
            await asyncio.gather(*(one(i) for i in range(start, start + wave)))
        for _ in range(3):
            await asyncio.sleep(0)
        assert proc.stats.total_processed == calls + calls // 4
        g.check(f"batched.aio.dynamically ({kind})", calls - calls // 10)

    with Growth() as g:
        asyncio.run(run(g))
    proc.shutdown()
    del proc
    s.check()


# ---- Python objects held by C++ are freed ----


class Token:
    """An item or a result that can be watched with a weak reference."""

    def __init__(self, n: int) -> None:
        self.n = n


class Watch:
    """Weak references to every Token made through it; ``all_dead`` after the test dropped its own."""

    def __init__(self) -> None:
        self.refs: list[weakref.ref[Token]] = []

    def token(self, n: int) -> Token:
        t = Token(n)
        self.refs.append(weakref.ref(t))
        return t

    def check_all_dead(self, what: str) -> None:
        gc.collect()
        alive = [r() for r in self.refs if r() is not None]
        if alive:
            holders = [type(h).__name__ for h in gc.get_referrers(alive[0]) if h is not alive]
            pytest.fail(f"{what}: {len(alive)} of {len(self.refs)} objects still alive; "
                        f"the first is held by {holders}")
        assert self.refs, "nothing was watched"


@pytest.fixture
def watch() -> Iterator[Watch]:
    yield Watch()


def outcome(fn: Callable[[], Any]) -> str:
    """Runs a call; returns what happened as a string, keeping no exception
    (an exception's traceback would keep the call's frames alive)."""
    try:
        r = fn()
    except BaseException as e:  # noqa: BLE001
        return type(e).__name__
    return "ok" if r is not None else "none"


class Callers:
    """Runs calls on daemon threads, each returning a Future. Unlike a
    ThreadPoolExecutor, a caller that never returns fails the test at exit
    from the block instead of hanging the test run."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []

    def __enter__(self) -> Callers:
        return self

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        fut: Future[Any] = Future()

        def run() -> None:
            try:
                fut.set_result(fn(*args))
            except BaseException as e:  # noqa: BLE001 - handed to the Future
                fut.set_exception(e)

        t = threading.Thread(target=run, daemon=True, name="leak-test-caller")
        t.start()
        self.threads.append(t)
        return fut

    def __exit__(self, *exc: object) -> None:
        for t in self.threads:
            t.join(TIMEOUT)
        stuck = sum(t.is_alive() for t in self.threads)
        if stuck and exc[0] is None:
            pytest.fail(f"{stuck} callers never returned")


def test_items_and_results_of_completed_calls_are_freed(watch: Watch) -> None:
    def fn(xs: list[Token]) -> list[Any]:
        # results: new Tokens, and for some items an Exception that holds the item
        return [ValueError(x) if x.n % 5 == 4 else watch.token(-x.n) for x in xs]

    proc = batched.BatchProcessor(fn, batch_size=4, timeout_ms=1)
    with Callers() as pool:
        futs = [pool.submit(outcome, lambda n=n: proc(watch.token(n))) for n in range(40)]
        futs += [pool.submit(outcome, lambda n=n: proc([watch.token(n * 10 + j) for j in range(3)]))
                 for n in range(10, 20)]
        got = [f.result(TIMEOUT) for f in futs]
    assert got.count("ValueError") > 0 and got.count("ok") > 0
    del futs, got
    watch.check_all_dead("items and results of completed calls")
    proc.shutdown()


def test_items_of_a_failed_batch_are_freed(watch: Watch) -> None:
    """The batch function raises: its traceback (whose frames hold the batch's
    items) goes to every caller; once they drop it, everything is freed."""

    def fn(xs: list[Token]) -> list[Any]:
        if any(x.n % 3 == 0 for x in xs):
            raise RuntimeError(f"batch of {len(xs)} failed")
        return [watch.token(-x.n) for x in xs]

    def wrong_length(xs: list[Token]) -> list[Any]:
        return [watch.token(-1)]  # one result for a batch of many

    for f in (fn, wrong_length):
        proc = batched.BatchProcessor(f, batch_size=8, timeout_ms=2)
        with Callers() as pool:
            futs = [pool.submit(outcome, lambda n=n: proc(watch.token(n))) for n in range(48)]
            futs += [pool.submit(outcome, lambda n=n: proc([watch.token(n), watch.token(n + 1)]))
                     for n in range(0, 20, 2)]
            got = [fut.result(TIMEOUT) for fut in futs]
        assert {"RuntimeError", "ValueError"} & set(got), got
        del futs, got
        proc.shutdown()
        del proc
    watch.check_all_dead("items and results of failed batches")


@pytest.mark.parametrize("kind", ["acall", "aio-async"])
def test_items_of_cancelled_asyncio_calls_are_freed(watch: Watch, kind: str) -> None:
    """Calls cancelled while queued (never dispatched) and while their batch
    runs (results dropped): neither their items nor their results survive."""

    async def scenario() -> None:
        release = asyncio.Event()
        running = asyncio.Event()

        if kind == "acall":
            gate = Gate(lambda xs: [watch.token(-x.n) for x in xs])
            proc: Any = batched.BatchProcessor(gate, batch_size=4, timeout_ms=1)
            call = proc.acall
        else:
            gate = None

            async def fn(xs: list[Token]) -> list[Any]:
                running.set()
                await release.wait()
                return [watch.token(-x.n) for x in xs]

            proc = batched.aio.dynamically(fn, batch_size=4, timeout_ms=1)
            call = proc

        first = asyncio.ensure_future(call([watch.token(0), watch.token(1)]))  # the batch that runs
        if gate is not None:
            await asyncio.get_running_loop().run_in_executor(None, gate.entered.wait, TIMEOUT)
        else:
            await asyncio.wait_for(running.wait(), TIMEOUT)
        waiting = [asyncio.ensure_future(call(watch.token(n))) for n in range(2, 12)]
        waiting.append(asyncio.ensure_future(call([watch.token(n) for n in range(12, 22)])))
        for _ in range(100):  # until they are queued
            await asyncio.sleep(0.001)
            if queued(proc) == 20:
                break
        assert queued(proc) == 20
        for t in waiting:
            t.cancel()
        first.cancel()  # already dispatched: its results are dropped
        await asyncio.gather(*waiting, first, return_exceptions=True)
        assert queued(proc) == 0
        if gate is not None:
            gate.open()
        release.set()
        # one more call goes through: the worker survived
        assert (await asyncio.wait_for(call(watch.token(99)), TIMEOUT)).n == -99
        proc.shutdown()

    asyncio.run(scenario())
    watch.check_all_dead(f"items of cancelled {kind} calls")


def test_items_queued_at_shutdown_are_freed(watch: Watch) -> None:
    gate = Gate(lambda xs: [watch.token(-x.n) for x in xs])
    proc = batched.BatchProcessor(gate, batch_size=4, timeout_ms=1)
    with Callers() as pool:
        running = pool.submit(outcome, lambda: proc(watch.token(0)))
        assert gate.entered.wait(TIMEOUT)
        futs = [pool.submit(outcome, lambda n=n: proc(watch.token(n))) for n in range(1, 11)]
        futs.append(pool.submit(outcome, lambda: proc([watch.token(n) for n in range(11, 31)])))
        wait_until(lambda: queued(proc) == 30, "30 items queued")
        proc.shutdown(wait=False)
        gate.open()
        assert running.result(TIMEOUT) == "ok"
        assert {f.result(TIMEOUT) for f in futs} == {ShutdownError.__name__}
        del futs, running
    # calls refused by a shut-down processor
    assert outcome(lambda: proc(watch.token(40))) == ShutdownError.__name__
    assert outcome(lambda: proc([watch.token(41), watch.token(42)])) == ShutdownError.__name__
    proc.shutdown()
    del proc, gate
    watch.check_all_dead("items queued at shutdown")


def test_items_refused_by_a_full_queue_are_freed(watch: Watch) -> None:
    gate = Gate(lambda xs: [watch.token(-x.n) for x in xs])
    proc = batched.BatchProcessor(gate, batch_size=4, timeout_ms=1, max_queue_size=3)
    with Callers() as pool:
        futs = [pool.submit(outcome, lambda: proc(watch.token(0)))]
        assert gate.entered.wait(TIMEOUT)
        futs += [pool.submit(outcome, lambda n=n: proc(watch.token(n))) for n in (1, 2, 3)]
        wait_until(lambda: queued(proc) == 3, "the queue to fill")
        assert outcome(lambda: proc(watch.token(4))) == "QueueFullError"
        assert outcome(lambda: proc([watch.token(n) for n in range(5, 10)])) == "QueueFullError"
        gate.open()
        assert [f.result(TIMEOUT) for f in futs] == ["ok"] * 4
        del futs
    proc.shutdown()
    del proc, gate
    watch.check_all_dead("items refused by a full queue")


def test_a_collected_processor_frees_what_it_held(watch: Watch) -> None:
    """A processor dropped without shutdown(): its engine, worker, and the
    items of its last batch all go."""
    proc = batched.BatchProcessor(lambda xs: [watch.token(-x.n) for x in xs], batch_size=4, timeout_ms=1)
    with Callers() as pool:
        assert all(f.result(TIMEOUT) == "ok" for f in [pool.submit(outcome, lambda n=n: proc(watch.token(n)))
                                                       for n in range(12)])
    engine = weakref.ref(proc._engine)
    del proc
    wait_until(lambda: (gc.collect(), engine() is None)[1], "the engine to be collected")
    watch.check_all_dead("a collected processor")

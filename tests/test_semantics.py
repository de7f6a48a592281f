"""The batching contract (docs/semantics.md), section by section, for every
front end (conftest.submit: threads, BatchProcessor.acall, batched.aio with a
plain function, batched.aio with an async def one)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from conftest import ASYNCIO_FRONT_ENDS, TIMEOUT, Gate, queued, wait_until, worker_threads

import batched
from batched import BatchProcessor, QueueFullError, ShutdownError

LONG_MS = 60_000.0  # a timeout that never fires within a test


def identity(items: list[Any]) -> list[Any]:
    return list(items)


# 1. When a batch leaves


def test_full_batch_leaves_without_waiting_for_the_timeout(submit) -> None:
    proc = submit.make(identity, batch_size=4, timeout_ms=LONG_MS)
    futures = [submit(proc, i) for i in range(4)]
    assert [f.result(TIMEOUT) for f in futures] == [0, 1, 2, 3]
    assert proc.stats.batches_by_reason == {"full": 1, "timeout": 0, "budget": 0, "drain": 0, "deadline": 0}
    proc.shutdown()


def test_lone_item_waits_for_the_timeout(submit) -> None:
    proc = submit.make(identity, batch_size=8, timeout_ms=50)
    start = time.monotonic()
    assert submit(proc, 7).result(TIMEOUT) == 7
    assert time.monotonic() - start >= 0.049  # never less than the timeout
    assert proc.stats.batches_by_reason["timeout"] == 1
    proc.shutdown()


def test_back_to_back_lone_calls_each_wait_the_timeout(submit) -> None:
    # The caller re-submits right after its result: that item arrived after
    # the batch returned, so it is not backlog and must wait the full timeout.
    def slow_identity(items: list[int]) -> list[int]:
        time.sleep(0.002)
        return items

    proc = submit.make(slow_identity, batch_size=8, timeout_ms=20)
    for i in range(5):
        start = time.monotonic()
        assert submit(proc, i).result(TIMEOUT) == i
        assert time.monotonic() - start >= 0.0199
    assert proc.stats.batches_by_reason["drain"] == 0
    proc.shutdown()


def test_zero_timeout_sends_at_once(submit) -> None:
    proc = submit.make(identity, batch_size=8, timeout_ms=0)
    assert [submit(proc, i).result(TIMEOUT) for i in range(5)] == list(range(5))
    assert proc.stats.total_batches == 5
    proc.shutdown()


def test_batches_never_exceed_batch_size(submit) -> None:
    sizes: list[int] = []

    def fn(items: list[int]) -> list[int]:
        sizes.append(len(items))
        return items

    proc = submit.make(fn, batch_size=5, timeout_ms=1)
    futures = [submit(proc, list(range(i))) for i in range(1, 30)]
    for i, f in enumerate(futures, start=1):
        assert f.result(TIMEOUT) == list(range(i))
    assert max(sizes) <= 5
    assert sum(sizes) == sum(range(1, 30))
    proc.shutdown()


# 1. Items that waited during a batch leave as soon as it returns


def test_backlog_leaves_when_the_worker_returns(submit) -> None:
    gate = Gate(identity)
    proc = submit.make(gate, batch_size=64, timeout_ms=0)
    first = submit(proc, "first")
    assert gate.entered.wait(TIMEOUT)
    # timeout_ms=0 dispatched "first"; the rest queue behind the busy worker.
    later = []
    for i in range(10):  # queued one by one, so the batch order is known
        later.append(submit(proc, i))
        wait_until(lambda n=i + 1: queued(proc) == n, f"{i + 1} items queued")
    gate.open()
    assert first.result(TIMEOUT) == "first"
    assert [f.result(TIMEOUT) for f in later] == list(range(10))
    assert gate.batches[1] == list(range(10))  # one batch, formed at once
    proc.shutdown()


def test_backlog_does_not_wait_for_a_long_timeout(submit) -> None:
    gate = Gate(identity)
    proc = submit.make(gate, batch_size=64, timeout_ms=LONG_MS)
    futures = [submit(proc, i) for i in range(64)]  # a full batch: dispatched at once
    assert gate.entered.wait(TIMEOUT)
    late = submit(proc, "late")
    wait_until(lambda: queued(proc) == 1, "one item queued")
    gate.open()
    assert [f.result(TIMEOUT) for f in futures] == list(range(64))
    assert late.result(TIMEOUT) == "late"  # would take a minute if it waited the timeout
    assert proc.stats.batches_by_reason["drain"] == 1
    proc.shutdown()


# 2, 4. Large calls split over batches, reassembled in their order


def test_large_call_split_over_batches_and_reassembled(submit) -> None:
    proc = submit.make(lambda xs: [x * 3 for x in xs], batch_size=7, timeout_ms=0)
    items = list(range(1000))
    assert submit(proc, items).result(TIMEOUT) == [x * 3 for x in items]
    assert proc.stats.total_processed == 1000
    assert max(proc.stats.batch_size_histogram) == 7
    proc.shutdown()


# 3. Which items go first


def _queue_behind_gate(submit, proc, gate, calls):
    first = submit(proc, "gate")
    assert gate.entered.wait(TIMEOUT)
    futures = []
    expected = 0
    for call in calls:
        futures.append(submit(proc, call))
        expected += len(call) if isinstance(call, list) else 1
        wait_until(lambda n=expected: queued(proc) == n, f"{expected} items queued")
    gate.open()
    assert first.result(TIMEOUT) == "gate"
    return [f.result(TIMEOUT) for f in futures]


def test_small_calls_go_before_bulk_calls(submit) -> None:
    gate = Gate(identity)
    proc = submit.make(gate, batch_size=4, timeout_ms=0, small_batch_threshold=2)
    bulk = [f"bulk{i}" for i in range(6)]
    results = _queue_behind_gate(submit, proc, gate, [bulk, ["s1"], ["s2", "s3"]])
    assert results == [bulk, ["s1"], ["s2", "s3"]]
    order = [x for batch in gate.batches[1:] for x in batch]
    assert order == ["s1", "s2", "s3", *bulk]
    proc.shutdown()


def test_arrival_order_when_asked_for(submit) -> None:
    from batched.types import PriorityStrategy

    gate = Gate(identity)
    proc = submit.make(gate, batch_size=4, timeout_ms=0, small_batch_threshold=2,
                       priority_strategy=PriorityStrategy.NONE)
    bulk = [f"bulk{i}" for i in range(6)]
    _queue_behind_gate(submit, proc, gate, [bulk, ["s1"]])
    assert [x for batch in gate.batches[1:] for x in batch] == [*bulk, "s1"]
    proc.shutdown()


class Stepper:
    """A batch function whose batches each wait for ``step()``: the test
    decides when each batch returns, so the order of batches is exact."""

    def __init__(self) -> None:
        self.batches: list[list[Any]] = []
        self._entered = threading.Semaphore(0)
        self._go = threading.Semaphore(0)

    def __call__(self, items: list[Any]) -> list[Any]:
        self.batches.append(list(items))
        self._entered.release()
        if not self._go.acquire(timeout=TIMEOUT):
            raise RuntimeError("never stepped")
        return list(items)

    def wait_entered(self, n: int) -> None:
        """Waits until ``n`` more batches have started."""
        for _ in range(n):
            assert self._entered.acquire(timeout=TIMEOUT), "no batch started"

    def step(self) -> None:
        self._go.release()


def test_small_call_goes_first_however_long_bulk_work_has_run(submit) -> None:
    """48 bulk items in batches of 4: the bulk call is worked on (3 batches)
    for longer than aging_ms, then a one-item call arrives. It is in the next
    batch formed, not after the 9 bulk batches left (docs/semantics.md, 3)."""
    fn = Stepper()
    proc = submit.make(fn, batch_size=4, timeout_ms=2000, small_batch_threshold=2, aging_ms=100)
    bulk = list(range(48))
    bulk_call = submit(proc, bulk)
    fn.wait_entered(1)
    for _ in range(2):
        fn.step()
        fn.wait_entered(1)
    time.sleep(0.15)  # longer than aging_ms, with the bulk call queued all along
    small = submit(proc, "small")
    wait_until(lambda: queued(proc) == 48 - 12 + 1, "the small call queued")
    fn.step()
    fn.wait_entered(1)
    assert fn.batches[3][0] == "small", fn.batches
    for _ in range(10):  # batches 3 to 12 (the small call, then the 36 bulk items left)
        fn.step()
    assert small.result(TIMEOUT) == "small"
    assert bulk_call.result(TIMEOUT) == bulk
    proc.shutdown()


def test_small_call_goes_first_however_long_bulk_work_has_waited(submit) -> None:
    """A 20-item call waits 150 ms behind a busy worker (aging_ms=100, timeout
    200 ms), then a one-item call arrives: it goes in the first batch."""
    gate = Gate(identity)
    proc = submit.make(gate, batch_size=4, timeout_ms=200, small_batch_threshold=2, aging_ms=100)
    first = submit(proc, "busy")
    assert gate.entered.wait(TIMEOUT)
    bulk = submit(proc, list(range(20)))
    wait_until(lambda: queued(proc) == 20, "the bulk call queued")
    time.sleep(0.15)
    small = submit(proc, "small")
    wait_until(lambda: queued(proc) == 21, "the small call queued")
    gate.open()
    assert small.result(TIMEOUT) == "small" and bulk.result(TIMEOUT) == list(range(20))
    assert first.result(TIMEOUT) == "busy"
    assert gate.batches[1] == ["small", 0, 1, 2]
    proc.shutdown()


def test_small_call_arriving_during_real_bulk_work_is_served_next(submit) -> None:
    """The scenario of a new user, with real time: 40 ms per batch, 48 bulk
    items in batches of 4, a one-item call 100 ms in. It leaves in the batch
    formed right after it arrives, or the one after that if one was being
    formed at that instant; never after the bulk call (loose timing)."""
    started: list[tuple[float, list[Any]]] = []

    def slow(items: list[Any]) -> list[Any]:
        started.append((time.monotonic(), list(items)))
        time.sleep(0.04)
        return list(items)

    proc = submit.make(slow, batch_size=4, timeout_ms=2000, small_batch_threshold=2)
    bulk = submit(proc, list(range(48)))
    wait_until(lambda: len(started) >= 1, "the first bulk batch")
    time.sleep(0.1)
    arrived = time.monotonic()
    small = submit(proc, "small")
    assert small.result(TIMEOUT) == "small"
    assert bulk.result(TIMEOUT) == list(range(48))
    which = next(i for i, (_, batch) in enumerate(started) if "small" in batch)
    first_after = next(i for i, (t, _) in enumerate(started) if t >= arrived)
    assert which <= first_after + 1, [b for _, b in started]
    assert which < len(started) - 1  # not after the bulk work
    proc.shutdown()


def test_a_passed_over_call_gets_the_next_batch(submit) -> None:
    """aging_ms=0: a bulk call that one batch passed over goes first in the
    next; the small calls that batch passed over go first in the one after."""
    gate = Gate(identity)
    proc = submit.make(gate, batch_size=2, timeout_ms=0, small_batch_threshold=1, aging_ms=0)
    bulk = [f"bulk{i}" for i in range(4)]
    _queue_behind_gate(submit, proc, gate, [bulk, ["s1"], ["s2"], ["s3"], ["s4"]])
    assert gate.batches[1:] == [["s1", "s2"], ["bulk0", "bulk1"], ["s3", "s4"], ["bulk2", "bulk3"]]
    proc.shutdown()


def test_shorter_items_first_across_calls(submit) -> None:
    """PriorityStrategy.LENGTH sorts queued items by length, whichever call
    they came from, so batches hold items of similar length; every caller
    still gets its own results in its own order."""
    from batched.types import PriorityStrategy

    gate = Gate(lambda xs: [x.upper() for x in xs])
    proc = submit.make(gate, batch_size=3, timeout_ms=0, small_batch_threshold=1,
                       priority_strategy=PriorityStrategy.LENGTH)
    a = ["a" * 9, "a", "a" * 7]
    b = ["b" * 3, "b", "b" * 8]
    first = submit(proc, "gate")
    assert gate.entered.wait(TIMEOUT)
    fa = submit(proc, a)
    wait_until(lambda: queued(proc) == 3, "a queued")
    fb = submit(proc, b)
    wait_until(lambda: queued(proc) == 6, "b queued")
    gate.open()
    assert first.result(TIMEOUT) == "GATE"
    assert fa.result(TIMEOUT) == [x.upper() for x in a]
    assert fb.result(TIMEOUT) == [x.upper() for x in b]
    assert [[len(x) for x in batch] for batch in gate.batches[1:]] == [[1, 1, 3], [7, 8, 9]]
    proc.shutdown()


# 5. When the batch function fails


def test_exception_reaches_every_caller_in_the_batch_and_only_them(submit) -> None:
    def fn(items: list[int]) -> list[int]:
        if -1 in items:
            raise KeyError(f"bad batch {sorted(items)}")
        return items

    proc = submit.make(fn, batch_size=3, timeout_ms=LONG_MS)
    bad = [submit(proc, x) for x in (1, -1, 2)]  # one full batch
    for f in bad:
        with pytest.raises(KeyError, match=r"bad batch \[-1, 1, 2\]"):
            f.result(TIMEOUT)
    good = [submit(proc, x) for x in (4, 5, 6)]
    assert [f.result(TIMEOUT) for f in good] == [4, 5, 6]  # the worker survived
    assert proc.stats.failed_batches == 1
    proc.shutdown()


def test_base_exceptions_do_not_kill_the_worker(submit) -> None:
    calls = iter([KeyboardInterrupt, SystemExit, None])

    def fn(items: list[int]) -> list[int]:
        exc = next(calls)
        if exc is not None:
            raise exc("stop")
        return items

    proc = submit.make(fn, batch_size=1, timeout_ms=0)
    for exc in (KeyboardInterrupt, SystemExit):
        # Thread callers get it as raised; asyncio would treat it as fatal to
        # the caller's loop, so there it arrives wrapped in a RuntimeError.
        with pytest.raises((exc, RuntimeError)) as info:
            submit(proc, 1).result(TIMEOUT)
        if isinstance(info.value, RuntimeError):
            assert f"the batch function raised {exc.__name__}: stop" in str(info.value)
            assert isinstance(info.value.__cause__, exc)
    assert submit(proc, 9).result(TIMEOUT) == 9
    proc.shutdown()


@pytest.mark.parametrize(
    ("returned", "error", "message"),
    [
        ([1], ValueError, r"batch function .*short.* returned 1 results for a batch of 3 items"),
        ([1, 2, 3, 4], ValueError, r"returned 4 results for a batch of 3 items"),
        (None, TypeError, r"must return a sequence of 3 results \(one per item\), got NoneType"),
        ("abc", TypeError, r"got str"),
    ],
)
def test_wrong_output_is_a_clear_error(submit, returned, error, message) -> None:
    def short(items: list[int]) -> Any:
        return returned if min(items) < 3 else items

    proc = submit.make(short, batch_size=3, timeout_ms=LONG_MS)
    futures = [submit(proc, i) for i in range(3)]
    for f in futures:
        with pytest.raises(error, match=message):
            f.result(TIMEOUT)
    assert submit(proc, [7, 8, 9]).result(TIMEOUT) == [7, 8, 9]  # the worker survived
    proc.shutdown()


def test_returned_exception_fails_only_that_item(submit) -> None:
    def fn(items: list[int]) -> list[Any]:
        return [ValueError(f"no {x}") if x < 0 else x for x in items]

    proc = submit.make(fn, batch_size=4, timeout_ms=LONG_MS)
    futures = [submit(proc, x) for x in (1, -2, 3, 4)]
    assert futures[0].result(TIMEOUT) == 1
    with pytest.raises(ValueError, match="no -2"):
        futures[1].result(TIMEOUT)
    assert [futures[2].result(TIMEOUT), futures[3].result(TIMEOUT)] == [3, 4]
    # In a list call, the first failed item's error is raised.
    with pytest.raises(ValueError, match="no -5"):
        submit(proc, [5, -5, -6, 6]).result(TIMEOUT)
    proc.shutdown()


def test_numpy_like_sequence_output_is_accepted(submit) -> None:
    class Rows:  # has __len__ and iterates, like an ndarray
        def __init__(self, xs: list[int]) -> None:
            self.xs = xs

        def __len__(self) -> int:
            return len(self.xs)

        def __iter__(self):
            return iter(self.xs)

    proc = submit.make(lambda xs: Rows([x + 1 for x in xs]), batch_size=4, timeout_ms=0)
    assert submit(proc, [1, 2, 3]).result(TIMEOUT) == [2, 3, 4]
    proc.shutdown()


def test_each_caller_gets_its_own_exception_object(submit) -> None:
    if submit.name == "remote":
        pytest.skip("a traceback does not cross processes (the server logs it); each caller's copy is unpickled anew")
    def fn(items: list[int]) -> list[int]:
        raise KeyError("whole batch")

    proc = submit.make(fn, batch_size=3, timeout_ms=LONG_MS)
    futures = [submit(proc, i) for i in range(3)]
    errors = []
    for f in futures:
        with pytest.raises(KeyError, match="whole batch") as info:
            f.result(TIMEOUT)
        errors.append(info.value)
    assert len({id(e) for e in errors}) == 3  # one object each: tracebacks do not mix
    for e in errors:
        # the traceback still leads into the batch function
        tb, names = e.__traceback__, []
        while tb is not None:
            names.append(tb.tb_frame.f_code.co_name)
            tb = tb.tb_next
        assert "fn" in names
    proc.shutdown()


# 7. Cancellation (asyncio callers)


@pytest.mark.parametrize("submit", ASYNCIO_FRONT_ENDS, indirect=True)
def test_cancelled_caller_leaves_the_queue_before_dispatch(submit) -> None:
    gate = Gate(identity)
    proc = submit.make(gate, batch_size=8, timeout_ms=0)
    running = submit(proc, "running")
    assert gate.entered.wait(TIMEOUT)
    doomed = [submit(proc, f"cancel-{i}") for i in range(5)]
    kept = submit(proc, ["keep-1", "keep-2"])
    wait_until(lambda: queued(proc) == 7, "7 items queued")
    for f in doomed:
        f.cancel()  # cancels the awaiting task on its loop
    wait_until(lambda: queued(proc) == 2, "the cancelled items out of the queue")
    gate.open()
    assert running.result(TIMEOUT) == "running"
    assert kept.result(TIMEOUT) == ["keep-1", "keep-2"]
    seen = [x for batch in gate.batches for x in batch]
    assert seen == ["running", "keep-1", "keep-2"]  # no cancelled item reached the function
    assert proc.stats.queue_size == 0 and proc.stats.cancelled_items == 5
    proc.shutdown()


@pytest.mark.parametrize("submit", ASYNCIO_FRONT_ENDS, indirect=True)
def test_cancelled_after_dispatch_drops_the_result(submit) -> None:
    gate = Gate(identity)
    proc = submit.make(gate, batch_size=8, timeout_ms=0)
    in_flight = submit(proc, "in flight")
    assert gate.entered.wait(TIMEOUT)
    in_flight.cancel()
    gate.open()
    assert submit(proc, "next").result(TIMEOUT) == "next"  # the result was dropped quietly
    assert gate.batches == [["in flight"], ["next"]]
    proc.shutdown()


# 8. Shutdown, garbage collection


def test_shutdown_fails_queued_items_and_refuses_new_calls(submit) -> None:
    gate = Gate(identity)
    proc = submit.make(gate, batch_size=2, timeout_ms=0)
    running = submit(proc, "running")
    assert gate.entered.wait(TIMEOUT)
    waiting = [submit(proc, i) for i in range(3)]
    wait_until(lambda: queued(proc) == 3, "3 items queued")
    stopper = threading.Thread(target=proc.shutdown)
    stopper.start()
    for f in waiting:
        with pytest.raises(ShutdownError, match="was shut down before these items were processed"):
            f.result(TIMEOUT)
    gate.open()
    stopper.join(TIMEOUT)
    assert not stopper.is_alive()
    assert running.result(TIMEOUT) == "running"  # a running batch finishes
    with pytest.raises(ShutdownError, match="has been shut down"):
        submit(proc, 1).result(TIMEOUT)
    proc.shutdown()  # idempotent


def test_shutdown_from_inside_the_batch_function_does_not_hang(submit) -> None:
    holder: dict[str, BatchProcessor] = {}

    def fn(items: list[int]) -> list[int]:
        holder["proc"].shutdown()
        return items

    proc = holder["proc"] = submit.make(fn, batch_size=1, timeout_ms=0)
    assert submit(proc, 3).result(TIMEOUT) == 3
    with pytest.raises(ShutdownError):
        submit(proc, 4).result(TIMEOUT)


def test_garbage_collected_processor_stops_its_workers() -> None:
    def uniquely_named_fn_gc(items: list[int]) -> list[int]:
        return items

    proc = BatchProcessor(uniquely_named_fn_gc, timeout_ms=0, num_workers=2)
    assert proc(1) == 1
    assert len(worker_threads("uniquely_named_fn_gc")) == 2
    del proc
    import gc

    gc.collect()
    wait_until(lambda: not worker_threads("uniquely_named_fn_gc"), "workers to exit")


def test_garbage_collected_instance_stops_its_method_workers() -> None:
    class Embedder:
        @batched.dynamically(timeout_ms=0)
        def embed_gc_probe(self, items: list[int]) -> list[int]:
            return items

    e = Embedder()
    assert e.embed_gc_probe([1, 2]) == [1, 2]
    assert worker_threads("embed_gc_probe")
    del e
    import gc

    gc.collect()
    wait_until(lambda: not worker_threads("embed_gc_probe"), "method workers to exit")



def test_processor_never_called_starts_no_thread() -> None:
    def never_called_probe(items: list[int]) -> list[int]:
        return items

    proc = BatchProcessor(never_called_probe)
    assert not worker_threads("never_called_probe")
    proc.shutdown()


# 9. Bounded queue


def test_full_queue_raises_at_once(submit) -> None:
    gate = Gate(identity)
    proc = submit.make(gate, batch_size=1, timeout_ms=0, max_queue_size=3)
    running = submit(proc, "running")
    assert gate.entered.wait(TIMEOUT)
    queued_calls = [submit(proc, i) for i in range(3)]
    wait_until(lambda: queued(proc) == 3, "queue full")
    with pytest.raises(QueueFullError, match=r"3 items are queued, max_queue_size=3, and this call has 1"):
        submit(proc, 99).result(TIMEOUT)
    with pytest.raises(QueueFullError):
        submit(proc, [1, 2]).result(TIMEOUT)
    with pytest.raises(QueueFullError, match=r"a call of 4 items can never fit .* max_queue_size=3"):
        submit(proc, [1, 2, 3, 4]).result(TIMEOUT)
    assert proc.stats.rejected_items == 7
    gate.open()
    assert running.result(TIMEOUT) == "running"
    assert [f.result(TIMEOUT) for f in queued_calls] == [0, 1, 2]
    assert submit(proc, 5).result(TIMEOUT) == 5  # room again
    proc.shutdown()


# 10. Statistics


def test_stats_reconcile_with_the_work_done(submit) -> None:
    proc = submit.make(identity, batch_size=8, timeout_ms=1)
    futures = [submit(proc, list(range(i % 5 + 1))) for i in range(50)]
    for i, f in enumerate(futures):
        assert f.result(TIMEOUT) == list(range(i % 5 + 1))
    s = proc.stats
    total = sum(i % 5 + 1 for i in range(50))
    assert s.total_processed == total
    assert sum(n * c for n, c in s.batch_size_histogram.items()) == total
    assert sum(s.batch_size_histogram.values()) == s.total_batches
    assert sum(s.batches_by_reason.values()) == s.total_batches
    assert s.queue_size == 0
    proc.shutdown()


def test_unreadable_output_is_a_clear_error(submit) -> None:
    class Broken:
        def __len__(self) -> int:
            return 2

        def __iter__(self):
            raise RuntimeError("cannot iterate")

    proc = submit.make(lambda xs: Broken() if xs == [1, 2] else xs, batch_size=2, timeout_ms=0)
    with pytest.raises(TypeError, match=r"\(Broken\) could not be read as a sequence: RuntimeError\('cannot iterate'\)"):
        submit(proc, [1, 2]).result(TIMEOUT)
    assert submit(proc, [3, 4]).result(TIMEOUT) == [3, 4]  # the worker survived
    proc.shutdown()

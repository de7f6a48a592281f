"""Deadlines and per-request priorities on every front end (docs/semantics.md,
sections 3 and 11): ``deadline_ms``, ``with batched.deadline(ms)``,
``with batched.priority(level)``, ``batched.DeadlineExceeded``.

Each test blocks the only worker on a gate where it needs the queue to hold
items, so the outcome does not depend on the machine's speed; the deadlines
are short and the timeouts long, and every wait is bounded.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import TIMEOUT, FrontEnd, Gate, wait_until

import batched

LONG_MS = 60_000.0  # a timeout no test waits for


def identity(xs: list[Any]) -> list[Any]:
    return list(xs)


def expect_deadline_exceeded(fut: Any) -> BaseException:
    err = fut.exception(TIMEOUT)
    assert isinstance(err, batched.DeadlineExceeded), repr(err)
    assert isinstance(err, TimeoutError)
    assert "deadline" in str(err)
    return err


@pytest.mark.parametrize("how", ["option", "context"])
def test_a_queued_item_fails_at_its_deadline_not_when_a_worker_frees(submit: FrontEnd, how: str) -> None:
    gate = Gate(identity)
    options: dict[str, Any] = {"deadline_ms": 80.0} if how == "option" else {}
    proc = submit.make(gate, batch_size=4, timeout_ms=0, **options)
    first = submit(proc, [0])
    assert gate.entered.wait(TIMEOUT)
    started = time.monotonic()
    if how == "option":
        late = submit(proc, [1, 2])
    else:
        late = submit.within(lambda: batched.deadline(80), proc, [1, 2])
    expect_deadline_exceeded(late)
    waited = time.monotonic() - started
    assert waited < 5.0, f"DeadlineExceeded came after {waited:.2f} s"
    assert not first.done(), "the worker is still blocked: the caller was told by the watcher"
    assert proc.stats.expired_items == 2
    gate.open()
    assert first.result(TIMEOUT) == [0]
    assert submit(proc, [3]).result(TIMEOUT) == [3] if how == "context" else True
    assert all(1 not in b and 2 not in b for b in gate.batches), "an expired item reached the function"
    proc.shutdown()


def test_items_leave_early_to_meet_a_deadline_and_count_as_deadline(submit: FrontEnd) -> None:
    proc = submit.make(identity, batch_size=64, timeout_ms=LONG_MS)
    assert submit.within(lambda: batched.deadline(500), proc, [7]).result(TIMEOUT) == [7]
    warm = time.monotonic()
    fut = submit.within(lambda: batched.deadline(300), proc, [1, 2, 3])
    assert fut.result(TIMEOUT) == [1, 2, 3]
    assert time.monotonic() - warm < 10.0  # not the 60 s timeout
    assert proc.stats.batches_by_reason["deadline"] == 2
    assert proc.stats.expired_items == 0
    proc.shutdown()


def test_the_earliest_deadline_wins_when_blocks_nest(submit: FrontEnd) -> None:
    gate = Gate(identity)
    proc = submit.make(gate, batch_size=4, timeout_ms=0, deadline_ms=LONG_MS)
    first = submit(proc, [0])
    assert gate.entered.wait(TIMEOUT)

    @contextlib.contextmanager
    def outer_short() -> Iterator[None]:
        with batched.deadline(60), batched.deadline(LONG_MS):
            yield

    expect_deadline_exceeded(submit.within(outer_short, proc, [1]))
    patient = submit.within(lambda: batched.deadline(LONG_MS), proc, [2])
    time.sleep(0.2)
    assert not patient.done()
    gate.open()
    assert first.result(TIMEOUT) == [0] and patient.result(TIMEOUT) == [2]
    proc.shutdown()


def test_a_call_made_after_its_deadline_fails_at_once(submit: FrontEnd) -> None:
    calls: list[list[int]] = []

    def fn(xs: list[int]) -> list[int]:
        calls.append(list(xs))
        return xs

    proc = submit.make(fn, batch_size=4, timeout_ms=0)

    @contextlib.contextmanager
    def passed() -> Iterator[None]:
        with batched.deadline(1):
            time.sleep(0.01)
            yield

    err = expect_deadline_exceeded(submit.within(passed, proc, [5]))
    assert "had passed" in str(err)
    assert calls == [] and proc.stats.queue_size == 0
    assert submit(proc, [6]).result(TIMEOUT) == [6]  # the block is over: no deadline
    proc.shutdown()


def test_priority_orders_the_queue(submit: FrontEnd) -> None:
    # Batch size 1: while the worker is blocked, queue priority 5, then -1,
    # then the default (0): -1 goes first, then 0, then 5.
    gate = Gate(identity)
    proc = submit.make(gate, batch_size=1, timeout_ms=0, aging_ms=LONG_MS)
    first = submit(proc, [0])
    assert gate.entered.wait(TIMEOUT)
    low = submit.within(lambda: batched.priority(5), proc, [5])
    wait_until(lambda: proc.stats.queue_size == 1, "the first call to queue")
    high = submit.within(lambda: batched.priority(-1), proc, [1])
    wait_until(lambda: proc.stats.queue_size == 2, "the second call to queue")
    default = submit(proc, [2])
    wait_until(lambda: proc.stats.queue_size == 3, "the third call to queue")
    gate.open()
    for fut, want in ((first, [0]), (low, [5]), (high, [1]), (default, [2])):
        assert fut.result(TIMEOUT) == want
    assert gate.batches == [[0], [1], [2], [5]]
    proc.shutdown()


def test_priority_ranks_before_the_size_rule(submit: FrontEnd) -> None:
    # A 6-item call at priority -1 goes before a 1-item call at the default,
    # although small calls otherwise go first (small_batch_threshold=2).
    gate = Gate(identity)
    proc = submit.make(gate, batch_size=6, timeout_ms=0, small_batch_threshold=2, aging_ms=LONG_MS)
    first = submit(proc, [0])
    assert gate.entered.wait(TIMEOUT)
    small = submit(proc, [9])
    wait_until(lambda: proc.stats.queue_size == 1, "the small call to queue")
    bulk = submit.within(lambda: batched.priority(-1), proc, list(range(10, 16)))
    wait_until(lambda: proc.stats.queue_size == 7, "the bulk call to queue")
    gate.open()
    assert bulk.result(TIMEOUT) == list(range(10, 16)) and small.result(TIMEOUT) == [9]
    assert first.result(TIMEOUT) == [0]
    assert gate.batches[1] == list(range(10, 16))
    proc.shutdown()


def test_inference_processors_honour_deadlines(submit: FrontEnd) -> None:
    np = pytest.importorskip("numpy")
    gate = Gate(lambda xs: xs)
    entered: list[int] = []

    def model(features: dict[str, Any]) -> Any:
        ids = features["input_ids"]
        entered.append(int(ids[0, 0]))
        gate([int(ids[0, 0])])
        return ids.sum(axis=1)

    proc = submit.make_model(model, batch_size=4, timeout_ms=0, deadline_ms=80)
    first = submit(proc, {"input_ids": np.array([[1, 1]])})
    assert gate.entered.wait(TIMEOUT)
    expect_deadline_exceeded(submit(proc, {"input_ids": np.array([[2, 2, 2]])}))
    gate.open()
    assert first.result(TIMEOUT).tolist() == [2]
    assert entered == [1]
    assert proc.stats.expired_items == 1
    proc.shutdown()


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda: batched.deadline(-1), ValueError, "deadline must be between 0"),
        (lambda: batched.deadline(float("nan")), ValueError, "deadline must be between 0"),
        (lambda: batched.deadline("soon"), TypeError, "deadline must be a number"),
        (lambda: batched.priority(1.5), TypeError, "priority level must be an int"),
        (lambda: batched.priority(True), TypeError, "priority level must be an int"),
        (lambda: batched.priority(2**31), ValueError, "between -2**31 and 2**31 - 1"),
        (lambda: batched.BatchProcessor(identity, deadline_ms=0), ValueError, "deadline_ms"),
        (lambda: batched.BatchProcessor(identity, deadline_ms=-5), ValueError, "deadline_ms"),
    ],
)
def test_bad_values_are_clear_errors(make: Any, error: type, message: str) -> None:
    with pytest.raises(error, match=message.replace("*", r"\*")):
        make()


def test_a_due_bulk_call_leaves_room_for_higher_priority_calls(submit: FrontEnd) -> None:
    # batch_size=4, aging_ms=0. Batch 2 takes bulk call A's first 4 items and
    # passes bulk call B over, so B is due for batch 3. Two one-item calls at
    # priority -1 are queued by then: B takes 2 items (at least one, and room
    # for them), they take the other 2 (docs/semantics.md, 3).
    entered = [threading.Event(), threading.Event()]
    release = [threading.Event(), threading.Event()]
    batches: list[list[int]] = []

    def fn(xs: list[int]) -> list[int]:
        batches.append(list(xs))
        k = len(batches) - 1
        if k < 2:
            entered[k].set()
            assert release[k].wait(TIMEOUT)
        return xs

    proc = submit.make(fn, batch_size=4, timeout_ms=0, aging_ms=0, small_batch_threshold=1)
    first = submit(proc, [0])
    assert entered[0].wait(TIMEOUT)
    a = submit(proc, list(range(100, 108)))
    wait_until(lambda: proc.stats.queue_size == 8, "call A to queue")
    b = submit(proc, list(range(200, 208)))
    wait_until(lambda: proc.stats.queue_size == 16, "call B to queue")
    release[0].set()
    assert entered[1].wait(TIMEOUT)
    high = []
    for n, x in enumerate((1, 2)):
        high.append(submit.within(lambda: batched.priority(-1), proc, [x]))
        wait_until(lambda: proc.stats.queue_size == 13 + n, "a priority call to queue")
    release[1].set()
    assert first.result(TIMEOUT) == [0]
    assert a.result(TIMEOUT) == list(range(100, 108)) and b.result(TIMEOUT) == list(range(200, 208))
    assert [f.result(TIMEOUT) for f in high] == [[1], [2]]
    assert batches[1] == [100, 101, 102, 103]
    assert batches[2] == [200, 201, 1, 2], batches
    proc.shutdown()


def test_one_block_object_serves_many_tasks_and_threads_at_once() -> None:
    # A module-level URGENT = batched.priority(-1): entered and left by tasks in
    # interleaved order, each sees its own level and gets its own back.
    import asyncio

    from batched._core import deadline_var, priority_var

    urgent = batched.priority(-1)
    soon = batched.deadline(1_000)

    async def task(enter: asyncio.Event, leave: asyncio.Event) -> tuple[int, bool]:
        with urgent, soon:
            enter.set()
            await leave.wait()
            inside = (priority_var.get(), deadline_var.get() is not None)
        assert priority_var.get() == 0 and deadline_var.get() is None
        return inside

    async def main() -> None:
        events = [(asyncio.Event(), asyncio.Event()) for _ in range(2)]
        tasks = [asyncio.ensure_future(task(*e)) for e in events]
        for enter, _ in events:
            await enter.wait()
        events[0][1].set()  # the first to enter leaves first
        assert await tasks[0] == (-1, True)
        events[1][1].set()
        assert await tasks[1] == (-1, True)

    asyncio.run(main())
    results: list[Any] = []

    def in_thread() -> None:
        with urgent:
            time.sleep(0.01)
            results.append(priority_var.get())

    threads = [threading.Thread(target=in_thread) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert results == [-1] * 4 and priority_var.get() == 0

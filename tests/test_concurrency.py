"""Many callers at once: every caller gets exactly its own results, nothing is
lost, and the counts reconcile with stats. Each item is unique, so a lost,
duplicated or misrouted result fails an assertion."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from conftest import run_threads

from batched import BatchProcessor


def tagged(items: list[tuple[int, int]]) -> list[tuple[int, int, str]]:
    # The result names its input, so a caller can check it got its own.
    return [(caller, i, f"{caller}:{i}") for caller, i in items]


@pytest.mark.parametrize("num_workers", [1, 3])
@pytest.mark.parametrize("timeout_ms", [0.0, 1.0])
def test_threads_mixing_single_and_list_calls(num_workers: int, timeout_ms: float) -> None:
    proc = BatchProcessor(tagged, batch_size=16, timeout_ms=timeout_ms, num_workers=num_workers)
    calls_per_thread = 150
    counted = [0] * 32

    def caller(k: int) -> None:
        rng = random.Random(k)
        next_i = 0
        for _ in range(calls_per_thread):
            if rng.random() < 0.5:
                item = (k, next_i)
                assert proc(item) == (k, next_i, f"{k}:{next_i}")
                next_i += 1
            else:
                n = rng.randint(0, 40)  # sometimes more than a batch
                items = [(k, next_i + j) for j in range(n)]
                assert proc(items) == [(k, next_i + j, f"{k}:{next_i + j}") for j in range(n)]
                next_i += n
        counted[k] = next_i

    run_threads(32, caller)
    s = proc.stats
    assert s.total_processed == sum(counted)
    assert s.queue_size == 0
    assert max(s.batch_size_histogram) <= 16
    proc.shutdown()


def test_many_event_loops_and_threads_at_once() -> None:
    proc = BatchProcessor(tagged, batch_size=32, timeout_ms=1)
    per_loop = 300

    def loop_caller(k: int) -> None:
        async def main() -> None:
            async def one(i: int) -> None:
                if i % 3 == 0:
                    got = await proc.acall([(k, i), (k, -i)])
                    assert got == [(k, i, f"{k}:{i}"), (k, -i, f"{k}:{-i}")]
                else:
                    assert await proc.acall((k, i)) == (k, i, f"{k}:{i}")

            await asyncio.gather(*(one(i) for i in range(per_loop)))

        asyncio.run(main())

    def thread_caller(k: int) -> None:
        for i in range(per_loop):
            assert proc((k, i)) == (k, i, f"{k}:{i}")

    run_threads(8, lambda k: loop_caller(k) if k < 4 else thread_caller(k))
    expected = 4 * (per_loop + (per_loop + 2) // 3) + 4 * per_loop
    assert proc.stats.total_processed == expected
    proc.shutdown()


def test_failures_reach_only_their_own_callers_under_load() -> None:
    def fn(items: list[tuple[int, int]]) -> list[Any]:
        # Item-level failures for odd i; whole-batch failure when a poison item is in it.
        if any(i == -1 for _, i in items):
            raise LookupError("poisoned batch")
        return [ValueError(f"odd {c}:{i}") if i % 2 else (c, i) for c, i in items]

    proc = BatchProcessor(fn, batch_size=8, timeout_ms=0.5)

    def caller(k: int) -> None:
        for i in range(300):
            if i == 150 and k % 4 == 0:
                with pytest.raises(LookupError, match="poisoned batch"):
                    proc((k, -1))
            elif i % 2:
                with pytest.raises((ValueError, LookupError)) as info:
                    proc((k, i))
                # its own item error, or the poison of a batch it shared
                assert str(info.value) in (f"odd {k}:{i}", "poisoned batch")
            else:
                try:
                    assert proc((k, i)) == (k, i)
                except LookupError:
                    pass  # shared a batch with a poison item: allowed, and it says so

    run_threads(16, caller)
    proc.shutdown()


def test_no_references_leak_through_the_core() -> None:
    # A leaked call record would keep its inputs and results alive: their
    # reference counts must come back to where they started.
    import sys

    item, result = object(), object()
    proc = BatchProcessor(lambda xs: [result] * len(xs), batch_size=8, timeout_ms=0)
    item_refs, result_refs = sys.getrefcount(item), sys.getrefcount(result)

    def caller(k: int) -> None:
        for i in range(200):
            if i % 2:
                assert proc(item) is result
            else:
                assert proc([item] * (k + 1)) == [result] * (k + 1)

    run_threads(8, caller)
    with pytest.raises(ValueError):  # failing calls release their records too
        BatchProcessor(lambda xs: [], timeout_ms=0)(item)
    import gc

    gc.collect()
    assert sys.getrefcount(item) == item_refs
    assert sys.getrefcount(result) == result_refs
    proc.shutdown()

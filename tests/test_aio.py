"""batched.aio's own API (its parameters, caches, several event loops), for
both kinds of batch function: a plain one ("aio") and an async def one
("aio-async"). The batching contract itself runs on every front end in
test_semantics.py."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from conftest import TIMEOUT

import batched
from batched import QueueFullError, ShutdownError, aio
from batched.types import CacheStats, PriorityStrategy

LONG_MS = 60_000.0


def make_fn(kind: str, body: Any, record: list | None = None) -> Any:
    """The same batch function as ``def`` (run on worker threads) or ``async def`` (on the loop)."""
    if kind == "aio":

        def fn(items: list[Any]) -> Any:
            if record is not None:
                record.append(list(items))
            return body(items)

    else:

        async def fn(items: list[Any]) -> Any:
            if record is not None:
                record.append(list(items))
            await asyncio.sleep(0)
            return body(items)

    return fn


@pytest.fixture(params=["aio", "aio-async"])
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT))


def test_single_and_list_calls(kind: str) -> None:
    proc = aio.AsyncBatchProcessor(make_fn(kind, lambda xs: [x * 2 for x in xs]), batch_size=4, timeout_ms=1)

    async def main() -> None:
        assert await proc(21) == 42
        assert await proc([1, 2, 3]) == [2, 4, 6]
        assert await proc([]) == []
        assert await proc(list(range(10))) == [x * 2 for x in range(10)]
        assert await asyncio.gather(*(proc(i) for i in range(50))) == [i * 2 for i in range(50)]

    run(main())
    s = proc.stats
    assert s.total_processed == 1 + 3 + 10 + 50
    assert max(s.batch_size_histogram) <= 4
    proc.shutdown()


def test_decorator_bare_kwargs_and_methods(kind: str) -> None:
    bare = aio.dynamically(make_fn(kind, lambda xs: xs))
    assert isinstance(bare, aio.AsyncBatchProcessor) and bare.batch_size == 32

    class Model:
        def __init__(self, offset: int) -> None:
            self.offset = offset

        if kind == "aio":

            @aio.dynamically(batch_size=8, timeout_ms=1)
            def predict(self, items: list[int]) -> list[int]:
                return [x + self.offset for x in items]

        else:

            @aio.dynamically(batch_size=8, timeout_ms=1)
            async def predict(self, items: list[int]) -> list[int]:
                return [x + self.offset for x in items]

    a, b = Model(100), Model(200)

    async def main() -> None:
        assert await bare([1, 2]) == [1, 2]
        assert await a.predict(1) == 101
        assert await b.predict([1, 2]) == [201, 202]

    run(main())
    assert a.predict is a.predict and a.predict is not b.predict
    assert a.predict.is_async == (kind == "aio-async")
    for p in (bare, a.predict, b.predict):
        p.shutdown()


def test_full_batch_leaves_at_once_and_lone_item_waits(kind: str) -> None:
    full = aio.AsyncBatchProcessor(make_fn(kind, lambda xs: xs), batch_size=4, timeout_ms=LONG_MS)
    lone = aio.AsyncBatchProcessor(make_fn(kind, lambda xs: xs), batch_size=4, timeout_ms=50)

    async def main() -> None:
        assert await asyncio.gather(*(full(i) for i in range(4))) == [0, 1, 2, 3]
        start = time.monotonic()
        assert await lone("x") == "x"
        assert time.monotonic() - start >= 0.049

    run(main())
    assert full.stats.batches_by_reason["full"] == 1
    assert lone.stats.batches_by_reason["timeout"] == 1
    full.shutdown()
    lone.shutdown()


def test_idle_async_processor_has_no_timer_armed() -> None:
    proc = aio.AsyncBatchProcessor(make_fn("aio-async", lambda xs: xs), batch_size=4, timeout_ms=20)

    async def main() -> None:
        task = asyncio.ensure_future(proc(1))
        await asyncio.sleep(0)
        engine = proc._engine_for(asyncio.get_running_loop())
        assert engine.driver.timer_armed  # waiting for the timeout
        assert await task == 1
        await asyncio.sleep(0.01)
        assert not engine.driver.timer_armed  # idle: nothing armed

    run(main())
    proc.shutdown()


def test_a_backlog_drained_when_a_batch_returns_leaves_no_timer_behind() -> None:
    """Two batch slots, one busy: an item queued meanwhile gets a timer for its
    (long) timeout, then leaves by the drain rule when the busy batch returns.
    Its timer goes with it, instead of firing later on an idle processor."""
    gate: list[asyncio.Event] = []

    async def fn(items: list[Any]) -> list[Any]:
        if "slow" in items:
            await gate[0].wait()
        return items

    proc = aio.AsyncBatchProcessor(fn, batch_size=2, timeout_ms=5_000, num_workers=2)

    def live_timers(loop: asyncio.AbstractEventLoop) -> int:
        return sum(1 for h in loop._scheduled if not h.cancelled())  # type: ignore[attr-defined]

    async def main() -> None:
        loop = asyncio.get_running_loop()
        before = live_timers(loop)  # run()'s own wait_for timeout
        gate.append(asyncio.Event())
        busy = asyncio.ensure_future(proc(["slow", "x"]))  # a full batch: runs at once, and waits
        await asyncio.sleep(0.01)
        late = asyncio.ensure_future(proc("late"))
        await asyncio.sleep(0.01)
        engine = proc._engine_for(loop)
        assert engine.driver.timer_armed  # for "late", 5 s away
        gate[0].set()
        assert await asyncio.wait_for(late, 1.0) == "late"  # drained when the busy batch returned
        assert await busy == ["slow", "x"]
        await asyncio.sleep(0.01)
        assert not engine.driver.timer_armed and live_timers(loop) == before

    run(main())
    proc.shutdown()


def test_failures_reach_exactly_their_callers(kind: str) -> None:
    def body(items: list[int]) -> list[Any]:
        if -1 in items:
            raise KeyError("poisoned")
        return [ValueError(f"odd {x}") if x % 2 else x for x in items]

    proc = aio.AsyncBatchProcessor(make_fn(kind, body), batch_size=3, timeout_ms=LONG_MS)
    short = aio.AsyncBatchProcessor(make_fn(kind, lambda xs: xs[:1]), batch_size=2, timeout_ms=LONG_MS)

    async def main() -> None:
        results = await asyncio.gather(proc(0), proc(-1), proc(2), return_exceptions=True)
        assert all(isinstance(r, KeyError) for r in results)
        results = await asyncio.gather(proc(2), proc(3), proc(4), return_exceptions=True)
        assert results[0] == 2 and results[2] == 4
        assert isinstance(results[1], ValueError) and str(results[1]) == "odd 3"
        with pytest.raises(ValueError, match=r"returned 1 results for a batch of 2 items"):
            await short([1, 2])

    run(main())
    proc.shutdown()
    short.shutdown()


def test_several_event_loops_in_several_threads(kind: str) -> None:
    seen_loops: list[asyncio.AbstractEventLoop] = []  # the loops themselves: ids of dead ones are reused

    def body(items: list[tuple[int, int]]) -> list[tuple[int, int]]:
        return [(k, i * 10) for k, i in items]

    proc = aio.AsyncBatchProcessor(make_fn(kind, body), batch_size=16, timeout_ms=1)
    errors: list[BaseException] = []

    def thread_main(k: int) -> None:
        async def main() -> None:
            seen_loops.append(asyncio.get_running_loop())
            got = await asyncio.gather(*(proc((k, i)) for i in range(200)))
            assert got == [(k, i * 10) for i in range(200)]
            assert await proc([(k, 1), (k, 2)]) == [(k, 10), (k, 20)]

        try:
            run(main())
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=thread_main, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
        assert not t.is_alive()
    if errors:
        raise errors[0]
    assert len(set(map(id, seen_loops))) == 4
    assert proc.stats.total_processed == 4 * 202
    proc.shutdown()


def test_cancelled_before_dispatch_never_reaches_the_function(kind: str) -> None:
    record: list[list[Any]] = []
    proc = aio.AsyncBatchProcessor(make_fn(kind, lambda xs: xs, record), batch_size=4, timeout_ms=LONG_MS)

    async def main() -> None:
        doomed = [asyncio.ensure_future(proc(f"cancel-{i}")) for i in range(3)]
        await asyncio.sleep(0.01)
        assert proc.stats.queue_size == 3
        for t in doomed:
            t.cancel()
        await asyncio.gather(*doomed, return_exceptions=True)
        assert proc.stats.queue_size == 0
        assert await asyncio.gather(*(proc(i) for i in range(4))) == [0, 1, 2, 3]

    run(main())
    assert record == [[0, 1, 2, 3]]
    proc.shutdown()


def test_max_batch_length_budget(kind: str) -> None:
    record: list[list[str]] = []
    proc = aio.AsyncBatchProcessor(
        make_fn(kind, lambda xs: [len(x) for x in xs], record), batch_size=16, timeout_ms=5, max_batch_length=10
    )

    async def main() -> None:
        words = ["aaaa", "bbbb", "cccc", "dd", "e" * 30]
        assert await asyncio.gather(*(proc(w) for w in words)) == [4, 4, 4, 2, 30]

    run(main())
    for batch in record:
        assert len(batch) == 1 or sum(len(w) for w in batch) <= 10  # a longer item goes alone
    assert ["e" * 30] in record
    proc.shutdown()


def test_length_strategy_puts_shorter_bulk_calls_first() -> None:
    record: list[list[str]] = []
    gate = threading.Event()

    def fn(items: list[str]) -> list[str]:
        record.append(list(items))
        if items == ["block"]:
            gate.wait(TIMEOUT)
        return items

    proc = aio.AsyncBatchProcessor(
        fn, batch_size=64, timeout_ms=0, small_batch_threshold=1, priority_strategy=PriorityStrategy.LENGTH
    )

    async def main() -> None:
        first = asyncio.ensure_future(proc("block"))
        while not record:
            await asyncio.sleep(0.001)
        long_call = asyncio.ensure_future(proc(["x" * 50, "y" * 50]))
        await asyncio.sleep(0.01)
        short_call = asyncio.ensure_future(proc(["a", "b"]))
        await asyncio.sleep(0.01)
        gate.set()
        await asyncio.gather(first, long_call, short_call)

    run(main())
    assert record[1][:2] == ["a", "b"]  # queued later, but shorter
    proc.shutdown()


class DictCache:
    def __init__(self) -> None:
        self.data: dict[Any, Any] = {}
        self._stats = CacheStats()

    async def get(self, key: Any) -> Any:
        value = self.data.get(key)
        self._stats.update_get(hit=value is not None, time_taken=0.0)
        return value

    async def set(self, key: Any, value: Any) -> None:
        self.data[key] = value
        self._stats.update_set(time_taken=0.0)

    async def clear(self) -> None:
        self.data.clear()

    def stats(self) -> CacheStats:
        return self._stats


def test_cached_items_never_enter_the_queue(kind: str) -> None:
    record: list[list[int]] = []
    cache = DictCache()
    proc = aio.AsyncBatchProcessor(
        make_fn(kind, lambda xs: [x * 3 for x in xs], record), batch_size=8, timeout_ms=1, cache=cache
    )

    async def main() -> None:
        assert await proc([1, 2, 3]) == [3, 6, 9]
        assert await proc([2, 3, 4]) == [6, 9, 12]
        assert await proc(1) == 3

    run(main())
    assert [x for b in record for x in b] == [1, 2, 3, 4]
    s = proc.stats.cache_stats
    assert s is not None and (s.gets, s.hits, s.sets) == (7, 3, 4)
    proc.shutdown()


def test_disk_cache_round_trip_or_clear_import_error(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from batched.utils import AsyncDiskCache

    try:
        import diskcache  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install diskcache"):
            AsyncDiskCache(str(tmp_path))
        return
    # 0.1.5's constructor: cache_dir, max_threads, collect_stats, expiration_seconds
    directory = tmp_path / "nested" / "cache"
    cache = AsyncDiskCache(cache_dir=str(directory), max_threads=2, collect_stats=True)

    async def main() -> None:
        assert await cache.get("k") is None
        await cache.set("k", [1, 2])
        assert await cache.get("k") == [1, 2]
        await cache.clear()
        assert await cache.get("k") is None

    run(main())
    assert directory.is_dir()  # created, and really used
    assert (cache.stats().gets, cache.stats().hits, cache.stats().sets) == (3, 1, 1)
    cache.clear_stats()
    assert cache.stats().gets == 0

    # entries are on disk: another cache on the same directory sees them
    async def put(c: Any) -> None:
        await c.set(("a", 1), "one")

    run(put(cache))
    other = AsyncDiskCache(cache_dir=str(directory))

    async def read() -> Any:
        return await other.get(("a", 1))

    assert run(read()) == "one"
    assert other.stats().gets == 0  # collect_stats is off by default, as in 0.1.5

    expiring = AsyncDiskCache(cache_dir=str(tmp_path / "exp"), expiration_seconds=0.05)

    async def expire() -> None:
        await expiring.set("x", 1)
        assert await expiring.get("x") == 1
        await asyncio.sleep(0.2)
        assert await expiring.get("x") is None

    run(expire())
    # a relative directory is resolved once: a later chdir does not move it
    monkeypatch.chdir(tmp_path)
    relative = AsyncDiskCache("rel-cache")
    monkeypatch.chdir(directory)

    async def round_trip() -> Any:
        await relative.set("r", 5)
        return await relative.get("r")

    assert run(round_trip()) == 5 and (tmp_path / "rel-cache").is_dir()
    with pytest.raises(ValueError, match="max_threads must be at least 1"):
        AsyncDiskCache(cache_dir=str(directory), max_threads=0)
    with pytest.raises(ValueError, match="expiration_seconds must be positive"):
        AsyncDiskCache(cache_dir=str(directory), expiration_seconds=0)


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        aio.AsyncBatchProcessor(lambda xs: xs, batch_size=0)
    with pytest.raises(ValueError, match="max_batch_length must be at least 1"):
        aio.AsyncBatchProcessor(lambda xs: xs, max_batch_length=0)
    with pytest.raises(TypeError, match="priority_strategy must be"):
        aio.AsyncBatchProcessor(lambda xs: xs, priority_strategy="LENGTH")
    with pytest.raises(TypeError, match="cache must follow"):
        aio.AsyncBatchProcessor(lambda xs: xs, cache=object())
    with pytest.warns(UserWarning, match="batch_item_cls is ignored"):
        batched._options._warned_batch_item_cls = False
        aio.AsyncBatchProcessor(lambda xs: xs, batch_item_cls=object).shutdown()


def test_full_queue_and_shutdown(kind: str) -> None:
    proc = aio.AsyncBatchProcessor(make_fn(kind, lambda xs: xs), batch_size=8, timeout_ms=LONG_MS, max_queue_size=2)

    async def main() -> None:
        waiting = [asyncio.ensure_future(proc(i)) for i in range(2)]
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFullError):
            await proc(3)
        proc.shutdown()
        for t in waiting:
            with pytest.raises(ShutdownError, match="shut down before these items were processed"):
                await t
        with pytest.raises(ShutdownError, match="has been shut down"):
            await proc(4)

    run(main())


def test_async_backlog_leaves_when_the_batch_returns() -> None:
    record: list[list[Any]] = []
    release = [asyncio.Event()]

    async def gated(items: list[Any]) -> list[Any]:
        record.append(list(items))
        if "first" in items:
            await release[0].wait()
        return items

    proc = aio.AsyncBatchProcessor(gated, batch_size=2, timeout_ms=LONG_MS)

    async def main() -> None:
        release[0] = asyncio.Event()
        running = asyncio.gather(proc("first"), proc("second"))  # full: dispatched at once
        await asyncio.sleep(0.01)
        late = asyncio.ensure_future(proc("late"))  # 1 of 2: alone it would wait a minute
        await asyncio.sleep(0.01)
        assert proc.stats.queue_size == 1
        release[0].set()
        assert await running == ["first", "second"]
        assert await late == "late"  # left when the running batch returned

    run(main())
    assert record == [["first", "second"], ["late"]]
    assert proc.stats.batches_by_reason["drain"] == 1
    proc.shutdown()


def test_async_num_workers_run_batches_concurrently() -> None:
    running = 0
    peak = 0

    async def fn(items: list[int]) -> list[int]:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.02)
        running -= 1
        return items

    proc = aio.AsyncBatchProcessor(fn, batch_size=2, timeout_ms=0, num_workers=3)

    async def main() -> None:
        assert await asyncio.gather(*(proc(i) for i in range(12))) == list(range(12))

    run(main())
    assert peak == 3  # never more than num_workers, and the slots are used
    proc.shutdown()


def test_garbage_collected_aio_processor_stops_its_workers() -> None:
    import gc

    from conftest import wait_until, worker_threads

    def aio_gc_probe(items: list[int]) -> list[int]:
        return items

    proc = aio.AsyncBatchProcessor(aio_gc_probe, timeout_ms=0)
    assert run(proc(1)) == 1
    assert worker_threads("aio_gc_probe")
    del proc
    gc.collect()
    wait_until(lambda: not worker_threads("aio_gc_probe"), "aio workers to exit")


def test_batch_task_cancelled_before_it_runs_strands_nobody() -> None:
    # A shutdown handler that cancels every task also cancels batch tasks that
    # have not taken their first step: the slot must come back, later calls work.
    proc = aio.AsyncBatchProcessor(make_fn("aio-async", lambda xs: xs), batch_size=4, timeout_ms=1)

    async def main() -> None:
        callers = [asyncio.ensure_future(proc(i)) for i in range(4)]  # a full batch: its task exists
        await asyncio.sleep(0)
        batch_tasks = list([t for t in asyncio.all_tasks() if "_run_on_loop" in repr(t)])
        assert batch_tasks  # created, not started
        for t in callers + batch_tasks:
            t.cancel()
        await asyncio.gather(*callers, *batch_tasks, return_exceptions=True)
        assert await asyncio.wait_for(proc(99), TIMEOUT) == 99

    run(main())
    proc.shutdown()


def test_stop_iteration_reaches_callers_as_runtime_error(kind: str) -> None:
    def body(items: list[int]) -> list[Any]:
        return [StopIteration("per item") if x == 0 else x for x in items]

    proc = aio.AsyncBatchProcessor(make_fn(kind, body), batch_size=3, timeout_ms=LONG_MS)

    async def main() -> list[Any]:
        return await asyncio.gather(*(proc(i) for i in range(3)), return_exceptions=True)

    first, *rest = run(main())
    assert isinstance(first, RuntimeError) and "StopIteration: per item" in str(first)
    assert rest == [1, 2]  # the others are delivered, not stranded
    proc.shutdown()


def test_0_1_5_item_class_import_and_clear_stats(kind: str) -> None:
    from batched.aio.batch_generator import AsyncBatchItem

    class MyItem(AsyncBatchItem):  # 0.1.5 code subclasses it for batch_item_cls
        pass

    batched._options._warned_batch_item_cls = False
    with pytest.warns(UserWarning, match="batch_item_cls is ignored"):
        proc = aio.AsyncBatchProcessor(make_fn(kind, lambda xs: xs), timeout_ms=0, batch_item_cls=MyItem)
    assert run(proc([1, 2])) == [1, 2]
    assert proc.stats.total_processed == 2
    proc.clear_stats()
    assert proc.stats.total_processed == 0 and proc.stats.batch_size_histogram == {}
    assert run(proc(3)) == 3
    assert proc.stats.total_processed == 1
    proc.shutdown()

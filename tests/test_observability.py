"""Observability: the stats fields beyond 0.1.5's, logging, and the Prometheus exporter."""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from conftest import TIMEOUT, Gate, wait_until

import batched
from batched import aio
from batched.inference import ModelBatchProcessor

LONG_MS = 60_000.0  # a timeout no test waits for


def test_dispatch_reasons_are_full_timeout_budget_drain_deadline() -> None:
    gate = Gate(lambda xs: xs)
    proc = batched.BatchProcessor(gate, batch_size=4, timeout_ms=LONG_MS)
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(proc, [0, 1, 2, 3])  # full
        assert gate.entered.wait(TIMEOUT)
        later = pool.submit(proc, [4])  # queued while the only worker is busy: leaves when it returns
        wait_until(lambda: proc.stats.queue_size == 1, "the item to queue")
        gate.open()
        assert first.result(TIMEOUT) == [0, 1, 2, 3]
        assert later.result(TIMEOUT) == [4]
    assert proc.stats.batches_by_reason == {"full": 1, "timeout": 0, "budget": 0, "drain": 1, "deadline": 0}
    proc.shutdown()


def test_failed_items_count_the_items_of_failed_batches() -> None:
    def fn(xs: list[int]) -> list[int]:
        if 13 in xs:
            raise ValueError("unlucky")
        return xs

    proc = batched.BatchProcessor(fn, batch_size=8, timeout_ms=0)
    assert proc([1, 2]) == [1, 2]
    with pytest.raises(ValueError, match="unlucky"):
        proc([13, 14, 15])
    with pytest.raises(ValueError, match="returned 1 results for 2 items|2 items"):
        batched.BatchProcessor(lambda xs: xs[:1], batch_size=8, timeout_ms=0)([5, 6])
    s = proc.stats
    assert (s.failed_batches, s.failed_items, s.total_processed) == (1, 3, 5)
    proc.clear_stats()
    assert (proc.stats.failed_batches, proc.stats.failed_items) == (0, 0)
    proc.shutdown()


def test_cancelled_items_count_what_left_the_queue_by_cancellation() -> None:
    seen: list[list[str]] = []

    def fn(xs: list[str]) -> list[str]:
        seen.append(list(xs))
        return xs

    proc = aio.AsyncBatchProcessor(fn, batch_size=64, timeout_ms=LONG_MS)

    async def main() -> None:
        doomed = [asyncio.ensure_future(proc([f"c{i}", f"d{i}"])) for i in range(5)]
        await asyncio.sleep(0.01)
        assert proc.stats.queue_size == 10
        for t in doomed:
            t.cancel()
        await asyncio.gather(*doomed, return_exceptions=True)

    asyncio.run(main())
    s = proc.stats
    assert (s.cancelled_items, s.queue_size, s.total_processed) == (10, 0, 0)
    assert seen == []
    proc.shutdown()


def test_oldest_wait_is_the_age_of_the_oldest_queued_item() -> None:
    gate = Gate(lambda xs: xs)
    proc = batched.BatchProcessor(gate, batch_size=2, timeout_ms=0)
    assert proc.stats.oldest_wait_ms == 0.0
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(proc, "a")
        assert gate.entered.wait(TIMEOUT)  # the only worker is busy from now on
        waiting = pool.submit(proc, "b")
        wait_until(lambda: proc.stats.queue_size == 1, "b to queue")
        threading.Event().wait(0.05)
        age = proc.stats.oldest_wait_ms
        assert 45.0 <= age < TIMEOUT * 1000
        threading.Event().wait(0.02)
        assert proc.stats.oldest_wait_ms >= age + 15.0  # it grows while the item waits
        gate.open()
        assert (first.result(TIMEOUT), waiting.result(TIMEOUT)) == ("a", "b")
    assert proc.stats.oldest_wait_ms == 0.0  # nothing queued
    proc.shutdown()


def test_padding_efficiency_counts_real_and_padded_steps() -> None:
    # batch_size 2 and a long timeout: the two calls make one batch
    proc = ModelBatchProcessor(lambda f: f["ids"].sum(axis=1), batch_size=2, timeout_ms=LONG_MS, pad_tokens={"ids": 0})
    assert proc.stats.padding_efficiency is None  # before any batch
    with ThreadPoolExecutor(4) as pool:
        futs = [pool.submit(proc, {"ids": np.ones((1, n), dtype=np.int64)}) for n in (2, 6)]
        results = [f.result(TIMEOUT) for f in futs]
    assert proc.stats.total_batches == 1
    assert sorted(int(r[0]) for r in results) == [2, 6]
    assert proc.stats.padding_efficiency == pytest.approx((2 + 6) / (2 * 6))
    proc.clear_stats()
    assert proc.stats.padding_efficiency is None
    proc.shutdown()

    # bucketed batch sizes and lengths count as padding too: 1 row of 3 -> 4 rows of 8
    proc = ModelBatchProcessor(lambda f: f["ids"].sum(axis=1), batch_size=4, timeout_ms=0,
                               batch_size_buckets=[4], pad_to_multiple_of=8)
    assert int(proc({"ids": np.ones((1, 3), dtype=np.int64)})[0]) == 3
    assert proc.stats.padding_efficiency == pytest.approx(3 / (4 * 8))
    assert batched.BatchProcessor(lambda xs: xs).stats.padding_efficiency is None
    proc.shutdown()


def test_a_failed_batch_is_logged_with_its_exception(caplog: pytest.LogCaptureFixture) -> None:
    def fn(xs: list[int]) -> list[int]:
        raise KeyError("no such key")

    proc = batched.BatchProcessor(fn, batch_size=4, timeout_ms=0)
    with caplog.at_level(logging.WARNING, logger="batched"):
        with pytest.raises(KeyError):
            proc([1, 2])
    records = [r for r in caplog.records if r.name == "batched"]
    assert len(records) == 1
    assert records[0].levelno == logging.WARNING
    assert "failed on a batch of 2 items: KeyError" in records[0].getMessage()
    assert records[0].exc_info is not None and isinstance(records[0].exc_info[1], KeyError)
    proc.shutdown()


def test_shutdown_with_queued_calls_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    gate = Gate(lambda xs: xs)
    proc = batched.BatchProcessor(gate, batch_size=1, timeout_ms=0)
    with ThreadPoolExecutor(4) as pool, caplog.at_level(logging.INFO, logger="batched"):
        running = pool.submit(proc, 1)
        assert gate.entered.wait(TIMEOUT)
        queued = [pool.submit(proc, i) for i in (2, 3)]
        wait_until(lambda: proc.stats.queue_size == 2, "two calls to queue")
        proc.shutdown(wait=False)
        for f in queued:
            with pytest.raises(batched.ShutdownError):
                f.result(TIMEOUT)
        gate.open()
        assert running.result(TIMEOUT) == 1
    messages = [r.getMessage() for r in caplog.records if r.name == "batched" and r.levelno == logging.INFO]
    assert any("shut down with 2 call(s) still queued" in m for m in messages), messages


def _samples(registry: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in registry.collect():
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_prometheus_exporter_reports_counters_and_histograms() -> None:
    pc = pytest.importorskip("prometheus_client")
    from batched.metrics import PrometheusCollector, export_prometheus

    def fn(xs: list[int]) -> list[int]:
        if -1 in xs:
            raise ValueError("negative")
        return [x * 2 for x in xs]

    proc = batched.BatchProcessor(fn, batch_size=4, timeout_ms=0)
    registry = pc.CollectorRegistry()
    export_prometheus(proc, names=["double"], registry=registry)
    for k in range(6):
        assert proc([k, k + 1, k + 2]) == [2 * k, 2 * k + 2, 2 * k + 4]
    with pytest.raises(ValueError):
        proc([-1])
    s = _samples(registry)
    lab = (("processor", "double"),)
    stats = proc.stats
    assert s[("batched_items_processed_total", lab)] == stats.total_processed == 19
    assert s[("batched_failed_batches_total", lab)] == 1
    assert s[("batched_failed_items_total", lab)] == 1
    assert sum(v for (name, _), v in s.items() if name == "batched_batches_total") == stats.total_batches == 7
    # histograms: cumulative, ending at the count; sums consistent with the stats
    for metric, count in (("batched_queue_wait_seconds", 19), ("batched_batch_latency_seconds", 7),
                          ("batched_batch_size", 7)):
        buckets = sorted(((float(dict(labels)["le"]), v) for (name, labels), v in s.items()
                          if name == metric + "_bucket"))
        values = [v for _, v in buckets]
        assert values == sorted(values) and values[-1] == count, (metric, buckets)
        assert s[(metric + "_count", lab)] == count
    assert s[("batched_batch_size_sum", lab)] == 19
    size_buckets = {float(dict(labels)["le"]): v for (name, labels), v in s.items() if name == "batched_batch_size_bucket"}
    assert size_buckets == {1.0: 1, 2.0: 1, 4.0: 7, float("inf"): 7}
    assert s[("batched_batch_latency_seconds_sum", lab)] == pytest.approx(stats.avg_processing_time * 7)
    assert ("batched_padding_efficiency", lab) not in s  # not an inference processor
    assert s[("batched_split_batches_total", lab)] == 0
    assert s[("batched_batch_cap", lab)] == 4
    assert s[("batched_adaptive_wait_seconds", lab)] == 0.0

    # a processor that is garbage-collected leaves the next scrape
    with pytest.raises(ValueError, match="exported already"):
        PrometheusCollector([proc, proc], names=["a", "a"])
    proc.shutdown()
    del proc
    import gc

    gc.collect()
    assert not [k for k in _samples(registry) if k[1] == lab]


def test_prometheus_exporter_reports_splits_and_the_cap() -> None:
    pc = pytest.importorskip("prometheus_client")
    from batched.metrics import export_prometheus

    class TooBig(RuntimeError):
        pass

    entered, gate = threading.Event(), threading.Event()

    def fn(xs: list[int]) -> list[int]:
        if xs == [0]:
            entered.set()
            gate.wait(TIMEOUT)  # the first batch holds the worker while 8 items queue
        if len(xs) > 2:
            raise TooBig(f"{len(xs)} items")
        return xs

    proc = batched.BatchProcessor(fn, batch_size=8, timeout_ms=0, split_on=(TooBig,))
    registry = pc.CollectorRegistry()
    export_prometheus(proc, names=["capped"], registry=registry)
    with ThreadPoolExecutor(9) as pool:
        first = pool.submit(proc, 0)
        assert entered.wait(TIMEOUT)
        rest = [pool.submit(proc, i) for i in range(1, 9)]
        wait_until(lambda: proc.stats.queue_size == 8, "8 items queued")
        gate.set()
        assert first.result(TIMEOUT) == 0 and [f.result(TIMEOUT) for f in rest] == list(range(1, 9))
    s = _samples(registry)
    lab = (("processor", "capped"),)
    assert s[("batched_split_batches_total", lab)] == proc.stats.split_batches == 3  # 8 -> 4 + 4 -> 2 + 2 (twice)
    assert s[("batched_batch_cap", lab)] == proc.stats.batch_cap == 2
    proc.shutdown()


def test_prometheus_exporter_sums_the_queues_of_an_async_processor() -> None:
    pc = pytest.importorskip("prometheus_client")
    from batched.metrics import export_prometheus

    @aio.dynamically(batch_size=8, timeout_ms=1)
    async def embed(xs: list[int]) -> list[int]:
        return xs

    registry = pc.CollectorRegistry()
    export_prometheus(embed, registry=registry)
    for _ in range(2):  # two loops: two queues, one processor

        async def main() -> None:
            assert await asyncio.gather(*(embed(i) for i in range(20))) == list(range(20))

        asyncio.run(main())
    s = _samples(registry)
    name = embed.batch_func.__qualname__
    lab = (("processor", name),)
    assert s[("batched_items_processed_total", lab)] == 40
    assert s[("batched_queue_wait_seconds_count", lab)] == 40
    embed.shutdown()


def test_exporter_refuses_bad_input() -> None:
    pytest.importorskip("prometheus_client")
    from batched.metrics import PrometheusCollector

    with pytest.raises(TypeError, match="not a batched processor: int"):
        PrometheusCollector([3])
    with pytest.raises(ValueError, match="positive and increasing"):
        PrometheusCollector([], latency_buckets_s=[0.1, 0.05])
    with pytest.raises(ValueError, match="2 names for 1 processors"):
        PrometheusCollector([batched.BatchProcessor(lambda xs: xs)], names=["a", "b"])


class _RaisingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        raise RuntimeError("a broken logging filter")


@pytest.mark.parametrize("kind", ["thread", "aio", "aio-async"])
def test_a_raising_log_filter_changes_nothing_for_callers(kind: str) -> None:
    log = logging.getLogger("batched")
    broken = _RaisingFilter()
    log.addFilter(broken)
    try:
        def fn(xs: list[int]) -> list[int]:
            if 0 in xs:
                raise ValueError("zero")
            return [x + 1 for x in xs]

        if kind == "thread":
            proc: Any = batched.BatchProcessor(fn, batch_size=4, timeout_ms=0)
            with pytest.raises(ValueError, match="zero"):  # its own error, not the filter's
                proc([0, 1])
            assert proc([1, 2]) == [2, 3]  # and the processor goes on
        else:
            if kind == "aio":
                target: Any = fn
            else:
                async def target(xs: list[int]) -> list[int]:
                    return fn(xs)
            proc = aio.AsyncBatchProcessor(target, batch_size=4, timeout_ms=0)

            async def main() -> None:
                with pytest.raises(ValueError, match="zero"):
                    await asyncio.wait_for(proc([0, 1]), TIMEOUT)
                assert await asyncio.wait_for(proc([1, 2]), TIMEOUT) == [2, 3]

            asyncio.run(main())
        assert proc.stats.failed_batches == 1
        proc.shutdown()
    finally:
        log.removeFilter(broken)


def test_a_closed_loops_queue_leaves_the_gauges() -> None:
    @aio.dynamically(batch_size=8, timeout_ms=LONG_MS)
    async def fn(xs: list[int]) -> list[int]:
        return xs

    loop = asyncio.new_event_loop()
    task = loop.create_task(fn(1))
    loop.run_until_complete(asyncio.sleep(0.01))
    assert fn.stats.queue_size == 1
    loop.close()  # without cancelling the task: its item stays queued
    del task

    async def other() -> list[int]:
        return await asyncio.gather(*(fn(i) for i in range(8)))  # a full batch: no wait

    assert asyncio.run(other()) == list(range(8))  # a new loop: the closed one's queue is retired
    s = fn.stats
    assert (s.queue_size, s.oldest_wait_ms, s.total_processed) == (0, 0.0, 8)
    fn.shutdown()


def test_a_name_frees_up_when_its_processor_is_gone() -> None:
    pytest.importorskip("prometheus_client")
    import gc

    from batched.metrics import PrometheusCollector

    collector = PrometheusCollector()
    first = batched.BatchProcessor(lambda xs: xs)
    collector.add(first, name="model")
    with pytest.raises(ValueError, match="exported already"):
        collector.add(batched.BatchProcessor(lambda xs: xs), name="model")
    first.shutdown()
    del first
    gc.collect()
    collector.add(batched.BatchProcessor(lambda xs: xs), name="model")  # a reloaded model, same name

"""Prometheus metrics of batch processors (needs the optional ``prometheus_client``).

    from batched.metrics import export_prometheus
    export_prometheus(embed, rerank)       # on prometheus_client's default registry
    prometheus_client.start_http_server(9100)

Nothing is recorded on the hot path for this: the C++ core keeps its counters
and histograms anyway, and a scrape reads one consistent snapshot per
processor (``collect``). Every series has a ``processor`` label (the name
given, else the batch function's qualified name); the histograms are the
core's (log-linear, 1/8 of a power of two wide) summed into Prometheus'
fixed buckets.

Metrics (with the default namespace "batched"):
  batched_queue_size                     gauge     items waiting for a batch
  batched_oldest_wait_seconds            gauge     age of the oldest waiting item
  batched_items_processed_total          counter   items whose batch has run
  batched_batches_total{reason}          counter   batches by dispatch reason
                                                   (full, timeout, budget, drain, deadline)
  batched_failed_batches_total           counter   batches whose function failed
  batched_failed_items_total             counter   items of those batches
  batched_rejected_items_total           counter   items refused (QueueFullError)
  batched_cancelled_items_total          counter   items taken out by cancellation
  batched_expired_items_total            counter   items taken out unsent: DeadlineExceeded
  batched_queue_wait_seconds             histogram per item: call to dispatch
  batched_batch_latency_seconds          histogram per batch: run time of the function
  batched_batch_size                     histogram items per batch
  batched_padding_efficiency             gauge     inference processors: real / padded steps
  batched_split_batches_total            counter   batches split and retried as too big (split_on)
  batched_batch_cap                      gauge     the most items a batch takes now (batch_size, or less after splits)
  batched_adaptive_wait_seconds          gauge     adaptive=True: the longest a batch waits now (0: at once)
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator, Sequence
from typing import Any, Optional

from batched._stats import Learned

#: Upper bounds (seconds) of the latency histograms: 50 us to 10 s.
DEFAULT_LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)


def _prometheus() -> Any:
    try:
        from prometheus_client import core  # noqa: PLC0415
    except ImportError as e:
        raise ImportError(
            "batched.metrics needs prometheus_client: pip install prometheus_client "
            "(or pip install 'batched[prometheus]')"
        ) from e
    return core


class PrometheusCollector:
    """A prometheus_client collector of the statistics of batch processors.

    Holds its processors weakly: a processor that is garbage-collected drops
    out of the next scrape. Register it with ``registry.register(collector)``,
    or use :func:`export_prometheus`.
    """

    def __init__(
        self,
        processors: Sequence[Any] = (),
        *,
        names: Optional[Sequence[str]] = None,
        namespace: str = "batched",
        latency_buckets_s: Sequence[float] = DEFAULT_LATENCY_BUCKETS_S,
    ) -> None:
        bounds = [float(b) for b in latency_buckets_s]
        if not bounds or any(b <= 0 for b in bounds) or bounds != sorted(set(bounds)):
            raise ValueError(f"latency_buckets_s must be positive and increasing, got {list(latency_buckets_s)}")
        if names is not None and len(names) != len(processors):
            raise ValueError(f"got {len(names)} names for {len(processors)} processors")
        self._core = _prometheus()
        self._prefix = f"{namespace}_" if namespace else ""
        self._bounds = bounds
        self._lock = threading.Lock()
        self._processors: list[tuple[str, weakref.ref[Any]]] = []
        for i, processor in enumerate(processors):
            self.add(processor, name=None if names is None else names[i])

    def add(self, processor: Any, *, name: Optional[str] = None) -> None:
        """Exports one more processor, under ``name`` (default: its function's qualified name)."""
        if not hasattr(processor, "_snapshot"):
            raise TypeError(f"not a batched processor: {type(processor).__name__}")
        if name is None:
            func = getattr(processor, "batch_func", None) or getattr(processor, "_func", None)
            name = getattr(func, "__qualname__", None) or type(processor).__name__
        with self._lock:
            self._processors = [(n, ref) for n, ref in self._processors if ref() is not None]
            if any(existing == name for existing, _ in self._processors):
                raise ValueError(f"a processor named {name!r} is exported already: pass another name=")
            self._processors.append((name, weakref.ref(processor)))

    def describe(self) -> list[Any]:
        # Names only: registering must not take a snapshot.
        return list(self._families().values())

    def collect(self) -> Iterator[Any]:
        families = self._families()
        with self._lock:
            live = [(name, ref()) for name, ref in self._processors]
            self._processors = [(name, ref) for name, ref in self._processors if ref() is not None]
        for name, processor in live:
            if processor is not None:
                self._add_samples(families, name, processor)
        yield from families.values()

    # ---- implementation details follow ----

    def _families(self) -> dict[str, Any]:
        c, p = self._core, self._prefix
        label = ["processor"]
        return {
            "queue_size": c.GaugeMetricFamily(f"{p}queue_size", "Items waiting for a batch.", labels=label),
            "oldest_wait": c.GaugeMetricFamily(
                f"{p}oldest_wait_seconds", "How long the oldest waiting item has waited.", labels=label),
            "processed": c.CounterMetricFamily(
                f"{p}items_processed", "Items whose batch has finished running.", labels=label),
            "batches": c.CounterMetricFamily(
                f"{p}batches", "Batches dispatched, by why they left the queue.", labels=[*label, "reason"]),
            "failed_batches": c.CounterMetricFamily(
                f"{p}failed_batches", "Batches whose function raised or returned a wrong result.", labels=label),
            "failed_items": c.CounterMetricFamily(
                f"{p}failed_items", "Items of the failed batches.", labels=label),
            "rejected": c.CounterMetricFamily(
                f"{p}rejected_items", "Items refused because the queue was full.", labels=label),
            "cancelled": c.CounterMetricFamily(
                f"{p}cancelled_items", "Items taken out of the queue because their caller was cancelled.",
                labels=label),
            "expired": c.CounterMetricFamily(
                f"{p}expired_items", "Items taken out of the queue unsent because their deadline could no "
                "longer be met.", labels=label),
            "queue_wait": c.HistogramMetricFamily(
                f"{p}queue_wait_seconds", "Per item: from the call to the dispatch of its batch.", labels=label),
            "batch_latency": c.HistogramMetricFamily(
                f"{p}batch_latency_seconds", "Per batch: run time of the batch function.", labels=label),
            "batch_size": c.HistogramMetricFamily(f"{p}batch_size", "Items per batch.", labels=label),
            "padding": c.GaugeMetricFamily(
                f"{p}padding_efficiency", "Inference processors: steps of real rows / steps of padded batches.",
                labels=label),
            "splits": c.CounterMetricFamily(
                f"{p}split_batches", "Batches split in two and retried because they were too big (split_on).",
                labels=label),
            "cap": c.GaugeMetricFamily(
                f"{p}batch_cap", "The most items a batch takes now: batch_size, or less after splits.", labels=label),
            "adaptive_wait": c.GaugeMetricFamily(
                f"{p}adaptive_wait_seconds", "Under adaptive waits: the longest a batch waits now (0: at once).",
                labels=label),
        }

    def _add_samples(self, f: dict[str, Any], name: str, processor: Any) -> None:
        s = processor._snapshot(self._bounds)
        lab = [name]
        f["queue_size"].add_metric(lab, s["queue_size"])
        f["oldest_wait"].add_metric(lab, s["oldest_wait_ms"] / 1e3)
        f["processed"].add_metric(lab, s["total_processed"])
        for reason, count in s["batches_by_reason"].items():
            f["batches"].add_metric([name, reason], count)
        f["failed_batches"].add_metric(lab, s["failed_batches"])
        f["failed_items"].add_metric(lab, s["failed_items"])
        f["rejected"].add_metric(lab, s["rejected_items"])
        f["cancelled"].add_metric(lab, s["cancelled_items"])
        f["expired"].add_metric(lab, s["expired_items"])
        for key in ("queue_wait", "batch_latency"):
            counts, total_s, count = s[key]
            buckets = [(_le(b), n) for b, n in zip(self._bounds, counts)] + [("+Inf", count)]
            f[key].add_metric(lab, buckets, total_s)
        f["batch_size"].add_metric(lab, *_size_buckets(s["batch_size_histogram"], processor.batch_size))
        f["splits"].add_metric(lab, s["split_batches"])
        f["cap"].add_metric(lab, s["batch_cap"])
        f["adaptive_wait"].add_metric(lab, Learned(*s["learned"]).adaptive_wait_ms / 1e3)
        efficiency = processor._padding_efficiency()
        if efficiency is not None:
            f["padding"].add_metric(lab, efficiency)


def _le(bound: float) -> str:
    return repr(float(bound))


def _size_buckets(histogram: dict[int, int], batch_size: int) -> tuple[list[tuple[str, int]], int]:
    """Cumulative buckets at 1, 2, 4, ... up to batch_size, and the sum of sizes."""
    bounds = []
    b = 1
    while b < batch_size:
        bounds.append(b)
        b *= 2
    bounds.append(batch_size)
    sizes = sorted(histogram.items())
    buckets, seen, i = [], 0, 0
    for bound in bounds:
        while i < len(sizes) and sizes[i][0] <= bound:
            seen += sizes[i][1]
            i += 1
        buckets.append((_le(bound), seen))
    total = sum(histogram.values())
    buckets.append(("+Inf", total))
    return buckets, sum(n * k for n, k in histogram.items())


def export_prometheus(
    *processors: Any,
    names: Optional[Sequence[str]] = None,
    registry: Any = None,
    namespace: str = "batched",
    latency_buckets_s: Sequence[float] = DEFAULT_LATENCY_BUCKETS_S,
) -> PrometheusCollector:
    """Registers a :class:`PrometheusCollector` of ``processors`` on ``registry``
    (default: prometheus_client's global REGISTRY) and returns it; serve it
    as usual (``prometheus_client.start_http_server``, or the ASGI app)."""
    collector = PrometheusCollector(
        processors, names=names, namespace=namespace, latency_buckets_s=latency_buckets_s)
    if registry is None:
        registry = _prometheus().REGISTRY
    registry.register(collector)
    return collector


__all__ = ["DEFAULT_LATENCY_BUCKETS_S", "PrometheusCollector", "export_prometheus"]

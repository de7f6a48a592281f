"""Statistics snapshots (dataclasses, as in batched 0.1.5).

Imported on the first read of ``processor.stats``, not by ``import batched``:
dataclasses and typing alone cost more than all of ``import batched`` may.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, NamedTuple, Optional


@dataclass
class CacheStats:
    """Hit/miss counts and cumulative times (seconds) of an aio processor's cache."""

    gets: int = 0
    hits: int = 0
    sets: int = 0
    total_get_time: float = 0.0
    total_hit_time: float = 0.0
    total_set_time: float = 0.0

    @property
    def avg_get_time(self) -> float:
        return self.total_get_time / self.gets if self.gets else 0.0

    @property
    def avg_hit_time(self) -> float:
        return self.total_hit_time / self.hits if self.hits else 0.0

    @property
    def avg_set_time(self) -> float:
        return self.total_set_time / self.sets if self.sets else 0.0

    def update_get(self, *, hit: bool, time_taken: float) -> None:
        self.gets += 1
        self.total_get_time += time_taken
        if hit:
            self.hits += 1
            self.total_hit_time += time_taken

    def update_set(self, *, time_taken: float) -> None:
        self.sets += 1
        self.total_set_time += time_taken


class Percentiles(NamedTuple):
    """p50/p95/p99 of a duration in milliseconds, within about 6% of the true values."""

    p50: float = 0.0
    p95: float = 0.0
    p99: float = 0.0


class Learned(NamedTuple):
    """What a processor has learned of its batch function and its traffic
    (docs/semantics.md, 13): the time of a batch of n items, fitted as
    ``batch_cost_ms + per_item_ms * n``, and, under ``adaptive=True``, the
    arrival rate, how many items follow one that finds the queue empty
    within ``batch_cost_ms`` (``followers``), and the wait they set: a batch
    leaves with ``adaptive_batch`` items or once its oldest item has waited
    ``adaptive_wait_ms`` (1 and 0.0: at once)."""

    batch_cost_ms: float = 0.0
    per_item_ms: float = 0.0
    batches_seen: int = 0
    arrivals_per_s: float = 0.0
    followers: float = 0.0
    adaptive_batch: int = 1
    adaptive_wait_ms: float = 0.0


@dataclass
class BatchProcessorStats:
    """A consistent snapshot of a processor's statistics.

    The first six fields are those of batched 0.1.5 (times in seconds).
    """

    queue_size: int = 0
    total_processed: int = 0
    total_batches: int = 0
    avg_batch_size: float = 0.0
    avg_processing_time: float = 0.0
    cache_stats: Optional[CacheStats] = None
    #: per item, from the call to the dispatch of its batch
    queue_wait_ms: Percentiles = field(default_factory=Percentiles)
    #: per batch, the run time of the batch function
    batch_latency_ms: Percentiles = field(default_factory=Percentiles)
    #: batch size -> batches dispatched with that size
    batch_size_histogram: dict[int, int] = field(default_factory=dict)
    #: why batches left the queue: full, timeout, budget, drain, deadline -> batches
    batches_by_reason: dict[str, int] = field(default_factory=dict)
    #: batches whose function raised or returned a wrong result
    failed_batches: int = 0
    #: items of those batches (their callers got the batch's error)
    failed_items: int = 0
    #: items refused with QueueFullError
    rejected_items: int = 0
    #: items taken out of the queue because their caller was cancelled
    cancelled_items: int = 0
    #: items taken out of the queue unsent because their deadline could no
    #: longer be met (their callers got DeadlineExceeded)
    expired_items: int = 0
    #: how long the oldest item still queued has waited (0.0: none queued)
    oldest_wait_ms: float = 0.0
    #: inference processors: real rows' steps / steps of the padded batches
    #: (1.0: no padding at all); None for other processors or before a batch
    padding_efficiency: Optional[float] = None
    #: batches (or parts of one) split in two and retried because the batch
    #: function raised one of ``split_on`` (the batch was too big)
    split_batches: int = 0
    #: the most items a batch takes now: batch_size, or less after splits
    batch_cap: int = 0
    #: the batch cost and arrival rate learned, and the adaptive wait
    learned: Learned = field(default_factory=Learned)

    def update(self, batch_size: int, processing_time: float) -> None:
        """Adds one batch (0.1.5 API; processors keep their counts in the core)."""
        self.total_processed += batch_size
        self.total_batches += 1
        self.avg_batch_size = self.total_processed / self.total_batches
        self.avg_processing_time += (processing_time - self.avg_processing_time) / self.total_batches

    def clone(self, *, queue_size: int, cache_stats: Optional[CacheStats] = None) -> BatchProcessorStats:
        """A copy with another queue size and cache stats (0.1.5 API)."""
        return replace(self, queue_size=queue_size, cache_stats=cache_stats)

    @classmethod
    def _from_core(
        cls,
        s: dict[str, Any],
        cache_stats: Optional[CacheStats] = None,
        padding_efficiency: Optional[float] = None,
    ) -> BatchProcessorStats:
        """The snapshot of a processor from a core snapshot (Engine.stats: its
        keys are this class's field names, plus "total_run_s")."""
        values: dict[str, Any] = {k: _TUPLES.get(k, Percentiles)(*v) if isinstance(v, tuple) else v
                                  for k, v in s.items() if k in _FIELDS}
        batches = s["total_batches"]
        return cls(
            **values,
            avg_batch_size=s["total_processed"] / batches if batches else 0.0,
            avg_processing_time=s["total_run_s"] / batches if batches else 0.0,
            cache_stats=cache_stats,
            padding_efficiency=padding_efficiency,
        )


_FIELDS = frozenset(f.name for f in fields(BatchProcessorStats))
_TUPLES: dict[str, Any] = {"learned": Learned}  # the other tuples are Percentiles
# Gauges of several queues combine by their largest value; every other number adds up.
_LARGEST = frozenset({"oldest_wait_ms", "batch_cap"})


def merge_snapshots(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The core snapshots of several queues (batched.aio: one per event loop)
    as one: counts, sums and histograms add up; the age of the oldest item and
    each percentile are the largest of theirs. Needs at least one part."""
    if len(parts) == 1:
        return parts[0]
    merged: dict[str, Any] = {}
    for key, first in parts[0].items():
        values = [p[key] for p in parts if key in p]
        if isinstance(first, dict):  # histograms by size or by reason
            total: dict[Any, int] = {}
            for v in values:
                for k, n in v.items():
                    total[k] = total.get(k, 0) + n
            merged[key] = total
        elif isinstance(first, tuple) and isinstance(first[0], list):  # exporters' (counts, sum, count)
            merged[key] = ([sum(c) for c in zip(*(v[0] for v in values))], sum(v[1] for v in values),
                           sum(v[2] for v in values))
        elif isinstance(first, tuple):  # percentiles, what was learned: the largest of each
            merged[key] = tuple(max(v[i] for v in values) for i in range(len(first)))
        else:
            merged[key] = max(values) if key in _LARGEST else sum(values)
    return merged


def histograms_at(snapshot: dict[str, Any], bounds_s: Optional[Sequence[float]]) -> dict[str, Any]:
    """A snapshot taken at the core's own bucket bounds (histogram_bounds_s),
    with its exporters' histograms at ``bounds_s`` instead (none if None)."""
    from batched._core import counts_at_bounds  # noqa: PLC0415

    out = {}
    for key, value in snapshot.items():
        if isinstance(value, tuple) and value and isinstance(value[0], list):
            if bounds_s is not None:
                out[key] = (counts_at_bounds(value[0], bounds_s), value[1], value[2])
        else:
            out[key] = value
    return out

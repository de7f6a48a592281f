"""Statistics snapshots (dataclasses, as in batched 0.1.5).

Imported on the first read of ``processor.stats``, not by ``import batched``:
dataclasses and typing alone cost more than all of ``import batched`` may.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
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
    #: why batches left the queue: full, timeout, budget, drain -> batches
    batches_by_reason: dict[str, int] = field(default_factory=dict)
    #: batches whose function raised or returned a wrong result
    failed_batches: int = 0
    #: items of those batches (their callers got the batch's error)
    failed_items: int = 0
    #: items refused with QueueFullError
    rejected_items: int = 0
    #: items taken out of the queue because their caller was cancelled
    cancelled_items: int = 0
    #: how long the oldest item still queued has waited (0.0: none queued)
    oldest_wait_ms: float = 0.0
    #: inference processors: real rows' steps / steps of the padded batches
    #: (1.0: no padding at all); None for other processors or before a batch
    padding_efficiency: Optional[float] = None

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
        batches = s["total_batches"]
        return cls(
            queue_size=s["queue_size"],
            total_processed=s["total_processed"],
            total_batches=batches,
            avg_batch_size=s["total_processed"] / batches if batches else 0.0,
            avg_processing_time=s["total_run_s"] / batches if batches else 0.0,
            cache_stats=cache_stats,
            queue_wait_ms=Percentiles(*s["queue_wait_ms"]),
            batch_latency_ms=Percentiles(*s["batch_latency_ms"]),
            batch_size_histogram=s["batch_size_histogram"],
            batches_by_reason=s["batches_by_reason"],
            failed_batches=s["failed_batches"],
            failed_items=s["failed_items"],
            rejected_items=s["rejected_items"],
            cancelled_items=s["cancelled_items"],
            oldest_wait_ms=s["oldest_wait_ms"],
            padding_efficiency=padding_efficiency,
        )

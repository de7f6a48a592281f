"""Statistics snapshots. Kept free of typing/dataclasses/enum imports, which
would cost more than all of ``import batched`` may (SPEC: no slow imports)."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Optional


class _Record:
    """Plain value class: keyword construction, repr and equality over _fields.

    Used instead of dataclasses, whose import alone costs more than all of
    ``import batched`` may.
    """

    __slots__ = ()
    _fields: tuple[str, ...] = ()

    def __repr__(self) -> str:
        body = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._fields)
        return f"{type(self).__name__}({body})"

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in self._fields)

    __hash__ = None  # type: ignore[assignment]  # mutable, like a dataclass

    def _asdict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._fields}


class CacheStats(_Record):
    """Hit/miss counts and cumulative times (seconds) of an aio processor's cache."""

    __slots__ = _fields = ("gets", "hits", "sets", "total_get_time", "total_hit_time", "total_set_time")

    def __init__(
        self,
        gets: int = 0,
        hits: int = 0,
        sets: int = 0,
        total_get_time: float = 0.0,
        total_hit_time: float = 0.0,
        total_set_time: float = 0.0,
    ) -> None:
        self.gets = gets
        self.hits = hits
        self.sets = sets
        self.total_get_time = total_get_time
        self.total_hit_time = total_hit_time
        self.total_set_time = total_set_time

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


class Percentiles(tuple):
    """(p50, p95, p99) of a duration in milliseconds, within about 6% of the true values."""

    __slots__ = ()

    def __new__(cls, p50: float = 0.0, p95: float = 0.0, p99: float = 0.0) -> Percentiles:
        return tuple.__new__(cls, (p50, p95, p99))

    p50 = property(lambda self: self[0], doc="median")
    p95 = property(lambda self: self[1])
    p99 = property(lambda self: self[2])

    def __repr__(self) -> str:
        return f"Percentiles(p50={self[0]!r}, p95={self[1]!r}, p99={self[2]!r})"


class BatchProcessorStats(_Record):
    """A consistent snapshot of a processor's statistics.

    The first six fields are those of batched 0.1.5 (times in seconds); the
    others are new: queue_wait_ms (per item, call to dispatch) and
    batch_latency_ms (per batch, run time of the batch function) as
    Percentiles; batch_size_histogram (size -> batches); batches_by_reason
    (full, timeout, budget, backlog -> batches); failed_batches (the function
    raised or returned a wrong result); rejected_items (QueueFullError).
    """

    __slots__ = _fields = (
        "queue_size",
        "total_processed",
        "total_batches",
        "avg_batch_size",
        "avg_processing_time",
        "cache_stats",
        "queue_wait_ms",
        "batch_latency_ms",
        "batch_size_histogram",
        "batches_by_reason",
        "failed_batches",
        "rejected_items",
    )

    def __init__(
        self,
        queue_size: int = 0,
        total_processed: int = 0,
        total_batches: int = 0,
        avg_batch_size: float = 0.0,
        avg_processing_time: float = 0.0,
        cache_stats: Optional[CacheStats] = None,
        queue_wait_ms: Percentiles = Percentiles(),
        batch_latency_ms: Percentiles = Percentiles(),
        batch_size_histogram: Optional[dict[int, int]] = None,
        batches_by_reason: Optional[dict[str, int]] = None,
        failed_batches: int = 0,
        rejected_items: int = 0,
    ) -> None:
        self.queue_size = queue_size
        self.total_processed = total_processed
        self.total_batches = total_batches
        self.avg_batch_size = avg_batch_size
        self.avg_processing_time = avg_processing_time
        self.cache_stats = cache_stats
        self.queue_wait_ms = queue_wait_ms
        self.batch_latency_ms = batch_latency_ms
        self.batch_size_histogram = {} if batch_size_histogram is None else batch_size_histogram
        self.batches_by_reason = {} if batches_by_reason is None else batches_by_reason
        self.failed_batches = failed_batches
        self.rejected_items = rejected_items

    @classmethod
    def _from_core(cls, s: dict[str, Any], cache_stats: Optional[CacheStats] = None) -> BatchProcessorStats:
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
            rejected_items=s["rejected_items"],
        )

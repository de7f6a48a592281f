"""``batched.aio.dynamically``: dynamic batching for asyncio callers.

The batching policy is the C++ one of the threaded front end. What runs the
batch function depends on its kind:

* ``async def``: the event-loop driver, on the callers' own loop. Each event
  loop that calls the processor gets its own queue (one C++ scheduler per
  loop, driven by ``loop.call_at`` timers), and its batches run as tasks on
  that loop, at most ``num_workers`` at once: the function may use resources
  bound to the loop (HTTP clients, DB pools), and a loop that shuts down can
  only cancel its own callers' batches. With one loop there is one queue.
* a plain function: the processor's own worker threads (never the loop, never
  the default executor), as in ``batched.dynamically``; one queue serves
  every loop and thread, and each caller's result is delivered on its loop.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import warnings
import weakref
from types import GenericAlias

from batched import _validate
from batched._core import Engine, counts_at_bounds, histogram_bounds_s
from batched.batch_processor import await_call, make_engine
from batched.decorator import _is_coroutine_function, decorator_options, dynamic_batch
from batched.types import AsyncCache, BatchProcessorStats, PriorityStrategy

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any, Callable, Generic, Optional, Union, overload

    from typing_extensions import Unpack

    from batched._typing import AsyncDecorator, AsyncItemsFn, AsyncItemsMethod, AsyncOptions, PerInstance, S
    from batched.types import T, U
else:
    from batched.decorator import RuntimeGeneric as Generic

    T = U = None  # type variables: for type checkers only

_warned_batch_item_cls = False


class AsyncBatchProcessor(_validate.CommonOptions, Generic[T, U]):
    """Batches the awaited calls of many tasks into calls of ``func``.

    ``func`` takes a list of items and returns (or, if async, returns when
    awaited) one result per item. ``await processor(item)`` gives the item's
    result; ``await processor([a, b])`` a list in the same order.
    """

    if not TYPE_CHECKING:
        __class_getitem__ = classmethod(GenericAlias)

    cache: Optional[AsyncCache[T, U]]

    def __init__(
        self,
        func: AsyncItemsFn[T, U],
        *,
        batch_size: int = 32,
        timeout_ms: float = 5.0,
        small_batch_threshold: int = 8,
        cache: Optional[AsyncCache[T, U]] = None,
        max_batch_length: Optional[int] = None,
        priority_strategy: PriorityStrategy = PriorityStrategy.NONE,
        batch_item_cls: Any = None,
        max_queue_size: Optional[int] = None,
        num_workers: int = 1,
        aging_ms: float = 100.0,
    ) -> None:
        _validate.common_options(
            self,
            func,
            batch_size=batch_size,
            timeout_ms=timeout_ms,
            small_batch_threshold=small_batch_threshold,
            max_queue_size=max_queue_size,
            num_workers=num_workers,
            aging_ms=aging_ms,
        )
        if cache is not None and not isinstance(cache, AsyncCache):
            raise TypeError(f"cache must follow batched.types.AsyncCache, got {type(cache).__name__}")
        if not isinstance(priority_strategy, PriorityStrategy):
            raise TypeError(f"priority_strategy must be a batched.types.PriorityStrategy, got {priority_strategy!r}")
        if batch_item_cls is not None:
            _warn_batch_item_cls_once()
        self.max_batch_length = _validate.optional_positive_int("max_batch_length", max_batch_length)
        self.priority_strategy = priority_strategy
        self.cache = cache
        self.is_async = _is_coroutine_function(func)
        self._closed = False
        # Sync functions: one engine with worker threads for every loop.
        # Async functions: one event-loop-driven engine per calling loop.
        self._engine: Optional[Engine] = None if self.is_async else self._new_engine()
        # Keyed by a weak reference to the loop: a loop that is gone leaves its
        # engine here until _retire_closed_loops keeps its stats and drops it.
        self._loop_engines: dict[weakref.ref[asyncio.AbstractEventLoop], Engine] = {}
        # Stats of the engines of loops that are gone, kept for `stats`.
        self._retired: list[dict[str, Any]] = []
        self._last: tuple[Callable[[], Any], Optional[Engine]] = (lambda: None, None)
        self._lookup_lock = threading.Lock()
        self._finalizer = weakref.finalize(self, _shutdown_all, self._engines_ref(), False)

    def _new_engine(self) -> Engine:
        return make_engine(
            self,
            max_batch_length=self.max_batch_length,
            # As in 0.1.5: NONE is arrival order; LENGTH and PRIORITY put small
            # calls first, LENGTH then ranks bulk calls by length.
            small_first=self.priority_strategy is not PriorityStrategy.NONE,
            priority_by_length=self.priority_strategy is PriorityStrategy.LENGTH,
            event_loop_driver=self.is_async,
            **self._engine_options(),
        )

    def _engine_options(self) -> dict[str, Any]:
        """Front-end specific options of the engines (see make_engine)."""
        return {}

    def _engines_ref(self) -> Callable[[], list[Engine]]:
        # For the finalizer: reaches the engines without keeping self alive.
        fixed, per_loop = self._engine, self._loop_engines
        return lambda: ([fixed] if fixed is not None else []) + list(per_loop.values())

    def _engine_for(self, loop: asyncio.AbstractEventLoop) -> Engine:
        if self._engine is not None:
            return self._engine
        last_loop, last_engine = self._last  # one read: a consistent pair
        if last_loop() is loop:  # the common case: one loop, asked again
            return last_engine  # type: ignore[return-value]
        with self._lookup_lock:  # callers on several threads' loops
            key = weakref.ref(loop)
            engine = self._loop_engines.get(key)
            if engine is None:
                self._retire_closed_loops()
                engine = self._loop_engines[key] = self._new_engine()
                if self._closed:
                    engine.shutdown(False)  # calls fail with ShutdownError, as on any shut-down engine
            self._last = (key, engine)
        return engine

    def _retire_closed_loops(self) -> None:
        # A closed loop's engine is idle for good: keep its stats, drop it.
        # Called with _lookup_lock held.
        for key, engine in list(self._loop_engines.items()):
            loop = key()
            if loop is None or loop.is_closed():
                # Shut down first (its queue is empty then: no stale gauges);
                # histograms at the finest bounds, so exporters keep its counts.
                engine.shutdown(False)
                self._retired = [_merge_stats([*self._retired, engine.stats(histogram_bounds_s())])]
                del self._loop_engines[key]

    def _engines(self) -> list[Engine]:
        return self._engines_ref()()

    if TYPE_CHECKING:
        # A list is always several items (as at run time), so list[T] goes first.
        @overload
        async def __call__(self, items: list[T]) -> list[U]: ...
        @overload
        async def __call__(self, items: T) -> U: ...

    async def __call__(self, items: Union[T, list[T]]) -> Union[U, list[U]]:
        """The result of one item, or the list of results of a list of items."""
        if self.cache is None:
            return await await_call(self._engine_for(asyncio.get_running_loop()), items, asyncio)  # type: ignore[no-any-return]
        return await self._call_through_cache(items, asyncio.get_running_loop())  # type: ignore[no-any-return]

    async def _call_through_cache(self, items: Any, loop: asyncio.AbstractEventLoop) -> Any:
        # Cached items never enter the queue; the others are batched, then cached.
        single = not isinstance(items, list)
        wanted = [items] if single else items
        results: list[Any] = [None] * len(wanted)
        missing: list[int] = []
        for i, item in enumerate(wanted):
            hit = await self.cache.get(item)  # type: ignore[union-attr]
            if hit is None:
                missing.append(i)
            else:
                results[i] = hit
        if missing:
            computed = await await_call(self._engine_for(loop), [wanted[i] for i in missing], asyncio)
            for i, value in zip(missing, computed):
                results[i] = value
                await self.cache.set(wanted[i], value)  # type: ignore[union-attr]
        return results[0] if single else results

    @property
    def stats(self) -> BatchProcessorStats:
        """A snapshot of the statistics. With an async function called from
        several loops, counts and histograms are summed over the loops' queues
        and each percentile is the largest of theirs."""
        cache_stats = self.cache.stats() if self.cache is not None else None
        return BatchProcessorStats._from_core(self._snapshot(), cache_stats, self._padding_efficiency())

    def _snapshot(self, latency_bounds_s: Optional[Sequence[float]] = None) -> dict[str, Any]:
        """The merged statistics of every loop's queue, as a dict (see Engine.stats)."""
        with self._lookup_lock:  # a loop retired meanwhile would be counted twice, or not at all
            retired = [_at_bounds(r, latency_bounds_s) for r in self._retired]
            live = [e.stats(latency_bounds_s) for e in self._engines()]
        return _merge_stats(retired + live)

    def _padding_efficiency(self) -> Optional[float]:
        return None  # inference processors: see PaddingOptions

    def clear_stats(self) -> None:
        """Sets the statistics back to zero (0.1.5 API)."""
        with self._lookup_lock:
            self._retired = []
        for engine in self._engines():
            engine.clear_stats()

    def shutdown(self, wait: bool = True) -> None:
        """Stops the processor; items still queued fail with ``batched.ShutdownError``."""
        self._closed = True
        _shutdown_all(self._engines_ref(), wait)

    def __repr__(self) -> str:
        kind = "async" if self.is_async else "sync"
        queued = sum(e.queue_size() for e in self._engines())
        return (
            f"<{type(self).__name__} {getattr(self.batch_func, '__qualname__', '?')} ({kind}) "
            f"batch_size={self.batch_size} timeout_ms={self.timeout_ms} queued={queued}>"
        )


def _shutdown_all(engines: Callable[[], list[Engine]], wait: bool) -> None:
    for engine in engines():
        engine.shutdown(wait)


def _at_bounds(stats: dict[str, Any], bounds_s: Optional[Sequence[float]]) -> dict[str, Any]:
    """A retired snapshot (histograms at the core's own bucket bounds) with
    its histograms at ``bounds_s``, or none if None."""
    out = dict(stats)
    for key in ("queue_wait", "batch_latency"):
        counts, total_s, count = out.pop(key)
        if bounds_s is not None:
            out[key] = (counts_at_bounds(counts, bounds_s), total_s, count)
    return out


def _merge_stats(parts: list[dict[str, Any]]) -> dict[str, Any]:
    if not parts:
        return Engine.empty_stats()
    if len(parts) == 1:
        return parts[0]
    merged = dict(parts[0])
    for key in ("queue_size", "total_processed", "total_batches", "failed_batches", "failed_items",
                "rejected_items", "cancelled_items", "total_run_s"):
        merged[key] = sum(p[key] for p in parts)
    merged["oldest_wait_ms"] = max(p["oldest_wait_ms"] for p in parts)
    for key in ("queue_wait", "batch_latency"):  # exporters' histograms, when asked for
        # (closed loops' retired snapshots have none: their counts leave these)
        hists = [p[key] for p in parts if key in p]
        if hists:
            merged[key] = (
                [sum(counts) for counts in zip(*(h[0] for h in hists))],
                sum(h[1] for h in hists),
                sum(h[2] for h in hists),
            )
    for key in ("queue_wait_ms", "batch_latency_ms"):
        merged[key] = tuple(max(p[key][i] for p in parts) for i in range(3))
    for key in ("batch_size_histogram", "batches_by_reason"):
        total: dict[Any, int] = {}
        for p in parts:
            for k, v in p[key].items():
                total[k] = total.get(k, 0) + v
        merged[key] = total
    return merged


def _warn_batch_item_cls_once() -> None:
    global _warned_batch_item_cls
    if not _warned_batch_item_cls:
        _warned_batch_item_cls = True
        warnings.warn(
            "batch_item_cls is ignored: items are queued by the C++ core, not as Python objects",
            UserWarning,
            stacklevel=3,
        )


if TYPE_CHECKING:
    # Bare (@aio.dynamically) on a function or a method, plain or async def,
    # or with options (@aio.dynamically(batch_size=64)): a decorator for either.
    @overload
    def dynamically(func: AsyncItemsFn[T, U], /, **options: Unpack[AsyncOptions]) -> AsyncBatchProcessor[T, U]: ...
    @overload
    def dynamically(
        func: AsyncItemsMethod[S, T, U], /, **options: Unpack[AsyncOptions]
    ) -> PerInstance[S, AsyncBatchProcessor[T, U]]: ...
    @overload
    def dynamically(func: None = None, /, **options: Unpack[AsyncOptions]) -> AsyncDecorator: ...


def dynamically(
    func: Optional[Callable[..., Any]] = None,
    /,
    *,
    batch_size: int = 32,
    timeout_ms: float = 5.0,
    small_batch_threshold: int = 8,
    max_batch_length: Optional[int] = None,
    priority_strategy: PriorityStrategy = PriorityStrategy.NONE,
    cache: Optional[AsyncCache[Any, Any]] = None,
    batch_item_cls: Any = None,
    max_queue_size: Optional[int] = None,
    num_workers: int = 1,
    aging_ms: float = 100.0,
) -> Any:
    """Batch the awaited calls of a function (sync or async) that takes a list.

    Usable bare or with arguments, on functions and on methods (one processor
    per instance). See ``AsyncBatchProcessor``.
    """
    options = decorator_options(locals())
    _validate.at_decoration(batch_size, timeout_ms)
    return dynamic_batch(functools.partial(AsyncBatchProcessor, **options), func)


__all__ = ["AsyncBatchProcessor", "dynamically"]

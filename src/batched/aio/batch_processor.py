"""``batched.aio.dynamically``: dynamic batching for asyncio callers.

The batching policy is the C++ one of the threaded front end
(docs/semantics.md). What runs the batch function depends on its kind:

* ``async def``: the event-loop driver, on the callers' own loop. Each event
  loop that calls the processor gets its own engine (one C++ scheduler per
  loop, driven by ``loop.call_at`` timers), and its batches run as tasks on
  that loop, at most ``num_workers`` at once: the function may use resources
  bound to the loop (HTTP clients, DB pools), and a loop that shuts down can
  only cancel its own callers' batches. With one loop there is one queue.
* a plain function: the processor's own worker threads (never the loop, never
  the default executor), as in ``batched.dynamically``; one queue serves
  every loop and thread, and each caller's result is delivered on its loop.

Calls of at most ``small_batch_threshold`` items go first unless
``priority_strategy=PriorityStrategy.NONE`` (arrival order) is given.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from types import GenericAlias

from batched._core import Engine, ItemCollator, LoopDriver, ThreadDriver, empty_stats, histogram_bounds_s
from batched._frontend import Processor, name_of, outcome_of, submitted
from batched._options import ProcessorOptions
from batched._stats import BatchProcessorStats, histograms_at, merge_snapshots
from batched.decorator import Dynamically, _is_coroutine_function
from batched.types import AsyncCache, PriorityStrategy

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any, Callable, Hashable, Generic, Optional, Protocol, Union, overload

    from typing_extensions import Unpack

    from batched._core import Collator
    from batched._typing import AsyncItemsFn, AsyncItemsMethod, AsyncOptionArgs, PerInstance, S, SplitOn
    from batched.types import T, U
else:
    from batched.decorator import RuntimeGeneric as Generic

    T = U = None  # type variables: for type checkers only


class AsyncBatchProcessor(Processor, Generic[T, U]):
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
        priority_strategy: Optional[PriorityStrategy] = None,
        batch_item_cls: Any = None,
        max_queue_size: Optional[int] = None,
        num_workers: int = 1,
        aging_ms: float = 100.0,
        deadline_ms: Optional[float] = None,
        group_by: Optional[Callable[[Any], Hashable]] = None,
        adaptive: bool = False,
        prefetch: bool = False,
        split_on: Optional[SplitOn] = None,
    ) -> None:
        self._setup(func, ProcessorOptions.of(locals()))

    def _setup(self, func: Callable[..., Any], options: ProcessorOptions) -> None:
        super()._setup(func, options)
        self.is_async = _is_coroutine_function(func)
        if self.is_async and options.prefetch:
            raise ValueError("prefetch needs a plain (not async def) batch function: it forms the next batch "
                             "on a second worker thread, and an async def one runs on its callers' event loop")
        self._closed = False
        self._collator = self._make_collator()  # shared by the engines of every loop
        # Sync functions: one engine with worker threads for every loop.
        # Async functions: one event-loop-driven engine per calling loop.
        self._engine: Optional[Engine] = None if self.is_async else self._new_engine(None)
        # Keyed by a weak reference to the loop: a loop that is gone leaves its
        # engine here until _retire_closed_loops keeps its stats and drops it.
        self._loop_engines: dict[weakref.ref[asyncio.AbstractEventLoop], Engine] = {}
        # Stats of the engines of loops that are gone, kept for `stats`.
        self._retired: list[dict[str, Any]] = []
        self._last: tuple[Callable[[], Any], Optional[Engine]] = (lambda: None, None)
        self._lookup_lock = threading.Lock()
        self._finalizer = weakref.finalize(self, _shutdown_all, self._engines_ref(), False)

    def _make_collator(self) -> Collator:
        return ItemCollator(name_of(self.batch_func))

    def _engine_function(self) -> Callable[..., Any]:
        """What the engines call with each batch."""
        return self.batch_func

    def _new_engine(self, loop: Optional[asyncio.AbstractEventLoop]) -> Engine:
        n = self.options.num_workers
        driver = LoopDriver(loop, n) if self.is_async else ThreadDriver(n, self.options.prefetch)
        return Engine(self._engine_function(), self.options, name_of(self.batch_func), self._collator, driver)

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
                engine = self._loop_engines[key] = self._new_engine(loop)
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
                self._retired = [merge_snapshots([*self._retired, engine.stats(histogram_bounds_s())])]
                del self._loop_engines[key]

    def _engines(self) -> list[Engine]:
        return self._engines_ref()()

    def _put_options(self, options: ProcessorOptions) -> None:
        with self._lookup_lock:  # an engine made for a new loop meanwhile gets them too
            super()._put_options(options)

    if TYPE_CHECKING:
        # A list is always several items (as at run time), so list[T] goes first.
        @overload
        async def __call__(self, items: list[T]) -> list[U]: ...
        @overload
        async def __call__(self, items: T) -> U: ...

    async def __call__(self, items: Union[T, list[T]]) -> Union[U, list[U]]:
        """The result of one item, or the list of results of a list of items."""
        loop = asyncio.get_running_loop()
        if self.options.cache is not None:  # (not self.cache: a property call per item on the hot path)
            return await self._call_through_cache(items, loop)  # type: ignore[no-any-return]
        if isinstance(items, list) and not items:
            return []
        call = submitted(self._engine_for(loop), items, loop)
        try:  # (outcome_of inline: a coroutine per call costs more than these lines)
            return await call.future  # type: ignore[no-any-return]
        except asyncio.CancelledError:
            call.cancel()
            raise

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
            computed = await outcome_of(submitted(self._engine_for(loop), [wanted[i] for i in missing], loop))
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
            retired = [histograms_at(r, latency_bounds_s) for r in self._retired]
            live = [e.stats(latency_bounds_s) for e in self._engines()]
        return merge_snapshots(retired + live or [empty_stats(latency_bounds_s)])

    def _padding_efficiency(self) -> Optional[float]:
        return None  # inference processors: see PaddingAttributes

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
            f"<{type(self).__name__} {name_of(self.batch_func)} ({kind}) "
            f"batch_size={self.batch_size} timeout_ms={self.timeout_ms} queued={queued}>"
        )


def _shutdown_all(engines: Callable[[], list[Engine]], wait: bool) -> None:
    for engine in engines():
        engine.shutdown(wait)


if TYPE_CHECKING:

    class AsyncDecorator(Protocol):
        """``batched.aio.dynamically(...)``: decorates a function or a method, plain or ``async def``."""

        @overload
        def __call__(self, func: AsyncItemsFn[T, U], /) -> AsyncBatchProcessor[T, U]: ...
        @overload
        def __call__(self, func: AsyncItemsMethod[S, T, U], /) -> PerInstance[S, AsyncBatchProcessor[T, U]]: ...


if TYPE_CHECKING:
    # Bare (@aio.dynamically) on a function or a method, plain or async def,
    # or with options (@aio.dynamically(batch_size=64)): a decorator for either.
    @overload
    def dynamically(func: AsyncItemsFn[T, U], /, **options: Unpack[AsyncOptionArgs]) -> AsyncBatchProcessor[T, U]: ...
    @overload
    def dynamically(
        func: AsyncItemsMethod[S, T, U], /, **options: Unpack[AsyncOptionArgs]
    ) -> PerInstance[S, AsyncBatchProcessor[T, U]]: ...
    @overload
    def dynamically(func: None = None, /, **options: Unpack[AsyncOptionArgs]) -> AsyncDecorator: ...
    def dynamically(func: Optional[Callable[..., Any]] = None, /, *args: Any, **options: Any) -> Any: ...
else:
    # The options, their defaults and their checks come from AsyncBatchProcessor.__init__.
    dynamically = Dynamically(
        AsyncBatchProcessor,
        """Batch the awaited calls of a function (sync or async) that takes a list.

    Usable bare or with arguments, on functions and on methods (one processor
    per instance). See ``AsyncBatchProcessor``.""",
    )


__all__ = ["AsyncBatchProcessor", "dynamically"]

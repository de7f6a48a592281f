"""The threaded front end: ``batched.dynamically`` and ``BatchProcessor``."""

from __future__ import annotations

import functools
import weakref
from types import GenericAlias

from batched import _validate
from batched._core import Engine
from batched.decorator import decorator_options, dynamic_batch

# typing is not imported at run time: it alone would double the import time.
# Type checkers see typing.Generic, overloads and type variables; at run time
# Generic is a stand-in and the type variables are None.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any, Callable, Generic, Optional, Union, overload

    from typing_extensions import Unpack

    from batched._stats import BatchProcessorStats
    from batched._typing import Decorator, ItemsFn, ItemsMethod, Options, PerInstance, S
    from batched.types import T, U
else:
    from batched.decorator import RuntimeGeneric as Generic

    T = U = None

_asyncio = None  # imported on the first acall: asyncio is slow to import


class BatchProcessor(_validate.CommonOptions, Generic[T, U]):
    """Batches the calls of many threads into calls of ``batch_func``.

    ``batch_func`` takes a list of items and returns one result per item. Each
    call of the processor (one item, or a list) blocks until its own results
    are in; ``acall`` does the same for asyncio code without blocking the loop.
    Batching runs in the C++ core; ``num_workers`` threads call ``batch_func``.
    """

    if not TYPE_CHECKING:
        # BatchProcessor[T, U] in annotations, without typing.Generic.
        __class_getitem__ = classmethod(GenericAlias)


    def __init__(
        self,
        _func: ItemsFn[T, U],
        batch_size: int = 32,
        timeout_ms: float = 5.0,
        small_batch_threshold: int = 8,
        *,
        max_queue_size: Optional[int] = None,
        num_workers: int = 1,
        aging_ms: float = 100.0,
    ) -> None:
        _validate.common_options(
            self,
            _func,
            batch_size=batch_size,
            timeout_ms=timeout_ms,
            small_batch_threshold=small_batch_threshold,
            max_queue_size=max_queue_size,
            num_workers=num_workers,
            aging_ms=aging_ms,
        )
        self._engine = make_engine(self, **self._engine_options())
        # Garbage collection of the processor stops its workers (they hold the
        # engine, not the processor).
        self._finalizer = weakref.finalize(self, self._engine.shutdown, False)


    def _engine_options(self) -> dict[str, Any]:
        """Front-end specific options of the engine (see make_engine)."""
        return {}

    if TYPE_CHECKING:
        # A list is always several items (as at run time), so list[T] goes first.
        @overload
        def __call__(self, items: list[T]) -> list[U]: ...
        @overload
        def __call__(self, items: T) -> U: ...

    def __call__(self, items: Union[T, list[T]]) -> Union[U, list[U]]:
        """Processes one item (returns its result) or a list (returns a list, same order)."""
        return self._engine.call(items)  # type: ignore[no-any-return]


    if TYPE_CHECKING:

        @overload
        async def acall(self, item: list[T]) -> list[U]: ...
        @overload
        async def acall(self, item: T) -> U: ...

    async def acall(self, item: Union[T, list[T]]) -> Union[U, list[U]]:
        """Like calling the processor, but awaits the results on the running event loop.

        If the awaiting task is cancelled before its items are dispatched, they
        leave the queue; if they were dispatched, their results are dropped.
        """
        global _asyncio
        if _asyncio is None:
            import asyncio as _asyncio  # noqa: PLC0415
        return await await_call(self._engine, item, _asyncio)  # type: ignore[no-any-return]

    @property
    def stats(self) -> BatchProcessorStats:
        """A consistent snapshot of the statistics (cheap: no lock shared with callers)."""
        from batched._stats import BatchProcessorStats  # noqa: PLC0415 - dataclasses is slow to import

        return BatchProcessorStats._from_core(self._snapshot(), padding_efficiency=self._padding_efficiency())

    def _snapshot(self, latency_bounds_s: Optional[Sequence[float]] = None) -> dict[str, Any]:
        """The core's statistics as a dict (see Engine.stats); for stats and exporters."""
        return self._engine.stats(latency_bounds_s)

    def _padding_efficiency(self) -> Optional[float]:
        return None  # inference processors: see PaddingOptions

    def clear_stats(self) -> None:
        """Sets the statistics back to zero."""
        self._engine.clear_stats()

    def start(self) -> None:
        """Does nothing: workers start on the first call. Kept for batched 0.1.5 code."""

    def shutdown(self, wait: bool = True) -> None:
        """Stops the workers; items still queued fail with ``batched.ShutdownError``.

        With ``wait``, returns once a batch already running has finished. Later
        calls raise ``ShutdownError``. Idempotent.
        """
        self._engine.shutdown(wait)

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self._engine.name} batch_size={self.batch_size} "
            f"timeout_ms={self.timeout_ms} queued={self._engine.queue_size()}>"
        )


def make_engine(processor: Any, **extra: Any) -> Engine:
    """An engine for ``processor``'s options (as stored by
    _validate.common_options), plus front-end specific ``extra`` ones; ``fn``
    replaces the batch function as what the engine calls."""
    func = processor.batch_func
    return Engine(
        extra.pop("fn", func),
        batch_size=processor.batch_size,
        timeout_ms=processor.timeout_ms,
        small_batch_threshold=processor.small_batch_threshold,
        max_queue_size=processor.max_queue_size,
        num_workers=processor.num_workers,
        aging_ms=processor.aging_ms,
        name=getattr(func, "__qualname__", None) or repr(func),
        **extra,
    )


async def await_call(engine: Engine, items: Any, asyncio: Any) -> Any:
    """Submits ``items`` to ``engine`` and awaits them on the running loop; a
    cancelled caller takes its undispatched items out of the queue."""
    if isinstance(items, list) and not items:
        return []
    return await await_record(engine.submit_async(items, asyncio.get_running_loop()), asyncio)


async def await_record(call: Any, asyncio: Any) -> Any:
    """Awaits a call record of Engine.submit_*async; a cancelled caller takes
    its undispatched items out of the queue."""
    try:
        return await call.future
    except asyncio.CancelledError:
        call.cancel()
        raise


if TYPE_CHECKING:
    # Bare (@dynamically) on a function or a method, or with options
    # (@dynamically(batch_size=64)): a decorator for either.
    @overload
    def dynamically(
        func: ItemsFn[T, U],
        /,
        batch_size: int = 32,
        timeout_ms: float = 5.0,
        small_batch_threshold: int = 8,
        **options: Unpack[Options],
    ) -> BatchProcessor[T, U]: ...
    @overload
    def dynamically(
        func: ItemsMethod[S, T, U],
        /,
        batch_size: int = 32,
        timeout_ms: float = 5.0,
        small_batch_threshold: int = 8,
        **options: Unpack[Options],
    ) -> PerInstance[S, BatchProcessor[T, U]]: ...
    @overload
    def dynamically(
        func: None = None,
        /,
        batch_size: int = 32,
        timeout_ms: float = 5.0,
        small_batch_threshold: int = 8,
        **options: Unpack[Options],
    ) -> Decorator: ...


def dynamically(
    func: Optional[Callable[..., Any]] = None,
    /,
    batch_size: int = 32,
    timeout_ms: float = 5.0,
    small_batch_threshold: int = 8,
    *,
    max_queue_size: Optional[int] = None,
    num_workers: int = 1,
    aging_ms: float = 100.0,
) -> Any:
    """Batch the calls of a function (or method) that takes a list and returns a list.

    Usable bare (``@dynamically``) or with arguments. On a method, each instance
    gets its own processor. See ``BatchProcessor`` for the parameters.
    """
    options = decorator_options(locals())
    _validate.at_decoration(batch_size, timeout_ms)
    return dynamic_batch(functools.partial(BatchProcessor, **options), func)


__all__ = ["BatchProcessor", "dynamically"]

"""The threaded front end: ``batched.dynamically`` and ``BatchProcessor``."""

from __future__ import annotations

import weakref
from types import GenericAlias

from batched._core import Engine, ItemCollator, ThreadDriver
from batched._frontend import Processor, cancelled_error, name_of, submitted
from batched._options import ProcessorOptions
from batched.decorator import Dynamically

# typing is not imported at run time: it alone would double the import time.
# Type checkers see typing.Generic, overloads and type variables; at run time
# Generic is a stand-in and the type variables are None.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any, Callable, Hashable, Generic, Optional, Protocol, Union, overload

    from typing_extensions import Unpack

    from batched._core import Collator
    from batched._stats import BatchProcessorStats
    from batched._typing import ItemsFn, ItemsMethod, OptionArgs, PerInstance, S, SplitOn
    from batched.types import PriorityStrategy, T, U
else:
    from batched.decorator import RuntimeGeneric as Generic

    T = U = None


class BatchProcessor(Processor, Generic[T, U]):
    """Batches the calls of many threads into calls of ``batch_func``.

    ``batch_func`` takes a list of items and returns one result per item. Each
    call of the processor (one item, or a list) blocks until its own results
    are in; ``acall`` does the same for asyncio code without blocking the loop.
    Batching runs in the C++ core; ``num_workers`` threads call ``batch_func``.
    When a batch leaves and what it takes: docs/semantics.md.
    """

    if not TYPE_CHECKING:
        # BatchProcessor[T, U] in annotations, without typing.Generic.
        __class_getitem__ = classmethod(GenericAlias)

    _engine: Engine
    _collator: Collator

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
        deadline_ms: Optional[float] = None,
        group_by: Optional[Callable[[Any], Hashable]] = None,
        adaptive: bool = False,
        prefetch: bool = False,
        split_on: Optional[SplitOn] = None,
        priority_strategy: Optional[PriorityStrategy] = None,
    ) -> None:
        self._setup(_func, ProcessorOptions.of(locals()))

    def _setup(self, func: Callable[..., Any], options: ProcessorOptions) -> None:
        super()._setup(func, options)
        self._collator = self._make_collator()
        self._engine = Engine(self._engine_function(), options, name_of(func), self._collator,
                              ThreadDriver(options.num_workers, options.prefetch))
        # Garbage collection of the processor stops its workers (they hold the
        # engine, not the processor).
        self._finalizer = weakref.finalize(self, self._engine.shutdown, False)

    def _make_collator(self) -> Collator:
        return ItemCollator(name_of(self.batch_func))

    def _engines(self) -> list[Engine]:
        return [self._engine]

    def _engine_function(self) -> Callable[..., Any]:
        """What the engine calls with each batch."""
        return self.batch_func

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
        if isinstance(item, list) and not item:
            return []
        call = submitted(self._engine, item)
        try:  # (outcome_of inline: a coroutine per call costs more than these lines)
            return await call.future  # type: ignore[no-any-return]
        except cancelled_error():
            call.cancel()
            raise

    @property
    def stats(self) -> BatchProcessorStats:
        """A consistent snapshot of the statistics (cheap: no lock shared with callers)."""
        from batched._stats import BatchProcessorStats  # noqa: PLC0415 - dataclasses is slow to import

        return BatchProcessorStats._from_core(self._snapshot(), padding_efficiency=self._padding_efficiency())

    def _snapshot(self, latency_bounds_s: Optional[Sequence[float]] = None) -> dict[str, Any]:
        """The core's statistics as a dict (see Engine.stats); for stats and exporters."""
        return self._engine.stats(latency_bounds_s)

    def _padding_efficiency(self) -> Optional[float]:
        return None  # inference processors: see PaddingAttributes

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


if TYPE_CHECKING:

    class Decorator(Protocol):
        """``batched.dynamically(...)``: decorates a function or a method."""

        @overload
        def __call__(self, func: ItemsFn[T, U], /) -> BatchProcessor[T, U]: ...
        @overload
        def __call__(self, func: ItemsMethod[S, T, U], /) -> PerInstance[S, BatchProcessor[T, U]]: ...


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
        **options: Unpack[OptionArgs],
    ) -> BatchProcessor[T, U]: ...
    @overload
    def dynamically(
        func: ItemsMethod[S, T, U],
        /,
        batch_size: int = 32,
        timeout_ms: float = 5.0,
        small_batch_threshold: int = 8,
        **options: Unpack[OptionArgs],
    ) -> PerInstance[S, BatchProcessor[T, U]]: ...
    @overload
    def dynamically(
        func: None = None,
        /,
        batch_size: int = 32,
        timeout_ms: float = 5.0,
        small_batch_threshold: int = 8,
        **options: Unpack[OptionArgs],
    ) -> Decorator: ...
    def dynamically(func: Optional[Callable[..., Any]] = None, /, *args: Any, **options: Any) -> Any: ...
else:
    # The options, their defaults and their checks come from BatchProcessor.__init__.
    dynamically = Dynamically(
        BatchProcessor,
        """Batch the calls of a function (or method) that takes a list and returns a list.

    Usable bare (``@dynamically``) or with arguments. On a method, each instance
    gets its own processor. See ``BatchProcessor`` for the parameters.""",
        positional=True,
    )


__all__ = ["BatchProcessor", "dynamically"]

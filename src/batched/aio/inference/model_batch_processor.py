"""``batched.aio.inference.dynamically`` and ``AsyncModelBatchProcessor``: the
inference front end (batched.inference) for asyncio callers, on the engines of
``AsyncBatchProcessor`` (one set of worker threads for a plain model function,
the callers' event loops for an ``async def`` one)."""

from __future__ import annotations

import asyncio

from batched._frontend import PaddingAttributes, features_of, model_function, outcome_of, rows_collator, submitted
from batched._options import ProcessorOptions
from batched.aio.batch_processor import AsyncBatchProcessor
from batched.decorator import Dynamically
from batched.types import PriorityStrategy

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Awaitable, Iterable, Mapping
    from typing import Any, Callable, Hashable, Literal, Optional, Protocol, Union, overload

    from typing_extensions import Unpack

    from batched._padding import RowsCollator
    from batched._typing import AsyncModelOptionArgs, Features, MethodLike, ModelFn, ModelMethod, PerInstance, R, S, SplitOn
    from batched.types import AsyncCache, Feature
else:
    R = Features = None  # for type checkers only


class AsyncModelBatchProcessor(PaddingAttributes, AsyncBatchProcessor[Features, R]):
    """Batches the awaited calls of many tasks into calls of a model.

    ``await processor(features)`` (or ``processor(**features)``) gives this
    call's rows of the model's output. The parameters are those of
    ``AsyncBatchProcessor`` and of ``batched.inference.ModelBatchProcessor``;
    ``max_batch_length`` counts row lengths (of the first feature),
    ``max_batch_tokens`` rows × padded length. With a
    ``cache``, a call's whole feature dict is the key.
    """

    if TYPE_CHECKING:
        # An async def model gives R = what it returns when awaited.
        @overload
        def __init__(
            self: AsyncModelBatchProcessor[R],
            _func: Callable[..., Awaitable[R]],
            *,
            spread_kwargs: bool = False,
            **options: Unpack[AsyncModelOptionArgs],
        ) -> None: ...
        @overload
        def __init__(
            self: AsyncModelBatchProcessor[R],
            _func: Callable[..., R],
            *,
            spread_kwargs: bool = False,
            **options: Unpack[AsyncModelOptionArgs],
        ) -> None: ...

    def __init__(
        self,
        _func: Callable[..., Any],
        *,
        batch_size: int = 32,
        timeout_ms: float = 5.0,
        small_batch_threshold: int = 8,
        cache: Optional[AsyncCache[Any, Any]] = None,
        max_batch_length: Optional[int] = None,
        pad_tokens: Union[Mapping[str, Any], int, float, None] = None,
        padding_side: str = "right",
        priority_strategy: Optional[PriorityStrategy] = None,
        batch_item_cls: Any = None,
        spread_kwargs: bool = False,
        pad_token: Union[Mapping[str, Any], int, float, None] = None,
        device: Any = None,
        pad_to_multiple_of: Optional[int] = None,
        batch_size_buckets: Optional[Iterable[int]] = None,
        max_batch_tokens: Optional[int] = None,
        max_queue_size: Optional[int] = None,
        num_workers: int = 1,
        aging_ms: float = 100.0,
        deadline_ms: Optional[float] = None,
        group_by: Optional[Callable[[Any], Hashable]] = None,
        adaptive: bool = False,
        prefetch: bool = False,
        split_on: Optional[SplitOn] = None,
    ) -> None:
        self._setup(_func, ProcessorOptions.of(locals()))

    _collator: RowsCollator

    def _make_collator(self) -> RowsCollator:
        return rows_collator(self.batch_func, self.options)

    def _engine_function(self) -> Callable[..., Any]:
        return model_function(self.batch_func, self.spread_kwargs, self.is_async)

    if TYPE_CHECKING:
        # await model(features) or await model(**features) -> this call's rows of the output (R).
        @overload  # type: ignore[override]
        async def __call__(self, features: Features, /) -> R: ...
        @overload
        async def __call__(self, **features: Feature) -> R: ...

    async def __call__(self, *args: Any, **kwargs: Any) -> R:
        """This call's rows of the model's output for these features."""
        features = args[0] if len(args) == 1 and not kwargs else features_of(args, kwargs)
        cache = self.options.cache
        loop = asyncio.get_running_loop()
        if cache is not None:
            hit = await cache.get(features)
            if hit is not None:
                return hit  # type: ignore[no-any-return]
            result = await outcome_of(submitted(self._engine_for(loop), features, loop))
            await cache.set(features, result)
            return result  # type: ignore[no-any-return]
        call = submitted(self._engine_for(loop), features, loop)
        try:  # (outcome_of inline: a coroutine per call costs more than these lines)
            return await call.future  # type: ignore[no-any-return]
        except asyncio.CancelledError:
            call.cancel()
            raise


if TYPE_CHECKING:
    # An async def model gives R = what it returns when awaited. (With ``Any``
    # in the function's signature mypy cannot tell the async and the plain
    # variants apart and R is Any.)

    class AsyncModelDecorator(Protocol):
        """``batched.aio.inference.dynamically(...)``: decorates a model function or
        method, plain or ``async def``, that takes the padded features as one dict."""

        @overload
        def __call__(self, func: ModelFn[Awaitable[R]], /) -> AsyncModelBatchProcessor[R]: ...
        @overload
        def __call__(self, func: ModelFn[R], /) -> AsyncModelBatchProcessor[R]: ...
        @overload
        def __call__(self, func: ModelMethod[S, Awaitable[R]], /) -> PerInstance[S, AsyncModelBatchProcessor[R]]: ...
        @overload
        def __call__(self, func: ModelMethod[S, R], /) -> PerInstance[S, AsyncModelBatchProcessor[R]]: ...

    class AsyncSpreadModelDecorator(Protocol):
        """``batched.aio.inference.dynamically(spread_kwargs=True, ...)``."""

        @overload
        def __call__(  # type: ignore[overload-overlap]
            self, func: MethodLike[S, Awaitable[R]], /
        ) -> PerInstance[S, AsyncModelBatchProcessor[R]]: ...
        @overload
        def __call__(self, func: MethodLike[S, R], /) -> PerInstance[S, AsyncModelBatchProcessor[R]]: ...
        @overload
        def __call__(self, func: Callable[..., Awaitable[R]], /) -> AsyncModelBatchProcessor[R]: ...
        @overload
        def __call__(self, func: Callable[..., R], /) -> AsyncModelBatchProcessor[R]: ...


if TYPE_CHECKING:
    # Bare (@aio.inference.dynamically) on a function or a method, plain or
    # async def, or with options: a decorator for either. R is the model's
    # output (awaited, for an async def). See batched.inference.dynamically.
    @overload
    def dynamically(
        func: ModelFn[Awaitable[R]], /, *, spread_kwargs: Literal[False] = False, **options: Unpack[AsyncModelOptionArgs]
    ) -> AsyncModelBatchProcessor[R]: ...
    @overload
    def dynamically(
        func: ModelFn[R], /, *, spread_kwargs: Literal[False] = False, **options: Unpack[AsyncModelOptionArgs]
    ) -> AsyncModelBatchProcessor[R]: ...
    @overload
    def dynamically(
        func: ModelMethod[S, Awaitable[R]],
        /,
        *,
        spread_kwargs: Literal[False] = False,
        **options: Unpack[AsyncModelOptionArgs],
    ) -> PerInstance[S, AsyncModelBatchProcessor[R]]: ...
    @overload
    def dynamically(
        func: ModelMethod[S, R], /, *, spread_kwargs: Literal[False] = False, **options: Unpack[AsyncModelOptionArgs]
    ) -> PerInstance[S, AsyncModelBatchProcessor[R]]: ...
    @overload
    def dynamically(  # type: ignore[overload-overlap]
        func: MethodLike[S, Awaitable[R]], /, *, spread_kwargs: Literal[True], **options: Unpack[AsyncModelOptionArgs]
    ) -> PerInstance[S, AsyncModelBatchProcessor[R]]: ...
    @overload
    def dynamically(
        func: MethodLike[S, R], /, *, spread_kwargs: Literal[True], **options: Unpack[AsyncModelOptionArgs]
    ) -> PerInstance[S, AsyncModelBatchProcessor[R]]: ...
    @overload
    def dynamically(
        func: Callable[..., Awaitable[R]], /, *, spread_kwargs: Literal[True], **options: Unpack[AsyncModelOptionArgs]
    ) -> AsyncModelBatchProcessor[R]: ...
    @overload
    def dynamically(
        func: Callable[..., R], /, *, spread_kwargs: Literal[True], **options: Unpack[AsyncModelOptionArgs]
    ) -> AsyncModelBatchProcessor[R]: ...
    @overload
    def dynamically(
        func: None = None, /, *, spread_kwargs: Literal[False] = False, **options: Unpack[AsyncModelOptionArgs]
    ) -> AsyncModelDecorator: ...
    @overload
    def dynamically(
        func: None = None, /, *, spread_kwargs: Literal[True], **options: Unpack[AsyncModelOptionArgs]
    ) -> AsyncSpreadModelDecorator: ...
    def dynamically(func: Optional[Callable[..., Any]] = None, /, *args: Any, **options: Any) -> Any: ...
else:
    # The options, their defaults and their checks come from AsyncModelBatchProcessor.__init__.
    dynamically = Dynamically(
        AsyncModelBatchProcessor,
        """Batch the awaited calls of a model (a sync or async function) that takes
    a dict of padded arrays or tensors. See ``AsyncModelBatchProcessor``.""",
    )


__all__ = ["AsyncModelBatchProcessor", "dynamically"]

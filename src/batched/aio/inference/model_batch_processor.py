"""``batched.aio.inference.dynamically`` and ``AsyncModelBatchProcessor``: the
inference front end (batched.inference) for asyncio callers, on the engines of
``AsyncBatchProcessor`` (one set of worker threads for a plain model function,
the callers' event loops for an ``async def`` one)."""

from __future__ import annotations

import asyncio
import functools

from batched import _validate
from batched.aio.batch_processor import AsyncBatchProcessor
from batched.batch_processor import await_record
from batched.decorator import decorator_options, dynamic_batch
from batched.inference.model_batch_processor import PaddingOptions, engine_options, features_of, padder_of
from batched.types import PriorityStrategy

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Awaitable, Iterable, Mapping
    from typing import Any, Callable, Optional, Union, overload

    from typing_extensions import Unpack

    from typing import Literal

    from batched._typing import (
        AsyncModelDecorator,
        AsyncModelOptions,
        AsyncSpreadModelDecorator,
        Features,
        MethodLike,
        ModelFn,
        ModelMethod,
        PerInstance,
        R,
        S,
    )
    from batched.types import AsyncCache, Feature
else:
    R = Features = None  # for type checkers only


class AsyncModelBatchProcessor(PaddingOptions, AsyncBatchProcessor[Features, R]):
    """Batches the awaited calls of many tasks into calls of a model.

    ``await processor(features)`` (or ``processor(**features)``) gives this
    call's rows of the model's output. The parameters are those of
    ``AsyncBatchProcessor`` and of ``batched.inference.ModelBatchProcessor``;
    ``max_batch_length`` counts row lengths (of the first feature). With a
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
            **options: Unpack[AsyncModelOptions],
        ) -> None: ...
        @overload
        def __init__(
            self: AsyncModelBatchProcessor[R],
            _func: Callable[..., R],
            *,
            spread_kwargs: bool = False,
            **options: Unpack[AsyncModelOptions],
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
        priority_strategy: PriorityStrategy = PriorityStrategy.NONE,
        batch_item_cls: Any = None,
        spread_kwargs: bool = False,
        pad_token: Union[Mapping[str, Any], int, float, None] = None,
        device: Any = None,
        pad_to_multiple_of: Optional[int] = None,
        batch_size_buckets: Optional[Iterable[int]] = None,
        max_queue_size: Optional[int] = None,
        num_workers: int = 1,
        aging_ms: float = 100.0,
    ) -> None:
        self._padder = padder_of(_func, locals())
        super().__init__(
            _func,
            batch_size=batch_size,
            timeout_ms=timeout_ms,
            small_batch_threshold=small_batch_threshold,
            cache=cache,
            max_batch_length=max_batch_length,
            priority_strategy=priority_strategy,
            batch_item_cls=batch_item_cls,
            max_queue_size=max_queue_size,
            num_workers=num_workers,
            aging_ms=aging_ms,
        )

    def _engine_options(self) -> dict[str, Any]:
        return engine_options(self, self._padder)

    if TYPE_CHECKING:
        # await model(features) or await model(**features) -> this call's rows of the output (R).
        @overload  # type: ignore[override]
        async def __call__(self, features: Features, /) -> R: ...
        @overload
        async def __call__(self, **features: Feature) -> R: ...

    async def __call__(self, *args: Any, **kwargs: Any) -> R:
        """This call's rows of the model's output for these features."""
        features = features_of(args, kwargs)
        if self.cache is not None:
            hit = await self.cache.get(features)
            if hit is not None:
                return hit
        rows = self._padder.request(features)
        loop = asyncio.get_running_loop()
        call = self._engine_for(loop).submit_rows_async(rows, loop)
        result = self._padder.join(await await_record(call, asyncio))
        if self.cache is not None:
            await self.cache.set(features, result)
        return result  # type: ignore[no-any-return]


if TYPE_CHECKING:
    # Bare (@aio.inference.dynamically) on a function or a method, plain or
    # async def, or with options: a decorator for either. R is the model's
    # output (awaited, for an async def). See batched.inference.dynamically.
    @overload
    def dynamically(
        func: ModelFn[Awaitable[R]], /, *, spread_kwargs: Literal[False] = False, **options: Unpack[AsyncModelOptions]
    ) -> AsyncModelBatchProcessor[R]: ...
    @overload
    def dynamically(
        func: ModelFn[R], /, *, spread_kwargs: Literal[False] = False, **options: Unpack[AsyncModelOptions]
    ) -> AsyncModelBatchProcessor[R]: ...
    @overload
    def dynamically(
        func: ModelMethod[S, Awaitable[R]],
        /,
        *,
        spread_kwargs: Literal[False] = False,
        **options: Unpack[AsyncModelOptions],
    ) -> PerInstance[S, AsyncModelBatchProcessor[R]]: ...
    @overload
    def dynamically(
        func: ModelMethod[S, R], /, *, spread_kwargs: Literal[False] = False, **options: Unpack[AsyncModelOptions]
    ) -> PerInstance[S, AsyncModelBatchProcessor[R]]: ...
    @overload
    def dynamically(  # type: ignore[overload-overlap]
        func: MethodLike[S, Awaitable[R]], /, *, spread_kwargs: Literal[True], **options: Unpack[AsyncModelOptions]
    ) -> PerInstance[S, AsyncModelBatchProcessor[R]]: ...
    @overload
    def dynamically(
        func: MethodLike[S, R], /, *, spread_kwargs: Literal[True], **options: Unpack[AsyncModelOptions]
    ) -> PerInstance[S, AsyncModelBatchProcessor[R]]: ...
    @overload
    def dynamically(
        func: Callable[..., Awaitable[R]], /, *, spread_kwargs: Literal[True], **options: Unpack[AsyncModelOptions]
    ) -> AsyncModelBatchProcessor[R]: ...
    @overload
    def dynamically(
        func: Callable[..., R], /, *, spread_kwargs: Literal[True], **options: Unpack[AsyncModelOptions]
    ) -> AsyncModelBatchProcessor[R]: ...
    @overload
    def dynamically(
        func: None = None, /, *, spread_kwargs: Literal[False] = False, **options: Unpack[AsyncModelOptions]
    ) -> AsyncModelDecorator: ...
    @overload
    def dynamically(
        func: None = None, /, *, spread_kwargs: Literal[True], **options: Unpack[AsyncModelOptions]
    ) -> AsyncSpreadModelDecorator: ...


def dynamically(
    func: Optional[Callable[..., Any]] = None,
    /,
    *,
    batch_size: int = 32,
    timeout_ms: float = 5.0,
    small_batch_threshold: int = 8,
    max_batch_length: Optional[int] = None,
    pad_tokens: Union[Mapping[str, Any], int, float, None] = None,
    padding_side: str = "right",
    priority_strategy: PriorityStrategy = PriorityStrategy.NONE,
    cache: Optional[AsyncCache[Any, Any]] = None,
    batch_item_cls: Any = None,
    spread_kwargs: bool = False,
    pad_token: Union[Mapping[str, Any], int, float, None] = None,
    device: Any = None,
    pad_to_multiple_of: Optional[int] = None,
    batch_size_buckets: Optional[Iterable[int]] = None,
    max_queue_size: Optional[int] = None,
    num_workers: int = 1,
    aging_ms: float = 100.0,
) -> Any:
    """Batch the awaited calls of a model (a sync or async function) that takes
    a dict of padded arrays or tensors. See ``AsyncModelBatchProcessor``."""
    options = decorator_options(locals())
    _validate.at_decoration(batch_size, timeout_ms)
    padder_of(None, options)  # the padding options fail here, not at the first call
    return dynamic_batch(functools.partial(AsyncModelBatchProcessor, **options), func)


__all__ = ["AsyncModelBatchProcessor", "dynamically"]

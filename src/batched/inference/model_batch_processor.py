"""``batched.inference.dynamically`` and ``ModelBatchProcessor``: batching for
models that take a dict of padded arrays or tensors.

Each call hands in features with one or more rows (``{"input_ids": ids}`` with
``ids`` of shape ``[n, L]``, or a list of n rows of any length); the rows of
the calls in a batch are padded once, in native code, into one array per
feature, and each caller gets its own rows of the output back. See
batched._padding for how.
"""

from __future__ import annotations

from collections.abc import Mapping

from batched._frontend import PaddingAttributes, cancelled_error, features_of, model_function, rows_collator, submitted
from batched._options import ProcessorOptions
from batched.batch_processor import BatchProcessor
from batched.decorator import Dynamically, _is_coroutine_function

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Hashable, Iterable, Literal, Optional, Protocol, Union, overload

    from typing_extensions import Unpack

    from batched._padding import RowsCollator
    from batched._typing import Features, MethodLike, ModelFn, ModelMethod, ModelOptionArgs, PerInstance, R, S, SplitOn
    from batched.types import Feature, PriorityStrategy
else:
    R = Features = None  # for type checkers only


class ModelBatchProcessor(PaddingAttributes, BatchProcessor[Features, R]):
    """Batches the calls of many threads into calls of a model.

    ``_func`` takes a dict of padded features ``{name: [rows, max length, ...]}``
    (or, with ``spread_kwargs``, the same as keyword arguments) and returns an
    array or tensor with one row per input row on axis 0, or a list or dict of
    them. Parameters beyond ``BatchProcessor``'s:

    - ``pad_tokens``: the pad value of each feature (``{"input_ids": 0}``), or
      one value for all; 0 where not given. ``pad_token`` is the same.
    - ``padding_side``: ``"right"`` or ``"left"``.
    - ``spread_kwargs``: call ``_func(**features)``.
    - ``device``: a torch device to pad the batch on (``"cuda"``): host rows are
      packed into pinned memory, copied once, and padded there; the function
      gets torch tensors on that device.
    - ``pad_to_multiple_of``: round the padded length up to a multiple of this.
    - ``batch_size_buckets``: pad the batch dimension up to the next of these
      sizes, with rows of pad only whose outputs are dropped; with
      ``pad_to_multiple_of`` this keeps the shapes a compiled model sees few.
    - ``max_batch_length``: the most row length (summed, first feature) in a batch.
    - ``max_batch_tokens``: the most rows × padded length (after
      ``pad_to_multiple_of``, first feature) in a batch; a call that does not fit
      is split at the budget, a single longer row goes alone.
    """

    def __init__(
        self,
        _func: Callable[..., R],
        batch_size: int = 32,
        timeout_ms: float = 5.0,
        small_batch_threshold: int = 8,
        *,
        pad_tokens: Union[Mapping[str, Any], int, float, None] = None,
        padding_side: str = "right",
        spread_kwargs: bool = False,
        pad_token: Union[Mapping[str, Any], int, float, None] = None,
        device: Any = None,
        pad_to_multiple_of: Optional[int] = None,
        batch_size_buckets: Optional[Iterable[int]] = None,
        max_batch_length: Optional[int] = None,
        max_batch_tokens: Optional[int] = None,
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

    _collator: RowsCollator

    def _make_collator(self) -> RowsCollator:
        return rows_collator(self.batch_func, self.options)

    def _engine_function(self) -> Callable[..., Any]:
        return model_function(self.batch_func, self.spread_kwargs, _is_coroutine_function(self.batch_func))

    if TYPE_CHECKING:
        # model(features) or model(**features) -> this call's rows of the output (R).
        @overload  # type: ignore[override]
        def __call__(self, features: Features, /) -> R: ...
        @overload
        def __call__(self, **features: Feature) -> R: ...

    def __call__(self, *args: Any, **kwargs: Any) -> R:
        """Runs the model on these features (a dict, or keyword arguments) and
        returns this call's rows of its output, in the output's structure."""
        if len(args) == 1 and not kwargs:  # (the common case without a function call)
            return self._engine.call(args[0])  # type: ignore[no-any-return]
        return self._engine.call(features_of(args, kwargs))  # type: ignore[no-any-return]

    if TYPE_CHECKING:

        @overload  # type: ignore[override]
        async def acall(self, features: Features, /) -> R: ...
        @overload
        async def acall(self, **features: Feature) -> R: ...

    async def acall(self, *args: Any, **kwargs: Any) -> R:
        """Like calling the processor, but awaits the output on the running event loop."""
        call = submitted(self._engine, features_of(args, kwargs))
        try:  # (outcome_of inline: a coroutine per call costs more than these lines)
            return await call.future  # type: ignore[no-any-return]
        except cancelled_error():
            call.cancel()
            raise


if TYPE_CHECKING:

    class ModelDecorator(Protocol):
        """``batched.inference.dynamically(...)``: decorates a model function or
        method that takes the padded features as one dict."""

        @overload
        def __call__(self, func: ModelFn[R], /) -> ModelBatchProcessor[R]: ...
        @overload
        def __call__(self, func: ModelMethod[S, R], /) -> PerInstance[S, ModelBatchProcessor[R]]: ...

    class SpreadModelDecorator(Protocol):
        """``batched.inference.dynamically(spread_kwargs=True, ...)``: the features
        are keyword arguments; a method is told by its first parameter, ``self``."""

        @overload
        def __call__(self, func: MethodLike[S, R], /) -> PerInstance[S, ModelBatchProcessor[R]]: ...
        @overload
        def __call__(self, func: Callable[..., R], /) -> ModelBatchProcessor[R]: ...


if TYPE_CHECKING:
    # Bare (@inference.dynamically) on a function or a method, or with options:
    # a decorator for either. R is the model's output. The function takes the
    # padded features as one dict; with spread_kwargs, as keyword arguments (a
    # method is then told by its first parameter, named self).
    @overload
    def dynamically(
        func: ModelFn[R], /, *, spread_kwargs: Literal[False] = False, **options: Unpack[ModelOptionArgs]
    ) -> ModelBatchProcessor[R]: ...
    @overload
    def dynamically(
        func: ModelMethod[S, R], /, *, spread_kwargs: Literal[False] = False, **options: Unpack[ModelOptionArgs]
    ) -> PerInstance[S, ModelBatchProcessor[R]]: ...
    @overload
    def dynamically(
        func: MethodLike[S, R], /, *, spread_kwargs: Literal[True], **options: Unpack[ModelOptionArgs]
    ) -> PerInstance[S, ModelBatchProcessor[R]]: ...
    @overload
    def dynamically(
        func: Callable[..., R], /, *, spread_kwargs: Literal[True], **options: Unpack[ModelOptionArgs]
    ) -> ModelBatchProcessor[R]: ...
    @overload
    def dynamically(
        func: None = None, /, *, spread_kwargs: Literal[False] = False, **options: Unpack[ModelOptionArgs]
    ) -> ModelDecorator: ...
    @overload
    def dynamically(
        func: None = None, /, *, spread_kwargs: Literal[True], **options: Unpack[ModelOptionArgs]
    ) -> SpreadModelDecorator: ...
    def dynamically(func: Optional[Callable[..., Any]] = None, /, *args: Any, **options: Any) -> Any: ...
else:
    # The options, their defaults and their checks come from ModelBatchProcessor.__init__.
    dynamically = Dynamically(
        ModelBatchProcessor,
        """Batch the calls of a model that takes a dict of padded arrays or tensors.

    Usable bare or with arguments, on functions and on methods (one processor
    per instance). See ``ModelBatchProcessor`` for the parameters.""",
    )


__all__ = ["ModelBatchProcessor", "dynamically"]

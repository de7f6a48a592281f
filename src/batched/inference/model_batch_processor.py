"""``batched.inference.dynamically`` and ``ModelBatchProcessor``: batching for
models that take a dict of padded arrays or tensors.

Each call hands in features with one or more rows (``{"input_ids": ids}`` with
``ids`` of shape ``[n, L]``, or a list of n rows of any length); the rows of
the calls in a batch are padded once, in native code, into one array per
feature, and each caller gets its own rows of the output back. See
batched._padding for how.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

from batched import _validate
from batched._padding import Padder
from batched.batch_processor import BatchProcessor, await_record
from batched.decorator import _is_coroutine_function, decorator_options, dynamic_batch

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Iterable, Optional, Union, overload

    from typing_extensions import Unpack

    from typing import Literal

    from batched._typing import (
        Features,
        MethodLike,
        ModelDecorator,
        ModelFn,
        ModelMethod,
        ModelOptions,
        PerInstance,
        R,
        S,
        SpreadModelDecorator,
    )
    from batched.types import Feature
else:
    R = Features = None  # for type checkers only

_asyncio: Any = None


class PaddingOptions:
    """The padding options of an inference processor, read from its padder
    (mixed into both inference processors)."""

    _padder: Padder

    @property
    def pad_tokens(self) -> Any:
        return self._padder.pad_tokens

    @property
    def padding_side(self) -> str:
        return "left" if self._padder.pad_left else "right"

    @property
    def spread_kwargs(self) -> bool:
        return self._padder.spread_kwargs

    def _padding_efficiency(self) -> Optional[float]:
        return self._padder.padding_efficiency()

    def clear_stats(self) -> None:
        """Sets the statistics back to zero, padding efficiency included."""
        self._padder.reset_counts()
        super().clear_stats()  # type: ignore[misc]


class ModelBatchProcessor(PaddingOptions, BatchProcessor[Features, R]):
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
        max_queue_size: Optional[int] = None,
        num_workers: int = 1,
        aging_ms: float = 100.0,
    ) -> None:
        self._padder = padder_of(_func, locals())
        self.max_batch_length = _validate.optional_positive_int("max_batch_length", max_batch_length)
        super().__init__(
            _func,  # type: ignore[arg-type]  # a model function, called through the padder
            batch_size,
            timeout_ms,
            small_batch_threshold,
            max_queue_size=max_queue_size,
            num_workers=num_workers,
            aging_ms=aging_ms,
        )

    def _engine_options(self) -> dict[str, Any]:
        return {**engine_options(self, self._padder), "max_batch_length": self.max_batch_length}

    if TYPE_CHECKING:
        # model(features) or model(**features) -> this call's rows of the output (R).
        @overload  # type: ignore[override]
        def __call__(self, features: Features, /) -> R: ...
        @overload
        def __call__(self, **features: Feature) -> R: ...

    def __call__(self, *args: Any, **kwargs: Any) -> R:
        """Runs the model on these features (a dict, or keyword arguments) and
        returns this call's rows of its output, in the output's structure."""
        rows = self._padder.request(features_of(args, kwargs))
        return self._padder.join(self._engine.call_rows(rows))  # type: ignore[no-any-return]

    if TYPE_CHECKING:

        @overload  # type: ignore[override]
        async def acall(self, features: Features, /) -> R: ...
        @overload
        async def acall(self, **features: Feature) -> R: ...

    async def acall(self, *args: Any, **kwargs: Any) -> R:
        """Like calling the processor, but awaits the output on the running event loop."""
        global _asyncio
        if _asyncio is None:
            import asyncio as _asyncio  # noqa: PLC0415
        rows = self._padder.request(features_of(args, kwargs))
        call = self._engine.submit_rows_async(rows, _asyncio.get_running_loop())
        return self._padder.join(await await_record(call, _asyncio))  # type: ignore[no-any-return]



def features_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Feature:
    """The features of a call given as ``model(features)`` or ``model(**features)``."""
    if args and kwargs:
        raise TypeError("give the features either as one dict or as keyword arguments, not both")
    if len(args) > 1:
        raise TypeError(f"a model call takes one dict of features, got {len(args)} positional arguments")
    return args[0] if args else kwargs


def make_padder(
    func: Any,
    batch_size: Any,
    *,
    pad_tokens: Any,
    pad_token: Any,
    padding_side: Any,
    spread_kwargs: bool,
    device: Any,
    pad_to_multiple_of: Any,
    batch_size_buckets: Any,
) -> Padder:
    """Checks the padding options shared by both inference front ends."""
    if pad_token is not None:
        if pad_tokens is not None and pad_tokens != pad_token:
            raise TypeError("pad_token is another name for pad_tokens: give one of them")
        pad_tokens = pad_token
    if pad_tokens is not None and not isinstance(pad_tokens, (Mapping, int, float)):
        raise TypeError(f"pad_tokens must be a dict of pad values (or one number), got {type(pad_tokens).__name__}")
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    multiple = _validate.optional_positive_int("pad_to_multiple_of", pad_to_multiple_of)
    buckets = None
    if batch_size_buckets is not None:
        buckets = sorted({_validate.positive_int("batch_size_buckets entry", b) for b in batch_size_buckets})
        if not buckets:
            raise ValueError("batch_size_buckets must hold at least one size")
        if _validate.positive_int("batch_size", batch_size) > buckets[-1]:
            raise ValueError(
                f"batch_size_buckets {buckets} must reach batch_size={batch_size}: a full batch "
                f"needs a bucket")
    if device is not None:
        import torch  # noqa: PLC0415 - padding on a device means torch

        device = torch.device(device)
    name = getattr(func, "__qualname__", None) or repr(func)
    return Padder(
        name,
        pad_tokens,
        padding_side,
        device=device,
        pad_to_multiple_of=multiple,
        batch_size_buckets=buckets,
        spread_kwargs=bool(spread_kwargs),
    )


PADDING_OPTIONS = (
    "pad_tokens", "pad_token", "padding_side", "spread_kwargs", "device", "pad_to_multiple_of", "batch_size_buckets",
)


def padder_of(func: Any, options: Mapping[str, Any]) -> Padder:
    """make_padder with the padding options (and batch_size) picked out of
    ``options``: a processor's or a decorator's ``locals()``."""
    return make_padder(func, options["batch_size"], **{name: options[name] for name in PADDING_OPTIONS})


def engine_options(processor: Any, padder: Padder) -> dict[str, Any]:
    """The engine options of an inference processor: the padder as collator,
    and the function called with the padded features."""
    func = processor.batch_func
    fn: Callable[..., Any] = func
    if padder.spread_kwargs:
        if _is_coroutine_function(func):

            async def fn(features: dict[str, Any]) -> Any:
                return await func(**features)

        else:

            def fn(features: dict[str, Any]) -> Any:
                return func(**features)

    return {"fn": fn, "collator": padder}


if TYPE_CHECKING:
    # Bare (@inference.dynamically) on a function or a method, or with options:
    # a decorator for either. R is the model's output. The function takes the
    # padded features as one dict; with spread_kwargs, as keyword arguments (a
    # method is then told by its first parameter, named self).
    @overload
    def dynamically(
        func: ModelFn[R], /, *, spread_kwargs: Literal[False] = False, **options: Unpack[ModelOptions]
    ) -> ModelBatchProcessor[R]: ...
    @overload
    def dynamically(
        func: ModelMethod[S, R], /, *, spread_kwargs: Literal[False] = False, **options: Unpack[ModelOptions]
    ) -> PerInstance[S, ModelBatchProcessor[R]]: ...
    @overload
    def dynamically(
        func: MethodLike[S, R], /, *, spread_kwargs: Literal[True], **options: Unpack[ModelOptions]
    ) -> PerInstance[S, ModelBatchProcessor[R]]: ...
    @overload
    def dynamically(
        func: Callable[..., R], /, *, spread_kwargs: Literal[True], **options: Unpack[ModelOptions]
    ) -> ModelBatchProcessor[R]: ...
    @overload
    def dynamically(
        func: None = None, /, *, spread_kwargs: Literal[False] = False, **options: Unpack[ModelOptions]
    ) -> ModelDecorator: ...
    @overload
    def dynamically(
        func: None = None, /, *, spread_kwargs: Literal[True], **options: Unpack[ModelOptions]
    ) -> SpreadModelDecorator: ...


def dynamically(
    func: Optional[Callable[..., Any]] = None,
    /,
    *,
    batch_size: int = 32,
    timeout_ms: float = 5.0,
    small_batch_threshold: int = 8,
    pad_tokens: Union[Mapping[str, Any], int, float, None] = None,
    padding_side: str = "right",
    spread_kwargs: bool = False,
    pad_token: Union[Mapping[str, Any], int, float, None] = None,
    device: Any = None,
    pad_to_multiple_of: Optional[int] = None,
    batch_size_buckets: Optional[Iterable[int]] = None,
    max_batch_length: Optional[int] = None,
    max_queue_size: Optional[int] = None,
    num_workers: int = 1,
    aging_ms: float = 100.0,
) -> Any:
    """Batch the calls of a model that takes a dict of padded arrays or tensors.

    Usable bare or with arguments, on functions and on methods (one processor
    per instance). See ``ModelBatchProcessor`` for the parameters.
    """
    options = decorator_options(locals())
    _validate.at_decoration(batch_size, timeout_ms)
    padder_of(None, options)  # the padding options fail here, not at the first call
    return dynamic_batch(functools.partial(ModelBatchProcessor, **options), func)


__all__ = ["ModelBatchProcessor", "dynamically"]

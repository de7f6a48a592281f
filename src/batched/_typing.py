"""Types for type checkers, shared by the front ends: the shapes of batch
functions, the per-instance descriptor, and each ``dynamically``'s keyword
options. Each decorator's own Protocol sits beside its processor.

The public modules import this only under ``if TYPE_CHECKING:``, so
``import batched`` never loads it (nor typing). Importing it at run time works
(for ``typing.get_type_hints``), at the cost of importing typing.

The decorators return, for a function, a processor generic in the item and
result types (``BatchProcessor[T, U]``: ``proc(item) -> U``,
``proc([items]) -> list[U]``), and for a method (its first parameter is
``self``), a descriptor, ``PerInstance[S, BatchProcessor[T, U]]``, whose
``instance.method`` is that instance's processor. ``U`` is what indexing the
function's return value gives (``Results``): the element type of a list,
``Tensor`` for a tensor, ``Any`` for an ndarray. Inference processors are
generic in the model's output type ``R``: each caller gets its own rows of
it, in the same structure.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Optional, Protocol, TypedDict, TypeVar, Union, overload

from batched.types import T, U

if TYPE_CHECKING:
    from typing_extensions import Self

    from batched.types import AsyncCache, PriorityStrategy

#: A model's output (inference front ends).
R = TypeVar("R")
#: The class a method is decorated on.
S = TypeVar("S")
S_contra = TypeVar("S_contra", contravariant=True)
R_co = TypeVar("R_co", covariant=True)
P_co = TypeVar("P_co", covariant=True)

#: What a caller of an inference processor hands in: ``{name: array, tensor or list of rows}``.
Features = Mapping[str, Any]
#: What a model function gets: ``{name: padded array or tensor}``.
PaddedFeatures = dict[str, Any]

U_co = TypeVar("U_co", covariant=True)


class Results(Protocol[U_co]):
    """What a batch function returns: one result per item, by index (a list, a
    tuple, an ndarray, a tensor...). ``U_co`` is what indexing gives: the
    element type of a list, ``Tensor`` for a tensor, ``Any`` for an ndarray."""

    def __len__(self) -> int: ...
    def __getitem__(self, index: int, /) -> U_co: ...


#: A batch function: a list of items -> one result per item.
ItemsFn = Callable[[list[T]], Results[U]]
#: The same, on a method: (self, a list of items) -> one result per item.
ItemsMethod = Callable[[S, list[T]], Results[U]]
#: An aio batch function: plain or ``async def``.
AsyncItemsFn = Callable[[list[T]], Union[Results[U], Awaitable[Results[U]]]]
AsyncItemsMethod = Callable[[S, list[T]], Union[Results[U], Awaitable[Results[U]]]]
#: A model function (without ``spread_kwargs``): the padded features -> its output.
#: split_on: the exceptions that mean "this batch was too big": exception
#: classes, or their qualified names ("torch.OutOfMemoryError"), matched
#: without importing their module.
SplitOn = tuple[Union[type[BaseException], str], ...]

ModelFn = Callable[[PaddedFeatures], R]
ModelMethod = Callable[[S, PaddedFeatures], R]


class MethodLike(Protocol[S_contra, R_co]):
    """A function whose first parameter is named ``self``, as ``is_method`` decides
    (a model method, whatever its other parameters: with ``spread_kwargs`` they
    are the features)."""

    def __call__(_, self: S_contra, *args: Any, **kwargs: Any) -> R_co: ...


class PerInstance(Protocol[S_contra, P_co]):
    """A decorated method: ``instance.method`` is the instance's own processor
    (``P_co``), made on first access; ``Class.method`` is the descriptor."""

    @overload
    def __get__(self, instance: None, owner: Optional[type[Any]] = None, /) -> Self: ...
    @overload
    def __get__(self, instance: S_contra, owner: Optional[type[Any]] = None, /) -> P_co: ...
    def __call__(self, instance: S_contra, /, *args: Any, **kwargs: Any) -> Any:
        """``Class.method(instance, ...)``: the same as ``instance.method(...)``."""


# ---- the options of each ``dynamically`` (keyword arguments; the decorator
# Protocols sit beside their processors)


class OptionArgs(TypedDict, total=False):
    """``batched.dynamically``'s keyword-only options."""

    max_queue_size: Optional[int]
    num_workers: int
    aging_ms: float
    deadline_ms: Optional[float]
    group_by: Optional[Callable[[Any], Hashable]]
    priority_strategy: Optional[PriorityStrategy]
    adaptive: bool
    prefetch: bool
    split_on: Optional[SplitOn]


class AllOptionArgs(OptionArgs, total=False):
    batch_size: int
    timeout_ms: float
    small_batch_threshold: int


class AsyncOptionArgs(AllOptionArgs, total=False):
    """``batched.aio.dynamically``'s options."""

    max_batch_length: Optional[int]
    cache: Optional[AsyncCache[Any, Any]]
    batch_item_cls: Any


class PadOptionArgs(TypedDict, total=False):
    pad_tokens: Union[Mapping[str, Any], int, float, None]
    pad_token: Union[Mapping[str, Any], int, float, None]
    padding_side: str
    device: Any
    pad_to_multiple_of: Optional[int]
    batch_size_buckets: Optional[Iterable[int]]
    max_batch_length: Optional[int]
    max_batch_tokens: Optional[int]


class ModelOptionArgs(AllOptionArgs, PadOptionArgs, total=False):
    """``batched.inference.dynamically``'s options."""


class AsyncModelOptionArgs(AsyncOptionArgs, PadOptionArgs, total=False):
    """``batched.aio.inference.dynamically``'s options."""

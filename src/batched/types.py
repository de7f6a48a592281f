"""Public types: statistics, priority strategies and the cache protocol.

Not imported by ``import batched`` (typing and enum are slow to import); the
statistics classes live in batched._stats and are re-exported here.
"""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING, Any, Callable, Generic, Optional, Protocol, TypeVar, runtime_checkable

from batched._stats import BatchProcessorStats, CacheStats, Percentiles

if TYPE_CHECKING:  # numpy and torch are never imported by batched itself at import time
    import numpy as np
    import torch

T = TypeVar("T")
U = TypeVar("U")
_Key = TypeVar("_Key", contravariant=True)  # AsyncCache only takes keys

BatchFunc = Callable[[list[T]], list[U]]
NDArrayOrTensor = TypeVar("NDArrayOrTensor", "np.ndarray", "torch.Tensor")
Feature = Any  # np.ndarray | torch.Tensor | list of them (ragged rows)


class PriorityStrategy(int, Enum):
    """How queued items are ordered (aio processors).

    NONE: arrival order. LENGTH: shorter items first. PRIORITY: explicit priorities.
    """

    NONE = 1
    LENGTH = 2
    PRIORITY = 3


@runtime_checkable
class AsyncCache(Protocol, Generic[_Key, U]):
    """What an aio processor's ``cache`` must provide."""

    async def get(self, key: _Key) -> Optional[U]: ...

    async def set(self, key: _Key, value: U) -> None: ...

    async def clear(self) -> None: ...

    def stats(self) -> CacheStats: ...


__all__ = [
    "AsyncCache",
    "BatchFunc",
    "BatchProcessorStats",
    "CacheStats",
    "Feature",
    "Percentiles",
    "PriorityStrategy",
]

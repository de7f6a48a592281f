"""Kept so that batched 0.1.5 code importing ``AsyncBatchItem`` still runs.

Items are queued by the C++ core, not as Python objects, so processors never
make these, and ``batch_item_cls`` is accepted and ignored (with a one-time
warning). The class still works on its own: an item, the asyncio future of
its result, its priority, and its length as 0.1.5 measured it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sized
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Optional

from batched.types import T, U


@dataclass(order=True)
class AsyncBatchItem(Generic[T, U]):
    """An item, the future of its result, and its priority (lower first; items order by it)."""

    content: T = field(compare=False)
    future: asyncio.Future[U] = field(compare=False)
    priority: int = field(default=1, compare=True)
    _len_fn: Optional[Callable[[T], int]] = field(default=None, compare=False)

    def set_result(self, result: U) -> None:
        with contextlib.suppress(asyncio.InvalidStateError):
            self.future.set_result(result)

    def set_exception(self, exception: BaseException) -> None:
        with contextlib.suppress(asyncio.InvalidStateError):
            self.future.set_exception(exception)

    def done(self) -> bool:
        return self.future.done()

    @staticmethod
    def _get_len(content: Any) -> int:
        """len() of a sized item, of a mapping's first value; None is 0; else 1."""
        if content is None:
            return 0
        if isinstance(content, Mapping):
            return AsyncBatchItem._get_len(next(iter(content.values()))) if content else 0
        if isinstance(content, Sized):
            return len(content)
        return 1

    def __len__(self) -> int:
        return (self._len_fn or AsyncBatchItem._get_len)(self.content)


__all__ = ["AsyncBatchItem"]

"""Kept so that batched 0.1.5 code importing ``AsyncBatchItem`` still runs.

Items are queued by the C++ core, not as Python objects, so this class is
never instantiated: passing a subclass as ``batch_item_cls`` is accepted and
ignored, with a one-time warning.
"""

from __future__ import annotations

from typing import Any, Generic, Optional, TypeVar

T = TypeVar("T")
U = TypeVar("U")


class AsyncBatchItem(Generic[T, U]):
    """The queue item of batched 0.1.5 (unused here; see the module docstring)."""

    def __init__(self, content: T, priority: int = 1, future: Optional[Any] = None) -> None:
        self.content = content
        self.priority = priority
        self.future = future


__all__ = ["AsyncBatchItem"]

"""Kept so that batched 0.1.5 code importing ``BatchItem`` still runs.

0.1.5 queued one ``BatchItem`` per item; this engine queues a call as one C++
entry, so processors never make these. The class still works on its own: an
item, its priority, and a ``concurrent.futures.Future`` for its result.
"""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Generic

from batched.types import T, U


@dataclass(order=True)
class BatchItem(Generic[T, U]):
    """An item, its priority (lower first; items order by it) and the future of its result."""

    content: T = field(compare=False)
    priority: int = field(default=1, compare=True)
    future: Future[U] = field(default_factory=Future, compare=False)

    def to_awaitable(self) -> asyncio.Future[U]:
        """The result as an asyncio future of the running loop."""
        return asyncio.wrap_future(self.future)

    def set_result(self, result: U) -> None:
        with contextlib.suppress(InvalidStateError):
            self.future.set_result(result)

    def set_exception(self, exception: BaseException) -> None:
        with contextlib.suppress(InvalidStateError):
            self.future.set_exception(exception)

    def result(self) -> U:
        """Waits for the result; raises the item's exception if it failed."""
        return self.future.result()

    def done(self) -> bool:
        return self.future.done()


__all__ = ["BatchItem"]

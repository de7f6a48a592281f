"""Exceptions raised by batched."""

from __future__ import annotations


class QueueFullError(RuntimeError):
    """The processor's queue holds ``max_queue_size`` items; the call was not queued."""


class ShutdownError(RuntimeError):
    """The processor was shut down: the call was refused, or its items were still queued."""


class DeadlineExceeded(TimeoutError):
    """The call's deadline (``batched.deadline``, ``deadline_ms``) passed, or
    could no longer be met, before its items were sent to a batch: they left
    the queue unsent (docs/semantics.md, 11)."""


__all__ = ["DeadlineExceeded", "QueueFullError", "ShutdownError"]

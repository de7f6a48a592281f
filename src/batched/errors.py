"""Exceptions raised by batched."""

from __future__ import annotations


class QueueFullError(RuntimeError):
    """The processor's queue holds ``max_queue_size`` items; the call was not queued."""


class ShutdownError(RuntimeError):
    """The processor was shut down: the call was refused, or its items were still queued."""


__all__ = ["QueueFullError", "ShutdownError"]

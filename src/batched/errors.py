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


class ServerGoneError(ConnectionError):
    """No server of that name is running (batched.connect), or it stopped or
    died while the call waited: the call may or may not have been computed.
    The next call connects again if a server of that name is back."""


__all__ = ["DeadlineExceeded", "QueueFullError", "ServerGoneError", "ShutdownError"]

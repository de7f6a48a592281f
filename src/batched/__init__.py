"""batched: dynamic batching of inference work, with a C++ core.

Many callers each hand in one item (or a few); items that arrive close together
go to the batch function as one batch, and every caller gets its own results.
``import batched`` imports neither numpy nor torch, nor typing: submodules that
need them (batched.aio, batched.inference, batched.types, batched.utils)
load on first access.
"""

from batched._core import current_key
from batched._request import deadline, priority
from batched.batch_processor import BatchProcessor, dynamically
from batched.errors import DeadlineExceeded, QueueFullError, ServerGoneError, ShutdownError

__version__ = "0.2.0"

_LAZY_SUBMODULES = ("aio", "inference", "ipc", "types", "utils")
_LAZY_FUNCTIONS = ("serve", "connect")  # of batched.ipc

TYPE_CHECKING = False
if TYPE_CHECKING:  # type checkers see the lazy submodules as attributes
    from batched import aio, inference, ipc, types, utils
    from batched.ipc import connect, serve


def __getattr__(name: str) -> object:
    if name in _LAZY_SUBMODULES:
        import importlib  # noqa: PLC0415

        return importlib.import_module(f"batched.{name}")
    if name in _LAZY_FUNCTIONS:
        import importlib  # noqa: PLC0415

        return getattr(importlib.import_module("batched.ipc"), name)
    raise AttributeError(f"module 'batched' has no attribute {name!r}")


__all__ = [
    "BatchProcessor",
    "DeadlineExceeded",
    "QueueFullError",
    "ServerGoneError",
    "ShutdownError",
    "aio",
    "connect",
    "current_key",
    "deadline",
    "dynamically",
    "inference",
    "priority",
    "serve",
    "types",
    "utils",
]

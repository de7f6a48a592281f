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
from batched.errors import DeadlineExceeded, QueueFullError, ShutdownError

__version__ = "0.2.0"

_LAZY_SUBMODULES = ("aio", "inference", "types", "utils")

TYPE_CHECKING = False
if TYPE_CHECKING:  # type checkers see the lazy submodules as attributes
    from batched import aio, inference, types, utils


def __getattr__(name: str) -> object:
    if name in _LAZY_SUBMODULES:
        import importlib  # noqa: PLC0415

        return importlib.import_module(f"batched.{name}")
    raise AttributeError(f"module 'batched' has no attribute {name!r}")


__all__ = [
    "BatchProcessor",
    "DeadlineExceeded",
    "QueueFullError",
    "ShutdownError",
    "aio",
    "current_key",
    "deadline",
    "dynamically",
    "inference",
    "priority",
    "types",
    "utils",
]

"""The library's logger, ``logging.getLogger("batched")``.

batched never imports logging itself (it would add a third to the import
time and a few ms to the first call): while the application has not imported
logging, no handler can have been configured, and messages are dropped at no
cost. Like any library, batched adds only a NullHandler: the application
decides where records go and at which level.

What is logged:
  WARNING  a batch function raised or returned a wrong result (with the
           exception, which its callers get too); the torch op fell back to
           pure torch code
  INFO     a processor was shut down with calls still queued
  DEBUG    workers started; a call refused (queue full or shut down); state
           reset in a forked child
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    import logging
    from typing import Any, Union

_logger: logging.Logger | None = None


class _Unheard:
    """Stands in for the logger while logging is not imported."""

    def debug(self, *args: Any, **kwargs: Any) -> None:
        pass

    info = warning = debug


_UNHEARD = _Unheard()


def logger() -> Union[logging.Logger, _Unheard]:
    """The "batched" logger; a stand-in that drops messages while logging is not imported."""
    global _logger  # noqa: PLW0603
    if _logger is None:
        logging = sys.modules.get("logging")
        if logging is None:
            return _UNHEARD
        log = logging.getLogger("batched")
        if not any(isinstance(h, logging.NullHandler) for h in log.handlers):
            log.addHandler(logging.NullHandler())
        _logger = log
    return _logger

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
  DEBUG    workers started; a call refused (queue full or shut down)

Nothing a logging filter or handler raises reaches batched's drivers.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    import logging
    from typing import Any, Union

class _Unheard:
    """Stands in for the logger while logging is not imported."""

    def debug(self, *args: Any, **kwargs: Any) -> None:
        pass

    info = warning = debug


class _Guarded(_Unheard):
    """The logger, called so that nothing it raises reaches the caller: these
    calls sit in the drivers, where an exception from a user's filter or
    handler would strand the callers of a batch."""

    def __init__(self, log: logging.Logger) -> None:
        self._log = log

    def debug(self, *args: Any, **kwargs: Any) -> None:
        self._emit(self._log.debug, args, kwargs)

    def info(self, *args: Any, **kwargs: Any) -> None:
        self._emit(self._log.info, args, kwargs)

    def warning(self, *args: Any, **kwargs: Any) -> None:
        self._emit(self._log.warning, args, kwargs)

    @staticmethod
    def _emit(method: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        try:
            method(*args, **kwargs)
        except Exception:  # noqa: BLE001, S110 - a broken filter must not break batching
            pass


_UNHEARD = _Unheard()
_guarded: _Guarded | None = None


def logger() -> _Unheard:
    """The "batched" logger (its debug/info/warning never raise); a stand-in
    that drops messages while logging is not imported."""
    global _guarded  # noqa: PLW0603
    if _guarded is None:
        logging = sys.modules.get("logging")
        if logging is None:
            return _UNHEARD
        log = logging.getLogger("batched")
        if not any(isinstance(h, logging.NullHandler) for h in log.handlers):
            log.addHandler(logging.NullHandler())
        _guarded = _Guarded(log)
    return _guarded

"""Request-scoped settings: a priority and a deadline for every call made
inside a ``with`` block (docs/semantics.md, sections 3 and 11).

    with batched.deadline(200):          # whatever this request calls must be done in 200 ms
        with batched.priority(-1):       # and goes ahead of priority 0 (the default)
            vec = embed(text)

Both live in ``contextvars`` variables, so they follow the code that sets
them: a thread, an asyncio task and the tasks it starts, a FastAPI handler or
middleware. The bridge reads them when a call is queued (bridge/engine.pxi).
"""

from __future__ import annotations

import contextvars

from batched._core import clock_ns, deadline_var, priority_var

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import TracebackType
    from typing import Any, ClassVar, Optional, TypeVar

    _B = TypeVar("_B", bound="_Block")

_INT32 = (-(2**31), 2**31 - 1)
_MAX_MS = 1e9  # as every duration option (batched._options.MAX_MS)

# The tokens of the blocks entered in this context, innermost last: (block,
# token). Per context, so one block object may be entered by many tasks or
# threads at once (a module-level URGENT = batched.priority(-1)).
_entered: contextvars.ContextVar[tuple[tuple[object, contextvars.Token[Any]], ...]] = contextvars.ContextVar(
    "batched_request_blocks", default=())


def _push(block: object, token: contextvars.Token[Any]) -> None:
    _entered.set(_entered.get() + ((block, token),))


def _pop(block: object) -> contextvars.Token[Any]:
    stack = _entered.get()
    for i in range(len(stack) - 1, -1, -1):
        if stack[i][0] is block:
            _entered.set(stack[:i] + stack[i + 1:])
            return stack[i][1]
    raise RuntimeError(f"{block!r} was not entered in this context")


class _Block:
    """A ``with`` block that sets one request-scoped variable for the code
    inside it; subclasses say which (``_var``) and to what (``_value``)."""

    __slots__ = ()
    _var: ClassVar[contextvars.ContextVar[Any]]

    def _value(self) -> Any:
        raise NotImplementedError

    def __enter__(self: _B) -> _B:
        _push(self, self._var.set(self._value()))
        return self

    def __exit__(self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        self._var.reset(_pop(self))


class priority(_Block):
    """``with batched.priority(level):`` calls made inside the block (and in the
    tasks it starts) rank by ``level``: lower goes first, before the size rule
    of ``small_batch_threshold`` and arrival order; 0 is the default. Aging
    still applies, so no level starves another (docs/semantics.md, 3).

    ``level`` is an int from -2**31 to 2**31 - 1. Blocks nest: the innermost
    level applies."""

    __slots__ = ("level",)
    _var = priority_var

    def __init__(self, level: int) -> None:
        if isinstance(level, bool) or not isinstance(level, int):
            raise TypeError(f"priority level must be an int, got {type(level).__name__} {level!r}")
        if not _INT32[0] <= level <= _INT32[1]:
            raise ValueError(f"priority level must be between -2**31 and 2**31 - 1, got {level}")
        self.level = level

    def _value(self) -> int:
        return self.level

    def __repr__(self) -> str:
        return f"batched.priority({self.level})"


class deadline(_Block):
    """``with batched.deadline(ms):`` calls made inside the block (and in the
    tasks it starts) must be done within ``ms`` milliseconds of entering it.
    Their items are sent early enough to finish in time, given the batch time
    the processor has observed; an item that could no longer finish in time
    leaves the queue unsent, and its caller gets ``batched.DeadlineExceeded``
    (a ``TimeoutError``) at that moment (docs/semantics.md, 11). A call made
    after the deadline has passed raises it at once.

    Blocks nest: the earliest deadline applies (an inner block cannot extend
    an outer one). A processor's ``deadline_ms`` option applies too, if earlier."""

    __slots__ = ("ms",)
    _var = deadline_var

    def __init__(self, ms: float) -> None:
        if isinstance(ms, bool) or not isinstance(ms, (int, float)):
            raise TypeError(f"deadline must be a number of milliseconds, got {type(ms).__name__} {ms!r}")
        if not 0 <= ms <= _MAX_MS:  # also refuses nan
            raise ValueError(f"deadline must be between 0 and {_MAX_MS:.0e} ms, got {ms}")
        self.ms = ms

    def _value(self) -> int:
        at: int = clock_ns() + int(self.ms * 1e6)
        outer = deadline_var.get()
        return at if outer is None or at < outer else outer

    def __repr__(self) -> str:
        return f"batched.deadline({self.ms})"

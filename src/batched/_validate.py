"""Checks of processor options, shared by every front end."""

from __future__ import annotations

import math
import operator

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Optional


class CommonOptions:
    """The options every processor has, as attributes (set by common_options)."""

    batch_func: Callable[..., Any]
    batch_size: int
    timeout_ms: float
    small_batch_threshold: int
    max_queue_size: Optional[int]
    num_workers: int
    aging_ms: float


def positive_int(name: str, value: Any, minimum: int = 1) -> int:
    # operator.index accepts ints and int-likes such as numpy.int64, not floats.
    try:
        if isinstance(value, bool):
            raise TypeError
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return value  # type: ignore[no-any-return]


def optional_positive_int(name: str, value: Any) -> Optional[int]:
    return None if value is None else positive_int(name, value)


def milliseconds(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of milliseconds, got {type(value).__name__} {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    if value > MAX_MS:
        raise ValueError(f"{name} must be at most {MAX_MS:.0e} ms (11.6 days), got {value}")
    return float(value)


MAX_MS = 1e9  # the C++ core keeps durations in ns; this keeps them far from overflow


def at_decoration(batch_size: Any, timeout_ms: Any) -> None:
    """The checks every ``dynamically`` runs when it decorates, not at the first call."""
    positive_int("batch_size", batch_size)
    milliseconds("timeout_ms", timeout_ms)


def common_options(
    processor: Any,
    func: Any,
    *,
    batch_size: Any,
    timeout_ms: Any,
    small_batch_threshold: Any,
    max_queue_size: Any,
    num_workers: Any,
    aging_ms: Any,
) -> None:
    """Checks the options every processor has and stores them on ``processor``."""
    if not callable(func):
        raise TypeError(f"batch function must be callable, got {type(func).__name__}")
    processor.batch_func = func
    processor.batch_size = positive_int("batch_size", batch_size)
    processor.timeout_ms = milliseconds("timeout_ms", timeout_ms)
    processor.small_batch_threshold = positive_int("small_batch_threshold", small_batch_threshold, 0)
    processor.max_queue_size = optional_positive_int("max_queue_size", max_queue_size)
    processor.num_workers = positive_int("num_workers", num_workers)
    processor.aging_ms = milliseconds("aging_ms", aging_ms)

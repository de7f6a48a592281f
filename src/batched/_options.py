"""A processor's options: checked once, then handed whole to the processor and
its engines.

Every front end spells its options once, in its processor's public
``__init__`` signature (0.1.5 code and type checkers see them there; its
``dynamically`` reads them from it: decorator.Dynamically), which passes
``locals()`` to ``ProcessorOptions.of``. That checks them, fills in what the
front end does not have, and is what the processor, its engines
(bridge/engine.pxi) and the per-instance processors of a decorated method
share. The rules the options
set are in docs/semantics.md.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Hashable
    from typing import Any, Optional, Union

    from batched.types import AsyncCache, PriorityStrategy

MAX_MS = 1e9  # the C++ core keeps durations in ns; this keeps them far from overflow

#: The options Processor.configure may change while calls run (docs/api.md).
LIVE = ("batch_size", "timeout_ms", "max_queue_size", "aging_ms", "deadline_ms", "adaptive", "split_on")
#: Names in a signature's locals() that are not options.
_NOT_OPTIONS = frozenset({"self", "_func", "func", "__class__"})
#: split_on of the inference front ends when none is given: torch's out-of-memory
#: error of a GPU (or other accelerator), named so that torch is not imported
#: (torch.OutOfMemoryError since torch 2.5; torch.cuda.OutOfMemoryError before).
TORCH_OOM = ("torch.OutOfMemoryError", "torch.cuda.OutOfMemoryError")

# PriorityStrategy (by value) -> the C++ PriorityRule (csrc/batched/options.h).
# No strategy (the threaded front ends; aio's default): small calls first.
_ARRIVAL, _SMALL_FIRST, _SMALL_FIRST_THEN_SHORTEST = 0, 1, 2
_RULE_OF_STRATEGY = {1: _ARRIVAL, 2: _SMALL_FIRST_THEN_SHORTEST, 3: _SMALL_FIRST}  # NONE, LENGTH, PRIORITY

_warned_batch_item_cls = False


class ProcessorOptions:
    """Every option of a processor, checked. Built by ``of`` from a
    constructor's or a decorator's arguments; read as attributes."""

    __slots__ = (
        "batch_size",
        "timeout_ms",
        "small_batch_threshold",
        "max_queue_size",
        "num_workers",
        "aging_ms",
        "deadline_ms",
        "group_by",
        "max_batch_length",
        "priority_strategy",
        "cache",
        "padding",
        "adaptive",
        "split_on",
        "prefetch",
        "_given",
    )

    batch_size: int
    timeout_ms: float
    small_batch_threshold: int
    max_queue_size: Optional[int]
    num_workers: int
    aging_ms: float
    #: every call must be done this long after it is made; None: no deadline
    deadline_ms: Optional[float]
    #: the grouping key of an item (of a call's features, inference): a batch holds one key
    group_by: Optional[Callable[[Any], Hashable]]
    #: the most total item length (inference: row length) in one batch; None: no budget
    max_batch_length: Optional[int]
    #: as given (aio); None: small calls first
    priority_strategy: Optional[PriorityStrategy]
    cache: Optional[AsyncCache[Any, Any]]
    #: the inference front ends' padding options; None for the others
    padding: Optional[PaddingOptions]
    #: waits adapt to the load, timeout_ms being the longest (docs/semantics.md, 13)
    adaptive: bool
    #: the exceptions (classes, or qualified names) on which a batch is split in two and retried
    split_on: tuple[Union[type[BaseException], str], ...]
    #: a second worker thread forms (and pads) the next full batch while one runs (docs/semantics.md, 15)
    prefetch: bool
    _given: dict[str, Any]  # the arguments as given, for replace()

    @classmethod
    def of(cls, params: Mapping[str, Any]) -> ProcessorOptions:
        """The options among ``params`` (the ``locals()`` of a front end's
        signature), checked; raises TypeError/ValueError naming the first bad one."""
        o = cls.__new__(cls)
        o.batch_size = positive_int("batch_size", params["batch_size"])
        o.timeout_ms = milliseconds("timeout_ms", params["timeout_ms"])
        o.small_batch_threshold = positive_int("small_batch_threshold", params["small_batch_threshold"], 0)
        o.max_queue_size = optional_positive_int("max_queue_size", params["max_queue_size"])
        o.num_workers = positive_int("num_workers", params["num_workers"])
        o.aging_ms = milliseconds("aging_ms", params["aging_ms"])
        o.deadline_ms = None
        if params.get("deadline_ms") is not None:
            o.deadline_ms = milliseconds("deadline_ms", params["deadline_ms"])
            if o.deadline_ms == 0:
                raise ValueError("deadline_ms must be more than 0 (None: no deadline)")
        o.group_by = params.get("group_by")
        if o.group_by is not None and not callable(o.group_by):
            raise TypeError(f"group_by must be a function of an item returning its key, got {type(o.group_by).__name__}")
        o.max_batch_length = optional_positive_int("max_batch_length", params.get("max_batch_length"))
        o.priority_strategy = _strategy(params.get("priority_strategy"))
        o.cache = _cache(params.get("cache"))
        if params.get("batch_item_cls") is not None:
            _warn_batch_item_cls_once()
        o.padding = PaddingOptions.of(params, o.batch_size) if "padding_side" in params else None
        adaptive = params.get("adaptive", False)
        if not isinstance(adaptive, bool):
            raise TypeError(f"adaptive must be True or False, got {type(adaptive).__name__} {adaptive!r}")
        o.adaptive = adaptive
        o.split_on = _split_on(params.get("split_on"), inference=o.padding is not None)
        prefetch = params.get("prefetch", False)
        if not isinstance(prefetch, bool):
            raise TypeError(f"prefetch must be True or False, got {type(prefetch).__name__} {prefetch!r}")
        if prefetch and o.num_workers != 1:
            raise ValueError(f"prefetch forms the next batch while the one batch of num_workers=1 runs; "
                             f"got num_workers={o.num_workers}: give one of them")
        o.prefetch = prefetch
        o._given = {k: v for k, v in params.items() if k not in _NOT_OPTIONS}
        return o

    def replace(self, changes: Mapping[str, Any]) -> ProcessorOptions:
        """These options with ``changes`` (Processor.configure), checked as
        the constructor checks them; only LIVE options may change."""
        for name in changes:
            if name not in self._given:
                raise TypeError(f"configure() got an unknown option {name!r}")
            if name not in LIVE:
                raise ValueError(f"{name} is fixed once the processor is made; configure() changes "
                                 f"{', '.join(LIVE)}")
        return ProcessorOptions.of({**self._given, **changes})

    @property
    def priority_rule(self) -> int:
        """The C++ PriorityRule: 0 arrival order, 1 small calls first, 2 small
        calls first then shorter items."""
        if self.priority_strategy is None:
            return _SMALL_FIRST
        return _RULE_OF_STRATEGY[int(self.priority_strategy)]

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__
                          if not k.startswith("_") and getattr(self, k) is not None)
        return f"ProcessorOptions({shown})"


class PaddingOptions:
    """The padding options of the inference front ends, checked."""

    __slots__ = ("pad_tokens", "padding_side", "spread_kwargs", "device", "pad_to_multiple_of", "batch_size_buckets",
                 "max_batch_tokens")

    pad_tokens: Any
    padding_side: str
    spread_kwargs: bool
    device: Any
    pad_to_multiple_of: Optional[int]
    batch_size_buckets: Optional[list[int]]
    #: the most rows x padded length in a batch; None: no token budget
    max_batch_tokens: Optional[int]

    @classmethod
    def of(cls, params: Mapping[str, Any], batch_size: int) -> PaddingOptions:
        o = cls.__new__(cls)
        pad_tokens, pad_token = params["pad_tokens"], params["pad_token"]
        if pad_token is not None:
            if pad_tokens is not None and pad_tokens != pad_token:
                raise TypeError("pad_token is another name for pad_tokens: give one of them")
            pad_tokens = pad_token
        if pad_tokens is not None and not isinstance(pad_tokens, (Mapping, int, float)):
            raise TypeError(f"pad_tokens must be a dict of pad values (or one number), got {type(pad_tokens).__name__}")
        o.pad_tokens = pad_tokens
        if params["padding_side"] not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {params['padding_side']!r}")
        o.padding_side = params["padding_side"]
        o.spread_kwargs = bool(params["spread_kwargs"])
        o.pad_to_multiple_of = optional_positive_int("pad_to_multiple_of", params["pad_to_multiple_of"])
        o.batch_size_buckets = None
        if params["batch_size_buckets"] is not None:
            buckets = sorted({positive_int("batch_size_buckets entry", b) for b in params["batch_size_buckets"]})
            if not buckets:
                raise ValueError("batch_size_buckets must hold at least one size")
            if batch_size > buckets[-1]:
                raise ValueError(
                    f"batch_size_buckets {buckets} must reach batch_size={batch_size}: a full batch needs a bucket")
            o.batch_size_buckets = buckets
        o.max_batch_tokens = optional_positive_int("max_batch_tokens", params["max_batch_tokens"])
        if o.max_batch_tokens is not None and o.batch_size_buckets is not None:
            raise ValueError("max_batch_tokens counts the rows of the calls in a batch, and batch_size_buckets "
                             "adds rows of pad to it: give one of them")
        o.device = None
        if params["device"] is not None:
            import torch  # noqa: PLC0415 - padding on a device means torch

            o.device = torch.device(params["device"])
        return o


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


def _split_on(value: Any, inference: bool) -> tuple[Union[type[BaseException], str], ...]:
    if value is None:
        return TORCH_OOM if inference else ()
    if isinstance(value, (type, str)):
        value = (value,)
    try:
        kinds = tuple(value)
    except TypeError:
        raise TypeError(f"split_on must be a tuple of exception classes (or their qualified names), "
                        f"got {type(value).__name__} {value!r}") from None
    for k in kinds:
        if isinstance(k, str) and "." in k.strip(".") and " " not in k:
            continue
        if isinstance(k, type) and issubclass(k, BaseException):
            continue
        raise TypeError(f"split_on must hold exception classes or qualified names such as "
                        f"'torch.OutOfMemoryError', got {k!r}")
    return kinds


def _strategy(value: Any) -> Optional[PriorityStrategy]:
    if value is None:
        return None
    from batched.types import PriorityStrategy  # noqa: PLC0415 - only the aio front ends have it

    if not isinstance(value, PriorityStrategy):
        raise TypeError(f"priority_strategy must be a batched.types.PriorityStrategy or None, got {value!r}")
    return value


def _cache(value: Any) -> Optional[AsyncCache[Any, Any]]:
    if value is None:
        return None
    from batched.types import AsyncCache  # noqa: PLC0415 - only the aio front ends have it

    if not isinstance(value, AsyncCache):
        raise TypeError(f"cache must follow batched.types.AsyncCache, got {type(value).__name__}")
    return value


def _warn_batch_item_cls_once() -> None:
    global _warned_batch_item_cls
    if not _warned_batch_item_cls:
        _warned_batch_item_cls = True
        import warnings  # noqa: PLC0415

        warnings.warn(
            "batch_item_cls is ignored: items are queued by the C++ core, not as Python objects",
            UserWarning,
            stacklevel=4,
        )

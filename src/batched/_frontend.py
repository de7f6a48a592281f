"""What the front ends share (the decorator machinery aside, in decorator.py):
a processor's options as attributes, the engine's name and model function,
how an asyncio caller awaits a call, and how a model call's features are read.

Imported by ``import batched`` (through the threaded front end), so it
imports nothing slow: asyncio and the padding module load on first use.
"""

from __future__ import annotations

import operator
import threading

from batched._options import ProcessorOptions

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Optional

    from typing_extensions import Self

    from batched._core import Engine
    from batched._padding import RowsCollator
    from batched.types import PriorityStrategy

_asyncio: Any = None  # imported by the first await: asyncio is slow to import
_configure_lock = threading.Lock()  # one configure() at a time, whichever processor


if TYPE_CHECKING:
    _Options = ProcessorOptions  # type checkers see the options' attributes on processors
else:
    _Options = object


class Processor(_Options):
    """What every processor has: its batch function, its options (checked,
    ``proc.options``) and each option as a read-only attribute
    (``proc.batch_size``...), as 0.1.5 had them."""

    options: ProcessorOptions
    batch_func: Callable[..., Any]

    @classmethod
    def _with_options(cls, func: Callable[..., Any], options: ProcessorOptions) -> Self:
        """A processor with options checked already (the decorators')."""
        self = cls.__new__(cls)
        self._setup(func, options)
        return self

    def _setup(self, func: Callable[..., Any], options: ProcessorOptions) -> None:
        """Everything ``__init__`` does once the options are checked."""
        if not callable(func):
            raise TypeError(f"batch function must be callable, got {type(func).__name__}")
        self.batch_func = func
        self.options = options

    def __reduce__(self) -> Any:
        """A processor pickles as what it is made of, never as its queue or
        workers (docs/scaling.md): a decorated module-level function by
        reference (pickle can import it); a method's processor as that method
        of its instance; any other as its function and options, a new
        processor where it is unpickled (its stats start from zero; nothing
        queued or running travels)."""
        method_of = self.__dict__.get("_method_of")
        if method_of is not None:
            return getattr, method_of  # the method of the unpickled instance
        if _importable_as_itself(self):
            return self.__dict__["__qualname__"]  # pickle: a global of self.__module__
        return _rebuild, (type(self), self.batch_func, self.options)


    def configure(self, **changes: Any) -> None:
        """Changes settings while calls run: ``batch_size``, ``timeout_ms``,
        ``max_queue_size``, ``aging_ms``, ``deadline_ms``, ``adaptive`` and
        ``split_on``. Checked as the constructor checks them (TypeError,
        ValueError: nothing changes); in force from the next batch (a
        ``deadline_ms`` or ``max_queue_size`` from the next call). The other
        options are fixed once the processor is made (ValueError).
        Thread-safe: any thread, while batches run.
        """
        with _configure_lock:
            self._put_options(self.options.replace(changes))

    def _put_options(self, options: ProcessorOptions) -> None:
        """Puts changed live options in force on every engine."""
        for engine in self._engines():
            engine.configure(options)
        self.options = options

    def _engines(self) -> list[Engine]:
        raise NotImplementedError

    @property
    def priority_strategy(self) -> PriorityStrategy:  # type: ignore[override]  # never None here
        """The strategy in effect: PRIORITY (small calls first) unless another was given."""
        from batched.types import PriorityStrategy  # noqa: PLC0415 - enum is slow to import

        return self.options.priority_strategy or PriorityStrategy.PRIORITY


for _name in ProcessorOptions.__slots__:
    # the inference front ends show the padding options' parts (PaddingAttributes)
    if _name not in ("padding", "priority_strategy") and not _name.startswith("_"):
        setattr(Processor, _name, property(operator.attrgetter(f"options.{_name}")))


class PaddingAttributes:
    """The padding options of an inference processor, and its padding
    statistics (mixed into both inference processors)."""

    options: ProcessorOptions
    _collator: RowsCollator

    @property
    def pad_tokens(self) -> Any:
        """The pad values as given (a dict, or one number); ``{}`` if none were (as in 0.1.5)."""
        given = self._collator.pad_tokens
        return {} if given is None else given

    @property
    def padding_side(self) -> str:
        return "left" if self._collator.pad_left else "right"

    @property
    def spread_kwargs(self) -> bool:
        return self._collator.spread_kwargs

    @property
    def max_batch_tokens(self) -> Optional[int]:
        """The most rows × padded length in one batch; None: no token budget."""
        assert self.options.padding is not None
        return self.options.padding.max_batch_tokens

    def _padding_efficiency(self) -> Optional[float]:
        return self._collator.padding_efficiency()

    def clear_stats(self) -> None:
        """Sets the statistics back to zero, padding efficiency included."""
        self._collator.reset_counts()
        super().clear_stats()  # type: ignore[misc]


def _rebuild(cls: Any, func: Callable[..., Any], options: ProcessorOptions) -> Any:
    """A processor again, where one is unpickled."""
    return cls._with_options(func, options)



def _importable_as_itself(processor: Any) -> bool:
    """Whether ``processor`` is a module-level global (a decorated function)
    that an unpickler can import by name. Not for ``__main__`` (another
    process's ``__main__`` is another script), nor for a module that
    cloudpickle was asked to pickle by value."""
    module, qualname = processor.__dict__.get("__module__"), processor.__dict__.get("__qualname__")
    if not module or not qualname or module == "__main__" or "<locals>" in qualname:
        return False
    import sys  # noqa: PLC0415

    found: Any = sys.modules.get(module)
    if found is None:
        return False
    cloudpickle = sys.modules.get("cloudpickle")
    by_value = getattr(getattr(cloudpickle, "cloudpickle", None), "_is_registered_pickle_by_value", None)
    if by_value is not None and by_value(found):
        return False
    for part in qualname.split("."):
        found = getattr(found, part, None)
    return found is processor



def name_of(func: Any) -> str:
    """What errors, logs and thread names call a processor."""
    return getattr(func, "__qualname__", None) or repr(func)


def rows_collator(func: Any, options: ProcessorOptions) -> RowsCollator:
    """The collator of an inference processor: its padding options, and the
    name of its model function."""
    from batched._padding import RowsCollator  # noqa: PLC0415 - the inference front ends only

    p = options.padding
    assert p is not None
    return RowsCollator(
        name_of(func),
        p.pad_tokens,
        p.padding_side,
        device=p.device,
        pad_to_multiple_of=p.pad_to_multiple_of,
        batch_size_buckets=p.batch_size_buckets,
        spread_kwargs=p.spread_kwargs,
        side_stream=options.prefetch,
    )


def model_function(func: Callable[..., Any], spread_kwargs: bool, is_async: bool) -> Callable[..., Any]:
    """What the engine calls with a batch's padded features: ``func(features)``,
    or with ``spread_kwargs``, ``func(**features)``."""
    if not spread_kwargs:
        return func
    if is_async:

        async def spread_async(features: dict[str, Any]) -> Any:
            return await func(**features)

        return spread_async

    def spread(features: dict[str, Any]) -> Any:
        return func(**features)

    return spread


def features_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The features of a call given as ``model(features)`` or ``model(**features)``."""
    if args and kwargs:
        raise TypeError("give the features either as one dict or as keyword arguments, not both")
    if len(args) > 1:
        raise TypeError(f"a model call takes one dict of features, got {len(args)} positional arguments")
    return args[0] if args else kwargs


def submitted(engine: Engine, request: Any, loop: Any = None) -> Any:
    """Queues ``request`` (items, not an empty list, or a model call's
    features) for an asyncio caller on ``loop`` (the running loop if None):
    its record (Engine.submit). The caller awaits
    ``record.future`` in its own coroutine (no coroutine per call here: the
    garbage collector counts each one) and, if it is cancelled meanwhile, calls
    ``record.cancel()``: the call's undispatched items leave the queue
    (docs/semantics.md, 7). ``cancelled_error()`` is the class to catch."""
    global _asyncio
    if loop is None:
        if _asyncio is None:  # (inline: a function call per item shows on the hot path)
            import asyncio as _asyncio  # noqa: PLC0415
        loop = _asyncio.get_running_loop()
    return engine.submit(request, loop)


async def outcome_of(call: Any) -> Any:
    """Awaits a record of ``submitted``, as the hot paths do inline, for the
    paths where a coroutine more does not matter."""
    try:
        return await call.future
    except _asyncio.CancelledError:
        call.cancel()
        raise


def cancelled_error() -> type[BaseException]:
    """asyncio.CancelledError, for the except clauses of the callers of
    ``submitted`` (asyncio is imported by then; not at import of batched)."""
    return _asyncio.CancelledError  # type: ignore[no-any-return]

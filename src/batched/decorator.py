"""The decorator machinery shared by every ``dynamically``: bare or with
arguments, on functions (one processor) or on methods (one per instance)."""

from __future__ import annotations

import functools
import threading
import weakref

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Optional

    from batched._options import ProcessorOptions

    MakeProcessor = Callable[[Callable[..., Any]], Any]


class RuntimeGeneric:
    """What the processor classes subclass at run time in place of
    ``typing.Generic``: typing alone would double the time of ``import batched``.
    Type checkers see ``class BatchProcessor(Generic[T, U])``; at run time
    ``RuntimeGeneric[T, U]`` is plain ``object`` (the classes have their own
    ``__class_getitem__`` for ``BatchProcessor[str, int]`` in annotations)."""

    def __class_getitem__(cls, params: object) -> type:
        return object


def is_method(func: object) -> bool:
    """True if ``func`` looks like a method: its first parameter is ``self`` or ``cls``."""
    if not callable(func):
        return False
    import inspect  # noqa: PLC0415 - slow to import; only needed when decorating

    try:
        params = list(inspect.signature(func).parameters)
    except (TypeError, ValueError):
        return False
    return len(params) > 1 and params[0] in ("self", "cls")


def _is_coroutine_function(func: Callable[..., Any]) -> bool:
    import inspect  # noqa: PLC0415 - only needed when decorating

    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(getattr(func, "__call__", None))


def _bind_weakly(func: Callable[..., Any], instance: object) -> Callable[..., Any]:
    """``func`` bound to ``instance`` without keeping the instance alive.

    The processor lives in the instance's ``__dict__``; a strong reference from
    its batch function back to the instance would keep both alive for as long
    as the worker thread runs.
    """
    try:
        ref = weakref.ref(instance)
    except TypeError:  # no weakref slot: fall back to a strong reference
        return functools.partial(func, instance)

    def live_instance() -> Any:
        obj = ref()
        if obj is None:
            raise ReferenceError(f"the instance behind {func.__qualname__} was garbage collected")
        return obj

    bound: Callable[..., Any]
    if _is_coroutine_function(func):

        async def bound(*args: Any, **kwargs: Any) -> Any:
            return await func(live_instance(), *args, **kwargs)

    else:

        def bound(*args: Any, **kwargs: Any) -> Any:
            return func(live_instance(), *args, **kwargs)

    bound.__qualname__ = func.__qualname__
    bound.__name__ = func.__name__
    return bound


class _PerInstance:
    """Descriptor: one processor per instance, created on first access."""

    def __init__(self, func: Callable[..., Any], make_processor: MakeProcessor) -> None:
        self._func = func
        self._make_processor = make_processor
        self._attr = f"__batched_{func.__name__}"
        self._lock = threading.Lock()  # two first calls from two threads must share one processor

    def __set_name__(self, owner: type, name: str) -> None:
        self._attr = f"__batched_{name}"

    def __get__(self, instance: Any, owner: Optional[type] = None) -> Any:
        if instance is None:
            return self
        processor = instance.__dict__.get(self._attr)
        if processor is None:
            with self._lock:
                processor = instance.__dict__.get(self._attr)
                if processor is None:
                    processor = self._make_processor(_bind_weakly(self._func, instance))
                    instance.__dict__[self._attr] = processor
        return processor

    def __call__(self, instance: Any, *args: Any, **kwargs: Any) -> Any:
        # Class.method(instance, items)
        return self.__get__(instance, type(instance))(*args, **kwargs)


def dynamic_batch(processor_cls: Any, options: ProcessorOptions, func: Optional[Callable[..., Any]] = None) -> Any:
    """What every ``dynamically`` returns: processors of ``processor_cls``
    with ``options`` (checked once, at decoration, and shared by every
    per-instance processor of a method); a decorator if ``func`` is None."""

    def make_processor(f: Callable[..., Any]) -> Any:
        return processor_cls._with_options(f, options)

    def decorate(f: Callable[..., Any]) -> Any:
        wrapped = _PerInstance(f, make_processor) if is_method(f) else make_processor(f)
        return functools.update_wrapper(wrapped, f, updated=())

    return decorate if func is None else decorate(func)

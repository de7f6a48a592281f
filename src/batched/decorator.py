"""The decorator machinery shared by every ``dynamically``: bare or with
arguments, on functions (one processor) or on methods (one per instance)."""

from __future__ import annotations

import functools
import threading
import weakref

from batched._options import ProcessorOptions

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Optional


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
    """Descriptor: one processor per instance, created on first access.

    Pickles (a class in ``__main__`` under cloudpickle, as Ray Serve ships
    deployments) as its function, processor class and options; its lock is
    made anew where it is unpickled."""

    def __init__(self, func: Callable[..., Any], processor_cls: Any, options: ProcessorOptions) -> None:
        self._func = func
        self._cls = processor_cls
        self._options = options
        self._name = func.__name__
        self._attr = f"__batched_{func.__name__}"
        self._lock = threading.Lock()  # two first calls from two threads must share one processor

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name
        self._attr = f"__batched_{name}"

    def __get__(self, instance: Any, owner: Optional[type] = None) -> Any:
        if instance is None:
            return self
        processor = instance.__dict__.get(self._attr)
        if processor is None:
            with self._lock:
                processor = instance.__dict__.get(self._attr)
                if processor is None:
                    processor = self._cls._with_options(_bind_weakly(self._func, instance), self._options)
                    # The processor holds its instance, as a bound method does (obj.method
                    # outlives a temporary obj, and pickles as getattr(obj, name)); the
                    # cycle they make is collected with them. Its workers hold neither.
                    processor._method_of = (instance, self._name)
                    instance.__dict__[self._attr] = processor
        return processor

    def __call__(self, instance: Any, *args: Any, **kwargs: Any) -> Any:
        # Class.method(instance, items)
        return self.__get__(instance, type(instance))(*args, **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()



def dynamic_batch(processor_cls: Any, options: ProcessorOptions, func: Optional[Callable[..., Any]] = None) -> Any:
    """What every ``dynamically`` returns: processors of ``processor_cls``
    with ``options`` (checked once, at decoration, and shared by every
    per-instance processor of a method); a decorator if ``func`` is None."""

    def decorate(f: Callable[..., Any]) -> Any:
        wrapped = _PerInstance(f, processor_cls, options) if is_method(f) else processor_cls._with_options(f, options)
        return functools.update_wrapper(wrapped, f, updated=())

    return decorate if func is None else decorate(func)


class Dynamically:
    """A ``dynamically`` decorator: usable bare (``@dynamically``) or with
    options (``@dynamically(batch_size=64)``), whose options are those of its
    processor's ``__init__`` after the function, with the same defaults; read
    from the code object, so that they are spelled once, in the processor's
    signature (``inspect.signature`` shows them, computed when asked). With
    ``positional``, the options the processor takes by position may be given
    by position here too (``batched.dynamically(f, 64)``, as in 0.1.5)."""

    def __init__(self, processor_cls: Any, doc: str, *, positional: bool = False) -> None:
        init = processor_cls.__init__
        code = init.__code__
        names = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
        by_position = names[2 : code.co_argcount]  # after self and the function
        defaults = dict(zip(by_position[len(by_position) - len(init.__defaults__ or ()) :], init.__defaults__ or ()))
        defaults.update(init.__kwdefaults__ or {})
        self._cls = processor_cls
        self._positional = by_position if positional else ()
        self._defaults = defaults
        self.__doc__ = doc
        self.__name__ = self.__qualname__ = "dynamically"
        self.__module__ = processor_cls.__module__

    def __call__(self, func: Optional[Callable[..., Any]] = None, /, *args: Any, **kwargs: Any) -> Any:
        if len(args) > len(self._positional):
            most = ", ".join(["the function", *self._positional])
            raise TypeError(f"dynamically() takes at most {len(self._positional) + 1} positional argument(s) "
                            f"({most}); give the options by name")
        params = dict(self._defaults)
        params.update(zip(self._positional, args))
        for name, value in kwargs.items():
            if name not in self._defaults:
                raise TypeError(f"dynamically() got an unexpected keyword argument {name!r}")
            if name in self._positional[: len(args)]:
                raise TypeError(f"dynamically() got multiple values for argument {name!r}")
            params[name] = value
        return dynamic_batch(self._cls, ProcessorOptions.of(params), func)

    @property
    def __signature__(self) -> Any:
        import inspect  # noqa: PLC0415 - slow to import: only when someone asks

        init = inspect.signature(self._cls.__init__)
        options = list(init.parameters.values())[2:]
        if not self._positional:
            options = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in options]
        func = inspect.Parameter("func", inspect.Parameter.POSITIONAL_ONLY, default=None,
                                 annotation="Optional[Callable[..., Any]]")
        return init.replace(parameters=[func, *options], return_annotation="Any")

    def __repr__(self) -> str:
        return f"<{self.__module__}.dynamically: decorator of {self._cls.__name__}>"

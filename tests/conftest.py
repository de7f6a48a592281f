"""Shared fixtures: one behaviour suite, run against every front end.

``submit`` is a front end (uvloop's _testbase runs one suite on two loops the
same way). ``submit.make(fn, **options)`` builds an item processor around a
plain batch function ``fn(items)``; ``submit.make_model(fn, **options)`` a
model processor around ``fn(features)``; ``submit(proc, *args, **kwargs)``
hands it one call and returns a concurrent.futures.Future of the outcome:

  * "thread":    BatchProcessor / ModelBatchProcessor, a blocking call on a pool thread;
  * "acall":     the same processors, ``await proc.acall(...)`` on an event loop in another thread;
  * "aio":       batched.aio's processors with the plain function (its worker threads);
  * "aio-async": batched.aio's processors with the function as an ``async def``
                 (the event-loop driver). It runs ``fn`` in a thread
                 (asyncio.to_thread), as an async model wrapper would, so a
                 function that blocks (a Gate) holds its batch, not the loop.
  * "remote":    the thread front end's processors served by ``batched.serve``
                 and called through ``batched.connect``'s client (shared
                 memory, as from another process), ``await client.acall(...)``
                 on an event loop. The suite's other uses of the processor
                 (stats, configure, shutdown) reach the served processor.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import itertools
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest

TIMEOUT = 30.0  # seconds: far above any wait here; reaching it means a hang
#: batched.serve / batched.connect: Linux, Python >= 3.10
REMOTE = ("remote",) if sys.platform.startswith("linux") and hasattr(os, "eventfd") else ()
FRONT_ENDS = ("thread", "acall", "aio", "aio-async", *REMOTE)
#: the front ends whose callers await on an event loop (cancellation)
ASYNCIO_FRONT_ENDS = ("acall", "aio", "aio-async", *REMOTE)
#: the front ends whose batch function runs on the processor's worker threads
THREAD_DRIVER_FRONT_ENDS = ("thread", "acall", "aio")


class _LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def submit(self, coro: Any) -> Future[Any]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(TIMEOUT)
        self.loop.close()


def as_async(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` as an ``async def`` that runs it in a thread, under its name."""

    async def run_in_thread(*args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(fn, *args, **kwargs)

    try:
        functools.update_wrapper(run_in_thread, fn)
    except AttributeError:  # a callable object: no __name__
        pass
    run_in_thread.__qualname__ = getattr(fn, "__qualname__", type(fn).__qualname__)
    return run_in_thread


_served = itertools.count()


class Served:
    """The "remote" front end's processor: ``processor``, served in this
    process under a name of its own; calls go through ``client``, anything
    else (stats, configure, shutdown, options) reaches the processor."""

    def __init__(self, processor: Any) -> None:
        import batched

        name = f"test-{os.getpid()}-{next(_served)}"
        self.processor = processor
        self.server = batched.serve(processor, name, block=False)
        self.client = batched.connect(name)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.processor, name)

    def close(self) -> None:
        self.client.close()
        self.server.stop()


class FrontEnd:
    """One way of reaching a processor (see the module docstring)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._pool: ThreadPoolExecutor | None = None
        self._loop: _LoopThread | None = None
        self._served: list[Served] = []
        if name == "thread":
            self._pool = ThreadPoolExecutor(max_workers=256)
        else:
            self._loop = _LoopThread()

    @property
    def asyncio(self) -> bool:
        return self.name != "thread"

    def _fn(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        return as_async(fn) if self.name == "aio-async" else fn

    def make(self, fn: Callable[..., Any], **options: Any) -> Any:
        from batched import BatchProcessor
        from batched.aio import AsyncBatchProcessor

        cls = AsyncBatchProcessor if self.name.startswith("aio") else BatchProcessor
        return self._serve(cls(self._fn(fn), **options))

    def _serve(self, proc: Any) -> Any:
        if self.name != "remote":
            return proc
        served = Served(proc)
        self._served.append(served)
        return served

    def make_model(self, fn: Callable[..., Any], **options: Any) -> Any:
        from batched.aio.inference import AsyncModelBatchProcessor
        from batched.inference import ModelBatchProcessor

        cls = AsyncModelBatchProcessor if self.name.startswith("aio") else ModelBatchProcessor
        return self._serve(cls(self._fn(fn), **options))

    def __call__(self, proc: Any, *args: Any, **kwargs: Any) -> Future[Any]:
        if self._pool is not None:
            return self._pool.submit(proc, *args, **kwargs)
        assert self._loop is not None
        call = self._call_of(proc)

        async def on_loop() -> Any:
            return await call(*args, **kwargs)

        return self._loop.submit(on_loop())

    def within(self, context: Callable[[], Any], proc: Any, *args: Any, **kwargs: Any) -> Future[Any]:
        """Like calling the front end, with the call made inside ``with context():``
        in the calling thread or task (batched.deadline, batched.priority)."""
        if self._pool is not None:

            def in_thread() -> Any:
                with context():
                    return proc(*args, **kwargs)

            return self._pool.submit(in_thread)
        assert self._loop is not None
        call = self._call_of(proc)

        async def on_loop() -> Any:
            with context():
                return await call(*args, **kwargs)

        return self._loop.submit(on_loop())

    def _call_of(self, proc: Any) -> Any:
        if isinstance(proc, Served):
            return proc.client.acall
        return proc.acall if self.name == "acall" else proc

    def close(self) -> None:
        for served in self._served:
            served.close()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)  # a caller stuck by a bug must not hang teardown
        if self._loop is not None:
            self._loop.close()


@pytest.fixture(params=FRONT_ENDS)
def submit(request: pytest.FixtureRequest) -> Iterator[FrontEnd]:
    """The behaviour suite runs once per front end (a test narrows the list
    with ``@pytest.mark.parametrize("submit", ASYNCIO_FRONT_ENDS, indirect=True)``)."""
    front = FrontEnd(request.param)
    yield front
    front.close()


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    """Waits for a state (not for time): fails the test if it never comes."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for: {what}")
        time.sleep(0.001)


def queued(proc: Any) -> int:
    return proc.stats.queue_size


class Gate:
    """A batch function wrapper whose first batch blocks until ``open()``, so a
    test can queue work behind it in a known order."""

    def __init__(self, fn: Callable[[list[Any]], list[Any]]) -> None:
        self.fn = fn
        self.entered = threading.Event()
        self._open = threading.Event()
        self.batches: list[list[Any]] = []
        self._first = True

    def __call__(self, items: list[Any]) -> list[Any]:
        self.batches.append(list(items))
        if self._first:
            self._first = False
            self.entered.set()
            if not self._open.wait(TIMEOUT):
                raise RuntimeError("gate never opened")
        return self.fn(items)

    def open(self) -> None:
        self._open.set()



@pytest.fixture(autouse=True)
def _collect() -> Iterator[None]:
    yield
    gc.collect()


def worker_threads(part: str) -> list[threading.Thread]:
    """Live worker threads of processors whose function name contains ``part``."""
    return [t for t in threading.enumerate() if t.name.startswith("batched:") and part in t.name]


def run_threads(n: int, target: Any, limit: float = TIMEOUT * 4) -> None:
    """Runs ``target(k)`` on n threads started together; re-raises the first
    failure; fails if a thread is still running after ``limit`` seconds."""
    errors: list[BaseException] = []
    start = threading.Barrier(n)

    def body(k: int) -> None:
        try:
            start.wait(TIMEOUT)
            target(k)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=body, args=(k,), daemon=True) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(limit)
        assert not t.is_alive(), "a caller hung"
    if errors:
        raise errors[0]

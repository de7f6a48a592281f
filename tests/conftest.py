"""Shared fixtures: one behaviour suite, run against every front end.

``submit(processor, items)`` hands a call to the processor through a front end
and returns a concurrent.futures.Future of its result:
  * "thread":  a blocking call on a pool thread (``processor(items)``);
  * "asyncio": ``await processor.acall(items)`` on an event loop in another thread.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest

TIMEOUT = 30.0  # seconds: far above any wait here; reaching it means a hang


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


class FrontEnd:
    """How a test reaches a processor: ``make(fn, **options)`` builds one,
    ``submit(proc, items)`` hands it a call and returns a concurrent Future."""

    def __init__(self, name: str, make: Callable[..., Any], submit: Callable[[Any, Any], Future[Any]]) -> None:
        self.name = name
        self.make = make
        self._submit = submit

    def __call__(self, proc: Any, items: Any) -> Future[Any]:
        return self._submit(proc, items)


@pytest.fixture(params=["thread", "asyncio", "aio"])
def submit(request: pytest.FixtureRequest) -> Iterator[FrontEnd]:
    """The behaviour suite runs once per front end:
    * thread:  BatchProcessor, a blocking call on a pool thread;
    * asyncio: BatchProcessor.acall on an event loop in another thread;
    * aio:     batched.aio.AsyncBatchProcessor (the same plain batch function,
      run by its worker threads), awaited on an event loop in another thread.
    """
    from batched import BatchProcessor
    from batched.aio import AsyncBatchProcessor
    from batched.types import PriorityStrategy

    if request.param == "thread":
        pool = ThreadPoolExecutor(max_workers=256)
        yield FrontEnd("thread", BatchProcessor, lambda proc, items: pool.submit(proc, items))
        pool.shutdown(wait=False, cancel_futures=True)  # a caller stuck by a bug must not hang teardown
        return
    lt = _LoopThread()
    if request.param == "asyncio":

        async def acall(proc: Any, items: Any) -> Any:
            return await proc.acall(items)

        yield FrontEnd("asyncio", BatchProcessor, lambda proc, items: lt.submit(acall(proc, items)))
    else:

        async def await_aio(proc: Any, items: Any) -> Any:
            return await proc(items)

        def make_aio(fn: Any, **options: Any) -> Any:
            # PRIORITY: small calls first, as in the threaded API (aio's default,
            # NONE, is arrival order, as in 0.1.5; test_aio covers it).
            return AsyncBatchProcessor(fn, priority_strategy=PriorityStrategy.PRIORITY, **options)

        yield FrontEnd("aio", make_aio, lambda proc, items: lt.submit(await_aio(proc, items)))
    lt.close()


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

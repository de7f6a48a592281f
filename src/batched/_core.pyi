"""Type stubs of the Cython bridge batched._core (see _core.pyx and bridge/*.pxi).

Private: the public API is batched.BatchProcessor and friends. Items and
results are opaque to the engine (``Any``); what a call holds is its
collator's business (items, or a model call's features).
"""

import asyncio
import contextvars
import weakref
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any, Optional

from batched._options import ProcessorOptions

_live_engines: weakref.WeakSet[Engine]
_running_batch: contextvars.ContextVar[Optional[_LoopBatch]]
priority_var: contextvars.ContextVar[int]
deadline_var: contextvars.ContextVar[Optional[int]]

current_key_var: contextvars.ContextVar[Any]

def current_key() -> Any:
    """The grouping key of the batch being run (processors with ``group_by``)."""

def clock_ns() -> int:
    """The core's clock (steady_clock), in ns: what deadlines are measured on."""

class _Call:
    """One call's request record; ``future`` is set for asyncio callers only."""

    @property
    def future(self) -> asyncio.Future[Any]: ...
    def cancel(self) -> None: ...

class Collator:
    """What a call holds and what a batch is (items: ItemCollator; rows: batched._padding.RowsCollator)."""

    measure_lengths: bool
    def __init__(self, name: str) -> None: ...
    @property
    def name(self) -> str: ...
    @property
    def keep_calls_whole(self) -> bool: ...

class ItemCollator(Collator): ...

class Driver:
    """Who runs an engine's batches."""

class ThreadDriver(Driver):
    def __init__(self, num_workers: int) -> None: ...

class LoopDriver(Driver):
    def __init__(self, loop: Optional[asyncio.AbstractEventLoop], num_workers: int) -> None: ...
    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...
    @property
    def running(self) -> set[asyncio.Task[Any]]: ...
    @property
    def timer_armed(self) -> bool: ...
    def on_timer(self, engine: Engine) -> None: ...
    def redrive(self, engine: Engine) -> None: ...
    def end(self, b: _LoopBatch, out: Any, error: Optional[BaseException]) -> None: ...

class Engine:
    """A C++ scheduler, the batch function, a collator and a driver."""

    def __init__(
        self, fn: Callable[[Any], Any], options: ProcessorOptions, name: str, collator: Collator, driver: Driver
    ) -> None: ...
    @property
    def options(self) -> ProcessorOptions: ...
    @property
    def fn(self) -> Callable[[Any], Any]: ...
    @property
    def name(self) -> str: ...
    @property
    def collator(self) -> Collator: ...
    @property
    def driver(self) -> Driver: ...
    @property
    def closed(self) -> bool: ...
    @property
    def deadlines(self) -> bool: ...
    def call(self, request: Any) -> Any:
        """One call, blocking: an item -> its result, a list -> a list; features -> rows of the output."""
    def submit(self, request: Any, loop: asyncio.AbstractEventLoop) -> _Call: ...
    def configure(self, options: ProcessorOptions) -> None:
        """Puts changed live options in force from the next batch."""
    def shutdown(self, wait: bool = True, timeout: Optional[float] = None) -> None: ...
    def after_fork(self) -> None: ...
    def queue_size(self) -> int: ...
    def clear_stats(self) -> None: ...
    def stats(self, latency_bounds_s: Optional[Sequence[float]] = None) -> dict[str, Any]:
        """A snapshot as a dict; its keys are read by batched._stats.BatchProcessorStats._from_core."""

class _LoopBatch:
    """A batch popped by the event-loop driver, owned by the task running it."""

    def on_task_done(self, task: asyncio.Task[Any]) -> None: ...

def empty_stats(latency_bounds_s: Optional[Sequence[float]] = None) -> dict[str, Any]:
    """The snapshot of a processor that has done nothing yet."""

def histogram_bounds_s() -> tuple[float, ...]:
    """The upper bounds (seconds) of the core's latency histogram buckets."""

def counts_at_bounds(cumulative: Sequence[int], bounds_s: Iterable[float]) -> list[int]:
    """Cumulative counts at ``bounds_s`` from those at each of histogram_bounds_s()."""

def _deliver(calls: list[_Call]) -> None: ...
def _work(engine: Engine) -> None: ...
def _run_on_loop(engine: Engine, b: _LoopBatch) -> Coroutine[Any, Any, None]: ...
def _shutdown_all_at_exit() -> None: ...
def _after_fork_in_child() -> None: ...

"""Type stubs of the Cython bridge batched._core (see _core.pyx).

Private: the public API is batched.BatchProcessor and friends. Items and
results are opaque to the engine (``Any``); a rows call's ``request`` is a
``batched._padding.Rows`` and its pieces are what the collator's ``split``
returns.
"""

import asyncio
import contextvars
import weakref
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any, Optional

from batched._padding import Padder, Rows

_live_engines: weakref.WeakSet[Engine]
_running_batch: contextvars.ContextVar[Optional[_BatchBox]]

class _Call:
    """One call's request record; ``future`` is set for asyncio callers only."""

    @property
    def future(self) -> asyncio.Future[Any]: ...
    def cancel(self) -> None: ...

class Engine:
    """A scheduler, its worker threads (or event-loop driver) and the batch function."""

    def __init__(
        self,
        fn: Callable[[Any], Any],
        *,
        batch_size: int,
        timeout_ms: float,
        small_batch_threshold: int,
        max_queue_size: Optional[int],
        num_workers: int,
        aging_ms: float,
        name: str,
        max_batch_length: Optional[int] = None,
        small_first: bool = True,
        priority_by_length: bool = False,
        event_loop_driver: bool = False,
        collator: Optional[Padder] = None,
    ) -> None: ...
    @property
    def fn(self) -> Callable[[Any], Any]: ...
    @property
    def collator(self) -> Optional[Padder]: ...
    @property
    def name(self) -> str: ...
    @property
    def running(self) -> set[asyncio.Task[Any]]: ...
    def reset_after_fork(self) -> None: ...
    # ---- callers
    def call(self, items: Any) -> Any:
        """One item -> its result; a list -> a list of results. Blocks."""
    def call_rows(self, request: Rows) -> list[tuple[int, Any]]:
        """A rows call's pieces, as ``[(first row, piece), ...]``."""
    def submit_async(self, items: Any, loop: asyncio.AbstractEventLoop) -> _Call: ...
    def submit_rows_async(self, request: Rows, loop: asyncio.AbstractEventLoop) -> _Call: ...
    # ---- the event-loop driver
    def on_timer(self, loop: asyncio.AbstractEventLoop) -> None: ...
    def armed_timers(self) -> int: ...
    def batch_inputs_of(self, box: _BatchBox) -> Any: ...
    def end_async_batch(
        self, box: _BatchBox, out: Any, error: Optional[BaseException], loop: asyncio.AbstractEventLoop
    ) -> None: ...
    # ---- workers, lifecycle, stats
    def worker_main(self) -> None: ...
    def shutdown(self, wait: bool = True, timeout: Optional[float] = None) -> None: ...
    def queue_size(self) -> int: ...
    def clear_stats(self) -> None: ...
    @staticmethod
    def empty_stats() -> dict[str, Any]: ...
    def stats(self, latency_bounds_s: Optional[Sequence[float]] = None) -> dict[str, Any]:
        """A snapshot as a dict; its keys are read by batched._stats.BatchProcessorStats._from_core."""

class _BatchBox:
    """A batch popped by the event-loop driver, owned by the task running it."""

    def on_task_done(self, task: asyncio.Task[Any]) -> None: ...

def histogram_bounds_s() -> tuple[float, ...]:
    """The upper bounds (seconds) of the core's latency histogram buckets."""

def counts_at_bounds(cumulative: Sequence[int], bounds_s: Iterable[float]) -> list[int]:
    """Cumulative counts at ``bounds_s`` from those at each of histogram_bounds_s()."""

def _deliver(calls: list[_Call]) -> None: ...
def _run_on_loop(engine: Engine, box: _BatchBox) -> Coroutine[Any, Any, None]: ...
def _shutdown_all_at_exit() -> None: ...
def _reset_all_after_fork() -> None: ...

"""Type stubs of batched._testing (see _testing.pyx): the C++ batching policy
on explicit time, for property tests. Not used by the library."""

from collections.abc import Hashable, Sequence
from typing import Optional

#: Batch::kNotFinished: the ``busy_until`` of a worker that was idle.
IDLE: int
#: batched::kNever: ``next_deadline()`` when nothing is queued.
NEVER: int

class _ModelEntry:
    @property
    def call_id(self) -> Hashable: ...

class PolicyModel:
    """A ``batched::BatchPolicy`` whose entries the model owns (one per call id)."""

    def __init__(
        self,
        max_batch_size: int,
        timeout_us: int,
        max_batch_length: int = 0,
        aging_us: int = 100000,
        keep_calls_whole: bool = False,
        priority_rule: str = "small_first",
        small_batch_threshold: int = 8,
    ) -> None: ...
    @property
    def max_batch_size(self) -> int: ...
    @property
    def max_batch_length(self) -> int: ...
    @property
    def timeout_us(self) -> int: ...
    @property
    def aging_us(self) -> int: ...
    @property
    def priority_rule(self) -> str:
        """arrival, small_first or small_first_then_shortest"""
    @property
    def small_batch_threshold(self) -> int: ...
    @property
    def keep_calls_whole(self) -> bool: ...
    def add(
        self, call_id: Hashable, count: int, priority: int, lengths: Optional[Sequence[int]], now_ns: int
    ) -> None: ...
    def ready(self, now_ns: int, busy_until_ns: Optional[int] = None) -> Optional[str]:
        """"full", "timeout", "budget", "drain", or None."""
    def pop(self, now_ns: int, reason: str = "timeout") -> list[tuple[Hashable, int, int]]: ...
    def remove(self, call_id: Hashable) -> int: ...
    def taken(self, call_id: Hashable) -> int: ...
    def next_deadline(self) -> int: ...
    def size(self) -> int: ...
    def __len__(self) -> int: ...

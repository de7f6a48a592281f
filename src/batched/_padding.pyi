"""Type stubs of batched._padding (see _padding.pyx): the collator of the
inference front ends' engines. Private."""

from collections.abc import Iterable
from typing import Any, Optional

# A batch's span: (the call's rows, first row, row count).
_Span = tuple[Rows, int, int]

class Rows:
    """One call's rows: the request the engine queues for a call."""

    @property
    def n_rows(self) -> int: ...
    @property
    def lengths(self) -> Any:
        """array('I'): each row's length (first feature)."""
    @property
    def on_host(self) -> bool: ...

class _Spec:
    @property
    def key(self) -> Any: ...

class Padder:
    """Pads batches of one processor's calls (the collator of its engine)."""

    stage_to_device: bool
    def __init__(
        self,
        name: str,
        pad_tokens: Any,
        padding_side: str,
        *,
        device: Any = None,
        pad_to_multiple_of: Optional[int] = None,
        batch_size_buckets: Optional[Iterable[int]] = None,
        spread_kwargs: bool = False,
        stage_to_device: bool = False,
    ) -> None: ...
    @property
    def name(self) -> str: ...
    @property
    def pad_tokens(self) -> Any:
        """As given: a dict of pad values, one number, or None."""
    @property
    def pad_left(self) -> bool: ...
    @property
    def device(self) -> Any:
        """The target torch device, or None."""
    @property
    def spread_kwargs(self) -> bool: ...
    def request(self, features: Any) -> Rows:
        """The Rows of one call's features (a mapping); TypeError/ValueError if unusable."""
    def padded_rows(self, n: int) -> int: ...
    def padding_efficiency(self) -> Optional[float]: ...
    def reset_counts(self) -> None: ...
    def collate(self, spans: list[_Span]) -> dict[str, Any]: ...
    def split(self, out: Any, spans: list[_Span]) -> list[tuple[int, Any]]:
        """One piece ``(how to join it, part of out)`` per span."""
    def join(self, pieces: list[tuple[int, tuple[int, Any]]]) -> Any:
        """A call's result from its pieces ``[(first row, piece), ...]``."""

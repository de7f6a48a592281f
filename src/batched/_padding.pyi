"""Type stubs of batched._padding (see _padding.pyx and padding/*.pxi): the
collator of the inference front ends' engines. Private."""

from collections.abc import Iterable
from typing import Any, Optional

from batched._core import Collator

# A batch's span: (the call's rows, first row, row count).
_Span = tuple[Rows, int, int]

class Rows:
    """One call's rows: what a rows call queues."""

    @property
    def n_rows(self) -> int: ...
    @property
    def lengths(self) -> Any:
        """array('I'): each row's length (first feature)."""
    @property
    def on_host(self) -> bool: ...

class FeatureReader:
    """Reads each call's features into Rows, checked against the first call's."""

    def __init__(
        self, name: str, pad_by_key: dict[Any, Any], default_pad: Any, *, device: Any = None, spread_kwargs: bool = False
    ) -> None: ...
    @property
    def name(self) -> str: ...
    def request(self, features: Any) -> Rows: ...

class HostBuffers:
    """The pool of host memory padded batches are views of."""

class Padder:
    """Pads a batch's rows into one array or tensor per feature."""

    stage_to_device: bool
    def __init__(
        self,
        padding_side: str,
        *,
        device: Any = None,
        pad_to_multiple_of: Optional[int] = None,
        batch_size_buckets: Optional[Iterable[int]] = None,
        side_stream: bool = False,
    ) -> None: ...
    @property
    def pad_left(self) -> bool: ...
    @property
    def device(self) -> Any: ...
    def padded_rows(self, n: int) -> int: ...
    def padding_efficiency(self) -> Optional[float]: ...
    def reset_counts(self) -> None: ...

class OutputSplitter:
    """Cuts a batch's output into each call's rows; joins a split call's pieces."""

    def __init__(self, name: str) -> None: ...
    def join(self, pieces: list[tuple[int, Any]]) -> Any: ...

class RowsCollator(Collator):
    """The collator of the inference front ends: a FeatureReader, a Padder and an OutputSplitter."""

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
        side_stream: bool = False,
    ) -> None: ...
    @property
    def reader(self) -> FeatureReader: ...
    @property
    def padder(self) -> Padder: ...
    @property
    def splitter(self) -> OutputSplitter: ...
    @property
    def pad_tokens(self) -> Any:
        """As given: a dict of pad values, one number, or None."""
    @property
    def spread_kwargs(self) -> bool: ...
    @property
    def pad_left(self) -> bool: ...
    @property
    def device(self) -> Any:
        """The target torch device, or None."""
    def request(self, features: Any) -> Rows:
        """The Rows of one call's features (a mapping); TypeError/ValueError if unusable."""
    def collate(self, spans: list[_Span]) -> dict[str, Any]: ...
    def join(self, pieces: list[tuple[int, Any]]) -> Any: ...
    def padding_efficiency(self) -> Optional[float]: ...
    def reset_counts(self) -> None: ...

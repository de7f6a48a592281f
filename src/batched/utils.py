"""Helpers shared by the front ends (and kept from batched 0.1.5)."""

from __future__ import annotations

from collections.abc import Generator, Iterable, Sequence
from contextlib import contextmanager
from typing import TypeVar

from batched.decorator import is_method

T = TypeVar("T")


@contextmanager
def ensure_import(install_name: str | None = None) -> Generator[None, None, None]:
    """Turns an ImportError into one that says which package to install."""
    try:
        yield
    except ImportError as e:
        module = e.name or str(e)
        package = install_name or module
        raise ImportError(f"{module} is required for this feature: pip install {package}") from e


__all__ = ["batch_iter", "ensure_import", "first", "is_method"]


def first(it: Iterable[T]) -> T:
    return next(iter(it))


def batch_iter(seq: Sequence[T], batch_size: int) -> Generator[Sequence[T], None, None]:
    for i in range(0, len(seq), batch_size):
        yield seq[i : i + batch_size]

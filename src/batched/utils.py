"""Helpers shared by the front ends (and kept from batched 0.1.5)."""

from __future__ import annotations

from collections.abc import Generator, Iterable, Sequence
from contextlib import contextmanager
from typing import Any, Optional, TypeVar

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


__all__ = ["AsyncDiskCache", "batch_iter", "ensure_import", "first", "is_method"]


def first(it: Iterable[T]) -> T:
    return next(iter(it))


def batch_iter(seq: Sequence[T], batch_size: int) -> Generator[Sequence[T], None, None]:
    for i in range(0, len(seq), batch_size):
        yield seq[i : i + batch_size]


class AsyncDiskCache:
    """An ``AsyncCache`` on disk, backed by the optional ``diskcache`` package.

    Keys are the items themselves (pickled by diskcache); ``stats()`` counts
    gets, hits and sets with their times.
    """

    def __init__(self, directory: Optional[str] = None, **settings: Any) -> None:
        with ensure_import("diskcache"):
            import diskcache  # noqa: PLC0415

        from batched._stats import CacheStats  # noqa: PLC0415

        self._cache = diskcache.Cache(directory, **settings)
        self._stats = CacheStats()

    async def get(self, key: Any) -> Any:
        import time  # noqa: PLC0415

        start = time.perf_counter()
        value = self._cache.get(key)
        self._stats.update_get(hit=value is not None, time_taken=time.perf_counter() - start)
        return value

    async def set(self, key: Any, value: Any) -> None:
        import time  # noqa: PLC0415

        start = time.perf_counter()
        self._cache.set(key, value)
        self._stats.update_set(time_taken=time.perf_counter() - start)

    async def clear(self) -> None:
        self._cache.clear()

    def stats(self) -> Any:
        return self._stats

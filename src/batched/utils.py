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
    """An ``AsyncCache`` on disk, backed by the optional ``diskcache`` package
    (the constructor of batched 0.1.5's).

    Entries live in ``cache_dir`` (created if missing) and are shared with
    other processes using the same directory. Reads and writes run on a
    thread pool of at most ``max_threads`` threads, so the event loop never
    waits on the disk. ``expiration_seconds``: entries expire that long after
    they were set (None: never). ``collect_stats``: ``stats()`` counts gets,
    hits and sets with their times (off by default, as in 0.1.5). Other
    keyword arguments go to ``diskcache.Cache`` (e.g. ``size_limit``). Keys
    are the items themselves, pickled by diskcache; override ``_get_key`` to
    derive them.
    """

    def __init__(
        self,
        cache_dir: str = "~/.cache/batched",
        *,
        max_threads: int = 16,
        collect_stats: bool = False,
        expiration_seconds: Optional[float] = None,
        **kwargs: Any,
    ) -> None:
        with ensure_import("diskcache"):
            import diskcache  # noqa: PLC0415

        from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415
        from pathlib import Path  # noqa: PLC0415

        from batched._stats import CacheStats  # noqa: PLC0415

        if isinstance(max_threads, bool) or max_threads < 1:
            raise ValueError(f"max_threads must be at least 1, got {max_threads!r}")
        if expiration_seconds is not None and not expiration_seconds > 0:
            raise ValueError(f"expiration_seconds must be positive or None, got {expiration_seconds!r}")
        # resolved: diskcache's threads open the database lazily, after any chdir
        path = Path(cache_dir).expanduser().resolve()
        path.mkdir(parents=True, exist_ok=True)
        # what it pickles as: a cache on the same directory (stats start from zero)
        self._made_with = (str(path), {"max_threads": max_threads, "collect_stats": collect_stats,
                                       "expiration_seconds": expiration_seconds, **kwargs})
        self._cache = diskcache.Cache(str(path), **{"statistics": False, **kwargs})
        # one pool each, as in 0.1.5: slow writes do not hold up reads
        self._get_pool = ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="batched-diskcache-get")
        self._set_pool = ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="batched-diskcache-set")
        self._stats = CacheStats()
        self._collect_stats = collect_stats
        self._expiration_seconds = expiration_seconds

    @staticmethod
    async def _on_pool(pool: Any, fn: Any, *args: Any) -> Any:
        import asyncio  # noqa: PLC0415

        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    async def get(self, key: Any) -> Any:
        import time  # noqa: PLC0415

        start = time.perf_counter()
        value = await self._on_pool(self._get_pool, self._get, key)
        if self._collect_stats:
            self._stats.update_get(hit=value is not None, time_taken=time.perf_counter() - start)
        return value

    async def set(self, key: Any, value: Any) -> None:
        import time  # noqa: PLC0415

        start = time.perf_counter()
        await self._on_pool(self._set_pool, self._set, key, value)
        if self._collect_stats:
            self._stats.update_set(time_taken=time.perf_counter() - start)

    # On the pool threads, as in 0.1.5 (subclasses may override these three).

    def __reduce__(self) -> Any:
        """Pickles as a cache on the same directory (a processor with this
        cache can be sent to another process; its entries are shared through
        the directory, its stats start from zero there)."""
        path, options = self._made_with
        return _disk_cache, (type(self), path, options)
    def _get(self, key: Any) -> Any:
        return self._cache.get(self._get_key(key))

    def _set(self, key: Any, value: Any) -> None:
        self._cache.set(self._get_key(key), value, expire=self._expiration_seconds)

    async def clear(self) -> None:
        await self._on_pool(self._set_pool, self._cache.clear)

    def clear_stats(self) -> None:
        """Sets the statistics back to zero."""
        from batched._stats import CacheStats  # noqa: PLC0415

        self._stats = CacheStats()

    def stats(self) -> Any:
        return self._stats

    def _get_key(self, key: Any) -> Any:
        """The disk key of an item (the item itself); subclasses may override it."""
        return key


def _disk_cache(cls: Any, path: str, options: dict[str, Any]) -> Any:
    return cls(path, **options)

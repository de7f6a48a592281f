"""batched, the way typed code uses it; checked by `mypy --strict` in CI.

Every annotated assignment below states the type that batched's annotations
give: a wrong annotation in the library makes mypy fail here. The file also
runs (`python examples/typed_usage.py`) and checks its results.
"""

from __future__ import annotations

import asyncio
from typing import Any, Optional

import numpy as np
import numpy.typing as npt

import batched
from batched import aio
from batched.types import BatchProcessorStats, CacheStats, Percentiles, PriorityStrategy


# ---- threads: batched.dynamically


@batched.dynamically
def lengths(texts: list[str]) -> list[int]:
    return [len(t) for t in texts]


@batched.dynamically(batch_size=64, timeout_ms=2.0, max_queue_size=10_000)
def scale(xs: list[float]) -> tuple[float, ...]:  # any Sequence of results
    return tuple(2.0 * x for x in xs)


@batched.dynamically(batch_size=8)
def embed(texts: list[str]) -> npt.NDArray[np.float32]:  # not a Sequence: results are Any
    return np.ones((len(texts), 4), dtype=np.float32)


class Tokenizer:
    def __init__(self, offset: int) -> None:
        self.offset = offset

    @batched.dynamically
    def ids(self, words: list[str]) -> list[int]:
        return [len(w) + self.offset for w in words]

    @batched.dynamically(batch_size=16)
    def upper(self, words: list[str]) -> list[str]:
        return [w.upper() for w in words]


def threads() -> None:
    one: int = lengths("four")
    many: list[int] = lengths(["a", "bb", "ccc"])
    assert (one, many) == (4, [1, 2, 3])

    proc: batched.BatchProcessor[str, int] = lengths
    assert proc is lengths

    doubled: float = scale(1.5)
    assert doubled == 3.0 and scale([1.0, 2.0]) == [2.0, 4.0]

    row: Any = embed("x")
    assert row.shape == (4,)

    tok = Tokenizer(offset=10)
    word_id: int = tok.ids("abc")
    word_ids: list[int] = tok.ids(["a", "bb"])
    shout: str = tok.upper("hi")
    assert (word_id, word_ids, shout) == (13, [11, 12], "HI")
    per_instance: batched.BatchProcessor[str, int] = tok.ids
    assert per_instance is tok.ids and per_instance is not Tokenizer(0).ids

    # The class itself, constructed directly.
    def squares(xs: list[int]) -> list[int]:
        return [x * x for x in xs]

    square = batched.BatchProcessor(squares, batch_size=4)
    sq: list[int] = square([1, 2, 3])
    assert sq == [1, 4, 9]
    typed = batched.BatchProcessor(lengths.batch_func, 4)
    size: int = typed.batch_size
    assert size == 4

    stats: BatchProcessorStats = lengths.stats
    processed: int = stats.total_processed
    avg: float = stats.avg_batch_size
    wait: Percentiles = stats.queue_wait_ms
    p99: float = wait.p99
    histogram: dict[int, int] = stats.batch_size_histogram
    reasons: dict[str, int] = stats.batches_by_reason
    failed: int = stats.failed_batches + stats.failed_items
    refused: int = stats.rejected_items + stats.cancelled_items
    oldest: float = stats.oldest_wait_ms
    cache: Optional[CacheStats] = stats.cache_stats
    assert processed == 4 and avg > 0 and p99 >= 0 and sum(histogram.values()) == stats.total_batches
    assert sum(reasons.values()) == stats.total_batches and failed == refused == 0 and oldest >= 0
    assert cache is None and stats.padding_efficiency is None

    square.shutdown()
    typed.shutdown()


# ---- asyncio: batched.aio.dynamically


@aio.dynamically
async def fetch(keys: list[int]) -> list[str]:
    await asyncio.sleep(0)
    return [f"v{k}" for k in keys]


@aio.dynamically(batch_size=32, priority_strategy=PriorityStrategy.LENGTH, max_batch_length=1000)
def plain(words: list[str]) -> list[int]:  # a plain function runs on worker threads
    return [len(w) for w in words]


class Service:
    @aio.dynamically(timeout_ms=1.0)
    async def lookup(self, keys: list[int]) -> list[bool]:
        return [k % 2 == 0 for k in keys]


async def asyncio_callers() -> None:
    value: str = await fetch(1)
    values: list[str] = await fetch([2, 3])
    assert (value, values) == ("v1", ["v2", "v3"])

    got = await asyncio.gather(*(fetch(i) for i in range(5)))  # __call__ returns an awaitable
    assert got == [f"v{i}" for i in range(5)]

    n: int = await plain("four")
    assert n == 4

    service = Service()  # the processor holds its instance weakly: keep it alive
    even: bool = await service.lookup(4)
    evens: list[bool] = await service.lookup([1, 2])
    assert even and evens == [False, True]

    proc: aio.AsyncBatchProcessor[int, str] = fetch
    assert proc.stats.total_processed == 8

    # A threaded processor from asyncio code.
    length: int = await lengths.acall("abc")
    all_lengths: list[int] = await lengths.acall(["a", "bb"])
    assert (length, all_lengths) == (3, [1, 2])


# ---- models: batched.inference.dynamically and batched.aio.inference.dynamically


@batched.inference.dynamically(pad_tokens={"input_ids": 0}, padding_side="right")
def model(features: dict[str, npt.NDArray[np.int64]]) -> npt.NDArray[np.int64]:
    sums: npt.NDArray[np.int64] = features["input_ids"].sum(axis=1)
    return sums


@batched.inference.dynamically(spread_kwargs=True)
def spread(input_ids: npt.NDArray[np.int64], attention_mask: npt.NDArray[np.int64]) -> dict[str, npt.NDArray[np.int64]]:
    return {"tokens": attention_mask.sum(axis=1)}


class Encoder:
    @batched.inference.dynamically(batch_size=16)
    def forward(self, features: dict[str, npt.NDArray[np.int64]]) -> list[int]:  # one result per row
        return [int(r.max()) for r in features["input_ids"]]


@aio.inference.dynamically(pad_tokens={"input_ids": 0})
async def async_model(features: dict[str, npt.NDArray[np.int64]]) -> npt.NDArray[np.int64]:
    sums: npt.NDArray[np.int64] = features["input_ids"].sum(axis=1)
    return sums


def models() -> None:
    ids = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.int64)
    sums: npt.NDArray[np.int64] = model({"input_ids": ids})
    also: npt.NDArray[np.int64] = model(input_ids=[np.array([1, 2]), np.array([3])])
    assert sums.tolist() == [6, 15] and also.tolist() == [3, 3]

    out: dict[str, npt.NDArray[np.int64]] = spread(input_ids=ids, attention_mask=np.ones_like(ids))
    assert out["tokens"].tolist() == [3, 3]

    encoder = Encoder()
    maxima: list[int] = encoder.forward({"input_ids": ids})
    assert maxima == [3, 6]

    proc: batched.inference.ModelBatchProcessor[npt.NDArray[np.int64]] = model
    side: str = proc.padding_side
    efficiency: Optional[float] = proc.stats.padding_efficiency
    assert side == "right" and efficiency is not None and 0 < efficiency <= 1


async def async_models() -> None:
    ids = np.array([[1, 2], [3, 4]], dtype=np.int64)
    sums: npt.NDArray[np.int64] = await async_model({"input_ids": ids})
    assert sums.tolist() == [3, 7]
    threaded: npt.NDArray[np.int64] = await model.acall({"input_ids": ids})
    assert threaded.tolist() == [3, 7]
    proc: aio.inference.AsyncModelBatchProcessor[npt.NDArray[np.int64]] = async_model
    assert proc.stats.total_processed == 2


def main() -> None:
    threads()
    asyncio.run(asyncio_callers())
    models()
    asyncio.run(async_models())
    for p in (lengths, scale, embed, model, spread):
        p.shutdown()
    print("typed_usage: ok")


if __name__ == "__main__":
    main()

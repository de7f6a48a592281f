"""Grouping keys on every front end (docs/semantics.md, section 12):
``group_by``, ``batched.current_key()``, list calls whose items have several
keys, and the errors of a bad ``group_by``."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from conftest import TIMEOUT, FrontEnd, wait_until

import batched

LONG_MS = 60_000.0


class KeyedFn:
    """A batch function that records each batch with the key it was told, and
    returns 10 * x + key, so a result says which batch computed it."""

    def __init__(self) -> None:
        self.batches: list[tuple[Any, list[int]]] = []
        self.lock = threading.Lock()

    def __call__(self, xs: list[int]) -> list[int]:
        key = batched.current_key()
        with self.lock:
            self.batches.append((key, list(xs)))
        return [10 * x + key for x in xs]


def key_of(x: int) -> int:
    return x % 3


def test_batches_never_mix_keys_and_each_caller_gets_its_own(submit: FrontEnd) -> None:
    fn = KeyedFn()
    proc = submit.make(fn, batch_size=8, timeout_ms=5, group_by=key_of)
    futs = [(x, submit(proc, x)) for x in range(300)]
    for x, fut in futs:
        assert fut.result(TIMEOUT) == 10 * x + key_of(x)
    assert sum(len(xs) for _, xs in fn.batches) == 300
    for key, xs in fn.batches:
        assert {key_of(x) for x in xs} == {key}, f"batch of key {key} holds {xs}"
    assert len(fn.batches) < 300  # they did batch
    proc.shutdown()


def test_a_list_of_several_keys_is_split_by_key_and_put_back_in_order(submit: FrontEnd) -> None:
    fn = KeyedFn()
    proc = submit.make(fn, batch_size=4, timeout_ms=1, group_by=key_of)
    xs = list(range(11))
    assert submit(proc, xs).result(TIMEOUT) == [10 * x + key_of(x) for x in xs]
    for key, batch in fn.batches:
        assert {key_of(x) for x in batch} == {key}
    assert submit(proc, [3, 6, 9]).result(TIMEOUT) == [30, 60, 90]  # one key: one call
    proc.shutdown()


def test_a_failing_key_fails_the_list_with_its_first_failed_item(submit: FrontEnd) -> None:
    def fn(xs: list[int]) -> list[int]:
        if batched.current_key() == 2:
            raise ValueError(f"key 2 fails: {xs}")
        return [x + 1 for x in xs]

    proc = submit.make(fn, batch_size=8, timeout_ms=1, group_by=key_of)
    err = submit(proc, [0, 3, 2, 5, 1]).exception(TIMEOUT)
    assert isinstance(err, ValueError) and "key 2 fails" in str(err)
    assert submit(proc, [0, 1, 3]).result(TIMEOUT) == [1, 2, 4]  # the others still work
    proc.shutdown()


def test_each_key_fills_and_times_out_on_its_own(submit: FrontEnd) -> None:
    fn = KeyedFn()
    proc = submit.make(fn, batch_size=4, timeout_ms=LONG_MS, group_by=key_of)
    lone = submit(proc, 1)  # key 1: waits for its own batch to fill
    wait_until(lambda: proc.stats.queue_size == 1, "the lone item to queue")
    full = [submit(proc, x) for x in (0, 3, 6, 9)]  # key 0 fills a batch of 4 at once
    assert [f.result(TIMEOUT) for f in full] == [0, 30, 60, 90]
    # Key 1's item then leaves by the drain rule (it queued while the worker
    # was busy: section 1), alone: never in key 0's batch.
    assert lone.result(TIMEOUT) == 11
    assert fn.batches == [(0, [0, 3, 6, 9]), (1, [1])]
    assert proc.stats.batches_by_reason["full"] == 1
    proc.shutdown()


def test_inference_processors_group_calls_by_their_features(submit: FrontEnd) -> None:
    np = pytest.importorskip("numpy")
    seen: list[tuple[Any, tuple[int, ...]]] = []

    def model(features: dict[str, Any]) -> Any:
        seen.append((batched.current_key(), features["ids"].shape))
        return features["ids"].sum(axis=1)

    def long_or_short(features: dict[str, Any]) -> str:
        return "long" if features["ids"].shape[1] > 8 else "short"

    proc = submit.make_model(model, batch_size=16, timeout_ms=5, group_by=long_or_short)
    calls = []
    for i in range(40):
        length = 3 if i % 2 else 20
        ids = np.full((1, length), i, dtype=np.int64)
        calls.append((i * length, submit(proc, {"ids": ids})))
    for want, fut in calls:
        assert fut.result(TIMEOUT).tolist() == [want]
    for key, shape in seen:
        assert (shape[1] > 8) == (key == "long"), (key, shape)
    proc.shutdown()


def test_current_key_outside_a_batch_function() -> None:
    with pytest.raises(LookupError, match="only known inside the batch function"):
        batched.current_key()


def test_bad_group_by_values_are_clear_errors(submit: FrontEnd) -> None:
    with pytest.raises(TypeError, match="group_by must be a function"):
        batched.BatchProcessor(lambda xs: xs, group_by=5)  # type: ignore[arg-type]
    fn = KeyedFn()
    proc = submit.make(fn, batch_size=4, timeout_ms=1, group_by=lambda x: [x])
    err = submit(proc, 1).exception(TIMEOUT)
    assert isinstance(err, TypeError) and "unhashable key: list [1]" in str(err)

    def boom(x: int) -> int:
        raise KeyError(f"no key for {x}")

    proc2 = submit.make(fn, batch_size=4, timeout_ms=1, group_by=boom)
    err = submit(proc2, 7).exception(TIMEOUT)
    assert isinstance(err, KeyError) and "no key for 7" in str(err)
    assert fn.batches == [] and proc.stats.queue_size == 0 and proc2.stats.queue_size == 0
    proc.shutdown()
    proc2.shutdown()


# ---- max_batch_tokens: rows x padded length (docs/semantics.md, 2) ----


def test_max_batch_tokens_bounds_rows_times_padded_length(submit: FrontEnd) -> None:
    np = pytest.importorskip("numpy")
    shapes: list[tuple[int, int]] = []

    def model(features: dict[str, Any]) -> Any:
        ids = features["ids"]
        shapes.append(ids.shape)
        return (ids != 0).sum(axis=1) * 1000 + ids[:, 0]

    proc = submit.make_model(model, batch_size=64, timeout_ms=2, max_batch_tokens=256, pad_to_multiple_of=8,
                             priority_strategy=batched.types.PriorityStrategy.LENGTH)
    rng = np.random.default_rng(5)
    calls = []
    for i in range(120):
        length = int(rng.integers(1, 60)) if i % 40 else 300  # now and then one longer than the budget
        ids = np.full((1, length), i + 1, dtype=np.int64)
        calls.append((i, length, submit(proc, {"ids": ids})))
    for i, length, fut in calls:
        assert fut.result(TIMEOUT).tolist() == [length * 1000 + i + 1]
    assert sum(rows for rows, _ in shapes) == 120
    for rows, length in shapes:
        assert length % 8 == 0
        assert rows * length <= 256 or rows == 1, (rows, length)
    assert proc.max_batch_tokens == 256
    proc.shutdown()


def test_max_batch_tokens_values_are_checked() -> None:
    from batched.inference import ModelBatchProcessor

    with pytest.raises(ValueError, match="max_batch_tokens"):
        ModelBatchProcessor(lambda f: f, max_batch_tokens=0)
    with pytest.raises(ValueError, match="give one of them"):
        ModelBatchProcessor(lambda f: f, max_batch_tokens=512, batch_size_buckets=[8, 32])
    with pytest.raises(TypeError, match="max_batch_tokens"):
        ModelBatchProcessor(lambda f: f, max_batch_tokens=2.5)  # type: ignore[arg-type]


def test_a_split_list_raises_the_error_of_its_first_failed_item(submit: FrontEnd) -> None:
    # Key 1 holds positions 0 and 2 (2 fails alone), key 2 position 1 (its batch fails):
    # position 1 is the first failed item, whatever part it is in.
    def fn(xs: list[str]) -> list[Any]:
        if batched.current_key() == 2:
            raise RuntimeError(f"the batch of key 2 failed: {xs}")
        return [ValueError(f"item {x} failed") if x == "c" else x.upper() for x in xs]

    proc = submit.make(fn, batch_size=8, timeout_ms=1, group_by=lambda x: 2 if x == "b" else 1)
    err = submit(proc, ["a", "b", "c"]).exception(TIMEOUT)
    assert isinstance(err, RuntimeError) and "key 2 failed" in str(err), repr(err)
    err = submit(proc, ["a", "c"]).exception(TIMEOUT)
    assert isinstance(err, ValueError) and "item c failed" in str(err)
    assert submit(proc, ["a", "d"]).result(TIMEOUT) == ["A", "D"]
    proc.shutdown()

"""The inference front ends: batched.inference and batched.aio.inference.

Every behaviour test runs for each way of reaching a model (conftest.submit:
a blocking call, ``acall``, aio with a plain model function, aio with an
``async def`` one). The models
here mostly return their padded input, so each caller can check that it got
back exactly its own rows, padded as asked.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import numpy as np
import pytest
from conftest import TIMEOUT, Gate, wait_until

from batched.inference import ModelBatchProcessor


def identity(features: dict[str, Any]) -> dict[str, Any]:
    return dict(features)


def expect_padded(row: np.ndarray, data: np.ndarray, pad: Any, left: bool) -> None:
    """``row`` is ``data`` padded along axis 0 with ``pad``, on the left or right."""
    n = len(data)
    assert row.dtype == data.dtype
    assert row.shape[1:] == data.shape[1:]
    body, rest = (row[len(row) - n :], row[: len(row) - n]) if left else (row[:n], row[n:])
    np.testing.assert_array_equal(body, data)
    assert (rest == pad).all()


@pytest.mark.parametrize("side", ["right", "left"])
def test_each_caller_gets_its_own_padded_rows(submit: ModelFrontEnd, side: str) -> None:
    seen: list[dict[str, tuple[int, ...]]] = []

    def model(features: dict[str, Any]) -> dict[str, Any]:
        seen.append({k: v.shape for k, v in features.items()})
        return identity(features)

    proc = submit.make_model(model, batch_size=8, timeout_ms=2, pad_tokens={"ids": -1, "vecs": 0.5}, padding_side=side)
    rng = np.random.default_rng(1)
    calls = []
    for i in range(120):
        n, length = int(rng.integers(1, 4)), int(rng.integers(0, 12))
        ids = rng.integers(0, 1000, size=(n, length)).astype(np.int32) + i * 1000
        vecs = rng.standard_normal((n, length, 3)).astype(np.float16)
        calls.append((ids, vecs, submit(proc, {"ids": ids, "vecs": vecs})))
    for ids, vecs, fut in calls:
        out = fut.result(TIMEOUT)
        assert set(out) == {"ids", "vecs"}
        assert out["ids"].shape[0] == len(ids)
        for r in range(len(ids)):
            expect_padded(out["ids"][r], ids[r], -1, side == "left")
            expect_padded(out["vecs"][r], vecs[r], np.float16(0.5), side == "left")
    assert max(s["ids"][0] for s in seen) <= 8
    assert all(s["vecs"][2:] == (3,) and s["vecs"][:2] == s["ids"] for s in seen)
    assert proc.stats.total_processed == sum(len(c[0]) for c in calls)


def test_ragged_rows_and_calls_larger_than_a_batch(submit: ModelFrontEnd) -> None:
    batches: list[int] = []

    def model(features: dict[str, Any]) -> np.ndarray:
        ids = features["ids"]
        batches.append(len(ids))
        return (ids != 0).sum(axis=1) * 1000 + ids[:, 0]  # each row's length and first token

    proc = submit.make_model(model, batch_size=4, timeout_ms=1)
    rng = np.random.default_rng(2)
    calls = []
    for i in range(30):
        rows = [np.arange(1, int(rng.integers(2, 9)), dtype=np.int64) + 100 * i + r for r in range(int(rng.integers(1, 11)))]
        calls.append((rows, submit(proc, ids=rows)))
    for rows, fut in calls:
        out = fut.result(TIMEOUT)
        np.testing.assert_array_equal(out, [len(r) * 1000 + r[0] for r in rows])
    assert max(batches) <= 4
    assert sum(batches) == sum(len(rows) for rows, _ in calls)


def test_output_structures_come_back_as_given(submit: ModelFrontEnd) -> None:
    def model(features: dict[str, Any]) -> Any:
        x = features["x"][:, 0]
        kind = int(x[0]) % 4  # every row of a batch in this test has the same kind
        if kind == 0:
            return x * 2
        if kind == 1:
            return [x * 2, x + 1]
        if kind == 2:
            return {"double": x * 2, "plus": x + 1}
        return [f"row {v}" for v in x]  # one result per row

    procs = [submit.make_model(model, batch_size=16, timeout_ms=1) for _ in range(4)]
    futs = [(k, v, submit(procs[k], {"x": np.full((2, 1), v, dtype=np.int64)})) for k in range(4) for v in (k, k + 4)]
    for kind, v, fut in futs:
        out = fut.result(TIMEOUT)
        if kind == 0:
            np.testing.assert_array_equal(out, [2 * v, 2 * v])
        elif kind == 1:
            assert isinstance(out, list) and len(out) == 2
            np.testing.assert_array_equal(out[0], [2 * v] * 2)
            np.testing.assert_array_equal(out[1], [v + 1] * 2)
        elif kind == 2:
            assert set(out) == {"double", "plus"}
            np.testing.assert_array_equal(out["plus"], [v + 1] * 2)
        else:
            assert out == [f"row {v}", f"row {v}"]


def test_spread_kwargs_and_pad_token_alias(submit: ModelFrontEnd) -> None:
    def model(input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return np.stack([input_ids.sum(axis=1), attention_mask.sum(axis=1)], axis=1)

    proc = submit.make_model(model, spread_kwargs=True, pad_token={"input_ids": 5}, timeout_ms=1)
    ids = np.array([[1, 2, 3]])
    out = submit(proc, input_ids=ids, attention_mask=np.ones_like(ids)).result(TIMEOUT)
    np.testing.assert_array_equal(out, [[6, 3]])
    assert proc.pad_tokens == {"input_ids": 5}


def test_one_pad_value_for_all_features() -> None:
    proc = ModelBatchProcessor(identity, pad_tokens=9, timeout_ms=0)
    gate = threading.Barrier(2)
    with ThreadPoolExecutor(2) as pool:
        a = pool.submit(lambda: (gate.wait(), proc({"a": np.zeros((1, 1), np.int8), "b": np.zeros((1, 1), np.int8)}))[1])
        b = pool.submit(lambda: (gate.wait(), proc({"a": np.zeros((1, 3), np.int8), "b": np.zeros((1, 2), np.int8)}))[1])
        ra, rb = a.result(TIMEOUT), b.result(TIMEOUT)
    for r, (la, lb) in ((ra, (1, 1)), (rb, (3, 2))):
        assert (r["a"][0, :la] == 0).all() and (r["a"][0, la:] == 9).all()
        assert (r["b"][0, :lb] == 0).all() and (r["b"][0, lb:] == 9).all()
    proc.shutdown()


def test_results_are_views_of_the_batch_output() -> None:
    outputs: list[np.ndarray] = []

    def model(features: dict[str, Any]) -> np.ndarray:
        outputs.append(features["x"] * 2)
        return outputs[-1]

    proc = ModelBatchProcessor(model, timeout_ms=0)
    out = proc({"x": np.ones((3, 4), np.float32)})
    assert np.shares_memory(out, outputs[0])
    proc.shutdown()


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_batch_memory_is_reused_only_once_nothing_refers_to_it(backend: str) -> None:
    """Padded batches live on reused buffers (no page faults per batch), but a
    buffer is never reused while an array of an earlier batch, or a view of
    it, is still held: here the model keeps every other batch's input."""
    to_array: Callable[[np.ndarray], Any] = np.asarray
    if backend == "torch":
        torch = _torch()
        to_array = torch.from_numpy
    kept: list[tuple[Any, np.ndarray]] = []
    addresses: list[int] = []

    def model(features: dict[str, Any]) -> Any:
        x = features["x"]
        addresses.append(x.data_ptr() if backend == "torch" else x.__array_interface__["data"][0])
        if len(addresses) % 2:
            kept.append((x[:, 1:], np.array(x[:, 1:].tolist())))  # a view, and a copy of what it showed
        return x[:, 0] * 0 + 1

    proc = ModelBatchProcessor(model, timeout_ms=0)
    for i in range(40):
        assert proc({"x": to_array(np.full((2, 8 + i % 3), i, np.int64))}).tolist() == [1, 1]
    for view, copy in kept:
        np.testing.assert_array_equal(np.array(view.tolist()), copy)
    # batches whose arrays were dropped gave their memory to later ones
    assert len(set(addresses[1::2])) < len(addresses[1::2])
    proc.shutdown()


def test_bucketed_batch_sizes_and_padded_lengths(submit: ModelFrontEnd) -> None:
    shapes: list[tuple[int, ...]] = []

    def model(features: dict[str, Any]) -> np.ndarray:
        ids = features["ids"]
        shapes.append(ids.shape)
        return ids.sum(axis=1)

    proc = submit.make_model(model, batch_size=8, timeout_ms=1, batch_size_buckets=[2, 8, 4], pad_to_multiple_of=16, pad_tokens={"ids": 0})
    futs = []
    for i in range(40):
        ids = np.full((1, 1 + i % 20), i, dtype=np.int64)
        futs.append((ids, submit(proc, {"ids": ids})))
    for ids, fut in futs:
        np.testing.assert_array_equal(fut.result(TIMEOUT), [ids.sum()])
    assert shapes and all(s[0] in (2, 4, 8) and s[1] % 16 == 0 for s in shapes)
    # pad rows of a bucket are not counted as work
    assert proc.stats.total_processed == 40


def test_max_batch_length_counts_row_lengths() -> None:
    lengths: list[int] = []

    def model(features: dict[str, Any]) -> np.ndarray:
        ids = features["ids"]
        lengths.append(int((ids >= 0).sum()))
        return ids[:, 0]

    gate = Gate(model)
    proc = ModelBatchProcessor(gate, batch_size=64, timeout_ms=50, max_batch_length=20, pad_tokens={"ids": -1})
    with ThreadPoolExecutor(32) as pool:
        first = pool.submit(proc, {"ids": np.zeros((1, 1), np.int64)})
        assert gate.entered.wait(TIMEOUT)
        futs = [pool.submit(proc, {"ids": np.full((1, 3 + i % 5), i, np.int64)}) for i in range(30)]
        wait_until(lambda: proc.stats.queue_size == 30, "30 rows queued")
        gate.open()
        assert first.result(TIMEOUT)[0] == 0
        assert [f.result(TIMEOUT)[0] for f in futs] == list(range(30))
    assert all(n <= 20 for n in lengths[1:])
    assert sum(lengths[1:]) == sum(3 + i % 5 for i in range(30))
    proc.shutdown()


# ---- errors reach the caller that caused them, and only that caller ----


def test_bad_features_fail_only_their_caller(submit: ModelFrontEnd) -> None:
    batches: list[int] = []

    def model(features: dict[str, Any]) -> np.ndarray:
        batches.append(len(features["ids"]))
        return features["ids"][:, 0]

    proc = submit.make_model(model, batch_size=16, timeout_ms=5)
    good = np.arange(12, dtype=np.int64).reshape(3, 4)
    assert submit(proc, {"ids": good}).result(TIMEOUT).tolist() == [0, 4, 8]
    bad_calls = [
        ({"ids": good, "extra": good}, ValueError, "do not match those of earlier calls"),
        ({"other": good}, ValueError, "do not match those of earlier calls"),
        ({"ids": good.astype(np.int32)}, ValueError, "dtype int32"),
        ({"ids": good[:, :, None]}, ValueError, "share dtype and trailing shape"),
        ({"ids": np.arange(4)}, ValueError, "give shape [1, L]"),
        ({"ids": [np.arange(3), "text"]}, TypeError, "row 1 of feature 'ids' must be a numpy array"),
        ({"ids": "text"}, TypeError, "must be a numpy array, a torch tensor or a list"),
        ({"ids": np.zeros((0, 4), np.int64)}, ValueError, "hold no rows"),
        ({}, ValueError, "no features"),
        (["not", "a", "dict"], TypeError, "features must be a dict"),
    ]
    good_futs = []
    for features, kind, message in bad_calls:
        good_futs.append(submit(proc, {"ids": good + 100}))
        with pytest.raises(kind, match=message.replace("[", r"\[")):
            submit(proc, features).result(TIMEOUT)
    for fut in good_futs:
        assert fut.result(TIMEOUT).tolist() == [100, 104, 108]
    assert sum(batches) == 3 * (1 + len(bad_calls))


def test_bad_outputs_fail_the_batch_with_a_clear_error(submit: ModelFrontEnd) -> None:
    outputs: dict[int, Any] = {
        1: np.zeros(3),
        2: 42,
        3: [np.zeros(1), np.zeros(3), np.zeros(4)],
        4: {"a": np.zeros(2), "b": np.zeros(5)},
    }

    def model(features: dict[str, Any]) -> Any:
        return outputs[int(features["x"][0, 0])]

    proc = submit.make_model(model, timeout_ms=0)
    x = lambda v: {"x": np.full((2, 1), v)}  # noqa: E731
    with pytest.raises(ValueError, match=r"returned 3 rows in its output for a batch of 2 rows"):
        submit(proc, x(1)).result(TIMEOUT)
    with pytest.raises(TypeError, match=r"must return an array or tensor with the batch on axis 0"):
        submit(proc, x(2)).result(TIMEOUT)
    with pytest.raises(ValueError, match=r"returned a list of 3 elements for a batch of 2 rows"):
        # neither one array of 2 rows per output nor one result per row
        submit(proc, x(3)).result(TIMEOUT)
    with pytest.raises(ValueError, match=r"returned 5 rows in its output 'b'"):
        submit(proc, x(4)).result(TIMEOUT)
    outputs[5] = np.arange(2)
    assert submit(proc, x(5)).result(TIMEOUT).tolist() == [0, 1]  # the worker survived


@pytest.mark.parametrize(
    ("options", "kind", "message"),
    [
        ({"padding_side": "middle"}, ValueError, "padding_side must be 'left' or 'right'"),
        ({"pad_to_multiple_of": 0}, ValueError, "pad_to_multiple_of must be at least 1"),
        ({"batch_size": 8, "batch_size_buckets": [2, 4]}, ValueError, "must reach batch_size=8"),
        ({"batch_size_buckets": []}, ValueError, "at least one size"),
        ({"pad_tokens": {"a": 1}, "pad_token": {"a": 2}}, TypeError, "give one of them"),
        ({"pad_tokens": "zero"}, TypeError, "pad_tokens must be a dict"),
        ({"batch_size": 0}, ValueError, "batch_size must be at least 1"),
    ],
)
@pytest.mark.parametrize("decorator", ["batched.inference", "batched.aio.inference"])
def test_bad_options_fail_at_decoration(decorator: str, options: dict[str, Any], kind: type, message: str) -> None:
    import importlib

    module = importlib.import_module(decorator)
    with pytest.raises(kind, match=message):
        module.dynamically(**options)(identity)


def test_pad_value_that_does_not_fit_the_dtype() -> None:
    proc = ModelBatchProcessor(identity, pad_tokens={"ids": -1}, timeout_ms=0)
    with pytest.raises(ValueError, match=r"pad value -1 of feature 'ids' does not fit its dtype uint8"):
        proc({"ids": np.zeros((1, 2), np.uint8)})
    # the failed first call fixed nothing: another dtype is fine
    assert proc({"ids": np.zeros((1, 2), np.int16)})["ids"].dtype == np.int16
    proc.shutdown()


def test_object_arrays_are_refused() -> None:
    proc = ModelBatchProcessor(identity, timeout_ms=0)
    with pytest.raises(TypeError, match="hold Python objects"):
        proc({"text": np.array([["a", None]], dtype=object)})
    proc.shutdown()


def test_non_contiguous_inputs_are_read_correctly() -> None:
    proc = ModelBatchProcessor(identity, timeout_ms=0)
    base = np.arange(60, dtype=np.int64).reshape(6, 10)
    view = base[::2, 1::3]  # strided on both axes
    out = proc({"x": view})["x"]
    np.testing.assert_array_equal(out, view)
    rows = [base[i, ::-2] for i in range(3)]
    out = proc({"x": rows})["x"]
    for r in range(3):
        np.testing.assert_array_equal(out[r], rows[r])
    proc.shutdown()


def test_method_gets_one_processor_per_instance() -> None:
    from batched import inference

    class Model:
        def __init__(self, scale: int) -> None:
            self.scale = scale

        @inference.dynamically(timeout_ms=0)
        def __call__(self, features: dict[str, Any]) -> np.ndarray:
            return features["x"][:, 0] * self.scale

    a, b = Model(2), Model(3)
    assert a({"x": np.ones((1, 1))}).tolist() == [2]
    assert b(x=np.ones((2, 1))).tolist() == [3, 3]


def test_shapes_of_numpy_kinds_are_kept() -> None:
    proc = ModelBatchProcessor(identity, timeout_ms=0, pad_tokens={"b": True, "c": 1 + 2j})
    out = proc(
        a=np.zeros((1, 2, 2, 2), np.float64),
        b=np.zeros((1, 2), np.bool_),
        c=np.zeros((1, 2), np.complex64),
        d=np.zeros((1, 2), "datetime64[ns]"),
    )
    assert [out[k].dtype for k in "abcd"] == [np.float64, np.bool_, np.complex64, np.dtype("datetime64[ns]")]
    assert out["a"].shape == (1, 2, 2, 2)
    proc.shutdown()


# ---- torch tensors (skipped where torch is not installed) ----


def _torch() -> Any:
    return pytest.importorskip("torch")


def test_torch_cpu_tensors_keep_their_dtype(submit: ModelFrontEnd) -> None:
    torch = _torch()
    proc = submit.make_model(identity, batch_size=8, timeout_ms=2, pad_tokens={"ids": 3, "emb": -1.5}, padding_side="left")
    g = torch.Generator().manual_seed(0)
    calls = []
    for i in range(40):
        length = int(torch.randint(1, 9, (1,), generator=g))
        ids = torch.randint(0, 100, (1, length), generator=g, dtype=torch.int16) + i
        emb = torch.randn(length, 4, generator=g).to(torch.bfloat16)
        calls.append((ids, emb, submit(proc, {"ids": ids, "emb": [emb]})))
    for ids, emb, fut in calls:
        out = fut.result(TIMEOUT)
        assert out["ids"].dtype == torch.int16 and out["emb"].dtype == torch.bfloat16
        n = ids.shape[1]
        assert torch.equal(out["ids"][0, -n:], ids[0]) and bool((out["ids"][0, :-n] == 3).all())
        assert torch.equal(out["emb"][0, -n:], emb) and bool((out["emb"][0, :-n] == -1.5).all())


def test_numpy_features_padded_into_torch_tensors_on_a_device() -> None:
    torch = _torch()
    seen: list[Any] = []

    def model(features: dict[str, Any]) -> Any:
        seen.append(features["ids"])
        return features["ids"].sum(dim=1)

    proc = ModelBatchProcessor(model, timeout_ms=0, device="cpu", pad_tokens={"ids": 1})
    out = proc({"ids": np.array([[5, 6, 7]], dtype=np.int32)})
    assert isinstance(seen[0], torch.Tensor) and seen[0].dtype == torch.int32
    assert out.tolist() == [18]
    proc.shutdown()


@pytest.mark.parametrize("side", ["right", "left"])
def test_staging_to_a_device_packs_copies_and_pads_there(side: str) -> None:
    """The device path (host rows packed, copied once, padded by the torch op),
    run on the CPU so it is tested without a GPU."""
    torch = _torch()
    proc = ModelBatchProcessor(identity, batch_size=16, timeout_ms=2, device="cpu", pad_tokens={"ids": -7}, padding_side=side)
    proc._collator.stage_to_device = True
    rng = np.random.default_rng(3)
    with ThreadPoolExecutor(16) as pool:
        calls = []
        for i in range(60):
            if i % 2:
                rows = [rng.integers(0, 99, size=int(rng.integers(0, 7))).astype(np.int64) + 100 * i for _ in range(2)]
            else:
                rows = list(rng.integers(0, 99, size=(3, int(rng.integers(1, 7)))).astype(np.int64) + 100 * i)
            feature = rows if i % 2 else np.stack(rows)
            vec = [np.full((len(r), 2), i + 1, np.float32) for r in rows]
            calls.append((rows, vec, pool.submit(proc, ids=feature, vec=vec)))
        for rows, vec, fut in calls:
            out = fut.result(TIMEOUT)
            assert isinstance(out["ids"], torch.Tensor) and out["ids"].dtype == torch.int64
            assert out["vec"].dtype == torch.float32
            for r, row in enumerate(rows):
                expect_padded(out["ids"][r].numpy(), row, -7, side == "left")
                expect_padded(out["vec"][r].numpy(), vec[r], 0, side == "left")  # not in pad_tokens: 0
    proc.shutdown()


def test_device_tensors_are_padded_where_they_are(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tensors not in host memory go to the torch op as the callers' blocks
    (views, never a copy through the host); "meta" tensors stand in for CUDA."""
    torch = _torch()
    from batched import torch_ops

    calls: list[tuple[list[Any], int]] = []
    real = torch_ops.pad_stack

    def spy(blocks: list[Any], max_length: int, pad_value: Any, pad_left: bool = False) -> Any:
        calls.append((blocks, max_length))
        return real(blocks, max_length, pad_value, pad_left)

    monkeypatch.setattr(torch_ops, "pad_stack", spy)
    shapes: list[tuple[int, ...]] = []

    def model(features: dict[str, Any]) -> Any:
        shapes.append(tuple(features["ids"].shape))
        return features["ids"][:, 0]

    proc = ModelBatchProcessor(model, batch_size=8, timeout_ms=20, pad_to_multiple_of=4, batch_size_buckets=[8])
    a = torch.empty((2, 3), dtype=torch.int64, device="meta")
    b = [torch.empty(5, dtype=torch.int64, device="meta")]
    with ThreadPoolExecutor(2) as pool:
        fa, fb = pool.submit(proc, ids=a), pool.submit(proc, ids=b)
        out_a, out_b = fa.result(TIMEOUT), fb.result(TIMEOUT)
    assert out_a.device.type == "meta" and tuple(out_a.shape) == (2,) and tuple(out_b.shape) == (1,)
    blocks = [blk for blocks, _ in calls for blk in blocks]
    assert sorted(tuple(t.shape) for t in blocks if t.shape[1]) == [(1, 5), (2, 3)]  # + bucket pad rows
    assert all(t.device.type == "meta" for t in blocks)
    assert shapes == [(8, 8)] or sorted(shapes) == [(8, 4), (8, 8)]  # one batch, or one each
    proc.shutdown()

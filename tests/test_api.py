"""The public API of batched 0.1.5, as code written for it uses it."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

import batched
from batched import BatchProcessor


def double(items: list[int]) -> list[int]:
    return [x * 2 for x in items]


def test_single_item_and_list_calls() -> None:
    proc = BatchProcessor(double, batch_size=4, timeout_ms=1)
    assert proc(21) == 42
    assert proc([1, 2, 3]) == [2, 4, 6]
    assert proc([]) == []
    assert proc(list(range(10))) == [x * 2 for x in range(10)]  # split over 3 batches
    proc.shutdown()


def test_tuple_is_one_item_like_in_0_1_5() -> None:
    proc = BatchProcessor(lambda xs: [len(x) for x in xs], timeout_ms=0)
    assert proc((1, 2, 3)) == 3
    proc.shutdown()


def test_acall_single_and_list() -> None:
    proc = BatchProcessor(double, batch_size=8, timeout_ms=1)

    async def main() -> tuple[int, list[int], list[int]]:
        one = await proc.acall(5)
        many = await proc.acall([1, 2, 3])
        gathered = await asyncio.gather(*(proc.acall(i) for i in range(20)))
        return one, many, list(gathered)

    one, many, gathered = asyncio.run(main())
    assert one == 10
    assert many == [2, 4, 6]
    assert gathered == [i * 2 for i in range(20)]
    proc.shutdown()


def test_decorator_bare_and_with_arguments() -> None:
    @batched.dynamically
    def bare(items: list[int]) -> list[int]:
        """Doc of bare."""
        return [x + 1 for x in items]

    @batched.dynamically(batch_size=2, timeout_ms=0, small_batch_threshold=1)
    def configured(items: list[int]) -> list[int]:
        return [x - 1 for x in items]

    assert isinstance(bare, BatchProcessor)
    assert bare.__name__ == "bare" and bare.__doc__ == "Doc of bare."
    assert bare.batch_size == 32 and bare.timeout_ms == 5.0 and bare.small_batch_threshold == 8
    assert bare([1, 2]) == [2, 3]
    assert configured.batch_size == 2 and configured.timeout_ms == 0.0
    assert configured([5, 6, 7]) == [4, 5, 6]
    assert max(configured.stats.batch_size_histogram) <= 2
    bare.shutdown()
    configured.shutdown()


def test_methods_get_one_processor_per_instance() -> None:
    class Model:
        def __init__(self, offset: int) -> None:
            self.offset = offset
            self.batches: list[list[int]] = []

        @batched.dynamically(batch_size=8, timeout_ms=1)
        def predict(self, items: list[int]) -> list[int]:
            self.batches.append(items)
            return [x + self.offset for x in items]

    a, b = Model(100), Model(200)
    assert a.predict([1, 2]) == [101, 102]
    assert b.predict(1) == 201
    assert a.predict is a.predict  # created once, then reused
    assert a.predict is not b.predict
    assert isinstance(a.predict, BatchProcessor)
    assert a.batches == [[1, 2]] and b.batches == [[1]]
    assert Model.predict(a, 3) == 103  # through the class, too
    a.predict.shutdown()
    b.predict.shutdown()


def test_stats_has_0_1_5_fields_and_new_ones() -> None:
    proc = BatchProcessor(double, batch_size=4, timeout_ms=1)
    proc(list(range(10)))
    s = proc.stats
    assert isinstance(s, batched.types.BatchProcessorStats)
    assert s.queue_size == 0
    assert s.total_processed == 10
    assert s.total_batches == 3
    assert s.avg_batch_size == pytest.approx(10 / 3)
    assert s.avg_processing_time >= 0.0
    assert s.cache_stats is None
    assert s.batch_size_histogram == {4: 2, 2: 1}
    assert sum(s.batches_by_reason.values()) == 3
    assert set(s.batches_by_reason) == {"full", "timeout", "budget", "drain", "deadline"}
    assert s.queue_wait_ms.p50 <= s.queue_wait_ms.p95 <= s.queue_wait_ms.p99
    assert s.batch_latency_ms.p99 > 0
    assert s.failed_batches == 0 and s.rejected_items == 0
    assert "total_processed=10" in repr(s)
    proc.shutdown()


def test_generic_subscript_works_at_run_time() -> None:
    alias = BatchProcessor[int, str]
    assert alias.__origin__ is BatchProcessor


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"batch_size": 0}, ValueError, "batch_size must be at least 1, got 0"),
        ({"batch_size": -3}, ValueError, "batch_size must be at least 1, got -3"),
        ({"batch_size": 2.5}, TypeError, "batch_size must be an int, got float 2.5"),
        ({"timeout_ms": -1}, ValueError, "timeout_ms must be a finite number >= 0, got -1"),
        ({"timeout_ms": float("nan")}, ValueError, "timeout_ms must be a finite number >= 0"),
        ({"timeout_ms": "5"}, TypeError, "timeout_ms must be a number of milliseconds, got str '5'"),
        ({"small_batch_threshold": -1}, ValueError, "small_batch_threshold must be at least 0, got -1"),
        ({"max_queue_size": 0}, ValueError, "max_queue_size must be at least 1, got 0"),
        ({"num_workers": 0}, ValueError, "num_workers must be at least 1, got 0"),
    ],
)
def test_bad_options_raise_at_construction(kwargs: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message.replace("(", r"\(").replace(".", r"\.")):
        BatchProcessor(double, **kwargs)


def test_bad_options_raise_at_decoration() -> None:
    with pytest.raises(ValueError, match="batch_size must be at least 1"):

        @batched.dynamically(batch_size=0)
        def f(items: list[int]) -> list[int]:
            return items


def test_non_callable_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="batch function must be callable, got int"):
        BatchProcessor(3)  # type: ignore[arg-type]


def test_import_is_light() -> None:
    code = (
        "import sys, batched\n"
        "heavy = [m for m in ('numpy', 'torch', 'asyncio', 'typing', 'dataclasses') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == ""


def test_types_and_utils_are_importable() -> None:
    from batched.types import AsyncCache, BatchProcessorStats, CacheStats, PriorityStrategy
    from batched.utils import batch_iter, is_method

    assert PriorityStrategy.LENGTH.name == "LENGTH"
    assert CacheStats(gets=2, hits=1) == CacheStats(gets=2, hits=1)
    assert BatchProcessorStats().total_processed == 0
    assert AsyncCache is not None
    assert list(batch_iter([1, 2, 3], 2)) == [[1, 2], [3]]

    def method(self: object, items: list[int]) -> list[int]:
        return items

    assert is_method(method) and not is_method(double)


def test_0_1_5_spellings_still_work() -> None:
    import dataclasses

    proc = BatchProcessor(double, batch_size=4, timeout_ms=0)

    async def main() -> int:
        return await proc.acall(item=4)  # 0.1.5 names acall's parameter `item`

    assert asyncio.run(main()) == 8
    stats = proc.stats
    assert dataclasses.asdict(stats)["total_processed"] == 1
    clone = stats.clone(queue_size=7)
    assert clone.queue_size == 7 and clone.total_processed == 1
    proc.clear_stats()
    assert proc.stats.total_processed == 0 and proc.stats.total_batches == 0
    proc.shutdown()


def test_int_like_batch_size_is_accepted() -> None:
    class Four:  # like numpy.int64: not an int, but has __index__
        def __index__(self) -> int:
            return 4

    proc = BatchProcessor(double, batch_size=Four(), timeout_ms=0)  # type: ignore[arg-type]
    assert proc.batch_size == 4 and type(proc.batch_size) is int
    proc.shutdown()


def test_absurd_timeout_is_refused() -> None:
    with pytest.raises(ValueError, match=r"timeout_ms must be at most 1e\+09 ms"):
        BatchProcessor(double, timeout_ms=1e13)


# ---- 0.1.5 import paths that user code imports at module top level ----


def test_0_1_5_stack_features_pads_natively_and_keeps_dtypes() -> None:
    import numpy as np

    from batched.inference.helper import stack_features, unstack_features

    rows = [
        {"input_ids": np.array([5, 6, 7]), "scores": np.array([0.5, 0.25], dtype=np.float32)},
        {"input_ids": np.array([8]), "scores": np.array([1.5, 2.5, 3.5], dtype=np.float32)},
    ]
    right = stack_features(rows, {"input_ids": -1})
    assert right["input_ids"].tolist() == [[5, 6, 7], [8, -1, -1]]
    assert right["scores"].dtype == np.float32  # 0.1.5 cast every feature to int64
    assert right["scores"].tolist() == [[0.5, 0.25, 0.0], [1.5, 2.5, 3.5]]
    left = stack_features(rows, {}, padding_side="left")
    assert left["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert [r["input_ids"].tolist() for r in unstack_features(right)] == [[5, 6, 7], [8, -1, -1]]
    with pytest.raises(ValueError, match="padding_side must be 'left' or 'right', got 'up'"):
        stack_features(rows, {}, padding_side="up")
    with pytest.raises(ValueError, match="do not match those of earlier calls"):
        stack_features([rows[0], {"input_ids": np.array([1])}], {})


def test_0_1_5_stack_features_with_torch_tensors() -> None:
    torch = pytest.importorskip("torch")
    from batched.inference.helper import stack_features, stack_outputs, unstack_outputs

    out = stack_features([{"ids": torch.tensor([1, 2])}, {"ids": torch.tensor([3])}], {"ids": 9})
    assert isinstance(out["ids"], torch.Tensor) and out["ids"].tolist() == [[1, 2], [3, 9]]
    stacked = stack_outputs([torch.tensor([1.0]), torch.tensor([2.0])])
    assert stacked.tolist() == [[1.0], [2.0]]
    assert [t.tolist() for t in unstack_outputs(stacked)] == [[1.0], [2.0]]


def test_0_1_5_batch_item_classes_work() -> None:
    from batched.aio.batch_generator import AsyncBatchItem
    from batched.batch_generator import BatchItem

    items = sorted([BatchItem("bulk", priority=1), BatchItem("small", priority=0)])
    assert [i.content for i in items] == ["small", "bulk"]
    item = items[0]
    assert not item.done()
    item.set_result(42)
    item.set_result(43)  # a second result is ignored, as in 0.1.5
    assert item.done() and item.result() == 42
    failed = BatchItem("x")
    failed.set_exception(KeyError("gone"))
    with pytest.raises(KeyError, match="gone"):
        failed.result()

    async def main() -> None:
        assert await BatchItem("y", future=_done_future(7)).to_awaitable() == 7
        fut = asyncio.get_running_loop().create_future()
        a = AsyncBatchItem(content={"ids": [1, 2, 3]}, future=fut, priority=0)
        assert len(a) == 3 and len(AsyncBatchItem(None, fut)) == 0 and len(AsyncBatchItem(7, fut)) == 1
        a.set_result("r")
        a.set_exception(ValueError("late"))  # ignored: already done
        assert a.done() and await fut == "r"
        assert sorted([AsyncBatchItem("b", fut, 2), a])[0] is a

    asyncio.run(main())


def _done_future(value: int) -> object:
    from concurrent.futures import Future

    f: Future[int] = Future()
    f.set_result(value)
    return f


def test_0_1_5_pad_tokens_default_is_an_empty_dict() -> None:
    from batched import inference

    proc = inference.ModelBatchProcessor(lambda features: features["ids"])
    assert proc.pad_tokens == {} and proc.pad_tokens.get("ids", 0) == 0
    given = inference.ModelBatchProcessor(lambda features: features["ids"], pad_tokens={"ids": 3})
    assert given.pad_tokens == {"ids": 3}
    proc.shutdown()
    given.shutdown()


def test_options_are_one_checked_object() -> None:
    from batched.types import PriorityStrategy

    proc = batched.dynamically(batch_size=4, timeout_ms=1, num_workers=2)(double)
    assert proc.options.batch_size == proc.batch_size == 4
    assert proc.num_workers == 2 and proc.aging_ms == 100.0
    assert proc.priority_strategy is PriorityStrategy.PRIORITY  # small calls first
    with pytest.raises(AttributeError):
        proc.batch_size = 8  # read-only: the engine has its copy

    class Model:
        @batched.dynamically(batch_size=3)
        def predict(self, items: list[int]) -> list[int]:
            return items

    a, b = Model(), Model()
    assert a.predict.options is b.predict.options  # checked once, at decoration
    for p in (proc, a.predict, b.predict):
        p.shutdown()


def test_each_dynamically_takes_its_processors_options() -> None:
    """The decorators' options are read from their processors' signatures:
    same names, defaults and checks; inspect shows them."""
    import inspect

    from batched import aio, inference

    for deco, cls in [(batched.dynamically, BatchProcessor), (aio.dynamically, aio.AsyncBatchProcessor),
                      (inference.dynamically, inference.ModelBatchProcessor),
                      (aio.inference.dynamically, aio.inference.AsyncModelBatchProcessor)]:
        shown = inspect.signature(deco).parameters
        init = list(inspect.signature(cls.__init__).parameters.values())[2:]
        assert list(shown) == ["func", *(p.name for p in init)]
        assert {n: p.default for n, p in shown.items() if n != "func"} == {p.name: p.default for p in init}
    positional = batched.dynamically(double, 7, 1.0)  # as in 0.1.5
    assert (positional.batch_size, positional.timeout_ms) == (7, 1.0)
    with pytest.raises(TypeError, match="unexpected keyword argument 'batchsize'"):
        batched.dynamically(batchsize=3)
    with pytest.raises(TypeError, match="multiple values for argument 'batch_size'"):
        batched.dynamically(double, 4, batch_size=5)
    with pytest.raises(TypeError, match=r"takes at most 1 positional argument\(s\) \(the function\)"):
        aio.dynamically(double, 4)  # keyword-only, as in 0.1.5
    with pytest.raises(ValueError, match="padding_side must be 'left' or 'right', got 'up'"):
        inference.dynamically(padding_side="up")  # checked at decoration
    positional.shutdown()

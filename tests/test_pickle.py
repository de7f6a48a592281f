"""Processors pickle as their function and options, never as their queue or
workers (docs/scaling.md): with pickle and cloudpickle, in this process, in a
fresh interpreter, and in a process pool's children (spawn)."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import pickle
import subprocess
import sys
import textwrap
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import _pickled
import numpy as np
import pytest
from conftest import TIMEOUT, queued, wait_until

import batched
from batched import aio, inference

cloudpickle = pytest.importorskip("cloudpickle")
PICKLERS = [pytest.param(pickle, id="pickle"), pytest.param(cloudpickle, id="cloudpickle")]


@pytest.mark.parametrize("pickler", PICKLERS)
def test_a_processor_pickles_as_its_function_and_options(pickler: Any) -> None:
    proc = batched.BatchProcessor(_pickled.triple, batch_size=8, timeout_ms=1, num_workers=2, aging_ms=50)
    assert proc([1, 2]) == [3, 6]
    copy = pickler.loads(pickler.dumps(proc))
    assert copy is not proc and copy.batch_func is _pickled.triple
    assert (copy.batch_size, copy.timeout_ms, copy.num_workers, copy.aging_ms) == (8, 1.0, 2, 50.0)
    assert copy.stats.total_processed == 0  # stats start from zero
    assert copy([1, 2, 3]) == [3, 6, 9]
    for p in (proc, copy):
        p.shutdown()


@pytest.mark.parametrize("pickler", PICKLERS)
def test_a_decorated_module_function_pickles_by_reference(pickler: Any) -> None:
    assert pickler.loads(pickler.dumps(_pickled.double)) is _pickled.double
    assert pickler.loads(pickler.dumps(_pickled.add_one)) is _pickled.add_one


@pytest.mark.parametrize("pickler", PICKLERS)
def test_queued_and_running_work_never_travels(pickler: Any) -> None:
    from concurrent.futures import ThreadPoolExecutor

    _pickled.GATE.clear()
    _pickled.ENTERED.clear()
    proc = batched.BatchProcessor(_pickled.held_triple, batch_size=4, timeout_ms=0)
    with ThreadPoolExecutor(4) as pool:
        running = pool.submit(proc, 1)
        assert _pickled.ENTERED.wait(TIMEOUT)
        waiting = pool.submit(proc, [2, 3])
        wait_until(lambda: queued(proc) == 2, "2 items queued")
        copy = pickler.loads(pickler.dumps(proc))
        assert copy.stats.queue_size == 0 and copy.stats.total_batches == 0
        _pickled.GATE.set()
        assert running.result(TIMEOUT) == 3 and waiting.result(TIMEOUT) == [6, 9]
        assert copy([4]) == [12]
    for p in (proc, copy):
        p.shutdown()


@pytest.mark.parametrize("pickler", PICKLERS)
def test_an_instance_with_a_batched_method_pickles_without_its_processor(pickler: Any) -> None:
    s = _pickled.Scaler(10)
    assert s.scale([1, 2]) == [10, 20]  # its processor exists now, in s.__dict__
    copy = pickler.loads(pickler.dumps(s))
    assert copy.factor == 10
    assert copy.scale is not s.scale and copy.scale.stats.total_processed == 0
    assert copy.scale([3]) == [30]
    copy.factor = 2
    assert copy.scale([3]) == [6] and s.scale([3]) == [30]  # bound to its own instance
    method = pickler.loads(pickler.dumps(s.scale))  # the method alone: its instance comes along
    assert method([4]) == [40]
    for p in (s.scale, copy.scale, method):
        p.shutdown()


@pytest.mark.parametrize("pickler", PICKLERS)
def test_async_and_model_processors_pickle(pickler: Any, tmp_path: Path) -> None:
    from batched.utils import AsyncDiskCache

    async def run(p: Any, x: Any) -> Any:
        return await p(x)

    cached = aio.AsyncBatchProcessor(_pickled.triple, timeout_ms=0, cache=AsyncDiskCache(tmp_path / "cache"))
    copy = pickler.loads(pickler.dumps(cached))
    assert asyncio.run(run(copy, [1, 2])) == [3, 6]
    assert asyncio.run(run(cached, [1, 2])) == [3, 6]  # the copy's cache shares the directory
    assert cached.stats.cache_stats is not None

    model = inference.ModelBatchProcessor(_sum_rows, pad_tokens={"ids": 0}, padding_side="left", timeout_ms=0)
    mcopy = pickler.loads(pickler.dumps(model))
    assert (mcopy.pad_tokens, mcopy.padding_side) == ({"ids": 0}, "left")
    assert mcopy({"ids": [np.array([1, 2]), np.array([3])]}).tolist() == [3, 3]
    for p in (cached, copy, model, mcopy):
        p.shutdown()


def _sum_rows(features: dict[str, Any]) -> Any:
    return features["ids"].sum(1)


def test_plain_pickle_refuses_a_lambda_clearly() -> None:
    proc = batched.BatchProcessor(lambda xs: xs)
    with pytest.raises((pickle.PicklingError, AttributeError), match="lambda"):
        pickle.dumps(proc)
    assert cloudpickle.loads(cloudpickle.dumps(proc))([1]) == [1]  # cloudpickle takes it by value
    proc.shutdown()


def test_each_child_of_a_spawn_process_pool_batches() -> None:
    """A processor sent to the children (by value), and a decorated module
    function they import (by reference): every child batches its own
    threads' calls, each getting its own results."""
    proc = batched.BatchProcessor(_pickled.triple, batch_size=16, timeout_ms=5)
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(2, mp_context=ctx) as pool:
        sent = [pool.submit(_pickled.call_from_threads, proc) for _ in range(2)]
        imported = [pool.submit(_pickled.call_module_function_from_threads) for _ in range(2)]
        method = pool.submit(_pickled.Scaler(5).scale, [1, 2, 3])  # a method alone: its instance comes along
        for f in sent + imported:
            out = f.result(120)
            assert out["bad"] == [] and out["processed"] >= 16 * 20
            assert out["largest_batch"] > 1, out
        assert method.result(120) == [5, 10, 15]
    assert proc.stats.total_processed == 0  # nothing ran here
    proc.shutdown()


MAIN_SCRIPT = """
import asyncio, json, sys, threading
import cloudpickle, numpy as np
import batched
from batched import aio, inference

@batched.dynamically(batch_size=8, timeout_ms=5)
def shout(items):
    return [s.upper() for s in items]

class Model:
    def __init__(self, offset):
        self.offset = offset

    @batched.dynamically(batch_size=8, timeout_ms=5)
    def predict(self, items):
        return [x + self.offset for x in items]

    @aio.dynamically(batch_size=8, timeout_ms=5)
    async def apredict(self, items):
        return [x - self.offset for x in items]

@inference.dynamically(pad_tokens={"ids": -1}, timeout_ms=5)
def lengths(features):
    return (features["ids"] != -1).sum(1)

if sys.argv[1] == "dump":
    sys.stdout.buffer.write(cloudpickle.dumps((shout, Model, Model(100), lengths)))
"""

LOAD_SCRIPT = """
import asyncio, json, sys, threading
import cloudpickle, numpy as np
shout, Model, model, lengths = cloudpickle.loads(sys.stdin.buffer.read())
out = {}
results = {}
def caller(i):
    results[i] = (shout("w%d" % i), model.predict(i))
ts = [threading.Thread(target=caller, args=(i,)) for i in range(16)]
[t.start() for t in ts]; [t.join() for t in ts]
out["ok"] = all(results[i] == ("W%d" % i, i + 100) for i in range(16))
out["batched"] = max(shout.stats.batch_size_histogram) > 1
async def main():
    return await asyncio.gather(*(model.apredict(i) for i in range(10)))
out["async"] = asyncio.run(main()) == [i - 100 for i in range(10)]
m7 = Model(7)
out["fresh_class"] = m7.predict([1]) == [8]
out["model"] = lengths({"ids": [np.array([1, 2, 3]), np.array([4])]}).tolist() == [3, 1]
print(json.dumps(out))
"""


def test_cloudpickle_of_functions_and_classes_defined_in_main(tmp_path: Path) -> None:
    """What serve.run does with a script: classes and decorated functions of
    __main__ go by value; a fresh interpreter rebuilds and runs them."""
    script = tmp_path / "app.py"
    script.write_text(textwrap.dedent(MAIN_SCRIPT))
    dumped = subprocess.run([sys.executable, str(script), "dump"], capture_output=True, timeout=120)
    assert dumped.returncode == 0, dumped.stderr.decode()[-3000:]
    loaded = subprocess.run([sys.executable, "-c", LOAD_SCRIPT], input=dumped.stdout, capture_output=True,
                            timeout=120)
    assert loaded.returncode == 0, loaded.stderr.decode()[-3000:]
    assert json.loads(loaded.stdout.decode().strip().splitlines()[-1]) == {
        "ok": True, "batched": True, "async": True, "fresh_class": True, "model": True}

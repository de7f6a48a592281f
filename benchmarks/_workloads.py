"""The benchmark workloads: one registry, and one measurement per run.

Every workload is defined once, here, by ``@workload(...)`` on the function
that measures it: its theme, the configuration it runs with (and its smaller
``quick`` sizes), the metrics it reports with their format and targets,
whether it also runs with no batcher, and what it needs (torch, the HTTP
stack). benchmarks/compare.py reads only this registry (``WORKLOADS``).

One measurement, in a fresh interpreter of one implementation's venv:

    <venv>/bin/python benchmarks/_workloads.py WORKLOAD [--quick] [--impl none] [--seed N]

prints exactly one JSON object on the last line of stdout:
    {"workload": ..., "ok": bool, "errors": [...], "metrics": {...}, "info": {...}}
and exits 1 when a correctness check failed. Stdlib only (the inference
workloads import numpy, which every venv holds, and infer16_torch torch), so it
runs unchanged against this project, an earlier build of it, and `batched`
0.1.5. ``--impl none`` runs a workload with no batcher (each caller runs the
batch function on its own items) and never imports `batched`. Importing this
module imports neither `batched` nor numpy: the measured ``import batched``
happens inside each workload (or, for import_time, in fresh child
interpreters).

Every batch function records the size of each batch it is called with (_sizes), so the
batch-size histogram (info["batch_hist"]) is measured the same way for every system.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

# ---------------------------------------------------------------- the registry


def rate(v: float) -> str:
    return f"{v:,.0f}/s"


def micros(v: float) -> str:
    return f"{v:,.1f} µs" if v < 1000 else f"{v / 1000:,.2f} ms"


def yes_no(v: float) -> str:
    return "yes" if v else "no"


def one_decimal(v: float) -> str:
    return f"{v:.1f}"


def percent_of_core(v: float) -> str:
    return f"{v:.2f} % of a core"


def count(v: float) -> str:
    return f"{v:,.0f}"


@dataclass(frozen=True)
class Metric:
    """One number a workload reports, how it is shown, and its target."""

    key: str
    label: str
    fmt: Callable[[float], str]
    target_text: str = ""
    target: Optional[Callable[[float, float], bool]] = None  # (ours, the system `vs`) -> met?
    agg: str = "median"  # over repeats: "median" or "max"
    also: Optional[Callable[[dict], bool]] = None  # a further condition on {key: {system: median}}
    vs: str = "0.1.5"  # the system the target compares ours with (0.1.5, or serve: @serve.batch)


@dataclass(frozen=True)
class Workload:
    name: str
    theme: str  # one of THEMES; --only THEME runs them all
    describe: str  # the configuration, as the table prints it
    config: dict
    metrics: tuple[Metric, ...]
    run: Optional[Callable[[dict, dict], None]]  # None: compare.py runs it itself (http)
    quick: dict = field(default_factory=dict)  # --quick sizes
    none: bool = False  # also runs with no batcher (where that means something)
    serve: bool = False  # also runs with Ray Serve's batcher, @serve.batch (the system "serve")
    ref: bool = True  # also runs with 0.1.5 (and --baseline); False where they cannot (do not pickle)
    needs: str = ""  # "torch": torch importable; "http": the demo's HTTP stack; "ray": Ray Serve
    default: bool = True  # in the default run (the micro workloads)
    timeout_s: float = 120.0  # one run, one process


THEMES = ("threads", "asyncio", "idle", "inference", "import", "gpu", "http", "ray", "traffic", "tuning")
WORKLOADS: dict[str, Workload] = {}


def workload(name: str, theme: str, describe: str, config: dict, metrics: list[Metric],
             **more: Any) -> Callable[[Callable[[dict, dict], None]], Callable[[dict, dict], None]]:
    """Registers the decorated function as the measurement of ``name``."""
    assert theme in THEMES, theme

    def register(run: Callable[[dict, dict], None]) -> Callable[[dict, dict], None]:
        assert name not in WORKLOADS, name
        WORKLOADS[name] = Workload(name, theme, describe, config, tuple(metrics), run, **more)
        return run

    return register


def latency_metrics(target_p99: bool = True) -> list[Metric]:
    return [Metric("p50_us", "p50 latency", micros),
            Metric("p99_us", "p99 latency", micros, *(("< 0.1.5", lambda o, r: o < r) if target_p99 else ()))]


def times(k: float) -> Callable[[float, float], bool]:
    return lambda o, r: o >= k * r


AVG_BATCH = Metric("avg_batch", "avg batch size", one_decimal)
IDLE_CPU = Metric("cpu_pct", "CPU while idle", percent_of_core, "< 0.5 %", lambda o, r: o < 0.5)

# Modeled GPU: a batch of n items costs launch_ms + n * per_item_ms on one device that runs
# one batch at a time (a one-thread executor, FIFO), with the GIL released (time.sleep) while
# it "computes". 8 ms + 0.1 ms/item: 1 item 8.1 ms, 32 items 11.2 ms, 64 items 14.4 ms, the
# shape of a small transformer on a GPU (64 items in less than twice the time of 1).
# Open loop: Poisson arrivals at `load` x the device's capacity with full batches
# (batch_size / cost(batch_size) = 2,857 items/s), one asyncio task per request
# through batched.aio (a plain `def` model function, FastAPI-style), or, for the
# system "none", one device call per request (for @serve.batch, an async function
# awaiting the device). Latency runs from each request's scheduled arrival, so a late
# driver cannot hide queueing (no coordinated omission). The measured window is 4 s, or
# as long as 2,000 requests take where that is longer (the 3% load: a p99 of 340
# requests would be their 4th worst, too noisy to compare).
GPU_MODEL: dict[str, Any] = {"launch_ms": 8.0, "per_item_ms": 0.1, "batch_size": 32, "timeout_ms": 5.0,
                             "warmup_s": 1.0, "seconds": 4.0, "drain_s": 2.0}
GPU_LOADS = (3, 25, 50, 75, 90, 110)  # percent of the capacity; 90: "near saturation"; 3: below the capacity of "none"
GPU_TARGET_LOAD = 90
GPU_QUICK = {"warmup_s": 0.3, "seconds": 1.0, "drain_s": 1.0}
GPU_MIN_REQUESTS = 2000  # in the measured window (not with --quick)


def gpu_capacity(cfg: dict[str, Any]) -> float:
    """Items/s of the modeled device when every batch is full."""
    b = int(cfg["batch_size"])
    return b / ((float(cfg["launch_ms"]) + b * float(cfg["per_item_ms"])) / 1e3)


# ---------------------------------------------------------------- measurements

IMPL = "batched"  # or "none" (--impl none): no batcher


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank-interpolated percentile (q in 0..100) without numpy."""
    s = sorted(values)
    if not s:
        return float("nan")
    pos = (len(s) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


_sizes: list[int] = []  # the size of every batch a batch function saw (list.append is atomic under the GIL)
_processors: list[Any] = []  # shut down after the result is printed, so a hang there cannot hide it


def _checked_identity(items: list[int]) -> list[int]:
    """The identity batch function; records the batch's size."""
    _sizes.append(len(items))
    return list(items)


def _batch_stats(mark: int, out: dict, end: int | None = None) -> None:
    """avg_batch and the batch-size histogram of the batches recorded since `mark`."""
    sizes = _sizes[mark:end]
    hist: dict[str, int] = {}
    for n in sizes:
        hist[str(n)] = hist.get(str(n), 0) + 1
    out["metrics"]["avg_batch"] = sum(sizes) / len(sizes) if sizes else 0.0
    out["info"]["batch_hist"] = dict(sorted(hist.items(), key=lambda kv: int(kv[0])))


class _Direct:
    """The system "none": no batcher; each caller runs the batch function on its own items."""

    def __init__(self, fn: Any) -> None:
        self._fn = fn

    def __call__(self, items: Any) -> Any:
        if isinstance(items, list):
            return self._fn(items)
        return self._fn([items])[0]

    async def acall(self, items: Any) -> Any:
        return self(items)


def _identity(cfg: dict[str, Any]) -> Any:
    def identity(items: list[int]) -> list[int]:
        return _checked_identity(items)

    if IMPL == "none":
        return _Direct(identity)
    import batched

    f = batched.dynamically(batch_size=int(cfg["batch_size"]), timeout_ms=float(cfg["timeout_ms"]))(identity)
    _processors.append(f)
    return f


@workload("list100k", "threads", "1 thread, 1 call of 100,000 ints; batch_size=64, timeout_ms=1",
          {"batch_size": 64, "timeout_ms": 1.0, "items": 100_000},
          [Metric("items_per_s", "items/s", rate, "≥ 50× 0.1.5", times(50))], none=True, timeout_s=180)
def w_list100k(cfg: dict, out: dict) -> None:
    f = _identity(cfg)
    n = int(cfg["items"])
    f(list(range(10)))  # start the worker
    data = list(range(n))
    # Repeat the call until 0.3 s have passed (a fast engine finishes one call in milliseconds);
    # report the median call.  Every call's result is checked.
    times: list[float] = []
    spent = 0.0
    while spent < 0.3 and len(times) < 50:
        t0 = time.perf_counter()
        res = f(data)
        dt = time.perf_counter() - t0
        times.append(dt)
        spent += dt
        if res != data:
            bad = sum(1 for a, b in zip(res, data) if a != b) + abs(len(res) - len(data))
            out["errors"].append(f"list100k: {bad} of {n} results differ from their inputs (len {len(res)})")
            break
    med = statistics.median(times)
    out["metrics"]["items_per_s"] = n / med
    out["metrics"]["call_ms"] = med * 1e3
    out["info"]["calls"] = len(times)


def _closed_loop(f: Any, nthreads: int, seconds: float, request: Any, out: dict) -> None:
    """`nthreads` threads call `f` in a closed loop for `seconds`. `request(tid, i)` gives the
    i-th call's argument and its expected result (compared with ==, after `.tolist()` if the
    result has it). Fills items/s, p50/p99 latency, the process's CPU time per call and the
    average batch size; every result that is not the expected one is an error."""
    barrier = threading.Barrier(nthreads + 1)
    lats: list[list[float]] = [[] for _ in range(nthreads)]
    mismatches = [0] * nthreads
    examples: list[str] = []
    errors: list[str] = []
    deadline = 0.0

    def worker(tid: int) -> None:
        mine, clock, i = lats[tid], time.perf_counter, 0
        barrier.wait()
        try:
            while clock() < deadline:
                arg, expected = request(tid, i)
                t0 = clock()
                r = f(arg)
                mine.append(clock() - t0)
                got = r.tolist() if hasattr(r, "tolist") else r
                if got != expected:
                    mismatches[tid] += 1
                    if len(examples) < 3:
                        examples.append(f"thread {tid} call {i}: got {got!r}, expected {expected!r}")
                i += 1
        except BaseException as exc:  # noqa: BLE001
            errors.append(f"thread {tid}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(nthreads)]
    for t in threads:
        t.start()
    mark = len(_sizes)
    deadline = time.perf_counter() + seconds
    start = time.perf_counter()
    cpu0 = time.process_time()
    barrier.wait()
    for t in threads:
        t.join(seconds + 60)
        if t.is_alive():
            errors.append("a client thread did not finish within 60 s of the deadline (hang?)")
            break
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    all_lats = [x for per in lats for x in per]
    calls = len(all_lats)
    m = out["metrics"]
    m["items_per_s"] = calls / elapsed
    m["cpu_us"] = cpu / max(calls, 1) * 1e6  # the whole process: callers, workers, kernel
    m["p50_us"] = percentile(all_lats, 50) * 1e6
    m["p99_us"] = percentile(all_lats, 99) * 1e6
    _batch_stats(mark, out)
    out["info"]["calls"] = calls
    out["errors"].extend(errors)
    if sum(mismatches):
        out["errors"].append(f"{sum(mismatches)} of {calls} calls returned another caller's (or a wrong) "
                             "result: " + "; ".join(examples))
    if calls == 0:
        out["errors"].append("no call completed")


@workload("threads32", "threads", "32 threads, single-item calls; batch_size=32, timeout_ms=5",
          {"batch_size": 32, "timeout_ms": 5.0, "threads": 32, "seconds": 2.0},
          [Metric("items_per_s", "items/s", rate, "≥ 5× 0.1.5", times(5)), *latency_metrics(), AVG_BATCH],
          quick={"seconds": 0.5}, none=True)
def w_threads32(cfg: dict, out: dict) -> None:
    f = _identity(cfg)
    f(0)

    def request(tid: int, i: int) -> tuple[int, int]:
        x = (tid << 32) | i
        return x, x

    _closed_loop(f, int(cfg["threads"]), float(cfg["seconds"]), request, out)


# 0.1.5 sleeps timeout_ms whenever fewer than batch_size items wait, so a
# short timeout is its best case: the harder comparison.
workload("threads32_t1", "threads", "32 threads, single-item calls; batch_size=32, timeout_ms=1",
         {"batch_size": 32, "timeout_ms": 1.0, "threads": 32, "seconds": 2.0},
         [Metric("items_per_s", "items/s", rate, "≥ 5× 0.1.5", times(5)), *latency_metrics(), AVG_BATCH],
         quick={"seconds": 0.5}, none=True)(w_threads32)


def _idle_latency(cfg: dict, out: dict) -> None:
    f = _identity(cfg)
    gap = float(cfg["gap_ms"]) / 1e3
    for i in range(5):  # warm-up
        f(i)
        time.sleep(gap)
    lats, bad = [], 0
    clock = time.perf_counter
    for i in range(int(cfg["calls"])):
        t0 = clock()
        r = f(i)
        lats.append(clock() - t0)
        bad += r != i
        time.sleep(gap)
    out["metrics"]["p50_us"] = percentile(lats, 50) * 1e6
    out["metrics"]["p99_us"] = percentile(lats, 99) * 1e6
    if bad:
        out["errors"].append(f"{bad} of {len(lats)} idle calls returned a wrong result")


workload("idle_latency0", "idle", "lone calls 2 ms apart; batch_size=32, timeout_ms=0",
         {"batch_size": 32, "timeout_ms": 0.0, "calls": 300, "gap_ms": 2.0},
         [Metric("p50_us", "median latency", micros, "< 100 µs", lambda o, r: o < 100),
          Metric("p99_us", "p99 latency", micros)], quick={"calls": 60})(_idle_latency)
workload("idle_latency5", "idle", "lone calls 2 ms apart; batch_size=32, timeout_ms=5",
         {"batch_size": 32, "timeout_ms": 5.0, "calls": 300, "gap_ms": 2.0},
         [Metric("p50_us", "median latency", micros, "≈ 5 ms (4–6 ms)", lambda o, r: 4000 <= o <= 6000),
          Metric("p99_us", "p99 latency", micros)], quick={"calls": 60})(_idle_latency)


def _idle_cpu(cfg: dict, out: dict) -> None:
    f = _identity(cfg)
    if f(7) != 7:
        out["errors"].append("idle_cpu: f(7) != 7")
    time.sleep(0.2)  # let the worker settle
    idle = float(cfg["idle_s"])
    c0, t0 = time.process_time(), time.perf_counter()
    time.sleep(idle)
    c1, t1 = time.process_time(), time.perf_counter()
    out["metrics"]["cpu_pct"] = (c1 - c0) / (t1 - t0) * 100.0


workload("idle_cpu", "idle", "2 s idle after one call; timeout_ms=5",
         {"batch_size": 32, "timeout_ms": 5.0, "idle_s": 2.0}, [IDLE_CPU], quick={"idle_s": 0.5},
         timeout_s=60)(_idle_cpu)
workload("idle_cpu0", "idle", "2 s idle after one call; timeout_ms=0",
         {"batch_size": 32, "timeout_ms": 0.0, "idle_s": 2.0}, [IDLE_CPU], quick={"idle_s": 0.5},
         timeout_s=60)(_idle_cpu)


_IMPORT_PROBE = (
    "import time, sys\n"
    "t0 = time.perf_counter()\n"
    "import batched\n"
    "dt = time.perf_counter() - t0\n"
    "print(repr((dt, 'numpy' in sys.modules, 'torch' in sys.modules)))\n"
)


@workload("import_time", "import", "`import batched`, fresh interpreter, numpy installed",
          {"runs": 10}, [Metric("import_ms", "import time", lambda v: f"{v:.1f} ms", "< 20 ms", lambda o, r: o < 20),
          Metric("numpy_imported", "imports numpy", yes_no, "no", lambda o, r: not o, "max"),
          Metric("torch_imported", "imports torch", yes_no, "no", lambda o, r: not o, "max")], quick={"runs": 3})
def w_import_time(cfg: dict, out: dict) -> None:
    times, numpy_in, torch_in = [], False, False
    env = dict(os.environ)
    for i in range(int(cfg["runs"]) + 1):  # the first run only warms the disk cache
        p = subprocess.run([sys.executable, "-c", _IMPORT_PROBE], capture_output=True, text=True,
                           timeout=120, env=env, cwd=os.path.dirname(os.path.abspath(__file__)))
        if p.returncode != 0:
            out["errors"].append(f"import batched failed: {p.stderr.strip()[-2000:]}")
            return
        dt, has_np, has_torch = eval(p.stdout.strip().splitlines()[-1])  # noqa: S307 (our own probe)
        if i:
            times.append(dt)
            numpy_in |= has_np
            torch_in |= has_torch
    out["metrics"]["import_ms"] = statistics.median(times) * 1e3
    out["metrics"]["numpy_imported"] = float(numpy_in)
    out["metrics"]["torch_imported"] = float(torch_in)
    import importlib.util

    out["info"]["torch_available"] = importlib.util.find_spec("torch") is not None
    out["info"]["numpy_available"] = importlib.util.find_spec("numpy") is not None


workload("import_time+torch", "import", "`import batched`, fresh interpreter, torch 2.13.0 installed",
         {"runs": 10}, [Metric("import_ms", "import time", lambda v: f"{v:.1f} ms", "< 20 ms", lambda o, r: o < 20),
          Metric("numpy_imported", "imports numpy", yes_no, "no", lambda o, r: not o, "max"),
          Metric("torch_imported", "imports torch", yes_no, "no", lambda o, r: not o, "max")], quick={"runs": 3}, needs="torch")(w_import_time)


# ---------------------------------------------------------------- asyncio workloads


def _serve_batch(fn: Any, cfg: dict[str, Any]) -> Any:
    """``fn`` (an async batch function) under Ray Serve's @serve.batch, with the
    settings ours gets: max_batch_size = batch_size, batch_wait_timeout_s =
    timeout_ms. Outside a deployment, @serve.batch 2.60 fails in a helper that
    only logs a warning when max_ongoing_requests is below max_batch_size (it
    reads the replica's context): that helper is skipped, nothing else."""
    from ray import serve
    from ray.serve import batching

    batching._BatchQueue._warn_if_max_batch_size_exceeds_max_ongoing_requests = lambda self: None
    return serve.batch(max_batch_size=int(cfg["batch_size"]), batch_wait_timeout_s=float(cfg["timeout_ms"]) / 1e3)(fn)


def _aio_identity(cfg: dict[str, Any]) -> Any:
    """An async identity batch function under batched.aio (both versions have it);
    with --impl none, awaited per request with the caller's own item."""

    async def identity(items: list[int]) -> list[int]:
        return _checked_identity(items)

    if IMPL == "none":
        async def direct(items: Any) -> Any:
            return await identity(items) if isinstance(items, list) else (await identity([items]))[0]

        return direct
    if IMPL == "serve":
        return _serve_batch(identity, cfg)
    from batched import aio

    f = aio.dynamically(batch_size=int(cfg["batch_size"]), timeout_ms=float(cfg["timeout_ms"]))(identity)
    _processors.append(f)
    return f


def _concurrent_tasks(call: Any, cfg: dict, out: dict) -> None:
    """`tasks` concurrent tasks each awaiting one item, `rounds` times: items/s and per-await latency."""
    import asyncio

    tasks, rounds = int(cfg["tasks"]), int(cfg["rounds"])
    lats: list[float] = []
    bad = [0]

    async def one(i: int) -> None:
        t0 = time.perf_counter()
        r = await call(i)
        lats.append(time.perf_counter() - t0)
        bad[0] += r != i

    marks = [0]

    async def main() -> float:
        await asyncio.gather(*(one(i) for i in range(64)))  # warm-up
        lats.clear()
        marks[0] = len(_sizes)
        t0 = time.perf_counter()
        for r in range(rounds):
            await asyncio.gather(*(one(r * tasks + i) for i in range(tasks)))
        return time.perf_counter() - t0

    elapsed = asyncio.run(main())
    out["metrics"]["items_per_s"] = tasks * rounds / elapsed
    out["metrics"]["p50_us"] = percentile(lats, 50) * 1e6
    out["metrics"]["p99_us"] = percentile(lats, 99) * 1e6
    _batch_stats(marks[0], out)
    if bad[0]:
        out["errors"].append(f"{bad[0]} awaits returned another task's result")


@workload("aio_tasks2000", "asyncio",
          "aio.dynamically, async identity; 2,000 concurrent tasks x 1 item, 10 rounds; batch_size=64, timeout_ms=5; "
          "serve = @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005)",
          {"batch_size": 64, "timeout_ms": 5.0, "tasks": 2000, "rounds": 10},
          [Metric("items_per_s", "items/s", rate, "≥ 5× 0.1.5", times(5)),
           Metric("items_per_s", "items/s (vs serve)", rate, "≥ 2× @serve.batch", times(2), vs="serve"),
           *latency_metrics(), AVG_BATCH],
          quick={"rounds": 3}, none=True, serve=True)
def w_aio_tasks2000(cfg: dict, out: dict) -> None:
    _concurrent_tasks(_aio_identity(cfg), cfg, out)


@workload("acall_tasks2000", "asyncio",
          "BatchProcessor.acall; 2,000 concurrent tasks x 1 item, 10 rounds; batch_size=64, timeout_ms=5",
          {"batch_size": 64, "timeout_ms": 5.0, "tasks": 2000, "rounds": 10},
          [Metric("items_per_s", "items/s", rate, "≥ 5× 0.1.5", times(5)), Metric("p99_us", "p99 latency", micros)],
          quick={"rounds": 3}, none=True)
def w_acall_tasks2000(cfg: dict, out: dict) -> None:
    f = _identity(cfg)
    _concurrent_tasks(f.acall, cfg, out)


@workload("aio_floor2000", "asyncio",
          "no batcher: the aio_tasks2000 load, each task's await resolved by a loop callback 64 at a time "
          "(asyncio's own cost)",
          {"batch_size": 64, "tasks": 2000, "rounds": 10},
          [Metric("items_per_s", "items/s", rate), *latency_metrics(target_p99=False)],
          quick={"rounds": 3})
def w_aio_floor2000(cfg: dict, out: dict) -> None:
    """No batcher at all: aio_tasks2000's tasks, timed the same way (_concurrent_tasks),
    each awaiting a future that one plain loop callback resolves with 63 others. What
    asyncio itself costs here is the ceiling for any asyncio batcher on this machine."""
    import asyncio

    size = int(cfg["batch_size"])
    pending: list[tuple[asyncio.Future, int]] = []

    def resolve() -> None:
        group = pending[:size]
        del pending[:size]
        for fut, i in group:
            fut.set_result(i)
        if pending:
            asyncio.get_running_loop().call_soon(resolve)

    async def call(i: int) -> int:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        pending.append((fut, i))
        if len(pending) == 1:
            loop.call_soon(resolve)
        return await fut

    _concurrent_tasks(call, cfg, out)


@workload("aio_idle_latency0", "asyncio", "aio, lone awaits 2 ms apart; timeout_ms=0",
          {"batch_size": 32, "timeout_ms": 0.0, "calls": 300, "gap_ms": 2.0},
          [Metric("p50_us", "median latency", micros, "< 200 µs", lambda o, r: o < 200),
           Metric("p99_us", "p99 latency", micros)], quick={"calls": 60})
def w_aio_idle_latency0(cfg: dict, out: dict) -> None:
    import asyncio

    f = _aio_identity(cfg)
    gap = float(cfg["gap_ms"]) / 1e3

    async def main() -> list[float]:
        for i in range(5):
            await f(i)
            await asyncio.sleep(gap)
        lats = []
        for i in range(int(cfg["calls"])):
            t0 = time.perf_counter()
            r = await f(i)
            lats.append(time.perf_counter() - t0)
            if r != i:
                out["errors"].append(f"await f({i}) returned {r!r}")
            await asyncio.sleep(gap)
        return lats

    lats = asyncio.run(main())
    out["metrics"]["p50_us"] = percentile(lats, 50) * 1e6
    out["metrics"]["p99_us"] = percentile(lats, 99) * 1e6


@workload("aio_idle_cpu", "asyncio", "aio, 2 s idle after one await; timeout_ms=5",
          {"batch_size": 32, "timeout_ms": 5.0, "idle_s": 2.0}, [IDLE_CPU], quick={"idle_s": 0.5})
def w_aio_idle_cpu(cfg: dict, out: dict) -> None:
    import asyncio

    f = _aio_identity(cfg)

    async def main() -> float:
        if await f(7) != 7:
            out["errors"].append("aio_idle_cpu: f(7) != 7")
        await asyncio.sleep(0.2)
        idle = float(cfg["idle_s"])
        c0, t0 = time.process_time(), time.perf_counter()
        await asyncio.sleep(idle)  # the loop is idle too: only the processor could use CPU
        c1, t1 = time.process_time(), time.perf_counter()
        return (c1 - c0) / (t1 - t0) * 100.0

    out["metrics"]["cpu_pct"] = asyncio.run(main())


@workload("aio_cancel10k", "asyncio", "aio, 10,000 tasks, every other one cancelled before dispatch",
          {"batch_size": 64, "timeout_ms": 5.0, "tasks": 10000},
          [Metric("seen_by_fn", "items the function saw", count, "5,000", lambda o, r: o == 5000),
           Metric("cancelled_seen", "cancelled items it saw", count, "0", lambda o, r: o == 0),
           Metric("left_in_queue", "left in queue", count, "0", lambda o, r: o == 0),
           Metric("asyncio_warnings", "asyncio warnings", count, "0", lambda o, r: o == 0)])
def w_aio_cancel10k(cfg: dict, out: dict) -> None:
    """10,000 tasks queued behind a running batch, every other one cancelled
    before dispatch: the batch function must see exactly the others, the queue
    must end empty, and asyncio must not complain (unretrieved exceptions,
    destroyed pending tasks)."""
    import asyncio
    import gc
    import logging

    from batched import aio

    seen: list[int] = []
    gate: Any = None

    async def record(items: list[Any]) -> list[Any]:
        if items == ["gate"]:
            await gate.wait()  # holds the (single) batch slot: nothing else is dispatched
            return list(items)
        seen.extend(items)
        return list(items)

    f = aio.dynamically(batch_size=int(cfg["batch_size"]), timeout_ms=float(cfg["timeout_ms"]))(record)
    _processors.append(f)
    complaints: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            complaints.append(record.getMessage()[:200])

    logging.getLogger("asyncio").addHandler(Catch())
    n = int(cfg["tasks"])

    async def main() -> None:
        nonlocal gate
        gate = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, ctx: complaints.append(str(ctx.get("message"))[:200]))
        gate_task = asyncio.ensure_future(f("gate"))
        await asyncio.sleep(0.05)  # the gate batch is running (0.1.5: after its first sleep)
        tasks = [asyncio.ensure_future(f(i)) for i in range(n)]
        await asyncio.sleep(0)  # every task has queued its item; none is dispatched
        for t in tasks[1::2]:
            t.cancel()
        gate.set()
        await gate_task
        t0 = time.perf_counter()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        out["metrics"]["drain_ms"] = (time.perf_counter() - t0) * 1e3
        wrong = sum(1 for i, r in enumerate(results) if i % 2 == 0 and r != i)
        if wrong:
            out["errors"].append(f"{wrong} kept tasks got a wrong result")

    asyncio.run(main())
    gc.collect()
    kept = list(range(0, n, 2))
    out["metrics"]["seen_by_fn"] = float(len(seen))
    out["metrics"]["cancelled_seen"] = float(sum(1 for x in seen if x % 2))
    queue = getattr(f.stats, "queue_size", -1)
    out["metrics"]["left_in_queue"] = float(queue)
    out["metrics"]["asyncio_warnings"] = float(len(complaints))
    out["info"]["warnings"] = complaints[:5]
    if sorted(x for x in seen if x % 2 == 0) != kept:
        out["errors"].append("the batch function did not see every kept item exactly once")




def _row_requests(nthreads: int, pool: int, lo: int, hi: int, seed: int,
                  torch: Any = None) -> list[list[tuple[dict[str, Any], int]]]:
    """`pool` requests per thread, made before timing: one row {"input_ids",
    "attention_mask"} int64 [1, L], L in lo..hi, and the result the model gives for it
    ((ids * mask).sum(1) + mask.sum(1)); ids[0, 0] carries the thread id and the number."""
    import numpy as np

    rng = np.random.default_rng(seed)
    reqs = []
    for tid in range(nthreads):
        mine = []
        for i in range(pool):
            length = int(rng.integers(lo, hi + 1))
            ids = rng.integers(1, 30_000, size=(1, length), dtype=np.int64)
            ids[0, 0] = tid * 1_000_000 + i
            mask = np.ones((1, length), dtype=np.int64)
            expected = int(ids.sum()) + length
            if torch is not None:
                ids, mask = torch.from_numpy(ids), torch.from_numpy(mask)
            mine.append(({"input_ids": ids, "attention_mask": mask}, expected))
        reqs.append(mine)
    return reqs


def _infer16(cfg: dict, out: dict) -> None:
    """16 threads in a closed loop, each calling a model with one row of random length
    ({"input_ids", "attention_mask"}, int64 [1, L]); every result is checked against its input."""
    made = _infer16_calls(cfg, out)
    if made is not None:
        _closed_loop(made[0], int(cfg["threads"]), float(cfg["seconds"]), made[1], out)


def _infer16_calls(cfg: dict, out: dict) -> Optional[tuple[Any, Any]]:
    """infer16's model processor, warmed up, and its request(tid, i); None after a failed warm-up."""
    torch = None
    if cfg["backend"] == "torch":
        import torch

        out["info"]["torch"] = torch.__version__
        out["info"]["torch_threads"] = torch.get_num_threads()
    nthreads, pool = int(cfg["threads"]), int(cfg["pool"])
    lo, hi = int(cfg["min_len"]), int(cfg["max_len"])

    def model(features: dict[str, Any]) -> Any:
        ids, mask = features["input_ids"], features["attention_mask"]
        _sizes.append(int(ids.shape[0]))
        # one value per row that depends on every token of the row and on the padding being right
        return (ids * mask).sum(1) + mask.sum(1)

    if IMPL == "none":  # each thread calls the model with its own row: no padding, batches of 1
        f = model
    else:
        from batched import inference

        f = inference.dynamically(batch_size=int(cfg["batch_size"]), timeout_ms=float(cfg["timeout_ms"]),
                                  pad_tokens={"input_ids": 0}, padding_side="right")(model)
        _processors.append(f)

    reqs = _row_requests(nthreads, pool, lo, hi, 16, torch)
    for feats, expected in reqs[0][:4]:  # warm-up (starts the worker); checked too
        got = f(feats).tolist()
        if got != [expected]:
            out["errors"].append(f"warm-up call returned {got!r}, expected [{expected}]")
            return None

    def request(tid: int, i: int) -> tuple[dict[str, Any], list[int]]:
        feats, expected = reqs[tid][i % pool]
        return feats, [expected]

    return f, request


# Single-row requests of random length, padded per batch. batch_size 16 = the number of threads,
# so a batch can fill: with 32, both implementations only ever send on the 5 ms timeout and
# measure the timeout, not the batcher (~3,000 items/s each).
INFER16 = {"batch_size": 16, "timeout_ms": 5.0, "threads": 16, "seconds": 2.0, "min_len": 16, "max_len": 512,
           "pool": 64}
workload("infer16_np", "inference",
         "inference.dynamically; 16 threads, closed loop, 1 row {input_ids, attention_mask} int64 [1, L], "
         "L in 16..512, numpy; every result checked; batch_size=16, timeout_ms=5",
         {**INFER16, "backend": "numpy"}, [Metric("items_per_s", "items/s", rate, "≥ 10× 0.1.5", times(10)),
          Metric("p50_us", "p50 latency", micros, "< 0.1.5", lambda o, r: o < r),
          Metric("p99_us", "p99 latency", micros), AVG_BATCH], quick={"seconds": 0.5}, none=True)(_infer16)
workload("infer16_torch", "inference", "as infer16_np with CPU torch 2.13.0 tensors; batch_size=16, timeout_ms=5",
         {**INFER16, "backend": "torch"}, [Metric("items_per_s", "items/s", rate, "≥ 10× 0.1.5", times(10)),
          Metric("p50_us", "p50 latency", micros, "< 0.1.5", lambda o, r: o < r),
          Metric("p99_us", "p99 latency", micros), AVG_BATCH], quick={"seconds": 0.5}, none=True, needs="torch")(_infer16)


@workload("cost16", "inference",
          "process CPU per item: infer16_np's inference path against identity items (the plain path) at the "
          "same 16 threads, batch_size=16, timeout_ms=5; and the plain path with 1 µs of Python in each "
          "caller per call (what 1 µs held under the GIL costs here); one process, the three interleaved",
          {**INFER16, "backend": "numpy", "rounds": 3, "seconds": 1.0, "work_us": 1.0},
          [Metric("infer_cpu_us", "inference: CPU per item", micros),
           Metric("plain_cpu_us", "plain: CPU per item", micros),
           Metric("cpu_ratio", "inference / plain CPU", lambda v: f"{v:.2f}×", "≤ 1.5×", lambda o, r: o <= 1.5),
           Metric("plain_work_cpu_us", "plain + 1 µs per call: CPU per item", micros)],
          quick={"rounds": 1, "seconds": 0.5})
def w_cost16(cfg: dict, out: dict) -> None:
    made = _infer16_calls(cfg, out)
    if made is None:
        return
    plain = _identity(cfg)
    plain(0)
    work = float(cfg["work_us"]) / 1e6

    def item(tid: int, i: int) -> tuple[int, int]:
        x = (tid << 32) | i
        return x, x

    def item_after_work(tid: int, i: int) -> tuple[int, int]:
        end = time.perf_counter() + work  # Python held under the GIL, as a caller's own code is
        while time.perf_counter() < end:
            pass
        return item(tid, i)

    cpu: dict[str, list[float]] = {"infer": [], "plain": [], "plain_work": []}
    for _ in range(int(cfg["rounds"])):
        for name, f, request in (("plain", plain, item), ("infer", *made), ("plain_work", plain, item_after_work)):
            phase: dict[str, Any] = {"metrics": {}, "info": {}, "errors": out["errors"]}
            _closed_loop(f, int(cfg["threads"]), float(cfg["seconds"]), request, phase)
            cpu[name].append(phase["metrics"]["cpu_us"])
    m = out["metrics"]
    m["infer_cpu_us"] = statistics.median(cpu["infer"])
    m["plain_cpu_us"] = statistics.median(cpu["plain"])
    m["cpu_ratio"] = m["infer_cpu_us"] / m["plain_cpu_us"]
    m["plain_work_cpu_us"] = statistics.median(cpu["plain_work"])
    out["info"]["cpu_us"] = cpu
    out["info"]["stages_us"] = _inference_stages(cfg)


def _inference_stages(cfg: dict) -> dict[str, float]:
    """What the inference path does per call with no other thread about (µs, this
    project only): read a call's features, collate a batch (per row), the model, cut a
    caller's row of the output."""
    import timeit

    import numpy as np

    try:
        from batched._padding import RowsCollator
    except ImportError:  # batched 0.1.5
        return {}
    n = int(cfg["batch_size"])
    rows = [feats for feats, _ in _row_requests(1, n, int(cfg["min_len"]), int(cfg["max_len"]), 16, None)[0]]
    collator = RowsCollator("model", {"input_ids": 0}, "right")
    spans = [(collator.request(f), 0, 1) for f in rows]
    batch = collator.collate(spans)
    out = (batch["input_ids"] * batch["attention_mask"]).sum(1) + batch["attention_mask"].sum(1)
    reps = 2000

    def per(fn: Any, per_call: int) -> float:
        return min(timeit.repeat(fn, number=reps, repeat=3)) / reps / per_call * 1e6

    return {"read_features": per(lambda: [collator.request(f) for f in rows], n),
            "collate_per_row": per(lambda: collator.collate(spans), n),
            "model_per_row": per(lambda: (batch["input_ids"] * batch["attention_mask"]).sum(1)
                                 + batch["attention_mask"].sum(1), n),
            "cut_per_row": per(lambda: [out[i:i + 1] for i in range(n)], n)}


# The modeled GPU with padded inputs: the batch function is the device (it "computes" for
# launch_ms + per_token_us per padded token, the GIL released, as a model call waits for its
# GPU), fed by 128 threads in a closed loop with one row of 16-512 tokens each, so a full batch
# of 64 always waits. What the batcher does between two batches (hand out, wake, pop, pad)
# leaves the device idle: the gaps between consecutive batches are measured, and the
# throughput against the device's capacity (its batches back to back).
PAD64 = {"batch_size": 64, "timeout_ms": 5.0, "threads": 128, "seconds": 3.0, "min_len": 16, "max_len": 512,
         "pool": 16, "launch_ms": 1.0, "per_token_us": 0.05}


def _padded_device(cfg: dict, out: dict, prefetch: bool) -> None:
    launch, per_token = float(cfg["launch_ms"]) / 1e3, float(cfg["per_token_us"]) / 1e6
    runs: list[tuple[float, float, int]] = []  # (start, end, rows) of every batch

    def model(features: dict[str, Any]) -> Any:
        t0 = time.perf_counter()
        ids, mask = features["input_ids"], features["attention_mask"]
        _sizes.append(int(ids.shape[0]))
        result = (ids * mask).sum(1) + mask.sum(1)
        time.sleep(max(0.0, t0 + launch + per_token * ids.size - time.perf_counter()))
        runs.append((t0, time.perf_counter(), int(ids.shape[0])))
        return result

    from batched import inference

    options: dict[str, Any] = {"batch_size": int(cfg["batch_size"]), "timeout_ms": float(cfg["timeout_ms"]),
                               "pad_tokens": {"input_ids": 0}, "padding_side": "right"}
    if prefetch:
        try:
            f = inference.dynamically(prefetch=True, **options)(model)
        except TypeError:  # batched 0.1.5: no such option
            f = inference.dynamically(**options)(model)
    else:
        f = inference.dynamically(**options)(model)
    _processors.append(f)
    nthreads, pool = int(cfg["threads"]), int(cfg["pool"])
    reqs = _row_requests(nthreads, pool, int(cfg["min_len"]), int(cfg["max_len"]), 64, None)
    feats, expected = reqs[0][0]
    if f(feats).tolist() != [expected]:
        out["errors"].append("warm-up call returned a wrong result")
        return

    def request(tid: int, i: int) -> tuple[dict[str, Any], list[int]]:
        feats, expected = reqs[tid][i % pool]
        return feats, [expected]

    start = len(runs)
    _closed_loop(f, nthreads, float(cfg["seconds"]), request, out)
    window = runs[start + 2:]  # (the first batches fill as the threads start)
    busy = sum(b - a for a, b, _ in window)
    span = window[-1][1] - window[0][0]
    rows = sum(n for _, _, n in window)
    gaps = [b[0] - a[1] for a, b in zip(window, window[1:])]
    m = out["metrics"]
    m["capacity_per_s"] = rows / busy  # the device's rate with its batches back to back
    m["device_items_per_s"] = rows / span
    m["util_pct"] = 100.0 * busy / span
    m["gap_p50_us"] = percentile(gaps, 50) * 1e6
    m["gap_p99_us"] = percentile(gaps, 99) * 1e6
    out["info"]["batches"] = len(window)


_PAD64_METRICS = [Metric("device_items_per_s", "items/s", rate),
                  Metric("util_pct", "of the device's capacity", lambda v: f"{v:.1f} %", "≥ 95 %",
                         lambda o, r: o >= 95.0),
                  Metric("gap_p50_us", "device idle between batches, p50", micros, "≤ 100 µs",
                         lambda o, r: o <= 100.0),
                  Metric("gap_p99_us", "device idle between batches, p99", micros), *latency_metrics(False),
                  Metric("cpu_us", "process CPU per item", micros), AVG_BATCH]


@workload("pad64_device", "inference",
          "modeled GPU with padded inputs (1 ms + 0.05 µs per padded token, the GIL released): "
          "inference.dynamically(batch_size=64, timeout_ms=5, prefetch=True), 128 threads, closed loop, "
          "1 row {input_ids, attention_mask} int64 [1, L], L in 16..512 (0.1.5: no prefetch)",
          PAD64, _PAD64_METRICS, quick={"seconds": 1.0})
def w_pad64_device(cfg: dict, out: dict) -> None:
    _padded_device(cfg, out, prefetch=True)


@workload("pad64_device_noprefetch", "inference", "pad64_device without prefetch",
          PAD64, _PAD64_METRICS, quick={"seconds": 1.0})
def w_pad64_device_noprefetch(cfg: dict, out: dict) -> None:
    _padded_device(cfg, out, prefetch=False)


def _time_us(fns: list[Any], samples: int) -> list[float]:
    """Median µs per call of each fn, sampled alternately (fn0, fn1, fn0, ...) after a warm-up;
    each sample repeats the call enough times to last >= 0.2 ms."""
    clock = time.perf_counter
    reps = []
    for fn in fns:
        for _ in range(20):
            fn()
        n = 1
        while True:
            t0 = clock()
            for _ in range(n):
                fn()
            if clock() - t0 >= 2e-4:
                break
            n *= 2
        reps.append(n)
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(samples):
        for fn, n, mine in zip(fns, reps, times):
            t0 = clock()
            for _ in range(n):
                fn()
            mine.append((clock() - t0) / n)
    return [statistics.median(t) * 1e6 for t in times]


@workload("pad64", "inference",
          "padding alone: 64 rows, L in 16..512, 2 int64 features, right; ours RowsCollator.collate, 0.1.5 "
          "stack_features; memcpy = np.copyto of the rows' bytes, same process",
          {"rows": 64, "min_len": 16, "max_len": 512, "samples": 300},
          [Metric("pad_us", "pad one batch", micros, "≥ 20× faster than 0.1.5", lambda o, r: 20 * o <= r),
           Metric("memcpy_us", "memcpy of the rows' bytes", micros),
           Metric("pad_vs_memcpy", "pad / memcpy", lambda v: f"{v:.1f}×", "≤ 3× (ours)", lambda o, r: o <= 3),
           Metric("memcpy_out_us", "memcpy of the padded output's bytes", micros)],
          quick={"samples": 60})
def w_pad64(cfg: dict, out: dict) -> None:
    """The padding step alone: 64 single-row requests of random length, two int64 features,
    padded into one batch by each implementation's own code, against a memcpy of the same bytes."""
    import numpy as np

    rng = np.random.default_rng(64)
    nrows, lo, hi = int(cfg["rows"]), int(cfg["min_len"]), int(cfg["max_len"])
    lengths = [int(x) for x in rng.integers(lo, hi + 1, nrows)]
    ids = [rng.integers(1, 30000, n, dtype=np.int64) for n in lengths]
    masks = [np.ones(n, dtype=np.int64) for n in lengths]
    pad_tokens = {"input_ids": 0}

    def reference(side: str) -> dict[str, Any]:
        width = max(lengths)
        res = {}
        for key, rows in (("input_ids", ids), ("attention_mask", masks)):
            a = np.full((nrows, width), pad_tokens.get(key, 0), dtype=np.int64)
            for i, row in enumerate(rows):
                if side == "right":
                    a[i, :len(row)] = row
                else:
                    a[i, width - len(row):] = row
            res[key] = a
        return res

    try:  # this project: RowsCollator (an earlier build of it: Padder, the same methods)
        from batched import _padding

        impl = "ours"
        collator = getattr(_padding, "RowsCollator", None) or _padding.Padder
    except ImportError:
        from batched.inference.helper import stack_features

        impl = "0.1.5"

    def make(side: str) -> Any:
        if impl == "ours":
            p = collator("bench", pad_tokens, side)
            reqs = [p.request({"input_ids": a[None], "attention_mask": m[None]}) for a, m in zip(ids, masks)]
            spans = [(r, 0, 1) for r in reqs]
            return lambda: p.collate(spans)
        rows = [{"input_ids": a, "attention_mask": m} for a, m in zip(ids, masks)]
        return lambda: stack_features(rows, pad_tokens, side)

    for side in ("right", "left"):  # correctness first, both sides
        got, want = make(side)(), reference(side)
        for key, a in want.items():
            b = np.asarray(got.get(key)) if isinstance(got, dict) and key in got else None
            if b is None or b.shape != a.shape or b.dtype != a.dtype or not np.array_equal(a, b):
                desc = "missing" if b is None else f"{b.dtype}{list(b.shape)}"
                out["errors"].append(f"{side} padding of {key!r}: {desc} differs from the numpy reference "
                                     f"int64{list(a.shape)}")
    if out["errors"]:
        return
    pad = make("right")
    src = np.concatenate(ids + masks)  # the bytes of the rows, contiguous
    dst = np.empty_like(src)
    big = np.ones(2 * nrows * max(lengths), dtype=np.int64)  # as many bytes as the padded output
    big_dst = np.empty_like(big)
    pad_us, memcpy_us, memcpy_out_us = _time_us(
        [pad, lambda: np.copyto(dst, src), lambda: np.copyto(big_dst, big)], int(cfg["samples"]))
    m = out["metrics"]
    m["pad_us"], m["memcpy_us"], m["pad_vs_memcpy"] = pad_us, memcpy_us, pad_us / memcpy_us
    m["memcpy_out_us"] = memcpy_out_us
    out["info"].update(impl=impl, row_bytes=int(src.nbytes), padded_bytes=int(big.nbytes), max_len=max(lengths))


class _Device:
    """The modeled GPU (see GPU_MODEL): one batch at a time, in submission order (a
    one-thread executor); a batch of n items costs launch_ms + n * per_item_ms, with the
    GIL released. `started` records (start time, items) of every batch it ran."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.launch, self.per = float(cfg["launch_ms"]) / 1e3, float(cfg["per_item_ms"]) / 1e3
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="device")
        self.started: list[tuple[float, list[Any]]] = []

    def kernel(self, items: list[Any]) -> list[Any]:
        _sizes.append(len(items))
        self.started.append((time.perf_counter(), list(items)))
        time.sleep(self.launch + self.per * len(items))  # the GIL is released while the device computes
        return list(items)

    def run(self, items: list[Any]) -> list[Any]:
        """The user's (sync) model function: returns when the device has run the batch."""
        return self.pool.submit(self.kernel, items).result()

    async def arun(self, items: list[Any]) -> list[Any]:
        import asyncio

        return await asyncio.wrap_future(self.pool.submit(self.kernel, items))

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _poisson(rate: float, until: float, seed: int) -> list[float]:
    """Arrival times (s from the start) of a Poisson process; the same for every system."""
    rng = random.Random(seed)
    arrivals: list[float] = []
    t = rng.expovariate(rate)
    while t < until:
        arrivals.append(t)
        t += rng.expovariate(rate)
    return arrivals


async def _open_loop(arrivals: list[float], request: Callable[[int], Any], warm: float, secs: float,
                     drain: float, t0: float) -> tuple[float, tuple[int, int]]:
    """Starts request(i) (a coroutine function) at t0 + arrivals[i] (perf_counter), open
    loop; waits for the stragglers until warm + secs + drain, then cancels them. Returns
    the cut-off (s from t0) and the batch counts (_sizes) at the start and the end of
    the measured window."""
    import asyncio

    clock = time.perf_counter
    tasks = []
    marks = [0, 0]
    i, n = 0, len(arrivals)
    while i < n:
        now = clock() - t0
        if not marks[0] and now >= warm:
            marks[0] = len(_sizes)
        while i < n and arrivals[i] <= now:
            tasks.append(asyncio.ensure_future(request(i)))
            i += 1
        if i < n:
            await asyncio.sleep(arrivals[i] - (clock() - t0))
    await asyncio.sleep(max(0.0, warm + secs - (clock() - t0)))
    marks[1] = len(_sizes)
    _done, pending = await asyncio.wait(tasks, timeout=max(0.0, t0 + warm + secs + drain - clock())) \
        if tasks else (set(), set())
    cutoff = clock() - t0
    for task in pending:  # still queued after the drain time: censored (counted at their age)
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return cutoff, (marks[0], marks[1])


def w_gpu(cfg: dict, out: dict) -> None:
    """The modeled GPU (see GPU_MODEL) driven open loop at cfg["load"] x its capacity."""
    import asyncio

    cap = gpu_capacity(cfg)
    rate = float(cfg["load"]) * cap
    warm, secs, drain = float(cfg["warmup_s"]), float(cfg["seconds"]), float(cfg["drain_s"])
    device = _Device(cfg)

    if IMPL == "none":
        async def call(i: int) -> int:  # one device call per request
            return (await device.arun([i]))[0]
    elif IMPL == "serve":  # @serve.batch takes an async function: it awaits the device
        call = _serve_batch(device.arun, cfg)
    else:
        from batched import aio

        call = aio.dynamically(batch_size=int(cfg["batch_size"]), timeout_ms=float(cfg["timeout_ms"]))(device.run)
        _processors.append(call)

    arrivals = _poisson(rate, warm + secs, int(cfg.get("seed", 0)) * 1000 + int(round(float(cfg["load"]) * 100)))
    n = len(arrivals)
    done_at = [float("nan")] * n
    bad = [0]
    t0 = [0.0]

    async def request(i: int) -> None:
        r = await call(i)
        done_at[i] = time.perf_counter() - t0[0]
        if r != i:
            bad[0] += 1

    async def main() -> tuple[float, tuple[int, int]]:
        for i in range(3):  # start the worker and the device thread
            if await call(-1 - i) != -1 - i:
                out["errors"].append("warm-up call returned a wrong result")
        t0[0] = time.perf_counter()
        return await _open_loop(arrivals, request, warm, secs, drain, t0[0])

    cutoff, marks = asyncio.run(main())
    device.close()
    measured = [i for i in range(n) if warm <= arrivals[i] < warm + secs]
    lats = [(done_at[i] if done_at[i] == done_at[i] else cutoff) - arrivals[i] for i in measured]
    unfinished = sum(1 for i in measured if done_at[i] != done_at[i])
    m = out["metrics"]
    m["offered_rps"] = rate
    m["items_per_s"] = sum(1 for d in done_at if warm <= d < warm + secs) / secs
    m["p50_us"] = percentile(lats, 50) * 1e6
    m["p99_us"] = percentile(lats, 99) * 1e6
    m["unfinished_pct"] = 100.0 * unfinished / max(1, len(measured))
    _batch_stats(marks[0], out, marks[1])
    out["info"].update(capacity_rps=cap, requests=n, measured=len(measured), unfinished=unfinished,
                       load=float(cfg["load"]))
    if bad[0]:
        out["errors"].append(f"{bad[0]} requests got another request's result")


def _gpu_metrics(target: bool) -> list[Metric]:
    return [
        Metric("offered_rps", "offered load", rate),
        Metric("items_per_s", "throughput", rate),
        Metric("p50_us", "p50 latency", micros),
        # The target, at the load near saturation: p99 at most half of 0.1.5's, at equal or higher
        # throughput ("equal": within 1%, the noise of counting completions in a 4 s window).
        Metric("p99_us", "p99 latency", micros, "≤ 0.5× 0.1.5 at ≥ its throughput" if target else "",
               (lambda o, r: o <= 0.5 * r) if target else None,
               also=(lambda med: (med["items_per_s"]["ours"] or 0) >= 0.99 * (med["items_per_s"]["0.1.5"] or 0))
               if target else None),
        Metric("p99_us", "p99 latency (vs serve)", micros, "< @serve.batch", lambda o, r: o < r, vs="serve"),
        Metric("unfinished_pct", "unfinished after drain", lambda v: f"{v:.1f} %"),
        AVG_BATCH,
    ]


for _pct in GPU_LOADS:
    _c = dict(GPU_MODEL, load=_pct / 100.0)
    _c["seconds"] = max(_c["seconds"], float(round(GPU_MIN_REQUESTS / (_c["load"] * gpu_capacity(_c)))))
    workload(f"gpu{_pct}", "gpu",
             f"modeled GPU ({_c['launch_ms']:g} ms + {_c['per_item_ms']:g} ms/item, one batch at a time, "
             f"GIL released), aio, Poisson arrivals at {_c['load']:.0%} of capacity "
             f"({_c['load'] * gpu_capacity(_c):,.0f}/s) for {_c['seconds']:g} s; batch_size={_c['batch_size']}, "
             f"timeout_ms={_c['timeout_ms']:g}; none = one device call per request; serve = @serve.batch of an "
             f"async function awaiting the device, same settings",
             _c, _gpu_metrics(_pct == GPU_TARGET_LOAD), quick=GPU_QUICK, none=True, serve=True,
             default=False)(w_gpu)

# ---------------------------------------------------------------- production traffic

# The modeled GPU under traffic that is not one stream of equal items (docs/semantics.md,
# sections 3, 11 and 12). batched 0.1.5 has no deadlines, priorities or keys: it runs the
# same traffic with what it has (no deadline; arrival order; one processor per key).

def _ALWAYS(o: float, r: float) -> bool:
    """A target judged by its `also` condition alone (it compares metrics of ours)."""
    return True


def _has(feature: str) -> bool:
    import batched

    return hasattr(batched, feature)


def _phase(cfg: dict[str, Any], load: float, make_call: Callable[[_Device], Any],
           request_meta: Callable[[int], dict[str, Any]], seed: int) -> dict[str, Any]:
    """One open-loop run on a fresh device and processor at `load` x capacity: per
    request its arrival, when it was answered (nan if not), its outcome ("ok", "expired",
    "wrong", "cancelled") and its metadata; and the device's batches."""
    import asyncio

    warm, secs, drain = float(cfg["warmup_s"]), float(cfg["seconds"]), float(cfg["drain_s"])
    device = _Device(cfg)
    call = make_call(device)
    arrivals = _poisson(load * gpu_capacity(cfg), warm + secs, seed)
    n = len(arrivals)
    meta = [request_meta(i) for i in range(n)]
    done_at = [float("nan")] * n
    outcome = ["cancelled"] * n
    t0 = [0.0]

    async def request(i: int) -> None:
        try:  # (age: how late the loop started it; a server counts a deadline from arrival)
            r = await call(i, meta[i], time.perf_counter() - t0[0] - arrivals[i])
        except TimeoutError:  # batched.DeadlineExceeded
            outcome[i] = "expired"
            done_at[i] = time.perf_counter() - t0[0]
            return
        done_at[i] = time.perf_counter() - t0[0]
        outcome[i] = "ok" if r == i else "wrong"

    async def main() -> tuple[float, tuple[int, int]]:
        for i in range(3):  # start the worker and the device thread
            await call(-1 - i, request_meta(-1 - i), 0.0)
        t0[0] = time.perf_counter()
        return await _open_loop(arrivals, request, warm, secs, drain, t0[0])

    cutoff, marks = asyncio.run(main())
    device.close()
    for p in _processors:
        stop = getattr(p, "shutdown", None)
        if stop is not None:
            stop()
    _processors.clear()
    return {"arrivals": arrivals, "done_at": done_at, "outcome": outcome, "meta": meta, "cutoff": cutoff,
            "marks": marks, "started": [(t - t0[0], items) for t, items in device.started], "warm": warm,
            "secs": secs, "n": n}


def _window(ph: dict[str, Any]) -> list[int]:
    return [i for i in range(ph["n"]) if ph["warm"] <= ph["arrivals"][i] < ph["warm"] + ph["secs"]]


def _answered_per_s(ph: dict[str, Any], within: float = float("inf")) -> float:
    """Requests answered with their result inside the window, within `within` s of arrival, per s."""
    w0, w1 = ph["warm"], ph["warm"] + ph["secs"]
    ok = sum(1 for i in range(ph["n"]) if ph["outcome"][i] == "ok" and w0 <= ph["done_at"][i] < w1
             and ph["done_at"][i] - ph["arrivals"][i] <= within)
    return ok / ph["secs"]


def _aio_model(cfg: dict[str, Any], device: _Device, **options: Any) -> Any:
    from batched import aio

    f = aio.dynamically(batch_size=int(cfg["batch_size"]), timeout_ms=float(cfg["timeout_ms"]), **options)(device.run)
    _processors.append(f)
    return f


def _plain_calls(cfg: dict[str, Any]) -> Callable[[_Device], Any]:
    """For _phase: requests awaiting a plain aio processor of the device."""

    def make(device: _Device) -> Any:
        f = _aio_model(cfg, device)

        async def call(i: int, meta: dict, age_s: float) -> Any:
            return await f(i)

        return call

    return make


DEADLINE150 = dict(GPU_MODEL, load=1.5, deadline_ms=100.0, seconds=4.0)


@workload("deadline150", "traffic",
          "modeled GPU (8 ms + 0.1 ms/item), aio, Poisson arrivals at 150 % of capacity, every request "
          "with a 100 ms deadline (`with batched.deadline(100)`; 0.1.5 has none); batch_size=32, "
          "timeout_ms=5; beside it the same set-up at 100 % load without deadlines, and (ours) at 150 % "
          "without deadlines",
          DEADLINE150,
          [Metric("capacity_rps", "answered/s at 100 % load", rate),
           Metric("on_time_rps", "answered within 100 ms/s, 150 %", rate,
                  "≥ 0.9× answered/s at 100 % load", _ALWAYS,
                  also=lambda med: (med["on_time_rps"]["ours"] or 0) >= 0.9 * (med["capacity_rps"]["ours"] or 1)),
           Metric("on_time_pct", "answered within 100 ms, 150 %", lambda v: f"{v:.1f} %"),
           Metric("on_time_rps_no_deadline", "ours without deadlines: within 100 ms/s", rate),
           Metric("expired_pct", "DeadlineExceeded", lambda v: f"{v:.1f} %"),
           Metric("late_sent", "sent after its deadline had passed", count, "0", lambda o, r: o == 0),
           Metric("late_answers", "computed, answered late", count),
           AVG_BATCH],
          quick=GPU_QUICK, default=False, timeout_s=240.0)
def w_deadline150(cfg: dict, out: dict) -> None:
    deadlines = _has("deadline")
    limit_s = float(cfg["deadline_ms"]) / 1e3
    seed = int(cfg.get("seed", 0)) * 1000 + 150

    plain = _plain_calls(cfg)

    def with_deadline(device: _Device) -> Any:
        import batched

        f = _aio_model(cfg, device)

        async def call(i: int, meta: dict, age_s: float) -> Any:
            # as a FastAPI middleware would set it, from the request's arrival
            with batched.deadline(max(0.0, float(cfg["deadline_ms"]) - 1e3 * age_s)):
                return await f(i)

        return call

    base = _phase(cfg, 1.0, plain, lambda i: {}, seed)
    ph = _phase(cfg, float(cfg["load"]), with_deadline if deadlines else plain, lambda i: {}, seed + 1)
    m = out["metrics"]
    m["capacity_rps"] = _answered_per_s(base)
    m["on_time_rps"] = _answered_per_s(ph, limit_s)
    win = _window(ph)
    m["on_time_pct"] = 100.0 * sum(1 for i in win if ph["outcome"][i] == "ok"
                                   and ph["done_at"][i] - ph["arrivals"][i] <= limit_s) / max(1, len(win))
    m["expired_pct"] = 100.0 * sum(1 for i in win if ph["outcome"][i] == "expired") / max(1, len(win))
    arrivals = ph["arrivals"]
    late_sent = late_answers = 0
    for t, items in ph["started"]:
        for i in items:
            if i >= 0 and t > arrivals[i] + limit_s:
                late_sent += 1
    for i in range(ph["n"]):
        if ph["outcome"][i] == "ok" and ph["done_at"][i] - arrivals[i] > limit_s:
            late_answers += 1
    m["late_sent"], m["late_answers"] = float(late_sent), float(late_answers)
    if deadlines:
        nod = _phase(cfg, float(cfg["load"]), plain, lambda i: {}, seed + 1)
        m["on_time_rps_no_deadline"] = _answered_per_s(nod, limit_s)
    sizes = [len(items) for _, items in ph["started"]]
    m["avg_batch"] = sum(sizes) / max(1, len(sizes))
    bad = sum(1 for o in ph["outcome"] if o == "wrong")
    if bad:
        out["errors"].append(f"{bad} requests got another request's result")
    out["info"].update(requests=ph["n"], measured=len(win), deadlines=deadlines)


INTERACTIVE = dict(GPU_MODEL, interactive_load=0.2, bulk_callers=2, bulk_items=1000, seconds=4.0)


@workload("interactive_bulk", "traffic",
          "modeled GPU (8 ms + 0.1 ms/item), aio; 2 callers each sending 1,000-item calls back to back "
          "(the device saturated) and one-item calls, Poisson at 20 % of capacity, "
          "inside `with batched.priority(-1)` (0.1.5: no priorities); batch_size=32, timeout_ms=5",
          INTERACTIVE,
          [Metric("batch_ms", "one batch (32 items)", lambda v: f"{v:.1f} ms"),
           Metric("interactive_p50_us", "interactive p50", micros),
           Metric("interactive_p99_us", "interactive p99", micros, "≤ 2 batch times", _ALWAYS,
                  also=lambda med: (med["interactive_p99_us"]["ours"] or 1e18) <= 2e3 * med["batch_ms"]["ours"]),
           Metric("bulk_pct", "bulk items/s, % of capacity", lambda v: f"{v:.1f} %"),
           Metric("bulk_share_pct", "bulk, % of what interactive leaves", lambda v: f"{v:.1f} %", "≥ 80 %",
                  lambda o, r: o >= 80.0),
           Metric("device_pct", "device throughput, % of capacity", lambda v: f"{v:.1f} %"),
           AVG_BATCH],
          quick=GPU_QUICK, default=False, timeout_s=180.0)
def w_interactive_bulk(cfg: dict, out: dict) -> None:
    import asyncio

    priorities = _has("priority")
    warm, secs, drain = float(cfg["warmup_s"]), float(cfg["seconds"]), float(cfg["drain_s"])
    cap = gpu_capacity(cfg)
    device = _Device(cfg)
    f = _aio_model(cfg, device)
    arrivals = _poisson(float(cfg["interactive_load"]) * cap, warm + secs, int(cfg.get("seed", 0)) * 1000 + 20)
    n = len(arrivals)
    done_at = [float("nan")] * n
    bulk_done: list[tuple[float, int]] = []  # (when, items)
    bad = [0]
    t0 = [0.0]
    stop = [False]

    async def interactive(i: int) -> None:
        if priorities:
            import batched

            with batched.priority(-1):
                r = await f(i)
        else:
            r = await f(i)
        done_at[i] = time.perf_counter() - t0[0]
        if r != i:
            bad[0] += 1

    async def bulk(k: int) -> None:
        j = 0
        while not stop[0]:
            base = 10_000_000 * (k + 1) + j * int(cfg["bulk_items"])
            items = list(range(base, base + int(cfg["bulk_items"])))
            r = await f(items)
            bulk_done.append((time.perf_counter() - t0[0], len(items)))
            if r != items:
                bad[0] += 1
            j += 1

    async def main() -> tuple[float, tuple[int, int]]:
        await f(-1)
        t0[0] = time.perf_counter()
        bulks = [asyncio.ensure_future(bulk(k)) for k in range(int(cfg["bulk_callers"]))]
        result = await _open_loop(arrivals, interactive, warm, secs, drain, t0[0])
        stop[0] = True
        for b in bulks:
            b.cancel()
        await asyncio.gather(*bulks, return_exceptions=True)
        return result

    cutoff, marks = asyncio.run(main())
    device.close()
    win = [i for i in range(n) if warm <= arrivals[i] < warm + secs]
    lats = [(done_at[i] if done_at[i] == done_at[i] else cutoff) - arrivals[i] for i in win]
    started = [(t - t0[0], items) for t, items in device.started if warm <= t - t0[0] < warm + secs]
    bulk_items = sum(1 for _, items in started for x in items if x >= 10_000_000)
    inter_items = sum(1 for _, items in started for x in items if 0 <= x < 10_000_000)
    m = out["metrics"]
    b = int(cfg["batch_size"])
    m["batch_ms"] = float(cfg["launch_ms"]) + b * float(cfg["per_item_ms"])
    m["interactive_p50_us"] = percentile(lats, 50) * 1e6
    m["interactive_p99_us"] = percentile(lats, 99) * 1e6
    m["bulk_pct"] = 100.0 * bulk_items / secs / cap
    m["bulk_share_pct"] = 100.0 * bulk_items / secs / max(1.0, cap - inter_items / secs)
    m["device_pct"] = 100.0 * (bulk_items + inter_items) / secs / cap
    _batch_stats(marks[0], out, marks[1])
    if bad[0]:
        out["errors"].append(f"{bad[0]} calls got another call's results")
    out["info"].update(interactive=len(win), priorities=priorities)


KEYS = dict(GPU_MODEL, load=1.2, timeout_ms=200.0, shares=(70, 20, 9, 1), seconds=6.0)


@workload("keys4", "traffic",
          "modeled GPU (8 ms + 0.1 ms/item), aio, Poisson arrivals at 120 % of capacity (saturated), "
          "4 keys at 70/20/9/1 %; ours: one processor with group_by; 0.1.5: one processor per key on the "
          "same device; single key: the same load with one key; batch_size=32, timeout_ms=200",
          KEYS,
          [Metric("single_key_rps", "throughput, one key", rate),
           Metric("keyed_rps", "throughput, 4 keys", rate, "≥ 0.9× one key", _ALWAYS,
                  also=lambda med: (med["keyed_rps"]["ours"] or 0) >= 0.9 * (med["single_key_rps"]["ours"] or 1)),
           Metric("rare_p99_us", "1 % key p99", micros, "≤ timeout + 2 batch times", _ALWAYS,
                  also=lambda med: (med["rare_p99_us"]["ours"] or 1e18) <= 1e3 * (200.0 + 2 * 11.2)),
           Metric("rare_p50_us", "1 % key p50", micros),
           Metric("mixed_batches", "batches mixing keys", count, "0", lambda o, r: o == 0),
           AVG_BATCH],
          quick=GPU_QUICK, default=False, timeout_s=240.0)
def w_keys4(cfg: dict, out: dict) -> None:
    grouping = _has("current_key")
    shares = [int(x) for x in cfg["shares"]]
    keys = [k for k, share in enumerate(shares) for _ in range(share)]  # 100 slots
    rng = random.Random(int(cfg.get("seed", 0)) * 1000 + 4)
    key_of = {}

    def meta(i: int) -> dict[str, Any]:
        if i not in key_of:
            key_of[i] = keys[rng.randrange(100)] if i >= 0 else 0
        return {"key": key_of[i]}

    def keyed(device: _Device) -> Any:
        if grouping:
            f = _aio_model(cfg, device, group_by=lambda i: key_of.get(i, 0))

            async def call(i: int, m: dict, age_s: float) -> Any:
                return await f(i)
        else:  # one processor per key, as a user of 0.1.5 would
            per_key = [_aio_model(cfg, device) for _ in shares]

            async def call(i: int, m: dict, age_s: float) -> Any:
                return await per_key[m["key"]](i)

        return call

    seed = int(cfg.get("seed", 0)) * 1000 + 120
    one = _phase(cfg, float(cfg["load"]), _plain_calls(cfg), lambda i: {"key": 0}, seed)
    ph = _phase(cfg, float(cfg["load"]), keyed, meta, seed)
    m = out["metrics"]
    m["single_key_rps"] = _answered_per_s(one)
    m["keyed_rps"] = _answered_per_s(ph)
    rare = len(shares) - 1
    win = [i for i in _window(ph) if ph["meta"][i]["key"] == rare]
    lats = [(ph["done_at"][i] if ph["done_at"][i] == ph["done_at"][i] else ph["cutoff"]) - ph["arrivals"][i]
            for i in win]
    m["rare_p99_us"] = percentile(lats, 99) * 1e6
    m["rare_p50_us"] = percentile(lats, 50) * 1e6
    m["mixed_batches"] = float(sum(1 for _, items in ph["started"]
                                   if len({key_of.get(i, 0) for i in items}) > 1))
    sizes = [len(items) for t, items in ph["started"] if ph["warm"] <= t < ph["warm"] + ph["secs"]]
    m["avg_batch"] = sum(sizes) / max(1, len(sizes))
    bad = sum(1 for o in ph["outcome"] if o == "wrong")
    if bad:
        out["errors"].append(f"{bad} requests got another request's result")
    out["info"].update(rare_requests=len(win), grouping=grouping)


PADDING_TOKENS = {"threads": 64, "seconds": 3.0, "min_len": 16, "max_len": 512, "batch_size": 32,
                  "timeout_ms": 5.0, "max_batch_tokens": 4096, "us_per_token": 0.5, "pool": 64}


@workload("padding_tokens", "traffic",
          "inference.dynamically, 64 threads, closed loop, 1 row of 16..512 int64 tokens per call; the model "
          "costs 0.5 µs per padded token (GIL released); plain: batch_size=32; tokens (ours): "
          "max_batch_tokens=4096 with PriorityStrategy.LENGTH, batch_size=32; timeout_ms=5",
          PADDING_TOKENS,
          [Metric("padded_per_real", "padded tokens per real token", lambda v: f"{v:.2f}",
                  "< 0.1.5", lambda o, r: o < r),
           Metric("padded_per_real_plain", "ours, plain batch_size: padded per real", lambda v: f"{v:.2f}"),
           Metric("max_tokens", "largest batch, padded tokens", count, "≤ 4,096", lambda o, r: o <= 4096),
           Metric("items_per_s", "rows/s", rate),
           Metric("items_per_s_plain", "ours, plain batch_size: rows/s", rate),
           Metric("padding_efficiency", "stats.padding_efficiency", lambda v: f"{v:.2f}"),
           AVG_BATCH],
          quick={"seconds": 0.7}, default=False, timeout_s=120.0)
def w_padding_tokens(cfg: dict, out: dict) -> None:
    from batched import inference

    tokens_budget = _has("current_key")  # (this project; 0.1.5 has no max_batch_tokens)
    nthreads, seconds, pool = int(cfg["threads"]), float(cfg["seconds"]), int(cfg["pool"])
    lo, hi = int(cfg["min_len"]), int(cfg["max_len"])
    per_token = float(cfg["us_per_token"]) / 1e6
    counts = {"real": 0, "padded": 0, "max": 0}

    def model(features: dict[str, Any]) -> Any:
        ids, mask = features["input_ids"], features["attention_mask"]
        _sizes.append(int(ids.shape[0]))
        counts["real"] += int(mask.sum())
        counts["padded"] += int(ids.size)
        counts["max"] = max(counts["max"], int(ids.size))
        time.sleep(per_token * ids.size)  # the device computes every padded token
        return (ids * mask).sum(1) + mask.sum(1)

    reqs = _row_requests(nthreads, pool, lo, hi, 17)

    def request(tid: int, i: int) -> tuple[dict[str, Any], list[int]]:
        feats, expected = reqs[tid][i % pool]
        return feats, [expected]

    def run(**options: Any) -> tuple[dict[str, Any], float]:
        f = inference.dynamically(batch_size=int(cfg["batch_size"]), timeout_ms=float(cfg["timeout_ms"]),
                                  pad_tokens={"input_ids": 0}, padding_side="right", **options)(model)
        _processors.append(f)
        f(reqs[0][0][0])
        counts.update(real=0, padded=0, max=0)
        res: dict[str, Any] = {"metrics": {}, "errors": out["errors"], "info": {}}
        _closed_loop(f, nthreads, seconds, request, res)
        eff = getattr(f.stats, "padding_efficiency", None)
        return dict(counts, items_per_s=res["metrics"].get("items_per_s", 0.0),
                    avg_batch=res["metrics"].get("avg_batch", 0.0)), float(eff or 0.0)

    plain, eff_plain = run()
    m = out["metrics"]
    if tokens_budget:
        from batched.types import PriorityStrategy

        tok, eff = run(max_batch_tokens=int(cfg["max_batch_tokens"]), priority_strategy=PriorityStrategy.LENGTH)
        m["padded_per_real_plain"] = plain["padded"] / max(1, plain["real"])
        m["items_per_s_plain"] = plain["items_per_s"]
    else:
        tok, eff = plain, eff_plain
    m["padded_per_real"] = tok["padded"] / max(1, tok["real"])
    m["max_tokens"] = float(tok["max"])
    m["items_per_s"] = tok["items_per_s"]
    if tokens_budget:  # (0.1.5's stats have no padding_efficiency)
        m["padding_efficiency"] = eff
    m["avg_batch"] = tok["avg_batch"]


# ---------------------------------------------------------------- Ray Serve over HTTP

# One Serve deployment, one replica, whose batched method awaits the modeled GPU (in the
# replica): ours = aio.dynamically on it, serve = @serve.batch on it, same settings.
SERVE_HTTP = {"clients": 48, "seconds": 10.0, "warmup_s": 3.0, "batch_size": 32, "timeout_ms": 5.0,
              "launch_ms": 8.0, "per_item_ms": 0.1}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve_app(cfg: dict[str, Any]) -> Any:
    """The deployment, made here so both systems get the same class but for the
    decorator on ``infer``; it pickles by value to the replica (this module is
    __main__), and ours' processor with it (as its function and options)."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from ray import serve

    b, wait_ms = int(cfg["batch_size"]), float(cfg["timeout_ms"])
    launch, per = float(cfg["launch_ms"]) / 1e3, float(cfg["per_item_ms"]) / 1e3
    if IMPL == "serve":
        batcher = serve.batch(max_batch_size=b, batch_wait_timeout_s=wait_ms / 1e3)
    else:
        from batched import aio

        batcher = aio.dynamically(batch_size=b, timeout_ms=wait_ms)

    # max_ongoing_requests above the clients: Serve never caps a batch; one CPU: both
    # actors (proxy and replica) fit the 2-CPU Ray of this run.
    @serve.deployment(num_replicas=1, max_ongoing_requests=4 * int(cfg["clients"]),
                      ray_actor_options={"num_cpus": 1})
    class Model:
        def __init__(self) -> None:
            self.device = ThreadPoolExecutor(1, thread_name_prefix="device")
            self.sizes: list[int] = []

        def kernel(self, items: list[int]) -> list[int]:
            self.sizes.append(len(items))
            time.sleep(launch + per * len(items))  # the GIL is released while the device computes
            return [2 * i + 1 for i in items]

        @batcher
        async def infer(self, items: list[int]) -> list[int]:
            return await asyncio.wrap_future(self.device.submit(self.kernel, items))

        def batch_sizes(self) -> list[int]:
            return list(self.sizes)

        async def __call__(self, request: Any) -> dict[str, int]:
            x = int(request.query_params["x"])
            return {"x": x, "y": await self.infer(x)}

    return Model.bind()


def w_serve_http(cfg: dict, out: dict) -> None:
    """A local Ray (2 CPUs, small object store, no dashboard), Serve's HTTP proxy on
    loopback, `clients` closed-loop keep-alive HTTP clients (threads): requests/s,
    p50/p99 from each client's send to its answer, the batch sizes the replica formed."""
    import http.client

    import ray
    from ray import serve

    port = _free_port()
    ray.init(num_cpus=2, object_store_memory=100 * 1024 * 1024, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        handle = serve.run(_serve_app(cfg), route_prefix="/")
        warm, secs = float(cfg["warmup_s"]), float(cfg["seconds"])
        lats: list[float] = []  # of the requests sent in the measured window
        bad, errors = [0], []
        t_start = time.perf_counter()
        t_measure, t_end = t_start + warm, t_start + warm + secs
        marks: list[int] = []

        def client(k: int) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            i = k
            try:
                while (t0 := time.perf_counter()) < t_end:
                    conn.request("GET", f"/?x={i}")
                    resp = conn.getresponse()
                    body = resp.read()
                    t1 = time.perf_counter()
                    if resp.status != 200:
                        errors.append(f"HTTP {resp.status}: {body[:200]!r}")
                    elif json.loads(body) != {"x": i, "y": 2 * i + 1}:
                        bad[0] += 1
                    if t0 >= t_measure and t1 <= t_end:
                        lats.append(t1 - t0)
                    i += int(cfg["clients"])
            except Exception as exc:  # noqa: BLE001
                errors.append(f"client {k}: {type(exc).__name__}: {exc}")
            finally:
                conn.close()

        threads = [threading.Thread(target=client, args=(k,)) for k in range(int(cfg["clients"]))]
        for t in threads:
            t.start()
        time.sleep(max(0.0, t_measure - time.perf_counter()))
        marks.append(len(handle.batch_sizes.remote().result()))
        time.sleep(max(0.0, t_end - time.perf_counter()))
        sizes = handle.batch_sizes.remote().result()
        for t in threads:
            t.join()
    finally:
        serve.shutdown()
        ray.shutdown()
    _sizes.extend(sizes[marks[0]:])  # the batches formed in the measured window (up to the batch check)
    m = out["metrics"]
    m["items_per_s"] = len(lats) / secs
    m["p50_us"] = percentile(lats, 50) * 1e6
    m["p99_us"] = percentile(lats, 99) * 1e6
    _batch_stats(0, out)
    out["info"].update(requests=len(lats), clients=int(cfg["clients"]), port=port)
    if bad[0]:
        out["errors"].append(f"{bad[0]} requests got another request's answer")
    if errors:
        out["errors"].append(f"{len(errors)} failed requests: {errors[:3]}")
    if not lats:
        out["errors"].append("no request completed in the measured window")


workload("serve_http", "ray",
         f"Ray Serve 2.60, 1 replica, modeled GPU ({SERVE_HTTP['launch_ms']:g} ms + {SERVE_HTTP['per_item_ms']:g} "
         f"ms/item) awaited by an async batched method, {SERVE_HTTP['clients']} closed-loop keep-alive HTTP clients "
         f"through Serve's proxy, {SERVE_HTTP['seconds']:g} s after {SERVE_HTTP['warmup_s']:g} s warm-up; "
         f"batch_size={SERVE_HTTP['batch_size']}, timeout_ms={SERVE_HTTP['timeout_ms']:g}; ours = aio.dynamically, "
         f"serve = @serve.batch (max_batch_size, batch_wait_timeout_s the same)",
         SERVE_HTTP,
         [Metric("items_per_s", "requests/s", rate, "≥ 0.95× @serve.batch", times(0.95), vs="serve"),
          Metric("p50_us", "p50 latency", micros),
          Metric("p99_us", "p99 latency", micros, "≤ 1.05× @serve.batch", lambda o, r: o <= 1.05 * r, vs="serve"),
          AVG_BATCH],
         quick={"seconds": 3.0, "warmup_s": 2.0}, serve=True, ref=False, needs="ray", default=False,
         timeout_s=240)(w_serve_http)

# The real model over HTTP: demo/loadtest.py (FastAPI + uvicorn, all-MiniLM-L6-v2), run by
# compare.py itself with the demo's stack on PYTHONPATH; the demo's own batch settings.
HTTP = {"clients": 64, "seconds": 10.0, "warmup_s": 3.0, "batch_size": 64, "timeout_ms": 10.0}
WORKLOADS["http_embed64"] = Workload(
    "http_embed64", "http",
    f"demo/loadtest.py: FastAPI + uvicorn, all-MiniLM-L6-v2 (CPU torch 2.13.0), {HTTP['clients']} closed-loop HTTP "
    f"clients, {HTTP['seconds']:.0f} s after {HTTP['warmup_s']:.0f} s warm-up; batch_size={HTTP['batch_size']}, "
    f"timeout_ms={HTTP['timeout_ms']:g}; none = --mode none",
    HTTP, (Metric("items_per_s", "requests/s", rate), *latency_metrics(target_p99=False), AVG_BATCH),
    run=None, quick={"seconds": 3.0, "warmup_s": 1.0}, none=True, needs="http", default=False, timeout_s=300)


# ---------------------------------------------------------------- a batcher that tunes itself

# Adaptive waits (docs/semantics.md, 13) against the fixed timeouts a user would
# try, on the modeled GPU of two cost shapes: "launch", 8 ms + 0.1 ms/item (a
# small transformer on a GPU), and "per_item", 1 ms + 0.5 ms/item (little to
# gain from batching). One process runs the five settings one after another
# (their order turns with the seed, so repeats interleave them) on the same
# Poisson arrivals; each phase is a fresh device and processor. ours only: the
# comparison is between settings of one library.
# (launch_ms, per_item_ms, measured seconds per setting): the launch shape's p99 near
# saturation moves by ±15 % from run to run over 4 s windows (one stall of the process
# shifts ~1 % of the requests), so it is measured over 8 s.
TUNING_SHAPES = {"launch": (8.0, 0.1, 8.0), "per_item": (1.0, 0.5, 4.0)}
TUNING_TIMEOUTS = (0.0, 1.0, 5.0, 20.0)
TUNING_ADAPTIVE_TIMEOUT = 20.0
TUNING_MIN_REQUESTS = 1000  # per phase, in the measured window (the 3 % load: 12 s or 18 s)


def _tuning_settings() -> list[tuple[str, dict[str, Any]]]:
    return [(f"t{t:g}", {"timeout_ms": t}) for t in TUNING_TIMEOUTS] + [
        ("adaptive", {"timeout_ms": TUNING_ADAPTIVE_TIMEOUT, "adaptive": True})]


def _best_fixed(med: dict, prefix: str, best: Callable[..., float]) -> float:
    return best(med[f"{prefix}_t{t:g}"]["ours"] or float("nan") for t in TUNING_TIMEOUTS)


def _tuning_metrics(load_pct: int) -> list[Metric]:
    ms = lambda v: f"{v / 1000:,.1f} ms"  # noqa: E731
    label = lambda name: name.replace("t", "timeout_ms=", 1) if name != "adaptive" else name  # noqa: E731
    metrics = [Metric(f"p99_{name}", f"p99, {label(name)}", ms) for name, _ in _tuning_settings()]
    metrics.append(Metric("p99_vs_best", "adaptive p99 / best fixed p99", lambda v: f"{v:.2f}×",
                          "≤ 1.15×", _ALWAYS,
                          also=lambda med: (med["p99_adaptive"]["ours"] or 1e18)
                          <= 1.15 * _best_fixed(med, "p99", min)))
    metrics += [Metric(f"rps_{name}", f"throughput, {label(name)}", rate) for name, _ in _tuning_settings()]
    metrics.append(Metric("rps_vs_best", "adaptive throughput / best fixed", lambda v: f"{v:.3f}×",
                          "≥ best (within 1 %)" if load_pct > 100 else "", _ALWAYS if load_pct > 100 else None,
                          also=(lambda med: (med["rps_adaptive"]["ours"] or 0) >= 0.99 * _best_fixed(med, "rps", max))
                          if load_pct > 100 else None))
    metrics.append(Metric("avg_batch_adaptive", "avg batch, adaptive", one_decimal))
    return metrics


def w_tuning(cfg: dict, out: dict) -> None:
    """One cost shape at one load: every setting of _tuning_settings(), in turn."""
    load = float(cfg["load"])
    settings = _tuning_settings()
    seed = int(cfg.get("seed", 0))
    turn = seed % len(settings)
    order = settings[turn:] + settings[:turn]
    m = out["metrics"]
    for name, options in order:
        phase_cfg = dict(cfg, **options)

        def make(device: _Device, phase_cfg: dict = phase_cfg, options: dict = options) -> Any:
            extra = {k: v for k, v in options.items() if k != "timeout_ms"}
            f = _aio_model(phase_cfg, device, **extra)

            async def call(i: int, meta: dict, age_s: float) -> Any:
                return await f(i)

            return call

        ph = _phase(phase_cfg, load, make, lambda i: {}, seed * 1000 + int(round(load * 100)))
        win = _window(ph)
        lats = [(ph["done_at"][i] if ph["done_at"][i] == ph["done_at"][i] else ph["cutoff"]) - ph["arrivals"][i]
                for i in win]
        m[f"p99_{name}"] = percentile(lats, 99) * 1e6
        m[f"rps_{name}"] = _answered_per_s(ph)
        sizes = [len(items) for _, items in ph["started"]]
        m[f"avg_batch_{name}"] = sum(sizes) / max(1, len(sizes))
        wrong = sum(1 for o in ph["outcome"] if o == "wrong")
        if wrong:
            out["errors"].append(f"{name}: {wrong} requests got another request's result")
    fixed = [m[f"p99_t{t:g}"] for t in TUNING_TIMEOUTS]
    m["p99_vs_best"] = m["p99_adaptive"] / min(fixed)
    m["rps_vs_best"] = m["rps_adaptive"] / max(m[f"rps_t{t:g}"] for t in TUNING_TIMEOUTS)
    out["info"].update(order=[name for name, _ in order], load=load)


for _shape, (_launch, _per, _secs) in TUNING_SHAPES.items():
    for _pct in GPU_LOADS:
        _c = dict(GPU_MODEL, launch_ms=_launch, per_item_ms=_per, load=_pct / 100.0)
        _c["seconds"] = max(_secs, float(round(TUNING_MIN_REQUESTS / (_c["load"] * gpu_capacity(_c)))))
        workload(f"adaptive_{_shape}{_pct}", "tuning",
                 f"modeled GPU ({_launch:g} ms + {_per:g} ms/item), aio, Poisson at {_pct} % of capacity "
                 f"({_c['load'] * gpu_capacity(_c):,.0f}/s) for {_c['seconds']:g} s per setting; batch_size=32; "
                 f"timeout_ms = 0, 1, 5, 20, and adaptive=True with timeout_ms=20, in turn in one process",
                 _c, _tuning_metrics(_pct), quick=GPU_QUICK, ref=False, default=False,
                 timeout_s=60.0 + 6 * (_c["seconds"] + 4.0))(w_tuning)


OOM = {"limit_rows": 24, "batch_size": 64, "callers": 32, "launch_ms": 8.0, "per_item_ms": 0.1,
       "seconds": 4.0, "warmup_s": 1.0}


class _FakeTorchOOM(RuntimeError):
    """What torch raises when a batch does not fit in GPU memory, without torch: the
    inference processors recognise it by its name."""


_FakeTorchOOM.__module__, _FakeTorchOOM.__qualname__, _FakeTorchOOM.__name__ = "torch", "OutOfMemoryError", \
    "OutOfMemoryError"


@workload("oom_split", "tuning",
          "a model (8 ms + 0.1 ms/row, GIL released) that runs out of memory above 24 rows (after its 8 ms "
          "launch), batched.inference with batch_size=64 and the default split_on, 32 threads calling "
          "one row each back to back for 4 s; beside it the same with batch_size=24 (nothing fails)",
          OOM,
          [Metric("rps_split", "rows/s, batch_size=64, split on OOM", rate),
           Metric("rps_24", "rows/s, batch_size=24", rate),
           Metric("ratio", "split / batch_size=24", lambda v: f"{v:.2f}×", "≥ 0.9×", lambda o, r: o >= 0.9),
           Metric("first_cap", "cap after the first failure", count, "≤ 24", lambda o, r: o <= 24),
           Metric("final_cap", "cap at the end", count),
           Metric("splits", "batches split", count),
           Metric("caller_errors", "errors reaching callers", count, "0", lambda o, r: o == 0),
           Metric("wrong", "wrong answers", count, "0", lambda o, r: o == 0)],
          quick={"seconds": 1.0, "warmup_s": 0.3}, ref=False, default=False, timeout_s=120.0)
def w_oom_split(cfg: dict, out: dict) -> None:
    import numpy as np

    from batched import inference

    limit, launch, per = int(cfg["limit_rows"]), float(cfg["launch_ms"]) / 1e3, float(cfg["per_item_ms"]) / 1e3

    def model(features: dict[str, Any]) -> Any:
        ids = features["input_ids"]
        time.sleep(launch)
        if len(ids) > limit:
            raise _FakeTorchOOM(f"CUDA out of memory: {len(ids)} rows (modeled)")
        time.sleep(per * len(ids))
        return ids.sum(axis=1)

    def run(batch_size: int) -> dict[str, Any]:
        proc = inference.dynamically(batch_size=batch_size, timeout_ms=5)(model)
        warm, secs = float(cfg["warmup_s"]), float(cfg["seconds"])
        t_start = time.perf_counter()
        t_end = t_start + warm + secs
        done = [0] * int(cfg["callers"])
        errors: list[str] = []
        wrong = [0]
        first_cap: list[int] = []

        def caller(k: int) -> None:
            i = 0
            while True:
                now = time.perf_counter()
                if now >= t_end:
                    return
                x = k * 1_000_000 + i
                try:
                    got = proc({"input_ids": np.array([[x, 1]], dtype=np.int64)})
                except Exception as e:  # noqa: BLE001 - counted: none may reach a caller
                    errors.append(f"{type(e).__name__}: {e}")
                    continue
                if got.tolist() != [x + 1]:
                    wrong[0] += 1
                if now - t_start >= warm:
                    done[k] += 1
                i += 1

        def watch() -> None:  # the cap just after the first split
            while time.perf_counter() < t_end and not first_cap:
                s = proc.stats
                if s.split_batches:
                    first_cap.append(s.batch_cap)
                time.sleep(0.0005)

        threads = [threading.Thread(target=caller, args=(k,)) for k in range(int(cfg["callers"]))]
        watcher = threading.Thread(target=watch)
        for t in [*threads, watcher]:
            t.start()
        for t in [*threads, watcher]:
            t.join()
        s = proc.stats
        proc.shutdown()
        return {"rps": sum(done) / secs, "errors": errors, "wrong": wrong[0], "splits": s.split_batches,
                "final_cap": s.batch_cap, "first_cap": first_cap[0] if first_cap else batch_size}

    split, capped = run(int(cfg["batch_size"])), run(limit)
    m = out["metrics"]
    m["rps_split"], m["rps_24"] = split["rps"], capped["rps"]
    m["ratio"] = split["rps"] / capped["rps"]
    m["first_cap"], m["final_cap"], m["splits"] = float(split["first_cap"]), float(split["final_cap"]), \
        float(split["splits"])
    m["caller_errors"] = float(len(split["errors"]) + len(capped["errors"]))
    m["wrong"] = float(split["wrong"] + capped["wrong"])
    for e in (split["errors"] + capped["errors"])[:3]:
        out["errors"].append(f"a caller got {e}")
    if m["wrong"]:
        out["errors"].append(f"{m['wrong']:.0f} callers got another row's answer")


def main() -> int:
    global IMPL
    ap = argparse.ArgumentParser()
    ap.add_argument("workload", choices=sorted(w for w, x in WORKLOADS.items() if x.run is not None))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--hang-dump-s", type=float, default=0, help="dump all thread stacks to stderr after N s")
    ap.add_argument("--impl", choices=("batched", "none", "serve"), default="batched",
                    help="none: no batcher (workloads registered with none=True); serve: Ray Serve's "
                         "@serve.batch (serve=True)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random arrivals (gpu* workloads)")
    args = ap.parse_args()
    IMPL = args.impl
    # numpy's OpenBLAS pool spins ~5 % of a core after import whatever the process
    # does (no workload here calls BLAS): CPU figures would count it, per item.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    w = WORKLOADS[args.workload]
    if IMPL == "none" and not w.none or IMPL == "serve" and not w.serve:
        ap.error(f"{args.workload} has no {IMPL!r} variant")
    if args.hang_dump_s > 0:
        faulthandler.dump_traceback_later(args.hang_dump_s, exit=False)
    cfg = dict(w.config)
    if args.quick:
        cfg.update(w.quick)
    cfg["seed"] = args.seed
    out: dict = {"workload": args.workload, "config": cfg, "metrics": {}, "errors": [], "info": {}}
    try:
        w.run(cfg, out)
    except BaseException as exc:  # noqa: BLE001
        import traceback

        out["errors"].append(f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-3000:]}")
    largest = max(_sizes, default=0)
    if IMPL != "none" and "batch_size" in cfg and largest > int(cfg["batch_size"]):
        out["errors"].append(f"a batch of {largest} items exceeded batch_size={cfg['batch_size']}")
    if "batched" in sys.modules:
        mod = sys.modules["batched"]
        out["info"]["batched_file"] = getattr(mod, "__file__", None)
        try:
            from importlib.metadata import version

            out["info"]["batched_version"] = version("batched")
        except Exception:  # noqa: BLE001
            pass
    out["ok"] = not out["errors"]
    print(json.dumps(out), flush=True)
    # processor.shutdown() exists in 0.1.5 and here; a hang in it (or at exit) shows as a timeout.
    for f in _processors:
        stop = getattr(f, "shutdown", None)
        if callable(stop):
            stop()
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

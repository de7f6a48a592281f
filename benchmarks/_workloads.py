"""One benchmark measurement, run in a fresh interpreter of one implementation's venv.

    <venv>/bin/python benchmarks/_workloads.py WORKLOAD [--quick]

Prints exactly one JSON object on the last line of stdout:
    {"workload": ..., "ok": bool, "errors": [...], "metrics": {...}, "info": {...}}
and exits 1 when a correctness check failed.  Driven by benchmarks/compare.py;
stdlib only, so it runs unchanged against this project and `batched` 0.1.5.
Not meant to be imported: the measured `import batched` happens inside each
workload (or, for import_time, in fresh child interpreters).
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

# Each workload states its configuration here; the orchestrator prints it in the table.
CONFIG: dict[str, dict[str, Any]] = {
    "list100k": {"batch_size": 64, "timeout_ms": 1.0, "items": 100_000},
    "threads32": {"batch_size": 32, "timeout_ms": 5.0, "threads": 32, "seconds": 2.0},
    # 0.1.5 sleeps timeout_ms whenever fewer than batch_size items wait, so a
    # short timeout is its best case: the harder comparison.
    "threads32_t1": {"batch_size": 32, "timeout_ms": 1.0, "threads": 32, "seconds": 2.0},
    "idle_latency0": {"batch_size": 32, "timeout_ms": 0.0, "calls": 300, "gap_ms": 2.0},
    "idle_latency5": {"batch_size": 32, "timeout_ms": 5.0, "calls": 300, "gap_ms": 2.0},
    "idle_cpu": {"batch_size": 32, "timeout_ms": 5.0, "idle_s": 2.0},
    "idle_cpu0": {"batch_size": 32, "timeout_ms": 0.0, "idle_s": 2.0},
    "import_time": {"runs": 10},
    # asyncio (batched.aio and BatchProcessor.acall)
    "aio_tasks2000": {"batch_size": 64, "timeout_ms": 5.0, "tasks": 2000, "rounds": 10},
    "acall_tasks2000": {"batch_size": 64, "timeout_ms": 5.0, "tasks": 2000, "rounds": 10},
    "aio_idle_latency0": {"batch_size": 32, "timeout_ms": 0.0, "calls": 300, "gap_ms": 2.0},
    "aio_idle_cpu": {"batch_size": 32, "timeout_ms": 5.0, "idle_s": 2.0},
    "aio_cancel10k": {"batch_size": 64, "timeout_ms": 5.0, "tasks": 10000},
    "aio_floor2000": {"batch_size": 64, "tasks": 2000, "rounds": 10},
}
QUICK: dict[str, dict[str, Any]] = {
    "threads32": {"seconds": 0.5},
    "threads32_t1": {"seconds": 0.5},
    "idle_latency0": {"calls": 60},
    "idle_latency5": {"calls": 60},
    "idle_cpu": {"idle_s": 0.5},
    "idle_cpu0": {"idle_s": 0.5},
    "import_time": {"runs": 3},
    "aio_tasks2000": {"rounds": 3},
    "acall_tasks2000": {"rounds": 3},
    "aio_idle_latency0": {"calls": 60},
    "aio_idle_cpu": {"idle_s": 0.5},
    "aio_floor2000": {"rounds": 3},
}


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank-interpolated percentile (q in 0..100) without numpy."""
    s = sorted(values)
    if not s:
        return float("nan")
    pos = (len(s) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


_largest_batch = [0]
_processors: list[Any] = []  # shut down after the result is printed, so a hang there cannot hide it


def _checked_identity(items: list[int]) -> list[int]:
    """The identity batch function; remembers the largest batch it saw."""
    if len(items) > _largest_batch[0]:
        _largest_batch[0] = len(items)
    return list(items)


def _identity(cfg: dict[str, Any]) -> Any:
    import batched

    def identity(items: list[int]) -> list[int]:
        return _checked_identity(items)

    f = batched.dynamically(batch_size=int(cfg["batch_size"]), timeout_ms=float(cfg["timeout_ms"]))(identity)
    _processors.append(f)
    return f


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


def w_threads32(cfg: dict, out: dict) -> None:
    f = _identity(cfg)
    nthreads, seconds = int(cfg["threads"]), float(cfg["seconds"])
    f(0)
    barrier = threading.Barrier(nthreads + 1)
    lats: list[list[float]] = [[] for _ in range(nthreads)]
    mismatches = [0] * nthreads
    errors: list[str] = []
    deadline = 0.0

    def worker(tid: int) -> None:
        mine, clock, i = lats[tid], time.perf_counter, 0
        barrier.wait()
        try:
            while clock() < deadline:
                x = (tid << 32) | i
                t0 = clock()
                r = f(x)
                mine.append(clock() - t0)
                if r != x:
                    mismatches[tid] += 1
                i += 1
        except BaseException as exc:  # noqa: BLE001
            errors.append(f"thread {tid}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(nthreads)]
    for t in threads:
        t.start()
    before = f.stats
    deadline = time.perf_counter() + seconds
    start = time.perf_counter()
    barrier.wait()
    for t in threads:
        t.join(seconds + 60)
        if t.is_alive():
            errors.append("a client thread did not finish within 60 s of the deadline (hang?)")
            break
    elapsed = time.perf_counter() - start
    after = f.stats
    all_lats = [x for per in lats for x in per]
    calls = len(all_lats)
    batches = after.total_batches - before.total_batches
    m = out["metrics"]
    m["items_per_s"] = calls / elapsed
    m["p50_us"] = percentile(all_lats, 50) * 1e6
    m["p99_us"] = percentile(all_lats, 99) * 1e6
    m["avg_batch"] = (after.total_processed - before.total_processed) / batches if batches else 0.0
    out["info"]["calls"] = calls
    out["errors"].extend(errors)
    if sum(mismatches):
        out["errors"].append(f"threads32: {sum(mismatches)} of {calls} calls returned another caller's result")
    if calls == 0:
        out["errors"].append("threads32: no call completed")


w_threads32_t1 = w_threads32


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


w_idle_latency0 = _idle_latency
w_idle_latency5 = _idle_latency


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


w_idle_cpu = _idle_cpu
w_idle_cpu0 = _idle_cpu


_IMPORT_PROBE = (
    "import time, sys\n"
    "t0 = time.perf_counter()\n"
    "import batched\n"
    "dt = time.perf_counter() - t0\n"
    "print(repr((dt, 'numpy' in sys.modules, 'torch' in sys.modules)))\n"
)


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


# ---------------------------------------------------------------- asyncio workloads


def _aio_identity(cfg: dict[str, Any]) -> Any:
    """An async identity batch function under batched.aio (both versions have it)."""
    from batched import aio

    async def identity(items: list[int]) -> list[int]:
        return _checked_identity(items)

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

    async def main() -> float:
        await asyncio.gather(*(one(i) for i in range(64)))  # warm-up
        lats.clear()
        t0 = time.perf_counter()
        for r in range(rounds):
            await asyncio.gather(*(one(r * tasks + i) for i in range(tasks)))
        return time.perf_counter() - t0

    elapsed = asyncio.run(main())
    out["metrics"]["items_per_s"] = tasks * rounds / elapsed
    out["metrics"]["p50_us"] = percentile(lats, 50) * 1e6
    out["metrics"]["p99_us"] = percentile(lats, 99) * 1e6
    if bad[0]:
        out["errors"].append(f"{bad[0]} awaits returned another task's result")


def w_aio_tasks2000(cfg: dict, out: dict) -> None:
    _concurrent_tasks(_aio_identity(cfg), cfg, out)


def w_acall_tasks2000(cfg: dict, out: dict) -> None:
    f = _identity(cfg)
    _concurrent_tasks(f.acall, cfg, out)


def w_aio_floor2000(cfg: dict, out: dict) -> None:
    """No batcher at all: the aio_tasks2000 load, with each group of 64 futures
    resolved by one plain loop callback. What asyncio itself costs here is the
    ceiling for any asyncio batcher on this machine."""
    import asyncio

    tasks, rounds, size = int(cfg["tasks"]), int(cfg["rounds"]), int(cfg["batch_size"])

    async def main() -> float:
        loop = asyncio.get_running_loop()
        pending: list[tuple[asyncio.Future, int]] = []

        def resolve() -> None:
            group = pending[:size]
            del pending[:size]
            for fut, i in group:
                fut.set_result(i)
            if pending:
                loop.call_soon(resolve)

        async def one(i: int) -> int:
            fut = loop.create_future()
            pending.append((fut, i))
            if len(pending) == 1:
                loop.call_soon(resolve)
            return await fut

        t0 = time.perf_counter()
        for r in range(rounds):
            got = await asyncio.gather(*(one(i) for i in range(tasks)))
            if got != list(range(tasks)):
                out["errors"].append("floor: wrong results")
        return time.perf_counter() - t0

    out["metrics"]["items_per_s"] = tasks * rounds / asyncio.run(main())


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


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("workload", choices=sorted(CONFIG))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--hang-dump-s", type=float, default=0, help="dump all thread stacks to stderr after N s")
    args = ap.parse_args()
    if args.hang_dump_s > 0:
        faulthandler.dump_traceback_later(args.hang_dump_s, exit=False)
    cfg = dict(CONFIG[args.workload])
    if args.quick:
        cfg.update(QUICK.get(args.workload, {}))
    out: dict = {"workload": args.workload, "config": cfg, "metrics": {}, "errors": [], "info": {}}
    try:
        globals()["w_" + args.workload](cfg, out)
    except BaseException as exc:  # noqa: BLE001
        import traceback

        out["errors"].append(f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-3000:]}")
    if "batch_size" in cfg and _largest_batch[0] > int(cfg["batch_size"]):
        out["errors"].append(f"a batch of {_largest_batch[0]} items exceeded batch_size={cfg['batch_size']}")
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

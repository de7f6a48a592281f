"""One batcher for many processes (batched.serve / batched.connect), measured
side by side with the same work in one process, in one run:

  roundtrip   one item, a client process and a server process, nothing else
              running; timeout_ms=0. Beside it: the same processor called in
              its own process, and a multiprocessing.Pipe round trip between
              two processes (what a hand-made model process costs).
  throughput  4 client processes x 500 asyncio tasks awaiting one item each
              (10 rounds), one server with an async identity function
              (batch_size=64, timeout_ms=5), against 2,000 tasks in one
              process on the same processor.
  http        FastAPI behind uvicorn with a modeled GPU (it sleeps: the model
              process needs little CPU), Poisson arrivals stepped up to
              saturation: `uvicorn --workers 2` feeding one model process
              through batched.connect, against one worker with the processor
              in it, and against two workers with a processor each sharing
              the one device (batches fragment).

    python benchmarks/ipc.py [--only roundtrip,throughput,http] [--repeats 3] [--quick]

Prints a table per part (medians over the repeats, which interleave the
systems) and writes every figure to benchmarks/results/ipc-latest.json.
The helpers of each part run this file again: `ipc.py _serve ...`,
`ipc.py _client ...`, `ipc.py _app` (the uvicorn app).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "ipc-latest.json"
PY = sys.executable

# The modeled GPU of the http part: a batch of n costs LAUNCH_MS + n * PER_ITEM_MS,
# one batch at a time, the GIL released (time.sleep).
LAUNCH_MS, PER_ITEM_MS, BATCH, TIMEOUT_MS = 4.0, 0.02, 64, 5.0


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q / 100 * len(s)))] if s else float("nan")


def run_dir() -> str:
    d = tempfile.mkdtemp(prefix="batched-bench-")
    os.chmod(d, 0o700)
    return d


# ---------------------------------------------------------------- helper processes


def serve_main(kind: str, name: str) -> None:
    """`ipc.py _serve KIND NAME`: a model process."""
    import batched
    from batched import aio

    if kind == "sync-identity":  # roundtrip
        @batched.dynamically(batch_size=64, timeout_ms=0)
        def served(items: list[Any]) -> list[Any]:
            return items
    elif kind == "async-identity":  # throughput
        @aio.dynamically(batch_size=64, timeout_ms=5)
        async def served(items: list[Any]) -> list[Any]:
            return items
    elif kind == "device":  # http
        served = batched.dynamically(batch_size=BATCH, timeout_ms=TIMEOUT_MS)(device_run)
    else:
        raise SystemExit(f"unknown kind {kind}")
    batched.serve(served, name)


def device_run(items: list[int]) -> list[int]:
    """The modeled GPU: one batch at a time across processes (a file lock),
    its size logged to $BENCH_BATCH_LOG."""
    import fcntl

    lock = _device_lock()
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        time.sleep((LAUNCH_MS + PER_ITEM_MS * len(items)) / 1e3)
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
    log = os.environ.get("BENCH_BATCH_LOG")
    if log:
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.write(fd, b"%d\n" % len(items))
        os.close(fd)
    return [2 * x + 1 for x in items]


_lock_fd: int | None = None


def _device_lock() -> int:
    global _lock_fd
    if _lock_fd is None:
        _lock_fd = os.open(os.environ.get("BENCH_DEVICE_LOCK", "/tmp/batched-bench-device.lock"),
                           os.O_RDWR | os.O_CREAT, 0o600)
    return _lock_fd


def lone_calls(proc: Any, n: int) -> dict[str, float]:
    """p50/p99 of `n` lone calls of one item, one after the other: blocking,
    then awaited (`acall`), after 500 of warm-up."""
    for i in range(500):
        proc(i)
    lat = []
    for i in range(n):
        t = time.perf_counter_ns()
        proc(i)
        lat.append((time.perf_counter_ns() - t) / 1e3)

    async def awaited() -> list[float]:
        out = []
        for i in range(n):
            t = time.perf_counter_ns()
            await proc.acall(i)
            out.append((time.perf_counter_ns() - t) / 1e3)
        return out

    alat = asyncio.run(awaited())
    return {"p50_us": pct(lat, 50), "p99_us": pct(lat, 99), "acall_p50_us": pct(alat, 50),
            "acall_p99_us": pct(alat, 99)}


def concurrent_tasks(call: Any, tasks: int, rounds: int, start_at: float | None = None) -> dict[str, float]:
    """`tasks` concurrent tasks each awaiting one item, `rounds` times (as
    benchmarks/_workloads.py's aio_tasks2000)."""
    bad = [0]

    async def one(i: int) -> None:
        bad[0] += await call(i) != i

    async def main() -> tuple[float, float]:
        await asyncio.gather(*(one(i) for i in range(64)))  # warm-up
        if start_at is not None:
            await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        t0 = time.monotonic()
        for r in range(rounds):
            await asyncio.gather(*(one(r * tasks + i) for i in range(tasks)))
        return t0, time.monotonic()

    t0, t1 = asyncio.run(main())
    if bad[0]:
        raise SystemExit(f"{bad[0]} awaits returned another task's result")
    return {"start": t0, "end": t1, "items": tasks * rounds}


def client_main(argv: list[str]) -> None:
    """`ipc.py _client PART ...`: prints one JSON line."""
    part = argv[0]
    if part == "roundtrip":
        import batched

        print(json.dumps(lone_calls(batched.connect(argv[1], timeout=30), int(argv[2]))))
    elif part == "throughput":
        import batched

        c = batched.connect(argv[1], timeout=30)
        print(json.dumps(concurrent_tasks(c, int(argv[2]), int(argv[3]), float(argv[4]))))


# ---------------------------------------------------------------- part 1: round trip


def _pipe_echo(conn: Any) -> None:
    while True:
        x = conn.recv()
        if x is None:
            return
        conn.send(x)


def pipe_roundtrip(n: int) -> dict[str, float]:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    a, b = ctx.Pipe()
    p = ctx.Process(target=_pipe_echo, args=(b,))
    p.start()
    for i in range(500):
        a.send(i)
        a.recv()
    lat = []
    for i in range(n):
        t = time.perf_counter_ns()
        a.send(i)
        a.recv()
        lat.append((time.perf_counter_ns() - t) / 1e3)
    a.send(None)
    p.join()
    return {"p50_us": pct(lat, 50), "p99_us": pct(lat, 99)}


def in_process_roundtrip(n: int) -> dict[str, float]:
    import batched

    @batched.dynamically(batch_size=64, timeout_ms=0)
    def identity(items: list[Any]) -> list[Any]:
        return items

    out = lone_calls(identity, n)
    identity.shutdown()
    return out


def stop(proc: subprocess.Popen[Any], sig: int) -> None:
    """Stops a helper process with ``sig`` (it cleans up), killing it after 30 s."""
    proc.send_signal(sig)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Served:
    """A model process (`ipc.py _serve KIND NAME`) in its own run directory
    (`prefix`: a command to run it under, such as taskset)."""

    def __init__(self, kind: str, name: str, env: dict[str, str], prefix: tuple[str, ...] = ()) -> None:
        self.proc = subprocess.Popen([*prefix, PY, __file__, "_serve", kind, name], env=env)

    def stop(self) -> None:
        stop(self.proc, signal.SIGTERM)


def part_roundtrip(repeats: int, quick: bool) -> dict[str, Any]:
    n = 2000 if quick else 10000
    # "one CPU": both processes pinned to CPU 0, where a hand-off between
    # threads needs no CPU to wake up: what the path costs in CPU work alone.
    placements = {"cross-process": ()}
    if shutil.which("taskset"):
        placements["cross-process, both on one CPU"] = ("taskset", "-c", "0")
    runs: dict[str, list[dict[str, float]]] = {**{k: [] for k in placements}, "in-process": [], "mp.Pipe": []}
    env = dict(os.environ, BATCHED_RUN_DIR=run_dir())
    for r in range(repeats):
        for label, prefix in placements.items():
            server = Served("sync-identity", "rt", env, prefix)
            try:
                out = subprocess.run([*prefix, PY, __file__, "_client", "roundtrip", "rt", str(n)], env=env,
                                     check=True, capture_output=True, text=True, timeout=300).stdout
                runs[label].append(json.loads(out.strip().splitlines()[-1]))
            finally:
                server.stop()
        runs["in-process"].append(in_process_roundtrip(n))
        runs["mp.Pipe"].append(pipe_roundtrip(n))
        print(f"  roundtrip repeat {r + 1}/{repeats}: " + ", ".join(
            f"{k} p50 {v[-1]['p50_us']:.1f} us" for k, v in runs.items()), flush=True)
    med = {k: {m: statistics.median(x[m] for x in v) for m in v[0]} for k, v in runs.items()}
    return {"runs": runs, "median": med}


# ---------------------------------------------------------------- part 2: throughput


def part_throughput(repeats: int, quick: bool) -> dict[str, Any]:
    rounds = 3 if quick else 10
    runs: dict[str, list[dict[str, float]]] = {"4 processes x 500 tasks": [], "1 process x 2000 tasks": []}
    env = dict(os.environ, BATCHED_RUN_DIR=run_dir())
    for r in range(repeats):
        server = Served("async-identity", "tp", env)
        try:
            import batched

            os.environ["BATCHED_RUN_DIR"] = env["BATCHED_RUN_DIR"]
            stats_client = batched.connect("tp", timeout=30)
            start_at = time.monotonic() + 3.0  # every client warmed up and waiting
            clients = [subprocess.Popen([PY, __file__, "_client", "throughput", "tp", "500", str(rounds),
                                         str(start_at)], env=env, stdout=subprocess.PIPE, text=True)
                       for _ in range(4)]
            before = stats_client.stats
            outs = [json.loads(c.communicate(timeout=600)[0].strip().splitlines()[-1]) for c in clients]
            after = stats_client.stats
            stats_client.close()
        finally:
            server.stop()
        items = sum(o["items"] for o in outs)
        elapsed = max(o["end"] for o in outs) - min(o["start"] for o in outs)
        batches = after.total_batches - before.total_batches
        runs["4 processes x 500 tasks"].append({
            "items_per_s": items / elapsed,
            "avg_batch": (after.total_processed - before.total_processed) / max(1, batches)})
        runs["1 process x 2000 tasks"].append(one_process_throughput(rounds))
        print(f"  throughput repeat {r + 1}/{repeats}: " + ", ".join(
            f"{k} {v[-1]['items_per_s']:,.0f} items/s (avg batch {v[-1]['avg_batch']:.1f})"
            for k, v in runs.items()), flush=True)
    med = {k: {m: statistics.median(x[m] for x in v) for m in v[0]} for k, v in runs.items()}
    return {"runs": runs, "median": med}


def one_process_throughput(rounds: int) -> dict[str, float]:
    """The same 2,000 tasks on the same processor, in a fresh process."""
    code = f"""
import json, sys
sys.path.insert(0, {str(HERE)!r})
from ipc import concurrent_tasks
from batched import aio
@aio.dynamically(batch_size=64, timeout_ms=5)
async def identity(items):
    return items
out = concurrent_tasks(identity, 2000, {rounds})
s = identity.stats
out["avg_batch"] = s.avg_batch_size
print(json.dumps(out))
"""
    out = json.loads(subprocess.run([PY, "-c", code], check=True, capture_output=True, text=True,
                                    timeout=600).stdout.strip().splitlines()[-1])
    return {"items_per_s": out["items"] / (out["end"] - out["start"]), "avg_batch": out["avg_batch"]}


# ---------------------------------------------------------------- part 3: HTTP


def app_factory() -> Any:
    """The uvicorn app (`ipc.py _app` runs uvicorn on it): GET /infer?x=N -> {"y": 2N+1}.
    $BENCH_MODE: "local" (the processor in this worker) or "remote" (a client of
    the model process $BENCH_SERVER)."""
    from fastapi import FastAPI

    mode = os.environ["BENCH_MODE"]
    if mode == "remote":
        import batched

        model = batched.connect(os.environ["BENCH_SERVER"], timeout=60)
        call = model.acall
    else:
        from batched import aio

        call = aio.dynamically(batch_size=BATCH, timeout_ms=TIMEOUT_MS)(device_run)
    app = FastAPI()

    @app.get("/infer")
    async def infer(x: int) -> dict[str, int]:
        return {"y": await call(x)}

    return app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class App:
    """uvicorn with `workers` workers on this file's app, in `mode`."""

    def __init__(self, mode: str, workers: int, env: dict[str, str]) -> None:
        self.port = free_port()
        env = dict(env, BENCH_MODE=mode, PYTHONPATH=str(HERE) + os.pathsep + env.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen(
            [PY, "-m", "uvicorn", "ipc:app_factory", "--factory", "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", str(workers), "--log-level", "warning", "--no-access-log"], env=env)
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"GET /infer?x=1 HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
                    if b"200 OK" in s.recv(4096):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"uvicorn ({mode}, {workers} workers) did not start")
            time.sleep(0.2)

    def stop(self) -> None:
        stop(self.proc, signal.SIGINT)


MAX_CONNECTIONS = 1024  # requests in flight at most; more wait here (their latency counts from arrival)


async def _request(pool: list[Any], port: int, x: int) -> None:
    if pool:
        reader, writer = pool.pop()
    else:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /infer?x=%d HTTP/1.1\r\nHost: b\r\n\r\n" % x)
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    body = await reader.readexactly(length)
    if not head.startswith(b"HTTP/1.1 200") or json.loads(body)["y"] != 2 * x + 1:
        raise RuntimeError(f"wrong answer for {x}: {head[:40]!r} {body[:60]!r}")
    pool.append((reader, writer))


def open_loop(port: int, rate: float, seconds: float, seed: int) -> dict[str, float]:
    """Poisson arrivals at `rate`/s for `seconds` (after 1 s of warm-up at the
    same rate): p50/p99 latency of the measured window, answered/s, errors."""

    async def main() -> dict[str, float]:
        rng = random.Random(seed)
        in_flight = asyncio.Semaphore(MAX_CONNECTIONS)
        pool: list[Any] = []
        lat: list[float] = []
        errors = [0]
        tasks = set()
        warm = 1.0
        t0 = time.monotonic()
        t = 0.0
        x = 0

        async def one(x: int, at: float, measured: bool) -> None:
            try:
                async with in_flight:
                    await _request(pool, port, x)
            except Exception:
                errors[0] += 1
                return
            if measured:
                lat.append(time.monotonic() - at)

        while t < warm + seconds:
            t += rng.expovariate(rate)
            delay = t0 + t - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            x += 1
            task = asyncio.ensure_future(one(x, t0 + t, t >= warm))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        end_offered = time.monotonic()
        if tasks:
            await asyncio.wait(tasks, timeout=30)
        done_at = time.monotonic()
        for _, w in pool:
            w.close()
        return {"offered": rate, "answered_per_s": len(lat) / max(seconds, done_at - t0 - warm),
                "p50_ms": pct(lat, 50) * 1e3, "p99_ms": pct(lat, 99) * 1e3, "errors": errors[0],
                "late_s": done_at - end_offered}

    return asyncio.run(main())


HTTP_RATES = [500, 1000, 2000, 3000, 4000, 5000, 6000, 7000, 8000, 9000, 10000]


def part_http(repeats: int, quick: bool, rates: list[int] = HTTP_RATES) -> dict[str, Any]:
    rates = rates[:4] if quick else rates
    seconds = 2.0 if quick else 4.0
    systems = [("2 workers + model process", "remote", 2), ("1 worker, processor in it", "local", 1),
               ("2 workers, a processor each", "local", 2)]
    runs: dict[str, list[list[dict[str, float]]]] = {s[0]: [] for s in systems}
    for r in range(repeats):
        for label, mode, workers in systems:
            d = run_dir()
            env = dict(os.environ, BATCHED_RUN_DIR=d, BENCH_SERVER="bench-device",
                       BENCH_DEVICE_LOCK=os.path.join(d, "device.lock"), BENCH_BATCH_LOG=os.path.join(d, "sizes"))
            server = Served("device", "bench-device", env) if mode == "remote" else None
            app = App(mode, workers, env)
            steps = []
            try:
                for k, rate in enumerate(rates):
                    log = Path(env["BENCH_BATCH_LOG"])
                    seen = len(log.read_text().split()) if log.exists() else 0
                    step = open_loop(app.port, rate, seconds, seed=1000 * r + k)
                    sizes = [int(s) for s in log.read_text().split()[seen:]] if log.exists() else []
                    step["avg_batch"] = statistics.mean(sizes) if sizes else 0.0
                    steps.append(step)
                    print(f"  http {label} repeat {r + 1}: {rate}/s -> {step['answered_per_s']:,.0f}/s, "
                          f"p50 {step['p50_ms']:.1f} ms, p99 {step['p99_ms']:.1f} ms, "
                          f"avg batch {step['avg_batch']:.1f}, errors {step['errors']}", flush=True)
                    if step["answered_per_s"] < 0.8 * rate:
                        break  # saturated: higher rates only queue
            finally:
                app.stop()
                if server is not None:
                    server.stop()
            runs[label].append(steps)
    summary = {}
    for label, reps in runs.items():
        by_rate: dict[float, list[dict[str, float]]] = {}
        for steps in reps:
            for s in steps:
                by_rate.setdefault(s["offered"], []).append(s)
        summary[label] = {
            "saturation_per_s": statistics.median(max(s["answered_per_s"] for s in steps) for steps in reps),
            "by_rate": {str(int(rate)): {m: statistics.median(s[m] for s in ss) for m in ss[0]}
                        for rate, ss in sorted(by_rate.items()) if len(ss) == len(reps)},
        }
    return {"runs": runs, "summary": summary, "device": {"launch_ms": LAUNCH_MS, "per_item_ms": PER_ITEM_MS,
                                                         "batch_size": BATCH, "timeout_ms": TIMEOUT_MS}}


# ---------------------------------------------------------------- report


def report(results: dict[str, Any]) -> None:
    if "roundtrip" in results:
        med = results["roundtrip"]["median"]
        print("\n## Round trip of one item at idle (timeout_ms=0), medians of repeats")
        print("| path | p50 | p99 | acall p50 | acall p99 |\n|---|---|---|---|---|")
        for k, v in med.items():
            print(f"| {k} | {v['p50_us']:.1f} µs | {v['p99_us']:.1f} µs | "
                  f"{v.get('acall_p50_us', float('nan')):.1f} µs | {v.get('acall_p99_us', float('nan')):.1f} µs |")
    if "throughput" in results:
        med = results["throughput"]["median"]
        a, b = med["4 processes x 500 tasks"], med["1 process x 2000 tasks"]
        print("\n## 2,000 tasks awaiting one item each, async identity (batch_size=64, timeout_ms=5)")
        print("| load | items/s | avg batch |\n|---|---|---|")
        for k, v in med.items():
            print(f"| {k} | {v['items_per_s']:,.0f} | {v['avg_batch']:.1f} |")
        print(f"ratio cross-process / one process: {a['items_per_s'] / b['items_per_s']:.2f}x (target >= 0.7x)")
    if "http" in results:
        s = results["http"]["summary"]
        print(f"\n## HTTP, modeled GPU ({LAUNCH_MS:g} ms + {PER_ITEM_MS:g} ms/item, batch_size={BATCH}), "
              "Poisson arrivals")
        rates = sorted({int(r) for v in s.values() for r in v["by_rate"]})
        print("| system | saturation | " + " | ".join(f"{r}/s p99 (avg batch)" for r in rates) + " |")
        print("|---|---|" + "---|" * len(rates))
        for label, v in s.items():
            cells = []
            for r in rates:
                st = v["by_rate"].get(str(r))
                cells.append(f"{st['p99_ms']:.1f} ms ({st['avg_batch']:.1f})" if st else "-")
            print(f"| {label} | {v['saturation_per_s']:,.0f}/s | " + " | ".join(cells) + " |")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_serve":
        serve_main(sys.argv[2], sys.argv[3])
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "_client":
        client_main(sys.argv[2:])
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default="roundtrip,throughput,http")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rates", default=",".join(map(str, HTTP_RATES)), help="offered loads of the http part (req/s)")
    args = p.parse_args()
    rates = [int(r) for r in args.rates.split(",")]
    parts = {"roundtrip": part_roundtrip, "throughput": part_throughput,
             "http": lambda repeats, quick: part_http(repeats, quick, rates)}
    results: dict[str, Any] = {"when": time.strftime("%Y-%m-%d %H:%M"), "cpus": os.cpu_count(),
                               "spin_us": os.environ.get("BATCHED_IPC_SPIN_US", "default")}
    for name in args.only.split(","):
        print(f"== {name}", flush=True)
        results[name] = parts[name](args.repeats, args.quick)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1))
    report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

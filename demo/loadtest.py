"""Load generator for the demo service: concurrent HTTP clients on loopback.

    python demo/loadtest.py --mode {batched,none} --clients 64 --seconds 10 \
        [--warmup-s 2] [--batch-size 64] [--timeout-ms 10] --json out.json

Starts the service (demo/app.py) as a uvicorn subprocess with this interpreter
and environment, on a socket bound here to a free loopback port; waits until
its model is loaded; runs ``--clients`` closed-loop clients for ``--warmup-s``
then ``--seconds`` (only the second window is measured); stops the server;
writes the figures as JSON. Exits non-zero on any error or wrong answer.

The clients are cheap: one process, one asyncio loop, one keep-alive HTTP/1.1
connection per client written and read with raw asyncio streams (no client
library), so nearly all of the 2 cores go to the server.

Every client sends distinct texts from a fixed pool (at any moment no two
clients send the same text), and a sample of the answers (every
``--check-every``-th response) is compared with the model run here on that
text alone: cosine similarity must be >= 0.999, so a caller that got another
caller's embedding (or a corrupted one) is caught.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `demo` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from demo.encoders import cosine, load_encoder, sample_texts

APP = Path(__file__).resolve().parent / "app.py"
HOST = "127.0.0.1"
MIN_COSINE = 0.999


# ---------------------------------------------------------------- the server


class Server:
    """The demo app in a uvicorn subprocess on a free loopback port.

    The listening socket is bound here and handed to uvicorn (``--fd``), so
    the port cannot be taken by anyone else in between.
    """

    def __init__(self, mode: str, *, batch_size: int = 64, timeout_ms: float = 10.0, model: str = "auto",
                 extra_args: list[str] | None = None, env: dict[str, str] | None = None) -> None:
        self.mode = mode
        self.args = ["--mode", mode, "--batch-size", str(batch_size), "--timeout-ms", str(timeout_ms),
                     "--model", model, *(extra_args or [])]
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.info: dict[str, Any] = {}

    def start(self) -> Server:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((HOST, 0))
        sock.listen(2048)
        self.port = sock.getsockname()[1]
        fd = sock.fileno()
        os.set_inheritable(fd, True)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, str(APP), *self.args, "--fd", str(fd)],
                pass_fds=(fd,),
                env=self.env,
            )
        finally:
            sock.close()  # the child has its own copy
        return self

    def wait_ready(self, timeout: float = 300.0) -> dict[str, Any]:
        """Blocks until GET /health answers (the model is loaded and warm)."""
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"the demo server exited with status {self.proc.returncode} before it was ready")
            try:
                status, body = http_get(self.port, "/health", timeout=2.0)
                if status == 200:
                    self.info = json.loads(body)
                    return self.info
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the demo server was not ready after {timeout:.0f} s")
            time.sleep(0.1)

    def cpu_seconds(self) -> float | None:
        """User + system CPU time of the server process so far (Linux), else None."""
        try:
            assert self.proc is not None
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError, AssertionError):
            return None

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(15)

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """A blocking one-shot GET (set-up only, never during the load)."""
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


# ---------------------------------------------------------------- the clients


class Connection:
    """One keep-alive HTTP/1.1 connection over asyncio streams."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(HOST, self.port)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        if self.writer is None:
            await self.open()
        assert self.reader is not None and self.writer is not None
        head = (f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        self.writer.write(head + body)
        raw = await self.reader.readuntil(b"\r\n\r\n")
        status = int(raw[9:12])
        length = None
        for line in raw.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
                break
        if length is None:
            raise RuntimeError("response without Content-Length")
        return status, await self.reader.readexactly(length)


async def run_load(port: int, texts: list[str], *, clients: int, seconds: float, warmup_s: float = 0.0,
                   check_every: int = 8, server: Server | None = None) -> dict[str, Any]:
    """``clients`` closed-loop clients for ``warmup_s + seconds``; the second window is measured.

    Returns counts, latencies (ms, of the requests completed in the window),
    the batch statistics over the window when the server batches, and
    ``samples``: (text index, response body) of every ``check_every``-th answer.
    """
    loop = asyncio.get_running_loop()
    conns = [Connection(port) for _ in range(clients)]
    await asyncio.gather(*(c.open() for c in conns))
    bodies = [json.dumps({"text": t}).encode() for t in texts]
    n_texts = len(texts)

    t_start = loop.time()
    t_measure = t_start + warmup_s
    t_end = t_measure + seconds
    done: list[list[float]] = [[] for _ in range(clients)]  # (start, end) pairs, flattened
    samples: list[tuple[int, bytes]] = []
    errors: list[str] = []

    async def client(c: int) -> None:
        conn = conns[c]
        rec = done[c]
        i = 0
        while True:
            t0 = loop.time()
            if t0 >= t_end:
                break
            k = (c + i * clients) % n_texts
            i += 1
            try:
                status, body = await conn.request("POST", "/embed", bodies[k])
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, RuntimeError, ValueError) as exc:
                errors.append(f"client {c}: {type(exc).__name__}: {exc}")
                conn.close()
                await asyncio.sleep(0.01)
                continue
            t1 = loop.time()
            if status != 200:
                errors.append(f"client {c}: HTTP {status}: {body[:200]!r}")
                continue
            rec.append(t0)
            rec.append(t1)
            if i % check_every == 1 or check_every == 1:
                samples.append((k, body))

    cpu_self0 = time.process_time()
    stats_task = asyncio.ensure_future(_window_stats(port, t_measure, t_end, server))
    await asyncio.gather(*(client(c) for c in range(clients)))
    before, after, cpu0, cpu1 = await stats_task
    cpu_self = time.process_time() - cpu_self0
    for c in conns:
        c.close()

    lat_ms: list[float] = []
    for rec in done:
        for j in range(0, len(rec), 2):
            if t_measure <= rec[j + 1] <= t_end:
                lat_ms.append((rec[j + 1] - rec[j]) * 1e3)
    lat = np.array(lat_ms) if lat_ms else np.array([np.nan])
    result: dict[str, Any] = {
        "clients": clients,
        "requests": len(lat_ms),
        "seconds": seconds,
        "warmup_s": warmup_s,
        "throughput_rps": len(lat_ms) / seconds,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "mean_ms": float(lat.mean()),
        "errors": len(errors),
        "error_examples": errors[:5],
        "avg_batch_size": None,
        "batches": None,
        "server_cpu_s_per_s": (cpu1 - cpu0) / seconds if cpu0 is not None and cpu1 is not None else None,
        "loadgen_cpu_s_per_s": cpu_self / (warmup_s + seconds),
        "samples": samples,
    }
    s0, s1 = (before or {}).get("stats"), (after or {}).get("stats")
    if s0 and s1:
        batches = s1["total_batches"] - s0["total_batches"]
        items = s1["total_processed"] - s0["total_processed"]
        result["batches"] = batches
        result["avg_batch_size"] = items / batches if batches else None
    return result


async def run_open_loop(port: int, texts: list[str], *, rate: float, seconds: float, warmup_s: float = 0.0,
                        check_every: int = 8, seed: int = 0, server: Server | None = None,
                        max_in_flight: int = 512) -> dict[str, Any]:
    """Poisson arrivals at ``rate`` requests/s for ``warmup_s + seconds``
    (open loop: a request is sent at its arrival time whether or not earlier
    ones were answered, on a free keep-alive connection or a new one, at most
    ``max_in_flight`` at once). Latency counts from the scheduled arrival, so
    a request that waited for a connection pays for it. Requests that arrive
    in the measured window count; after it, stragglers get ``seconds`` more
    to finish (the rest count as unanswered). Returns what run_load returns,
    with ``rate`` and ``unanswered`` instead of ``clients``."""
    import random

    loop = asyncio.get_running_loop()
    rng = random.Random(seed)
    bodies = [json.dumps({"text": t}).encode() for t in texts]
    idle: list[Connection] = []
    slots = asyncio.Semaphore(max_in_flight)
    lat_ms: list[float] = []
    samples: list[tuple[int, bytes]] = []
    errors: list[str] = []
    t0 = loop.time()
    t_measure, t_end = t0 + warmup_s, t0 + warmup_s + seconds

    async def one(i: int, at: float) -> None:
        k = i % len(texts)
        async with slots:
            reused = bool(idle)
            conn = idle.pop() if reused else Connection(port)
            try:
                try:
                    status, body = await conn.request("POST", "/embed", bodies[k])
                except (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError):
                    if not reused:
                        raise
                    # an idle keep-alive connection the server closed (uvicorn: after 5 s): once more on a new one
                    conn.close()
                    status, body = await conn.request("POST", "/embed", bodies[k])
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, RuntimeError, ValueError) as exc:
                errors.append(f"request {i}: {type(exc).__name__}: {exc}")
                conn.close()
                return
            idle.append(conn)
        if status != 200:
            errors.append(f"request {i}: HTTP {status}: {body[:200]!r}")
            return
        if at >= t_measure:
            lat_ms.append((loop.time() - at) * 1e3)
            if i % check_every == 0:
                samples.append((k, body))

    stats_task = asyncio.ensure_future(_window_stats(port, t_measure, t_end, server))
    tasks = []
    i, at = 0, t0 + rng.expovariate(rate)
    while at < t_end:
        await asyncio.sleep(max(0.0, at - loop.time()))
        tasks.append(asyncio.ensure_future(one(i, at)))
        i += 1
        at += rng.expovariate(rate)
    before, after, cpu0, cpu1 = await stats_task
    done, pending = await asyncio.wait(tasks, timeout=seconds) if tasks else (set(), set())
    for t in pending:
        t.cancel()
    for c in idle:
        c.close()
    offered = len(tasks)
    lat = np.array(lat_ms) if lat_ms else np.array([np.nan])
    result: dict[str, Any] = {
        "rate": rate, "requests": len(lat_ms), "offered": offered, "unanswered": len(pending),
        "seconds": seconds, "warmup_s": warmup_s,
        "throughput_rps": len(lat_ms) / seconds,
        "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
        "mean_ms": float(lat.mean()),
        "errors": len(errors), "error_examples": errors[:5],
        "avg_batch_size": None, "batches": None,
        "server_cpu_s_per_s": (cpu1 - cpu0) / seconds if cpu0 is not None and cpu1 is not None else None,
        "samples": samples,
    }
    s0, s1 = (before or {}).get("stats"), (after or {}).get("stats")
    if s0 and s1:
        batches = s1["total_batches"] - s0["total_batches"]
        result["batches"] = batches
        result["avg_batch_size"] = (s1["total_processed"] - s0["total_processed"]) / batches if batches else None
    return result


async def _window_stats(port: int, t_measure: float, t_end: float, server: Server | None) -> tuple[Any, ...]:
    """The server's stats and CPU time at the start and at the end of the measured window."""
    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, t_measure - loop.time()))
    before = await _get_stats(port)
    cpu0 = server.cpu_seconds() if server else None
    await asyncio.sleep(max(0.0, t_end - loop.time()))
    after = await _get_stats(port)
    cpu1 = server.cpu_seconds() if server else None
    return before, after, cpu0, cpu1


async def _get_stats(port: int) -> dict[str, Any] | None:
    # A fresh connection each time: an idle one would have hit uvicorn's keep-alive timeout.
    conn = Connection(port)
    try:
        status, body = await conn.request("GET", "/stats")
    except (OSError, asyncio.IncompleteReadError, RuntimeError):
        return None
    finally:
        conn.close()
    return json.loads(body) if status == 200 else None


# ---------------------------------------------------------------- checking


def reference_embeddings(encoder: Any, texts: list[str]) -> np.ndarray:
    """The model on each text alone (no batching, no padding): the truth."""
    try:  # keep the check from competing with a starting server for both cores
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    return np.concatenate([encoder.encode([t]) for t in texts])


def verify(samples: list[tuple[int, bytes]], refs: np.ndarray) -> dict[str, Any]:
    """Compares sampled answers with the references; counts mismatches."""
    if not samples:
        return {"verified": 0, "mismatches": 0, "min_cosine": None, "mismatch_examples": []}
    got = np.array([json.loads(body)["embedding"] for _, body in samples], dtype=np.float64)
    idx = np.array([k for k, _ in samples])
    if got.shape[1] != refs.shape[1]:
        return {"verified": len(samples), "mismatches": len(samples), "min_cosine": None,
                "mismatch_examples": [f"embedding dim {got.shape[1]}, expected {refs.shape[1]}"]}
    cos = cosine(got, refs[idx])
    bad = np.flatnonzero(~(cos >= MIN_COSINE))
    # For a mismatch, say whose embedding it was (another caller's text?).
    examples = []
    for j in bad[:5]:
        best = int(np.argmax(cosine(np.broadcast_to(got[j], refs.shape), refs)))
        examples.append(f"text {idx[j]}: cosine {cos[j]:.4f} with its own text; closest is text {best}")
    return {"verified": len(samples), "mismatches": int(bad.size), "min_cosine": float(np.min(cos)),
            "mismatch_examples": examples}


# ---------------------------------------------------------------- one run


def measure(server: Server, texts: list[str], refs: np.ndarray, *, clients: int, seconds: float,
            warmup_s: float, check_every: int = 8, rate: float | None = None, seed: int = 0) -> dict[str, Any]:
    """One load run against a ready server, its answers checked: ``clients``
    closed-loop clients, or with ``rate``, Poisson arrivals (open loop)."""
    if rate is not None:
        res = asyncio.run(run_open_loop(server.port, texts, rate=rate, seconds=seconds, warmup_s=warmup_s,
                                        check_every=check_every, seed=seed, server=server))
    else:
        res = asyncio.run(run_load(server.port, texts, clients=clients, seconds=seconds, warmup_s=warmup_s,
                                   check_every=check_every, server=server))
    res.update(verify(res.pop("samples"), refs))
    info = server.info
    res = {"mode": info.get("mode"), "model": info.get("model"), "batched_version": info.get("batched_version"),
           "batch_size": info.get("batch_size"), "timeout_ms": info.get("timeout_ms"), **res}
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python demo/loadtest.py", description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=("batched", "adaptive", "none"), required=True)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--rate", type=float, default=None,
                    help="open loop: Poisson arrivals at this many requests/s (instead of --clients)")
    ap.add_argument("--seed", type=int, default=0, help="of the arrival times (--rate)")
    ap.add_argument("--seconds", type=float, default=10.0, help="measured window (default 10)")
    ap.add_argument("--warmup-s", type=float, default=2.0, help="load before the window, not measured (default 2)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--timeout-ms", type=float, default=10.0)
    ap.add_argument("--model", choices=("auto", "real", "synthetic"), default="auto")
    ap.add_argument("--texts", type=int, default=128, help="size of the pool of distinct texts (default 128)")
    ap.add_argument("--check-every", type=int, default=8, help="check every n-th answer (default 8)")
    ap.add_argument("--server-arg", action="append", default=[], help="extra argument for demo/app.py")
    ap.add_argument("--json", type=Path, default=None, help="write the result here")
    args = ap.parse_args(argv)
    if args.clients < 1 or args.seconds <= 0 or args.warmup_s < 0:
        ap.error("need --clients >= 1, --seconds > 0, --warmup-s >= 0")

    texts = sample_texts(max(args.texts, args.clients))
    with Server(args.mode, batch_size=args.batch_size, timeout_ms=args.timeout_ms, model=args.model,
                extra_args=args.server_arg) as server:
        encoder = load_encoder(args.model, announce=False)  # while the server loads its copy
        refs = reference_embeddings(encoder, texts)
        info = server.wait_ready()
        if info.get("model") != encoder.name:
            print(f"error: the server runs {info.get('model')!r}, this process {encoder.name!r}", file=sys.stderr)
            return 2
        res = measure(server, texts, refs, clients=args.clients, seconds=args.seconds,
                      warmup_s=args.warmup_s, check_every=args.check_every, rate=args.rate, seed=args.seed)

    load = f"rate={args.rate:g}/s (unanswered {res['unanswered']})" if args.rate else f"clients={res['clients']}"
    line = (f"{res['mode']:>7} {res['model']} batched={res['batched_version']} {load}: "
            f"{res['throughput_rps']:.1f} req/s, p50 {res['p50_ms']:.1f} ms, p99 {res['p99_ms']:.1f} ms")
    if res["avg_batch_size"] is not None:
        line += f", avg batch {res['avg_batch_size']:.1f}"
    line += f"; {res['errors']} errors, {res['mismatches']}/{res['verified']} answers wrong"
    print(line)
    for msg in res["error_examples"] + res["mismatch_examples"]:
        print("  " + msg, file=sys.stderr)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    ok = res["errors"] == 0 and res["mismatches"] == 0 and res["verified"] > 0 and res["requests"] > 0
    # (an overloaded server leaving requests unanswered is a figure, not an error)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

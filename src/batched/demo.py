"""What dynamic batching buys: a small CPU model under concurrent single-item load.

    python -m batched.demo [--clients 32] [--seconds 3] [--batch-size 64] [--timeout-ms 2]

Many client threads each send one item at a time for a fixed duration, first
calling the model directly, then through ``@batched.dynamically``.  Every
result is checked against the model run on that item alone, so the demo also
proves that no caller ever receives another caller's row.  Needs numpy; BLAS
threads are numpy's default (set OPENBLAS_NUM_THREADS to change them).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

import batched


class TinyEncoder:
    """A residual MLP: ``layers`` blocks of layer-norm -> matmul -> tanh.

    Like a real model, each call pays a fixed cost (a few dozen numpy
    operations, run with the GIL held) plus matmuls whose cost grows slowly
    with the batch size, so 64 items cost only a few times more than one.
    """

    def __init__(self, dim: int = 384, layers: int = 6, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        scale = np.float32(1.0 / np.sqrt(dim))
        self.dim = dim
        self.weights = [rng.standard_normal((dim, dim), dtype=np.float32) * scale for _ in range(layers)]
        self.biases = [rng.standard_normal(dim, dtype=np.float32) * np.float32(0.1) for _ in range(layers)]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """(n, dim) float32 -> (n, dim) float32."""
        h = x
        for w, b in zip(self.weights, self.biases):
            normed = (h - h.mean(axis=1, keepdims=True)) / (h.std(axis=1, keepdims=True) + np.float32(1e-5))
            h = h + np.tanh(normed @ w + b)
        return h


@dataclass
class Run:
    mode: str
    items: int
    seconds: float
    latencies_ms: np.ndarray
    avg_batch: float
    mismatches: int


def drive(call: Callable[[np.ndarray], np.ndarray], inputs: np.ndarray, expected: np.ndarray,
          clients: int, seconds: float) -> tuple[int, float, np.ndarray, int]:
    """Run ``clients`` threads of single-item calls for ``seconds``; check every result."""
    pool = len(inputs)
    barrier = threading.Barrier(clients + 1)
    per_client: list[tuple[list[int], list[np.ndarray], list[float]]] = [([], [], []) for _ in range(clients)]
    errors: list[BaseException] = []
    deadline = 0.0

    def client(c: int) -> None:
        idxs, outs, lats = per_client[c]
        barrier.wait()
        i = 0
        try:
            while time.perf_counter() < deadline:
                k = (c + i * clients) % pool  # distinct items in flight across clients
                t0 = time.perf_counter()
                out = call(inputs[k])
                lats.append(time.perf_counter() - t0)
                idxs.append(k)
                outs.append(out)
                i += 1
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(clients)]
    for t in threads:
        t.start()
    deadline = time.perf_counter() + seconds  # set before releasing the barrier
    start = time.perf_counter()
    barrier.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{len(errors)} client call(s) failed") from errors[0]

    idxs = np.array([k for p in per_client for k in p[0]], dtype=np.int64)
    outs = np.stack([o for p in per_client for o in p[1]])
    lat_ms = np.array([x for p in per_client for x in p[2]]) * 1e3
    ok = np.isclose(outs, expected[idxs], rtol=1e-4, atol=1e-5).all(axis=1)
    return len(idxs), elapsed, lat_ms, int((~ok).sum())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m batched.demo", description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=32, help="concurrent client threads (default 32)")
    ap.add_argument("--seconds", type=float, default=3.0, help="duration of each mode (default 3)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--timeout-ms", type=float, default=2.0)
    args = ap.parse_args(argv)

    model = TinyEncoder()
    rng = np.random.default_rng(1)
    inputs = rng.standard_normal((512, model.dim), dtype=np.float32)
    expected = np.concatenate([model(inputs[k : k + 1]) for k in range(len(inputs))])  # unbatched truth

    def cost_ms(n: int, reps: int = 50) -> float:
        x = inputs[:n]
        model(x)
        t0 = time.perf_counter()
        for _ in range(reps):
            model(x)
        return (time.perf_counter() - t0) / reps * 1e3

    one, many = cost_ms(1), cost_ms(args.batch_size)
    print(f"model: {len(model.weights)} blocks x {model.dim}-dim, float32; one item {one:.2f} ms, "
          f"{args.batch_size} items {many:.2f} ms ({many / one:.1f}x the cost for {args.batch_size}x the work)")
    print(f"load: {args.clients} client threads, single-item calls, {args.seconds:g} s per mode\n")

    def direct(x: np.ndarray) -> np.ndarray:
        return model(x[None, :])[0]

    def batch_fn(items: list[np.ndarray]) -> list[np.ndarray]:
        return list(model(np.stack(items)))

    processor = batched.dynamically(batch_size=args.batch_size, timeout_ms=args.timeout_ms)(batch_fn)

    runs: list[Run] = []
    batched_mode = f"batched (batch_size={args.batch_size}, timeout_ms={args.timeout_ms:g})"
    for mode, call in (("direct", direct), (batched_mode, processor)):
        drive(call, inputs, expected, args.clients, min(0.3, args.seconds))  # warm-up
        before = processor.stats
        n, secs, lat, bad = drive(call, inputs, expected, args.clients, args.seconds)
        after = processor.stats
        batches = after.total_batches - before.total_batches
        avg = (after.total_processed - before.total_processed) / batches if batches else 1.0
        runs.append(Run(mode, n, secs, lat, avg, bad))
    processor.shutdown()

    header = f"{'mode':<40} {'items/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'avg batch':>10}"
    print(header)
    print("-" * len(header))
    for r in runs:
        p50, p99 = np.percentile(r.latencies_ms, [50, 99])
        print(f"{r.mode:<40} {r.items / r.seconds:>9,.0f} {p50:>8.2f} {p99:>8.2f} {r.avg_batch:>10.1f}")
    gain = (runs[1].items / runs[1].seconds) / (runs[0].items / runs[0].seconds)
    print(f"\nbatching bought {gain:.1f}x throughput")

    bad = sum(r.mismatches for r in runs)
    checked = sum(r.items for r in runs)
    if bad:
        print(f"ERROR: {bad} of {checked} results differ from the unbatched model", file=sys.stderr)
        return 1
    print(f"all {checked:,} results match the unbatched model (np.allclose)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

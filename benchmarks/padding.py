"""The padding step alone: our collate (batched._padding.RowsCollator) vs a plain memcpy of the same
bytes vs `batched` 0.1.5's stack_features, for numpy and CPU torch features.

    .venv/bin/python benchmarks/padding.py        # (PYTHONPATH=src if batched is not installed)

0.1.5 is timed in its own venv (benchmarks/.venvs/v0.1.5, made by benchmarks/compare.py; with torch
from benchmarks/.venvs/torch-2.13.0 for the torch rows) by running this script there with --ref.
The last column re-times our collate after telling glibc to keep freed memory (mallopt M_TOP_PAD):
the difference is the page faults of the fresh output arrays of each batch, not the padding.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
REF_PY = ROOT / "benchmarks/.venvs/v0.1.5/bin/python"
TORCH_DIR = ROOT / "benchmarks/.venvs/torch-2.13.0"
# name, rows, trailing shape of a row after its length, dtype
CASES = [("64 rows, 2 x int64 [L]", 64, (), "int64"),
         ("256 rows, 2 x int64 [L]", 256, (), "int64"),
         ("64 rows, 2 x float32 [L, 64]", 64, (64,), "float32")]
KEYS = ("input_ids", "attention_mask")
PAD = {"input_ids": 0}


def rows_of(n: int, trailing: tuple, dtype: str) -> list[dict]:
    """n single rows {key: [L, *trailing]}, L in 16..512, the same in every process."""
    rng = np.random.default_rng(n + len(trailing))
    out = []
    for length in rng.integers(16, 513, n):
        out.append({k: (rng.integers(1, 30000, (length, *trailing)) if dtype == "int64"
                        else rng.random((length, *trailing))).astype(dtype) for k in KEYS})
    return out


def reference(rows: list[dict]) -> dict:
    width = max(len(r[KEYS[0]]) for r in rows)
    res = {}
    for k in KEYS:
        first = rows[0][k]
        a = np.full((len(rows), width, *first.shape[1:]), PAD.get(k, 0), dtype=first.dtype)
        for i, r in enumerate(rows):
            a[i, :len(r[k])] = r[k]
        res[k] = a
    return res


def time_us(fn, samples: int = 200) -> float:
    """Median µs per call after a warm-up; each sample lasts >= 0.2 ms."""
    for _ in range(10):
        fn()
    n = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        if time.perf_counter() - t0 >= 2e-4:
            break
        n *= 2
    times = []
    for _ in range(samples):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        times.append((time.perf_counter() - t0) / n)
    return statistics.median(times) * 1e6


def ref_main(backend: str) -> None:
    """In the 0.1.5 venv: stack_features per case, as JSON {case: µs or error text}."""
    from batched.inference.helper import stack_features

    conv = (lambda a: a) if backend == "numpy" else __import__("torch").from_numpy
    res = {}
    for name, n, trailing, dtype in CASES:
        rows = [{k: conv(v) for k, v in r.items()} for r in rows_of(n, trailing, dtype)]
        try:
            got = stack_features(rows, PAD, "right")
            want = reference(rows_of(n, trailing, dtype))
            ok = all(np.asarray(got[k]).dtype == want[k].dtype and np.array_equal(np.asarray(got[k]), want[k])
                     for k in KEYS)
            res[name] = time_us(lambda: stack_features(rows, PAD, "right")) if ok else "wrong result (dtype)"
        except Exception as exc:  # noqa: BLE001
            res[name] = f"fails: {type(exc).__name__}: {str(exc)[:60]}"
    print(json.dumps(res))


def run_ref(backend: str) -> dict:
    if not REF_PY.exists():
        return {}
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if backend == "torch":
        if not TORCH_DIR.exists():
            return {}
        env["PYTHONPATH"] = str(TORCH_DIR)
    p = subprocess.run([str(REF_PY), __file__, "--ref", backend], capture_output=True, text=True, env=env,
                       cwd=ROOT / "benchmarks", timeout=600)
    if p.returncode != 0:
        return {name: f"fails: {p.stderr.strip().splitlines()[-1][:80]}" for name, *_ in CASES}
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    try:
        from batched._padding import RowsCollator
    except ImportError:
        sys.path.insert(0, str(ROOT / "src"))
        from batched._padding import RowsCollator
    backends = ["numpy"]
    try:
        import torch

        backends.append("torch")
    except ImportError:
        torch = None
    results, collators = [], []
    for backend in backends:
        conv = (lambda a: a) if backend == "numpy" else torch.from_numpy
        ref = run_ref(backend)
        for name, n, trailing, dtype in CASES:
            rows = rows_of(n, trailing, dtype)
            p = RowsCollator("bench", PAD, "right")
            reqs = [p.request({k: conv(v[None]) for k, v in r.items()}) for r in rows]
            spans = [(r, 0, 1) for r in reqs]
            got, want = p.collate(spans), reference(rows)
            for k in KEYS:
                g = np.asarray(got[k])
                if g.dtype != want[k].dtype or not np.array_equal(g, want[k]):
                    sys.exit(f"MISMATCH: {backend} {name} {k}: {g.dtype}{list(g.shape)} vs the numpy reference")
            src = np.concatenate([v.reshape(-1) for r in rows for v in r.values()])
            dst = np.empty_like(src)
            ours, memcpy = time_us(lambda: p.collate(spans)), time_us(lambda: np.copyto(dst, src))
            results.append([backend, name, ours, memcpy, ref.get(name, "not installed")])
            collators.append(lambda p=p, spans=spans: p.collate(spans))
    try:  # glibc: keep freed memory at the top of the heap instead of returning it to the OS
        import ctypes

        kept = ctypes.CDLL(None).mallopt(-2, 64 << 20) == 1  # M_TOP_PAD
    except (OSError, AttributeError):
        kept = False
    for row, fn in zip(results, collators):
        row.append(time_us(fn) if kept else float("nan"))

    print(f"{'backend':<7} {'case':<29} {'ours µs':>8} {'memcpy µs':>9} {'ours/memcpy':>11} "
          f"{'0.1.5 µs':>9} {'0.1.5/ours':>10}  ours, M_TOP_PAD µs")
    for backend, name, ours, memcpy, ref, kept_us in results:
        ref_s, speedup = (f"{ref:9.1f}", f"{ref / ours:9.1f}×") if isinstance(ref, float) else (ref, "")
        print(f"{backend:<7} {name:<29} {ours:8.1f} {memcpy:9.1f} {ours / memcpy:10.2f}× {ref_s:>9} {speedup:>10}"
              f"  {kept_us:8.1f}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--ref"]:
        ref_main(sys.argv[2])
    else:
        main()

"""Check and time torch.ops.batched.pad_stack: the CUDA kernel on a GPU machine, the CPU kernel elsewhere.

    python benchmarks/pad_cuda.py [--out results.json] [--device auto|cuda|cpu] [--iters 200]

(from the repository root, with torch installed; PYTHONPATH=src in a source checkout.)

1. Builds the op (with its CUDA kernel when CUDA is available; exit status 1 if that fails).
2. Checks the kernel against a row-by-row reference and the pure-torch fallback on random data:
   several dtypes (and so every unit width of the CUDA kernel), left/right, empty blocks,
   zero-length rows, non-contiguous blocks, rows longer than one CUDA block's chunk; on CUDA
   also torch.library.opcheck, and host rows staged to the device (device="cuda").
3. Times, on a batch of 256 rows x 512 steps, two int64 features (rows of random length
   16..512, each its own tensor, as items of separate requests would be):
     native    torch.ops.batched.pad_stack, one call per feature
     fallback  batched.torch_ops' pure-torch fallback (torch.full + one index_copy_ on
               CUDA; + one slice assignment per block on CPU, which is faster there)
     v0.1.5    torch.full + one slice assignment per row, as batched 0.1.5's stack_features
     copy      a plain copy_ of a buffer the size of the output: the device's copy bandwidth
   and on CUDA, host rows of one feature to a padded device batch as an inference processor
   with device="cuda" makes it (staged: packed into pinned memory, copied once, padded
   there) against a plain pinned host-to-device copy of the same bytes (wall time).
   Effective GB/s counts bytes read + bytes written (rows in, padded batch out; for copy,
   2 x the buffer). CUDA timings use CUDA events around each call (after warm-up), host
   timings time.perf_counter; medians over --iters runs.
Without CUDA it says so and runs the CPU comparison (same methods, memcpy as "copy").

The CUDA source also compiles on a machine without a GPU (checked with the CPU wheel of
torch 2.13.0 and nvcc 13.0; the CPU wheel lacks c10/cuda/impl/cuda_cmake_macros.h, hence
the -D flag, which only skips that generated header):

    nvcc -c csrc/torch/pad_stack_cuda.cu -o /tmp/pad_stack_cuda.o -std=c++20 \\
        -DC10_CUDA_NO_CMAKE_CONFIGURE_FILE -I csrc \\
        $(python -c "import torch.utils.cpp_extension as c; print(' '.join('-isystem ' + p for p in c.include_paths()))") \\
        -Xcompiler -fPIC,-Wall,-Wextra -gencode arch=compute_90,code=sm_90 -O3
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

try:
    import torch
except ImportError:
    print("pad_cuda.py: torch is not installed (pip install torch==2.13.0 ninja)", file=sys.stderr)
    sys.exit(1)

try:
    from batched import torch_ops
except ImportError:  # a source checkout without PYTHONPATH=src
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    from batched import torch_ops

# ---------------------------------------------------------------------------
# correctness


def reference(blocks: list, max_length: int, pad_value: Any, pad_left: bool) -> torch.Tensor:
    """Row by row with torch.cat: slow and obviously right."""
    first = blocks[0]
    trailing = tuple(first.shape[2:])
    rows = []
    for block in blocks:
        for row in block:
            pad = torch.full((max_length - row.shape[0], *trailing), pad_value, dtype=first.dtype, device=first.device)
            rows.append(torch.cat([pad, row] if pad_left else [row, pad]))
    if not rows:
        return torch.empty((0, max_length, *trailing), dtype=first.dtype, device=first.device)
    return torch.stack(rows)


def random_tensor(shape: tuple, dtype: torch.dtype, gen: torch.Generator, device: str) -> torch.Tensor:
    if dtype == torch.bool:
        t = torch.randint(0, 2, shape, generator=gen).bool()
    elif dtype.is_floating_point or dtype.is_complex:
        t = torch.randn(shape, generator=gen, dtype=dtype)
    else:
        t = torch.randint(-100 if dtype.is_signed else 0, 100, shape, generator=gen, dtype=dtype)
    return t.to(device)


CHECK_DTYPES = [
    torch.bool, torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64,
    torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64, torch.complex128,
]


def check(device: str) -> list[str]:
    """Native vs reference vs fallback on `device`; returns the failures (empty when all pass)."""
    op = torch.ops.batched.pad_stack
    gen = torch.Generator().manual_seed(0)
    failures = []
    cases = 0
    for dtype in CHECK_DTYPES:
        pad = True if dtype == torch.bool else 7
        for trailing in [(), (3,), (2, 2)]:
            for pad_left in (False, True):
                # zero-length rows, empty blocks, odd lengths (narrow CUDA units), and
                # a 2100-step row (several CUDA chunks per row for every width)
                shapes = [(3, 17), (0, 5), (2, 0), (1, 2100), (5, 1), (2, 64)]
                blocks = [random_tensor((n, length, *trailing), dtype, gen, device) for n, length in shapes]
                base = random_tensor((6, 40, *trailing), dtype, gen, device)
                blocks += [base[:, :13], base[::2, 5:30]]  # rows contiguous, stride(0) larger
                if trailing:
                    blocks.append(base.transpose(1, -1).contiguous().transpose(1, -1)[:, :9])  # steps strided
                want = reference(blocks, 2200, pad, pad_left)
                for name, fn, kwargs in (
                    ("native", op, {}),
                    ("fallback-slices", torch_ops._pad_stack_fallback, {"use_index": False}),
                    ("fallback-index", torch_ops._pad_stack_fallback, {"use_index": True}),
                ):
                    got = fn(blocks, 2200, pad, pad_left, **kwargs)
                    cases += 1
                    if got.shape != want.shape or got.dtype != want.dtype or not torch.equal(got, want):
                        failures.append(f"{name} {dtype} trailing={trailing} pad_left={pad_left}")
    if device == "cuda":
        for args in (([torch.randn(3, 4, 2), torch.randn(2, 6, 2)], 7, 0.5, True),
                     ([torch.randint(0, 9, (2, 5)), torch.zeros(0, 2, dtype=torch.int64)], 5, -1, False),
                     ([torch.rand(4, 3) > 0.5], 3, True, False)):
            cases += 1
            try:  # schema, fake kernel and autograd registration of the op, on CUDA tensors
                torch.library.opcheck(op.default, ([b.cuda() for b in args[0]], *args[1:]))
            except Exception as e:
                failures.append(f"opcheck {args[0][0].dtype}: {e}")
        for pad_left in (False, True):  # host rows -> pinned buffer -> device -> padded there
            cases += 1
            rows = [torch.randint(0, 30000, (n,)) for n in (3, 0, 700, 1, 64)]
            got = staged_collate(rows, pad_left)
            want = reference([r.unsqueeze(0) for r in rows], 700, 0, pad_left)
            if got.device.type != "cuda" or not torch.equal(got.cpu(), want):
                failures.append(f"staged host rows pad_left={pad_left}")
        torch.cuda.synchronize()
    print(f"check on {device}: {cases - len(failures)}/{cases} cases match the reference")
    return failures


def staged_collator(pad_left: bool) -> Any:
    from batched._padding import RowsCollator

    return RowsCollator("pad_cuda", {"input_ids": 0}, "left" if pad_left else "right", device=torch.device("cuda"))


def staged_collate(rows: list, pad_left: bool) -> torch.Tensor:
    """What an inference processor with device="cuda" does with host rows:
    packs them into one pinned buffer, copies it once, pads on the device
    (to the longest row)."""
    p = staged_collator(pad_left)
    out: torch.Tensor = p.collate([(p.request({"input_ids": r.unsqueeze(0)}), 0, 1) for r in rows])["input_ids"]
    return out


# ---------------------------------------------------------------------------
# timing


def make_batch(rows: int, min_len: int, max_len: int, features: int, device: str) -> list[list[torch.Tensor]]:
    """features x rows int64 tensors of random lengths (the same lengths for every feature)."""
    gen = torch.Generator().manual_seed(1)
    lengths = torch.randint(min_len, max_len + 1, (rows,), generator=gen).tolist()
    return [[torch.randint(0, 30000, (n,), generator=gen).to(device) for n in lengths] for _ in range(features)]


def pad_v015(rows: list[torch.Tensor], max_length: int, pad_value: int, pad_left: bool) -> torch.Tensor:
    """batched 0.1.5's stack_features, for one feature: torch.full + a slice assignment per row."""
    out = torch.full((len(rows), max_length), pad_value, dtype=torch.int64, device=rows[0].device)
    for i, row in enumerate(rows):
        n = row.shape[0]
        if pad_left:
            out[i, max_length - n :] = row
        else:
            out[i, :n] = row
    return out


def time_it(fn: Callable[[], Any], device: str, iters: int, warmup: int) -> list[float]:
    """Per-call times in microseconds: CUDA events on cuda, perf_counter on cpu."""
    for _ in range(warmup):
        fn()
    times = []
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        for _ in range(iters):
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) * 1e3)
    else:
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e6)
    return times


def bench(device: str, args: argparse.Namespace) -> dict[str, Any]:
    features = make_batch(args.rows, args.min_length, args.max_length, args.features, device)
    max_length = args.max_length
    op = torch.ops.batched.pad_stack
    blocks = [[row.unsqueeze(0) for row in rows] for rows in features]  # [1, L] views, made once
    in_bytes = sum(row.numel() * row.element_size() for rows in features for row in rows)
    out_bytes = args.features * args.rows * max_length * 8
    copy_src = torch.empty(out_bytes, dtype=torch.uint8, device=device)
    copy_dst = torch.empty_like(copy_src)

    # Same results before timing anything.
    for pad_left in (False, True):
        for f, rows in enumerate(features):
            a = op(blocks[f], max_length, 0, pad_left)
            b = torch_ops._pad_stack_fallback(blocks[f], max_length, 0, pad_left)
            c = pad_v015(rows, max_length, 0, pad_left)
            assert torch.equal(a, b) and torch.equal(a, c), "pad results differ"

    methods: dict[str, tuple[Callable[[], Any], int]] = {
        "native": (lambda: [op(bl, max_length, 0, args.pad_left) for bl in blocks], in_bytes + out_bytes),
        "fallback": (
            lambda: [torch_ops._pad_stack_fallback(bl, max_length, 0, args.pad_left) for bl in blocks],
            in_bytes + out_bytes,
        ),
        "v0.1.5": (lambda: [pad_v015(rows, max_length, 0, args.pad_left) for rows in features], in_bytes + out_bytes),
        "copy": (lambda: copy_dst.copy_(copy_src), 2 * out_bytes),
    }
    results: dict[str, Any] = {}
    for name, (fn, moved) in methods.items():
        times = time_it(fn, device, args.iters, args.warmup)
        median = statistics.median(times)
        results[name] = {
            "median_us": median,
            "p10_us": statistics.quantiles(times, n=10)[0],
            "p90_us": statistics.quantiles(times, n=10)[-1],
            "bytes_moved": moved,
            "gb_per_s": moved / (median * 1e-6) / 1e9,
        }
    copy_gbs = results["copy"]["gb_per_s"]
    for entry in results.values():
        entry["ratio_to_copy"] = entry["gb_per_s"] / copy_gbs
    if device == "cuda":
        results.update(bench_host_to_device(args))
    return results


def bench_host_to_device(args: argparse.Namespace) -> dict[str, Any]:
    """Host rows (one int64 row per request, separate tensors) to a padded
    batch on the device, as an inference processor with device="cuda" makes
    it (staged), against a plain copy of the same bytes from pinned host
    memory to the device (h2d copy). Wall time around each call, the device
    synchronized: the host-side packing counts."""
    rows = make_batch(args.rows, args.min_length, args.max_length, 1, "cpu")[0]
    in_bytes = sum(r.numel() * r.element_size() for r in rows)
    collator = staged_collator(args.pad_left)
    spans = [(collator.request({"input_ids": r.unsqueeze(0)}), 0, 1) for r in rows]
    pinned = torch.empty(in_bytes, dtype=torch.uint8, pin_memory=True)
    on_device = torch.empty(in_bytes, dtype=torch.uint8, device="cuda")

    def staged() -> None:
        collator.collate(spans)
        torch.cuda.synchronize()

    def h2d() -> None:
        on_device.copy_(pinned, non_blocking=True)
        torch.cuda.synchronize()

    out: dict[str, Any] = {}
    for name, fn in (("staged", staged), ("h2d copy", h2d)):
        times = time_it(fn, "cpu", args.iters, args.warmup)  # wall time
        median = statistics.median(times)
        out[name] = {"median_us": median, "p10_us": statistics.quantiles(times, n=10)[0],
                     "p90_us": statistics.quantiles(times, n=10)[-1], "bytes_moved": in_bytes,
                     "gb_per_s": in_bytes / (median * 1e-6) / 1e9}
    out["staged"]["ratio_to_h2d"] = out["staged"]["median_us"] / out["h2d copy"]["median_us"]
    out["h2d copy"]["ratio_to_h2d"] = 1.0
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--min-length", type=int, default=16)
    parser.add_argument("--features", type=int, default=2)
    parser.add_argument("--pad-left", action="store_true", help="time left padding (default: right)")
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--verbose", "-v", action="store_true", help="show the build's compiler output")
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    device = ("cuda" if cuda else "cpu") if args.device == "auto" else args.device
    if device == "cuda" and not cuda:
        print("pad_cuda.py: no CUDA device here; run with --device cpu for the CPU comparison", file=sys.stderr)
        return 0
    if not cuda:
        print("pad_cuda.py: no CUDA device here: checking and timing the CPU kernel instead")

    started = time.monotonic()
    native = torch_ops.load(verbose=args.verbose)
    info = torch_ops.build_info()
    print(f"op loaded in {time.monotonic() - started:.1f} s: {info}")
    if not native or (device == "cuda" and not info["cuda"]):
        print(f"pad_cuda.py: the native op has no {device} kernel: {info['cuda_reason'] or info['reason']}", file=sys.stderr)
        return 1

    if device == "cuda":
        name = torch.cuda.get_device_name()
    else:
        name = f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} torch threads)"
    print(f"device: {name}; torch {torch.__version__}")

    failures = check(device)
    for failure in failures:
        print(f"  MISMATCH: {failure}", file=sys.stderr)

    results = bench(device, args)
    print(
        f"\n{args.rows} rows x {args.max_length} steps, {args.features} int64 features, lengths "
        f"{args.min_length}..{args.max_length}, {'left' if args.pad_left else 'right'} padding, "
        f"median of {args.iters}:"
    )
    print(f"{'method':<10} {'median us':>10} {'p10 us':>9} {'p90 us':>9} {'GB/s':>8} {'vs copy':>8}")
    for method, r in results.items():
        if "ratio_to_copy" in r:
            print(
                f"{method:<10} {r['median_us']:>10.1f} {r['p10_us']:>9.1f} {r['p90_us']:>9.1f} "
                f"{r['gb_per_s']:>8.2f} {r['ratio_to_copy']:>8.3f}"
            )
    if "staged" in results:
        st, h2d = results["staged"], results["h2d copy"]
        print(f"host rows -> padded device batch (one int64 feature): {st['median_us']:.1f} us; "
              f"a pinned host-to-device copy of the same {st['bytes_moved']:,} bytes: {h2d['median_us']:.1f} us "
              f"({st['ratio_to_h2d']:.2f}x; target <= 1.2x)")
    if device == "cuda":
        print(f"pad kernel: {results['native']['ratio_to_copy']:.2f}x the device's copy bandwidth (target >= 0.5x)")
    print(
        f"native is {results['v0.1.5']['median_us'] / results['native']['median_us']:.1f}x faster than 0.1.5-style, "
        f"{results['fallback']['median_us'] / results['native']['median_us']:.1f}x faster than the fallback"
    )

    if args.out:
        report = {
            "device": name,
            "device_type": device,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "build": info,
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "check_failures": failures,
            "results": results,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

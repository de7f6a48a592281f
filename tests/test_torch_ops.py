"""Tests of batched.torch_ops: the native op torch.ops.batched.pad_stack (CPU kernel, fake
kernel, schema via opcheck, torch.compile), the pure-torch fallback, errors, and the loader
(cache, lazy torch import, thread-safe first build, fallback warning when it cannot build).

The native op is built once for the module (about 15 s on 2 cores the first time, then
loaded from ~/.cache/batched/torch_ext/ in well under a second).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from batched import torch_ops  # noqa: E402

pytestmark = pytest.mark.timeout(600)  # the first build of the op, on a slow machine

# Subprocesses import the same batched as this process (src/ or the installed package).
SRC = str(Path(torch_ops.__file__).resolve().parent.parent)


@pytest.fixture(scope="module")
def native() -> object:
    """torch.ops.batched.pad_stack, built (or loaded from the cache) once for the module."""
    if not torch_ops.load():
        info = torch_ops.build_info()
        if "no C++ compiler" in info["reason"] or "ninja" in info["reason"]:
            pytest.skip(f"cannot build the native op here: {info['reason']}")
        pytest.fail(f"the native op did not build: {info}")
    return torch.ops.batched.pad_stack


def reference(blocks: list, max_length: int, pad_value: object, pad_left: bool) -> torch.Tensor:
    """Row by row, with torch.cat: obviously right, slow."""
    trailing = tuple(blocks[0].shape[2:])
    dtype = blocks[0].dtype
    rows = []
    for block in blocks:
        for row in block:
            pad = torch.full((max_length - row.shape[0], *trailing), pad_value, dtype=dtype)
            rows.append(torch.cat([pad, row] if pad_left else [row, pad]))
    if not rows:
        return torch.empty((0, max_length, *trailing), dtype=dtype)
    return torch.stack(rows)


def random_tensor(shape: tuple, dtype: torch.dtype, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=gen).bool()
    if dtype.is_floating_point or dtype.is_complex:
        return torch.randn(shape, generator=gen, dtype=dtype)
    return torch.randint(-100 if dtype.is_signed else 0, 100, shape, generator=gen, dtype=dtype)


PAD_VALUES = {torch.bool: True, torch.complex64: -1.5, torch.float16: -1.5, torch.bfloat16: 2.5, torch.float32: -1.5}
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.bool, torch.int8, torch.uint8, torch.int64, torch.complex64]
# (rows, length) of each block: zero-length rows and empty blocks included
SHAPES = [(2, 5), (0, 3), (3, 0), (1, 7), (4, 2), (0, 0)]


def make_blocks(dtype: torch.dtype, trailing: tuple, shapes: list = SHAPES, seed: int = 0) -> list:
    return [random_tensor((n, length, *trailing), dtype, seed + i) for i, (n, length) in enumerate(shapes)]


def assert_same(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.dtype == want.dtype
    assert got.shape == want.shape
    assert got.is_contiguous()
    assert torch.equal(got, want), (got, want)


# ---------------------------------------------------------------------------
# native CPU kernel


@pytest.mark.parametrize("pad_left", [False, True], ids=["right", "left"])
@pytest.mark.parametrize("trailing", [(), (3,)], ids=["L", "L,3"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_native_matches_reference(native, dtype, trailing, pad_left) -> None:
    blocks = make_blocks(dtype, trailing)
    pad = PAD_VALUES.get(dtype, 7)
    assert_same(native(blocks, 9, pad, pad_left), reference(blocks, 9, pad, pad_left))


def misaligned(t: torch.Tensor) -> torch.Tensor:
    """A copy of t whose data pointer is not a multiple of its itemsize."""
    raw = bytearray(t.numel() * t.element_size() + 1)
    out = torch.frombuffer(raw, dtype=t.dtype, offset=1, count=t.numel()).view(t.shape)
    out.copy_(t)
    assert out.data_ptr() % t.element_size() != 0
    return out


@pytest.mark.parametrize("pad_left", [False, True], ids=["right", "left"])
def test_native_non_contiguous_blocks(native, pad_left) -> None:
    base = random_tensor((6, 8, 3), torch.float32, 1)
    blocks = [
        random_tensor((6, 3, 8), torch.float32, 2).transpose(1, 2),  # steps not contiguous: copied
        base[:, :5],  # x[:, :L]: rows contiguous, stride(0) = 24: read in place
        base[::2, 1:4],  # stride(0) doubled: read in place
        random_tensor((1, 4, 3), torch.float32, 3).expand(3, 4, 3),  # stride(0) == 0
        base.narrow(0, 1, 2),  # contiguous, at an offset
        misaligned(random_tensor((2, 3, 3), torch.float32, 4)),  # copied to aligned memory
    ]
    assert not any(b.is_contiguous() for b in blocks[:4])
    assert_same(native(blocks, 10, 0.25, pad_left), reference(blocks, 10, 0.25, pad_left))


def test_native_degenerate_outputs(native) -> None:
    x = torch.zeros(2, 0, 3)
    assert_same(native([x], 0, 1), torch.zeros(2, 0, 3))
    assert_same(native([x], 4, 1), torch.ones(2, 4, 3))
    assert_same(native([torch.zeros(0, 2)], 5, 1), torch.zeros(0, 5))
    assert_same(native([torch.zeros(2, 3, 0)], 5, 1), torch.zeros(2, 5, 0))


def test_native_pad_value_cast_like_torch_full(native) -> None:
    x = torch.tensor([[1, 2]], dtype=torch.int32)
    assert native([x], 4, 3.9).tolist() == [[1, 2, 3, 3]]  # truncated, as torch.full does
    assert native([x], 4, -1, pad_left=True).tolist() == [[-1, -1, 1, 2]]
    b = torch.tensor([[False]])
    assert native([b], 3, 5).tolist() == [[False, True, True]]


def test_native_default_pad_left_is_false(native) -> None:
    x = torch.tensor([[1.0, 2.0]])
    assert native([x], 3, 0.0).tolist() == [[1.0, 2.0, 0.0]]


def test_native_big_batch_uses_threads_and_matches(native) -> None:
    # > 256 KiB of output: the kernel splits rows across at::parallel_for tasks.
    gen = torch.Generator().manual_seed(3)
    lengths = torch.randint(1, 300, (300,), generator=gen).tolist()
    blocks = [random_tensor((1, n, 2), torch.int64, i) for i, n in enumerate(lengths)]
    for pad_left in (False, True):
        assert_same(native(blocks, 300, -3, pad_left), reference(blocks, 300, -3, pad_left))


# ---------------------------------------------------------------------------
# errors: the same checks in the C++ op, the fallback and the fake kernel

ERROR_CASES = [
    ([], 4, "expected at least one block, got an empty list"),
    ([torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.int64)], 4, "block 1 has dtype .* but block 0 has dtype"),
    ([torch.zeros(2, 3, 4), torch.zeros(2, 3, 5)], 4, r"block 1 has trailing shape \[5\] but block 0 has trailing shape \[4\]"),
    ([torch.zeros(2, 3), torch.zeros(3)], 4, r"block 1 has 1 dimension\(s\); expected at least 2"),
    ([torch.zeros(2, 3), torch.zeros(1, 6)], 4, "block 1 has length 6 > max_length 4"),
    ([torch.zeros(2, 0)], -1, "max_length must be >= 0, got -1"),
]


@pytest.mark.parametrize(
    ("blocks", "max_length", "message"),
    ERROR_CASES,
    ids=["empty", "dtype", "trailing", "rank", "too-long", "negative-max"],
)
@pytest.mark.parametrize("impl", ["native", "fallback"])
def test_errors(native, impl, blocks, max_length, message) -> None:
    fn = native if impl == "native" else torch_ops._pad_stack_fallback
    with pytest.raises(RuntimeError, match=message):
        fn(blocks, max_length, 0)


def test_fallback_device_mismatch_message() -> None:
    blocks = [torch.zeros(1, 2), torch.zeros(1, 2, device="meta")]
    with pytest.raises(RuntimeError, match="block 1 is on device meta but block 0 is on device cpu"):
        torch_ops._pad_stack_fallback(blocks, 4, 0)


# ---------------------------------------------------------------------------
# fallback


@pytest.mark.parametrize("pad_left", [False, True], ids=["right", "left"])
@pytest.mark.parametrize("trailing", [(), (3,)], ids=["L", "L,3"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("use_index", [False, True], ids=["slices", "index_copy"])
def test_fallback_matches_reference(dtype, trailing, pad_left, use_index) -> None:
    blocks = make_blocks(dtype, trailing, SHAPES * 2)
    pad = PAD_VALUES.get(dtype, 7)
    got = torch_ops._pad_stack_fallback(blocks, 9, pad, pad_left, use_index=use_index)
    assert_same(got, reference(blocks, 9, pad, pad_left))


def test_fallback_non_contiguous_and_degenerate() -> None:
    blocks = [torch.randn(6, 3, 8).transpose(1, 2)[::2], torch.randn(1, 4, 3).expand(3, 4, 3)] * 5
    for pad_left in (False, True):
        for use_index in (False, True):
            got = torch_ops._pad_stack_fallback(blocks, 9, 0.5, pad_left, use_index=use_index)
            assert_same(got, reference(blocks, 9, 0.5, pad_left))
    assert_same(torch_ops._pad_stack_fallback([torch.zeros(2, 0)] * 10, 3, 1, use_index=True), torch.ones(20, 3))


def test_pad_stack_wrapper_uses_native(native) -> None:
    blocks = make_blocks(torch.int64, (3,))
    assert torch_ops.build_info()["native"]
    assert_same(torch_ops.pad_stack(blocks, 9, -1, True), reference(blocks, 9, -1, True))
    assert_same(torch_ops.pad_stack(tuple(blocks), 9, -1), reference(blocks, 9, -1, False))


# ---------------------------------------------------------------------------
# schema, fake kernel, torch.compile


OPCHECK_CASES = [
    ([torch.randn(3, 4, 2), torch.randn(2, 6, 2)], 7, 0.5, True),
    ([torch.randint(0, 9, (2, 5)), torch.zeros(0, 2, dtype=torch.int64), torch.randint(0, 9, (1, 0))], 5, -1, False),
    ([torch.rand(4, 3) > 0.5], 3, True, False),
]


@pytest.mark.parametrize("args", OPCHECK_CASES, ids=["float-left", "int64-right", "bool"])
def test_opcheck(native, args) -> None:
    torch.library.opcheck(native.default, args)


def test_fake_tensor_mode(native) -> None:
    from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: PLC0415

    with FakeTensorMode() as mode:
        blocks = [mode.from_tensor(torch.zeros(3, 4, 2, dtype=torch.float16)), mode.from_tensor(torch.zeros(2, 1, 2, dtype=torch.float16))]
        out = native(blocks, 6, 0)
        assert out.shape == (5, 6, 2) and out.dtype == torch.float16 and out.is_contiguous()
        with pytest.raises(RuntimeError, match="block 0 has length 4 > max_length 3"):
            native(blocks, 3, 0)


def test_torch_compile_fullgraph(native) -> None:
    def fn(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return native([a, b], 8, -1, True) * 2

    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    for n in (3, 5):  # a second shape: recompiles (or runs the dynamic graph)
        a, b = torch.randn(n, 4, 2), torch.randn(2, 8, 2)
        assert_same(compiled(a, b), fn(a, b))


def test_torch_compile_wrapper_dynamic(native) -> None:
    def fn(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch_ops.pad_stack([a, b], 8, 0, False) + 1

    compiled = torch.compile(fn, backend="eager", fullgraph=True, dynamic=True)
    for n in (3, 6):
        a, b = torch.randn(n, 4), torch.randn(2, 7)
        assert_same(compiled(a, b), fn(a, b))


# ---------------------------------------------------------------------------
# loader


def run_python(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": SRC, **(env or {})}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=full_env, capture_output=True, text=True, timeout=300
    )


def test_import_does_not_import_torch() -> None:
    proc = run_python("import sys, batched.torch_ops; assert 'torch' not in sys.modules; print('ok')")
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_cached_load_is_fast(native) -> None:
    proc = run_python(
        """
        import time, torch, batched.torch_ops as ops
        t = time.perf_counter()
        assert ops.load()
        print(time.perf_counter() - t, ops.build_info()["library"])
        """
    )
    assert proc.returncode == 0, proc.stderr
    seconds, library = proc.stdout.split()
    assert float(seconds) < 1.0
    assert library == torch_ops.build_info()["library"]


def test_first_use_from_threads_builds_once(native) -> None:
    proc = run_python(
        """
        import threading, time, torch, batched.torch_ops as ops
        calls = []
        real = ops._build_and_load
        def counting(verbose):
            calls.append(1)
            time.sleep(0.2)  # widen the race window
            return real(verbose)
        ops._build_and_load = counting
        x = torch.arange(6).reshape(2, 3)
        results = [None] * 8
        def work(i):
            results[i] = ops.pad_stack([x], 4, -1)
        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for t in threads: t.start()
        for t in threads: t.join()
        assert len(calls) == 1, calls
        assert all(torch.equal(r, results[0]) for r in results)
        assert ops.build_info()["native"]
        print("ok")
        """
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_fallback_when_build_impossible_warns_once(tmp_path) -> None:
    proc = run_python(
        """
        import warnings, torch, batched.torch_ops as ops
        x = torch.arange(6).reshape(2, 3)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            a = ops.pad_stack([x], 5, -1, True)
            b = ops.pad_stack([x], 5, -1, True)
        assert torch.equal(a, b) and a.tolist() == [[-1, -1, 0, 1, 2], [-1, -1, 3, 4, 5]]
        assert not ops.build_info()["native"]
        assert len(caught) == 1, [str(w.message) for w in caught]
        print(caught[0].message)
        """,
        env={"CXX": "/nonexistent/c++", "BATCHED_TORCH_EXT_DIR": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stderr
    assert "could not be built (no C++ compiler" in proc.stdout


def test_compile_error_is_reported_not_raised(tmp_path) -> None:
    # A copy of the sources with a syntax error: the loader gives the first error line.
    import shutil  # noqa: PLC0415

    csrc = tmp_path / "csrc"
    src_dir = torch_ops._source_dir()
    assert src_dir is not None
    shutil.copytree(src_dir, csrc)
    cpp = csrc / "torch" / "pad_stack.cpp"
    cpp.write_text(cpp.read_text().replace("namespace {", "namespace { this is not C++;", 1))
    proc = run_python(
        f"""
        from pathlib import Path
        import warnings, torch, batched.torch_ops as ops
        ops._source_dir = lambda: Path({str(csrc)!r})
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = ops.pad_stack([torch.ones(1, 2)], 3, 0)
        assert out.tolist() == [[1.0, 1.0, 0.0]]
        print(caught[0].message)
        """,
        env={"BATCHED_TORCH_EXT_DIR": str(tmp_path / "build")},
    )
    assert proc.returncode == 0, proc.stderr
    assert "pad_stack.cpp" in proc.stdout and "error:" in proc.stdout, proc.stdout


def test_main_builds_and_reports(native) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "batched.torch_ops"],
        env={**os.environ, "PYTHONPATH": SRC},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert torch_ops.build_info()["library"] in proc.stdout
    assert "CUDA kernel:" in proc.stdout


def test_main_fails_without_compiler(tmp_path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "batched.torch_ops"],
        env={**os.environ, "PYTHONPATH": SRC, "CXX": "/nonexistent/c++", "BATCHED_TORCH_EXT_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1
    assert "no C++ compiler" in proc.stderr


# ---------------------------------------------------------------------------
# the CUDA kernel (on a GPU machine only: benchmarks/gpu_check.sh runs these)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@cuda
@pytest.mark.parametrize("pad_left", [False, True], ids=["right", "left"])
@pytest.mark.parametrize("trailing", [(), (3,)], ids=["L", "L,3"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_kernel_matches_reference(native, dtype, trailing, pad_left) -> None:
    blocks = make_blocks(dtype, trailing, shapes=[*SHAPES, (2, 2100)])  # a row of several CUDA chunks
    pad = PAD_VALUES.get(dtype, 7)
    got = native([b.cuda() for b in blocks], 2101, pad, pad_left)
    assert got.device.type == "cuda"
    assert_same(got.cpu(), reference(blocks, 2101, pad, pad_left))
    fallback = torch_ops._pad_stack_fallback([b.cuda() for b in blocks], 2101, pad, pad_left)
    assert_same(fallback.cpu(), reference(blocks, 2101, pad, pad_left))


@cuda
@pytest.mark.parametrize("pad_left", [False, True], ids=["right", "left"])
def test_cuda_kernel_non_contiguous_blocks(native, pad_left) -> None:
    base = random_tensor((6, 8, 3), torch.float32, 1).cuda()
    blocks = [random_tensor((6, 3, 8), torch.float32, 2).cuda().transpose(1, 2), base[:, :5], base[::2, 1:4],
              random_tensor((1, 4, 3), torch.float32, 3).cuda().expand(3, 4, 3), base.narrow(0, 1, 2)]
    want = reference([b.cpu() for b in blocks], 10, 0.25, pad_left)
    assert_same(native(blocks, 10, 0.25, pad_left).cpu(), want)


@cuda
@pytest.mark.parametrize("args", OPCHECK_CASES, ids=["float-left", "int64-right", "bool"])
def test_cuda_opcheck(native, args) -> None:
    blocks, *rest = args
    torch.library.opcheck(native.default, ([b.cuda() for b in blocks], *rest))


@cuda
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_cuda_inference_stages_host_rows_and_pads_on_the_device(padding_side) -> None:
    np = pytest.importorskip("numpy")
    import batched

    @batched.inference.dynamically(batch_size=8, timeout_ms=1, pad_tokens={"input_ids": 0},
                                   padding_side=padding_side, device="cuda")
    def model(features: dict) -> torch.Tensor:
        ids = features["input_ids"]
        assert ids.device.type == "cuda"
        return ids.sum(dim=1)

    rows = [np.arange(1, n + 1, dtype=np.int64) for n in (3, 1, 5)]
    assert model({"input_ids": rows}).tolist() == [6, 1, 15]
    model.shutdown()


@cuda
def test_cuda_batches_formed_ahead_are_staged_on_a_side_stream() -> None:
    """prefetch=True with device="cuda" (docs/semantics.md, 15): the next batch is
    copied and padded on a side stream while one runs; the function's stream
    waits for it, so every caller reads its own rows."""
    np = pytest.importorskip("numpy")
    import threading
    import time

    import batched

    @batched.inference.dynamically(batch_size=8, timeout_ms=20, pad_tokens={"input_ids": 0},
                                   device="cuda", prefetch=True)
    def model(features: dict) -> torch.Tensor:
        ids = features["input_ids"]
        assert ids.device.type == "cuda"
        torch.cuda._sleep(2_000_000)  # the device busy ~1 ms on the function's stream
        time.sleep(0.002)
        return ids.sum(dim=1)

    rng = np.random.default_rng(5)
    rows = [rng.integers(1, 1000, size=(1, int(rng.integers(1, 300)))) for _ in range(96)]
    got: list = [None] * len(rows)

    def call(i: int) -> None:
        got[i] = model({"input_ids": rows[i]}).tolist()

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(rows))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert got == [[int(r.sum())] for r in rows]
    assert model.stats.avg_batch_size > 4  # batches were formed (and so staged) while others ran
    model.shutdown()

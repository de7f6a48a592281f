"""batched.torch_ops: the torch custom op ``torch.ops.batched.pad_stack`` and its loader.

``pad_stack(blocks, max_length, pad_value, pad_left=False)`` stacks blocks of rows
(``[n_i, L_i, *trailing]``) into one padded ``[sum n_i, max_length, *trailing]`` tensor,
natively (C++ on CPU, one CUDA kernel launch on GPU). The op is compiled on first use with
torch.utils.cpp_extension and cached under ``~/.cache/batched/torch_ext/`` (or
``$BATCHED_TORCH_EXT_DIR``), so later processes load the built library in milliseconds.
Where it cannot be built (no C++ compiler, no ninja, no CUDA toolkit for CUDA tensors) the
same results come from vectorised torch code, with one warning per process saying why.

Build ahead of time (prints the library's path and whether CUDA was included; exit
status 1 when the build fails)::

    python -m batched.torch_ops [-v]

Importing this module does not import torch; the functions do, on first call.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

__all__ = ["build_info", "load", "pad_stack"]

_OP = "batched::pad_stack"
_LIB_NAME = "batched_torch_ops"
_CXX_FLAGS = ["-O2"]
_CUDA_FLAGS = ["-O3"]
# Fallback strategy: on CPU, and for few blocks anywhere, one slice assignment per
# block; for more blocks on an accelerator, one index_copy_ for all of them, i.e. a
# constant number of kernel launches however many rows there are.
_FALLBACK_SLICE_BLOCKS = 8

_lock = threading.Lock()
_tried = False  # load() ran to the end once (success or not): never retried
_native = False  # the op is registered, with a CPU kernel
_cuda_kernel = False  # ... and a CUDA kernel
_so_path: str | None = None
_reason = ""  # why there is no native op at all
_cuda_reason = ""  # why there is no CUDA kernel
_warned = False
_fake_registered = False


# ---------------------------------------------------------------------------
# public API


def pad_stack(blocks: Any, max_length: int, pad_value: Any, pad_left: bool = False) -> Any:
    """Stack blocks of rows into one new padded tensor.

    Each block is a tensor ``[n_i, L_i, *trailing]`` (same dtype, device and trailing
    shape for all); the result is ``[sum n_i, max_length, *trailing]``: the blocks'
    rows in order, each row's L_i steps at the start of its slot (``pad_left=False``)
    or at its end (``pad_left=True``), the rest ``pad_value`` cast to the dtype.
    Uses the native op when it could be built, else an equivalent torch fallback.
    """
    if not _tried:
        load()
    blocks = list(blocks)
    if _native and blocks:
        device = blocks[0].device.type
        if device in ("cpu", "meta") or (device == "cuda" and _cuda_kernel):
            import torch  # noqa: PLC0415

            return torch.ops.batched.pad_stack(blocks, max_length, pad_value, pad_left)
        _warn_once(_cuda_reason if device == "cuda" else f"no kernel for device {device!r}")
    elif blocks:
        _warn_once(_reason)
    return _pad_stack_fallback(blocks, max_length, pad_value, pad_left)


def load(verbose: bool = False) -> bool:
    """Build (first time) or load (cached) the native op; True when it is available.

    Thread-safe and idempotent: concurrent first calls build once, and a failed build
    is not retried in this process (pad_stack then uses the fallback).
    """
    if _tried:
        return _native
    with _lock:
        if not _tried:
            _load_locked(verbose)
    return _native


def build_info() -> dict[str, Any]:
    """State of the native op: whether it is loaded (with CUDA), its library, and why not."""
    return {
        "native": _native,
        "cuda": _cuda_kernel,
        "library": _so_path,
        "reason": _reason,
        "cuda_reason": _cuda_reason,
    }


# ---------------------------------------------------------------------------
# building and loading


def _source_dir() -> Path | None:
    """The directory holding torch/ and batched/: shipped in the wheel, or the checkout's csrc/."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_csrc", here.parent.parent / "csrc"):
        if (candidate / "torch" / "pad_stack.cpp").is_file() and (candidate / "batched" / "pad.h").is_file():
            return candidate
    return None


def _source_hash(src: Path, with_cuda: bool) -> str:
    """Short hash of everything that goes into the library: sources, headers, flags, Python ABI."""
    digest = hashlib.sha256()
    files = sorted(p for p in (src / "torch").iterdir() if p.suffix in (".cpp", ".cu", ".h", ".cuh"))
    for path in [*files, src / "batched" / "pad.h"]:
        if path.suffix == ".cu" and not with_cuda:
            continue
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update(repr((_CXX_FLAGS, _CUDA_FLAGS if with_cuda else None, sys.implementation.cache_tag)).encode())
    return digest.hexdigest()[:12]


def _first_error_line(exc: BaseException) -> str:
    """The compiler's first error line out of cpp_extension's (long) exception message."""
    text = str(exc)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:  # gcc/clang/nvcc diagnostics: "file:line:col: error: ..."
        if "error:" in line.lower() and not line.startswith(("Error building extension", "FAILED:")):
            return line[:300]
    return (lines[0] if lines else type(exc).__name__)[:300]


def _op_registered() -> bool:
    import torch  # noqa: PLC0415

    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(_OP, "CPU")
    except Exception:  # noqa: BLE001 - no such op
        return False


def _load_locked(verbose: bool) -> None:
    global _tried, _native, _cuda_kernel, _so_path, _reason, _cuda_reason  # noqa: PLW0603
    try:
        import torch  # noqa: PLC0415
    except ImportError:
        _reason = "torch is not installed"
        _tried = True
        return
    try:
        if not _op_registered():  # someone may have loaded the library already
            _reason, _cuda_reason = _build_and_load(verbose)
        _native = _op_registered()
        if _native:
            _cuda_kernel = torch._C._dispatch_has_kernel_for_dispatch_key(_OP, "CUDA")
            _register_fake()
            _reason = ""
    except Exception as exc:  # noqa: BLE001 - never crash pad_stack because of the build
        _native = False
        _reason = _reason or f"{type(exc).__name__}: {exc}"[:300]
    if _native and not _cuda_kernel and not _cuda_reason:
        _cuda_reason = "the op was built without CUDA"
    if not _native:
        _reason = _reason or "the library loaded but did not register the op"
        _cuda_reason = _cuda_reason or _reason
    _tried = True


def _build_and_load(verbose: bool) -> tuple[str, str]:
    """Builds (or finds in the cache) and loads the library; returns (reason, cuda_reason)."""
    import torch  # noqa: PLC0415
    from torch.utils import cpp_extension  # noqa: PLC0415

    src = _source_dir()
    if src is None:
        return "the op's C++ sources are missing from the installation", "no C++ sources"
    cxx = (os.environ.get("CXX") or "c++").split()[0]  # CXX may be "ccache g++"
    if shutil.which(cxx) is None:
        return f"no C++ compiler ({cxx!r} not found)", "no C++ compiler"
    if not cpp_extension.is_ninja_available():
        return "ninja is not installed (pip install ninja)", "ninja is not installed (pip install ninja)"

    cuda_reason = ""
    with warnings.catch_warnings():  # a broken driver warns here: it just means no CUDA
        warnings.simplefilter("ignore")
        want_cuda = torch.cuda.is_available()
    if want_cuda and cpp_extension.CUDA_HOME is None:
        want_cuda, cuda_reason = False, "no CUDA toolkit (CUDA_HOME / nvcc not found)"
    if want_cuda:
        try:
            _load_library(src, with_cuda=True, verbose=verbose)
            return "", ""
        except Exception as exc:  # noqa: BLE001 - retry without the CUDA kernel
            cuda_reason = f"the CUDA kernel did not build: {_first_error_line(exc)}"
            if _op_registered():  # loaded but something after failed: keep it
                return "", cuda_reason
    try:
        _load_library(src, with_cuda=False, verbose=verbose)
    except Exception as exc:  # noqa: BLE001
        return _first_error_line(exc), cuda_reason or "the op did not build"
    return "", cuda_reason


def _load_library(src: Path, with_cuda: bool, verbose: bool) -> None:
    global _so_path  # noqa: PLW0603
    import torch  # noqa: PLC0415
    from torch.utils import cpp_extension  # noqa: PLC0415

    key = f"{torch.__version__}-{'cuda' if with_cuda else 'cpu'}-{_source_hash(src, with_cuda)}"
    override = os.environ.get("BATCHED_TORCH_EXT_DIR")
    build_dir = Path(override) if override else Path.home() / ".cache" / "batched" / "torch_ext" / key
    so_path = build_dir / f"{_LIB_NAME}{cpp_extension.LIB_EXT}"
    stamp = build_dir / "batched_build_key.txt"

    # Cached build of these exact sources: load it directly (no compiler, no ninja run).
    try:
        cached = so_path.is_file() and stamp.read_text() == key
    except OSError:
        cached = False
    if cached:
        try:
            torch.ops.load_library(str(so_path))
            _so_path = str(so_path)
            return
        except Exception:  # noqa: BLE001 - damaged cache entry: rebuild below
            if _op_registered():
                raise

    build_dir.mkdir(parents=True, exist_ok=True)
    sources = [src / "torch" / "pad_stack.cpp"]
    if with_cuda:
        sources.append(src / "torch" / "pad_stack_cuda.cu")
    started = time.monotonic()
    # cpp_extension warns about compiler versions and CUDA arch lists: advice for the
    # verbose build, not errors (and under `-W error` they would abort the build).
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = cpp_extension.load(
            name=_LIB_NAME,
            sources=[str(s) for s in sources],
            extra_cflags=_CXX_FLAGS,
            extra_cuda_cflags=_CUDA_FLAGS,
            extra_include_paths=[str(src)],
            build_directory=str(build_dir),
            is_python_module=False,
            verbose=verbose,
        )
    if verbose:
        for warning in caught:
            print(f"batched.torch_ops: build warning: {warning.message}", file=sys.stderr)
        print(f"batched.torch_ops: built in {time.monotonic() - started:.1f} s", file=sys.stderr)
    _so_path = str(path) if isinstance(path, (str, os.PathLike)) else str(so_path)
    # Written last and atomically: a present stamp means a complete library.
    tmp = stamp.with_name(f"{stamp.name}.{os.getpid()}.{threading.get_ident()}")
    try:
        tmp.write_text(key)
        os.replace(tmp, stamp)
    except OSError:  # read-only cache: later processes run ninja (a no-op) instead
        pass


def _warn_once(reason: str) -> None:
    global _warned  # noqa: PLW0603
    if _warned:
        return
    _warned = True
    from batched._log import logger  # noqa: PLC0415

    logger().warning("torch_ops: native pad_stack op unavailable (%s); using the pure-torch fallback", reason)
    warnings.warn(
        f"batched.torch_ops: the native pad_stack op could not be built ({reason}); "
        "using the slower pure-torch fallback. Run `python -m batched.torch_ops -v` for details.",
        RuntimeWarning,
        stacklevel=3,
    )


# ---------------------------------------------------------------------------
# fallback and fake (meta) implementations: same checks and messages as the C++ op


def _check_blocks(blocks: list[Any], max_length: int) -> tuple[Any, tuple[Any, ...], Any]:
    """Validates like the C++ op (RuntimeError, same wording).

    Returns (rows, trailing shape, steps to copy = sum of n_i * L_i).
    """
    if not blocks:
        raise RuntimeError("pad_stack: expected at least one block, got an empty list")
    if max_length < 0:
        raise RuntimeError(f"pad_stack: max_length must be >= 0, got {max_length}")
    first = blocks[0]
    dtype, device, trailing = first.dtype, first.device, tuple(first.shape[2:])
    n_rows = steps = 0
    for b, t in enumerate(blocks):  # cheap attribute reads first: this loop runs per block
        shape = t.shape
        if len(shape) < 2:
            raise RuntimeError(
                f"pad_stack: block {b} has {len(shape)} dimension(s); expected at least 2 ([rows, length, ...])"
            )
        if t.dtype is not dtype:
            raise RuntimeError(f"pad_stack: block {b} has dtype {t.dtype} but block 0 has dtype {dtype}")
        if b and t.device != device:
            raise RuntimeError(f"pad_stack: block {b} is on device {t.device} but block 0 is on device {device}")
        if shape[2:] != trailing:  # torch.Size is a tuple
            raise RuntimeError(
                f"pad_stack: block {b} has trailing shape {list(shape[2:])} "
                f"but block 0 has trailing shape {list(trailing)}"
            )
        n, length = shape[0], shape[1]
        if length > max_length:
            raise RuntimeError(f"pad_stack: block {b} has length {length} > max_length {max_length}")
        n_rows = n_rows + n
        steps = steps + n * length
    return n_rows, trailing, steps


def _pad_stack_fallback(
    blocks: list[Any], max_length: int, pad_value: Any, pad_left: bool = False, *, use_index: bool | None = None
) -> Any:
    """Pure-torch pad_stack, identical results; ``use_index`` forces a strategy (tests)."""
    import torch  # noqa: PLC0415

    n_rows, trailing, total = _check_blocks(blocks, max_length)
    first = blocks[0]
    out = torch.full((n_rows, max_length, *trailing), pad_value, dtype=first.dtype, device=first.device)
    if out.numel() == 0 or total == 0:
        return out
    if use_index is None:
        use_index = first.device.type != "cpu" and len(blocks) > _FALLBACK_SLICE_BLOCKS
    if not use_index:
        row = 0
        for t in blocks:
            n, length = t.shape[0], t.shape[1]
            if n and length:
                start = max_length - length if pad_left else 0
                out[row : row + n, start : start + length] = t
            row += n
        return out
    # Every step's destination index in out viewed as [n_rows * max_length, *trailing],
    # computed on the device from two small per-block vectors (no host sync).
    device = first.device
    per_block = torch.tensor([[int(t.shape[1]) for t in blocks], [int(t.shape[0]) for t in blocks]])
    per_block = per_block.to(device)
    row_len = torch.repeat_interleave(per_block[0], per_block[1], output_size=n_rows)
    first_step = torch.cumsum(row_len, 0) - row_len  # row's first step in the concatenated source
    slot_start = torch.arange(n_rows, device=device) * max_length
    if pad_left:
        slot_start += max_length - row_len
    index = torch.repeat_interleave(slot_start - first_step, row_len, output_size=total)
    index += torch.arange(total, device=device)
    source = torch.cat([t.reshape(int(t.shape[0]) * int(t.shape[1]), *trailing) for t in blocks])
    out.view(n_rows * max_length, *trailing).index_copy_(0, index, source)
    return out


def _pad_stack_fake(blocks: list[Any], max_length: int, pad_value: Any, pad_left: bool = False) -> Any:
    """Shape/dtype/device of the result, for FakeTensor tracing (torch.compile, export)."""
    del pad_value, pad_left
    n_rows, trailing, _ = _check_blocks(blocks, max_length)
    return blocks[0].new_empty((n_rows, max_length, *trailing))


def _register_fake() -> None:
    # Called from this module on purpose: the C++ library names batched.torch_ops
    # (m.set_python_module) as the home of its fake kernel, and torch checks it.
    global _fake_registered  # noqa: PLW0603
    if _fake_registered:
        return
    import torch  # noqa: PLC0415

    torch.library.register_fake(_OP, _pad_stack_fake)
    _fake_registered = True


def _main(argv: list[str]) -> int:
    verbose = "-v" in argv or "--verbose" in argv
    try:
        import torch  # noqa: F401, PLC0415 - imported first: not part of the load time below
    except ImportError:
        print("batched.torch_ops: torch is not installed", file=sys.stderr)
        return 1
    started = time.monotonic()
    ok = load(verbose=verbose)
    elapsed = time.monotonic() - started
    if not ok:
        print(f"batched.torch_ops: the native op is not available: {_reason}", file=sys.stderr)
        return 1
    print(f"batched.torch_ops: loaded in {elapsed:.2f} s: {_so_path or '(registered by someone else)'}")
    print(f"CUDA kernel: {'yes' if _cuda_kernel else 'no (' + _cuda_reason + ')'}")
    return 0


# Torch imports this module by name when it needs the fake kernel of an op that was
# loaded some other way (m.set_python_module): register it then.
if __name__ != "__main__" and "torch" in sys.modules:
    try:
        if _op_registered():
            _register_fake()
    except Exception:  # noqa: BLE001, S110 - best effort; load() registers it too
        pass

if __name__ == "__main__":
    # Run the imported module's copy, so that the fake kernel is registered from
    # "batched.torch_ops", not "__main__".
    from batched import torch_ops as _module

    sys.exit(_module._main(sys.argv[1:]))

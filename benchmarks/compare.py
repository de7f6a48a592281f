"""Side-by-side benchmark of the threaded, asyncio and inference APIs: this project vs `batched` 0.1.5 from PyPI.

Commands, from the repository root (any Python >= 3.9 with venv + pip; stdlib only):

    python benchmarks/compare.py                  # full run: 5 interleaved repeats (~3 min + first build)
    python benchmarks/compare.py --quick          # CI-sized smoke run: 1 repeat, short workloads
    python benchmarks/compare.py --repeats 9      # more repeats
    python benchmarks/compare.py --with-torch     # also the torch workloads (import time, infer16_torch)
    python benchmarks/compare.py --ours-python .venv/bin/python   # use an interpreter where ours is installed
    python benchmarks/compare.py --only threads32,idle_cpu       # a subset of the workloads
    python benchmarks/compare.py --only infer16_np,pad64        # the inference workloads (numpy)

Set-up is automatic.  Each implementation lives in its own venv under benchmarks/.venvs/:
    ours/    python -m venv + `pip install <repo root> numpy` (scikit-build-core build; retried with
             --no-build-isolation if the isolated build fails).  Rebuilt whenever the sources
             (csrc/, src/, CMakeLists.txt, pyproject.toml) change; `--rebuild` forces it.
    v0.1.5/  `pip install batched==0.1.5 numpy`.
numpy is installed in both because real users have it and 0.1.5 imports it at import time when
present.  With --with-torch, `torch==2.13.0` (a CPU wheel) is installed once into
benchmarks/.venvs/torch-2.13.0/ and put on PYTHONPATH of both implementations for the torch
workloads only (import_time+torch and infer16_torch), so no other workload (and no later run without
the flag) sees torch.  infer16_torch runs only with --with-torch, or when named in --only (torch is
then installed on demand).

Every measurement runs in a fresh subprocess of the right venv (benchmarks/_workloads.py), so the
two packages never share a process; runs are interleaved (ours, 0.1.5, ours, 0.1.5, ...) and the
table reports medians over the repeats and the ratio ours / 0.1.5.  The table is printed at the
end and saved, with every raw measurement, to benchmarks/results/compare.json (and .md).

Exit status: 0 when every run completed and passed its correctness checks; 1 when a run failed a
correctness check, crashed or hung (each subprocess has a timeout); 2 with --strict when a target
was missed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
VENVS = BENCH / ".venvs"
RESULTS = BENCH / "results"
WORKER = BENCH / "_workloads.py"
TORCH_SPEC = "torch==2.13.0"
TORCH_DIR = VENVS / "torch-2.13.0"
IMPLS = ("ours", "0.1.5")

WORKLOADS = ["list100k", "threads32", "threads32_t1", "aio_tasks2000", "acall_tasks2000", "aio_idle_latency0",
             "aio_idle_cpu", "aio_cancel10k", "aio_floor2000", "idle_latency0", "idle_latency5", "idle_cpu", "idle_cpu0",
             "infer16_np", "infer16_torch", "pad64", "import_time"]
# import_time+torch is the import_time workload run with torch importable (only with --with-torch).
TORCH_WORKLOADS = {"infer16_torch", "import_time+torch"}  # run with torch on PYTHONPATH
CONFIG_TEXT = {
    "list100k": "1 thread, 1 call of 100,000 ints; batch_size=64, timeout_ms=1",
    "threads32": "32 threads, single-item calls; batch_size=32, timeout_ms=5",
    "threads32_t1": "32 threads, single-item calls; batch_size=32, timeout_ms=1",
    "aio_tasks2000": "aio.dynamically, async identity; 2,000 concurrent tasks x 1 item, 10 rounds; batch_size=64, timeout_ms=5",
    "acall_tasks2000": "BatchProcessor.acall; 2,000 concurrent tasks x 1 item, 10 rounds; batch_size=64, timeout_ms=5",
    "aio_idle_latency0": "aio, lone awaits 2 ms apart; timeout_ms=0",
    "aio_idle_cpu": "aio, 2 s idle after one await; timeout_ms=5",
    "aio_cancel10k": "aio, 10,000 tasks, every other one cancelled before dispatch",
    "aio_floor2000": "no batcher: the aio_tasks2000 load with futures resolved 64 at a time (asyncio's own cost)",
    "idle_latency0": "lone calls 2 ms apart; batch_size=32, timeout_ms=0",
    "idle_latency5": "lone calls 2 ms apart; batch_size=32, timeout_ms=5",
    "idle_cpu": "2 s idle after one call; timeout_ms=5",
    "idle_cpu0": "2 s idle after one call; timeout_ms=0",
    "infer16_np": "inference.dynamically; 16 threads, closed loop, 1 row {input_ids, attention_mask} int64 [1, L], "
                  "L in 16..512, numpy; every result checked; batch_size=16, timeout_ms=5",
    "infer16_torch": "as infer16_np with CPU torch 2.13.0 tensors; batch_size=16, timeout_ms=5",
    "pad64": "padding alone: 64 rows, L in 16..512, 2 int64 features, right; ours Padder.collate, 0.1.5 "
             "stack_features; memcpy = np.copyto of the rows' bytes, same process",
    "import_time": "`import batched`, fresh interpreter, numpy installed",
    "import_time+torch": "`import batched`, fresh interpreter, torch 2.13.0 installed",
}
TIMEOUT_S = {"list100k": 180, "threads32": 120, "threads32_t1": 120, "idle_cpu": 60, "idle_cpu0": 60}  # default 120; each run is one process


@dataclass(frozen=True)
class Metric:
    workload: str
    key: str
    label: str
    fmt: Callable[[float], str]
    target_text: str = ""
    target: Callable[[float, float], bool] | None = None  # (ours, ref) -> met?
    agg: Callable[[list[float]], float] = statistics.median


def _rate(v: float) -> str:
    return f"{v:,.0f}/s"


def _us(v: float) -> str:
    return f"{v:,.1f} µs" if v < 1000 else f"{v / 1000:,.2f} ms"


def _yes(v: float) -> str:
    return "yes" if v else "no"


METRICS = [
    Metric("list100k", "items_per_s", "items/s", _rate, "≥ 50× 0.1.5", lambda o, r: o >= 50 * r),
    Metric("threads32", "items_per_s", "items/s", _rate, "≥ 5× 0.1.5", lambda o, r: o >= 5 * r),
    Metric("threads32", "p50_us", "p50 latency", _us),
    Metric("threads32", "p99_us", "p99 latency", _us, "< 0.1.5", lambda o, r: o < r),
    Metric("threads32", "avg_batch", "avg batch size", lambda v: f"{v:.1f}"),
    Metric("threads32_t1", "items_per_s", "items/s", _rate, "≥ 5× 0.1.5", lambda o, r: o >= 5 * r),
    Metric("threads32_t1", "p50_us", "p50 latency", _us),
    Metric("threads32_t1", "p99_us", "p99 latency", _us, "< 0.1.5", lambda o, r: o < r),
    Metric("threads32_t1", "avg_batch", "avg batch size", lambda v: f"{v:.1f}"),
    Metric("aio_tasks2000", "items_per_s", "items/s", _rate, "≥ 5× 0.1.5", lambda o, r: o >= 5 * r),
    Metric("aio_tasks2000", "p50_us", "p50 latency", _us),
    Metric("aio_tasks2000", "p99_us", "p99 latency", _us, "< 0.1.5", lambda o, r: o < r),
    Metric("acall_tasks2000", "items_per_s", "items/s", _rate, "≥ 5× 0.1.5", lambda o, r: o >= 5 * r),
    Metric("acall_tasks2000", "p99_us", "p99 latency", _us),
    Metric("aio_idle_latency0", "p50_us", "median latency", _us, "< 200 µs", lambda o, r: o < 200),
    Metric("aio_idle_latency0", "p99_us", "p99 latency", _us),
    Metric("aio_floor2000", "items_per_s", "items/s", _rate),
    Metric("aio_idle_cpu", "cpu_pct", "CPU while idle", lambda v: f"{v:.2f} % of a core", "< 0.5 %", lambda o, r: o < 0.5),
    Metric("aio_cancel10k", "seen_by_fn", "items the function saw", lambda v: f"{v:,.0f}", "5,000", lambda o, r: o == 5000),
    Metric("aio_cancel10k", "cancelled_seen", "cancelled items it saw", lambda v: f"{v:,.0f}", "0", lambda o, r: o == 0),
    Metric("aio_cancel10k", "left_in_queue", "left in queue", lambda v: f"{v:,.0f}", "0", lambda o, r: o == 0),
    Metric("aio_cancel10k", "asyncio_warnings", "asyncio warnings", lambda v: f"{v:,.0f}", "0", lambda o, r: o == 0),
    Metric("idle_latency0", "p50_us", "median latency", _us, "< 100 µs", lambda o, r: o < 100),
    Metric("idle_latency0", "p99_us", "p99 latency", _us),
    Metric("idle_latency5", "p50_us", "median latency", _us, "≈ 5 ms (4–6 ms)", lambda o, r: 4000 <= o <= 6000),
    Metric("idle_latency5", "p99_us", "p99 latency", _us),
    Metric("idle_cpu", "cpu_pct", "CPU while idle", lambda v: f"{v:.2f} % of a core", "< 0.5 %", lambda o, r: o < 0.5),
    Metric("idle_cpu0", "cpu_pct", "CPU while idle", lambda v: f"{v:.2f} % of a core", "< 0.5 %", lambda o, r: o < 0.5),
    Metric("infer16_np", "items_per_s", "items/s", _rate, "≥ 10× 0.1.5", lambda o, r: o >= 10 * r),
    Metric("infer16_np", "p50_us", "p50 latency", _us, "< 0.1.5", lambda o, r: o < r),
    Metric("infer16_np", "p99_us", "p99 latency", _us),
    Metric("infer16_np", "avg_batch", "avg batch size", lambda v: f"{v:.1f}"),
    Metric("infer16_torch", "items_per_s", "items/s", _rate, "≥ 10× 0.1.5", lambda o, r: o >= 10 * r),
    Metric("infer16_torch", "p50_us", "p50 latency", _us, "< 0.1.5", lambda o, r: o < r),
    Metric("infer16_torch", "p99_us", "p99 latency", _us),
    Metric("infer16_torch", "avg_batch", "avg batch size", lambda v: f"{v:.1f}"),
    Metric("pad64", "pad_us", "pad one batch", _us, "≥ 20× faster than 0.1.5", lambda o, r: 20 * o <= r),
    Metric("pad64", "memcpy_us", "memcpy of the rows' bytes", _us),
    Metric("pad64", "pad_vs_memcpy", "pad / memcpy", lambda v: f"{v:.1f}×", "≤ 3× (ours)", lambda o, r: o <= 3),
    Metric("pad64", "memcpy_out_us", "memcpy of the padded output's bytes", _us),
    Metric("import_time", "import_ms", "import time", lambda v: f"{v:.1f} ms", "< 20 ms", lambda o, r: o < 20),
    Metric("import_time", "numpy_imported", "imports numpy", _yes, "no", lambda o, r: not o, max),
    Metric("import_time", "torch_imported", "imports torch", _yes, "no", lambda o, r: not o, max),
    Metric("import_time+torch", "import_ms", "import time", lambda v: f"{v:.1f} ms", "< 20 ms", lambda o, r: o < 20),
    Metric("import_time+torch", "numpy_imported", "imports numpy", _yes, "no", lambda o, r: not o, max),
    Metric("import_time+torch", "torch_imported", "imports torch", _yes, "no", lambda o, r: not o, max),
]

_T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - _T0:7.1f}s] {msg}", flush=True)


# --------------------------------------------------------------------------- set-up


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def sh(cmd: list[str], logfile: Path, timeout: float = 1800) -> bool:
    """Run a set-up command, appending its output to logfile; True on success."""
    logfile.parent.mkdir(parents=True, exist_ok=True)
    with logfile.open("a") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n")
        fh.flush()
        try:
            rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout, cwd=ROOT).returncode
        except subprocess.TimeoutExpired:
            fh.write(f"TIMEOUT after {timeout} s\n")
            rc = -1
    return rc == 0


def tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def make_venv(venv: Path) -> Path:
    py = venv_python(venv)
    if not py.exists():
        log(f"creating venv {venv.relative_to(ROOT)}")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    return py


def probe(py: Path | str) -> tuple[str | None, str]:
    """(version of `batched` installed for py, or None; the error text when `import batched` fails)."""
    code = "import batched; from importlib.metadata import version; print(version('batched'))"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    p = subprocess.run([str(py), "-c", code], capture_output=True, text=True, env=env, cwd=BENCH)
    if p.returncode == 0:
        return p.stdout.strip(), ""
    return None, p.stderr.strip()[-3000:]


def source_hash() -> str:
    h = hashlib.sha256()
    paths = [ROOT / "CMakeLists.txt", ROOT / "pyproject.toml"]
    for top in ("csrc", "src"):
        paths += sorted(p for p in (ROOT / top).rglob("*") if p.is_file())
    for p in paths:
        if not p.is_file() or "__pycache__" in p.parts or p.suffix in {".so", ".pyd", ".o", ".pyc"}:
            continue
        h.update(str(p.relative_to(ROOT)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def ensure_ours(args: argparse.Namespace) -> str:
    if args.ours_python:
        py = os.path.abspath(os.path.expanduser(args.ours_python))  # no resolve(): keep the venv
        version, err = probe(py)
        if version is None:
            sys.exit(f"error: `import batched` fails for {py}:\n{err}")
        return py
    venv = VENVS / "ours"
    py = make_venv(venv)
    stamp, logfile = venv / "batched-source.sha256", VENVS / "ours-install.log"
    want = source_hash()
    have = stamp.read_text().strip() if stamp.exists() else ""
    if not args.rebuild and have == want and probe(py)[0]:
        log("ours: venv up to date with the sources")
        return str(py)
    log(f"ours: building and installing {ROOT} into {venv.relative_to(ROOT)} (compiles the C++ core; log: "
        f"{logfile.relative_to(ROOT)})")
    logfile.write_text("")
    pip = [str(py), "-m", "pip", "install", "--disable-pip-version-check"]
    sh([str(py), "-m", "pip", "uninstall", "-y", "batched"], logfile)
    # A build folder of our own: never races a developer's build in build/, and rebuilds incrementally.
    pip_ours = pip + ["-C", f"build-dir={VENVS / 'ours-build'}", str(ROOT)]
    ok = sh(pip + ["numpy"], logfile) and sh(pip_ours, logfile)
    if not ok:
        log("ours: isolated build failed; retrying with --no-build-isolation")
        requires = ["scikit-build-core", "cython>=3"]
        try:
            import tomllib

            requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
        except Exception:  # noqa: BLE001 (python < 3.11 or no build-system table: use the defaults)
            pass
        ok = sh(pip + list(requires), logfile) and sh(pip_ours[:-1] + ["--no-build-isolation", str(ROOT)], logfile)
    if not ok:
        print(tail(logfile), file=sys.stderr)
        sys.exit("error: could not install this project (see the log above)")
    version, err = probe(py)
    if version is None:
        sys.exit(f"error: this project installed, but `import batched` fails in {venv}:\n{err}")
    stamp.write_text(want + "\n")
    return str(py)


def ensure_ref() -> str:
    venv = VENVS / "v0.1.5"
    py = make_venv(venv)
    if probe(py)[0] != "0.1.5":
        log("0.1.5: pip install batched==0.1.5 numpy")
        logfile = VENVS / "v0.1.5-install.log"
        if not sh([str(py), "-m", "pip", "install", "--disable-pip-version-check", "batched==0.1.5", "numpy"], logfile):
            print(tail(logfile), file=sys.stderr)
            sys.exit("error: could not install batched==0.1.5")
    return str(py)


def ensure_torch(py: str) -> Path:
    """Installs torch once with the pip of `py` (the 0.1.5 venv: same Python as ours unless --ours-python)."""
    marker = TORCH_DIR / ".installed"
    if not marker.exists():
        log(f"installing {TORCH_SPEC} (CPU wheel) into {TORCH_DIR.relative_to(ROOT)}")
        logfile = VENVS / "torch-install.log"
        cmd = [py, "-m", "pip", "install", "--disable-pip-version-check", "--target", str(TORCH_DIR),
               TORCH_SPEC]
        if not sh(cmd, logfile):
            print(tail(logfile), file=sys.stderr)
            sys.exit(f"error: could not install {TORCH_SPEC}")
        marker.write_text(TORCH_SPEC + "\n")
    return TORCH_DIR


# --------------------------------------------------------------------------- runs


def run_one(py: str, workload: str, quick: bool, torch_path: Path | None) -> dict:
    """Run one measurement in a fresh interpreter; always returns a result dict."""
    name = "import_time" if workload == "import_time+torch" else workload
    timeout = TIMEOUT_S.get(name, 120)
    cmd = [py, str(WORKER), name, "--hang-dump-s", str(timeout - 10)] + (["--quick"] if quick else [])
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if torch_path is not None:
        env["PYTHONPATH"] = str(torch_path)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=BENCH,
                            start_new_session=True)
    timed_out = False
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
        out, err = proc.communicate()
    res: dict = {}
    for line in reversed(out.strip().splitlines()):
        if line.startswith("{"):
            try:
                res = json.loads(line)
                break
            except json.JSONDecodeError:
                pass
    res.setdefault("metrics", {})
    res.setdefault("errors", [])
    res.setdefault("info", {})
    if not res.get("workload"):
        res["errors"].append(f"no result (exit status {proc.returncode})")
    if timed_out:
        where = "after printing its result (shutdown/exit hang)" if res.get("workload") else "(hang?)"
        res["errors"].append(f"timed out after {timeout} s {where}")
    elif proc.returncode != 0 and not res["errors"]:
        res["errors"].append(f"exit status {proc.returncode} (crash at exit?)")
    if res["errors"]:
        res["stderr_tail"] = err[-6000:]
    res["workload"] = workload
    res["ok"] = not res["errors"]
    res["wall_s"] = time.perf_counter() - t0
    return res


def summarize(workloads: list[str], runs: list[dict]) -> list[dict]:
    rows = []
    for m in METRICS:
        if m.workload not in workloads:
            continue
        vals = {impl: [r["metrics"][m.key] for r in runs
                       if r["impl"] == impl and r["workload"] == m.workload and r["ok"] and m.key in r["metrics"]]
                for impl in IMPLS}
        med = {impl: (m.agg(v) if v else None) for impl, v in vals.items()}
        o, r = med["ours"], med["0.1.5"]
        ratio = o / r if o is not None and r else None
        met = None
        if m.target is not None and o is not None and (r is not None or "0.1.5" not in m.target_text):
            met = m.target(o, r if r is not None else float("nan"))
        rows.append({"workload": m.workload, "config": CONFIG_TEXT[m.workload], "metric": m.label, "key": m.key,
                     "ours": o, "ref": r, "ratio": ratio, "target": m.target_text, "met": met,
                     "n_ours": len(vals["ours"]), "n_ref": len(vals["0.1.5"])})
    return rows


def to_markdown(rows: list[dict], failed: set[tuple[str, str]]) -> str:
    """failed: the (workload, impl) pairs with a failed run; their missing medians read FAILED."""
    fmt = {(m.workload, m.key): m.fmt for m in METRICS}
    lines = ["| workload | config | metric | ours | 0.1.5 | ours / 0.1.5 | target | met |",
             "|---|---|---|---:|---:|---:|---|:---:|"]
    last = None
    for row in rows:
        f = fmt[(row["workload"], row["key"])]
        show = row["workload"] != last
        last = row["workload"]
        ratio = "" if row["ratio"] is None or row["key"].endswith("_imported") else f"{row['ratio']:.2f}×"
        met = {True: "✅", False: "❌", None: ""}[row["met"]]
        ours, ref = (f(row[k]) if row[k] is not None else "FAILED" if (row["workload"], impl) in failed else "—"
                     for k, impl in (("ours", "ours"), ("ref", "0.1.5")))
        lines.append(f"| {row['workload'] if show else ''} | {row['config'] if show else ''} | {row['metric']} | "
                     f"{ours} | {ref} | {ratio} | {row['target']} | {met} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=None, help="interleaved repeats (default 5; 1 with --quick)")
    ap.add_argument("--quick", action="store_true", help="CI-sized smoke run: short workloads, 1 repeat")
    ap.add_argument("--with-torch", action="store_true",
                    help=f"also the torch workloads (import time, infer16_torch) with {TORCH_SPEC} importable")
    ap.add_argument("--ours-python", metavar="PATH", help="interpreter where this project is already installed")
    ap.add_argument("--rebuild", action="store_true", help="reinstall ours into its venv even if up to date")
    ap.add_argument("--only", metavar="W1,W2", help=f"subset of: {','.join(WORKLOADS)}")
    ap.add_argument("--strict", action="store_true", help="exit 2 when a target is missed")
    ap.add_argument("--out", type=Path, default=RESULTS / "compare.json", help="where to save the JSON results")
    args = ap.parse_args()
    repeats = args.repeats or (1 if args.quick else 5)
    if args.only:
        workloads = [w.strip() for w in args.only.split(",") if w.strip()]  # named torch workloads run
    else:
        workloads = [w for w in WORKLOADS if args.with_torch or w not in TORCH_WORKLOADS]
    unknown = set(workloads) - set(WORKLOADS)
    if unknown:
        ap.error(f"unknown workload(s): {', '.join(sorted(unknown))}")
    pys = {"ours": ensure_ours(args), "0.1.5": ensure_ref()}
    if args.with_torch and "import_time" in workloads:
        workloads = workloads + ["import_time+torch"]
    torch_path = ensure_torch(pys["0.1.5"]) if TORCH_WORKLOADS & set(workloads) else None
    versions = {impl: probe(py)[0] for impl, py in pys.items()}
    for impl, py in pys.items():
        log(f"{impl}: batched {versions[impl]} via {py}")
    if versions["0.1.5"] != "0.1.5":
        sys.exit("error: the reference venv does not hold batched 0.1.5")

    runs: list[dict] = []
    total = repeats * len(workloads) * len(IMPLS)
    for rep in range(1, repeats + 1):
        for w in workloads:
            for impl in IMPLS:  # interleaved: ours, 0.1.5, ours, 0.1.5, ...
                res = run_one(pys[impl], w, args.quick, torch_path if w in TORCH_WORKLOADS else None)
                res.update(impl=impl, repeat=rep)
                runs.append(res)
                shown = ", ".join(f"{k}={v:,.4g}" for k, v in res["metrics"].items())
                status = "ok" if res["ok"] else "FAILED: " + " | ".join(e.splitlines()[0] for e in res["errors"])
                log(f"[{len(runs)}/{total}] rep {rep} {w:<18} {impl:<6} {shown}  ({res['wall_s']:.1f}s) {status}")
                if not res["ok"] and res.get("stderr_tail"):
                    print("    stderr tail:\n    " + res["stderr_tail"][-3000:].replace("\n", "\n    "), flush=True)

    rows = summarize(workloads, runs)
    failures = [r for r in runs if not r["ok"]]
    table = to_markdown(rows, {(r["workload"], r["impl"]) for r in failures})
    checked = [r for r in rows if r["met"] is not None]
    missed = [r for r in checked if not r["met"]]
    header = (f"## batched: this project vs 0.1.5 (threaded, asyncio and inference APIs)\n\n"
              f"Medians of {repeats} interleaved repeat(s){' (--quick)' if args.quick else ''}; "
              f"ours = {versions['ours']}, Python {platform.python_version()}, {os.cpu_count()} CPUs, "
              f"{platform.machine()}.\n")
    md = f"{header}\n{table}\n\ntargets met: {len(checked) - len(missed)}/{len(checked)}" + \
         (f"; runs failed: {len(failures)}" if failures else "") + "\n"

    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "repeats": repeats, "quick": args.quick,
            "with_torch": args.with_torch, "python": platform.python_version(), "cpus": os.cpu_count(),
            "platform": platform.platform(), "interpreters": pys, "versions": versions}
    args.out.write_text(json.dumps({"meta": meta, "summary": rows, "runs": runs}, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(md)
    print("\n" + md, flush=True)
    log(f"saved {args.out} and {args.out.with_suffix('.md')}")

    if failures:
        print(f"FAILED: {len(failures)} run(s) failed a correctness check, crashed or hung:", file=sys.stderr)
        for r in failures:
            print(f"  rep {r['repeat']} {r['workload']} {r['impl']}: {' | '.join(r['errors'])}", file=sys.stderr)
        return 1
    if missed and args.strict:
        print(f"missed {len(missed)} target(s) (--strict)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

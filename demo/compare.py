"""Side by side at one client count: no batching, ``batched`` 0.1.5, and this project.

    python demo/compare.py --v015 /tmp/h1-v015 [--ours src] [--clients 64] [--seconds 10] \
        [--repeats 5] [--batch-size 64] [--timeout-ms 10] [--out results/]
    python demo/compare.py --variants none,t0,t5,t10,t20,adaptive --clients 64 --repeats 3

Each run is one ``demo/loadtest.py`` (its own server, same app code); the
variants are interleaved, in a rotating order, ``--repeats`` times, and the
medians are printed. Variants: ``none`` (no batching), ``0.1.5`` (needs
``--v015``: a folder holding batched 0.1.5, ``pip install --no-deps --target
DIR batched==0.1.5``, put first on PYTHONPATH for that variant), ``ours``
(this project at ``--timeout-ms``), ``t<ms>`` (this project at that
timeout), ``adaptive`` (this project, ``adaptive=True`` with ``--timeout-ms``
the longest wait). ``--ours``: a folder put first on PYTHONPATH for this
project (default: the installed package). The demo's other dependencies come
from this interpreter's environment.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run_one(variant: str, args: argparse.Namespace, out: Path, rate: float | None = None, seed: int = 0) -> dict:
    """One demo/loadtest.py run of ``variant``: ``args.clients`` closed-loop
    clients, or with ``rate``, Poisson arrivals (demo/open_loop.py)."""
    path = args.v015 if variant == "0.1.5" else args.ours
    mode = {"none": "none", "adaptive": "adaptive"}.get(variant, "batched")
    timeout_ms = float(variant[1:]) if variant.startswith("t") else args.timeout_ms
    env = dict(os.environ)
    parts = [p for p in (path, env.get("PYTHONPATH")) if p]
    if parts:
        env["PYTHONPATH"] = os.pathsep.join(parts)
    cmd = [sys.executable, str(HERE / "loadtest.py"), "--mode", mode,
           "--seconds", str(args.seconds), "--warmup-s", str(args.warmup_s),
           "--batch-size", str(args.batch_size), "--timeout-ms", str(timeout_ms), "--model", args.model,
           "--json", str(out)]
    cmd += ["--rate", str(rate), "--seed", str(seed)] if rate is not None else ["--clients", str(args.clients)]
    for a in args.server_arg:
        cmd += ["--server-arg", a]
    rc = subprocess.run(cmd, env=env).returncode
    res = json.loads(out.read_text()) if out.exists() else {}
    res["variant"], res["rc"] = variant, rc
    return res


def add_run_options(ap: argparse.ArgumentParser, *, seconds: float, warmup_s: float, repeats: int) -> None:
    """The options run_one reads: the builds, the load's length, the server's settings
    (this script's and demo/open_loop.py's)."""
    ap.add_argument("--v015", default=None, help="folder with batched 0.1.5 (pip install --target)")
    ap.add_argument("--ours", default=None, help="folder with this project's batched (default: installed)")
    ap.add_argument("--seconds", type=float, default=seconds)
    ap.add_argument("--warmup-s", type=float, default=warmup_s)
    ap.add_argument("--repeats", type=int, default=repeats)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--timeout-ms", type=float, default=10.0)
    ap.add_argument("--model", choices=("auto", "real", "synthetic"), default="auto")
    ap.add_argument("--server-arg", action="append", default=[], help="extra argument for demo/app.py")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python demo/compare.py", description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default="none,0.1.5,ours",
                    help="comma-separated: none, 0.1.5, ours, t<timeout_ms>, adaptive (default none,0.1.5,ours)")
    ap.add_argument("--clients", type=int, default=64)
    add_run_options(ap, seconds=10.0, warmup_s=3.0, repeats=5)
    ap.add_argument("--out", type=Path, default=Path("build/demo-results"))
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in variants:
        if v not in ("none", "0.1.5", "ours", "adaptive") and not (v.startswith("t") and _is_number(v[1:])):
            ap.error(f"unknown variant {v!r}: none, 0.1.5, ours, t<timeout_ms> or adaptive")
    if "0.1.5" in variants and args.v015 is None:
        ap.error("the variant 0.1.5 needs --v015 DIR")
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for r in range(args.repeats):
        turn = r % len(variants)
        for variant in variants[turn:] + variants[:turn]:
            runs[variant].append(run_one(variant, args, args.out / f"{variant}-{args.clients}-{r}.json"))

    def med(v: str, key: str) -> float:
        vals = [x[key] for x in runs[v] if x.get(key) is not None]
        return statistics.median(vals) if vals else float("nan")

    summary = {v: {k: med(v, k) for k in ("throughput_rps", "p50_ms", "p99_ms", "avg_batch_size",
                                         "server_cpu_s_per_s")} for v in runs}
    for v in runs:
        summary[v]["all_throughput_rps"] = [round(x.get("throughput_rps", float("nan")), 1) for x in runs[v]]
        summary[v]["all_p99_ms"] = [round(x.get("p99_ms", float("nan")), 1) for x in runs[v]]
        summary[v]["failed_runs"] = sum(1 for x in runs[v] if x["rc"] != 0)
        summary[v]["batched_version"] = next((x.get("batched_version") for x in runs[v]), None)
    (args.out / f"summary-{args.clients}.json").write_text(json.dumps(summary, indent=2) + "\n")

    print(f"\nmedians of {args.repeats} interleaved runs, {args.clients} clients, "
          f"batch_size={args.batch_size}, timeout_ms={args.timeout_ms:g}")
    print(f"{'variant':<8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'avg batch':>10}  runs (req/s)")
    for v in runs:
        s = summary[v]
        ab = "" if s["avg_batch_size"] != s["avg_batch_size"] else f"{s['avg_batch_size']:.1f}"
        print(f"{v:<8} {s['throughput_rps']:>8.1f} {s['p50_ms']:>8.1f} {s['p99_ms']:>8.1f} {ab:>10}  "
              f"{s['all_throughput_rps']}")
    if all(v in runs for v in ("ours", "none", "0.1.5")):
        o, n, old = (summary[v]["throughput_rps"] for v in ("ours", "none", "0.1.5"))
        print(f"ours / none: {o / n:.2f}x   ours / 0.1.5: {o / old:.2f}x   "
              f"p99 ours {summary['ours']['p99_ms']:.0f} ms vs none {summary['none']['p99_ms']:.0f}, "
              f"0.1.5 {summary['0.1.5']['p99_ms']:.0f}")
    fixed = [v for v in runs if v.startswith("t") or v == "ours"]
    if "adaptive" in runs and fixed:
        best = max(fixed, key=lambda v: summary[v]["throughput_rps"])
        a = summary["adaptive"]
        print(f"adaptive / best fixed ({best}): {a['throughput_rps'] / summary[best]['throughput_rps']:.2f}x req/s; "
              f"p50 {a['p50_ms']:.1f} ms vs {summary[best]['p50_ms']:.1f} ms")
    if "adaptive" in runs and "none" in runs:
        print(f"adaptive p50 / none p50: {summary['adaptive']['p50_ms'] / summary['none']['p50_ms']:.2f}x")
    return 0 if all(summary[v]["failed_runs"] == 0 for v in runs) else 1


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())

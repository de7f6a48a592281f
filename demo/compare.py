"""Side by side at one client count: no batching, ``batched`` 0.1.5, and this project.

    python demo/compare.py --v015 /tmp/h1-v015 [--ours src] [--clients 64] [--seconds 10] \
        [--repeats 5] [--batch-size 64] [--timeout-ms 10] [--out results/]

Each run is one ``demo/loadtest.py`` (its own server, same app code); the three
variants are interleaved, in a rotating order, ``--repeats`` times, and the
medians are printed. ``--v015``: a folder holding batched 0.1.5 (``pip install
--no-deps --target DIR batched==0.1.5``), put first on PYTHONPATH for that
variant; ``--ours``: a folder put first on PYTHONPATH for this project (default:
the installed package). The demo's other dependencies come from this
interpreter's environment.
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


def run_one(variant: str, path: str | None, args: argparse.Namespace, out: Path) -> dict:
    env = dict(os.environ)
    parts = [p for p in (path, env.get("PYTHONPATH")) if p]
    if parts:
        env["PYTHONPATH"] = os.pathsep.join(parts)
    cmd = [sys.executable, str(HERE / "loadtest.py"), "--mode", "none" if variant == "none" else "batched",
           "--clients", str(args.clients), "--seconds", str(args.seconds), "--warmup-s", str(args.warmup_s),
           "--batch-size", str(args.batch_size), "--timeout-ms", str(args.timeout_ms), "--model", args.model,
           "--json", str(out)]
    for a in args.server_arg:
        cmd += ["--server-arg", a]
    rc = subprocess.run(cmd, env=env).returncode
    res = json.loads(out.read_text()) if out.exists() else {}
    res["variant"], res["rc"] = variant, rc
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python demo/compare.py", description=__doc__.splitlines()[0])
    ap.add_argument("--v015", required=True, help="folder with batched 0.1.5 (pip install --target)")
    ap.add_argument("--ours", default=None, help="folder with this project's batched (default: installed)")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--warmup-s", type=float, default=3.0)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--timeout-ms", type=float, default=10.0)
    ap.add_argument("--model", choices=("auto", "real", "synthetic"), default="auto")
    ap.add_argument("--server-arg", action="append", default=[])
    ap.add_argument("--out", type=Path, default=Path("build/demo-results"))
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    variants = [("none", args.ours), ("0.1.5", args.v015), ("ours", args.ours)]
    runs: dict[str, list[dict]] = {v: [] for v, _ in variants}
    for r in range(args.repeats):
        order = variants[r % 3:] + variants[:r % 3]
        for variant, path in order:
            res = run_one(variant, path, args, args.out / f"{variant}-{args.clients}-{r}.json")
            runs[variant].append(res)

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
    o, n, old = (summary[v]["throughput_rps"] for v in ("ours", "none", "0.1.5"))
    print(f"ours / none: {o / n:.2f}x   ours / 0.1.5: {o / old:.2f}x   "
          f"p99 ours {summary['ours']['p99_ms']:.0f} ms vs none {summary['none']['p99_ms']:.0f}, "
          f"0.1.5 {summary['0.1.5']['p99_ms']:.0f}")
    return 0 if all(summary[v]["failed_runs"] == 0 for v in runs) else 1


if __name__ == "__main__":
    sys.exit(main())

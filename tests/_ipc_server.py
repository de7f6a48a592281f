"""A model process for test_ipc.py: serves one processor under a name until
it is stopped (SIGTERM) or killed.

    python tests/_ipc_server.py KIND NAME [LOG]

KIND:
  echo   items (client, i) -> (client, i, how many clients the batch mixed)
  negate items x -> ~x, batches of up to 256
  slow   items x -> ~x, 0.3 s per batch of at most 4; each batch's items are
         appended to LOG (one JSON line per batch) before it runs
  model  inference: rows of input_ids -> their sums (padding with 0)
  async  batched.aio with an async def: x -> x + 1
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import batched
from batched import aio

kind, name = sys.argv[1], sys.argv[2]
log = sys.argv[3] if len(sys.argv) > 3 else None

if kind == "echo":

    @batched.dynamically(batch_size=256, timeout_ms=2)
    def served(items: list) -> list:
        clients = len({c for c, _ in items})
        return [(c, i, clients) for c, i in items]

elif kind == "negate":

    @batched.dynamically(batch_size=256, timeout_ms=1)
    def served(items: list) -> list:
        return [~x for x in items]

elif kind == "slow":

    @batched.dynamically(batch_size=4, timeout_ms=0)
    def served(items: list) -> list:
        if log:
            with open(log, "a") as f:
                f.write(json.dumps(items) + "\n")
        time.sleep(0.3)
        return [~x for x in items]

elif kind == "model":

    @batched.inference.dynamically(batch_size=32, timeout_ms=2, pad_tokens={"input_ids": 0})
    def served(features: dict) -> object:
        return features["input_ids"].sum(axis=1)

elif kind == "async":

    @aio.dynamically(batch_size=32, timeout_ms=2)
    async def served(items: list) -> list:
        await asyncio.sleep(0)
        return [x + 1 for x in items]

else:
    raise SystemExit(f"unknown kind {kind!r}")

print("serving", flush=True)
batched.serve(served, name)
print("stopped", flush=True)

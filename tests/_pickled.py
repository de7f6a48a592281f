"""Module-level batch functions and classes for test_pickle.py: importable by
name, as a process pool's children (spawn) need them."""

from __future__ import annotations

import threading
import time
from typing import Any

import batched
from batched import aio


def triple(items: list[int]) -> list[int]:
    return [x * 3 for x in items]


@batched.dynamically(batch_size=16, timeout_ms=5)
def double(items: list[int]) -> list[int]:
    time.sleep(0.002)  # long enough for callers to queue up: batches form
    return [x * 2 for x in items]


@aio.dynamically(batch_size=16, timeout_ms=5)
async def add_one(items: list[int]) -> list[int]:
    return [x + 1 for x in items]


class Scaler:
    def __init__(self, factor: int) -> None:
        self.factor = factor

    @batched.dynamically(batch_size=8, timeout_ms=1)
    def scale(self, items: list[int]) -> list[int]:
        return [x * self.factor for x in items]


def sizes_seen(proc: Any) -> list[int]:
    return sorted(proc.stats.batch_size_histogram)


def call_from_threads(proc: Any, threads: int = 16, calls: int = 20) -> dict[str, Any]:
    """In a pool's child: ``threads`` threads call ``proc`` with their own
    items; every result checked; what the child's processor did."""
    bad: list[str] = []

    def caller(t: int) -> None:
        for i in range(calls):
            x = t * 1000 + i
            got = proc(x)
            want = proc.batch_func([x])[0]
            if got != want:
                bad.append(f"thread {t}: {x} -> {got}, expected {want}")

    ts = [threading.Thread(target=caller, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    s = proc.stats
    return {"bad": bad, "processed": s.total_processed, "largest_batch": max(s.batch_size_histogram or {0: 0})}


def call_module_function_from_threads() -> dict[str, Any]:
    return call_from_threads(double)


GATE = threading.Event()  # held_triple's batches wait for it
ENTERED = threading.Event()


def held_triple(items: list[int]) -> list[int]:
    ENTERED.set()
    if not GATE.wait(60):
        raise RuntimeError("the gate never opened")
    return triple(items)

"""Property tests of grouping keys in the batching policy (docs/semantics.md,
section 12): the C++ KeyedPolicy driven on simulated time through
``batched._testing.PolicyModel``, as in test_policy_properties.py.

A discrete-event driver plays the Scheduler with one worker whose batches
take D (or a free worker for every batch), calls of random sizes and keys,
often skewed towards one key. It checks, from its own books:

* every batch holds calls of one key, and says which (``last_key``);
* every item of every call is sent exactly once, in its call's order;
* each key fills and times out on its own: ready() fires when some key is
  full or its oldest item has waited the timeout (or a worker came back
  to items that queued meanwhile), and never for the queue as a whole;
* fairness, with one worker: a key with items queued gets a batch within
  timeout + K * D of its last batch or of its oldest item's arrival,
  whichever is later (K: the most keys with items queued at once).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from batched._testing import IDLE, PolicyModel  # noqa: E402

SOAK = os.environ.get("BATCHED_SOAK") == "1"
US = 1000


@dataclass
class Call:
    cid: int
    at: int  # ns
    count: int
    key: int


@dataclass
class Scenario:
    batch: int
    timeout_ns: int
    run_ns: int
    one_worker: bool
    calls: list[Call]


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    batch = draw(st.integers(1, 8))
    keys = draw(st.integers(1, 12))
    weights = draw(st.sampled_from(["even", "skewed"]))
    calls = []
    for cid in range(draw(st.integers(1, 60))):
        if weights == "skewed":  # mostly key 1, now and then another
            key = 1 if draw(st.integers(0, 9)) < 7 else draw(st.integers(1, keys))
        else:
            key = draw(st.integers(1, keys))
        calls.append(Call(cid, draw(st.integers(0, 20000)) * US, draw(st.integers(1, 2 * batch + 1)), key))
    calls.sort(key=lambda c: c.at)
    return Scenario(
        batch=batch,
        timeout_ns=draw(st.sampled_from([0, draw(st.integers(0, 8000))])) * US,
        run_ns=draw(st.integers(1, 3000)) * US,
        one_worker=draw(st.booleans()),
        calls=calls,
    )


@dataclass
class Book:
    call: Call
    sent: int = 0  # items dispatched (a call's items leave in order)
    spans: list[int] = field(default_factory=list)  # dispatch times


class Driver:
    def __init__(self, sc: Scenario) -> None:
        self.sc = sc
        self.model = PolicyModel(sc.batch, sc.timeout_ns // US, aging_us=10**9)
        self.books = {c.cid: Book(c) for c in sc.calls}
        self.arrived: list[Book] = []
        self.finish: Optional[int] = None  # the one worker's running batch
        self.busy_until = IDLE
        self.last_batch: dict[int, int] = {}  # key -> when its last batch left
        self.keys_queued_max = 0

    def queued(self, key: Optional[int] = None) -> list[Book]:
        return [b for b in self.arrived if b.sent < b.call.count and (key is None or b.call.key == key)]

    def run(self) -> None:
        sc, now, ai = self.sc, 0, 0
        for _ in range(100000):
            cands = [sc.calls[ai].at] if ai < len(sc.calls) else []
            if self.finish is not None:
                cands.append(self.finish)
            elif self.queued():
                cands.append(self.model.next_deadline())
            if not cands:
                assert not self.queued(), "items queued with nothing to come: they would wait forever"
                return
            now = max(now, min(cands))
            if self.finish == now:
                self.finish, self.busy_until = None, now
            while ai < len(sc.calls) and sc.calls[ai].at == now:
                c = sc.calls[ai]
                self.model.add(c.cid, c.count, 0, None, now, None, c.key)
                self.arrived.append(self.books[c.cid])
                ai += 1
            self.dispatch(now)
        raise AssertionError("the driver does not progress")

    def expected_ready(self, now: int, busy: int) -> bool:
        for key in {b.call.key for b in self.queued()}:
            mine = self.queued(key)
            if sum(b.call.count - b.sent for b in mine) >= self.sc.batch:
                return True
            oldest = min(b.call.at for b in mine)
            if now >= oldest + self.sc.timeout_ns or (busy != IDLE and oldest <= busy):
                return True
        return False

    def dispatch(self, now: int) -> None:
        while self.finish is None:
            busy = self.busy_until if self.sc.one_worker else IDLE
            reason = self.model.ready(now, busy)
            assert (reason is not None) == self.expected_ready(now, busy), (now, reason)
            if reason is None:
                return
            keys_queued = {b.call.key for b in self.queued()}
            self.check_fair(now, keys_queued)
            spans = self.model.pop(now, reason)
            key = self.model.last_key
            assert spans and sum(n for _, _, n in spans) <= self.sc.batch
            for cid, begin, n in spans:
                b = self.books[cid]
                assert b.call.key == key, f"call {cid} of key {b.call.key} in a batch of key {key}"
                assert begin == b.sent, f"call {cid}: items out of order"
                b.sent += n
                b.spans.append(now)
            self.last_batch[key] = now
            if self.sc.one_worker:
                self.finish = now + self.sc.run_ns
                self.busy_until = IDLE

    def check_fair(self, now: int, keys_queued: set[int]) -> None:
        """Before a batch leaves at `now` (one worker): no key has waited past its bound."""
        if not self.sc.one_worker:
            return
        self.keys_queued_max = max(self.keys_queued_max, len(keys_queued))
        k = self.keys_queued_max  # the most keys queued at once so far: each may be served ahead once
        for key in keys_queued:
            oldest = min(b.call.at for b in self.queued(key))
            since = max(self.last_batch.get(key, 0), oldest)
            bound = since + self.sc.timeout_ns + k * self.sc.run_ns
            assert now <= bound, (
                f"key {key} waited since {since} ns, now {now} ns, past {bound} ns ({k} keys queued)")

    def check_outcome(self) -> None:
        for b in self.books.values():
            assert b.sent == b.call.count, (b.call, b.sent)
        assert self.model.size() == 0


COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@settings(max_examples=400 * (20 if SOAK else 1), **COMMON)
@given(scenarios())
def test_keys_never_mix_fill_on_their_own_and_are_served_fairly(sc: Scenario) -> None:
    d = Driver(sc)
    d.run()
    d.check_outcome()


def test_model_keys_on_explicit_time() -> None:
    m = PolicyModel(4, 5000, aging_us=10**9)
    m.add("a", 3, 0, None, 0, None, 1)
    m.add("b", 3, 0, None, 0, None, 2)
    assert m.ready(4_999_999) is None  # 6 items queued, but 3 per key
    m.add("c", 1, 0, None, 1000, None, 1)
    assert m.ready(1000) == "full"
    assert m.pop(1000, "full") == [("a", 0, 3), ("c", 0, 1)] and m.last_key == 1
    assert m.ready(5_000_000) == "timeout"
    assert m.pop(5_000_000, "timeout") == [("b", 0, 3)] and m.last_key == 2

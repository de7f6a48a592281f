"""Property tests of deadlines in the batching policy (docs/semantics.md,
section 11): the C++ BatchPolicy driven on simulated time through
``batched._testing.PolicyModel``, as in test_policy_properties.py.

A discrete-event driver plays the Scheduler: a fixed service estimate S (a
batch takes S from dispatch to hand-out, and the policy is told so), workers
that each run a batch for S, calls with and without deadlines. At every event
time (an arrival, a worker returning, the policy's next_deadline() and, just
after, its next_expiry()) it expires first, then pops while a batch is ready,
as the Scheduler does. It checks, from its own books:

* no item is ever sent that cannot finish by its call's deadline (dispatch +
  S <= deadline), and no call expires while it still could (now > deadline - S);
* every item of every call is sent exactly once or expired exactly once, and
  an expired call has nothing left queued;
* a batch sent for the deadline rule starts with the queued call of the
  earliest deadline, and leaves no earlier than that call's latest send time;
* with a free worker whenever one is needed, a call expires only if it could
  not make it even when sent on arrival.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from batched._testing import IDLE, NEVER, PolicyModel  # noqa: E402

SOAK = os.environ.get("BATCHED_SOAK") == "1"
US = 1000
GUARD_NS = 5_000_000  # BatchPolicy::kDeadlineGuardNs


@dataclass
class Call:
    cid: int
    at: int  # ns
    count: int
    priority: int
    deadline: Optional[int]  # ns, absolute


@dataclass
class Scenario:
    batch: int
    timeout_ns: int
    aging_ns: int
    service_ns: int
    workers: Optional[int]  # None: a free worker for every batch
    calls: list[Call]


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    batch = draw(st.integers(1, 8))
    service = draw(st.integers(0, 6000)) * US
    calls = []
    for cid in range(draw(st.integers(1, 30))):
        at = draw(st.integers(0, 20000)) * US
        deadline = None
        if draw(st.integers(0, 3)) > 0:
            deadline = at + draw(st.integers(0, 25000)) * US
        calls.append(Call(cid, at, draw(st.integers(1, 2 * batch + 1)), draw(st.integers(0, 2)), deadline))
    calls.sort(key=lambda c: c.at)
    return Scenario(
        batch=batch,
        timeout_ns=draw(st.sampled_from([0, draw(st.integers(0, 30000)), 10**9])) * US,
        aging_ns=draw(st.sampled_from([0, draw(st.integers(0, 20000)), 10**9])) * US,
        service_ns=service,
        workers=draw(st.sampled_from([None, 1, 2])),
        calls=calls,
    )


@dataclass
class Book:
    call: Call
    sent: list[int] = field(default_factory=list)  # item indexes, in dispatch order
    expired: int = 0  # items taken out unsent
    expired_at: Optional[int] = None


class Driver:
    def __init__(self, sc: Scenario) -> None:
        self.sc = sc
        self.model = PolicyModel(sc.batch, sc.timeout_ns // US, aging_us=sc.aging_ns // US)
        self.model.set_service_ns(sc.service_ns)
        self.books = {c.cid: Book(c) for c in sc.calls}
        self.arrived: list[Book] = []
        self.finish: list[Optional[int]] = [None] * (sc.workers or 0)
        self.busy_until: list[int] = [IDLE] * (sc.workers or 0)

    def queued(self) -> list[Book]:
        return [b for b in self.arrived if len(b.sent) + b.expired < b.call.count]

    def run(self) -> None:
        sc, now, ai = self.sc, 0, 0
        for _ in range(100000):
            cands = [sc.calls[ai].at] if ai < len(sc.calls) else []
            cands += [f for f in self.finish if f is not None]
            if self.queued():
                if sc.workers is None or None in self.finish:
                    cands.append(self.model.next_deadline())
                expiry = self.model.next_expiry()
                if expiry != NEVER:
                    cands.append(expiry + 1)  # it expires once the clock passes it
            if not cands:
                assert not self.queued(), "items queued with nothing to come: they would wait forever"
                return
            now = max(now, min(cands))
            for w, f in enumerate(self.finish):
                if f == now:
                    self.finish[w], self.busy_until[w] = None, now
            while ai < len(sc.calls) and sc.calls[ai].at == now:
                c = sc.calls[ai]
                self.model.add(c.cid, c.count, c.priority, None, now, c.deadline)
                self.arrived.append(self.books[c.cid])
                ai += 1
            self.expire(now)
            self.dispatch(now)
        raise AssertionError("the driver does not progress")

    def expire(self, now: int) -> None:
        S = self.sc.service_ns
        for cid, removed, first_left in self.model.expire(now):
            b = self.books[cid]
            d = b.call.deadline
            assert d is not None, f"call {cid} has no deadline but expired"
            assert now > d - S, f"call {cid} expired at {now} ns, it could still finish by {d} ns"
            left = b.call.count - len(b.sent)
            assert removed == left and first_left == len(b.sent), (cid, removed, first_left, b.sent)
            b.expired, b.expired_at = removed, now
        for b in self.queued():  # nothing left that can no longer make it
            d = b.call.deadline
            assert d is None or now <= d - S, f"call {b.call.cid} queued past its last chance"

    def dispatch(self, now: int) -> None:
        S = self.sc.service_ns
        while True:
            free = [None] if self.sc.workers is None else [w for w, f in enumerate(self.finish) if f is None]
            popped = False
            for w in free:
                busy = IDLE if w is None else self.busy_until[w]
                reason = self.model.ready(now, busy)
                if reason is None:
                    continue
                queued = self.queued()
                with_deadline = [b for b in queued if b.call.deadline is not None]
                first = min(with_deadline, key=lambda b: b.call.deadline) if with_deadline else None
                if reason == "deadline":
                    assert first is not None and now >= first.call.deadline - S - GUARD_NS
                spans = self.model.pop(now, reason)
                assert spans and sum(n for _, _, n in spans) <= self.sc.batch
                if first is not None and now >= first.call.deadline - S - GUARD_NS:
                    assert spans[0][0] in {b.call.cid for b in with_deadline
                                           if b.call.deadline == first.call.deadline}, (
                        f"an urgent call waits behind {spans[0]}")
                for cid, begin, n in spans:
                    b = self.books[cid]
                    d = b.call.deadline
                    assert d is None or now + S <= d, f"call {cid} sent at {now} ns cannot finish by {d} ns"
                    assert begin == len(b.sent), f"call {cid}: items out of order"
                    b.sent += range(begin, begin + n)
                if w is not None:
                    self.finish[w] = now + max(S, 1)
                popped = True
                break
            if not popped:
                return

    def check_outcome(self) -> None:
        for b in self.books.values():
            c = b.call
            assert b.sent == list(range(len(b.sent))), f"call {c.cid}: an item sent twice or out of order"
            assert len(b.sent) + b.expired == c.count, (c, b.sent, b.expired)
            if self.sc.workers is None and c.deadline is not None:
                can_make_it = c.at + self.sc.service_ns <= c.deadline
                assert (b.expired == 0) == can_make_it, (
                    f"call {c.cid}: arrived {c.at}, deadline {c.deadline}, service {self.sc.service_ns}, "
                    f"expired {b.expired} at {b.expired_at}")
        assert self.model.size() == 0 and self.model.next_expiry() == NEVER


COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@settings(max_examples=400 * (20 if SOAK else 1), **COMMON)
@given(scenarios())
def test_deadlines_never_send_late_never_expire_early_and_lose_nothing(sc: Scenario) -> None:
    d = Driver(sc)
    d.run()
    d.check_outcome()


def test_model_deadline_on_explicit_time() -> None:
    m = PolicyModel(8, 50_000)
    m.set_service_ns(3_000_000)
    m.add("a", 2, 0, None, 0, 20_000_000)
    m.add("b", 1, 0, None, 0, None)
    assert m.next_deadline() == 12_000_000  # 20 ms - 3 ms service - 5 ms guard
    assert m.next_expiry() == 17_000_000
    assert m.ready(11_999_999) is None and m.ready(12_000_000) == "deadline"
    assert m.expire(17_000_000) == []
    assert m.expire(17_000_001) == [("a", 2, 0)]
    assert m.size() == 1 and m.next_expiry() == NEVER
    assert m.pop(50_000_000, "timeout") == [("b", 0, 1)]

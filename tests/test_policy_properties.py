"""Property tests of the batching policy: the C++ BatchPolicy (csrc/batched/policy.h)
driven on simulated time through ``batched._testing.PolicyModel``.

Hypothesis draws arrival schedules, call sizes, priorities, item lengths, a
length budget or none, keep_calls_whole or not, cancellations, and how many
workers there are and how long a batch runs. A discrete-event driver plays the
part of the Scheduler: it visits every event time (arrival, cancellation, a
worker returning) and, while a worker is free, the policy's next_deadline();
at each it asks every free worker's ready() and pops while a batch is ready.
The driver keeps its own books (what arrived when, what was dispatched or
cancelled) and checks the policy against them, not against itself.

BATCHED_SOAK=1 runs many more examples.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Optional

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from batched._testing import IDLE, NEVER, PolicyModel  # noqa: E402

SOAK = os.environ.get("BATCHED_SOAK") == "1"


def examples(n: int) -> int:
    return n * 20 if SOAK else n


US = 1000  # the driver counts in microseconds; the policy in nanoseconds

# ---- scenarios ----


@dataclass
class Call:
    cid: int
    at: int  # arrival, us
    count: int
    priority: int
    lengths: Optional[list[int]]
    cancel_at: Optional[int] = None  # us, >= at


@dataclass
class Scenario:
    batch: int
    timeout_us: int
    max_age_us: int
    budget: int  # 0: none
    keep_whole: bool
    workers: Optional[int]  # None: unbounded (every batch finds an idle worker)
    run_us: int  # how long a batch runs (finite workers)
    calls: list[Call]


def rank(mode: str, count: int, threshold: int, lengths: Optional[list[int]], draw_int: int) -> int:
    """Priorities as the bridge assigns them (Engine.rank), or arbitrary ones."""
    if mode == "none":
        return 0
    if mode == "random":
        return draw_int
    small = count <= threshold
    if mode == "small_bulk" or small:
        return 0 if small else 1
    return 1 + max(lengths or [1])  # "length": bulk calls ranked by their longest item


@st.composite
def scenarios(draw: st.DrawFn, max_calls: int = 30) -> Scenario:
    batch = draw(st.integers(1, 8))
    budget = draw(st.sampled_from([0, 0, draw(st.integers(1, 24))]))
    mode = draw(st.sampled_from(["none", "small_bulk", "length", "random"]))
    threshold = draw(st.integers(1, max(1, batch)))
    with_lengths = budget > 0 or mode == "length" or draw(st.booleans())
    n = draw(st.integers(1, max_calls))
    horizon = draw(st.sampled_from([200, 2000, 20000]))  # us over which calls arrive
    calls = []
    for cid in range(n):
        at = draw(st.integers(0, horizon))
        count = draw(st.integers(1, 2 * batch + 2))
        lengths = draw(st.lists(st.integers(0, 12), min_size=count, max_size=count)) if with_lengths else None
        priority = rank(mode, count, threshold, lengths, draw(st.integers(0, 3)))
        cancel_at = None
        if draw(st.integers(0, 5)) == 0:
            cancel_at = at + draw(st.integers(0, 3000))
        calls.append(Call(cid, at, count, priority, lengths, cancel_at))
    calls.sort(key=lambda c: c.at)  # stable: ties keep the drawn order (the add order)
    workers = draw(st.sampled_from([None, 1, 1, 2]))
    return Scenario(
        batch=batch,
        timeout_us=draw(st.sampled_from([0, draw(st.integers(0, 5000))])),
        max_age_us=draw(st.sampled_from([0, draw(st.integers(0, 20000)), 10**9])),
        budget=budget,
        keep_whole=draw(st.booleans()),
        workers=workers,
        run_us=draw(st.integers(1, 3000)),
        calls=calls,
    )


# ---- the driver ----


@dataclass
class Worker:
    busy_until: int = IDLE  # ns: when its last batch returned (IDLE: never ran one)
    finish: Optional[int] = None  # ns: when the running batch returns; None: free


@dataclass
class Book:
    """The driver's own record of one call."""

    call: Call
    spans: list[tuple[int, int, int]] = field(default_factory=list)  # (time ns, begin, count)
    dispatched: int = 0
    cancelled: int = 0  # items taken out by remove()
    arrived: bool = False
    prefix_pops: int = 0  # aging bound: pops needed for the FIFO prefix up to this call

    @property
    def queued(self) -> int:
        return self.call.count - self.dispatched - self.cancelled if self.arrived else 0

    def length(self, begin: int, count: int) -> int:
        ls = self.call.lengths
        return count if ls is None else sum(ls[begin : begin + count])


class Driver:
    def __init__(self, sc: Scenario) -> None:
        self.sc = sc
        self.model = PolicyModel(
            sc.batch, sc.timeout_us, max_batch_length=sc.budget, max_age_us=sc.max_age_us,
            keep_calls_whole=sc.keep_whole,
        )
        self.books = {c.cid: Book(c) for c in sc.calls}
        self.order: list[Book] = []  # arrival (add) order
        self.batches: list[tuple[int, str, list[tuple[int, int, int]]]] = []
        self.workers = [Worker() for _ in range(sc.workers or 0)]
        self.timeout_ns = sc.timeout_us * US
        self.max_age_ns = sc.max_age_us * US
        self.run_ns = sc.run_us * US

    # what is queued, by the driver's books
    def queued_books(self) -> list[Book]:
        return [b for b in self.order if b.queued > 0]

    def free_workers(self) -> list[Worker]:
        if self.sc.workers is None:
            return [Worker()]  # unbounded: a fresh idle worker each time
        return [w for w in self.workers if w.finish is None]

    def run(self) -> None:
        arrivals = sorted(self.sc.calls, key=lambda c: c.at)  # stable
        cancels = sorted((c for c in self.sc.calls if c.cancel_at is not None), key=lambda c: c.cancel_at)
        ai = ci = 0
        now = 0
        steps = 0
        while True:
            steps += 1
            assert steps < 100000, "the driver does not progress"
            cands = []
            if ai < len(arrivals):
                cands.append(arrivals[ai].at * US)
            if ci < len(cancels):
                cands.append(cancels[ci].cancel_at * US)
            cands += [w.finish for w in self.workers if w.finish is not None]
            queued = self.queued_books()
            if queued and self.free_workers():
                deadline = self.model.next_deadline()
                # next_deadline is the oldest queued item's arrival + timeout
                oldest = min(b.call.at * US for b in queued)
                assert deadline == oldest + self.timeout_ns, (deadline, oldest)
                cands.append(deadline)
            if not cands:
                assert not queued, "items queued but no deadline and nothing to come: they would wait forever"
                break
            nxt = min(cands)
            assert nxt >= now
            now = nxt
            for w in self.workers:  # batches that return now
                if w.finish == now:
                    w.finish = None
                    w.busy_until = now
            while ai < len(arrivals) and arrivals[ai].at * US == now:
                self.arrive(arrivals[ai], now)
                ai += 1
            while ci < len(cancels) and cancels[ci].cancel_at * US == now:
                self.cancel(cancels[ci])
                ci += 1
            self.dispatch(now)
            self.check_idle_invariants(now)
        assert self.model.size() == 0
        assert self.model.next_deadline() == NEVER

    def arrive(self, c: Call, now: int) -> None:
        b = self.books[c.cid]
        # Aging bound (see test_aging_bound): pops needed to clear the FIFO
        # prefix up to and including this call, once it has aged.
        prefix = [x.queued for x in self.order if x.queued > 0] + [c.count]
        if self.sc.budget:
            b.prefix_pops = sum(prefix)  # every pop takes at least one item of it
        else:
            b.prefix_pops = sum(math.ceil(r / self.sc.batch) for r in prefix)
        self.model.add(c.cid, c.count, c.priority, c.lengths, now)
        b.arrived = True
        self.order.append(b)

    def cancel(self, c: Call) -> None:
        b = self.books[c.cid]
        expect = b.queued
        removed = self.model.remove(c.cid)
        assert removed == expect, f"remove() took {removed} items of call {c.cid}, {expect} were queued"
        b.cancelled = removed
        assert self.model.remove(c.cid) == 0  # a second cancel finds nothing

    def dispatch(self, now: int) -> None:
        progress = True
        while progress:
            progress = False
            for w in self.free_workers():
                busy = w.busy_until
                reason = self.model.ready(now, busy)
                self.check_ready(now, busy, reason)
                if reason is None:
                    continue
                before = {b.call.cid: b.queued for b in self.order if b.queued > 0}
                aged = any(now - b.call.at * US >= self.max_age_ns for b in self.order if b.queued > 0)
                spans = self.model.pop(now, reason)
                assert spans, f"ready() said {reason!r} but pop() formed an empty batch"
                self.record(now, reason, spans, before, aged)
                if self.sc.workers is not None:
                    w.finish = now + self.run_ns
                progress = True

    def check_ready(self, now: int, busy: int, reason: Optional[str]) -> None:
        """ready() fires exactly on SPEC 2.1/2.2's conditions, from the driver's books."""
        queued = self.queued_books()
        items = sum(b.queued for b in queued)
        assert self.model.size() == items
        if not queued:
            assert reason is None
            return
        length = sum(b.length(b.dispatched, b.queued) for b in queued)
        oldest = min(b.call.at * US for b in queued)
        if items >= self.sc.batch:
            expect = "full"
        elif self.sc.budget and length > self.sc.budget:
            expect = "budget"
        elif busy != IDLE and oldest <= busy:
            expect = "drain"
        elif now >= oldest + self.timeout_ns:
            expect = "timeout"
        else:
            expect = None
        assert reason == expect, (now, busy, items, length, oldest, reason, expect)

    def record(self, now: int, reason: str, spans: list[tuple[int, int, int]],
               before: dict[int, int], aged: bool) -> None:
        size = sum(n for _, _, n in spans)
        # Limits: batch size, and the length budget (a single longer item goes alone).
        assert 1 <= size <= self.sc.batch, (size, self.sc.batch)
        length = sum(self.books[cid].length(begin, n) for cid, begin, n in spans)
        if self.sc.budget:
            assert length <= self.sc.budget or size == 1, (length, self.sc.budget, spans)
        seen = set()
        for cid, begin, n in spans:
            b = self.books[cid]
            assert cid not in seen, "one call twice in a batch"
            seen.add(cid)
            assert b.arrived and b.queued >= n > 0, f"call {cid}: {n} items dispatched, {b.queued} queued"
            # per-call order: slices are contiguous and in order
            assert begin == b.dispatched, f"call {cid}: slice starts at {begin}, expected {b.dispatched}"
            b.dispatched += n
            b.spans.append((now, begin, n))
        if not aged:
            self.check_priority_order(spans, before)
        self.batches.append((now, reason, spans))

    def check_priority_order(self, spans: list[tuple[int, int, int]], before: dict[int, int]) -> None:
        """SPEC 2.4 while nothing has aged: a batch takes calls in (priority,
        arrival) order, and leaves none behind that ranks before one it took."""
        pos = {b.call.cid: i for i, b in enumerate(self.order)}
        keys = [(self.books[cid].call.priority, pos[cid]) for cid, _, _ in spans]
        assert keys == sorted(keys), f"batch not in priority/arrival order: {spans}"
        last = keys[-1]
        for cid in before:
            b = self.books[cid]
            if b.queued > 0 and cid not in {s[0] for s in spans}:
                assert (b.call.priority, pos[cid]) > last, (
                    f"call {cid} (priority {b.call.priority}) left behind by a batch that took {spans}")

    def check_idle_invariants(self, now: int) -> None:
        """With a worker free after dispatching, nothing is left that should
        have gone: fewer than a batch, within the budget, and no item that has
        waited its timeout (no batch leaves later than its deadline)."""
        if not self.free_workers():
            return
        queued = self.queued_books()
        if not queued:
            return
        assert sum(b.queued for b in queued) < self.sc.batch
        if self.sc.budget:
            assert sum(b.length(b.dispatched, b.queued) for b in queued) <= self.sc.budget
        oldest = min(b.call.at * US for b in queued)
        assert now < oldest + self.timeout_ns, f"an item queued at {oldest} ns is still queued at {now} ns"

    def check_outcome(self) -> None:
        for b in self.books.values():
            c = b.call
            # every item of every call exactly once; cancelled items never
            assert b.dispatched + b.cancelled == c.count, (c, b.dispatched, b.cancelled)
            if c.cancel_at is None:
                assert b.dispatched == c.count and b.cancelled == 0
            else:
                assert all(t <= c.cancel_at * US for t, _, _ in b.spans), "dispatched after its cancellation"
            assert self.model.taken(c.cid) == c.count
            if b.spans:
                assert b.spans[0][1] == 0
            for (_, b0, n0), (_, b1, _) in zip(b.spans, b.spans[1:]):
                assert b1 == b0 + n0


def simulate(sc: Scenario) -> Driver:
    d = Driver(sc)
    d.run()
    d.check_outcome()
    return d


# ---- the properties ----

COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@settings(max_examples=examples(400), **COMMON)
@given(scenarios())
def test_limits_exactly_once_order_and_deadlines(sc: Scenario) -> None:
    """Batches within batch_size and the budget; every item of every
    non-cancelled call exactly once, cancelled items never, slices of a call in
    order; ready() fires exactly on SPEC 2.1/2.2's conditions; next_deadline()
    is the oldest item's arrival + timeout; with a worker free, nothing waits
    past its timeout; while nothing has aged, priority then arrival order."""
    simulate(sc)


@settings(max_examples=examples(200), **COMMON)
@given(scenarios().filter(lambda s: s.keep_whole))
def test_keep_calls_whole_never_splits_a_call_that_fits(sc: Scenario) -> None:
    d = simulate(sc)
    for b in d.books.values():
        c = b.call
        fits_budget = not sc.budget or sum(c.lengths or [1] * c.count) <= sc.budget
        # A call whose own length is over the budget cannot go whole without
        # breaking the budget: the budget wins (policy.h, options.h).
        if c.count <= sc.batch and fits_budget:
            assert len(b.spans) <= 1, f"call {c.cid} of {c.count} items split: {b.spans}"


def aging_bound_ns(sc: Scenario, b: Book) -> int:
    """The longest a call may wait for its last item with one worker.

    policy.h's rule: at pop time, if the oldest queued entry (the FIFO head) has
    waited max_age, the batch takes the FIFO head first, and again for the next
    entry. Once call X (arrived at a) has waited max_age, every entry ahead of
    it in arrival order is older, hence aged too, so each pop from then on
    starts with the FIFO prefix that ends at X, and takes at least one item of
    it (the first item always goes, even over the budget or under
    keep_calls_whole). Without a budget a pop takes min(batch, rest) of the
    prefix, splitting calls at batch boundaries (with keep_calls_whole a pop
    that stops early has finished a call), so the prefix needs at most
    sum(ceil(r_i / batch)) pops over its calls' queued items r_i, counted at
    X's arrival; with a budget, at most sum(r_i) pops. That count is
    ``prefix_pops``.
    Timing with one worker that runs each batch for D: at a + max_age the
    worker is either busy (it returns within D and pops at once, by the drain
    rule, since the head was queued before it returned) or free (then it pops
    by the head's deadline, at most a + timeout). After that pop, it pops again
    each time it returns, every D. So X's last item leaves by
        a + max_age + max(D, timeout - max_age) + (prefix_pops - 1) * D:
    a bound independent of the stream of higher-priority calls arriving after X.
    """
    first = max(sc.run_us, sc.timeout_us - sc.max_age_us) * US
    return sc.max_age_us * US + first + (b.prefix_pops - 1) * sc.run_us * US


def check_aging(d: Driver) -> None:
    for b in d.books.values():
        if not b.spans or b.call.cancel_at is not None:
            continue
        waited = b.spans[-1][0] - b.call.at * US
        bound = aging_bound_ns(d.sc, b)
        assert waited <= bound, (
            f"call {b.call.cid} (priority {b.call.priority}, {b.call.count} items) waited "
            f"{waited / 1e3:.0f} us, more than the aging bound {bound / 1e3:.0f} us")


@settings(max_examples=examples(300), **COMMON)
@given(scenarios().map(lambda s: _with(s, workers=1, max_age_us=min(s.max_age_us, 20000))))
def test_aging_bound_with_one_worker(sc: Scenario) -> None:
    """Random schedules with one worker: no call waits past aging_bound_ns."""
    check_aging(simulate(sc))


@st.composite
def starving_streams(draw: st.DrawFn) -> Scenario:
    """A stream of small (priority 0) calls that fills every batch: a burst of
    exactly `batch` items every D, when the worker returns. Without aging a
    bulk (priority 1) call arriving meanwhile would wait for the end of the
    stream; the stream lasts far longer than the aging bound."""
    batch = draw(st.integers(2, 8))
    run_us = draw(st.integers(100, 2000))
    max_age_us = draw(st.integers(0, 5 * run_us))
    ticks = max_age_us // run_us + 40
    calls: list[Call] = []
    for t in range(ticks):
        left = batch
        while left:
            n = draw(st.integers(1, left))
            calls.append(Call(len(calls), t * run_us, n, 0, None))
            left -= n
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, 8 * run_us))
        n = draw(st.integers(batch + 1, 2 * batch))
        calls.append(Call(len(calls), at, n, 1, None))
    calls.sort(key=lambda c: c.at)
    return Scenario(
        batch=batch,
        timeout_us=draw(st.integers(0, run_us)),
        max_age_us=max_age_us,
        budget=0,
        keep_whole=draw(st.booleans()),
        workers=1,
        run_us=run_us,
        calls=calls,
    )


@settings(max_examples=examples(60), **COMMON)
@given(starving_streams())
def test_no_starvation_under_a_stream_of_small_calls(sc: Scenario) -> None:
    d = simulate(sc)
    check_aging(d)
    stream_end = max(c.at for c in sc.calls if c.priority == 0) * US
    for b in d.books.values():
        if b.call.priority == 1:
            assert b.spans[-1][0] < stream_end, "a bulk call waited for the stream to end"


def _with(sc: Scenario, **changes: object) -> Scenario:
    from dataclasses import replace

    return replace(sc, **changes)


# ---- a few fixed cases, so a failure of the model itself is easy to read ----


def test_model_on_explicit_time() -> None:
    m = PolicyModel(4, 5000)
    assert m.ready(0) is None and m.next_deadline() == NEVER
    m.add("a", 3, 0, None, 0)
    assert m.ready(4_999_999) is None
    assert m.next_deadline() == 5_000_000
    assert m.ready(5_000_000) == "timeout"
    assert m.ready(10, busy_until_ns=0) == "drain"
    m.add("b", 6, 1, [1, 2, 3, 4, 5, 6], 10)
    assert m.ready(10) == "full"
    assert m.pop(10, "full") == [("a", 0, 3), ("b", 0, 1)]
    assert m.remove("b") == 5 and m.remove("b") == 0 and m.size() == 0
    with pytest.raises(ValueError):
        m.add("a", 1, 0, None, 20)
    with pytest.raises(ValueError):
        m.pop(20, "soon")

"""Property tests of the batching policy: the C++ BatchPolicy (csrc/batched/policy.h)
driven on simulated time through ``batched._testing.PolicyModel``; the rules
are those of docs/semantics.md, sections 1 to 3.

Hypothesis draws arrival schedules, call sizes, the priority rule, explicit
priorities, item lengths, a length budget or none, keep_calls_whole or not,
cancellations, and how many workers there are and how long a batch runs. A discrete-event driver plays the
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
    aging_us: int
    budget: int  # 0: none
    keep_whole: bool
    workers: Optional[int]  # None: unbounded (every batch finds an idle worker)
    run_us: int  # how long a batch runs (finite workers)
    calls: list[Call]
    rule: str = "small_first"  # arrival, small_first, small_first_then_shortest
    threshold: int = 8  # small_batch_threshold
    tokens: int = 0  # max_batch_tokens (items x the longest padded length); 0: none
    multiple: int = 1  # pad_to_multiple_of, for the tokens

    @property
    def item_units(self) -> bool:
        """Shorter items first one by one (policy.h): a call's items may leave out of order."""
        return self.rule == "small_first_then_shortest" and not self.keep_whole


RULES = ["arrival", "small_first", "small_first_then_shortest"]


@st.composite
def scenarios(draw: st.DrawFn, max_calls: int = 30) -> Scenario:
    batch = draw(st.integers(1, 8))
    budget = draw(st.sampled_from([0, 0, draw(st.integers(1, 24))]))
    tokens = draw(st.sampled_from([0, 0, draw(st.integers(1, 60))]))
    rule = draw(st.sampled_from(RULES))
    explicit = draw(st.booleans())  # explicit priorities (lower first) on top of the rule
    threshold = draw(st.integers(0, max(1, batch)))
    with_lengths = budget > 0 or tokens > 0 or rule == "small_first_then_shortest" or draw(st.booleans())
    n = draw(st.integers(1, max_calls))
    horizon = draw(st.sampled_from([200, 2000, 20000]))  # us over which calls arrive
    calls = []
    for cid in range(n):
        at = draw(st.integers(0, horizon))
        count = draw(st.integers(1, 2 * batch + 2))
        lengths = draw(st.lists(st.integers(0, 12), min_size=count, max_size=count)) if with_lengths else None
        priority = draw(st.integers(0, 3)) if explicit else 0
        cancel_at = None
        if draw(st.integers(0, 5)) == 0:
            cancel_at = at + draw(st.integers(0, 3000))
        calls.append(Call(cid, at, count, priority, lengths, cancel_at))
    calls.sort(key=lambda c: c.at)  # stable: ties keep the drawn order (the add order)
    workers = draw(st.sampled_from([None, 1, 1, 2]))
    return Scenario(
        batch=batch,
        timeout_us=draw(st.sampled_from([0, draw(st.integers(0, 5000))])),
        aging_us=draw(st.sampled_from([0, draw(st.integers(0, 20000)), 10**9])),
        budget=budget,
        keep_whole=draw(st.booleans()),
        workers=workers,
        run_us=draw(st.integers(1, 3000)),
        calls=calls,
        rule=rule,
        threshold=threshold,
        tokens=tokens,
        multiple=draw(st.integers(1, 4)),
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
    taken: set[int] = field(default_factory=set)  # indexes dispatched
    cancelled: int = 0  # items taken out by remove()
    arrived: bool = False
    passed_at: Optional[int] = None  # ns: the first batch that left without it since it was last served
    ahead: int = -1  # due calls passed over as long or longer, at the first batch it was due for
    episodes: list[tuple[int, int, int]] = field(default_factory=list)  # (passed_at, served at, ahead)

    @property
    def dispatched(self) -> int:
        return len(self.taken)

    @property
    def queued(self) -> int:
        return self.call.count - self.dispatched - self.cancelled if self.arrived else 0

    def left(self) -> list[int]:
        """Indexes neither dispatched nor cancelled."""
        return [] if self.cancelled else [i for i in range(self.call.count) if i not in self.taken]

    def length(self, indexes: list[int]) -> int:
        ls = self.call.lengths
        return len(indexes) if ls is None else sum(ls[i] for i in indexes)

    def padded(self, indexes: list[int], multiple: int) -> list[int]:
        """Each item's length rounded up to `multiple` (max_batch_tokens)."""
        ls = self.call.lengths
        return [-(-(1 if ls is None else ls[i]) // multiple) * multiple for i in indexes]


class Driver:
    def __init__(self, sc: Scenario) -> None:
        self.sc = sc
        self.model = PolicyModel(
            sc.batch, sc.timeout_us, max_batch_length=sc.budget, aging_us=sc.aging_us,
            keep_calls_whole=sc.keep_whole, priority_rule=sc.rule, small_batch_threshold=sc.threshold,
            max_batch_tokens=sc.tokens, pad_to_multiple_of=sc.multiple,
        )
        self.books = {c.cid: Book(c) for c in sc.calls}
        self.order: list[Book] = []  # arrival (add) order
        self.pos: dict[int, int] = {}  # call id -> arrival position
        self.batches: list[tuple[int, str, list[tuple[int, int, int]]]] = []
        self.workers = [Worker() for _ in range(sc.workers or 0)]
        self.timeout_ns = sc.timeout_us * US
        self.aging_ns = sc.aging_us * US
        self.run_ns = sc.run_us * US

    # what is queued, by the driver's books
    def queued_books(self) -> list[Book]:
        return [b for b in self.order if b.queued > 0]

    def free_workers(self) -> list[Worker]:
        if self.sc.workers is None:
            return [Worker()]  # unbounded: a fresh idle worker each time
        return [w for w in self.workers if w.finish is None]

    def rank(self, b: Book, index: int) -> tuple[int, ...]:
        """An item's place in the rank order (docs/semantics.md, 3), from the
        rule as written there, not from the policy."""
        c, sc = b.call, self.sc
        size_class = 0 if sc.rule == "arrival" or c.count <= sc.threshold else 1
        length = 0
        if sc.rule == "small_first_then_shortest":
            lengths = c.lengths or [1] * c.count
            length = lengths[index] if sc.item_units else max(lengths)
        return (c.priority, size_class, length, self.pos[c.cid], index)

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
        self.model.add(c.cid, c.count, c.priority, c.lengths, now)
        b.arrived = True
        self.pos[c.cid] = len(self.order)
        self.order.append(b)

    def cancel(self, c: Call) -> None:
        b = self.books[c.cid]
        expect = b.queued
        removed = self.model.remove(c.cid)
        assert removed == expect, f"remove() took {removed} items of call {c.cid}, {expect} were queued"
        b.cancelled = removed
        b.passed_at = None
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
                spans = self.model.pop(now, reason)
                assert spans, f"ready() said {reason!r} but pop() formed an empty batch"
                self.record(now, reason, spans)
                if self.sc.workers is not None:
                    w.finish = now + self.run_ns
                progress = True

    def check_ready(self, now: int, busy: int, reason: Optional[str]) -> None:
        """ready() fires exactly on the dispatch rules (docs/semantics.md, 1), from the driver's books."""
        queued = self.queued_books()
        items = sum(b.queued for b in queued)
        assert self.model.size() == items
        if not queued:
            assert reason is None
            return
        length = sum(b.length(b.left()) for b in queued)
        padded = sum(sum(b.padded(b.left(), self.sc.multiple)) for b in queued)
        oldest = min(b.call.at * US for b in queued)
        if items >= self.sc.batch:
            expect = "full"
        elif self.sc.budget and length > self.sc.budget:
            expect = "budget"
        elif self.sc.tokens and padded > self.sc.tokens:
            expect = "budget"
        elif busy != IDLE and oldest <= busy:
            expect = "drain"
        elif now >= oldest + self.timeout_ns:
            expect = "timeout"
        else:
            expect = None
        assert reason == expect, (now, busy, items, length, oldest, reason, expect)

    def record(self, now: int, reason: str, spans: list[tuple[int, int, int]]) -> None:
        queued_before = {b.call.cid: b.left() for b in self.order if b.queued > 0}
        due = {cid: self.books[cid].passed_at for cid in queued_before
               if self.books[cid].passed_at is not None and now - self.books[cid].passed_at >= self.aging_ns}
        for cid, since in due.items():
            if self.books[cid].ahead < 0:
                self.books[cid].ahead = sum(1 for other, t in due.items() if other != cid and t <= since)
        size = sum(n for _, _, n in spans)
        # Limits: batch size, and the length budget (a single longer item goes alone).
        assert 1 <= size <= self.sc.batch, (size, self.sc.batch)
        length = sum(self.books[cid].length(list(range(begin, begin + n))) for cid, begin, n in spans)
        if self.sc.budget:
            assert length <= self.sc.budget or size == 1, (length, self.sc.budget, spans)
        if self.sc.tokens:  # items x the longest padded length
            longest = max(max(self.books[cid].padded(list(range(begin, begin + n)), self.sc.multiple))
                          for cid, begin, n in spans)
            assert size * longest <= self.sc.tokens or size == 1, (size, longest, self.sc.tokens, spans)
        taken: list[tuple[int, int]] = []  # (call id, index), in batch order
        for cid, begin, n in spans:
            b = self.books[cid]
            assert b.arrived and cid in queued_before, f"call {cid} is not queued"
            for i in range(begin, begin + n):
                assert i in queued_before[cid] and i not in b.taken, f"call {cid}: item {i} dispatched twice"
                b.taken.add(i)
                taken.append((cid, i))
            if not self.sc.item_units:  # a call's items leave in order, in contiguous slices
                assert begin == min(queued_before[cid]), f"call {cid}: slice starts at {begin}"
            b.spans.append((now, begin, n))
        self.check_order(now, taken, queued_before, due)
        # Aging books: a call queued when the batch formed is served by it, or passed over from now.
        served = {cid for cid, _ in taken}
        for cid in queued_before:
            b = self.books[cid]
            if cid in served:
                if b.passed_at is not None:
                    b.episodes.append((b.passed_at, now, b.ahead))
                b.passed_at = None
            elif b.passed_at is None:
                b.passed_at = now
                b.ahead = -1  # counted at the first batch it is due for
        self.batches.append((now, reason, spans))

    def check_order(self, now: int, taken: list[tuple[int, int]], queued_before: dict[int, list[int]],
                    due: dict[int, int]) -> None:
        """docs/semantics.md, 3: the batch first takes the due calls (passed
        over for aging_ms), longest passed over first, each in its order and
        in full unless the batch is then full, or unless it leaves room for
        the items queued in calls of a higher explicit priority (calls not
        kept whole; at least one item); then items in rank order, leaving
        none behind that ranks before one it took."""
        i = 0
        last_passed = None
        capped = False  # a due call left room: the rest of the batch is in rank order
        left = {cid: len(idxs) for cid, idxs in queued_before.items()}
        while i < len(taken) and taken[i][0] in due and not capped:
            cid = taken[i][0]
            assert last_passed is None or due[cid] >= last_passed, "due calls out of order"
            last_passed = due[cid]
            run = 0
            while i < len(taken) and taken[i][0] == cid:
                i += 1
                run += 1
            assert [idx for _, idx in taken[i - run:i]] == sorted(queued_before[cid])[:run], (
                f"due call {cid}: items not in their order")
            if i < len(taken):  # the batch went on: this due call took all it may
                room = self.sc.batch - (i - run)
                limit = room
                if not self.sc.keep_whole:
                    mine = self.books[cid].call.priority
                    reserve = sum(n for c, n in left.items() if c != cid and self.books[c].call.priority < mine)
                    limit = 1 if reserve >= room else room - reserve
                want = min(len(queued_before[cid]), limit)
                assert run == want, f"due call {cid}: took {run} items, expected {want}"
                capped = run < len(queued_before[cid])
            left[cid] -= run
        if i == 0:
            assert not due or len(taken) == 0, f"due calls {sorted(due)} passed over again: {taken}"
        rest = taken[i:]
        if not rest:
            return
        if not capped:
            for cid in due:
                assert cid not in {c for c, _ in rest}, "a due call in the rank-ordered part"
                assert len(queued_before[cid]) == sum(1 for c, _ in taken if c == cid), (
                    f"due call {cid} not taken in full before the others")
        keys = [self.rank(self.books[cid], idx) for cid, idx in rest]
        assert keys == sorted(keys), f"batch not in rank order: {rest}"
        last = keys[-1]
        took = set(taken)
        for cid, idxs in queued_before.items():
            if cid in due and not capped:
                continue
            for idx in idxs:
                if (cid, idx) not in took:
                    key = self.rank(self.books[cid], idx)
                    assert key > last, f"call {cid} item {idx} ({key}) left behind by a batch that took {rest}"
                    if not self.sc.item_units:
                        break  # a whole call ranks by its next item

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
            assert sum(b.length(b.left()) for b in queued) <= self.sc.budget
        if self.sc.tokens:
            assert sum(sum(b.padded(b.left(), self.sc.multiple)) for b in queued) <= self.sc.tokens
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
    non-cancelled call exactly once, cancelled items never, a call's items in
    order (unless shorter items go first one by one); ready() fires exactly on
    the dispatch rules; next_deadline() is the oldest item's arrival +
    timeout; with a worker free, nothing waits past its timeout; due calls
    first, then rank order (docs/semantics.md, 1 to 3)."""
    simulate(sc)


@settings(max_examples=examples(200), **COMMON)
@given(scenarios().filter(lambda s: s.keep_whole))
def test_keep_calls_whole_never_splits_a_call_that_fits(sc: Scenario) -> None:
    d = simulate(sc)
    for b in d.books.values():
        c = b.call
        fits_budget = not sc.budget or sum(c.lengths or [1] * c.count) <= sc.budget
        if sc.tokens:
            fits_budget = fits_budget and c.count * max(b.padded(list(range(c.count)), sc.multiple)) <= sc.tokens
        # A call whose own length is over the budget cannot go whole without
        # breaking the budget: the budget wins (policy.h, options.h).
        if c.count <= sc.batch and fits_budget:
            assert len(b.spans) <= 1, f"call {c.cid} of {c.count} items split: {b.spans}"


def check_aging(d: Driver) -> None:
    """The starvation bound of docs/semantics.md, section 3, with one worker
    whose batches each take D: a call that a batch passed over at time p is
    served by p + aging + D + k * D, where k counts the calls passed over as
    long or longer that are still queued when it becomes due.

    Why: once a call is passed over, the worker forms a batch each time it
    returns (the drain rule: the call was queued before it returned), so
    batches leave every D; the first at or after p + aging is due for it, and
    each due batch serves at least the call passed over longest (its first item
    always goes), which then leaves the head of the line. Calls served or
    arriving later queue behind it, however many small calls keep coming."""
    run_ns, aging_ns = d.sc.run_us * US, d.sc.aging_us * US
    for b in d.books.values():
        for passed_at, served_at, ahead in b.episodes:
            bound = passed_at + aging_ns + run_ns + max(ahead, 0) * run_ns
            assert served_at <= bound, (
                f"call {b.call.cid} (priority {b.call.priority}, {b.call.count} items), passed over at "
                f"{passed_at / 1e3:.0f} us, was served at {served_at / 1e3:.0f} us, after the bound "
                f"{bound / 1e3:.0f} us ({ahead} calls ahead)")


@settings(max_examples=examples(300), **COMMON)
@given(scenarios().map(lambda s: _with(s, workers=1, aging_us=min(s.aging_us, 20000))))
def test_aging_bound_with_one_worker(sc: Scenario) -> None:
    """Random schedules with one worker: no call waits past the bound of check_aging."""
    check_aging(simulate(sc))


@st.composite
def starving_streams(draw: st.DrawFn) -> Scenario:
    """A stream of small calls (at most small_batch_threshold items) that fills
    every batch: a burst of exactly `batch` items every D, when the worker
    returns. Without aging a bulk call arriving meanwhile would wait for the
    end of the stream; the stream lasts far longer than the aging bound."""
    batch = draw(st.integers(2, 8))
    run_us = draw(st.integers(100, 2000))
    aging_us = draw(st.integers(0, 5 * run_us))
    ticks = 6 * (aging_us // run_us + 2) + 40
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
        calls.append(Call(len(calls), at, n, 0, None))
    calls.sort(key=lambda c: c.at)
    return Scenario(
        batch=batch,
        timeout_us=draw(st.integers(0, run_us)),
        aging_us=aging_us,
        budget=0,
        keep_whole=draw(st.booleans()),
        workers=1,
        run_us=run_us,
        calls=calls,
        rule="small_first",
        threshold=batch,
    )


@settings(max_examples=examples(60), **COMMON)
@given(starving_streams())
def test_no_starvation_under_a_stream_of_small_calls(sc: Scenario) -> None:
    d = simulate(sc)
    check_aging(d)
    stream_end = max(c.at for c in sc.calls if c.count <= sc.threshold) * US
    for b in d.books.values():
        if b.call.count > sc.threshold:
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

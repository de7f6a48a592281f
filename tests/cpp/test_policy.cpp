// BatchPolicy on explicit time: every timing rule is checked without sleeping.
#include <batched/keyed_policy.h>
#include <batched/policy.h>

#include <vector>

#include "check.h"
#include "entries.h"

using namespace batched;

namespace {

constexpr TimePoint kMs = 1000000;
constexpr TimePoint kIdle = Batch::kNotFinished;

using batched_test::opts;

Entry make(std::uint32_t count, std::int32_t priority, TimePoint at, const std::uint32_t* lengths = nullptr) {
  Entry e;
  e.count = count;
  e.priority = priority;
  e.enqueue_ns = at;
  e.lengths = lengths;
  return e;
}

}  // namespace

TEST(full_batch_dispatches_at_once) {
  BatchPolicy p(opts(4, 5000));
  std::vector<Entry> es(4);
  for (auto& e : es) e = make(1, 0, 0);
  for (std::size_t i = 0; i < 3; ++i) p.add(&es[i]);
  CHECK(!p.ready(0, kIdle).has_value());
  p.add(&es[3]);
  CHECK(p.ready(0, kIdle) == DispatchReason::kFull);
  Batch b;
  p.pop(0, DispatchReason::kFull, b);
  CHECK_EQ(b.size, 4u);
  CHECK_EQ(b.spans.size(), 4u);
  for (std::size_t i = 0; i < 4; ++i) CHECK(b.spans[i].entry == &es[i]);  // arrival order
  CHECK(p.empty());
}

TEST(timeout_fires_exactly_at_deadline_of_oldest_item) {
  BatchPolicy p(opts(8, 5000));
  Entry a = make(1, 0, 1 * kMs), b = make(1, 0, 3 * kMs);
  p.add(&a);
  p.add(&b);
  CHECK_EQ(p.next_deadline(), 6 * kMs);
  CHECK(!p.ready(6 * kMs - 1, kIdle).has_value());
  CHECK(p.ready(6 * kMs, kIdle) == DispatchReason::kTimeout);
  Batch out;
  p.pop(6 * kMs, DispatchReason::kTimeout, out);
  CHECK_EQ(out.size, 2u);
  CHECK_EQ(p.next_deadline(), kNever);
}

TEST(zero_timeout_is_greedy) {
  BatchPolicy p(opts(8, 0));
  Entry a = make(1, 0, 7);
  CHECK(!p.ready(7, kIdle).has_value());
  p.add(&a);
  CHECK(p.ready(7, kIdle) == DispatchReason::kTimeout);
}

TEST(items_that_waited_for_a_busy_worker_leave_when_it_returns) {
  BatchPolicy p(opts(8, 5000));
  Entry a = make(1, 0, 10);
  p.add(&a);
  CHECK(!p.ready(20, Batch::kNotFinished).has_value());  // an idle worker waits the timeout
  CHECK(p.ready(20, 15) == DispatchReason::kDrain);      // queued at 10, worker busy until 15
  CHECK(!p.ready(20, 9).has_value());                      // queued after the batch returned: not backlog
}

TEST(small_calls_go_before_bulk_calls) {
  BatchPolicy p(opts(4, 0));
  Entry bulk = make(10, 0, 0), small = make(2, 0, 1);
  p.add(&bulk);
  p.add(&small);
  Batch b;
  p.pop(2, DispatchReason::kFull, b);
  CHECK_EQ(b.spans.size(), 2u);
  CHECK(b.spans[0].entry == &small);
  CHECK_EQ(b.spans[0].count, 2u);
  CHECK(b.spans[1].entry == &bulk);
  CHECK_EQ(b.spans[1].begin, 0u);
  CHECK_EQ(b.spans[1].count, 2u);
  CHECK_EQ(p.size(), 8u);
}

TEST(arrival_rule_ignores_call_size) {
  BatchOptions o = opts(4, 0);
  o.priority_rule = PriorityRule::kArrival;
  BatchPolicy p(o);
  Entry bulk = make(10, 0, 0), small = make(2, 0, 1);
  p.add(&bulk);
  p.add(&small);
  Batch b;
  p.pop(2, DispatchReason::kFull, b);
  CHECK_EQ(b.spans.size(), 1u);
  CHECK(b.spans[0].entry == &bulk);
}

TEST(explicit_priority_ranks_before_the_size_rule) {
  BatchPolicy p(opts(2, 0));
  Entry low_small = make(1, 5, 0), bulk = make(10, 0, 1), small = make(1, 0, 2);
  p.add(&low_small);
  p.add(&bulk);
  p.add(&small);
  Batch b;
  p.pop(3, DispatchReason::kFull, b);
  CHECK_EQ(b.spans.size(), 2u);
  CHECK(b.spans[0].entry == &small);  // priority 0, small
  CHECK(b.spans[1].entry == &bulk);   // priority 0, bulk, before priority 5
}

TEST(shortest_items_first_across_calls) {
  // PriorityRule::kSmallFirstThenShortest: within a size class, items go by
  // length whichever call they came from; each slice names its own items.
  BatchOptions o = opts(4, 0);
  o.priority_rule = PriorityRule::kSmallFirstThenShortest;
  o.small_batch_threshold = 1;
  BatchPolicy p(o);
  const std::uint32_t la[] = {9, 1, 7, 2, 5};
  const std::uint32_t lb[] = {3, 1, 8};
  const std::uint32_t lc[] = {6};
  Entry a = make(5, 0, 0, la), b = make(3, 0, 1, lb), c = make(1, 0, 2, lc);
  p.add(&a);
  p.add(&b);
  p.add(&c);
  Batch out;
  p.pop(3, DispatchReason::kFull, out);
  // c is small (1 item): first. Then bulk items by length: a[1]=1, b[1]=1 (arrival), a[3]=2.
  CHECK_EQ(out.size, 4u);
  CHECK_EQ(out.spans.size(), 4u);
  CHECK(out.spans[0].entry == &c);
  CHECK(out.spans[1].entry == &a && out.spans[1].begin == 1 && out.spans[1].count == 1);
  CHECK(out.spans[2].entry == &b && out.spans[2].begin == 1 && out.spans[2].count == 1);
  CHECK(out.spans[3].entry == &a && out.spans[3].begin == 3 && out.spans[3].count == 1);
  out.clear();
  p.pop(4, DispatchReason::kFull, out);  // b[0]=3, a[4]=5, a[2]=7, b[2]=8
  CHECK_EQ(out.size, 4u);
  CHECK(out.spans[0].entry == &b && out.spans[0].begin == 0);
  CHECK(out.spans[1].entry == &a && out.spans[1].begin == 4);
  CHECK(out.spans[2].entry == &a && out.spans[2].begin == 2);
  CHECK(out.spans[3].entry == &b && out.spans[3].begin == 2);
  out.clear();
  CHECK_EQ(p.size(), 1u);
  CHECK(p.ready(5, kIdle) == DispatchReason::kTimeout);
  p.pop(5, DispatchReason::kTimeout, out);
  CHECK(out.spans[0].entry == &a && out.spans[0].begin == 0);  // 9: last
  CHECK(p.empty());
  CHECK_EQ(a.taken, 5u);
}

TEST(shortest_first_keeps_adjacent_items_in_one_span_and_removes_scattered_ones) {
  BatchOptions o = opts(4, 0);
  o.priority_rule = PriorityRule::kSmallFirstThenShortest;
  o.small_batch_threshold = 0;
  BatchPolicy p(o);
  const std::uint32_t la[] = {1, 1, 1, 4, 4, 2};
  Entry a = make(6, 0, 0, la);
  p.add(&a);
  Batch out;
  p.pop(0, DispatchReason::kFull, out);  // 1, 1, 1 (one span), then 2
  CHECK_EQ(out.spans.size(), 2u);
  CHECK(out.spans[0].begin == 0 && out.spans[0].count == 3);
  CHECK(out.spans[1].begin == 5 && out.spans[1].count == 1);
  CHECK_EQ(p.remove(&a), 2u);  // items 3 and 4 were left
  CHECK(p.empty());
  CHECK_EQ(p.next_deadline(), kNever);
}

TEST(keep_calls_whole_ranks_a_call_by_its_longest_item) {
  BatchOptions o = opts(8, 0);
  o.priority_rule = PriorityRule::kSmallFirstThenShortest;
  o.small_batch_threshold = 0;
  o.keep_calls_whole = true;
  BatchPolicy p(o);
  const std::uint32_t la[] = {1, 9};
  const std::uint32_t lb[] = {5, 5};
  Entry a = make(2, 0, 0, la), b = make(2, 0, 1, lb);
  p.add(&a);
  p.add(&b);
  Batch out;
  p.pop(1, DispatchReason::kTimeout, out);
  CHECK_EQ(out.spans.size(), 2u);
  CHECK(out.spans[0].entry == &b && out.spans[0].count == 2);  // longest 5 < 9
  CHECK(out.spans[1].entry == &a && out.spans[1].count == 2);
}

TEST(waiting_for_a_busy_worker_is_not_aging) {
  // A bulk call queued behind a busy worker, far longer than aging_us: the
  // first batch formed after a small call arrives still takes the small one
  // first (the bulk call was never passed over).
  BatchOptions o = opts(4, 0);
  o.aging_us = 100;  // 0.1 ms
  BatchPolicy p(o);
  Entry bulk = make(20, 0, 0), small = make(1, 0, 500 * kMs);
  p.add(&bulk);
  p.add(&small);
  Batch b;
  p.pop(500 * kMs, DispatchReason::kDrain, b);
  CHECK(b.spans[0].entry == &small);
  CHECK(b.spans[1].entry == &bulk && b.spans[1].count == 3);
}

TEST(a_call_being_worked_through_is_not_aging) {
  // 48 bulk items, 4 per batch, one batch every 40 ms: the bulk call is served
  // by every batch, so a small call arriving at 100 ms is in the next batch.
  BatchOptions o = opts(4, 2000000);
  o.aging_us = 100000;
  o.small_batch_threshold = 2;
  BatchPolicy p(o);
  Entry bulk = make(48, 0, 0), small = make(1, 0, 100 * kMs);
  p.add(&bulk);
  TimePoint now = 0;
  Batch b;
  for (int i = 0; i < 3; ++i, now += 40 * kMs) {
    b.clear();
    p.pop(now, DispatchReason::kFull, b);
    CHECK(b.spans[0].entry == &bulk);
  }
  p.add(&small);  // at 100 ms; the worker comes back at 120 ms
  b.clear();
  p.pop(now, DispatchReason::kDrain, b);
  CHECK(b.spans[0].entry == &small);
}

TEST(a_call_passed_over_for_aging_us_goes_first) {
  BatchOptions o = opts(2, 0);
  o.aging_us = 100;  // 0.1 ms
  o.small_batch_threshold = 1;
  BatchPolicy p(o);
  Entry bulk = make(3, 0, 0);
  std::vector<Entry> smalls(8);
  for (auto& s : smalls) s = make(1, 0, 0);
  p.add(&bulk);
  for (std::size_t i = 0; i < 4; ++i) p.add(&smalls[i]);
  Batch b;
  p.pop(0, DispatchReason::kFull, b);  // s0 s1: bulk passed over from t=0
  CHECK(b.spans[0].entry == &smalls[0] && b.spans[1].entry == &smalls[1]);
  b.clear();
  p.pop(99999, DispatchReason::kFull, b);  // passed over for 99.999 us: not yet due
  CHECK(b.spans[0].entry == &smalls[2] && b.spans[1].entry == &smalls[3]);
  for (std::size_t i = 4; i < 8; ++i) p.add(&smalls[i]);
  b.clear();
  p.pop(100000, DispatchReason::kFull, b);  // due: 2 of its 3 items go first
  CHECK_EQ(b.spans.size(), 1u);
  CHECK(b.spans[0].entry == &bulk && b.spans[0].count == 2);
  b.clear();
  p.pop(100001, DispatchReason::kFull, b);  // just served: small calls first again
  CHECK(b.spans[0].entry == &smalls[4] && b.spans[1].entry == &smalls[5]);
  b.clear();
  // s6 and s7 were passed over at 100000 (by the bulk call's batch), bulk at
  // 100001: all three are due now, the longest passed over first.
  p.pop(200001, DispatchReason::kFull, b);
  CHECK(b.spans[0].entry == &smalls[6] && b.spans[1].entry == &smalls[7]);
  b.clear();
  p.pop(200002, DispatchReason::kTimeout, b);
  CHECK(b.spans[0].entry == &bulk && b.spans[0].count == 1);
  CHECK(p.empty());
}

TEST(zero_aging_alternates_a_passed_over_call_with_the_rest) {
  BatchOptions o = opts(2, 0);
  o.aging_us = 0;
  o.small_batch_threshold = 1;
  BatchPolicy p(o);
  Entry bulk = make(4, 0, 0);
  std::vector<Entry> smalls(4);
  for (auto& s : smalls) s = make(1, 0, 0);
  p.add(&bulk);
  for (auto& s : smalls) p.add(&s);
  std::vector<const Entry*> firsts;
  while (!p.empty()) {
    Batch b;
    p.pop(0, DispatchReason::kFull, b);
    firsts.push_back(b.spans[0].entry);
  }
  // small first; then the passed-over bulk call; then the smalls it passed over; then bulk again
  CHECK(firsts == std::vector<const Entry*>({&smalls[0], &bulk, &smalls[2], &bulk}));
}

TEST(large_call_is_split_in_order) {
  BatchPolicy p(opts(4, 0));
  Entry e = make(10, 1, 0);
  p.add(&e);
  std::uint32_t expect_begin = 0;
  for (std::uint32_t want : {4u, 4u, 2u}) {
    Batch b;
    CHECK(p.ready(0, kIdle).has_value());
    p.pop(0, *p.ready(0, kIdle), b);
    CHECK_EQ(b.spans.size(), 1u);
    CHECK_EQ(b.spans[0].begin, expect_begin);
    CHECK_EQ(b.spans[0].count, want);
    expect_begin += want;
  }
  CHECK(p.empty());
  CHECK_EQ(e.taken, 10u);
}

TEST(budget_limits_total_length_and_long_item_goes_alone) {
  BatchOptions o = opts(8, 5000);
  o.max_batch_length = 7;
  BatchPolicy p(o);
  const std::uint32_t lens[] = {3, 3, 3};
  const std::uint32_t long_len[] = {20};
  Entry e = make(3, 0, 0, lens);
  p.add(&e);
  CHECK(p.ready(0, kIdle) == DispatchReason::kBudget);
  Batch b;
  p.pop(0, DispatchReason::kBudget, b);
  CHECK_EQ(b.size, 2u);  // 3 + 3; a third would make 9 > 7
  CHECK(!p.ready(0, kIdle).has_value());  // 3 left, within budget: waits for its timeout
  Entry big = make(1, 0, 0, long_len);
  p.add(&big);
  b.clear();
  p.pop(0, *p.ready(0, kIdle), b);
  CHECK_EQ(b.size, 1u);  // the rest of e (3) then big would exceed: e's item alone
  b.clear();
  p.pop(0, DispatchReason::kBudget, b);
  CHECK_EQ(b.size, 1u);
  CHECK(b.spans[0].entry == &big);  // 20 > 7 goes alone
  CHECK(p.empty());
}

TEST(keep_calls_whole_moves_a_call_that_does_not_fit_to_the_next_batch) {
  BatchOptions o = opts(4, 0);
  o.keep_calls_whole = true;
  o.max_batch_length = 10;
  BatchPolicy p(o);
  const std::uint32_t lens3[] = {2, 2, 2};
  const std::uint32_t lens2[] = {1, 1};
  const std::uint32_t lens_long[] = {6, 6};
  Entry a = make(3, 0, 0, lens3), b = make(2, 0, 1, lens2), big = make(6, 0, 2),
        c = make(2, 0, 3, lens_long), d = make(1, 0, 4, lens2);
  for (Entry* e : {&a, &b}) p.add(e);
  Batch out;
  p.pop(0, *p.ready(0, kIdle), out);
  CHECK_EQ(out.size, 3u);  // b (2 items) does not fit in the one slot left: not split
  CHECK(out.spans[0].entry == &a);
  out.clear();
  p.add(&c);
  p.pop(0, *p.ready(0, kIdle), out);
  CHECK_EQ(out.size, 2u);  // b (length 2); c would bring the length to 14 > 10
  CHECK(out.spans[0].entry == &b);
  out.clear();
  p.add(&d);
  p.pop(0, *p.ready(0, kIdle), out);
  CHECK_EQ(out.size, 1u);  // c alone is over the budget: split by it, as without the option
  CHECK(out.spans[0].entry == &c);
  out.clear();
  p.remove(&c);
  p.remove(&d);
  p.add(&big);  // larger than a batch: split as usual
  p.pop(0, *p.ready(0, kIdle), out);
  CHECK_EQ(out.size, 4u);
  out.clear();
  p.pop(0, *p.ready(0, kIdle), out);
  CHECK_EQ(out.size, 2u);
  CHECK(p.empty());
}

TEST(remove_takes_untaken_items_out) {
  BatchPolicy p(opts(4, 0));
  Entry a = make(6, 1, 0), b = make(1, 0, 1);
  p.add(&a);
  p.add(&b);
  Batch out;
  p.pop(1, DispatchReason::kFull, out);  // b, then 3 of a
  CHECK_EQ(p.size(), 3u);
  CHECK_EQ(p.remove(&a), 3u);
  CHECK(p.empty());
  CHECK_EQ(p.next_deadline(), kNever);
}

TEST(random_schedules_respect_limits_and_lose_nothing) {
  // Deterministic pseudo-random schedules: every item is dispatched exactly
  // once, batches never exceed the size or (multi-item) budget, calls keep order.
  batched_test::Rng next{12345};
  for (int round = 0; round < 200; ++round) {
    BatchOptions o = opts(1 + next(16), static_cast<std::int64_t>(next(3)) * 1000);
    o.max_batch_length = next(2) ? 0 : 1 + next(40);
    o.aging_us = static_cast<std::int64_t>(next(5000));
    o.priority_rule = static_cast<PriorityRule>(next(3));
    o.keep_calls_whole = next(2) == 0;
    const bool in_order = o.priority_rule != PriorityRule::kSmallFirstThenShortest || o.keep_calls_whole;
    BatchPolicy p(o);
    std::vector<Entry> es(1 + next(60));
    std::vector<std::vector<std::uint32_t>> lens(es.size());
    std::vector<std::vector<int>> seen(es.size());
    TimePoint now = 0;
    std::size_t added = 0, total = 0;
    while (added < es.size() || !p.empty()) {
      now += static_cast<TimePoint>(next(2000)) * 1000;
      if (added < es.size() && next(2)) {
        Entry& e = es[added];
        const std::uint32_t n = 1 + next(20);
        lens[added].resize(n);
        for (auto& l : lens[added]) l = 1 + next(10);
        e = make(n, static_cast<std::int32_t>(next(3)), now, next(2) ? lens[added].data() : nullptr);
        e.owner = reinterpret_cast<void*>(added);
        seen[added].assign(n, 0);
        total += n;
        p.add(&e);
        ++added;
      }
      while (auto r = p.ready(now, next(4) == 0 ? now : kIdle)) {
        Batch b;
        p.pop(now, *r, b);
        CHECK(b.size >= 1 && b.size <= o.max_batch_size);
        std::uint64_t len = 0;
        for (const Span& s : b.spans) {
          const auto idx = reinterpret_cast<std::size_t>(s.entry->owner);
          for (std::uint32_t i = s.begin; i < s.begin + s.count; ++i) {
            seen[idx][i] += 1;
            len += s.entry->length_of(i);
            // a call's items leave in order, unless shorter items go first one by one
            if (i > 0 && in_order) CHECK_EQ(seen[idx][i - 1], 1);
          }
        }
        if (o.max_batch_length && b.size > 1) CHECK(len <= o.max_batch_length);
        total -= b.size;
      }
    }
    CHECK_EQ(total, 0u);
    for (auto& v : seen)
      for (int c : v) CHECK_EQ(c, 1);
  }
}

// ---- max_batch_tokens: rows x padded length ----

TEST(token_budget_counts_rows_times_the_padded_length) {
  // Budget 64 tokens, lengths rounded up to 8: rows of 5, 7, 3 pad to 8 (3 x 8
  // = 24), a row of 20 pads to 24, making 4 x 24 = 96 > 64: it waits.
  BatchOptions o = opts(16, 50000);
  o.max_batch_tokens = 64;
  o.pad_to_multiple_of = 8;
  BatchPolicy p(o);
  const std::uint32_t short_lengths[] = {5, 7, 3};
  const std::uint32_t long_length[] = {20};
  const std::uint32_t huge_length[] = {100};
  Entry a = make(3, 0, 0, short_lengths), b = make(1, 0, 0, long_length), c = make(1, 0, 0, huge_length);
  p.add(&a);
  p.add(&b);
  CHECK(!p.ready(0, kIdle).has_value());  // 8 + 8 + 8 + 24 = 48 padded tokens queued: they might fit
  Batch out;
  p.pop(50 * kMs, DispatchReason::kTimeout, out);
  CHECK(out.size == 3 && out.spans[0].entry == &a);
  out.clear();
  p.add(&c);  // 24 + 104 > 64: the queue cannot all fit: a batch leaves
  CHECK(p.ready(50 * kMs, kIdle) == DispatchReason::kBudget);
  p.pop(50 * kMs, DispatchReason::kBudget, out);
  CHECK(out.size == 1 && out.spans[0].entry == &b);
  out.clear();
  p.pop(50 * kMs, DispatchReason::kBudget, out);  // longer than the budget: alone
  CHECK(out.size == 1 && out.spans[0].entry == &c && p.empty());
}

// ---- KeyedPolicy: grouping keys (docs/semantics.md, 12) ----

namespace {
Entry keyed(std::uint32_t count, std::uint64_t key, TimePoint at) {
  Entry e = make(count, 0, at);
  e.key = key;
  return e;
}
}  // namespace

TEST(keys_never_share_a_batch_and_fill_on_their_own) {
  KeyedPolicy p(opts(4, 5000));
  Entry a1 = keyed(3, 1, 0), b1 = keyed(3, 2, 0), a2 = keyed(1, 1, 1 * kMs);
  p.add(&a1);
  p.add(&b1);
  CHECK(!p.ready(1 * kMs - 1, kIdle).has_value());  // 6 items queued, but no key has 4
  CHECK_EQ(p.keys(), 2u);
  p.add(&a2);
  CHECK(p.ready(1 * kMs, kIdle) == DispatchReason::kFull);
  Batch out;
  p.pop(1 * kMs, DispatchReason::kFull, out);
  CHECK_EQ(out.key, 1u);
  CHECK(out.spans.size() == 2 && out.spans[0].entry == &a1 && out.spans[1].entry == &a2);
  CHECK_EQ(p.size(), 3u);
  CHECK_EQ(p.keys(), 1u);  // key 1 emptied: its policy is a spare again
  CHECK_EQ(p.next_deadline(), 5 * kMs);  // key 2 times out on its own clock
  CHECK(p.ready(5 * kMs, kIdle) == DispatchReason::kTimeout);
  out.clear();
  p.pop(5 * kMs, DispatchReason::kTimeout, out);
  CHECK(out.key == 2u && out.size == 3u && p.empty());
}

TEST(a_timed_out_key_goes_before_a_full_one_and_drain_takes_the_fullest) {
  Entry rare = keyed(1, 9, 0);
  std::vector<Entry> busy(8);  // declared before the policy: it still holds some at the end
  for (std::size_t i = 0; i < busy.size(); ++i) busy[i] = keyed(1, 1, 4 * kMs);
  KeyedPolicy p(opts(4, 5000));
  p.add(&rare);
  for (auto& e : busy) p.add(&e);
  // Key 1 is full, key 9 has waited its timeout: the rare key first.
  CHECK(p.ready(5 * kMs, kIdle).has_value());
  Batch out;
  p.pop(5 * kMs, DispatchReason::kTimeout, out);
  CHECK_EQ(out.key, 9u);
  // Drain (the worker came back at 6 ms): of two keys not full, the fuller goes.
  Entry x = keyed(2, 1, 0), y = keyed(5, 2, 1 * kMs), z = keyed(1, 3, 2 * kMs);
  KeyedPolicy q(opts(8, 50000));
  q.add(&x);
  q.add(&y);
  q.add(&z);
  CHECK(q.ready(6 * kMs, 6 * kMs) == DispatchReason::kDrain);
  out.clear();
  q.pop(6 * kMs, DispatchReason::kDrain, out);
  CHECK(out.key == 2u && out.size == 5u);
}

TEST(many_keys_use_the_index_and_lose_nothing) {
  // More keys than the linear search covers; keys come and go.
  KeyedPolicy p(opts(3, 1000));
  std::vector<Entry> es(200);
  std::size_t pushed = 0, popped = 0;
  TimePoint now = 0;
  for (std::size_t i = 0; i < es.size(); ++i) {
    es[i] = keyed(1 + static_cast<std::uint32_t>(i % 3), 1 + (i * 7) % 23, now);
    p.add(&es[i]);
    pushed += es[i].count;
    now += 100000;  // 0.1 ms
    while (auto r = p.ready(now, kIdle)) {
      Batch out;
      p.pop(now, *r, out);
      for (const Span& s : out.spans) CHECK_EQ(s.entry->key, out.key);
      popped += out.size;
    }
  }
  while (!p.empty()) {
    now += 1000000;
    while (auto r = p.ready(now, kIdle)) {
      Batch out;
      p.pop(now, *r, out);
      for (const Span& s : out.spans) CHECK_EQ(s.entry->key, out.key);
      popped += out.size;
    }
  }
  CHECK_EQ(popped, pushed);
  CHECK_EQ(p.keys(), 0u);
}

TEST_MAIN()

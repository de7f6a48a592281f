// What a Scheduler learns to tune itself (tuning.h; docs/semantics.md, 13):
// the batch cost line, the arrival rate, the adaptive wait, the batch cap of
// split_on, batch splitting, and live settings (Scheduler::configure).
// Run under ThreadSanitizer and AddressSanitizer in CI.
#include <batched/scheduler.h>

#include <atomic>
#include <cmath>
#include <stdexcept>
#include <thread>
#include <vector>

#include "check.h"
#include "entries.h"

using namespace batched;

namespace {

using batched_test::make;
using batched_test::opts;

bool near(double a, double b, double tolerance) { return std::fabs(a - b) <= tolerance; }

}  // namespace

TEST(cost_model_fits_a_line_through_batches_of_several_sizes) {
  BatchCostModel m;
  for (int round = 0; round < 10; ++round) {
    for (std::size_t n : {1u, 8u, 16u, 32u}) m.observe(n, 8000000 + 100000 * static_cast<TimePoint>(n));
  }
  CHECK(near(m.fixed_ns(), 8e6, 1e3));
  CHECK(near(m.per_item_ns(), 1e5, 1.0));
  CHECK_EQ(m.samples(), 40u);
}

TEST(cost_model_of_one_size_takes_all_the_time_as_fixed) {
  BatchCostModel m;
  for (int i = 0; i < 5; ++i) m.observe(1, 3000000);
  CHECK(near(m.fixed_ns(), 3e6, 1.0));
  CHECK_EQ(m.per_item_ns(), 0.0);
}

TEST(cost_model_follows_a_change_within_a_few_dozen_batches) {
  BatchCostModel m;
  for (int i = 0; i < 200; ++i) m.observe(1 + i % 4, 1000000);
  for (int i = 0; i < 150; ++i) m.observe(1 + i % 4, 5000000);
  CHECK(near(m.fixed_ns(), 5e6, 0.05e6));
}

TEST(cost_model_without_a_fixed_part_is_a_line_through_zero) {
  BatchCostModel m;
  for (int i = 0; i < 40; ++i) m.observe(1 + i % 8, 500000 * (1 + i % 8));
  CHECK(m.fixed_ns() < 1e3);
  CHECK(near(m.per_item_ns(), 5e5, 1e3));
}

TEST(arrival_rate_counts_items_per_second_and_decays) {
  ArrivalRate r;
  // 1000 items/s for 2 s, stamped 1 ms apart.
  for (TimePoint t = 0; t < 2000000000; t += 1000000) r.observe(t, 1);
  CHECK(near(r.per_ns(2000000000) * 1e9, 1000.0, 20.0));
  // Out of order: a late stamp adds its decayed weight, no more.
  ArrivalRate s;
  s.observe(10, 1);
  s.observe(5, 1);
  CHECK(near(s.per_ns(10) * ArrivalRate::kWindowNs, 2.0, 1e-6));
  // Nothing arrives for 5 windows: the rate falls to e^-5 of itself.
  CHECK(r.per_ns(2000000000 + 5 * ArrivalRate::kWindowNs) * 1e9 < 1000.0 * std::exp(-5.0) * 1.05);
}

TEST(adaptive_wait_sends_at_once_at_a_low_rate_and_waits_under_load) {
  // 8 ms per batch. 100 items/s: 0.8 expected within one batch time: at once.
  AdaptiveWait low = AdaptiveWait::of(100 / 1e9, 8e6, 20000000, 32);
  CHECK_EQ(low.enough, 1u);
  CHECK_EQ(low.wait_ns, 0);
  // 2,000 items/s: 16 expected: wait for 16 items, at most 8 ms (< timeout 20 ms).
  AdaptiveWait busy = AdaptiveWait::of(2000 / 1e9, 8e6, 20000000, 32);
  CHECK_EQ(busy.enough, 16u);
  CHECK_EQ(busy.wait_ns, 8000000);
  // The timeout bounds the wait; the batch size bounds the count.
  AdaptiveWait bounded = AdaptiveWait::of(1e6 / 1e9, 8e6, 2000000, 32);
  CHECK_EQ(bounded.enough, 32u);
  CHECK_EQ(bounded.wait_ns, 2000000);
  // Nothing learned yet (no batch): at once.
  CHECK_EQ(AdaptiveWait::of(5000 / 1e9, 0.0, 20000000, 32).enough, 1u);
}

TEST(size_cap_halves_on_failure_probes_up_and_settles_below_the_limit) {
  // The function fails above 24 items; batch size 64.
  SizeCap cap(64);
  CHECK_EQ(cap.cap(), 64u);
  auto run = [&](std::size_t n) {  // a batch of n: split while too big, as the front end does
    std::vector<std::size_t> todo{n};
    while (!todo.empty()) {
      const std::size_t k = todo.back();
      todo.pop_back();
      if (k > 24) {
        cap.too_big(k);
        todo.push_back(k / 2);
        todo.push_back(k - k / 2);
      } else {
        cap.succeeded(k);
      }
    }
  };
  run(32);
  CHECK(cap.cap() <= 24u);  // after the first failure
  std::size_t failures_seen = 0, highest = 0;
  for (int i = 0; i < 2000; ++i) {
    const std::size_t n = cap.cap();  // full batches at the cap
    highest = std::max(highest, n);
    if (n > 24) ++failures_seen;
    run(n);
  }
  CHECK_EQ(cap.cap(), 24u);  // settled on the largest size that fits
  // Probes above 24 are rare: a few to converge, a few per forget period.
  CHECK(failures_seen > 0 && failures_seen < 30);
  CHECK(highest < 64u);
}

TEST(size_cap_rises_to_a_larger_batch_that_ran) {
  // Worker A's batch of 64 fails (cap 32) while worker B's batch of 64,
  // dispatched before, runs fine: 64 fits after all.
  SizeCap cap(64);
  cap.too_big(64);
  CHECK_EQ(cap.cap(), 32u);
  cap.succeeded(60);
  CHECK_EQ(cap.cap(), 60u);
}

TEST(size_cap_follows_a_limit_that_drops) {
  SizeCap cap(64);
  for (int i = 0; i < 50; ++i) cap.succeeded(64);
  CHECK_EQ(cap.cap(), 64u);
  cap.too_big(64);  // memory got tighter: 64 no longer fits
  CHECK_EQ(cap.cap(), 32u);
  cap.succeeded(32);
  cap.too_big(32);  // nor does 32, which succeeded a moment ago
  CHECK_EQ(cap.cap(), 16u);
}

TEST(split_in_two_cuts_at_the_middle_or_between_spans) {
  Entry a = make(5), b = make(3);
  Batch whole;
  whole.spans = {Span{&a, 0, 5}, Span{&b, 0, 3}};
  whole.size = 8;
  whole.key = 7;
  Batch first, second;
  CHECK(split_in_two(whole, first, second, false));
  CHECK_EQ(first.size, 4u);
  CHECK_EQ(second.size, 4u);
  CHECK(first.spans.size() == 1 && first.spans[0].entry == &a && first.spans[0].count == 4);
  CHECK(second.spans.size() == 2 && second.spans[0].begin == 4 && second.spans[0].count == 1 &&
        second.spans[1].entry == &b);
  CHECK_EQ(second.key, 7u);
  // Whole spans: the boundary nearest the middle.
  CHECK(split_in_two(whole, first, second, true));
  CHECK(first.size == 5 && second.size == 3 && first.spans.size() == 1 && second.spans.size() == 1);
  // One span kept whole, or one item: no cut.
  Batch one;
  one.spans = {Span{&a, 0, 5}};
  one.size = 5;
  CHECK(!split_in_two(one, first, second, true));
  CHECK(split_in_two(one, first, second, false));
  CHECK(first.size == 3 && second.size == 2 && second.spans[0].begin == 3);
  Batch single;
  single.spans = {Span{&a, 0, 1}};
  single.size = 1;
  CHECK(!split_in_two(single, first, second, false));
}

TEST(a_split_lowers_the_cap_of_the_next_batches) {
  FakeClock clock;
  Scheduler<FakeClock> s(opts(8, 0), clock);
  std::vector<Entry> es(8, make(1));
  for (Entry& e : es) CHECK(queued(s.try_push(&e)));
  Batch out;
  CHECK(s.try_pop(out));
  CHECK_EQ(out.size, 8u);
  s.batch_split(out, 8);  // too big: the front end retries halves of 4
  s.part_succeeded(4);
  s.part_succeeded(4);
  s.finish_batch_items(out, 1000, 0);
  s.batch_delivered(out);
  CHECK_EQ(out.splits, 1u);
  CHECK_EQ(s.stats().split_batches, 1u);
  CHECK_EQ(s.stats().batch_cap, 4u);
  CHECK_EQ(s.stats().cost_samples, 0u);  // a split batch's time is not a batch's cost...
  CHECK_EQ(s.service_estimate_ns(), 0);  // ...nor the batch time of deadlines
  std::vector<Entry> more(8, make(1));
  for (Entry& e : more) CHECK(queued(s.try_push(&e)));
  out.finished_ns = Batch::kNotFinished;
  CHECK(s.try_pop(out));
  CHECK_EQ(out.size, 4u);  // the cap, not max_batch_size
  CHECK(out.reason == DispatchReason::kFull);
  s.shutdown();
  s.drain();
}

TEST(configure_changes_the_batch_size_and_timeout_from_the_next_batch) {
  FakeClock clock;
  Scheduler<FakeClock> s(opts(4, 1000000), clock);  // 4 items, 1 s
  std::vector<Entry> es(6, make(1));
  for (Entry& e : es) CHECK(queued(s.try_push(&e)));
  BatchOptions next = s.options();
  next.max_batch_size = 2;
  next.timeout_us = 0;
  s.configure(next);
  Batch out;
  CHECK(s.try_pop(out));
  CHECK_EQ(out.size, 2u);
  CHECK(s.try_pop(out));
  CHECK_EQ(out.size, 2u);
  CHECK(s.try_pop(out));
  CHECK_EQ(out.size, 2u);
  // Larger again: the histogram grows with it.
  next.max_batch_size = 16;
  next.timeout_us = 5000;
  s.configure(next);
  std::vector<Entry> more(16, make(1));
  for (Entry& e : more) CHECK(queued(s.try_push(&e)));
  CHECK(s.try_pop(out));
  CHECK_EQ(out.size, 16u);
  const BatchStats st = s.stats();
  CHECK_EQ(st.batch_sizes.size(), 17u);
  CHECK_EQ(st.batch_sizes[16], 1u);
  CHECK_EQ(st.batch_sizes[2], 3u);
}

TEST(configure_refuses_fixed_fields_and_bad_values_and_changes_nothing) {
  FakeClock clock;
  Scheduler<FakeClock> s(opts(4, 1000), clock);
  BatchOptions next = s.options();
  next.num_workers = 2;
  next.max_batch_size = 9;
  bool threw = false;
  try {
    s.configure(next);
  } catch (const std::invalid_argument&) {
    threw = true;
  }
  CHECK(threw);
  next = s.options();
  next.max_batch_size = 0;
  threw = false;
  try {
    s.configure(next);
  } catch (const std::invalid_argument&) {
    threw = true;
  }
  CHECK(threw);
  CHECK_EQ(s.options().max_batch_size, 4u);
}

TEST(configure_lowers_max_queue_size_for_the_next_push) {
  FakeClock clock;
  Scheduler<FakeClock> s(opts(8, 1000), clock);
  Entry a = make(2), b = make(2);
  CHECK(queued(s.try_push(&a)));
  BatchOptions next = s.options();
  next.max_queue_size = 3;
  s.configure(next);
  CHECK(s.try_push(&b) == PushStatus::kQueueFull);
  s.shutdown();
  s.drain();
}

TEST(adaptive_waits_are_learned_from_batches_and_arrivals) {
  FakeClock clock;
  Scheduler<FakeClock> s(opts(32, 0), clock);
  std::vector<Entry> es(8000, make(1));
  std::size_t next = 0;
  Batch out;
  // Batches of several sizes that take 8 ms + 0.1 ms per item.
  for (int round = 0; round < 64; ++round) {
    const std::uint32_t n = 1 + static_cast<std::uint32_t>(round % 4) * 5;
    for (std::uint32_t i = 0; i < n; ++i) CHECK(queued(s.try_push(&es[next++])));
    CHECK(s.try_pop(out));
    CHECK_EQ(out.size, n);
    clock.advance_us(8000 + 100 * static_cast<std::int64_t>(n));
    s.finish_batch(out, 0, false);
    s.batch_delivered(out);
    out.finished_ns = Batch::kNotFinished;
  }
  const BatchStats st = s.stats();
  CHECK_EQ(st.cost_samples, 64u);
  CHECK(near(st.cost_fixed_ns, 8e6, 1e4));
  CHECK(near(st.cost_per_item_ns, 1e5, 1e3));
  BatchOptions o = s.options();
  o.adaptive = true;
  o.timeout_us = 20000;  // 20 ms: the longest wait
  s.configure(o);
  // Quiet so far (the rate is measured from now): a lone item leaves at once.
  CHECK(queued(s.try_push(&es[next++])));
  CHECK(s.try_pop(out));
  // 3 s at 2,000 items/s: 16 are expected within one batch time (8 ms),
  // once the rate is known (the first second or so).
  for (int i = 0; i < 6000; ++i) {
    CHECK(queued(s.try_push(&es[next++])));
    clock.advance_us(500);
    while (s.try_pop(out)) CHECK(out.size <= 17u);
  }
  CHECK(s.try_pop(out) || true);  // (what is left of the burst)
  clock.advance_us(9000);
  while (s.try_pop(out)) {
  }
  const BatchStats busy = s.stats();
  CHECK(busy.arrival_per_s > 1800 && busy.arrival_per_s < 2100);
  CHECK(busy.adaptive_enough >= 14 && busy.adaptive_enough <= 17);
  CHECK_EQ(busy.adaptive_wait_ns, 8000000);
  std::uint64_t expected_size = 0;  // the burst went in batches of the expected size
  for (std::size_t n = 14; n <= 17; ++n) expected_size += busy.batch_sizes[n];
  CHECK(expected_size > 200);  // (of about 375 batches)
  // A lone item now waits (up to the learned wait), then leaves on its own.
  CHECK(queued(s.try_push(&es[next++])));
  CHECK(!s.try_pop(out));
  CHECK(s.next_deadline() <= clock.now() + 8000000);
  clock.advance_us(8000);
  CHECK(s.try_pop(out));
  CHECK_EQ(out.size, 1u);
  // The burst is over: seconds later the rate has decayed, and items go at once.
  clock.advance_us(3000000);
  CHECK(queued(s.try_push(&es[next++])));
  CHECK(s.try_pop(out));
  s.shutdown();
  s.drain();
}

TEST(configure_from_another_thread_while_workers_run_loses_nothing) {
  Scheduler<SteadyClock> s(opts(8, 200));
  constexpr int kItems = 20000;
  std::vector<Entry> es(kItems, make(1));
  std::atomic<int> popped{0};
  std::atomic<bool> too_big{false};
  std::atomic<std::size_t> largest_set{8};
  std::vector<std::thread> workers;
  for (int w = 0; w < 2; ++w) {
    workers.emplace_back([&] {
      Batch b;
      while (s.wait_pop(b)) {
        if (b.size > largest_set.load()) too_big = true;
        popped.fetch_add(static_cast<int>(b.size));
        s.finish_batch(b, 0, false);
        s.batch_delivered(b);
      }
    });
  }
  std::thread tuner([&] {
    for (int i = 0; popped.load() < kItems && i < 100000; ++i) {
      BatchOptions o = s.options();
      o.max_batch_size = 1 + static_cast<std::size_t>(i % 8);
      o.timeout_us = i % 3 == 0 ? 0 : 100;
      o.adaptive = i % 2 == 0;
      s.configure(o);
      std::this_thread::yield();
    }
  });
  std::thread producer([&] {
    for (Entry& e : es) CHECK(queued(s.try_push(&e)));
  });
  producer.join();
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (popped.load() < kItems && std::chrono::steady_clock::now() < give_up)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  tuner.join();
  CHECK_EQ(popped.load(), kItems);
  CHECK(!too_big.load());
  s.shutdown();
  for (auto& t : workers) t.join();
  CHECK(s.drain().empty());
}

TEST_MAIN()

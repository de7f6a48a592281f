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

TEST(start_followers_measure_poisson_streams_and_groups) {
  // Poisson arrivals at 2,000/s, a window of 8 ms: about 16 follow a start.
  batched_test::Rng rng{12345};
  StartFollowers poisson;
  TimePoint t = 0;
  bool empty = true;
  for (int i = 0; i < 20000; ++i) {
    const double u = (static_cast<double>(rng(1000000)) + 0.5) / 1e6;
    t += static_cast<TimePoint>(-std::log(u) / 2000.0 * 1e9);
    poisson.observe(t, 1, empty, 8000000);
    empty = i % 40 == 39;  // a batch took everything queued now and then
  }
  CHECK(poisson.known());
  CHECK(near(poisson.mean(), 16.0, 4.0));
  // Groups of 64 callers coming back within 3 ms, every 300 ms: 63 follow.
  StartFollowers groups;
  for (int g = 0; g < 100; ++g) {
    for (int c = 0; c < 64; ++c) groups.observe(g * 300000000LL + c * 47000, 1, c == 0, 8000000);
  }
  groups.close_if_done(100 * 300000000LL);
  CHECK(near(groups.mean(), 63.0, 0.01));
  // A lone caller: nothing follows.
  StartFollowers lone;
  for (int i = 0; i < 50; ++i) lone.observe(i * 20000000LL, 1, true, 8000000);
  CHECK(lone.known());
  CHECK_EQ(lone.mean(), 0.0);
}

TEST(adaptive_wait_sends_at_once_when_nothing_follows_and_waits_for_the_group) {
  // Nothing measured yet: as a fixed timeout (the first calls may come together).
  AdaptiveWait first = AdaptiveWait::of(false, 0.0, 0.0, 20000000, 32);
  CHECK_EQ(first.enough, 32u);
  CHECK_EQ(first.wait_ns, 20000000);
  // Fewer than one follower expected: at once.
  AdaptiveWait sparse = AdaptiveWait::of(true, 0.7, 8e6, 20000000, 32);
  CHECK_EQ(sparse.enough, 1u);
  CHECK_EQ(sparse.wait_ns, 0);
  // 15 expected within the 8 ms fixed cost: wait for 16 items, at most 8 ms.
  AdaptiveWait busy = AdaptiveWait::of(true, 15.0, 8e6, 20000000, 32);
  CHECK_EQ(busy.enough, 16u);
  CHECK_EQ(busy.wait_ns, 8000000);
  // The timeout bounds the wait; the batch size bounds the count.
  AdaptiveWait bounded = AdaptiveWait::of(true, 63.0, 37e6, 10000000, 32);
  CHECK_EQ(bounded.enough, 32u);
  CHECK_EQ(bounded.wait_ns, 10000000);
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

TEST(adaptive_waits_keep_a_returning_group_together) {
  // 16 callers in a closed loop: each batch returns to all of them, and they
  // come back within 2 ms. A batch costs 10 ms. The first batch waits as a
  // fixed timeout would (nothing measured yet) and takes all 16; from then
  // on 15 followers are expected after the first of each group, so every
  // batch waits for the whole group (at most 10 ms) instead of leaving with
  // the first few.
  FakeClock clock;
  BatchOptions o = opts(64, 20000);  // timeout 20 ms: the longest wait
  o.adaptive = true;
  Scheduler<FakeClock> s(o, clock);
  std::vector<Entry> es(16 * 40, make(1));
  std::size_t next = 0;
  Batch out;
  for (int round = 0; round < 40; ++round) {
    for (int c = 0; c < 16; ++c) {
      CHECK(queued(s.try_push(&es[next++])));
      clock.advance_us(125);  // 16 arrivals over 2 ms
      const bool popped = s.try_pop(out);
      if (c < 15 || round == 0) CHECK(!popped);  // it waits for the group
      if (c == 15 && round > 0) {
        CHECK(popped);
        CHECK_EQ(out.size, 16u);
      }
    }
    if (round == 0) {  // nothing measured yet: the timeout
      clock.advance_us(20000 - 2000);
      CHECK(s.try_pop(out));
      CHECK_EQ(out.size, 16u);
    }
    clock.advance_us(10000);  // the batch runs
    s.finish_batch(out, 0, false);
    s.batch_delivered(out);
    out.finished_ns = Batch::kNotFinished;
  }
  const BatchStats st = s.stats();
  CHECK(near(st.start_followers, 15.0, 0.01));
  CHECK_EQ(st.adaptive_enough, 16u);
  CHECK_EQ(st.adaptive_wait_ns, 10000000);  // the learned fixed cost, under the timeout
  CHECK(near(st.cost_fixed_ns, 10e6, 1e4));
  CHECK_EQ(st.batch_sizes[16], 40u);
  // A lone caller now: its item waits at most the learned wait, then goes.
  clock.advance_us(1000000);
  Entry lone = make(1);
  CHECK(queued(s.try_push(&lone)));
  CHECK(!s.try_pop(out));
  clock.advance_us(10000);
  CHECK(s.try_pop(out));
  CHECK_EQ(out.size, 1u);
  s.shutdown();
  s.drain();
}

TEST(adaptive_waits_send_a_sparse_stream_at_once) {
  FakeClock clock;
  BatchOptions o = opts(32, 20000);
  o.adaptive = true;
  Scheduler<FakeClock> s(o, clock);
  std::vector<Entry> es(200, make(1));
  Batch out;
  // The first item waits as a fixed timeout would; later ones, 30 ms apart
  // and alone (a batch takes 5 ms), go at once.
  CHECK(queued(s.try_push(&es[0])));
  CHECK(!s.try_pop(out));
  clock.advance_us(20000);
  CHECK(s.try_pop(out));
  for (std::size_t i = 1; i < es.size(); ++i) {
    clock.advance_us(30000);
    CHECK(queued(s.try_push(&es[i])));
    CHECK(s.try_pop(out));
    clock.advance_us(5000);
    s.finish_batch(out, 0, false);
    s.batch_delivered(out);
    out.finished_ns = Batch::kNotFinished;
  }
  const BatchStats st = s.stats();
  CHECK_EQ(st.start_followers, 0.0);
  CHECK_EQ(st.adaptive_enough, 1u);
  CHECK(st.arrival_per_s > 25 && st.arrival_per_s < 40);
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

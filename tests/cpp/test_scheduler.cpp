// Scheduler: push/pop contracts, shutdown, and multi-producer fuzzing.
// Run under ThreadSanitizer and AddressSanitizer in CI.
#include <batched/scheduler.h>

#include <array>
#include <atomic>
#include <chrono>
#include <future>
#include <memory>
#include <thread>
#include <vector>

#include "check.h"
#include "entries.h"

using namespace batched;

namespace {

using batched_test::make;
using batched_test::opts;

// Pushes `e`, pops it as one batch that takes `us` (dispatch to hand-out), and
// reports its hand-out: the service estimate of deadlines sees it.
void run_one_batch(Scheduler<FakeClock>& s, FakeClock& clock, Entry& e, std::int64_t us) {
  CHECK(queued(s.try_push(&e)));
  Batch out;
  CHECK(s.try_pop(out));
  clock.advance_us(us);
  s.finish_batch(out, us * 1000, false);
  s.batch_delivered(out);
}

// Runs fn on a thread; false if it did not finish within `seconds` (a hang).
template <class Fn>
bool finishes_within(double seconds, Fn fn) {
  auto task = std::async(std::launch::async, std::move(fn));
  return task.wait_for(std::chrono::duration<double>(seconds)) == std::future_status::ready;
}

}  // namespace

TEST(fake_clock_timeout_without_sleeping) {
  FakeClock clock;
  Scheduler<FakeClock> s(opts(8, 5000), clock);
  Entry a = make(1);
  CHECK(queued(s.try_push(&a)));
  Batch b;
  CHECK(!s.try_pop(b));
  CHECK_EQ(s.next_deadline(), 5000000);
  clock.advance_us(4999);
  CHECK(!s.try_pop(b));
  clock.advance_us(1);
  CHECK(s.try_pop(b));
  CHECK(b.reason == DispatchReason::kTimeout);
  CHECK_EQ(b.size, 1u);
  const BatchStats st = s.stats();
  CHECK_EQ(st.queue_wait.count(), 1u);
  CHECK(st.queue_wait.quantile(0.5) > 4.5e6 && st.queue_wait.quantile(0.5) < 5.5e6);
  CHECK_EQ(st.batches_by_reason[static_cast<int>(DispatchReason::kTimeout)], 1u);
}

TEST(try_push_says_when_an_event_loop_driver_should_look) {
  FakeClock clock;
  Scheduler<FakeClock> s(opts(3, 5000), clock);
  Entry a = make(1), b = make(1), c = make(1), d = make(2);
  CHECK(s.try_push(&a) == PushStatus::kOkMayDispatch);  // the first item: a deadline to arm
  CHECK(s.try_push(&b) == PushStatus::kOk);             // neither fills the batch nor moves the deadline
  CHECK(s.try_push(&c) == PushStatus::kOkMayDispatch);  // the batch is full
  Batch out;
  CHECK(s.try_pop(out));
  CHECK_EQ(out.size, 3u);
  CHECK(s.try_push(&d) == PushStatus::kOkMayDispatch);  // the queue was empty again
  for (bool greedy : {true, false}) {  // timeout 0, or a length budget: any push may make a batch ready
    BatchOptions o = opts(8, greedy ? 0 : 5000);
    if (!greedy) o.max_batch_length = 100;
    Entry x = make(1), y = make(1);  // outlive the scheduler, which still holds them at the end
    Scheduler<FakeClock> t(o, clock);
    CHECK(t.try_push(&x) == PushStatus::kOkMayDispatch);
    CHECK(t.try_push(&y) == PushStatus::kOkMayDispatch);
  }
}

TEST(full_queue_rejects_and_moves_nothing) {
  BatchOptions o = opts(8, 5000);
  o.max_queue_size = 3;
  FakeClock clock;
  Scheduler<FakeClock> s(o, clock);
  Entry a = make(2), b = make(2), c = make(1);
  CHECK(queued(s.try_push(&a)));
  CHECK(s.try_push(&b) == PushStatus::kQueueFull);
  CHECK(b.inbox_next == nullptr);  // not taken
  CHECK(queued(s.try_push(&c)));
  CHECK_EQ(s.size_approx(), 3u);
  CHECK_EQ(s.stats().rejected_items, 2u);
  clock.advance_us(5000);
  Batch out;
  CHECK(s.try_pop(out));
  CHECK_EQ(s.size_approx(), 0u);
  CHECK(queued(s.try_push(&b)));  // room again
}

TEST(shutdown_wakes_workers_rejects_pushes_and_drains_queue) {
  Scheduler<> s(opts(8, 60 * 1000 * 1000));  // a minute: nothing times out here
  Entry a = make(3), b = make(1);
  CHECK(queued(s.try_push(&a)));
  CHECK(queued(s.try_push(&b)));
  std::atomic<bool> returned{false};
  std::thread worker([&] {
    Batch batch;
    returned = !s.wait_pop(batch);
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));  // let it fall asleep
  s.shutdown();
  worker.join();
  CHECK(returned.load());
  Entry c = make(1);
  CHECK(s.try_push(&c) == PushStatus::kClosed);
  const std::vector<Entry*> left = s.drain();
  CHECK_EQ(left.size(), 2u);
  CHECK(left[0] == &a && left[1] == &b);
  CHECK(s.drain().empty());  // each entry once
  CHECK_EQ(s.size_approx(), 0u);
  Batch batch;
  CHECK(!s.wait_pop(batch));
}

TEST(push_wakes_a_worker_sleeping_without_deadline) {
  Scheduler<> s(opts(8, 0));
  Entry a = make(1);
  const bool ok = finishes_within(10.0, [&] {
    std::thread worker([&] {
      Batch b;
      CHECK(s.wait_pop(b));
      CHECK_EQ(b.size, 1u);
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    CHECK(queued(s.try_push(&a)));
    worker.join();
  });
  CHECK(ok);
  if (!ok) std::_Exit(1);  // a hung worker would block exit
}

TEST(push_that_fills_the_batch_wakes_a_worker_sleeping_on_a_long_deadline) {
  Scheduler<> s(opts(3, 60 * 1000 * 1000));  // nothing times out within the test
  Entry e[3] = {make(1), make(1), make(1)};
  const bool ok = finishes_within(10.0, [&] {
    std::thread worker([&] {
      Batch b;
      CHECK(s.wait_pop(b));
      CHECK_EQ(b.size, 3u);
      CHECK(b.reason == DispatchReason::kFull);
    });
    for (Entry& x : e) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));  // the worker falls asleep in between
      CHECK(queued(s.try_push(&x)));
    }
    worker.join();
  });
  CHECK(ok);
  if (!ok) std::_Exit(1);
}

// Prefetch (docs/semantics.md, 15): while a batch runs, the thread forming the
// next one takes only a batch that waiting could not grow, and sleeps through
// the timeout; once nothing runs, the timeout applies again.
TEST(while_a_batch_runs_wait_pop_takes_only_a_full_batch) {
  Scheduler<> s(opts(4, 1000));  // 1 ms timeout
  Entry e[5] = {make(1), make(1), make(1), make(1), make(1)};
  std::atomic<bool> popped{false};
  s.set_running(true);
  CHECK(queued(s.try_push(&e[0])));
  const bool ok = finishes_within(10.0, [&] {
    std::thread ahead([&] {
      Batch b;
      CHECK(s.wait_pop(b));
      popped = true;
      CHECK_EQ(b.size, 4u);
      CHECK(b.reason == DispatchReason::kFull);
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(30));  // 30 timeouts
    CHECK(!popped.load());
    for (int i = 1; i < 4; ++i) CHECK(queued(s.try_push(&e[i])));
    ahead.join();
  });
  CHECK(ok);
  if (!ok) std::_Exit(1);
  s.set_running(false);
  CHECK(queued(s.try_push(&e[4])));
  Batch b;
  CHECK(s.wait_pop(b));
  CHECK_EQ(b.size, 1u);
  CHECK(b.reason == DispatchReason::kTimeout);
}

// A clock whose now() can stall one chosen thread: try_push reads the clock
// between counting the item and publishing it, so this stands in for a
// producer preempted at the worst moment.
namespace {
std::atomic<bool> g_hold{false}, g_release{false};
thread_local bool t_stall_me = false;
struct StallClock {
  SteadyClock real;
  TimePoint now() const noexcept {
    if (t_stall_me && g_hold.exchange(false))
      while (!g_release.load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    return real.now();
  }
  template <class P>
  bool wait_until(std::condition_variable& cv, std::unique_lock<std::mutex>& l, TimePoint d, P p) const {
    return real.wait_until(cv, l, d, p);
  }
};
}  // namespace

TEST(push_preempted_while_the_queue_drains_still_wakes_the_worker) {
  BatchOptions o = opts(32, 5000);
  Scheduler<StallClock> s(o);
  std::atomic<int> dispatched{0};
  std::thread worker([&] {
    Batch b;
    while (s.wait_pop(b)) {
      dispatched += static_cast<int>(b.size);
      s.finish_batch(b, 0, false);
    }
  });
  Entry e1 = make(1), e2 = make(1);
  CHECK(queued(s.try_push(&e1)));  // the worker sleeps until e1's deadline
  std::thread slow([&] {
    t_stall_me = true;
    g_hold = true;
    CHECK(queued(s.try_push(&e2)));  // counted while e1 is queued, then stalled
  });
  // e1 times out and runs; the worker then finds nothing and sleeps with no deadline.
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (dispatched.load() < 1 && std::chrono::steady_clock::now() < give_up)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  g_release = true;  // e2 lands now
  slow.join();
  while (dispatched.load() < 2 && std::chrono::steady_clock::now() < give_up)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  CHECK_EQ(dispatched.load(), 2);  // a lost wake-up leaves it at 1 until the deadline of 10 s
  s.shutdown();
  worker.join();
}

TEST(a_call_too_large_for_the_queue_never_makes_small_calls_look_full) {
  BatchOptions o = opts(8, 0);
  o.max_queue_size = 100;
  Scheduler<> s(o);
  std::atomic<bool> stop{false};
  std::thread big([&] {
    Entry huge = make(1000);
    while (!stop.load()) CHECK(s.try_push(&huge) == PushStatus::kQueueFull);
  });
  int full = 0;
  for (int i = 0; i < 20000; ++i) {
    Entry small = make(1);
    if (queued(s.try_push(&small))) {
      CHECK_EQ(s.cancel(&small), 1u);  // keep the queue near empty
    } else {
      ++full;
    }
  }
  stop = true;
  big.join();
  CHECK_EQ(full, 0);
  CHECK_EQ(s.size_approx(), 0u);
}

TEST(cancel_removes_only_undispatched_items) {
  FakeClock clock;
  Scheduler<FakeClock> s(opts(4, 1000), clock);
  Entry a = make(6), b = make(2), c = make(1);
  CHECK(queued(s.try_push(&a)));
  CHECK(queued(s.try_push(&b)));
  CHECK(queued(s.try_push(&c)));
  CHECK_EQ(s.cancel(&b), 2u);  // queued: all of it goes
  CHECK_EQ(s.cancel(&b), 0u);  // once
  Batch out;
  CHECK(s.try_pop(out));       // full: 4 of a
  CHECK_EQ(out.size, 4u);
  CHECK_EQ(s.cancel(&a), 2u);  // the 2 not yet dispatched
  CHECK_EQ(s.size_approx(), 1u);
  clock.advance_us(1000);
  CHECK(s.try_pop(out));
  CHECK_EQ(out.size, 1u);
  CHECK(out.spans[0].entry == &c);
  CHECK_EQ(s.cancel(&c), 0u);  // already dispatched
  CHECK_EQ(s.stats().cancelled_items, 4u);  // 2 of b, 2 of a
  s.shutdown();
  CHECK(s.drain().empty());
}

TEST(stats_report_the_oldest_wait_failures_and_histogram_sums) {
  FakeClock clock;
  Scheduler<FakeClock> s(opts(2, 10000), clock);
  CHECK_EQ(s.stats().oldest_wait_ns, 0);  // nothing queued
  Entry a = make(1), b = make(1), c = make(1);
  CHECK(queued(s.try_push(&a)));
  clock.advance_us(300);
  CHECK(queued(s.try_push(&b)));
  clock.advance_us(200);
  // Still in the inbox (no worker looked yet): the snapshot finds it anyway.
  CHECK_EQ(s.stats().oldest_wait_ns, 500000);
  Batch out;
  CHECK(s.try_pop(out));  // full: a and b
  CHECK(queued(s.try_push(&c)));
  clock.advance_us(40);
  CHECK_EQ(s.stats().oldest_wait_ns, 40000);  // c, the only one left
  s.finish_batch(out, 7000, /*failed=*/true);
  const BatchStats st = s.stats();
  CHECK_EQ(st.failed_batches, 1u);
  CHECK_EQ(st.failed_items, 2u);
  CHECK_EQ(st.queue_wait.sum_ns(), 500000.0 + 200000.0);  // a waited 500 us, b 200 us
  CHECK_EQ(st.batch_latency.sum_ns(), 7000.0);
  s.shutdown();
  CHECK_EQ(s.drain().size(), 1u);
}

TEST(budget_dispatch_through_the_scheduler) {
  BatchOptions o = opts(16, 60 * 1000 * 1000);
  o.max_batch_length = 10;
  FakeClock clock;
  Scheduler<FakeClock> s(o, clock);
  const std::uint32_t lens_a[] = {4, 4}, lens_b[] = {4};
  Entry a = make(2), b = make(1);
  a.lengths = lens_a;
  b.lengths = lens_b;
  CHECK(queued(s.try_push(&a)));
  Batch out;
  CHECK(!s.try_pop(out));  // 8 <= 10: waits for the timeout
  CHECK(queued(s.try_push(&b)));
  CHECK(s.try_pop(out));   // 12 > 10: a batch leaves at once
  CHECK(out.reason == DispatchReason::kBudget);
  CHECK_EQ(out.size, 2u);  // 4 + 4; b would make 12
}

// Many producers, several workers: every item arrives exactly once, batches
// respect the size limit, and (one worker) each producer's calls leave in order.
static void fuzz(std::size_t workers, int producers, int calls_per_producer, std::int64_t timeout_us) {
  BatchOptions o = opts(16, timeout_us);
  o.num_workers = workers;
  Scheduler<> s(o);
  struct Call {
    Entry entry;
    int producer;
    int index;
    std::atomic<int> delivered{0};
  };
  std::vector<std::unique_ptr<Call[]>> calls(producers);
  for (int p = 0; p < producers; ++p) calls[p].reset(new Call[calls_per_producer]);

  std::atomic<int> start{0};
  std::atomic<long long> items_pushed{0}, items_popped{0};
  // Per producer and size class (small calls may overtake bulk ones): the
  // index of the last call whose first item was dispatched.
  std::vector<std::array<int, 2>> last_index(producers, {-1, -1});
  std::atomic<int> order_violations{0}, oversized{0};

  std::vector<std::thread> worker_threads;
  for (std::size_t w = 0; w < workers; ++w) {
    worker_threads.emplace_back([&] {
      Batch b;
      while (s.wait_pop(b)) {
        if (b.size > 16) ++oversized;
        for (const Span& span : b.spans) {
          auto* c = static_cast<Call*>(span.entry->owner);
          c->delivered.fetch_add(static_cast<int>(span.count));
          items_popped += span.count;
          if (workers == 1 && span.begin == 0) {
            int& last = last_index[c->producer][c->entry.count > o.small_batch_threshold ? 1 : 0];
            if (c->index <= last) ++order_violations;
            last = c->index;
          }
        }
      }
    });
  }
  std::vector<std::thread> producer_threads;
  for (int p = 0; p < producers; ++p) {
    producer_threads.emplace_back([&, p] {
      start.fetch_add(1);
      while (start.load() < producers) std::this_thread::yield();  // start barrier
      batched_test::Rng next{0x9E3779B97F4A7C15ull * (p + 1)};
      for (int i = 0; i < calls_per_producer; ++i) {
        Call& c = calls[p][i];
        c.producer = p;
        c.index = i;
        c.entry.count = 1 + static_cast<std::uint32_t>(next(20));  // some split over batches
        c.entry.owner = &c;
        items_pushed += c.entry.count;
        while (!queued(s.try_push(&c.entry))) std::this_thread::yield();
      }
    });
  }
  for (auto& t : producer_threads) t.join();
  // Everything pushed must come out: wait for it, bounded.
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (items_popped.load() < items_pushed.load() && std::chrono::steady_clock::now() < give_up)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  s.shutdown();
  for (auto& t : worker_threads) t.join();
  CHECK(s.drain().empty());
  CHECK_EQ(items_popped.load(), items_pushed.load());
  CHECK_EQ(order_violations.load(), 0);
  CHECK_EQ(oversized.load(), 0);
  int wrong = 0;
  for (int p = 0; p < producers; ++p)
    for (int i = 0; i < calls_per_producer; ++i)
      if (calls[p][i].delivered.load() != static_cast<int>(calls[p][i].entry.count)) ++wrong;
  CHECK_EQ(wrong, 0);
  CHECK_EQ(s.stats().total_dispatched, static_cast<std::uint64_t>(items_pushed.load()));
}

TEST(deadline_expires_queued_items_unsent_and_counts_them) {
  // Timeout 50 ms, deadline 10 ms: at 10 ms the call leaves the queue unsent
  // (docs/semantics.md, section 11), reported by whoever looks.
  FakeClock clock;
  BatchOptions o = opts(8, 50000);
  o.deadline_us = 10000;
  Scheduler<FakeClock> s(o, clock);
  Entry a = make(3), b = make(1);
  b.deadline_ns = 4000000;  // its own, earlier deadline wins
  CHECK(queued(s.try_push(&a)));
  CHECK(queued(s.try_push(&b)));
  CHECK_EQ(a.deadline_ns, 10000000);
  CHECK_EQ(s.next_expiry(), 4000000);  // after this, a batch sent at once finishes too late
  std::vector<Expired> gone;
  clock.advance_us(4000);  // sent now (nothing observed yet: instant), it would just make it
  s.expire_now(gone);
  CHECK(gone.empty());
  clock.advance_ns(1);
  s.expire_now(gone);
  CHECK(gone.size() == 1 && gone[0].entry == &b && gone[0].removed == 1u && gone[0].first_left == 0u);
  CHECK_EQ(s.size_approx(), 3u);
  clock.advance_us(6000);
  Batch out;
  CHECK(!s.try_pop(out));  // nothing to send: only an expiry to report
  CHECK(out.expired.size() == 1 && out.expired[0].entry == &a && out.expired[0].removed == 3u);
  CHECK_EQ(out.size, 0u);
  CHECK_EQ(s.size_approx(), 0u);
  CHECK_EQ(s.next_expiry(), kNever);
  CHECK_EQ(s.stats().expired_items, 4u);
  CHECK_EQ(s.stats().total_dispatched, 0u);
}

TEST(deadline_sends_early_given_the_observed_batch_time) {
  // Batches take 3 ms (dispatch to hand-out). A call with a 20 ms deadline and
  // a 50 ms timeout leaves by 20 - 3 - the 5 ms guard = 12 ms, reason
  // "deadline"; once it could not finish by its deadline it expires instead.
  FakeClock clock;
  Scheduler<FakeClock> s(opts(8, 50000), clock);
  Entry warm = make(8);
  run_one_batch(s, clock, warm, 3000);
  CHECK_EQ(s.service_estimate_ns(), 3000000);
  Batch out;
  const TimePoint t0 = clock.now();
  Entry a = make(2);
  a.deadline_ns = t0 + 20000000;
  CHECK(queued(s.try_push(&a)));
  CHECK_EQ(s.next_deadline(), t0 + 12000000);
  CHECK_EQ(s.next_expiry(), t0 + 17000000);
  clock.advance_us(11999);
  CHECK(!s.try_pop(out));
  clock.advance_us(1);
  CHECK(s.try_pop(out));
  CHECK(out.reason == DispatchReason::kDeadline);
  CHECK(out.expired.empty());
  CHECK_EQ(out.size, 2u);
  CHECK_EQ(s.stats().batches_by_reason[static_cast<int>(DispatchReason::kDeadline)], 1u);
  s.finish_batch(out, 1, false);
  out.clear();
  // Pushed too late to make it even if sent now: it expires, it is not sent.
  Entry late = make(1);
  late.deadline_ns = clock.now() + 2500000;
  CHECK(queued(s.try_push(&late)));
  CHECK(!s.try_pop(out));
  CHECK(out.expired.size() == 1 && out.expired[0].entry == &late);
}

TEST(a_slow_batch_ages_out_of_the_service_estimate) {
  // One 2 s batch (a warm-up) would make every 100 ms deadline expire on
  // arrival, and with nothing sent the estimate would never change: samples
  // count for kServiceWindowNs only.
  FakeClock clock;
  Scheduler<FakeClock> s(opts(8, 50000), clock);
  Entry warm = make(8);
  run_one_batch(s, clock, warm, 2000000);
  Batch out;
  Entry a = make(1);
  a.deadline_ns = clock.now() + 100000000;
  CHECK(queued(s.try_push(&a)));
  CHECK(!s.try_pop(out));
  CHECK(out.expired.size() == 1 && out.expired[0].entry == &a);  // 2 s > 100 ms: expired at once
  out.clear();
  clock.advance_ns(Scheduler<FakeClock>::kServiceWindowNs + 1);
  Entry b = make(1);
  b.deadline_ns = clock.now() + 100000000;
  CHECK(queued(s.try_push(&b)));
  CHECK_EQ(s.next_expiry(), b.deadline_ns);  // the estimate is 0 again
  CHECK(!s.try_pop(out));
  CHECK(out.expired.empty());
  s.shutdown();
  CHECK_EQ(s.drain().size(), 1u);
}

TEST(watcher_reports_expiry_while_no_worker_looks) {
  // A thread in wait_expired hears of an expiry at its time, and of a push
  // with an earlier deadline than the one it sleeps for; shutdown ends it.
  Scheduler<SteadyClock> s(opts(8, 60000000));
  Entry far = make(1), near = make(1);
  far.deadline_ns = s.clock().now() + 30000000000LL;  // 30 s
  CHECK(queued(s.try_push(&far)));
  std::vector<Expired> got;
  std::atomic<bool> done{false};
  std::thread watcher([&] {
    std::vector<Expired> batch;
    while (s.wait_expired(batch)) {
      got.insert(got.end(), batch.begin(), batch.end());
      done.store(true);
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(5));  // let it sleep for `far`
  near.deadline_ns = s.clock().now() + 20000000;  // 20 ms
  CHECK(queued(s.try_push(&near)));
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!done.load() && std::chrono::steady_clock::now() < give_up)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  CHECK(done.load());
  s.shutdown();
  watcher.join();
  CHECK(got.size() == 1 && got[0].entry == &near);
  CHECK_EQ(s.drain().size(), 1u);  // `far` is still queued
}

TEST(fuzz_one_worker_greedy) { fuzz(1, 4, 20000, 0); }
TEST(fuzz_one_worker_with_timeout) { fuzz(1, 4, 5000, 200); }
TEST(fuzz_three_workers) { fuzz(3, 4, 20000, 50); }

TEST_MAIN()

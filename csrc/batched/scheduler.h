// Scheduler: producers push entries, workers take batches (the thread driver).
//
// Producers call try_push from any thread: it is lock-free (one CAS into the
// inbox, two counters) unless a worker is asleep, in which case the producer
// takes the worker mutex briefly to wake it (eventcount style: no notify, and
// no lock, while every worker is awake).
//
// Workers call wait_pop: they take turns on one mutex, move the inbox into the
// policy (batching rules: policy.h), and either leave with a batch or sleep on
// a condition variable until the next deadline or a push. An event-loop
// driver uses try_pop and next_deadline instead of sleeping, and try_push
// tells it when to look (kOkMayDispatch), so it never guesses the rules.
//
// Latency: a push that makes a batch ready wakes a sleeping worker at once; a
// timeout fires when the clock reaches it (condition-variable precision).
// Nothing polls: an idle scheduler sleeps without a deadline.
//
// Deadlines: a call with a deadline (Entry::deadline_ns, BatchOptions::
// deadline_us) expires, unsent, once a batch sent at once could no longer
// finish by it (the service estimate: the longest that one of the last 16
// batches took from dispatch to hand-out, within the last 10 s, observed
// through batch_delivered). Whoever looks at the queue
// expires what is due and reports it: wait_pop and try_pop in Batch::expired
// (even with no batch), expire_now for an event loop's timer, and
// wait_expired for a watcher thread, which a thread driver runs so that a
// caller hears of its deadline when it passes, not when a worker is free.
//
// Shutdown: after shutdown() no push succeeds, wait_pop returns false, and
// drain() hands back every entry that was queued and never fully dispatched.
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <mutex>
#include <new>
#include <thread>
#include <vector>

#include <batched/clock.h>
#include <batched/entry.h>
#include <batched/mpsc_inbox.h>
#include <batched/options.h>
#include <batched/keyed_policy.h>
#include <batched/stats.h>
#include <batched/tuning.h>

namespace batched {

enum class PushStatus : std::uint8_t {
  kOk = 0,             // queued; the scheduler holds the entry until dispatched or drained
  kQueueFull = 1,      // max_queue_size would be exceeded; nothing was queued
  kClosed = 2,         // shutdown() was called; nothing was queued
  kOkMayDispatch = 3,  // queued, as kOk, and a batch may be ready now or the next deadline
                       // moved (the queue was empty, the batch is full, a length budget is
                       // set, or timeout 0): a driver that keeps its own timer looks now
  kNoMemory = 4,       // the call's item units could not be allocated; nothing was queued
};

// Whether a push queued its entry (kOk or kOkMayDispatch).
inline bool queued(PushStatus s) noexcept { return s == PushStatus::kOk || s == PushStatus::kOkMayDispatch; }

template <class Clock = SteadyClock>
class Scheduler {
 public:
  explicit Scheduler(const BatchOptions& options, Clock clock = Clock())
      : options_((options.validate(), options)),
        item_units_(KeyedPolicy::uses_item_units(options_)),
        clock_(std::move(clock)),
        policy_(options_),
        cap_(options_.max_batch_size) {
    stats_.batch_sizes.assign(options_.max_batch_size + 1, 0);
    publish_live(options_);
    publish_cap();
  }
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // The options in force (configure changes some). Thread-safe.
  BatchOptions options() const {
    std::lock_guard<std::mutex> lock(mu_);
    return options_;
  }
  const Clock& clock() const noexcept { return clock_; }

  // Changes the live settings: max_batch_size, timeout_us, aging_us and
  // adaptive in force from the next batch (BatchPolicy::configure), and
  // max_queue_size and deadline_us for the pushes that follow. The other
  // fields are fixed at construction: they must be equal to the current
  // ones. Throws std::invalid_argument (nothing changed) otherwise, or if
  // `next` is invalid. Wakes the workers and the watcher, whose plans may
  // change. A new batch size resets what split_on learned (SizeCap).
  // Thread-safe.
  void configure(const BatchOptions& next) {
    next.validate();
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (next.small_batch_threshold != options_.small_batch_threshold || next.priority_rule != options_.priority_rule ||
          next.max_batch_length != options_.max_batch_length || next.max_batch_tokens != options_.max_batch_tokens ||
          next.pad_to_multiple_of != options_.pad_to_multiple_of || next.num_workers != options_.num_workers ||
          next.keep_calls_whole != options_.keep_calls_whole) {
        throw std::invalid_argument(
            "only max_batch_size, timeout_us, aging_us, deadline_us, max_queue_size and adaptive can change "
            "after construction");
      }
      std::lock_guard<std::mutex> stats_lock(stats_mu_);
      if (next.max_batch_size != options_.max_batch_size) {
        if (stats_.batch_sizes.size() < next.max_batch_size + 1) stats_.batch_sizes.resize(next.max_batch_size + 1, 0);
        cap_ = SizeCap(next.max_batch_size);
        publish_cap();
      }
      options_ = next;
      policy_.configure(next);
      policy_.set_cap(cap_.cap());
      cap_applied_ = cap_.cap();
      if (!next.adaptive) {
        wait_ = AdaptiveWait();
        policy_.set_adaptive_wait(wait_);
      }
      publish_live(next);
      wake_ = true;
      watch_wake_ = true;
    }
    cv_.notify_all();
    watch_cv_.notify_all();
  }

  // Queues `e` (count >= 1; priority and lengths set). Takes the entry iff
  // queued(status). Lock-free unless a worker sleeps. Does not allocate,
  // except the call's item units under shortest-first (BatchPolicy::
  // uses_item_units): allocated here, so that running out of memory fails
  // this push alone (kNoMemory), never the consumer. Thread-safe.
  PushStatus try_push(Entry* e) noexcept {
    // Announce the push so shutdown() can wait until no push is half done.
    if (gate_.fetch_add(1, std::memory_order_acq_rel) & kClosedBit) {
      gate_.fetch_sub(1, std::memory_order_acq_rel);
      return PushStatus::kClosed;
    }
    const std::size_t n = e->count;
    std::size_t before = 0;
    if (!reserve(n, before)) {
      gate_.fetch_sub(1, std::memory_order_acq_rel);
      rejected_.fetch_add(n, std::memory_order_relaxed);
      return PushStatus::kQueueFull;
    }
    e->items = nullptr;
    if (item_units_) {
      e->items = new (std::nothrow) detail::Unit[n];
      if (e->items == nullptr) {
        queued_.fetch_sub(n, std::memory_order_relaxed);
        gate_.fetch_sub(1, std::memory_order_acq_rel);
        return PushStatus::kNoMemory;
      }
    }
    e->enqueue_ns = clock_.now();
    e->taken = 0;
    const TimePoint every_deadline_ns = deadline_ns_.load(std::memory_order_relaxed);
    if (every_deadline_ns != 0 && e->enqueue_ns + every_deadline_ns < e->deadline_ns) {
      e->deadline_ns = e->enqueue_ns + every_deadline_ns;
    }
    const TimePoint deadline = e->deadline_ns;  // `e` belongs to the consumer once pushed
    const std::uint64_t e_key = e->key;           // (a key's batch fills and times out on its own)
    inbox_.push(e);
    gate_.fetch_sub(1, std::memory_order_acq_rel);
    // Wake a sleeping worker only if this push can change its plan: a worker
    // sleeps without a deadline (nothing was queued when it looked), or the
    // batch may now be full, or a length budget may now be exceeded. A worker
    // that sleeps until the oldest item's deadline needs no wake-up for an
    // item that neither fills the batch nor moves that deadline.
    // `undeadlined_` is read after the push (seq_cst), and a worker raises it
    // before its last look at the inbox (seq_cst): one of the two sees the other.
    // A deadline may move the time to look, for a worker (the deadline rule)
    // and for the watcher (expiry): both hear of it. The watcher publishes
    // the time it sleeps to before its last look at the inbox (seq_cst).
    // (each_push_may_dispatch_: a length budget, timeout 0, adaptive waits)
    const bool may_dispatch = before == 0 || before + n >= push_batch_size_.load(std::memory_order_relaxed) ||
                              each_push_may_dispatch_.load(std::memory_order_relaxed) || deadline != kNever ||
                              e_key != 0;
    if (may_dispatch || undeadlined_.load(std::memory_order_seq_cst) > 0) wake_one_if_sleeping();
    if (deadline != kNever && deadline - service_ns_.load(std::memory_order_relaxed) <
                                  watch_until_.load(std::memory_order_seq_cst)) {
      wake_watcher();
    }
    return may_dispatch ? PushStatus::kOkMayDispatch : PushStatus::kOk;
  }

  // Takes out of the queue the items of `e` that were not dispatched yet
  // (cancellation), and returns how many. Returns 0 if every item was
  // dispatched already or the scheduler is shut down (drain() reports the
  // entry then). `e` must have been queued by try_push. Thread-safe.
  std::uint32_t cancel(Entry* e) {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) return 0;
    absorb_inbox();
    if (e->taken == e->count) return 0;
    const std::uint32_t removed = policy_.remove(e);
    e->taken = e->count;  // nothing of it is queued any more
    queued_.fetch_sub(removed, std::memory_order_relaxed);
    std::lock_guard<std::mutex> stats_lock(stats_mu_);
    stats_.cancelled_items += removed;
    return removed;
  }

  // Blocks until a batch is ready, or calls expired, and moves them into
  // `out` (a batch, and the expired calls in out.expired, for the driver to
  // report first; the batch may then be empty); returns false once shut
  // down. If `out` holds the batch this worker just ran and passed to
  // finish_batch, items queued before it returned leave at once (docs/semantics.md, 1).
  // Does not allocate in steady state. Thread-safe: any number of workers.
  bool wait_pop(Batch& out) {
    const TimePoint busy_until = out.finished_ns;
    out.clear();
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      if (closed_) return false;
      absorb_inbox();
      const TimePoint now = clock_.now();
      expire_into(now, out.expired);
      tune(now);
      // A thread forming the next batch while one runs (set_running) takes
      // only a batch that waiting could not grow (docs/semantics.md, 15).
      const bool ahead = running_.load(std::memory_order_acquire);
      auto reason = policy_.ready(now, busy_until);
      if (reason && ahead && *reason != DispatchReason::kFull && *reason != DispatchReason::kBudget) reason.reset();
      if (reason) {
        take(now, *reason, out);
        // More may be ready for another worker: hand the turn on.
        const bool more = !policy_.empty() && sleepers_.load(std::memory_order_relaxed) > 0;
        if (more) wake_ = true;
        lock.unlock();
        if (more) cv_.notify_one();
        return true;
      }
      if (!out.expired.empty()) return true;  // report them now; the batch is empty
      // Eventcount: announce the sleep, then look once more, so a push either
      // sees a sleeper (and wakes it) or is seen here.
      // (ahead: no timeout can make a batch leave early; a push that may fill
      // one wakes it, and the running batch's thread takes the rest when it returns)
      const TimePoint deadline = ahead ? kNever : policy_.next_deadline();
      const bool undeadlined = deadline == kNever && !ahead;
      sleepers_.fetch_add(1, std::memory_order_seq_cst);
      if (undeadlined) undeadlined_.fetch_add(1, std::memory_order_seq_cst);
      if (inbox_.empty_approx()) {
        clock_.wait_until(cv_, lock, deadline, [this] { return wake_ || closed_; });
        wake_ = false;
      }
      if (undeadlined) undeadlined_.fetch_sub(1, std::memory_order_relaxed);
      sleepers_.fetch_sub(1, std::memory_order_relaxed);
    }
  }

  // A driver that forms the next batch while one runs (prefetch) says when a
  // batch starts and stops running. Meanwhile wait_pop takes only a batch that
  // waiting could not grow: full, or over the length or token budget. The
  // thread of the running batch, once it returns and has no next batch, looks
  // at the queue itself, so nothing waits on a thread held back by this.
  // Thread-safe.
  void set_running(bool running) noexcept { running_.store(running, std::memory_order_release); }

  // Moves a ready batch into `out` without blocking; false if none is ready.
  // Calls that expired meanwhile are in out.expired either way. Like
  // wait_pop, if `out` holds a batch passed to finish_batch, items queued
  // before it returned count as a drain. For the event-loop driver.
  // Thread-safe.
  bool try_pop(Batch& out) {
    const TimePoint busy_until = out.finished_ns;
    out.clear();
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) return false;
    absorb_inbox();
    const TimePoint now = clock_.now();
    expire_into(now, out.expired);
    tune(now);
    if (auto reason = policy_.ready(now, busy_until)) {
      take(now, *reason, out);
      return true;
    }
    return false;
  }

  // When the timeout or deadline rule fires next (kNever if nothing is
  // queued). Thread-safe.
  TimePoint next_deadline() {
    std::lock_guard<std::mutex> lock(mu_);
    absorb_inbox();
    const TimePoint now = clock_.now();
    policy_.set_service_ns(service_at(now));
    tune(now);
    return policy_.next_deadline();
  }

  // When the first queued call expires (kNever if none has a deadline).
  // Thread-safe.
  TimePoint next_expiry() {
    std::lock_guard<std::mutex> lock(mu_);
    absorb_inbox();
    policy_.set_service_ns(service_at(clock_.now()));
    return policy_.next_expiry();
  }

  // Moves the calls that have expired into `out` (cleared first), without
  // blocking. For an event loop's timer. Thread-safe.
  void expire_now(std::vector<Expired>& out) {
    out.clear();
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) return;
    absorb_inbox();
    expire_into(clock_.now(), out);
  }

  // Blocks until queued calls expire and moves them into `out` (cleared
  // first); returns false once shut down. For one watcher thread, which
  // sleeps until the first expiry and is woken by pushes with an earlier one.
  // Thread-safe.
  bool wait_expired(std::vector<Expired>& out) {
    out.clear();
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      if (closed_) return false;
      absorb_inbox();
      expire_into(clock_.now(), out);
      if (!out.empty()) return true;
      const TimePoint until = policy_.next_expiry();
      // Eventcount, as for workers: publish the wake-up time, then look once
      // more, at the inbox and at the service estimate (batch_delivered).
      watch_until_.store(until, std::memory_order_seq_cst);
      if (inbox_.empty_approx() && service_ns_.load(std::memory_order_seq_cst) == policy_.service_ns()) {
        clock_.wait_until(watch_cv_, lock, until, [this] { return watch_wake_ || closed_; });
        watch_wake_ = false;
      }
      watch_until_.store(kNotWatching, std::memory_order_relaxed);
    }
  }

  // After the results of a batch from wait_pop/try_pop are handed out:
  // updates the service estimate that deadlines use, the longest time from
  // dispatch to hand-out among the last kServiceSamples batches handed out
  // within kServiceWindowNs (a batch sent now is taken to last as long as the
  // slowest recent one; a one-off slow batch, a warm-up, ages out, so a
  // processor whose calls all expire sends again). Thread-safe.
  void batch_delivered(const Batch& batch) {
    const TimePoint now = clock_.now();
    const TimePoint sample = std::max<TimePoint>(0, now - batch.dispatch_ns);
    TimePoint was, estimate;
    if (batch.splits != 0) return;  // its time is that of several tries: not one batch's
    {
      std::lock_guard<std::mutex> lock(stats_mu_);
      service_samples_[service_next_++ % kServiceSamples] = Sample{sample, now};
      was = service_ns_.load(std::memory_order_relaxed);
      estimate = refresh_service(now);
      if (batch.size > 0) {
        cost_.observe(batch.size, sample);
        fixed_ns_.store(cost_.fixed_ns(), std::memory_order_relaxed);
      }
    }
    // A longer estimate brings expiries forward: the watcher looks again
    // (it re-reads the estimate after publishing watch_until_: one of the two sees the other).
    if (estimate > was && watch_until_.load(std::memory_order_seq_cst) != kNotWatching) wake_watcher();
  }

  // How long a sample counts for the service estimate.
  static constexpr TimePoint kServiceWindowNs = 10'000'000'000;  // 10 s

  // The current service estimate (0 before the first batch). Thread-safe.
  TimePoint service_estimate_ns() const noexcept { return service_ns_.load(std::memory_order_relaxed); }

  // Records that a batch taken by wait_pop/try_pop has finished running (its
  // function took run_ns) and stamps it with the time, for wait_pop's drain
  // rule. Thread-safe.
  void finish_batch(Batch& batch, std::int64_t run_ns, bool failed) {
    finish_batch_items(batch, run_ns, failed ? batch.size : 0);
  }

  // The same, when `failed_items` of the batch failed (a split batch: some
  // of its parts may have succeeded).
  void finish_batch_items(Batch& batch, std::int64_t run_ns, std::size_t failed_items) {
    batch.finished_ns = clock_.now();
    std::lock_guard<std::mutex> lock(stats_mu_);
    stats_.total_processed += batch.size;
    stats_.total_batches += 1;
    if (failed_items != 0) {
      stats_.failed_batches += 1;
      stats_.failed_items += failed_items;
    } else if (batch.splits == 0 && cap_.cap() < cap_.max()) {  // the cap may probe upward
      cap_.succeeded(batch.size);
      publish_cap();
    }
    stats_.total_run_ns += run_ns;
    stats_.batch_latency.record(run_ns);
  }

  // The front end split a batch (or part) of `n` items that was too big
  // (split_on) to retry its two parts. Counts the split in `top` (the batch
  // as dispatched) and in the stats, and lowers the batch cap (tuning.h
  // SizeCap) for the batches that follow. Thread-safe.
  void batch_split(Batch& top, std::size_t n) {
    top.splits += 1;
    std::lock_guard<std::mutex> lock(stats_mu_);
    stats_.split_batches += 1;
    cap_.too_big(n);
    publish_cap();
  }

  // A part of a split batch, of `n` items, ran without being too big. Thread-safe.
  void part_succeeded(std::size_t n) {
    std::lock_guard<std::mutex> lock(stats_mu_);
    cap_.succeeded(n);
    publish_cap();
  }

  // Closes the scheduler: later pushes fail with kClosed and every worker in
  // wait_pop returns false. Idempotent. Thread-safe.
  void shutdown() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (closed_) return;
      closed_ = true;
    }
    gate_.fetch_or(kClosedBit, std::memory_order_acq_rel);
    // A push that passed the gate finishes in a few instructions.
    while ((gate_.load(std::memory_order_acquire) & ~kClosedBit) != 0) std::this_thread::yield();
    cv_.notify_all();  // after unlocking: woken workers need the mutex at once
    watch_cv_.notify_all();
  }

  // After shutdown(): removes every entry that still has undispatched items,
  // oldest first, and returns them (an entry's `taken` tells how many of its
  // items were dispatched, `first_left` the lowest index that was not).
  // Thread-safe; each entry is returned once.
  std::vector<Entry*> drain() {
    std::vector<Entry*> left;
    std::lock_guard<std::mutex> lock(mu_);
    absorb_inbox();
    policy_.clear([&](Entry* e) { left.push_back(e); });
    std::size_t items = 0;
    for (Entry* e : left) items += e->count - e->taken;
    queued_.fetch_sub(items, std::memory_order_relaxed);
    return left;
  }

  bool closed() const {
    std::lock_guard<std::mutex> lock(mu_);
    return closed_;
  }

  // max_queue_size in force (0: unbounded). Thread-safe, lock-free.
  std::size_t max_queue_size() const noexcept { return max_queue_size_.load(std::memory_order_relaxed); }

  // Racy observer: items pushed and not yet dispatched. Thread-safe.
  std::size_t size_approx() const noexcept { return queued_.load(std::memory_order_relaxed); }

  // A consistent copy of the statistics, and the age of the oldest queued
  // item. Takes the worker mutex briefly (to find that item), then the stats
  // mutex to copy about 9 KiB. Thread-safe.
  BatchStats stats() const {
    TimePoint oldest;
    double rate, followers;
    AdaptiveWait wait;
    {
      std::lock_guard<std::mutex> lock(mu_);
      absorb_inbox();  // the oldest item may not have reached the policy yet
      oldest = policy_.oldest_enqueue_ns();
      rate = rate_.per_ns(clock_.now());
      followers = starts_.mean();
      wait = wait_;
    }
    std::lock_guard<std::mutex> stats_lock(stats_mu_);
    BatchStats s = stats_;
    s.oldest_wait_ns = oldest == kNever ? 0 : std::max<std::int64_t>(0, clock_.now() - oldest);
    s.queued_items = size_approx();
    s.rejected_items = rejected_.load(std::memory_order_relaxed);
    s.batch_cap = cap_.cap();
    s.cost_fixed_ns = cost_.fixed_ns();
    s.cost_per_item_ns = cost_.per_item_ns();
    s.cost_samples = cost_.samples();
    s.arrival_per_s = rate * 1e9;
    s.start_followers = followers;
    s.adaptive_enough = wait.enough;
    s.adaptive_wait_ns = wait.wait_ns;
    return s;
  }

  // Sets every counter and histogram back to zero (queued items stay
  // queued). Thread-safe.
  void reset_stats() {
    std::lock_guard<std::mutex> lock(stats_mu_);
    const std::size_t sizes = stats_.batch_sizes.size();  // (max_batch_size + 1, or more after a configure)
    stats_ = BatchStats();
    stats_.batch_sizes.assign(sizes, 0);
    rejected_.store(0, std::memory_order_relaxed);
  }

  // ---- implementation details follow ----
 private:
  static constexpr std::uint64_t kClosedBit = std::uint64_t{1} << 63;
  // watch_until_ while the watcher is not asleep (or there is none): no push wakes it.
  static constexpr TimePoint kNotWatching = std::numeric_limits<TimePoint>::min();

  void wake_watcher() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      watch_wake_ = true;
    }
    watch_cv_.notify_one();
  }

  // The service estimate at `now` (samples older than the window no longer count).
  TimePoint service_at(TimePoint now) {
    if (now <= service_valid_until_.load(std::memory_order_acquire)) return service_ns_.load(std::memory_order_relaxed);
    std::lock_guard<std::mutex> lock(stats_mu_);
    return refresh_service(now);
  }

  // Requires stats_mu_. Recomputes the estimate from the samples of the window.
  TimePoint refresh_service(TimePoint now) {
    TimePoint estimate = 0, at = 0;
    bool any = false;
    for (const Sample& s : service_samples_) {
      if (s.at == kNoSample || now - s.at > kServiceWindowNs) continue;
      if (!any || s.duration > estimate || (s.duration == estimate && s.at > at)) {
        estimate = s.duration;
        at = s.at;
        any = true;
      }
    }
    service_ns_.store(estimate, std::memory_order_seq_cst);
    service_valid_until_.store(any ? at + kServiceWindowNs : kNever, std::memory_order_release);
    return estimate;
  }

  // Requires mu_. Moves the expired calls into `out` and counts them.
  void expire_into(TimePoint now, std::vector<Expired>& out) {
    policy_.set_service_ns(service_at(now));
    std::size_t items = 0;
    policy_.expire(now, [&](Entry* e, std::uint32_t removed, std::uint32_t first_left) {
      e->taken = e->count;  // nothing of it is queued any more (as after cancel)
      items += removed;
      out.push_back(Expired{e, removed, first_left});
    });
    if (items == 0) return;
    queued_.fetch_sub(items, std::memory_order_relaxed);
    std::lock_guard<std::mutex> lock(stats_mu_);
    stats_.expired_items += items;
  }

  // Reserves room for n items and sets `before` to the count it found; false
  // if max_queue_size would be exceeded. Bounded queues use a CAS loop, so a
  // call that does not fit never makes a concurrent smaller call look full.
  bool reserve(std::size_t n, std::size_t& before) noexcept {
    const std::size_t limit = max_queue_size_.load(std::memory_order_relaxed);
    if (limit == 0) {
      before = queued_.fetch_add(n, std::memory_order_relaxed);
      return true;
    }
    std::size_t cur = queued_.load(std::memory_order_relaxed);
    do {
      if (n > limit || cur > limit - n) return false;
    } while (!queued_.compare_exchange_weak(cur, cur + n, std::memory_order_relaxed));
    before = cur;
    return true;
  }

  void wake_one_if_sleeping() {
    if (sleepers_.load(std::memory_order_seq_cst) == 0) return;
    {
      std::lock_guard<std::mutex> lock(mu_);
      wake_ = true;
    }
    cv_.notify_one();  // after unlocking, so the woken worker does not block on mu_
  }

  // Requires mu_. Const because moving entries from the inbox to the policy
  // changes no observable state: both hold the queued items.
  void absorb_inbox() const {
    const bool adaptive = options_.adaptive;
    const TimePoint window = adaptive ? follow_window() : 0;
    for (Entry* e = inbox_.take_all(); e != nullptr;) {
      Entry* next = e->inbox_next;
      e->inbox_next = nullptr;
      const bool was_empty = policy_.empty();
      policy_.add(e);
      if (adaptive) {
        rate_.observe(e->enqueue_ns, e->count);
        starts_.observe(e->enqueue_ns, e->count, was_empty, window);
      }
      e = next;
    }
  }

  // Requires mu_. Gives the policy what was learned: the batch cap
  // (split_on) and, under adaptive waits, the wait (tuning.h AdaptiveWait).
  void tune(TimePoint now) {
    const std::size_t cap = cap_now_.load(std::memory_order_relaxed);
    if (cap != cap_applied_) {
      policy_.set_cap(cap);
      cap_applied_ = cap;
    }
    if (!options_.adaptive) return;
    starts_.close_if_done(now);
    const AdaptiveWait w = AdaptiveWait::of(starts_.known(), starts_.mean(), fixed_ns_.load(std::memory_order_relaxed),
                                            options_.timeout_us * 1000, std::min(cap, options_.max_batch_size));
    if (w.enough != wait_.enough || w.wait_ns != wait_.wait_ns) {
      policy_.set_adaptive_wait(w);
      wait_ = w;
    }
  }

  // Requires mu_. The window of StartFollowers: the batch's fixed cost, or
  // the timeout before it is known.
  TimePoint follow_window() const noexcept {
    const double fixed = fixed_ns_.load(std::memory_order_relaxed);
    return fixed > 0 ? static_cast<TimePoint>(fixed) : options_.timeout_us * 1000;
  }

  // Requires stats_mu_ (or construction). The cap (at most max_batch_size),
  // for tune() and for try_push: a push that fills a capped batch wakes a worker.
  void publish_cap() noexcept {
    cap_now_.store(cap_.cap(), std::memory_order_relaxed);
    push_batch_size_.store(cap_.cap(), std::memory_order_relaxed);
  }

  // Requires mu_ (or construction). What try_push reads of the live
  // settings without the lock (and publish_cap).
  void publish_live(const BatchOptions& o) noexcept {
    each_push_may_dispatch_.store(o.max_batch_length != 0 || o.max_batch_tokens != 0 || o.timeout_us == 0 || o.adaptive,
                                  std::memory_order_relaxed);
    max_queue_size_.store(o.max_queue_size, std::memory_order_relaxed);
    deadline_ns_.store(o.deadline_us * 1000, std::memory_order_relaxed);
  }

  // Requires mu_.
  void take(TimePoint now, DispatchReason reason, Batch& out) {
    policy_.pop(now, reason, out);  // (expire_into has set the policy's service estimate)
    queued_.fetch_sub(out.size, std::memory_order_relaxed);
    std::lock_guard<std::mutex> lock(stats_mu_);
    stats_.total_dispatched += out.size;
    stats_.batches_by_reason[static_cast<std::size_t>(reason)] += 1;
    stats_.batch_sizes[out.size] += 1;
    for (const Span& s : out.spans) stats_.queue_wait.record(now - s.entry->enqueue_ns, s.count);
  }

  BatchOptions options_;   // guarded by mu_ (configure); try_push reads the copies below
  const bool item_units_;  // pushes allocate one Unit per item (see try_push)
  const Clock clock_;
  // The live settings try_push reads without the lock (publish_live).
  std::atomic<std::size_t> push_batch_size_{0};  // the batch cap (publish_cap): a push filling it wakes a worker
  std::atomic<bool> each_push_may_dispatch_{false};
  std::atomic<std::size_t> max_queue_size_{0};
  std::atomic<TimePoint> deadline_ns_{0};  // 0: no deadline for every call

  mutable MpscInbox<Entry, &Entry::inbox_next> inbox_;  // mutable: see absorb_inbox
  alignas(64) std::atomic<std::uint64_t> gate_{0};     // pushes in progress | kClosedBit
  alignas(64) std::atomic<std::size_t> queued_{0};     // pushed, not yet dispatched
  std::atomic<std::uint64_t> rejected_{0};
  alignas(64) std::atomic<int> sleepers_{0};           // workers about to sleep or asleep
  std::atomic<int> undeadlined_{0};                    // of which: with no deadline
  std::atomic<TimePoint> watch_until_{kNotWatching};  // when the sleeping watcher wakes (kNever: no expiry)
  std::atomic<TimePoint> service_ns_{0};               // the service estimate (batch_delivered)
  std::atomic<bool> running_{false};                   // a batch runs (set_running): wait_pop forms the next one ahead

  mutable std::mutex mu_;  // guards policy_, wake_, closed_; workers take turns on it
  std::condition_variable cv_;
  std::condition_variable watch_cv_;  // the watcher's (wait_expired)
  bool wake_ = false;
  bool watch_wake_ = false;
  bool closed_ = false;
  mutable KeyedPolicy policy_;  // mutable: see absorb_inbox
  mutable ArrivalRate rate_;    // observed in absorb_inbox, under adaptive waits
  mutable StartFollowers starts_;  // (the same)
  AdaptiveWait wait_;           // the wait last given to the policy
  std::size_t cap_applied_ = static_cast<std::size_t>(-1);  // the cap last given to the policy

  mutable std::mutex stats_mu_;  // guards stats_ and the service samples; taken after mu_ when both are held
  BatchStats stats_;
  static constexpr std::size_t kServiceSamples = 16;
  struct Sample {
    TimePoint duration;  // dispatch to hand-out
    TimePoint at;        // when it was handed out; kNoSample: none yet
  };
  static constexpr TimePoint kNoSample = std::numeric_limits<TimePoint>::min();
  std::array<Sample, kServiceSamples> service_samples_ = [] {
    std::array<Sample, kServiceSamples> a{};
    for (Sample& s : a) s = Sample{0, kNoSample};
    return a;
  }();
  std::size_t service_next_ = 0;
  BatchCostModel cost_;                       // batch time against size (batch_delivered)
  std::atomic<double> fixed_ns_{0.0};         // cost_.fixed_ns(), for tune() under mu_
  SizeCap cap_;                               // split_on's batch cap (batch_split, finish_batch_items)
  std::atomic<std::size_t> cap_now_{static_cast<std::size_t>(-1)};  // cap_.cap(), for tune() under mu_
  std::atomic<TimePoint> service_valid_until_{kNever};  // when the estimate may age (refresh_service)
};

}  // namespace batched

// Glue between the C++ core and the Cython bridge: what Cython cannot say
// cleanly (template instances, a completion that blocks without the GIL).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <utility>
#include <vector>

#include <batched/clock.h>
#include <batched/scheduler.h>

namespace batched_glue {

using PyScheduler = batched::Scheduler<batched::SteadyClock>;

inline std::int64_t monotonic_ns() noexcept { return batched::SteadyClock().now(); }

// One per call: the caller waits here (without the GIL) until a worker has
// handed out the call's last result. notify() is called once.
//
// Reference counted, because the two sides finish in either order: the call
// record holds one reference, and a worker takes one to notify after it has
// released the GIL (so woken callers do not queue for a GIL the worker holds).
// Create with `new`; each holder calls release() once.
class Completion {
 public:
  void retain() noexcept { refs_.fetch_add(1, std::memory_order_relaxed); }
  void release() noexcept {
    if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
  }

  void notify() noexcept {
    {
      std::lock_guard<std::mutex> lock(mu_);
      done_ = true;
    }
    cv_.notify_one();  // after unlocking: the waiter needs the mutex at once
  }

  void wait() noexcept {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [this] { return done_; });
  }

  // Waits at most `ms` milliseconds; returns whether the call is done.
  bool wait_for_ms(int ms) noexcept {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, std::chrono::milliseconds(ms), [this] { return done_; });
  }

 private:
  std::atomic<int> refs_{1};
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
};

// Completions a worker notifies once it has released the GIL. Not thread-safe:
// one per worker.
class PendingNotifications {
 public:
  void add(Completion* c) {
    c->retain();
    pending_.push_back(c);
  }
  void notify_all() noexcept {
    for (Completion* c : pending_) {
      c->notify();
      c->release();
    }
    pending_.clear();
  }
  bool empty() const noexcept { return pending_.empty(); }

 private:
  std::vector<Completion*> pending_;
};

inline void swap_batches(batched::Batch& a, batched::Batch& b) { std::swap(a, b); }

// The hand-over between the two threads of a prefetching thread driver
// (docs/semantics.md, 15): while one thread runs a batch, the other forms,
// collates and parks the next one; the running thread, when its batch
// returns, swaps it for the parked one and goes straight on, and the other
// thread hands out the finished batch. The batch function never runs on
// both threads at once. Batches are swapped by the caller (with the GIL);
// this class keeps the flags consistent.
class Pipeline {
 public:
  explicit Pipeline(PyScheduler* sched) noexcept : sched_(sched) {}

  // A thread has formed `batch`: true if it runs it now (nothing runs);
  // false if `batch` is parked as the next one (then wait_handover()).
  bool start_or_park(batched::Batch* batch) {
    std::lock_guard<std::mutex> lock(mu_);
    forming_ = false;
    if (!running_) {
      running_ = true;
      sched_->set_running(true);
      cv_.notify_all();  // (a running thread may wait for a batch being formed: none is)
      return true;
    }
    parked_ = batch;
    cv_.notify_all();
    return false;
  }

  // A thread has just popped a batch (called at once, without the GIL): if
  // one runs, this batch is being formed ahead, and the running thread, if
  // its batch returns meanwhile, waits for it rather than stop and let a
  // later, smaller batch go first. start_or_park (or formed_nothing, if
  // collating failed) ends it.
  void popped() {
    std::lock_guard<std::mutex> lock(mu_);
    if (running_) forming_ = true;
  }
  void formed_nothing() {
    std::lock_guard<std::mutex> lock(mu_);
    forming_ = false;
    cv_.notify_all();
  }

  // The running thread's batch returned: the parked batch, which it runs
  // next (the caller swaps them, then calls hand_over()), or nullptr, and
  // nothing runs any more. With `stop` (the running thread failed: a bug),
  // nothing runs any more either way, and the parked batch is returned for
  // the caller to fail. Waits while a batch is being formed ahead (call it
  // without the GIL: forming it needs the GIL).
  batched::Batch* take_parked(bool stop) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [this] { return !forming_ || parked_ != nullptr; });
    batched::Batch* next = parked_;
    parked_ = nullptr;
    if (next == nullptr || stop) {
      running_ = false;
      sched_->set_running(false);
    }
    return next;
  }

  // The parked thread's batch now holds the finished one: wake it.
  void hand_over() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      handed_over_ = true;
    }
    cv_.notify_all();
  }

  // The parked thread waits here until its batch holds a finished one.
  void wait_handover() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [this] { return handed_over_; });
    handed_over_ = false;
  }

 private:
  PyScheduler* sched_;
  std::mutex mu_;
  std::condition_variable cv_;  // (one for every wait here: few waiters, rare waits)
  bool running_ = false;
  bool forming_ = false;
  batched::Batch* parked_ = nullptr;
  bool handed_over_ = false;
};

}  // namespace batched_glue

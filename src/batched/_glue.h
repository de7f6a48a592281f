// Glue between the C++ core and the Cython bridge: what Cython cannot say
// cleanly (template instances, a completion that blocks without the GIL).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
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

 private:
  std::vector<Completion*> pending_;
};

}  // namespace batched_glue

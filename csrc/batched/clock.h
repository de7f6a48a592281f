// Clocks for the batching core.
//
// The scheduler never reads the time itself: it asks its Clock. Production code
// uses SteadyClock; tests use FakeClock and move time by hand, so the timing
// rules (timeout, aging) are tested without sleeping.
//
// A Clock provides
//   TimePoint now() const noexcept;                       // nanoseconds, monotonic
//   bool wait_until(cv, lock, TimePoint deadline, pred);  // cv wait, bounded by deadline
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <limits>
#include <memory>
#include <mutex>

namespace batched {

// Nanoseconds on the clock of the scheduler that produced them.
using TimePoint = std::int64_t;
inline constexpr TimePoint kNever = std::numeric_limits<TimePoint>::max();

class SteadyClock {
 public:
  TimePoint now() const noexcept {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }

  // Waits on `cv` until `pred()` holds or `deadline` has passed (kNever: no
  // deadline). Returns pred(). `lock` must hold the mutex of `cv`.
  template <class Pred>
  bool wait_until(std::condition_variable& cv, std::unique_lock<std::mutex>& lock,
                  TimePoint deadline, Pred pred) const {
    if (deadline == kNever) {
      cv.wait(lock, pred);
      return true;
    }
    const auto when = std::chrono::steady_clock::time_point(std::chrono::nanoseconds(deadline));
    return cv.wait_until(lock, when, pred);
  }
};

// A clock that only moves when told to. Copies share one time line, so a test
// keeps a copy and advances the one the scheduler holds.
class FakeClock {
 public:
  explicit FakeClock(TimePoint start = 0) : now_(std::make_shared<std::atomic<TimePoint>>(start)) {}

  TimePoint now() const noexcept { return now_->load(std::memory_order_acquire); }
  void advance_ns(TimePoint delta) noexcept { now_->fetch_add(delta, std::memory_order_acq_rel); }
  void advance_us(TimePoint delta) noexcept { advance_ns(delta * 1000); }

  // Fake time cannot wake a condition variable, so a waiter with a deadline
  // re-checks every 100 real microseconds; one without a deadline waits for pred.
  template <class Pred>
  bool wait_until(std::condition_variable& cv, std::unique_lock<std::mutex>& lock,
                  TimePoint deadline, Pred pred) const {
    if (deadline == kNever) {
      cv.wait(lock, pred);
      return true;
    }
    if (now() >= deadline) return pred();
    return cv.wait_for(lock, std::chrono::microseconds(100), pred);
  }

 private:
  std::shared_ptr<std::atomic<TimePoint>> now_;
};

}  // namespace batched

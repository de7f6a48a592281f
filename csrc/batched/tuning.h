// What a Scheduler learns from the batches it runs, to tune itself
// (docs/semantics.md, 13):
//  * BatchCostModel: the time a batch takes as a line in its size, fitted
//    online to the batches observed (exponentially weighted least squares).
//  * ArrivalRate: items arriving per second, an exponentially decayed count
//    (shown in the stats).
//  * StartFollowers: how many items follow one that finds the queue empty,
//    within one batch's fixed cost.
//  * AdaptiveWait: from the cost and the followers, how long a batch waits
//    for more items (BatchOptions::adaptive).
//  * SizeCap: the largest batch that fits, learned from batches that were too
//    big (split and retried by the front end: split_on) and probed upward
//    again after enough batches succeed.
// None is thread-safe; the Scheduler guards each with its locks.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include <batched/clock.h>

namespace batched {

// time(n) = fixed + per_item * n, fitted to (n, time) samples; recent
// samples weigh more (each older one by kDecay more), so the line follows a
// device that warms up, or a model that changes, within a few dozen batches.
class BatchCostModel {
 public:
  static constexpr double kDecay = 0.97;

  void observe(std::size_t n, TimePoint ns) noexcept {
    const double x = static_cast<double>(n), y = static_cast<double>(std::max<TimePoint>(0, ns));
    w_ = w_ * kDecay + 1;
    sx_ = sx_ * kDecay + x;
    sy_ = sy_ * kDecay + y;
    sxx_ = sxx_ * kDecay + x * x;
    sxy_ = sxy_ * kDecay + x * y;
    ++samples_;
    fit();
  }

  std::uint64_t samples() const noexcept { return samples_; }
  // Both are >= 0; with no spread in the sizes seen, per_item is 0 and fixed
  // the mean time (all of it is taken as the cost of sending a batch at all).
  double fixed_ns() const noexcept { return fixed_; }
  double per_item_ns() const noexcept { return per_item_; }

 private:
  void fit() noexcept {
    const double mx = sx_ / w_, my = sy_ / w_;
    const double var = sxx_ / w_ - mx * mx;
    // Sizes must spread by about one item before a slope means anything.
    per_item_ = var > 0.25 ? std::max(0.0, (sxy_ / w_ - mx * my) / var) : 0.0;
    fixed_ = std::max(0.0, my - per_item_ * mx);
    if (fixed_ == 0.0 && mx > 0) per_item_ = my / mx;  // (a line through 0 keeps the mean)
  }

  double w_ = 0, sx_ = 0, sy_ = 0, sxx_ = 0, sxy_ = 0;
  double fixed_ = 0, per_item_ = 0;
  std::uint64_t samples_ = 0;
};

// Items per nanosecond over about the last kWindowNs: an exponentially
// decayed count of arrivals (stamps may come out of order: a late stamp adds
// its decayed weight).
class ArrivalRate {
 public:
  static constexpr TimePoint kWindowNs = 500'000'000;  // 0.5 s

  void observe(TimePoint at, std::size_t n) noexcept {
    if (count_ == 0 || at >= last_) {
      count_ = count_ * decay(at - last_) + static_cast<double>(n);
      last_ = at;
    } else {
      count_ += static_cast<double>(n) * decay(last_ - at);
    }
  }

  double per_ns(TimePoint now) const noexcept {
    return now <= last_ ? count_ / kWindowNs : count_ * decay(now - last_) / kWindowNs;
  }

 private:
  static double decay(TimePoint dt) noexcept { return std::exp(-static_cast<double>(dt) / kWindowNs); }

  double count_ = 0;
  TimePoint last_ = 0;
};

// How many items follow an item that finds the queue empty (a queue start)
// within one batch's fixed cost: an exponentially weighted mean over starts.
// For Poisson arrivals at rate r it is r * fixed; for callers that come back
// together (the clients of a batch send again when it returns: closed loops,
// HTTP keep-alive clients) it is the size of the group, which an average
// rate cannot see. The weight is small, so that a few unlucky starts of a
// sparse stream do not make it wait.
class StartFollowers {
 public:
  static constexpr double kWeight = 1.0 / 32;

  // n items arrive at `at`; `was_empty`: nothing was queued before them;
  // `window`: the batch's fixed cost (or, before it is known, the timeout).
  void observe(TimePoint at, std::size_t n, bool was_empty, TimePoint window) noexcept {
    close_if_done(at);
    if (open_) {
      count_ += static_cast<double>(n);
    } else if (was_empty) {
      open_ = true;
      start_ = at;
      window_ = window;
      count_ = static_cast<double>(n) - 1;
    }
  }

  // Ends the start being counted once its window has passed.
  void close_if_done(TimePoint now) noexcept {
    if (!open_ || now - start_ <= window_) return;
    mean_ = samples_ == 0 ? count_ : mean_ + (count_ - mean_) * kWeight;
    ++samples_;
    open_ = false;
  }

  bool known() const noexcept { return samples_ > 0; }
  double mean() const noexcept { return mean_; }

 private:
  bool open_ = false;
  TimePoint start_ = 0;
  TimePoint window_ = 0;
  double count_ = 0;
  double mean_ = 0;
  std::uint64_t samples_ = 0;
};

// How long a batch waits for more items, under adaptive waits: sending a
// batch costs `fixed` whatever its size, and items that arrive while it runs
// wait for it. So a batch waits for the items expected within one `fixed`
// of its first (StartFollowers: `followers`), and no longer than `fixed`
// (beyond that, the batch it waits for would have finished) nor timeout_us.
// Fewer than one expected: nothing waits (a sparse stream, a lone caller).
// Before the first start has been measured, it waits as a fixed timeout
// would (the first calls of a processor, which may all come at once).
struct AdaptiveWait {
  std::size_t enough = 1;  // a batch leaves once this many items are queued
  TimePoint wait_ns = 0;   // or once its oldest item has waited this long

  static AdaptiveWait of(bool known, double followers, double fixed_ns, TimePoint timeout_ns,
                         std::size_t max_batch) noexcept {
    AdaptiveWait w;
    if (!known) {
      w.enough = max_batch;
      w.wait_ns = timeout_ns;
      return w;
    }
    if (!(followers >= 1.0)) return w;  // (also NaN)
    w.enough = static_cast<std::size_t>(std::min<double>(static_cast<double>(max_batch), std::ceil(1.0 + followers)));
    w.wait_ns = std::min<TimePoint>(timeout_ns, fixed_ns > 0 ? static_cast<TimePoint>(fixed_ns) : timeout_ns);
    return w;
  }
};

// The largest batch the batch function is known to run without failing as
// too big. After a batch of n fails, the cap is the largest size known to
// succeed below n (or n / 2, if none is known: the part that is retried
// next); after kProbeAfter batches at the cap
// succeed, it tries half way to the smallest size known to fail; once the
// two are adjacent, it forgets that size after kForgetAfter batches (memory
// frees up; inputs get shorter) and probes upward again.
class SizeCap {
 public:
  static constexpr std::uint32_t kProbeAfter = 16;
  static constexpr std::uint32_t kForgetAfter = 512;

  explicit SizeCap(std::size_t max) noexcept : max_(max), cap_(max), bad_(max + 1) {}

  std::size_t cap() const noexcept { return cap_; }
  std::size_t max() const noexcept { return max_; }

  // A batch of n items was too big (its parts are retried: succeeded()
  // hears of those that run).
  void too_big(std::size_t n) noexcept {
    if (n <= good_) good_ = 0;  // what fitted before no longer does
    bad_ = std::min(bad_, n);
    cap_ = std::max<std::size_t>(1, std::min(good_ == 0 ? n / 2 : good_, max_));
    streak_ = 0;
  }

  // A batch (or part) of n items succeeded.
  void succeeded(std::size_t n) noexcept {
    if (n > good_) {
      good_ = std::min(n, bad_ - 1);
      cap_ = std::max(cap_, std::min(good_, max_));  // (a larger batch dispatched before the cap dropped ran)
    }
    if (cap_ >= max_ || n < cap_) return;  // no cap, or not a full batch at the cap: says nothing new
    ++streak_;
    if (bad_ > good_ + 1) {
      if (streak_ < kProbeAfter) return;
      cap_ = std::min(max_, good_ + (bad_ - good_) / 2);
      streak_ = 0;
    } else if (streak_ >= kForgetAfter) {
      bad_ = max_ + 1;
      cap_ = std::min(max_, good_ + (bad_ - good_) / 2);
      streak_ = 0;
    }
  }

 private:
  std::size_t max_;
  std::size_t cap_;
  std::size_t good_ = 0;  // largest size known to succeed (0: none yet)
  std::size_t bad_;       // smallest size known to fail (max_ + 1: none)
  std::uint32_t streak_ = 0;
};

}  // namespace batched

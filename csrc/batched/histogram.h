// LatencyHistogram: a fixed-size log-linear histogram of durations in ns.
//
// Each power of two is split into 8 buckets, so a percentile read back is
// within 1/16 (6.25%) of the true value; no allocation, 4 KiB, and recording is
// a handful of instructions. Not thread-safe: the owner synchronises.
#pragma once

#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>

namespace batched {

class LatencyHistogram {
 public:
  static constexpr int kSubBits = 3;
  static constexpr std::size_t kSub = std::size_t{1} << kSubBits;
  static constexpr std::size_t kBuckets = 64 * kSub;

  void record(std::int64_t ns, std::uint64_t times = 1) noexcept {
    const std::uint64_t v = ns < 0 ? 0 : static_cast<std::uint64_t>(ns);
    counts_[bucket_of(v)] += times;
    total_ += times;
    sum_ns_ += static_cast<double>(v) * static_cast<double>(times);
  }

  std::uint64_t count() const noexcept { return total_; }
  // The sum of the recorded durations in ns (for exporters' _sum series).
  double sum_ns() const noexcept { return sum_ns_; }

  // Bucket b (0 <= b < kBuckets) holds count_at(b) durations in
  // [lower_bound(b), upper_bound(b)) ns; for exporters that re-bucket.
  std::uint64_t count_at(std::size_t b) const noexcept { return counts_[b]; }
  static double upper_bound(std::size_t b) noexcept { return lower_bound(b + 1); }

  // The q-quantile (0 < q <= 1) in ns, as the middle of its bucket; 0 if empty.
  double quantile(double q) const noexcept {
    if (total_ == 0) return 0.0;
    std::uint64_t rank = static_cast<std::uint64_t>(q * static_cast<double>(total_));
    if (rank == 0) rank = 1;
    std::uint64_t seen = 0;
    for (std::size_t b = 0; b < kBuckets; ++b) {
      seen += counts_[b];
      if (seen >= rank) return (lower_bound(b) + lower_bound(b + 1)) / 2.0;
    }
    return lower_bound(kBuckets);
  }

  // ---- implementation details follow ----
 private:
  static std::size_t bucket_of(std::uint64_t v) noexcept {
    if (v < kSub) return static_cast<std::size_t>(v);  // exact below 8 ns
    const int msb = 63 - __builtin_clzll(v);
    const std::uint64_t sub = (v >> (msb - kSubBits)) & (kSub - 1);
    return static_cast<std::size_t>(msb - kSubBits + 1) * kSub + static_cast<std::size_t>(sub);
  }
  static double lower_bound(std::size_t b) noexcept {
    if (b < kSub) return static_cast<double>(b);
    const std::size_t group = b / kSub;  // >= 1
    const std::size_t sub = b % kSub;
    const double base = std::ldexp(1.0, static_cast<int>(group + kSubBits - 1));  // 2^66 at the top: no shift
    return base + base * static_cast<double>(sub) / kSub;
  }

  std::array<std::uint64_t, kBuckets> counts_{};
  std::uint64_t total_ = 0;
  double sum_ns_ = 0.0;
};

}  // namespace batched

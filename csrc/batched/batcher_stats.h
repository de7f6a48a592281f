// BatcherStats: a Batcher's statistics, with the fields of the Python
// package's BatchProcessorStats (cache_stats aside: the C++ batcher has no cache).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <vector>

#include <batched/entry.h>
#include <batched/stats.h>

namespace batched {

// Percentiles of a duration, in milliseconds, within about 6% (histogram.h).
struct Percentiles {
  double p50 = 0.0;
  double p95 = 0.0;
  double p99 = 0.0;
};

struct BatcherStats {
  std::size_t queue_size = 0;         // items waiting for a batch (racy: a snapshot)
  std::uint64_t total_processed = 0;  // items whose batch has finished running
  std::uint64_t total_batches = 0;    // batches that finished running
  double avg_batch_size = 0.0;        // total_processed / total_batches
  double avg_processing_time = 0.0;   // seconds per batch in the batch function
  Percentiles queue_wait_ms;          // per item: submit to dispatch
  Percentiles batch_latency_ms;       // per batch: run time of the batch function
  // batch_size_histogram[n]: batches dispatched with n items (Python: a dict
  // of the non-zero entries). Size max_batch_size + 1.
  std::vector<std::uint64_t> batch_size_histogram;
  // Indexed by DispatchReason; to_string(reason) gives Python's dict keys
  // ("full", "timeout", "budget", "drain", "deadline").
  std::array<std::uint64_t, kDispatchReasonCount> batches_by_reason{};
  std::uint64_t failed_batches = 0;   // the batch function threw or returned a wrong size
  std::uint64_t failed_items = 0;     // items of those batches
  std::uint64_t rejected_items = 0;   // refused with QueueFullError
  std::uint64_t cancelled_items = 0;  // taken out of the queue before dispatch
  std::uint64_t expired_items = 0;    // taken out of the queue unsent: DeadlineExceeded
  double oldest_wait_ms = 0.0;        // age of the oldest queued item (0: none queued)

  std::uint64_t batches_for(DispatchReason r) const noexcept {
    return batches_by_reason[static_cast<std::size_t>(r)];
  }

  // The Python view of the core's snapshot. Allocates the histogram.
  static BatcherStats from_core(const BatchStats& s) {
    BatcherStats out;
    out.queue_size = s.queued_items;
    out.total_processed = s.total_processed;
    out.total_batches = s.total_batches;
    if (s.total_batches != 0) {
      const double batches = static_cast<double>(s.total_batches);
      out.avg_batch_size = static_cast<double>(s.total_processed) / batches;
      out.avg_processing_time = static_cast<double>(s.total_run_ns) / 1e9 / batches;
    }
    out.queue_wait_ms = percentiles_ms(s.queue_wait);
    out.batch_latency_ms = percentiles_ms(s.batch_latency);
    out.batch_size_histogram = s.batch_sizes;
    out.batches_by_reason = s.batches_by_reason;
    out.failed_batches = s.failed_batches;
    out.failed_items = s.failed_items;
    out.rejected_items = s.rejected_items;
    out.cancelled_items = s.cancelled_items;
    out.expired_items = s.expired_items;
    out.oldest_wait_ms = static_cast<double>(s.oldest_wait_ns) / 1e6;
    return out;
  }

  static Percentiles percentiles_ms(const LatencyHistogram& h) noexcept {
    return Percentiles{h.quantile(0.5) / 1e6, h.quantile(0.95) / 1e6, h.quantile(0.99) / 1e6};
  }
};

}  // namespace batched

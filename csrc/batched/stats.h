// BatchStats: what a scheduler has done, read as one consistent snapshot.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <vector>

#include <batched/entry.h>
#include <batched/histogram.h>

namespace batched {

struct BatchStats {
  std::size_t queued_items = 0;           // waiting for a batch when the snapshot was taken
  std::uint64_t total_dispatched = 0;     // items handed to a worker
  std::uint64_t total_processed = 0;      // items whose batch has finished running
  std::uint64_t total_batches = 0;        // batches that finished running
  std::uint64_t failed_batches = 0;       // of which the batch function failed
  std::uint64_t failed_items = 0;         // items of the failed batches
  std::uint64_t rejected_items = 0;       // refused by try_push (queue full)
  std::uint64_t cancelled_items = 0;      // taken out of the queue by cancel() before dispatch
  std::uint64_t expired_items = 0;        // taken out of the queue unsent: their deadline could no longer be met
  std::int64_t oldest_wait_ns = 0;        // age of the oldest queued item at the snapshot (0: none)
  std::int64_t total_run_ns = 0;          // time spent in the batch function
  std::array<std::uint64_t, kDispatchReasonCount> batches_by_reason{};
  LatencyHistogram queue_wait;            // per item: push to dispatch
  LatencyHistogram batch_latency;         // per batch: run time of the batch function
  std::vector<std::uint64_t> batch_sizes; // batch_sizes[n]: batches of n items
};

}  // namespace batched

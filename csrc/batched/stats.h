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
  // What the scheduler has learned (tuning.h; docs/semantics.md, 13).
  std::uint64_t split_batches = 0;        // batches (or parts) split in two as too big (split_on)
  std::size_t batch_cap = 0;              // the most items a batch takes now: max_batch_size, or less after splits
  double cost_fixed_ns = 0;               // batch time = cost_fixed_ns + cost_per_item_ns * size, as fitted
  double cost_per_item_ns = 0;
  std::uint64_t cost_samples = 0;         // batches the fit has seen
  double arrival_per_s = 0;               // items arriving per second (measured under adaptive waits only)
  double start_followers = 0;             // items following one that found the queue empty, within the fixed cost (adaptive)
  std::size_t adaptive_enough = 1;        // adaptive waits: a batch leaves with this many items...
  std::int64_t adaptive_wait_ns = 0;      // ...or once its oldest has waited this long
};

}  // namespace batched

// Entry: what a producer hands to the batcher for one call of `count` items.
//
// One call is one Entry, whatever its number of items: the core never allocates
// per item. An entry's items may be spread over several batches (a call larger
// than the batch size); each batch names the slice it took as a Span.
//
// Ownership: the Entry lives in memory owned by the driver (the Python bridge's
// call record, or the C++ Batcher's request). From a successful push until the
// entry is dispatched in full or drained, the scheduler holds a pointer to it;
// the driver must keep it alive until every one of its items is completed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

#include <batched/clock.h>

namespace batched {

struct Entry {
  // ---- set by the producer before push; read-only to the core afterwards ----
  void* owner = nullptr;                    // the driver's record; never dereferenced by the core
  std::uint32_t count = 0;                  // items in this call, at least 1
  std::int32_t priority = 0;                // lower goes first; ties go in arrival order
  const std::uint32_t* lengths = nullptr;   // per-item lengths for max_batch_length; null: 1 each

  // ---- set by the scheduler ----
  TimePoint enqueue_ns = 0;                 // when the push happened

  std::uint32_t length_of(std::uint32_t i) const noexcept { return lengths ? lengths[i] : 1u; }

  // ---- implementation details follow: consumer-side bookkeeping ----
  Entry* inbox_next = nullptr;              // link in the lock-free inbox
  std::uint32_t taken = 0;                  // items already dispatched
  Entry* level_prev = nullptr;              // links in the policy's list of this priority
  Entry* level_next = nullptr;
  Entry* fifo_prev = nullptr;               // links in the policy's arrival list
  Entry* fifo_next = nullptr;
};

// A slice of one entry's items inside a batch: items [begin, begin + count).
struct Span {
  Entry* entry;
  std::uint32_t begin;
  std::uint32_t count;
};

// Why a batch left the queue.
enum class DispatchReason : std::uint8_t {
  kFull = 0,     // batch size reached
  kTimeout = 1,  // the oldest item waited timeout_us
  kBudget = 2,   // max_batch_length reached
  kDrain = 3,    // a worker came back and drains what queued while all were busy (SPEC 2.2)
};
inline constexpr std::size_t kDispatchReasonCount = 4;

inline const char* to_string(DispatchReason r) noexcept {
  switch (r) {
    case DispatchReason::kFull: return "full";
    case DispatchReason::kTimeout: return "timeout";
    case DispatchReason::kBudget: return "budget";
    case DispatchReason::kDrain: return "drain";
  }
  return "unknown";
}

// One batch: the spans in dispatch order. Reused by a worker from batch to
// batch, so steady-state dispatch does not allocate.
struct Batch {
  std::vector<Span> spans;
  std::size_t size = 0;  // items, the sum of span counts
  DispatchReason reason = DispatchReason::kFull;
  TimePoint dispatch_ns = 0;
  // When the batch function returned (Scheduler::finish_batch), or kNotFinished.
  TimePoint finished_ns = kNotFinished;

  static constexpr TimePoint kNotFinished = std::numeric_limits<TimePoint>::min();

  void clear() noexcept {
    spans.clear();
    size = 0;
    finished_ns = kNotFinished;
  }
  bool empty() const noexcept { return size == 0; }
};

}  // namespace batched

// Entry: what a producer hands to the batcher for one call of `count` items.
//
// One call is one Entry, whatever its number of items: the core never allocates
// per item. An entry's items may be spread over several batches (a call larger
// than the batch size, or shorter items first under
// PriorityRule::kSmallFirstThenShortest); each batch names the slices it took
// as Spans.
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

struct Entry;

namespace detail {
// What the policy ranks (policy.h): a whole call, or, when shorter items go
// first and calls need not stay whole, one item of a call.
struct Unit {
  static constexpr std::uint32_t kWholeCall = std::numeric_limits<std::uint32_t>::max();
  Entry* entry = nullptr;
  std::uint32_t index = kWholeCall;  // the item's index, or kWholeCall
  std::uint32_t length = 0;          // its rank among units of one priority class (shortest first)
  bool queued = false;               // item units: neither dispatched nor removed yet
  Unit* prev = nullptr;              // links in the policy's list of this rank
  Unit* next = nullptr;
};
}  // namespace detail

struct Entry {
  // ---- set by the producer before push; read-only to the core afterwards ----
  void* owner = nullptr;                    // the driver's record; never dereferenced by the core
  std::uint32_t count = 0;                  // items in this call, at least 1
  std::int32_t priority = 0;                // explicit priority: lower goes first (before the priority rule)
  const std::uint32_t* lengths = nullptr;   // per-item lengths (budget, shortest first); null: 1 each
  // When the caller gives up, on the scheduler's clock; kNever: never. The
  // scheduler lowers it to enqueue_ns + BatchOptions::deadline_us if that is
  // earlier. Items that could no longer finish by then leave the queue
  // unsent (expire: docs/semantics.md, section 11).
  TimePoint deadline_ns = kNever;
  // The grouping key (docs/semantics.md, 12): a batch holds calls of one key
  // only. 0 when the processor groups nothing.
  std::uint64_t key = 0;

  // ---- set by the scheduler ----
  TimePoint enqueue_ns = 0;                 // when the push happened
  std::uint32_t taken = 0;                  // items dispatched (or removed) so far
  std::uint32_t first_left = 0;             // after drain(): the lowest index that was not dispatched

  std::uint32_t length_of(std::uint32_t i) const noexcept { return lengths ? lengths[i] : 1u; }

  // ---- implementation details follow: consumer-side bookkeeping (policy.h) ----
  Entry* inbox_next = nullptr;              // link in the lock-free inbox
  Entry* arrival_prev = nullptr;            // links in the arrival list (timeout, drain)
  Entry* arrival_next = nullptr;
  Entry* service_prev = nullptr;            // links in the service list (aging)
  Entry* service_next = nullptr;
  TimePoint passed_over_ns = kNever;        // since when batches leave without it; kNever: not passed over
  std::uint64_t served_in = 0;              // the last batch (policy's count) that took items of it
  detail::Unit unit;                        // the entry as a whole-call unit
  detail::Unit* items = nullptr;            // or one unit per item (owned by the policy while queued)
  std::size_t deadline_slot = kNoSlot;      // its place in the policy's deadline heap, if it has a deadline

  static constexpr std::size_t kNoSlot = static_cast<std::size_t>(-1);
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
  kDrain = 3,    // a worker came back and drains what queued while all were busy (docs/semantics.md, 1)
  kDeadline = 4, // sent early, so that a queued item can still finish by its deadline (docs/semantics.md, 11)
};
inline constexpr std::size_t kDispatchReasonCount = 5;

inline const char* to_string(DispatchReason r) noexcept {
  switch (r) {
    case DispatchReason::kFull: return "full";
    case DispatchReason::kTimeout: return "timeout";
    case DispatchReason::kBudget: return "budget";
    case DispatchReason::kDrain: return "drain";
    case DispatchReason::kDeadline: return "deadline";
  }
  return "unknown";
}

// A call whose queued items expired (their deadline could no longer be met):
// they left the queue unsent. The driver fails the call (DeadlineExceeded).
struct Expired {
  Entry* entry;
  std::uint32_t removed;     // items taken out of the queue (the rest were dispatched before)
  std::uint32_t first_left;  // the lowest index among them
};

// One batch: the spans in dispatch order. Reused by a worker from batch to
// batch, so steady-state dispatch does not allocate.
struct Batch {
  std::vector<Span> spans;
  // Calls that expired while the scheduler formed this batch (or instead of
  // one): the driver reports them before running the batch, which may be empty.
  std::vector<Expired> expired;
  std::size_t size = 0;  // items, the sum of span counts
  std::uint64_t key = 0;  // the grouping key of every call in it
  DispatchReason reason = DispatchReason::kFull;
  TimePoint dispatch_ns = 0;
  // When the batch function returned (Scheduler::finish_batch), or kNotFinished.
  TimePoint finished_ns = kNotFinished;
  // How often the front end split it in two and retried the parts (split_on;
  // Scheduler::batch_split): its run time then says nothing of a batch's cost.
  std::uint32_t splits = 0;

  static constexpr TimePoint kNotFinished = std::numeric_limits<TimePoint>::min();

  void clear() noexcept {
    spans.clear();
    expired.clear();
    size = 0;
    finished_ns = kNotFinished;
    splits = 0;
  }
  bool empty() const noexcept { return size == 0; }
};

// Splits `whole` (at least 2 items) into two batches of about half its items
// each, for a retry of a batch that was too big (split_on): `first` takes
// the first ceil(size / 2) items in batch order, `second` the rest. With
// `whole_spans` (calls whose rows must stay together) it cuts only between
// spans, where nearest the middle; false if it cannot cut (one span).
// `first` and `second` are overwritten; they keep `whole`'s key, reason and
// dispatch time.
inline bool split_in_two(const Batch& whole, Batch& first, Batch& second, bool whole_spans) {
  if (whole.size < 2 || (whole_spans && whole.spans.size() < 2)) return false;
  std::size_t cut = (whole.size + 1) / 2;
  if (whole_spans) {  // the span boundary nearest the middle
    std::size_t at = 0, best = 0;
    for (std::size_t i = 0; i + 1 < whole.spans.size(); ++i) {
      at += whole.spans[i].count;
      const auto off = [cut](std::size_t x) { return x > cut ? x - cut : cut - x; };
      if (best == 0 || off(at) < off(best)) best = at;
    }
    cut = best;
  }
  for (Batch* b : {&first, &second}) {
    b->clear();
    b->key = whole.key;
    b->reason = whole.reason;
    b->dispatch_ns = whole.dispatch_ns;
  }
  std::size_t seen = 0;
  for (const Span& s : whole.spans) {
    if (seen >= cut) {
      second.spans.push_back(s);
    } else if (seen + s.count <= cut) {
      first.spans.push_back(s);
    } else {  // the cut falls inside this span
      const std::uint32_t head = static_cast<std::uint32_t>(cut - seen);
      first.spans.push_back(Span{s.entry, s.begin, head});
      second.spans.push_back(Span{s.entry, s.begin + head, s.count - head});
    }
    seen += s.count;
  }
  first.size = cut;
  second.size = whole.size - cut;
  return true;
}

}  // namespace batched

// Options of a batcher. Field names carry their units; the Python keyword
// arguments mirror them (batch_size, timeout_ms, ...). The rules they set are
// written out in docs/semantics.md; policy.h implements them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace batched {

// In what order queued calls go into batches (docs/semantics.md, section 3).
// Whatever the rule, a call's explicit priority (Entry::priority, lower
// first) ranks before it, and arrival order breaks the remaining ties.
enum class PriorityRule : std::uint8_t {
  // Arrival order. (Python: PriorityStrategy.NONE)
  kArrival = 0,
  // Calls of at most small_batch_threshold items before larger calls: the
  // interactive request before the bulk job. (the threaded front end; aio's
  // default and PriorityStrategy.PRIORITY)
  kSmallFirst = 1,
  // As kSmallFirst, and within each of the two, shorter items first whichever
  // call they came from, so a batch holds items of similar length (less
  // padding). A call whose items must stay together (keep_calls_whole) is
  // ranked by its longest item. (PriorityStrategy.LENGTH)
  kSmallFirstThenShortest = 2,
};

struct BatchOptions {
  // Durations are kept in nanoseconds inside; this bound keeps them far from overflow.
  static constexpr std::int64_t kMaxDurationUs = 1000000000000;

  // A batch never holds more items than this. (Python: batch_size)
  std::size_t max_batch_size = 32;
  // A batch is dispatched once its oldest item has waited this long; 0 means
  // dispatch whatever is queued as soon as a worker is free. (timeout_ms)
  std::int64_t timeout_us = 5000;
  // Calls of at most this many items are "small" for the priority rule. (small_batch_threshold)
  std::size_t small_batch_threshold = 8;
  // Which queued items a batch takes first. (priority_strategy)
  PriorityRule priority_rule = PriorityRule::kSmallFirst;
  // If non-zero, the sum of item lengths in a batch stays within this budget;
  // a single longer item goes alone. (max_batch_length)
  std::uint64_t max_batch_length = 0;
  // If non-zero, the padded size of a batch, its items times its longest
  // item's length rounded up to pad_to_multiple_of, is at most this; a
  // single longer item goes alone. Items' lengths as for max_batch_length.
  // (max_batch_tokens, for the inference processors, where an item is a row)
  std::uint64_t max_batch_tokens = 0;
  // The multiple that lengths are rounded up to for max_batch_tokens (0 or 1: none).
  std::uint32_t pad_to_multiple_of = 1;
  // Anti-starvation: a queued call that batches have passed over (they left
  // without any of its items) for this long goes first in the next batch.
  // Time it waited for a busy worker, or while its own items were being
  // dispatched, does not count. (aging_ms)
  std::int64_t aging_us = 100000;
  // If non-zero, every call must be done within this long of its push: its
  // items are sent early enough to finish by then, given the batch time
  // observed so far, and those that could no longer finish expire unsent
  // (docs/semantics.md, section 11). A call's own Entry::deadline_ns applies
  // if earlier. (deadline_ms)
  std::int64_t deadline_us = 0;
  // If set, timeout_us is only the upper bound of a batch's wait: the
  // Scheduler learns the cost of a batch as a line in its size and how many
  // items follow one that finds the queue empty within that cost, and a
  // batch waits only for those, at most the cost (tuning.h, StartFollowers,
  // AdaptiveWait; docs/semantics.md, 13). (adaptive)
  bool adaptive = false;
  // If non-zero, try_push fails once this many items are queued. (max_queue_size)
  std::size_t max_queue_size = 0;
  // Number of workers taking batches from one policy. (num_workers)
  std::size_t num_workers = 1;
  // If set, a call of at most max_batch_size items is never split: when it
  // does not fit in the room (or length budget) left, the batch leaves without
  // it, and it keeps its place for the next one. Larger calls are split as usual. Inference
  // front ends set it: a call's rows then share one padded length and come
  // back as one view of the output.
  bool keep_calls_whole = false;

  // Throws std::invalid_argument naming the first bad field.
  void validate() const {
    if (max_batch_size == 0) throw std::invalid_argument("max_batch_size must be at least 1");
    if (timeout_us < 0 || timeout_us > kMaxDurationUs)
      throw std::invalid_argument("timeout_us must be between 0 and 1e12 (11.6 days)");
    if (aging_us < 0 || aging_us > kMaxDurationUs)
      throw std::invalid_argument("aging_us must be between 0 and 1e12 (11.6 days)");
    if (deadline_us < 0 || deadline_us > kMaxDurationUs)
      throw std::invalid_argument("deadline_us must be between 0 (none) and 1e12 (11.6 days)");
    if (num_workers == 0) throw std::invalid_argument("num_workers must be at least 1");
    if (priority_rule != PriorityRule::kArrival && priority_rule != PriorityRule::kSmallFirst &&
        priority_rule != PriorityRule::kSmallFirstThenShortest)
      throw std::invalid_argument("priority_rule must be kArrival, kSmallFirst or kSmallFirstThenShortest");
  }
};

}  // namespace batched

// BatchPolicy: which queued items form the next batch, and when (SPEC 2.1-2.4).
//
// Contract
//  * ready(now) says whether a batch should leave now, and why:
//      full     - at least max_batch_size items are queued;
//      budget   - max_batch_length > 0 and the queued lengths exceed it;
//      drain    - the caller is a worker that became free at `busy_until`,
//                 and the oldest item was queued by then: it waited while the
//                 workers were busy, so it leaves at once (SPEC 2.2);
//      timeout  - the oldest queued item has waited timeout_us (0: at once).
//  * pop() forms the batch: items go in priority order (lower `priority`
//    first, ties in arrival order), except that an item that has waited
//    max_age_us goes before every younger item (aging: nothing starves).
//    A batch holds at most max_batch_size items and, with a budget, at most
//    max_batch_length total length, except that a single longer item goes alone.
//    A call's items keep their order, and a call larger than the room left is
//    split: the rest stays queued at the same place (with keep_calls_whole, a
//    call that fits in one batch is not split: the batch leaves without it).
//  * next_deadline() is when the timeout rule will fire (kNever if empty).
//
// Not thread-safe: one consumer at a time (the Scheduler serialises workers).
// add/remove/pop are O(1) per call plus O(log L) over the L distinct priorities
// queued (2 for small/bulk); nothing allocates per call once the level list and
// the batch have grown.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

#include <batched/clock.h>
#include <batched/entry.h>
#include <batched/options.h>

namespace batched {

class BatchPolicy {
 public:
  explicit BatchPolicy(const BatchOptions& options)
      : max_batch_size_(options.max_batch_size),
        timeout_ns_(options.timeout_us * 1000),
        max_age_ns_(options.max_age_us * 1000),
        budget_(options.max_batch_length),
        keep_calls_whole_(options.keep_calls_whole) {}

  // Queues the untaken items of `e`. `e->enqueue_ns` must be set.
  void add(Entry* e) {
    queued_items_ += e->count - e->taken;
    for (std::uint32_t i = e->taken; i < e->count; ++i) queued_length_ += e->length_of(i);
    fifo_push_back(e);
    level_push_back(e);
  }

  // Takes the untaken items of a queued `e` out of the queue (cancellation).
  // Returns how many items were removed.
  std::uint32_t remove(Entry* e) {
    const std::uint32_t left = e->count - e->taken;
    queued_items_ -= left;
    for (std::uint32_t i = e->taken; i < e->count; ++i) queued_length_ -= e->length_of(i);
    unlink(e);
    return left;
  }

  // `busy_until`: when the asking worker's last batch returned, or
  // Batch::kNotFinished if it was idle.
  std::optional<DispatchReason> ready(TimePoint now, TimePoint busy_until) const noexcept {
    if (queued_items_ == 0) return std::nullopt;
    if (queued_items_ >= max_batch_size_) return DispatchReason::kFull;
    if (budget_ != 0 && queued_length_ > budget_) return DispatchReason::kBudget;
    if (fifo_head_->enqueue_ns <= busy_until) return DispatchReason::kDrain;
    if (now >= next_deadline()) return DispatchReason::kTimeout;
    return std::nullopt;
  }

  // When the oldest queued item was pushed; kNever if nothing is queued.
  TimePoint oldest_enqueue_ns() const noexcept {
    return fifo_head_ == nullptr ? kNever : fifo_head_->enqueue_ns;
  }

  TimePoint next_deadline() const noexcept {
    if (fifo_head_ == nullptr) return kNever;
    const TimePoint arrival = fifo_head_->enqueue_ns;
    return arrival > kNever - timeout_ns_ ? kNever : arrival + timeout_ns_;
  }

  // Appends the next batch to `out` (which should be empty).
  void pop(TimePoint now, DispatchReason reason, Batch& out) {
    out.reason = reason;
    out.dispatch_ns = now;
    std::uint64_t length = 0;
    bool budget_hit = false;
    while (out.size < max_batch_size_ && !budget_hit) {
      Entry* e = next_entry(now);
      if (e == nullptr) break;
      const std::uint32_t room = static_cast<std::uint32_t>(max_batch_size_ - out.size);
      if (keep_calls_whole_ && out.size > 0 && e->taken == 0 && e->count <= max_batch_size_ &&
          !fits_whole(e, room, length)) {
        break;  // it heads the next batch instead of being split
      }
      std::uint32_t k = 0;
      while (k < room && e->taken + k < e->count) {
        const std::uint64_t l = e->length_of(e->taken + k);
        // A single item longer than the budget still goes, alone.
        if (budget_ != 0 && length + l > budget_ && out.size + k > 0) {
          budget_hit = true;
          break;
        }
        length += l;
        ++k;
      }
      if (budget_ != 0 && length >= budget_) budget_hit = true;
      if (k == 0) break;
      out.spans.push_back(Span{e, e->taken, k});
      out.size += k;
      e->taken += k;
      queued_items_ -= k;
      if (e->taken == e->count) unlink(e);
    }
    queued_length_ -= length;
  }

  std::size_t size() const noexcept { return queued_items_; }
  bool empty() const noexcept { return queued_items_ == 0; }

  // Removes every queued entry, oldest first, handing each to `fn(Entry*)`.
  template <class Fn>
  void clear(Fn&& fn) {
    while (fifo_head_ != nullptr) {
      Entry* e = fifo_head_;
      remove(e);
      fn(e);
    }
  }

  // ---- implementation details follow ----
 private:
  // Whether all of `e` fits in `room` items and the budget left after `length`.
  bool fits_whole(const Entry* e, std::uint32_t room, std::uint64_t length) const noexcept {
    if (e->count > room) return false;
    if (budget_ == 0) return true;
    for (std::uint32_t i = 0; i < e->count; ++i) {
      length += e->length_of(i);
      if (length > budget_) return false;
    }
    return true;
  }

  Entry* next_entry(TimePoint now) const noexcept {
    if (fifo_head_ == nullptr) return nullptr;
    if (now - fifo_head_->enqueue_ns >= max_age_ns_) return fifo_head_;  // aged: oldest first
    return levels_.front().head;
  }

  void unlink(Entry* e) {
    fifo_erase(e);
    level_erase(e);
  }

  // Arrival list (intrusive, doubly linked): its head is the oldest entry.
  void fifo_push_back(Entry* e) noexcept {
    e->fifo_next = nullptr;
    e->fifo_prev = fifo_tail_;
    (fifo_tail_ ? fifo_tail_->fifo_next : fifo_head_) = e;
    fifo_tail_ = e;
  }
  void fifo_erase(Entry* e) noexcept {
    (e->fifo_prev ? e->fifo_prev->fifo_next : fifo_head_) = e->fifo_next;
    (e->fifo_next ? e->fifo_next->fifo_prev : fifo_tail_) = e->fifo_prev;
    e->fifo_prev = e->fifo_next = nullptr;
  }

  // Priority levels: one arrival-ordered list per distinct priority, kept in a
  // vector sorted by priority. Calls of one priority are served in arrival
  // order, so a level is a FIFO and add/pop are O(1) plus a binary search over
  // the (few) levels; a level is dropped when it empties.
  struct Level {
    std::int32_t priority;
    Entry* head;
    Entry* tail;
  };

  std::vector<Level>::iterator find_level(std::int32_t priority) {
    return std::lower_bound(levels_.begin(), levels_.end(), priority,
                            [](const Level& l, std::int32_t p) { return l.priority < p; });
  }
  void level_push_back(Entry* e) {
    auto it = find_level(e->priority);
    if (it == levels_.end() || it->priority != e->priority) it = levels_.insert(it, Level{e->priority, nullptr, nullptr});
    e->level_next = nullptr;
    e->level_prev = it->tail;
    (it->tail ? it->tail->level_next : it->head) = e;
    it->tail = e;
  }
  void level_erase(Entry* e) {
    auto it = find_level(e->priority);
    (e->level_prev ? e->level_prev->level_next : it->head) = e->level_next;
    (e->level_next ? e->level_next->level_prev : it->tail) = e->level_prev;
    e->level_prev = e->level_next = nullptr;
    if (it->head == nullptr) levels_.erase(it);
  }

  const std::size_t max_batch_size_;
  const TimePoint timeout_ns_;
  const TimePoint max_age_ns_;
  const std::uint64_t budget_;
  const bool keep_calls_whole_;

  std::vector<Level> levels_;
  Entry* fifo_head_ = nullptr;
  Entry* fifo_tail_ = nullptr;
  std::size_t queued_items_ = 0;
  std::uint64_t queued_length_ = 0;
};

}  // namespace batched

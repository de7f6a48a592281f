// BatchPolicy: which queued items form the next batch, and when. The rules are
// those of docs/semantics.md, sections 1 to 3; this header is where they live,
// for every front end (Python threads, asyncio, the C++ Batcher).
//
// Contract
//  * ready(now, busy_until) says whether a batch should leave now, and why:
//      full     - at least max_batch_size items are queued;
//      budget   - max_batch_length > 0 and the queued lengths exceed it;
//      drain    - the caller is a worker that became free at `busy_until`,
//                 and the oldest item was queued by then: it waited while the
//                 workers were busy, so it leaves at once;
//      timeout  - the oldest queued item has waited timeout_us (0: at once).
//  * pop() forms the batch in two passes:
//      1. due calls: a call that batches have passed over (they left without
//         any of its items) for aging_us goes first, with as many of its
//         items as fit, in their order; the call passed over longest first.
//      2. rank order: the rest by (explicit priority, size class, length,
//         arrival). The size class is 0 for a call of at most
//         small_batch_threshold items and 1 for a larger one (kSmallFirst,
//         kSmallFirstThenShortest; with kArrival every call is class 0).
//         The length is 0 except under kSmallFirstThenShortest, where each
//         item is ranked by its own length whichever call it came from (or a
//         call kept whole by its longest item).
//    A batch holds at most max_batch_size items and, with a budget, at most
//    max_batch_length total length, except that a single longer item goes
//    alone. A call larger than the room left is split and the rest keeps its
//    rank (with keep_calls_whole, a call that fits in one batch is not split:
//    the batch leaves without it, and it keeps its place).
//  * Aging counts only time passed over: a call is passed over from the first
//    batch that leaves without it (after its arrival, or after the last batch
//    that took some of its items) until a batch takes some of its items.
//    Waiting for a busy worker, or for its own earlier items, does not count,
//    so aging never reorders calls that a free worker would take in rank
//    order anyway. The bound it gives is in docs/semantics.md, section 3.
//  * next_deadline() is when the timeout rule will fire (kNever if empty).
//
// Not thread-safe: one consumer at a time (the Scheduler serialises workers).
// Costs: add/remove/pop are O(1) per call plus a binary search over the R
// distinct ranks queued (2 per explicit priority, unless shorter items go
// first), and O(R) when a rank appears or empties; nothing allocates per call
// once the rank list and the batch have grown. With kSmallFirstThenShortest
// and calls not kept whole (uses_item_units), the unit is the item: the same
// per item, and each call needs one Unit per item, which the Scheduler
// allocates when the call is pushed (add() allocates it if it was not).
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
  using Unit = detail::Unit;

 public:
  explicit BatchPolicy(const BatchOptions& options)
      : max_batch_size_(options.max_batch_size),
        timeout_ns_(options.timeout_us * 1000),
        aging_ns_(options.aging_us * 1000),
        budget_(options.max_batch_length),
        small_batch_threshold_(options.small_batch_threshold),
        rule_(options.priority_rule),
        keep_calls_whole_(options.keep_calls_whole),
        item_units_(uses_item_units(options)) {}

  BatchPolicy(const BatchPolicy&) = delete;
  BatchPolicy& operator=(const BatchPolicy&) = delete;
  // Entries still queued must outlive the policy: it frees their item units.
  ~BatchPolicy() {
    clear([](Entry*) {});
  }

  // Whether calls under `options` need one Unit per item (Entry::items).
  static bool uses_item_units(const BatchOptions& options) noexcept {
    return options.priority_rule == PriorityRule::kSmallFirstThenShortest && !options.keep_calls_whole;
  }

  // Queues every item of `e` (count >= 1, none taken). `e->enqueue_ns` must
  // be set; under item units, `e->items` holds count Units or is null (then
  // add() allocates them, and may throw std::bad_alloc, leaving nothing changed).
  void add(Entry* e) {
    if (!item_units_) {
      e->items = nullptr;
    } else if (e->items == nullptr) {
      e->items = new Unit[e->count];  // first: a throw leaves nothing half-linked
    }
    Unit* items = e->items;
    std::uint32_t longest = 1;  // lengths only matter with a budget or shortest first
    if (e->lengths != nullptr && (budget_ != 0 || rule_ == PriorityRule::kSmallFirstThenShortest)) {
      longest = 0;
      for (std::uint32_t i = 0; i < e->count; ++i) {
        queued_length_ += budget_ != 0 ? e->lengths[i] : 0u;
        longest = std::max(longest, e->lengths[i]);
      }
    } else if (budget_ != 0) {
      queued_length_ += e->count;
    }
    e->taken = 0;
    e->first_left = 0;
    queued_items_ += e->count;
    arrival_push_back(e);
    service_push_back(e);
    if (items == nullptr) {
      e->unit = Unit{e, Unit::kWholeCall, rule_ == PriorityRule::kSmallFirstThenShortest ? longest : 0u, true};
      rank_push_back(&e->unit);
      return;
    }
    for (std::uint32_t i = 0; i < e->count; ++i) {
      items[i] = Unit{e, i, e->length_of(i), true};
      rank_push_back(&items[i]);
    }
  }

  // Takes the untaken items of a queued `e` out of the queue (cancellation).
  // Returns how many items were removed; `e->taken` is left as it was.
  std::uint32_t remove(Entry* e) { return unlink_queued(e); }

  // `busy_until`: when the asking worker's last batch returned, or
  // Batch::kNotFinished if it was idle.
  std::optional<DispatchReason> ready(TimePoint now, TimePoint busy_until) const noexcept {
    if (queued_items_ == 0) return std::nullopt;
    if (queued_items_ >= max_batch_size_) return DispatchReason::kFull;
    if (budget_ != 0 && queued_length_ > budget_) return DispatchReason::kBudget;
    if (arrival_head_->enqueue_ns <= busy_until) return DispatchReason::kDrain;
    if (now >= next_deadline()) return DispatchReason::kTimeout;
    return std::nullopt;
  }

  // When the oldest queued item was pushed; kNever if nothing is queued.
  TimePoint oldest_enqueue_ns() const noexcept {
    return arrival_head_ == nullptr ? kNever : arrival_head_->enqueue_ns;
  }

  TimePoint next_deadline() const noexcept {
    if (arrival_head_ == nullptr) return kNever;
    const TimePoint arrival = arrival_head_->enqueue_ns;
    return arrival > kNever - timeout_ns_ ? kNever : arrival + timeout_ns_;
  }

  // Appends the next batch to `out` (which should be empty).
  void pop(TimePoint now, DispatchReason reason, Batch& out) {
    out.reason = reason;
    out.dispatch_ns = now;
    ++batch_seq_;
    Fill fill;
    // 1. Due calls, passed over longest first (the head of the service list).
    while (fill.open && out.size < max_batch_size_ && service_head_ != nullptr && due(service_head_, now)) {
      Entry* e = service_head_;
      take_call(e, out, fill);
      if (!finish_if_done(e)) break;  // still queued: the batch is full, or it waits for the next one
    }
    // 2. Rank order.
    while (fill.open && out.size < max_batch_size_ && !levels_.empty()) {
      Unit* u = levels_.front().head;
      Entry* e = u->entry;
      if (u->index == Unit::kWholeCall) {
        take_call(e, out, fill);
      } else {
        take_item(*u, out, fill);
      }
      finish_if_done(e);
    }
    queued_length_ -= fill.length;
    settle(now);
  }

  std::size_t size() const noexcept { return queued_items_; }
  bool empty() const noexcept { return queued_items_ == 0; }

  // Removes every queued entry, oldest first, handing each to `fn(Entry*)`
  // with `first_left` set (its lowest index not dispatched; `taken` stays).
  template <class Fn>
  void clear(Fn&& fn) {
    while (arrival_head_ != nullptr) {
      Entry* e = arrival_head_;
      e->first_left = e->taken;
      if (e->items != nullptr) {
        for (std::uint32_t i = 0; i < e->count; ++i) {
          if (e->items[i].queued) {
            e->first_left = i;
            break;
          }
        }
      }
      unlink_queued(e);
      fn(e);
    }
  }

  // ---- implementation details follow ----
 private:
  // What the batch being formed has taken of the length budget, and whether
  // it may take more.
  struct Fill {
    std::uint64_t length = 0;
    bool open = true;
  };

  // The position of a unit in the rank order (ties: arrival), as one number
  // that orders like (priority, size class, length): the priority with its
  // sign bit flipped (so it orders as unsigned), the class bit, and the
  // length (lengths of 2^31 and more rank together).
  using Rank = std::uint64_t;

  // The units of one rank, in arrival order (intrusive, doubly linked).
  struct Level {
    Rank rank;
    Unit* head;
    Unit* tail;
  };

  Rank rank_of(const Unit* u) const noexcept {
    const Entry* e = u->entry;
    const bool bulk = rule_ != PriorityRule::kArrival && e->count > small_batch_threshold_;
    const Rank priority = static_cast<std::uint32_t>(e->priority) ^ 0x80000000u;
    return priority << 32 | Rank{bulk} << 31 | std::min<std::uint32_t>(u->length, 0x7FFFFFFFu);
  }

  bool due(const Entry* e, TimePoint now) const noexcept {
    return e->passed_over_ns != kNever && now - e->passed_over_ns >= aging_ns_;
  }

  // Whether an item of length `l` may join a batch of `size` items; counts it
  // if so. A single item longer than the budget still goes, alone. Without a
  // budget lengths are not counted.
  bool admit(std::uint32_t l, std::size_t size, Fill& f) const noexcept {
    if (budget_ == 0) return true;
    if (f.length + l > budget_ && size > 0) {
      f.open = false;
      return false;
    }
    f.length += l;
    if (f.length >= budget_) f.open = false;
    return true;
  }

  // Takes what fits of `e`'s queued items, in index order.
  void take_call(Entry* e, Batch& out, Fill& f) {
    if (e->items != nullptr) {  // item units: the call's queued items, wherever they rank
      for (std::uint32_t i = 0; i < e->count && f.open && out.size < max_batch_size_; ++i) {
        if (e->items[i].queued) take_item(e->items[i], out, f);
      }
      return;
    }
    const std::uint32_t room = static_cast<std::uint32_t>(max_batch_size_ - out.size);
    if (keep_calls_whole_ && out.size > 0 && e->taken == 0 && e->count <= max_batch_size_ &&
        !fits_whole(e, room, f.length)) {
      f.open = false;  // it waits for the next batch instead of being split
      return;
    }
    std::uint32_t k = std::min(room, e->count - e->taken);
    if (budget_ != 0) {
      const std::uint32_t most = k;
      k = 0;
      while (k < most && admit(e->length_of(e->taken + k), out.size + k, f)) ++k;
    }
    if (k == 0) return;
    add_span(out, e, e->taken, k);
    out.size += k;
    e->taken += k;
    queued_items_ -= k;
    if (e->taken < e->count) mark_served(e);  // (one taken in full leaves the lists)
  }

  // Takes one item unit, if it fits.
  void take_item(Unit& u, Batch& out, Fill& f) {
    Entry* e = u.entry;
    if (!admit(u.length, out.size, f)) return;
    rank_erase(&u);
    u.queued = false;
    // Adjacent items of one call share a span.
    if (!out.spans.empty() && out.spans.back().entry == e &&
        out.spans.back().begin + out.spans.back().count == u.index) {
      out.spans.back().count += 1;
    } else {
      add_span(out, e, u.index, 1);
    }
    out.size += 1;
    e->taken += 1;
    queued_items_ -= 1;
    if (e->taken < e->count) mark_served(e);
  }

  static void add_span(Batch& out, Entry* e, std::uint32_t begin, std::uint32_t count) {
    // Written in place: a Span built aside and copied in made the compiler
    // store it in halves and load it whole (a store-forwarding stall per span).
    Span& s = out.spans.emplace_back();
    s.entry = e;
    s.begin = begin;
    s.count = count;
  }

  // Unlinks `e` once every item is taken; returns whether it is gone.
  bool finish_if_done(Entry* e) {
    if (e->taken < e->count) return false;
    if (e->items == nullptr) rank_erase(&e->unit);
    forget(e);
    return true;
  }

  // Notes that this batch took items of `e`, which stays queued.
  void mark_served(Entry* e) {
    if (e->served_in != batch_seq_) {
      e->served_in = batch_seq_;
      served_.push_back(e);
    }
  }

  // After a pop: every call that was queued when the batch formed and got
  // nothing of it has now been passed over. Calls already marked keep their
  // (earlier) mark; the unmarked ones are the tail of the service list from
  // `unmarked_` (added, or served, since the last batch), so this costs O(1)
  // per add and per span. Calls this batch served go to the tail, unmarked.
  void settle(TimePoint now) {
    for (Entry* e = unmarked_; e != nullptr; e = e->service_next) {
      if (e->served_in != batch_seq_) e->passed_over_ns = now;
    }
    unmarked_ = nullptr;
    for (Entry* e : served_) {
      if (e->taken == e->count) continue;  // taken in full later in the batch: gone
      if (e != service_tail_) {
        service_erase(e);
        service_push_back(e);
      } else {  // at the back already (a lone call being worked through)
        e->passed_over_ns = kNever;
        if (unmarked_ == nullptr) unmarked_ = e;
      }
    }
    served_.clear();
  }

  // Unlinks a queued entry's untaken items from every list; returns how many.
  std::uint32_t unlink_queued(Entry* e) {
    std::uint32_t left = 0;
    if (e->items != nullptr) {
      for (std::uint32_t i = 0; i < e->count; ++i) {
        Unit& u = e->items[i];
        if (!u.queued) continue;
        if (budget_ != 0) queued_length_ -= e->length_of(i);
        rank_erase(&u);
        u.queued = false;
        ++left;
      }
    } else {
      left = e->count - e->taken;
      if (budget_ != 0) {
        for (std::uint32_t i = e->taken; i < e->count; ++i) queued_length_ -= e->length_of(i);
      }
      rank_erase(&e->unit);
    }
    queued_items_ -= left;
    forget(e);
    return left;
  }

  // Drops a (fully taken or removed) entry from the arrival and service lists.
  void forget(Entry* e) {
    arrival_erase(e);
    service_erase(e);
    if (e->items != nullptr) {
      delete[] e->items;
      e->items = nullptr;
    }
  }

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

  // Arrival list: its head is the oldest queued entry (timeout, drain).
  void arrival_push_back(Entry* e) noexcept {
    e->arrival_next = nullptr;
    e->arrival_prev = arrival_tail_;
    (arrival_tail_ ? arrival_tail_->arrival_next : arrival_head_) = e;
    arrival_tail_ = e;
  }
  void arrival_erase(Entry* e) noexcept {
    (e->arrival_prev ? e->arrival_prev->arrival_next : arrival_head_) = e->arrival_next;
    (e->arrival_next ? e->arrival_next->arrival_prev : arrival_tail_) = e->arrival_prev;
    e->arrival_prev = e->arrival_next = nullptr;
  }

  // Service list: queued entries by when a batch last served them (or they
  // arrived); its head is the entry passed over longest (aging).
  void service_push_back(Entry* e) noexcept {
    e->passed_over_ns = kNever;
    e->service_next = nullptr;
    e->service_prev = service_tail_;
    (service_tail_ ? service_tail_->service_next : service_head_) = e;
    service_tail_ = e;
    if (unmarked_ == nullptr) unmarked_ = e;
  }
  void service_erase(Entry* e) noexcept {
    if (unmarked_ == e) unmarked_ = e->service_next;
    (e->service_prev ? e->service_prev->service_next : service_head_) = e->service_next;
    (e->service_next ? e->service_next->service_prev : service_tail_) = e->service_prev;
    e->service_prev = e->service_next = nullptr;
  }

  // Ranks: one arrival-ordered list of units per distinct rank, in a vector
  // sorted by rank. Units of one rank are served in arrival order, so a rank
  // is a FIFO and add/take are O(1) plus a binary search over the ranks; a
  // rank is dropped when it empties.
  // The level of rank r, or where it would go. Units are mostly taken from
  // the first level and added to the last: those are looked at first.
  std::vector<Level>::iterator find_level(Rank r) {
    if (!levels_.empty()) {
      if (levels_.front().rank >= r) return levels_.begin();
      if (levels_.back().rank == r) return levels_.end() - 1;
    }
    return std::lower_bound(levels_.begin(), levels_.end(), r, [](const Level& l, Rank x) { return l.rank < x; });
  }
  void rank_push_back(Unit* u) {
    const Rank r = rank_of(u);
    auto it = find_level(r);
    if (it == levels_.end() || it->rank != r) it = levels_.insert(it, Level{r, nullptr, nullptr});
    u->next = nullptr;
    u->prev = it->tail;
    (it->tail ? it->tail->next : it->head) = u;
    it->tail = u;
  }
  void rank_erase(Unit* u) {
    auto it = find_level(rank_of(u));
    (u->prev ? u->prev->next : it->head) = u->next;
    (u->next ? u->next->prev : it->tail) = u->prev;
    u->prev = u->next = nullptr;
    if (it->head == nullptr) levels_.erase(it);
  }

  const std::size_t max_batch_size_;
  const TimePoint timeout_ns_;
  const TimePoint aging_ns_;
  const std::uint64_t budget_;
  const std::size_t small_batch_threshold_;
  const PriorityRule rule_;
  const bool keep_calls_whole_;
  const bool item_units_;

  std::vector<Level> levels_;
  Entry* arrival_head_ = nullptr;
  Entry* arrival_tail_ = nullptr;
  Entry* service_head_ = nullptr;
  Entry* service_tail_ = nullptr;
  Entry* unmarked_ = nullptr;     // first entry of the service list not yet marked by a batch
  std::uint64_t batch_seq_ = 0;   // batches popped so far
  std::vector<Entry*> served_;    // entries the batch being formed has taken items of
  std::size_t queued_items_ = 0;
  std::uint64_t queued_length_ = 0;  // kept only with a budget
};

}  // namespace batched

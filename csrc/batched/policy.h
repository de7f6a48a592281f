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
//      timeout  - the oldest queued item has waited timeout_us (0: at once);
//      deadline - a queued call's deadline is near: a batch sent now
//                 finishes by it, one sent later might not (its latest
//                 send time, deadline - service estimate - kDeadlineGuardNs,
//                 has come).
//  * expire(now) takes out of the queue the calls that could no longer
//    finish by their deadline even if sent now (now + service estimate >
//    deadline) and hands them to the caller; the Scheduler runs it before
//    every ready()/pop(), so an expired item is never sent.
//  * pop() forms the batch in three passes:
//      0. urgent calls: those whose latest send time has come, earliest
//         deadline first, with as many of their items as fit;
//      1. due calls: a call that batches have passed over (they left without
//         any of its items) for aging_us goes first, with as many of its
//         items as fit, in their order; the call passed over longest first.
//         It leaves room for the queued items of calls of a higher explicit
//         priority (unless calls are kept whole), but takes at least one.
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
//  * next_deadline() is when the timeout or the deadline rule will fire
//    (kNever if empty); next_expiry() when the first queued call expires.
//  * The service estimate (set_service_ns) is the time a batch takes from
//    dispatch until its results are handed out, as the Scheduler observes it.
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
#include <batched/tuning.h>

namespace batched {

class BatchPolicy {
  using Unit = detail::Unit;

 public:
  explicit BatchPolicy(const BatchOptions& options)
      : max_batch_size_(options.max_batch_size),
        timeout_ns_(options.timeout_us * 1000),
        aging_ns_(options.aging_us * 1000),
        adaptive_{options.adaptive},
        budget_(options.max_batch_length),
        tokens_(options.max_batch_tokens),
        multiple_(std::max<std::uint32_t>(1, options.pad_to_multiple_of)),
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

  // Queues every item of `e` (count >= 1, none taken). `e->enqueue_ns` and
  // `e->deadline_ns` must be set; under item units, `e->items` holds count
  // Units or is null (then add() allocates them). May throw std::bad_alloc,
  // leaving nothing changed.
  void add(Entry* e) {
    // Allocations first: a throw leaves nothing half-linked.
    if (e->deadline_ns != kNever && deadlines_.size() == deadlines_.capacity()) {
      deadlines_.reserve(std::max<std::size_t>(16, 2 * deadlines_.capacity()));
    }
    if (!item_units_) {
      e->items = nullptr;
    } else if (e->items == nullptr) {
      e->items = new Unit[e->count];
    }
    Unit* items = e->items;
    std::uint32_t longest = 1;  // lengths only matter with a budget or shortest first
    if (e->lengths != nullptr && (budgeted() || rule_ == PriorityRule::kSmallFirstThenShortest)) {
      longest = 0;
      for (std::uint32_t i = 0; i < e->count; ++i) {
        count_queued(e->lengths[i], +1);
        longest = std::max(longest, e->lengths[i]);
      }
    } else if (budgeted()) {
      for (std::uint32_t i = 0; i < e->count; ++i) count_queued(1, +1);
    }
    e->taken = 0;
    e->first_left = 0;
    queued_items_ += e->count;
    arrival_push_back(e);
    service_push_back(e);
    e->deadline_slot = Entry::kNoSlot;
    if (e->deadline_ns != kNever) heap_push(e);
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
    if (queued_items_ >= limit_) return DispatchReason::kFull;
    if (budget_ != 0 && queued_length_ > budget_) return DispatchReason::kBudget;
    // (the queued rows cannot all fit: even padded to each one's own length)
    if (tokens_ != 0 && queued_tokens_ > tokens_) return DispatchReason::kBudget;
    if (arrival_head_->enqueue_ns <= busy_until) return DispatchReason::kDrain;
    if (now >= timeout_deadline()) return DispatchReason::kTimeout;
    if (now >= send_by()) return DispatchReason::kDeadline;
    return std::nullopt;
  }

  // How long a batch takes from dispatch until its results are handed out
  // (the Scheduler's estimate; 0 before the first batch): deadlines use it.
  void set_service_ns(TimePoint ns) noexcept { service_ns_ = ns; }
  TimePoint service_ns() const noexcept { return service_ns_; }

  // When the first queued call with a deadline expires: after this, a batch
  // sent at once would finish too late. kNever if no queued call has a deadline.
  TimePoint next_expiry() const noexcept {
    return deadlines_.empty() ? kNever : deadlines_.front()->deadline_ns - service_ns_;
  }

  // Takes out of the queue every call that could no longer finish by its
  // deadline even if sent now, earliest deadline first, and calls
  // fn(Entry*, removed, first_left) for each (its `taken` is left as it was).
  template <class Fn>
  void expire(TimePoint now, Fn&& fn) {
    while (!deadlines_.empty() && now > deadlines_.front()->deadline_ns - service_ns_) {
      Entry* e = deadlines_.front();
      const std::uint32_t first_left = first_queued(e);
      const std::uint32_t removed = unlink_queued(e);
      fn(e, removed, first_left);
    }
  }

  // The same, appending to `out` (for callers that cannot pass a lambda).
  void expire(TimePoint now, std::vector<Expired>& out) {
    expire(now, [&out](Entry* e, std::uint32_t removed, std::uint32_t first_left) {
      out.push_back(Expired{e, removed, first_left});
    });
  }

  // When the oldest queued item was pushed; kNever if nothing is queued.
  TimePoint oldest_enqueue_ns() const noexcept {
    return arrival_head_ == nullptr ? kNever : arrival_head_->enqueue_ns;
  }

  // When the timeout rule fires (kNever if empty): the oldest item's arrival
  // + timeout (under adaptive waits, + the wait in force: set_adaptive_wait).
  TimePoint timeout_deadline() const noexcept {
    if (arrival_head_ == nullptr) return kNever;
    const TimePoint arrival = arrival_head_->enqueue_ns;
    const TimePoint wait = !adaptive_ ? timeout_ns_ : queued_items_ >= adaptive_.enough ? 0 : adaptive_.wait_ns;
    return arrival > kNever - wait ? kNever : arrival + wait;
  }

  // Live settings (Scheduler::configure): the batch size, the timeout, aging
  // and whether waits adapt, in force from the next ready()/pop(). The other
  // options are fixed for the policy's life.
  void configure(const BatchOptions& options) noexcept {
    max_batch_size_ = options.max_batch_size;
    timeout_ns_ = options.timeout_us * 1000;
    aging_ns_ = options.aging_us * 1000;
    adaptive_.on = options.adaptive;
    limit_ = std::min(max_batch_size_, cap_);
  }

  // The largest batch the function has been seen to run (Scheduler: split_on;
  // tuning.h SizeCap): batches hold at most this many items, if fewer than
  // max_batch_size.
  void set_cap(std::size_t cap) noexcept {
    cap_ = std::max<std::size_t>(1, cap);
    limit_ = std::min(max_batch_size_, cap_);
  }
  std::size_t limit() const noexcept { return limit_; }

  // Under adaptive waits (BatchOptions::adaptive), the wait the Scheduler has
  // learned replaces the timeout: a batch leaves once w.enough items are
  // queued or its oldest item has waited w.wait_ns (at most timeout_us).
  void set_adaptive_wait(AdaptiveWait w) noexcept {
    adaptive_.enough = w.enough;
    adaptive_.wait_ns = w.wait_ns;
  }

  // When the deadline rule fires (kNever if no queued call has a deadline):
  // the latest time a batch may leave with the call of the earliest deadline.
  TimePoint send_by() const noexcept {
    return deadlines_.empty() ? kNever : deadlines_.front()->deadline_ns - service_ns_ - kDeadlineGuardNs;
  }

  // When ready() turns true by itself: the timeout or the deadline rule.
  TimePoint next_deadline() const noexcept { return std::min(timeout_deadline(), send_by()); }

  // Appends the next batch to `out` (which should be empty).
  void pop(TimePoint now, DispatchReason reason, Batch& out) {
    out.reason = reason;
    out.dispatch_ns = now;
    ++batch_seq_;
    Fill fill;
    // 0. Urgent calls, earliest deadline first (the top of the deadline heap).
    while (fill.open && out.size < limit_ && !deadlines_.empty() && urgent(deadlines_.front(), now)) {
      Entry* e = deadlines_.front();
      take_call(e, out, fill);
      if (!finish_if_done(e)) break;  // still queued: the batch is full, or it waits for the next one
    }
    // 1. Due calls, passed over longest first (the head of the service list),
    //    each leaving room for the items of a higher explicit priority, but
    //    taking at least one item (the bound of docs/semantics.md, 3).
    while (fill.open && out.size < limit_ && service_head_ != nullptr && due(service_head_, now)) {
      Entry* e = service_head_;
      std::size_t limit = limit_ - out.size;
      if (!keep_calls_whole_) {
        const std::size_t reserve = queued_above(e->priority, limit);
        limit = reserve >= limit ? 1 : limit - reserve;
      }
      take_call(e, out, fill, limit);
      if (!finish_if_done(e)) break;  // still queued: the batch is full, or it waits for the next one
    }
    // 2. Rank order.
    while (fill.open && out.size < limit_ && !levels_.empty()) {
      Unit* u = levels_.front().head;
      Entry* e = u->entry;
      if (u->index == Unit::kWholeCall) {
        take_call(e, out, fill);
      } else {
        take_item(*u, out, fill);
      }
      finish_if_done(e);
    }
    queued_length_ -= budget_ != 0 ? fill.length : 0;
    queued_tokens_ -= tokens_ != 0 ? fill.padded : 0;
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
      e->first_left = first_queued(e);
      unlink_queued(e);
      fn(e);
    }
  }

  // How close to its deadline a call's latest send time is put, for timer
  // wake-ups that come late (a condition variable, an event loop's timer).
  static constexpr TimePoint kDeadlineGuardNs = 5000000;

  // ---- implementation details follow ----
 private:
  // What the batch being formed has taken of the length budget, and whether
  // it may take more.
  struct Fill {
    std::uint64_t length = 0;   // items' lengths, summed
    std::uint64_t padded = 0;   // their lengths rounded up to pad_to_multiple_of, summed
    std::uint64_t longest = 0;  // the longest, rounded up: the batch's padded length
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

  // Items queued in calls of a higher explicit priority (a lower level) than
  // `priority`, counted up to `enough`: the room a due call leaves them.
  std::size_t queued_above(std::int32_t priority, std::size_t enough) const noexcept {
    const Rank bound = Rank{static_cast<std::uint32_t>(priority) ^ 0x80000000u} << 32;
    std::size_t n = 0;
    for (const Level& l : levels_) {
      if (l.rank >= bound) break;
      for (const Unit* u = l.head; u != nullptr && n < enough; u = u->next) {
        n += u->index == Unit::kWholeCall ? u->entry->count - u->entry->taken : 1;
      }
      if (n >= enough) break;
    }
    return n;
  }

  bool due(const Entry* e, TimePoint now) const noexcept {
    return e->passed_over_ns != kNever && now - e->passed_over_ns >= aging_ns_;
  }

  // Whether `e` must go now to finish by its deadline.
  bool urgent(const Entry* e, TimePoint now) const noexcept {
    return now >= e->deadline_ns - service_ns_ - kDeadlineGuardNs;
  }

  // The lowest index of `e` not dispatched (nor removed) yet.
  static std::uint32_t first_queued(const Entry* e) noexcept {
    if (e->items != nullptr) {
      for (std::uint32_t i = 0; i < e->count; ++i) {
        if (e->items[i].queued) return i;
      }
    }
    return e->taken;
  }

  // Whether an item of length `l` may join a batch of `size` items; counts it
  // if so. A single item longer than the budget still goes, alone. Without a
  // budget lengths are not counted.
  bool admit(std::uint32_t l, std::size_t size, Fill& f) const noexcept {
    if (!budgeted()) return true;
    const std::uint64_t p = padded(l);
    const std::uint64_t longest = std::max(f.longest, p);
    const bool over = (budget_ != 0 && f.length + l > budget_) ||
                      (tokens_ != 0 && (size + 1) * longest > tokens_);
    if (over && size > 0) {
      f.open = false;
      return false;
    }
    f.length += l;
    f.padded += p;
    f.longest = longest;
    if ((budget_ != 0 && f.length >= budget_) || (tokens_ != 0 && (size + 1) * longest >= tokens_)) f.open = false;
    return true;
  }

  bool budgeted() const noexcept { return budget_ != 0 || tokens_ != 0; }

  // A length rounded up to pad_to_multiple_of.
  std::uint64_t padded(std::uint32_t l) const noexcept {
    return (static_cast<std::uint64_t>(l) + multiple_ - 1) / multiple_ * multiple_;
  }

  // Adds (+1) or takes away (-1) a queued item of length l from the budgets' sums.
  void count_queued(std::uint32_t l, int sign) noexcept {
    if (budget_ != 0) queued_length_ += sign > 0 ? l : -static_cast<std::uint64_t>(l);
    if (tokens_ != 0) queued_tokens_ += sign > 0 ? padded(l) : -padded(l);
  }

  // Takes what fits of `e`'s queued items, in index order.
  void take_call(Entry* e, Batch& out, Fill& f, std::size_t limit = static_cast<std::size_t>(-1)) {
    const std::size_t end = limit_ - out.size < limit ? limit_ : out.size + limit;
    if (e->items != nullptr) {  // item units: the call's queued items, wherever they rank
      for (std::uint32_t i = 0; i < e->count && f.open && out.size < end; ++i) {
        if (e->items[i].queued) take_item(e->items[i], out, f);
      }
      return;
    }
    const std::uint32_t room = static_cast<std::uint32_t>(end - out.size);
    if (keep_calls_whole_ && out.size > 0 && e->taken == 0 && e->count <= limit_ &&
        !fits_whole(e, room, out.size, f)) {
      f.open = false;  // it waits for the next batch instead of being split
      return;
    }
    std::uint32_t k = std::min(room, e->count - e->taken);
    if (budgeted()) {
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
        if (budgeted()) count_queued(e->length_of(i), -1);
        rank_erase(&u);
        u.queued = false;
        ++left;
      }
    } else {
      left = e->count - e->taken;
      if (budgeted()) {
        for (std::uint32_t i = e->taken; i < e->count; ++i) count_queued(e->length_of(i), -1);
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
    if (e->deadline_slot != Entry::kNoSlot) heap_erase(e);
    if (e->items != nullptr) {
      delete[] e->items;
      e->items = nullptr;
    }
  }

  // Whether all of `e` fits in `room` items and in the budgets, after the
  // `size` items that `f` has admitted (size > 0).
  bool fits_whole(const Entry* e, std::uint32_t room, std::size_t size, Fill f) const noexcept {
    if (e->count > room) return false;
    for (std::uint32_t i = 0; i < e->count; ++i) {
      if (!admit(e->length_of(i), size + i, f)) return false;
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

  // Deadline heap: the queued entries with a deadline, earliest on top
  // (deadlines_.front()); each knows its slot, so any can leave in O(log n).
  static bool later(const Entry* a, const Entry* b) noexcept { return a->deadline_ns > b->deadline_ns; }
  void heap_place(Entry* e, std::size_t i) noexcept {
    deadlines_[i] = e;
    e->deadline_slot = i;
  }
  void heap_up(std::size_t i) noexcept {
    Entry* e = deadlines_[i];
    while (i > 0) {
      const std::size_t parent = (i - 1) / 2;
      if (!later(deadlines_[parent], e)) break;
      heap_place(deadlines_[parent], i);
      i = parent;
    }
    heap_place(e, i);
  }
  void heap_down(std::size_t i) noexcept {
    Entry* e = deadlines_[i];
    const std::size_t n = deadlines_.size();
    for (;;) {
      std::size_t child = 2 * i + 1;
      if (child >= n) break;
      if (child + 1 < n && later(deadlines_[child], deadlines_[child + 1])) ++child;
      if (!later(e, deadlines_[child])) break;
      heap_place(deadlines_[child], i);
      i = child;
    }
    heap_place(e, i);
  }
  void heap_push(Entry* e) {
    deadlines_.push_back(e);
    heap_up(deadlines_.size() - 1);
  }
  void heap_erase(Entry* e) noexcept {
    const std::size_t i = e->deadline_slot;
    e->deadline_slot = Entry::kNoSlot;
    Entry* last = deadlines_.back();
    deadlines_.pop_back();
    if (last == e) return;
    heap_place(last, i);
    heap_up(i);
    heap_down(last->deadline_slot);
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

  // Live settings (configure), and what the Scheduler learns (set_cap, set_adaptive_wait).
  std::size_t max_batch_size_;
  TimePoint timeout_ns_;
  TimePoint aging_ns_;
  std::size_t cap_ = static_cast<std::size_t>(-1);
  std::size_t limit_ = max_batch_size_;  // min(max_batch_size_, cap_): the most items a batch takes
  struct Adaptive {
    bool on;
    std::size_t enough = 1;
    TimePoint wait_ns = 0;
    explicit operator bool() const noexcept { return on; }
  } adaptive_;
  const std::uint64_t budget_;
  const std::uint64_t tokens_;
  const std::uint64_t multiple_;
  const std::size_t small_batch_threshold_;
  const PriorityRule rule_;
  const bool keep_calls_whole_;
  const bool item_units_;

  std::vector<Level> levels_;
  std::vector<Entry*> deadlines_;  // a min-heap on deadline_ns
  TimePoint service_ns_ = 0;       // the Scheduler's estimate of a batch's time, dispatch to hand-out
  Entry* arrival_head_ = nullptr;
  Entry* arrival_tail_ = nullptr;
  Entry* service_head_ = nullptr;
  Entry* service_tail_ = nullptr;
  Entry* unmarked_ = nullptr;     // first entry of the service list not yet marked by a batch
  std::uint64_t batch_seq_ = 0;   // batches popped so far
  std::vector<Entry*> served_;    // entries the batch being formed has taken items of
  std::size_t queued_items_ = 0;
  std::uint64_t queued_length_ = 0;  // kept only with max_batch_length
  std::uint64_t queued_tokens_ = 0;  // lengths rounded up, summed; kept only with max_batch_tokens
};

}  // namespace batched

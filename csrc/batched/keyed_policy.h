// KeyedPolicy: grouping keys on top of BatchPolicy (docs/semantics.md, 12).
//
// Calls carry a key (Entry::key; 0 when the processor has no group_by). A
// batch never mixes keys: every key has its own BatchPolicy, so each key
// fills, times out, ages and meets deadlines on its own, by the rules of
// sections 1 to 3 and 11. This class only decides which key's batch goes
// when several are ready, in this order:
//   1. urgent: a call of the key must leave now to meet its deadline
//      (earliest send-by time first);
//   2. timed out: the key's oldest item has waited timeout_us;
//   3. full or over the length budget;
//   4. drain: the worker came back and the key's items queued meanwhile.
// Within classes 2 and 3 the key served longest ago goes first (a key that
// starts queueing counts as served then): round robin. Within 4, the key
// with the most items (the fullest batch). So no key starves another: with
// one worker whose batches take D and K keys queued, a key's batch leaves
// within timeout_us + K * D of its last batch or of its oldest item's
// arrival, whichever is later (docs/semantics.md, 12).
//
// With one key (the common case) it is one BatchPolicy and a pointer check.
// Policies of keys that empty are kept for reuse, so keys that come and go do
// not allocate per batch. Not thread-safe, like BatchPolicy.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <unordered_map>
#include <utility>
#include <vector>

#include <batched/entry.h>
#include <batched/options.h>
#include <batched/policy.h>

namespace batched {

class KeyedPolicy {
 public:
  explicit KeyedPolicy(const BatchOptions& options) : options_(options) {}

  KeyedPolicy(const KeyedPolicy&) = delete;
  KeyedPolicy& operator=(const KeyedPolicy&) = delete;

  static bool uses_item_units(const BatchOptions& options) noexcept { return BatchPolicy::uses_item_units(options); }

  // Queues every item of `e` under its key (as BatchPolicy::add).
  void add(Entry* e) {
    BatchPolicy& p = policy_for(e->key);
    p.add(e);
    queued_ += e->count;
  }

  // Takes the undispatched items of `e` out of the queue; how many.
  std::uint32_t remove(Entry* e) {
    Slot* s = find(e->key);
    if (s == nullptr) return 0;
    const std::uint32_t removed = s->policy->remove(e);
    queued_ -= removed;
    retire_if_empty(s);
    return removed;
  }

  // Whether a batch should leave now, and why; remembers whose it is for pop().
  std::optional<DispatchReason> ready(TimePoint now, TimePoint busy_until) noexcept {
    chosen_ = nullptr;
    if (active_.size() == 1) {  // one key: its policy decides alone
      auto r = active_[0].policy->ready(now, busy_until);
      if (r) chosen_ = &active_[0];
      return r;
    }
    int best_class = 5;
    std::int64_t best_order = 0;  // lower first, within the class
    std::optional<DispatchReason> best_reason;
    for (Slot& s : active_) {
      const BatchPolicy& p = *s.policy;
      auto r = p.ready(now, busy_until);
      if (!r) continue;
      int cls;
      std::int64_t order;
      if (now >= p.send_by()) {  // (also when the key is full: ready() says kFull first)
        cls = 1;
        order = p.send_by();
      } else if (now >= p.timeout_deadline()) {
        cls = 2;
        order = static_cast<std::int64_t>(s.served);
      } else if (*r == DispatchReason::kFull || *r == DispatchReason::kBudget) {
        cls = 3;
        order = static_cast<std::int64_t>(s.served);
      } else {
        cls = 4;
        order = -static_cast<std::int64_t>(p.size());
      }
      if (cls < best_class || (cls == best_class && order < best_order)) {
        best_class = cls;
        best_order = order;
        best_reason = r;
        chosen_ = &s;
      }
    }
    return best_reason;
  }

  // Forms the batch of the key that the last ready() chose.
  void pop(TimePoint now, DispatchReason reason, Batch& out) {
    Slot* s = chosen_;
    chosen_ = nullptr;
    if (s == nullptr) {  // ready() was not asked (tests): the oldest key
      if (active_.empty()) return;
      s = &active_[0];
      for (Slot& t : active_)
        if (t.policy->oldest_enqueue_ns() < s->policy->oldest_enqueue_ns()) s = &t;
    }
    s->policy->pop(now, reason, out);
    out.key = s->key;
    s->served = ++served_seq_;
    queued_ -= out.size;
    retire_if_empty(s);
  }

  void set_service_ns(TimePoint ns) noexcept {
    service_ns_ = ns;
    for (Slot& s : active_) s.policy->set_service_ns(ns);
  }

  // As BatchPolicy's, for every key.
  void configure(const BatchOptions& options) noexcept {
    options_ = options;
    for (Slot& s : active_) s.policy->configure(options);
  }
  void set_cap(std::size_t cap) noexcept {
    cap_ = cap;
    for (Slot& s : active_) s.policy->set_cap(cap);
  }
  void set_adaptive_wait(AdaptiveWait w) noexcept {
    wait_ = w;
    for (Slot& s : active_) s.policy->set_adaptive_wait(w);
  }
  TimePoint service_ns() const noexcept { return service_ns_; }

  TimePoint next_deadline() const noexcept {
    TimePoint t = kNever;
    for (const Slot& s : active_) t = std::min(t, s.policy->next_deadline());
    return t;
  }

  TimePoint next_expiry() const noexcept {
    TimePoint t = kNever;
    for (const Slot& s : active_) t = std::min(t, s.policy->next_expiry());
    return t;
  }

  template <class Fn>
  void expire(TimePoint now, Fn&& fn) {
    for (std::size_t i = 0; i < active_.size();) {
      Slot* s = &active_[i];
      if (s->policy->next_expiry() >= now) {
        ++i;
        continue;
      }
      s->policy->expire(now, [&](Entry* e, std::uint32_t removed, std::uint32_t first_left) {
        queued_ -= removed;
        fn(e, removed, first_left);
      });
      if (!retire_if_empty(s)) ++i;  // a retired slot's place now holds another
    }
  }

  void expire(TimePoint now, std::vector<Expired>& out) {
    expire(now, [&out](Entry* e, std::uint32_t removed, std::uint32_t first_left) {
      out.push_back(Expired{e, removed, first_left});
    });
  }

  TimePoint oldest_enqueue_ns() const noexcept {
    TimePoint t = kNever;
    for (const Slot& s : active_) t = std::min(t, s.policy->oldest_enqueue_ns());
    return t;
  }

  template <class Fn>
  void clear(Fn&& fn) {
    for (Slot& s : active_) {
      s.policy->clear(fn);
      spare_.push_back(std::move(s.policy));
    }
    active_.clear();
    index_.clear();
    queued_ = 0;
    chosen_ = nullptr;
  }

  std::size_t size() const noexcept { return queued_; }
  bool empty() const noexcept { return queued_ == 0; }
  std::size_t keys() const noexcept { return active_.size(); }  // keys with queued items

  // ---- implementation details follow ----
 private:
  struct Slot {
    std::uint64_t key;
    std::unique_ptr<BatchPolicy> policy;
    std::uint64_t served;  // served_seq_ at its last batch, or when it started queueing
  };

  // Linear search while few keys are queued (the usual case); an index beyond.
  static constexpr std::size_t kIndexFrom = 8;

  Slot* find(std::uint64_t key) noexcept {
    if (active_.size() < kIndexFrom || index_.empty()) {  // (empty: building it ran out of memory)
      for (Slot& s : active_)
        if (s.key == key) return &s;
      return nullptr;
    }
    auto it = index_.find(key);
    return it == index_.end() ? nullptr : &active_[it->second];
  }

  BatchPolicy& policy_for(std::uint64_t key) {
    if (Slot* s = find(key)) return *s->policy;
    std::unique_ptr<BatchPolicy> p;
    if (!spare_.empty()) {
      p = std::move(spare_.back());
      spare_.pop_back();
    } else {
      p = std::make_unique<BatchPolicy>(options_);
    }
    p->configure(options_);  // (a spare may predate a configure)
    p->set_cap(cap_);
    p->set_adaptive_wait(wait_);
    p->set_service_ns(service_ns_);
    // Reserve first: a throw below leaves nothing half-added (the policy is
    // kept as a spare).
    active_.reserve(active_.size() + 1);
    if (active_.size() + 1 >= kIndexFrom) {
      try {
        if (index_.empty()) {
          for (std::size_t i = 0; i < active_.size(); ++i) index_.emplace(active_[i].key, i);
        }
        index_.emplace(key, active_.size());
      } catch (...) {
        index_.clear();
        spare_.push_back(std::move(p));
        throw;
      }
    }
    active_.push_back(Slot{key, std::move(p), ++served_seq_});
    chosen_ = nullptr;  // addresses of slots may have moved
    return *active_.back().policy;
  }

  // Moves the slot's policy to the spares if it has nothing queued; true if so
  // (the last slot then sits where `s` was).
  bool retire_if_empty(Slot* s) noexcept {
    if (!s->policy->empty()) return false;
    const std::size_t i = static_cast<std::size_t>(s - active_.data());
    if (spare_.size() < kMaxSpare) {
      try {
        spare_.push_back(std::move(s->policy));
      } catch (...) {  // no room to keep it: let it go
      }
    }
    s->policy.reset();
    if (!index_.empty()) index_.erase(s->key);
    if (i + 1 != active_.size()) {
      active_[i] = std::move(active_.back());
      if (!index_.empty()) index_[active_[i].key] = i;
    }
    active_.pop_back();
    if (active_.size() < kIndexFrom) index_.clear();
    chosen_ = nullptr;
    return true;
  }

  static constexpr std::size_t kMaxSpare = 64;

  BatchOptions options_;
  std::size_t cap_ = static_cast<std::size_t>(-1);
  AdaptiveWait wait_;
  std::vector<Slot> active_;  // keys with queued items
  std::unordered_map<std::uint64_t, std::size_t> index_;  // key -> slot, once kIndexFrom keys are queued
  std::vector<std::unique_ptr<BatchPolicy>> spare_;
  Slot* chosen_ = nullptr;  // the key ready() chose, for pop()
  std::size_t queued_ = 0;
  std::uint64_t served_seq_ = 0;  // counts batches and keys starting to queue: the round robin's clock
  TimePoint service_ns_ = 0;
};

}  // namespace batched

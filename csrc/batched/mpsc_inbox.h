// MpscInbox: the lock-free hand-off from many producers to one consumer.
//
// Producers push intrusive nodes with one CAS on a shared head; they never take
// a lock and never allocate. The consumer takes everything at once with one
// exchange and gets the nodes back in push order (each producer's pushes keep
// their order; pushes of different producers are ordered by their CAS).
// Because the consumer only ever takes the whole list, there is no ABA hazard.
//
// Node must have a member `Node* <next>` named by the template argument.
#pragma once

#include <atomic>
#include <cstddef>

namespace batched {

template <class Node, Node* Node::*Next>
class MpscInbox {
 public:
  MpscInbox() = default;
  MpscInbox(const MpscInbox&) = delete;
  MpscInbox& operator=(const MpscInbox&) = delete;

  // Adds `node`. Lock-free; does not allocate. Thread-safe.
  // The inbox holds `node` until take_all() hands it back.
  void push(Node* node) noexcept {
    Node* head = head_.load(std::memory_order_relaxed);
    do {
      node->*Next = head;
      // seq_cst: the scheduler's sleep check (eventcount) relies on a total
      // order between this push and a consumer's "is anything there?" load.
    } while (!head_.compare_exchange_weak(head, node, std::memory_order_seq_cst,
                                          std::memory_order_relaxed));
  }

  // Removes every node and returns them as a list linked through Next, oldest
  // first (nullptr if empty). Wait-free. One caller at a time.
  Node* take_all() noexcept {
    Node* node = head_.exchange(nullptr, std::memory_order_acquire);
    Node* oldest_first = nullptr;
    while (node != nullptr) {
      Node* next = node->*Next;
      node->*Next = oldest_first;
      oldest_first = node;
      node = next;
    }
    return oldest_first;
  }

  // Racy observer: true if nothing was pushed since the last take_all, as seen
  // at some instant during the call. Thread-safe.
  bool empty_approx() const noexcept { return head_.load(std::memory_order_seq_cst) == nullptr; }

 private:
  // Own cache line: producers hammer it, and nothing else should share the line.
  alignas(64) std::atomic<Node*> head_{nullptr};
  char pad_[64 - sizeof(std::atomic<Node*>)];
};

}  // namespace batched

// A single-producer, single-consumer ring of variable-length records in memory
// that two processes share (batched.serve / batched.connect: one ring carries
// a client's requests to the server, another the server's answers back).
//
// The ring lives wherever its memory is mapped: nothing in it is a pointer, and
// its only shared state is lock-free atomics of fixed size, so it works the same
// between two threads (the tests) and two processes. A record is published by
// one release store of `tail`; a producer that dies half-way through a record
// never publishes it. Records are contiguous: one that would cross the end of
// the data area is preceded by a wrap marker and starts again at offset 0.
//
// Wake-ups are the caller's (an eventfd, a futex, a condition variable); the
// ring only says when one is due, with two flags in the control block:
//   consumer_asleep: the consumer is about to block; the producer that publishes
//                    next must wake it (publish() returns true, once).
//   producer_waiting: the producer found no room; the consumer that frees room
//                    next must wake it (consume() returns true, once).
// Each side stores its flag, then re-reads the other's index (both seq_cst),
// so a wake-up is never lost between the check and the block.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace batched {
namespace ipc {

struct RingControl {
  alignas(64) std::atomic<std::uint64_t> tail;  // bytes published (the producer's)
  alignas(64) std::atomic<std::uint64_t> head;  // bytes consumed (the consumer's)
  alignas(64) std::atomic<std::uint32_t> consumer_asleep;
  std::atomic<std::uint32_t> producer_waiting;
  std::uint64_t capacity;  // bytes in the data area that follows; a multiple of 8
};

static_assert(std::atomic<std::uint64_t>::is_always_lock_free, "shared rings need lock-free 64-bit atomics");
static_assert(std::atomic<std::uint32_t>::is_always_lock_free, "shared rings need lock-free 32-bit atomics");

class Ring {
 public:
  static constexpr std::size_t kHeader = 8;  // a record: u32 size (with this header, 8-aligned), u32 tag
  static constexpr std::uint32_t kWrap = 0;  // a size of 0 marks the rest of the data area as unused

  // Bytes of shared memory for a ring with `capacity` bytes of records.
  static constexpr std::size_t bytes_for(std::size_t capacity) {
    return sizeof(RingControl) + round_up(capacity);
  }
  static constexpr std::size_t round_up(std::size_t n) { return (n + 7) & ~std::size_t{7}; }

  // `memory`: bytes_for(capacity) bytes, mapped by both sides; 64-byte aligned.
  explicit Ring(void* memory) noexcept
      : control_(static_cast<RingControl*>(memory)),
        data_(static_cast<char*>(memory) + sizeof(RingControl)) {}

  // Called once, by the side that creates the memory, before the other maps it.
  void init(std::size_t capacity) noexcept {
    control_->tail.store(0, std::memory_order_relaxed);
    control_->head.store(0, std::memory_order_relaxed);
    control_->consumer_asleep.store(0, std::memory_order_relaxed);
    control_->producer_waiting.store(0, std::memory_order_relaxed);
    control_->capacity = round_up(capacity);
  }

  std::uint64_t capacity() const noexcept { return control_->capacity; }

  // The largest payload one record may carry: half the ring (so it fits an
  // empty ring wherever its free space starts), less the record header.
  std::uint64_t max_payload() const noexcept { return capacity() / 2 - kHeader; }

  // ---- producer ----

  // Room for a record of `payload` bytes, contiguous; nullptr if the ring has
  // none now (or never will: payload > max_payload()). Write the payload there,
  // then publish(). One reservation at a time.
  char* reserve(std::uint64_t payload, std::uint32_t tag) noexcept {
    std::uint64_t skip;
    if (!fits(payload, std::memory_order_acquire, &skip)) return nullptr;
    const std::uint64_t size = round_up(kHeader + payload);
    const std::uint64_t cap = capacity();
    const std::uint64_t tail = control_->tail.load(std::memory_order_relaxed);
    if (skip != 0) write_header(tail % cap, kWrap, 0);
    pending_ = tail + skip + size;
    const std::uint64_t at = (tail + skip) % cap;
    write_header(at, static_cast<std::uint32_t>(size), tag);
    return data_ + at + kHeader;
  }

  // Publishes the reserved record. True: the consumer is asleep; wake it.
  bool publish() noexcept {
    control_->tail.store(pending_, std::memory_order_seq_cst);
    return control_->consumer_asleep.load(std::memory_order_seq_cst) != 0 &&
           control_->consumer_asleep.exchange(0, std::memory_order_seq_cst) != 0;
  }

  // The producer found no room and will block: true if it may (the consumer
  // will wake it when it frees room), false if room came meanwhile.
  bool wait_for_room(std::uint64_t payload) noexcept {
    control_->producer_waiting.store(1, std::memory_order_seq_cst);
    if (has_room(payload)) {
      control_->producer_waiting.store(0, std::memory_order_relaxed);
      return false;
    }
    return true;
  }

  bool has_room(std::uint64_t payload) const noexcept {
    std::uint64_t skip;
    return fits(payload, std::memory_order_seq_cst, &skip);
  }

  // ---- consumer ----

  // The next record, or nullptr if none is published: its payload, its size
  // and its tag. It stays valid until consume().
  const char* peek(std::uint64_t* payload, std::uint32_t* tag) noexcept {
    const std::uint64_t cap = capacity();
    for (;;) {
      const std::uint64_t head = control_->head.load(std::memory_order_relaxed);
      if (head == control_->tail.load(std::memory_order_acquire)) return nullptr;
      std::uint32_t size, t;
      read_header(head % cap, &size, &t);
      if (size == kWrap) {  // skip to the start of the data area
        control_->head.store(head + (cap - head % cap), std::memory_order_release);
        continue;
      }
      *payload = size - kHeader;  // the rounded size: payloads carry their own lengths
      *tag = t;
      peeked_ = size;
      return data_ + head % cap + kHeader;
    }
  }

  // Frees the record peek() returned. True: the producer waits for room; wake it.
  bool consume() noexcept {
    const std::uint64_t head = control_->head.load(std::memory_order_relaxed);
    control_->head.store(head + peeked_, std::memory_order_seq_cst);
    return control_->producer_waiting.load(std::memory_order_seq_cst) != 0 &&
           control_->producer_waiting.exchange(0, std::memory_order_seq_cst) != 0;
  }

  // The consumer found nothing and will block: true if it may (the producer
  // will wake it), false if a record came meanwhile.
  bool sleep() noexcept {
    control_->consumer_asleep.store(1, std::memory_order_seq_cst);
    if (control_->head.load(std::memory_order_relaxed) != control_->tail.load(std::memory_order_seq_cst)) {
      control_->consumer_asleep.store(0, std::memory_order_relaxed);
      return false;
    }
    return true;
  }

  // The consumer is awake again (an eventfd read, a spurious wake-up).
  void awake() noexcept { control_->consumer_asleep.store(0, std::memory_order_relaxed); }

  bool empty() const noexcept {
    return control_->head.load(std::memory_order_acquire) == control_->tail.load(std::memory_order_acquire);
  }

 private:
  // Whether a record of `payload` bytes fits now; `skip`: the bytes left
  // unused at the end of the data area before it (a wrap), else 0.
  bool fits(std::uint64_t payload, std::memory_order order, std::uint64_t* skip) const noexcept {
    if (payload > max_payload()) return false;
    const std::uint64_t size = round_up(kHeader + payload);
    const std::uint64_t cap = capacity();
    const std::uint64_t tail = control_->tail.load(std::memory_order_relaxed);
    const std::uint64_t offset = tail % cap;
    *skip = offset + size > cap ? cap - offset : 0;
    return tail + *skip + size - control_->head.load(order) <= cap;
  }

  void write_header(std::uint64_t at, std::uint32_t size, std::uint32_t tag) noexcept {
    std::memcpy(data_ + at, &size, 4);
    std::memcpy(data_ + at + 4, &tag, 4);
  }
  void read_header(std::uint64_t at, std::uint32_t* size, std::uint32_t* tag) const noexcept {
    std::memcpy(size, data_ + at, 4);
    std::memcpy(tag, data_ + at + 4, 4);
  }

  RingControl* control_;
  char* data_;
  std::uint64_t pending_ = 0;  // the producer's: tail once the reserved record is published
  std::uint32_t peeked_ = 0;   // the consumer's: size of the record peek() returned
};

}  // namespace ipc
}  // namespace batched

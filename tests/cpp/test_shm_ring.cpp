// The shared-memory ring of batched.serve / batched.connect (shm_ring.h):
// records in order and intact across the wrap, room and size limits, the
// wake-up flags, and a producer and a consumer racing on threads (TSan) and
// in two processes over a shared mapping.
#include <batched/shm_ring.h>

#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "check.h"

using batched::ipc::Ring;

namespace {

struct Memory {  // 64-byte aligned, as a mapping is
  explicit Memory(std::size_t capacity)
      : bytes(Ring::bytes_for(capacity)), data(static_cast<char*>(::operator new(bytes, std::align_val_t{64}))) {}
  ~Memory() { ::operator delete(data, std::align_val_t{64}); }
  std::size_t bytes;
  char* data;
};

// A record's payload: `n` bytes, each a function of (seq, index), so a torn,
// reordered or misplaced record shows.
void fill(char* at, std::uint64_t n, std::uint32_t seq) {
  for (std::uint64_t i = 0; i < n; ++i) at[i] = static_cast<char>(seq * 31 + i);
}
bool intact(const char* at, std::uint64_t n, std::uint32_t seq) {
  for (std::uint64_t i = 0; i < n; ++i)
    if (at[i] != static_cast<char>(seq * 31 + i)) return false;
  return true;
}

// Writes `count` records of sizes from `rng` through `producer`, while
// `consumer` reads them (both spin on a full or empty ring); every record
// must arrive once, in order, intact. Returns the number that arrived intact.
std::uint32_t race(Ring producer, Ring consumer, std::uint32_t count, std::uint64_t seed, bool consume_side) {
  batched_test::Rng rng{seed};
  std::uint32_t ok = 0;
  if (!consume_side) {
    for (std::uint32_t seq = 0; seq < count; ++seq) {
      const std::uint64_t n = 1 + rng(600);
      char* at;
      while ((at = producer.reserve(n + 8, seq)) == nullptr) std::this_thread::yield();
      std::memcpy(at, &n, 8);
      fill(at + 8, n, seq);
      producer.publish();
    }
    return count;
  }
  for (std::uint32_t seq = 0; seq < count; ++seq) {
    const char* at;
    std::uint64_t payload = 0;
    std::uint32_t tag = 0;
    while ((at = consumer.peek(&payload, &tag)) == nullptr) std::this_thread::yield();
    std::uint64_t n;
    std::memcpy(&n, at, 8);
    if (tag == seq && payload >= n + 8 && intact(at + 8, n, seq)) ++ok;
    consumer.consume();
  }
  return ok;
}

}  // namespace

TEST(records_arrive_in_order_and_intact_across_the_wrap) {
  Memory m(256);
  Ring ring(m.data);
  ring.init(256);
  CHECK_EQ(ring.capacity(), 256u);
  CHECK_EQ(ring.max_payload(), 120u);
  std::uint64_t payload = 0;
  std::uint32_t tag = 0;
  CHECK(ring.peek(&payload, &tag) == nullptr);
  CHECK(ring.empty());
  for (std::uint32_t seq = 0; seq < 100; ++seq) {  // 100 records of 1..120 bytes through 256: many wraps
    const std::uint64_t n = 1 + (seq * 37) % 120;
    char* at = ring.reserve(n, seq);
    CHECK(at != nullptr);
    fill(at, n, seq);
    ring.publish();
    const char* got = ring.peek(&payload, &tag);
    CHECK(got != nullptr);
    CHECK_EQ(tag, seq);
    CHECK(payload >= n && payload < n + 8);  // rounded up to 8
    CHECK(intact(got, n, seq));
    ring.consume();
  }
  CHECK(ring.empty());
}

TEST(a_full_ring_refuses_until_room_is_freed_and_oversize_never_fits) {
  Memory m(256);
  Ring ring(m.data);
  ring.init(256);
  CHECK(ring.reserve(121, 0) == nullptr);  // over max_payload: never
  int written = 0;
  while (ring.reserve(56, written) != nullptr) {  // 64 bytes a record
    ring.publish();
    ++written;
  }
  CHECK_EQ(written, 4);
  CHECK(ring.wait_for_room(56));  // nothing freed: the producer may block
  std::uint64_t payload = 0;
  std::uint32_t tag = 0;
  CHECK(ring.peek(&payload, &tag) != nullptr);
  CHECK(ring.consume());  // room freed while the producer waits: wake it (once)
  CHECK(!ring.wait_for_room(56));  // room now: no need to block
  CHECK(ring.reserve(56, 9) != nullptr);
  ring.publish();
  CHECK(ring.peek(&payload, &tag) != nullptr);
  CHECK(!ring.consume());  // nobody waits
}

TEST(the_consumer_is_woken_once_when_it_sleeps_and_never_when_it_does_not) {
  Memory m(1024);
  Ring ring(m.data);
  ring.init(1024);
  CHECK(ring.reserve(8, 1) != nullptr);
  CHECK(!ring.publish());  // the consumer is awake: no wake-up due
  CHECK(!ring.sleep());    // a record is there: do not block
  std::uint64_t payload = 0;
  std::uint32_t tag = 0;
  CHECK(ring.peek(&payload, &tag) != nullptr);
  ring.consume();
  CHECK(ring.sleep());  // empty: block
  CHECK(ring.reserve(8, 2) != nullptr);
  CHECK(ring.publish());  // it sleeps: wake it
  CHECK(ring.reserve(8, 3) != nullptr);
  CHECK(!ring.publish());  // woken already: once is enough
  ring.awake();
}

TEST(a_producer_and_a_consumer_thread_race_without_loss) {
  Memory m(4096);
  Ring setup(m.data);
  setup.init(4096);
  std::uint32_t ok = 0;
  std::thread consumer([&] { ok = race(Ring(m.data), Ring(m.data), 20000, 7, true); });
  race(Ring(m.data), Ring(m.data), 20000, 7, false);
  consumer.join();
  CHECK_EQ(ok, 20000u);
}

TEST(two_processes_share_a_ring_through_a_mapping) {
  const std::size_t capacity = 4096;
  void* shared = mmap(nullptr, Ring::bytes_for(capacity), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  CHECK(shared != MAP_FAILED);
  Ring(shared).init(capacity);
  const pid_t child = fork();
  CHECK(child >= 0);
  if (child == 0) {  // the producer
    race(Ring(shared), Ring(shared), 20000, 11, false);
    _exit(0);
  }
  const std::uint32_t ok = race(Ring(shared), Ring(shared), 20000, 11, true);
  int status = 0;
  waitpid(child, &status, 0);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  CHECK_EQ(ok, 20000u);
  munmap(shared, Ring::bytes_for(capacity));
}

TEST_MAIN()

// Per-item cost of the C++ core alone: push + batch + complete, no Python.
//
//   cmake -S . -B build/bench -DBATCHED_BUILD_BENCHMARKS=ON && cmake --build build/bench
//   build/bench/benchmarks/cpp/core_overhead
//
// P producer threads push single-item entries as fast as they can into one
// Scheduler (max_batch_size 64, timeout 0); one worker takes batches and marks
// every item complete. Reported: wall time / items, in ns per item, as the
// median of 5 runs, for 1 and 4 producers. Then one producer's round trip
// (push, wait for completion) at idle, p50/p99.
#include <batched/scheduler.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
#include <thread>
#include <vector>

using namespace batched;

namespace {

struct Item {
  Entry entry;
  std::atomic<bool> done{false};
};

double run_throughput(int producers, int items_per_producer) {
  BatchOptions o;
  o.max_batch_size = 64;
  o.timeout_us = 0;
  Scheduler<> sched(o);
  std::vector<std::unique_ptr<Item[]>> items(producers);
  for (auto& p : items) {
    p.reset(new Item[items_per_producer]);
    for (int i = 0; i < items_per_producer; ++i) {
      p[i].entry.count = 1;
      p[i].entry.owner = &p[i];
    }
  }
  const long long total = static_cast<long long>(producers) * items_per_producer;
  std::atomic<long long> completed{0};
  std::thread worker([&] {
    Batch b;
    while (sched.wait_pop(b)) {
      for (const Span& s : b.spans) static_cast<Item*>(s.entry->owner)->done.store(true, std::memory_order_release);
      sched.finish_batch(b, 0, false);
      completed.fetch_add(static_cast<long long>(b.size), std::memory_order_release);
    }
  });
  std::atomic<int> ready{0};
  const auto start = std::chrono::steady_clock::now();
  std::vector<std::thread> threads;
  for (int p = 0; p < producers; ++p) {
    threads.emplace_back([&, p] {
      ready.fetch_add(1);
      while (ready.load() < producers) std::this_thread::yield();
      for (int i = 0; i < items_per_producer; ++i) sched.try_push(&items[p][i].entry);
    });
  }
  for (auto& t : threads) t.join();
  while (completed.load(std::memory_order_acquire) < total) std::this_thread::yield();
  const auto end = std::chrono::steady_clock::now();
  sched.shutdown();
  worker.join();
  const BatchStats st = sched.stats();
  std::printf("  (%d producer(s): %.1f items per batch)\n", producers,
              static_cast<double>(st.total_processed) / static_cast<double>(st.total_batches));
  return std::chrono::duration<double, std::nano>(end - start).count() / static_cast<double>(total);
}

void round_trip(int calls) {
  BatchOptions o;
  o.max_batch_size = 64;
  o.timeout_us = 0;
  Scheduler<> sched(o);
  std::thread worker([&] {
    Batch b;
    while (sched.wait_pop(b))
      for (const Span& s : b.spans) static_cast<Item*>(s.entry->owner)->done.store(true, std::memory_order_release);
  });
  std::vector<double> us;
  for (int i = 0; i < calls; ++i) {
    Item item;
    item.entry.count = 1;
    item.entry.owner = &item;
    const auto t0 = std::chrono::steady_clock::now();
    sched.try_push(&item.entry);
    while (!item.done.load(std::memory_order_acquire)) std::this_thread::yield();
    us.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
    std::this_thread::sleep_for(std::chrono::microseconds(200));  // let the worker fall asleep: idle
  }
  sched.shutdown();
  worker.join();
  std::sort(us.begin(), us.end());
  std::printf("round trip at idle (worker asleep), 1 producer: p50 %.1f us, p99 %.1f us\n",
              us[us.size() / 2], us[us.size() * 99 / 100]);
}

}  // namespace

int main() {
  for (int producers : {1, 4}) {
    std::vector<double> runs;
    for (int r = 0; r < 5; ++r) runs.push_back(run_throughput(producers, 1000000 / producers));
    std::sort(runs.begin(), runs.end());
    std::printf("%d producer(s): %.0f ns per item (push + batch + complete), median of 5; %.1f M items/s\n",
                producers, runs[2], 1e3 / runs[2]);
  }
  round_trip(2000);
  return 0;
}

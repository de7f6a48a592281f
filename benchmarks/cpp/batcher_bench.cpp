// Per-item cost of the public C++ API, Batcher<int, int>: submit, batch,
// future ready, get. No Python.
//
//   cmake -S . -B build/bench -G Ninja -DBATCHED_BUILD_BENCHMARKS=ON -DBATCHED_BUILD_PYTHON=OFF
//   cmake --build build/bench && build/bench/benchmarks/cpp/batcher_bench
//
// Identity batch function, max_batch_size 64, timeout 0, one worker.
//  1. Throughput: P producer threads (1, 4, 16), released together, each
//     submits its share of 400k single items; the run ends when every result
//     has been read. Three ways of reading results: futures in windows of 1024
//     (wait for the window's last future, then get() each), futures all kept
//     and then get() in order, and the callback form. Reported: items/s and
//     wall ns per item (what the whole machine spends per item), median of 5.
//  2. Latency: P closed-loop producers (1, 4, 16), each submitting one item
//     and waiting for it, 20k items in all; p50/p99 of submit to future ready
//     (to future.get() returning).
#include <batched/batcher.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <future>
#include <thread>
#include <vector>

using namespace batched;
using Clock = std::chrono::steady_clock;

namespace {

BatchOptions bench_options() {
  BatchOptions o;
  o.max_batch_size = 64;
  o.timeout_us = 0;
  o.num_workers = 1;
  return o;
}

std::vector<int> identity(std::vector<int>& in) { return std::vector<int>(in.begin(), in.end()); }

// Starts `producers` threads running body(p) together; returns the wall time.
template <class Body>
double run_together(int producers, Body body) {
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  std::vector<std::thread> threads;
  for (int p = 0; p < producers; ++p)
    threads.emplace_back([&, p] {
      ready.fetch_add(1);
      while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
      body(p);
    });
  while (ready.load() < producers) std::this_thread::yield();
  const auto t0 = Clock::now();
  go.store(true, std::memory_order_release);
  for (auto& t : threads) t.join();
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

struct Throughput {
  double ns_per_item;
  double avg_batch;
};

enum class Form { kFutureWindow, kFutureInOrder, kCallback };

Throughput throughput_once(Form form, int producers, int total) {
  Batcher<int, int> b(bench_options(), identity, "bench");
  const int per = total / producers;
  constexpr int kWindow = 1024;
  std::atomic<long> bad{0};
  const double s = run_together(producers, [&](int p) {
    if (form == Form::kCallback) {
      std::atomic<int> done{0};
      for (int i = 0; i < per; ++i) {
        const int x = p * per + i;
        b.submit(x, [&, x](Result<int> r) {
          if (!r.ok() || r.value() != x) bad.fetch_add(1);
          done.fetch_add(1, std::memory_order_release);
        });
      }
      while (done.load(std::memory_order_acquire) < per) std::this_thread::yield();
      return;
    }
    std::vector<std::future<int>> fs;
    fs.reserve(per);
    for (int start = 0; start < per; start += kWindow) {
      const int end = form == Form::kFutureWindow ? std::min(per, start + kWindow) : per;
      for (int i = start; i < end; ++i) fs.push_back(b.submit(p * per + i));
      // Window: wait for the last of the window first (a producer's items are
      // dispatched in its order), then read all; in order: get() each in turn.
      if (form == Form::kFutureWindow) fs.back().wait();
      for (int i = start; i < end; ++i)
        if (fs[i].get() != p * per + i) bad.fetch_add(1);
      start = end - kWindow;
    }
  });
  if (bad.load() != 0) std::printf("WRONG RESULTS: %ld\n", bad.load());
  const BatcherStats st = b.stats();
  return Throughput{s * 1e9 / (static_cast<double>(per) * producers), st.avg_batch_size};
}

void latency(int producers, int total) {
  Batcher<int, int> b(bench_options(), identity, "bench");
  const int per = total / producers;
  std::vector<std::vector<double>> us(producers);
  run_together(producers, [&](int p) {
    us[p].reserve(per);
    for (int i = 0; i < per; ++i) {
      const auto t0 = Clock::now();
      std::future<int> f = b.submit(i);
      f.get();
      us[p].push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
    }
  });
  std::vector<double> all;
  for (auto& v : us) all.insert(all.end(), v.begin(), v.end());
  std::sort(all.begin(), all.end());
  std::printf("  %2d producer(s): p50 %6.1f us, p99 %7.1f us   (avg batch %.1f)\n", producers,
              all[all.size() / 2], all[all.size() * 99 / 100], b.stats().avg_batch_size);
}

}  // namespace

int main() {
  std::printf("Batcher<int,int>, identity batch of 64, timeout 0, 1 worker, %u hardware threads\n",
              std::thread::hardware_concurrency());
  const struct {
    Form form;
    const char* name;
  } forms[] = {{Form::kFutureWindow, "futures, windows of 1024 (wait for the window's last, then get each)"},
               {Form::kFutureInOrder, "futures, all submitted, then get() each in order"},
               {Form::kCallback, "callback form (no future)"}};
  for (const auto& f : forms) {
    std::printf("throughput, %s; median of 5 runs of 400k single-item submits:\n", f.name);
    for (int producers : {1, 4, 16}) {
      std::vector<Throughput> runs;
      for (int r = 0; r < 5; ++r) runs.push_back(throughput_once(f.form, producers, 400000));
      std::sort(runs.begin(), runs.end(),
                [](const Throughput& a, const Throughput& b) { return a.ns_per_item < b.ns_per_item; });
      const Throughput& m = runs[2];
      std::printf("  %2d producer(s): %5.2f M items/s, %5.0f ns per item (min %4.0f, max %4.0f)   (avg batch %.1f)\n",
                  producers, 1e3 / m.ns_per_item, m.ns_per_item, runs[0].ns_per_item, runs[4].ns_per_item,
                  m.avg_batch);
    }
  }
  std::printf("latency, submit to future ready (closed loop: submit one, get it), 20k items:\n");
  for (int producers : {1, 4, 16}) latency(producers, 20000);
  return 0;
}

// Batcher<In, Out>: the public C++ API. Every output is checked against its own
// input, every error against the submitters that should (and should not) get
// it. Nothing sleeps for timing: a test that needs the worker busy blocks it on
// a gate, and every wait on a future is bounded. Run under TSan and ASan in CI.
#include <batched/batcher.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "check.h"

// CHECK_EQ prints integers; strings get their own.
#define CHECK_STR(a, b)                                                                         \
  do {                                                                                          \
    const std::string va_ = (a);                                                                \
    const std::string vb_ = (b);                                                                \
    if (va_ != vb_) {                                                                           \
      std::fprintf(stderr, "%s:%d: CHECK_STR failed: %s == %s (\"%s\" vs \"%s\")\n", __FILE__, \
                   __LINE__, #a, #b, va_.c_str(), vb_.c_str());                                 \
      ++::batched_test::Registry::get().failures;                                               \
    }                                                                                           \
  } while (0)

using namespace batched;

namespace {

constexpr double kWaitS = 20.0;  // bound on every wait: a hang fails, never blocks ctest

BatchOptions opts(std::size_t batch, std::int64_t timeout_us, std::size_t workers = 1) {
  BatchOptions o;
  o.max_batch_size = batch;
  o.timeout_us = timeout_us;
  o.num_workers = workers;
  return o;
}

template <class F>
bool ready(F& f, double seconds = kWaitS) {
  return f.wait_for(std::chrono::duration<double>(seconds)) == std::future_status::ready;
}

long long f_of(int x) { return 3LL * x + 1; }  // not the identity: outputs must match their inputs

// Which exception a future holds: its what(), or "" if it holds a value.
template <class F>
std::string error_of(F& f) {
  try {
    f.get();
    return "";
  } catch (const std::exception& e) {
    return e.what();
  }
}

template <class E, class F>
bool throws_type(F& f) {
  try {
    f.get();
  } catch (const E&) {
    return true;
  } catch (...) {
  }
  return false;
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// A gate the batch function can block on, so a test knows the worker is busy.
// Shared (held by the batch function), so it outlives the workers.
struct Gate {
  std::mutex mu;
  std::condition_variable cv;
  bool open = false;
  int entered = 0;

  void pass() {  // called by the batch function
    std::unique_lock<std::mutex> lock(mu);
    ++entered;
    cv.notify_all();
    cv.wait(lock, [&] { return open; });
  }
  bool wait_entered(int n) {
    std::unique_lock<std::mutex> lock(mu);
    return cv.wait_for(lock, std::chrono::duration<double>(kWaitS), [&] { return entered >= n; });
  }
  void release() {
    {
      std::lock_guard<std::mutex> lock(mu);
      open = true;
    }
    cv.notify_all();
  }
};

// Opens the gate when the test leaves, so the batcher's destructor (which
// joins the workers) never waits on a gate left closed by a failed check.
// Declare after the batcher: destroyed first.
struct OpenOnExit {
  std::shared_ptr<Gate> gate;
  ~OpenOnExit() { gate->release(); }
};

// A batch function that records every input it gets (under `mu`) and blocks
// on the gate in the batch that holds input 0, so a test can queue work
// behind it.
auto gated_recorder(std::shared_ptr<Gate> gate, std::mutex& mu, std::vector<int>& seen) {
  return [gate, &mu, &seen](std::vector<int>& in) {
    {
      std::lock_guard<std::mutex> lock(mu);
      seen.insert(seen.end(), in.begin(), in.end());
    }
    if (in[0] == 0) gate->pass();
    return in;
  };
}

// An input that counts live instances: nothing may leak or be destroyed twice.
struct Counted {
  static std::atomic<int> live;
  int v = 0;
  bool moved_from = false;
  explicit Counted(int x) : v(x) { ++live; }
  Counted(Counted&& o) noexcept : v(o.v) {
    o.moved_from = true;
    ++live;
  }
  Counted& operator=(Counted&& o) noexcept {
    v = o.v;
    o.moved_from = true;
    return *this;
  }
  Counted(const Counted&) = delete;
  ~Counted() { --live; }
};
std::atomic<int> Counted::live{0};

// An output that cannot be default-constructed (the optional-slot path).
struct NoDefault {
  explicit NoDefault(long long x) : v(x) {}
  long long v;
};

}  // namespace

TEST(futures_get_the_output_of_their_own_input) {
  Batcher<int, long long> b(opts(8, 1000), [](std::vector<int>& in) {
    std::vector<long long> out;
    for (int x : in) out.push_back(f_of(x));
    return out;
  });
  std::vector<std::future<long long>> fs;
  for (int i = 0; i < 100; ++i) fs.push_back(b.submit(i));
  for (int i = 0; i < 100; ++i) {
    if (!ready(fs[i])) {
      CHECK(false);
      continue;
    }
    CHECK_EQ(fs[i].get(), f_of(i));
  }
  const BatcherStats st = b.stats();
  CHECK_EQ(st.total_processed, 100u);
  CHECK(st.total_batches >= 100u / 8);
  CHECK(st.avg_batch_size > 0.0 && st.avg_batch_size <= 8.0);
  std::uint64_t by_size = 0, by_reason = 0;
  for (std::size_t n = 0; n < st.batch_size_histogram.size(); ++n) by_size += n * st.batch_size_histogram[n];
  for (std::uint64_t c : st.batches_by_reason) by_reason += c;
  CHECK_EQ(by_size, 100u);
  CHECK_EQ(by_reason, st.total_batches);
  CHECK_EQ(st.batch_size_histogram.size(), 9u);
  CHECK_EQ(st.queue_size, 0u);
  CHECK_EQ(st.failed_batches, 0u);
}

TEST(full_batch_is_deterministic_and_stats_say_full) {
  // A huge timeout: only "full" can dispatch the first batch.
  std::vector<std::vector<int>> batches;
  std::mutex mu;
  Batcher<int, int> b(opts(4, 60000000), [&](std::vector<int>& in) {
    std::lock_guard<std::mutex> lock(mu);
    batches.push_back(in);
    return in;  // identity
  });
  std::vector<std::future<int>> fs;
  for (int i = 0; i < 4; ++i) fs.push_back(b.submit(10 + i));
  for (int i = 0; i < 4; ++i) {
    CHECK(ready(fs[i]));
    CHECK_EQ(fs[i].get(), 10 + i);
  }
  std::lock_guard<std::mutex> lock(mu);
  CHECK_EQ(batches.size(), 1u);
  CHECK(batches.size() == 1 && batches[0] == std::vector<int>({10, 11, 12, 13}));
  CHECK_EQ(b.stats().batches_for(DispatchReason::kFull), 1u);
  CHECK_EQ(b.stats().batch_size_histogram[4], 1u);
}

TEST(multi_input_call_is_split_over_batches_and_reassembled_in_order) {
  std::atomic<std::size_t> largest{0};
  Batcher<int, NoDefault> b(opts(4, 0), [&](std::vector<int>& in) {
    std::size_t cur = largest.load();
    while (in.size() > cur && !largest.compare_exchange_weak(cur, in.size())) {
    }
    std::vector<NoDefault> out;
    for (int x : in) out.emplace_back(f_of(x));
    return out;
  });
  std::vector<int> in;
  for (int i = 0; i < 37; ++i) in.push_back(i * 7);
  auto f = b.submit(in);
  CHECK(ready(f));
  const std::vector<NoDefault> out = f.get();
  CHECK_EQ(out.size(), 37u);
  for (std::size_t i = 0; i < out.size() && i < 37; ++i) CHECK_EQ(out[i].v, f_of(static_cast<int>(i) * 7));
  CHECK(largest.load() <= 4u);
  CHECK_EQ(b.stats().total_processed, 37u);

  auto empty = b.submit(std::vector<int>{});
  CHECK(ready(empty, 0.0));
  CHECK(empty.get().empty());
}

TEST(batch_exception_reaches_exactly_the_submitters_of_that_batch) {
  // Batch size 3 and a huge timeout: the first three submits form one batch
  // (full), whatever the thread timing. It holds the poison input -1.
  Batcher<int, int> b(opts(3, 60000000), [](std::vector<int>& in) {
    for (int x : in)
      if (x < 0) throw std::runtime_error("poison " + std::to_string(x));
    std::vector<int> out;
    for (int x : in) out.push_back(x * 2);
    return out;
  });
  auto a = b.submit(1);
  auto p = b.submit(-1);
  auto c = b.submit(3);
  for (auto* f : {&a, &p, &c}) {
    CHECK(ready(*f));
    CHECK_STR(error_of(*f), std::string("poison -1"));
  }
  // Later batches are unaffected and the worker survived.
  std::vector<int> in = {4, 5, 6};
  auto d = b.submit(in);
  CHECK(ready(d));
  CHECK(d.get() == std::vector<int>({8, 10, 12}));
  CHECK_EQ(b.stats().failed_batches, 1u);
}

TEST(exceptions_under_load_go_to_exactly_the_right_submitters) {
  // Any batch holding a multiple of 7 throws. The batch function records each
  // batch's inputs; afterwards every submitter's outcome must match the fate
  // of the batch its input was in.
  std::mutex mu;
  std::set<int> failed_inputs;
  Batcher<int, int> b(opts(5, 50, 2), [&](std::vector<int>& in) {
    const bool poison = std::any_of(in.begin(), in.end(), [](int x) { return x % 7 == 0; });
    if (poison) {
      std::lock_guard<std::mutex> lock(mu);
      failed_inputs.insert(in.begin(), in.end());
      throw std::invalid_argument("batch with a multiple of 7");
    }
    std::vector<int> out(in.begin(), in.end());
    for (int& x : out) x = -x;
    return out;
  });
  constexpr int kThreads = 4, kPer = 200;
  std::vector<std::vector<std::future<int>>> fs(kThreads);
  std::vector<std::thread> ts;
  for (int t = 0; t < kThreads; ++t)
    ts.emplace_back([&, t] {
      for (int i = 0; i < kPer; ++i) fs[t].push_back(b.submit(t * kPer + i + 1));
    });
  for (auto& t : ts) t.join();
  int errors = 0;
  for (int t = 0; t < kThreads; ++t)
    for (int i = 0; i < kPer; ++i) {
      auto& f = fs[t][i];
      const int x = t * kPer + i + 1;
      if (!ready(f)) {
        CHECK(false);
        continue;
      }
      bool in_failed_batch;
      {
        std::lock_guard<std::mutex> lock(mu);
        in_failed_batch = failed_inputs.count(x) != 0;
      }
      try {
        const int v = f.get();
        CHECK(!in_failed_batch);
        CHECK_EQ(v, -x);
      } catch (const std::invalid_argument& e) {
        CHECK(in_failed_batch);
        CHECK_STR(e.what(), "batch with a multiple of 7");
        ++errors;
      }
    }
  CHECK(errors >= kThreads * kPer / 7);  // at least the multiples of 7 themselves
  std::lock_guard<std::mutex> lock(mu);
  CHECK_EQ(static_cast<std::size_t>(errors), failed_inputs.size());
}

TEST(values_are_checked_per_submitter_not_just_counted) {
  // Submitters get their own values back: the function maps x -> f(x), and
  // each future is compared with f of its own input (outputs handed to the
  // wrong submitter would fail here even if the multiset matched).
  Batcher<int, long long> b(opts(16, 100), [](std::vector<int>& in) {
    std::vector<long long> out;
    for (int x : in) out.push_back(f_of(x));
    return out;
  });
  std::vector<std::future<long long>> fs;
  for (int i = 0; i < 500; ++i) fs.push_back(b.submit((i * 7919) % 1000));
  for (int i = 0; i < 500; ++i) {
    CHECK(ready(fs[i]));
    CHECK_EQ(fs[i].get(), f_of((i * 7919) % 1000));
  }
}

TEST(a_failed_batch_fails_a_split_call_through_its_later_slice) {
  // A call of 12 over batches of 4 (three full batches, whatever the timing):
  // only the batch holding item 6 (the call's second slice, begin 4) throws;
  // the call fails with that error. A later call of 4 (its own full batch) is
  // unaffected.
  Batcher<int, int> b(opts(4, 60000000), [](std::vector<int>& in) {
    for (int x : in)
      if (x == 6) throw std::runtime_error("slice with 6");
    return std::vector<int>(in.begin(), in.end());
  });
  std::vector<int> in;
  for (int i = 0; i < 12; ++i) in.push_back(i);
  auto f = b.submit(in);
  auto g = b.submit(std::vector<int>{20, 21, 22, 23});
  CHECK(ready(f));
  CHECK(ready(g));
  CHECK_STR(error_of(f), "slice with 6");
  CHECK(g.get() == std::vector<int>({20, 21, 22, 23}));
  CHECK_EQ(b.stats().failed_batches, 1u);
}

TEST(wrong_output_size_is_a_length_error_naming_both_sizes) {
  Batcher<int, int> b(opts(2, 60000000), [](std::vector<int>& in) {
    if (in[0] == 100) return std::vector<int>{1, 2, 3};  // 3 results for 2 inputs
    return std::vector<int>(in.begin(), in.end());
  }, "short");
  auto x = b.submit(100);
  auto y = b.submit(101);
  for (auto* f : {&x, &y}) {
    CHECK(ready(*f));
    try {
      f->get();
      CHECK(false);
    } catch (const std::length_error& e) {
      const std::string what = e.what();
      CHECK(contains(what, "'short'"));
      CHECK(contains(what, "returned 3 results for a batch of 2 inputs"));
    }
  }
  auto z = b.submit(std::vector<int>{7, 8});
  CHECK(ready(z));
  CHECK(z.get() == std::vector<int>({7, 8}));
  CHECK_EQ(b.stats().failed_batches, 1u);
}

TEST(per_item_failures_fail_only_their_items) {
  // Odd inputs fail; even inputs succeed, in the same batches.
  Batcher<int, int> b(opts(8, 60000000), [](std::vector<int>& in) {
    std::vector<Result<int>> out;
    for (int x : in) {
      if (x % 2) {
        out.push_back(failure(std::domain_error("odd " + std::to_string(x))));
      } else {
        out.push_back(x / 2);
      }
    }
    return out;
  });
  std::vector<std::future<int>> singles;
  for (int i = 0; i < 4; ++i) singles.push_back(b.submit(i));
  // One call of four: {10, 13, 15, 16} fails with its first failed item, 13.
  auto many = b.submit(std::vector<int>{10, 13, 15, 16});
  for (int i = 0; i < 4; ++i) {
    CHECK(ready(singles[i]));
    if (i % 2) {
      CHECK_STR(error_of(singles[i]), "odd " + std::to_string(i));
    } else {
      CHECK_EQ(singles[i].get(), i / 2);
    }
  }
  CHECK(ready(many));
  CHECK_STR(error_of(many), std::string("odd 13"));
  CHECK_EQ(b.stats().failed_batches, 0u);  // per-item failures are not failed batches
}

TEST(first_error_in_item_order_across_batches) {
  // A call of 6 over batches of 2 with two workers: items 3 and 1 fail in
  // different batches, possibly in either order in time; the call reports item 1.
  Batcher<int, int> b(opts(2, 0, 2), [](std::vector<int>& in) {
    std::vector<Result<int>> out;
    for (int x : in) {
      if (x == 3 || x == 1) {
        out.push_back(failure(std::runtime_error("item " + std::to_string(x))));
      } else {
        out.push_back(x);
      }
    }
    return out;
  });
  for (int round = 0; round < 50; ++round) {
    auto f = b.submit(std::vector<int>{0, 1, 2, 3, 4, 5});
    CHECK(ready(f));
    CHECK_STR(error_of(f), std::string("item 1"));
  }
}

TEST(callback_form_is_called_once_with_the_right_result) {
  Batcher<int, int> b(opts(4, 100), [](std::vector<int>& in) {
    std::vector<Result<int>> out;
    for (int x : in) {
      if (x < 0) {
        out.push_back(failure(std::out_of_range("negative")));
      } else {
        out.push_back(x + 1000);
      }
    }
    return out;
  });
  constexpr int kN = 64;
  std::vector<std::promise<int>> got(kN);
  std::vector<std::atomic<int>> calls(kN);
  for (int i = 0; i < kN; ++i) {
    const int x = i % 5 == 0 ? -i - 1 : i;
    b.submit(x, [&, i](Result<int> r) {
      calls[i].fetch_add(1);
      if (r.ok()) {
        got[i].set_value(r.value());
      } else {
        got[i].set_exception(r.error());
      }
    });
  }
  std::promise<std::vector<int>> many;
  std::atomic<int> many_calls{0};
  b.submit(std::vector<int>{1, 2, 3}, [&](Result<std::vector<int>> r) {
    many_calls.fetch_add(1);
    many.set_value(std::move(r).value());
  });
  for (int i = 0; i < kN; ++i) {
    auto f = got[i].get_future();
    CHECK(ready(f));
    if (i % 5 == 0) {
      CHECK_STR(error_of(f), std::string("negative"));
    } else {
      CHECK_EQ(f.get(), i + 1000);
    }
  }
  auto mf = many.get_future();
  CHECK(ready(mf));
  CHECK(mf.get() == std::vector<int>({1001, 1002, 1003}));
  b.shutdown();  // every callback has run and no more can come
  for (int i = 0; i < kN; ++i) CHECK_EQ(calls[i].load(), 1);
  CHECK_EQ(many_calls.load(), 1);
}

TEST(shutdown_fails_queued_items_lets_running_batch_finish_and_refuses_submits) {
  auto gate = std::make_shared<Gate>();
  auto b = std::make_unique<Batcher<int, int>>(opts(2, 0), [gate](std::vector<int>& in) {
    gate->pass();
    return std::vector<int>(in.begin(), in.end());
  }, "svc");
  OpenOnExit open{gate};
  auto running = b->submit(1);
  CHECK(gate->wait_entered(1));  // the worker is inside the batch function with {1}
  auto q1 = b->submit(2);
  auto q2 = b->submit(std::vector<int>{3, 4, 5});
  std::promise<std::string> cb_error;
  b->submit(6, [&](Result<int> r) {
    try {
      r.value();
      cb_error.set_value("");
    } catch (const ShutdownError& e) {
      cb_error.set_value(e.what());
    }
  });
  auto stopper = std::async(std::launch::async, [&] { b->shutdown(); });
  // The queued items fail while the running batch is still blocked.
  CHECK(ready(q1));
  CHECK(ready(q2));
  CHECK(throws_type<ShutdownError>(q1));
  CHECK(throws_type<ShutdownError>(q2));
  auto cbf = cb_error.get_future();
  CHECK(ready(cbf));
  CHECK(contains(cbf.get(), "batcher 'svc' was shut down before these items were processed"));
  CHECK(b->is_shut_down());
  CHECK(!ready(running, 0.0));
  gate->release();
  CHECK(ready(running));
  CHECK_EQ(running.get(), 1);
  CHECK(ready(stopper));
  // Submitting after shutdown: a clear error, by every form.
  try {
    b->submit(7);
    CHECK(false);
  } catch (const ShutdownError& e) {
    CHECK(contains(e.what(), "batcher 'svc' has been shut down"));
  }
  int v = 8;
  try {
    b->try_submit(std::move(v));
    CHECK(false);
  } catch (const ShutdownError&) {
  }
  bool called = false;
  try {
    b->submit(9, [&](Result<int>) { called = true; });
    CHECK(false);
  } catch (const ShutdownError&) {
  }
  CHECK(!called);
  b->shutdown();  // idempotent
  b.reset();
}

TEST(destructor_fails_pending_work_and_does_not_hang) {
  // One worker, blocked in the batch function: the second item stays queued
  // until the destructor's shutdown fails it (before joining the worker).
  auto gate = std::make_shared<Gate>();
  std::promise<std::pair<std::future<int>, std::future<int>>> submitted;
  auto done = std::async(std::launch::async, [&] {
    Batcher<int, int> b(opts(1, 0), [gate](std::vector<int>& in) {
      gate->pass();
      return std::vector<int>(in.begin(), in.end());
    });
    auto running = b.submit(1);
    gate->wait_entered(1);
    auto queued = b.submit(2);
    submitted.set_value({std::move(running), std::move(queued)});
  });  // ~Batcher: shutdown, fail `queued`, join (waits for the gate)
  auto sf = submitted.get_future();
  CHECK(ready(sf));
  auto [running, queued] = sf.get();
  CHECK(ready(queued));
  CHECK(throws_type<ShutdownError>(queued));
  CHECK(!ready(done, 0.0));  // still joining the blocked worker
  gate->release();
  CHECK(ready(done));
  CHECK(ready(running));
  CHECK_EQ(running.get(), 1);
}

TEST(full_queue_try_submit_fails_at_once_and_submit_waits_for_room) {
  auto gate = std::make_shared<Gate>();
  BatchOptions o = opts(2, 0);
  o.max_queue_size = 2;
  Batcher<std::string, std::string> b(o, [gate](std::vector<std::string>& in) {
    gate->pass();
    std::vector<std::string> out;
    for (auto& s : in) out.push_back(s + "!");
    return out;
  }, "bounded");
  OpenOnExit open{gate};
  auto first = b.submit(std::string("a"));
  CHECK(gate->wait_entered(1));  // worker busy with {a}; the queue is empty
  std::string b_in = "b";
  auto fb = b.try_submit(std::move(b_in));
  auto fc = b.submit(std::string("c"));
  CHECK_EQ(b.size_approx(), 2u);
  // Full: try_submit fails at once and leaves its input as it was.
  std::string d = "dddddddddddddddddddddddddddddddd";  // longer than SSO: a moved-from string would be empty
  try {
    b.try_submit(std::move(d));
    CHECK(false);
  } catch (const QueueFullError& e) {
    CHECK(contains(e.what(), "batcher 'bounded' is full"));
  }
  CHECK_STR(d, std::string("dddddddddddddddddddddddddddddddd"));
  std::vector<std::string> many = {"x", "y"};
  try {
    b.try_submit(std::move(many));
    CHECK(false);
  } catch (const QueueFullError&) {
  }
  CHECK_EQ(many.size(), 2u);
  // Larger than the queue can ever hold: QueueFullError from submit too, at once.
  try {
    b.submit(std::vector<std::string>{"1", "2", "3"});
    CHECK(false);
  } catch (const QueueFullError& e) {
    CHECK(contains(e.what(), "can never fit"));
  }
  CHECK_EQ(b.stats().rejected_items, 3u + 2u + 1u);
  // submit waits for room: it cannot finish while the worker is blocked.
  auto waiter = std::async(std::launch::async, [&] { return b.submit(std::string("e")); });
  CHECK(!ready(waiter, 0.05));  // not a timing assumption: it must not finish before release
  gate->release();
  CHECK(ready(waiter));
  std::future<std::string> fe = waiter.get();
  for (auto* f : {&first, &fb, &fc, &fe}) CHECK(ready(*f));
  CHECK_STR(first.get(), std::string("a!"));
  CHECK_STR(fb.get(), std::string("b!"));
  CHECK_STR(fc.get(), std::string("c!"));
  CHECK_STR(fe.get(), std::string("e!"));
  CHECK_EQ(b.stats().rejected_items, 6u);  // the waiting submit's refused tries do not count
}

// A batch at a time, one item queued at most: a second submit waits for room.
BatchOptions one_item_queue() {
  BatchOptions o = opts(1, 0);
  o.max_queue_size = 1;
  return o;
}

// The identity, each batch held at `gate` first.
std::function<std::vector<int>(std::vector<int>&)> echo_behind(std::shared_ptr<Gate> gate) {
  return [gate](std::vector<int>& in) {
    gate->pass();
    return std::vector<int>(in.begin(), in.end());
  };
}

TEST(shutdown_wakes_a_submit_waiting_for_room) {
  auto gate = std::make_shared<Gate>();
  Batcher<int, int> b(one_item_queue(), echo_behind(gate));
  OpenOnExit open{gate};
  auto first = b.submit(1);
  CHECK(gate->wait_entered(1));
  auto queued = b.submit(2);
  auto waiter = std::async(std::launch::async, [&] {
    try {
      b.submit(3);
      return std::string("queued");
    } catch (const ShutdownError&) {
      return std::string("shutdown");
    }
  });
  auto stopper = std::async(std::launch::async, [&] { b.shutdown(); });
  CHECK(ready(waiter));
  CHECK_STR(waiter.get(), std::string("shutdown"));
  CHECK(ready(queued));
  CHECK(throws_type<ShutdownError>(queued));
  gate->release();
  CHECK(ready(stopper));
  CHECK(ready(first));
  CHECK_EQ(first.get(), 1);
}

TEST(configure_wakes_a_submit_waiting_for_room) {
  // A submit waits for room; configure() lifts the bound (0), then lowers it
  // below a waiting call's size: neither may leave a submitter waiting.
  auto gate = std::make_shared<Gate>();
  Batcher<int, int> b(one_item_queue(), echo_behind(gate));
  OpenOnExit open{gate};
  auto first = b.submit(1);
  CHECK(gate->wait_entered(1));
  auto queued = b.submit(2);
  auto waiter = std::async(std::launch::async, [&] { return b.submit(3); });
  CHECK(!ready(waiter, 0.05));  // full: it waits
  BatchOptions unbounded = b.options();
  unbounded.max_queue_size = 0;
  b.configure(unbounded);
  CHECK(ready(waiter));  // while the worker is still blocked
  auto f3 = waiter.get();
  BatchOptions tight = b.options();
  tight.max_queue_size = 2;
  b.configure(tight);  // 2 queued: a call of 2 more waits...
  auto pair = std::async(std::launch::async, [&] {
    try {
      b.submit(std::vector<int>{4, 5});
      return std::string("queued");
    } catch (const QueueFullError& e) {
      return std::string(e.what());
    }
  });
  CHECK(!ready(pair, 0.05));
  tight.max_queue_size = 1;
  b.configure(tight);  // ...until the bound falls below its size: it can never fit
  CHECK(ready(pair));
  CHECK(contains(pair.get(), "can never fit"));
  gate->release();
  CHECK(ready(first) && ready(queued) && ready(f3));
  CHECK_EQ(first.get() + queued.get() + f3.get(), 6);
}

TEST(priority_metadata_orders_the_queue) {
  // Batch size 1: while the worker is blocked, queue priority 5 then
  // priority 0 then a default-priority small call (0): 0s go first, in
  // arrival order, then 5.
  auto gate = std::make_shared<Gate>();
  std::mutex mu;
  std::vector<int> order;
  BatchOptions o = opts(1, 0);
  o.aging_us = 60000000;  // no aging during the test, however slow the machine
  Batcher<int, int> b(o, gated_recorder(gate, mu, order));
  OpenOnExit open{gate};
  auto f0 = b.submit(0);
  CHECK(gate->wait_entered(1));
  SubmitOptions low;
  low.priority = 5;
  SubmitOptions high;
  high.priority = 0;
  auto f5 = b.submit(5, low);
  auto f1 = b.submit(1, high);
  auto f2 = b.submit(2);
  gate->release();
  for (auto* f : {&f0, &f5, &f1, &f2}) CHECK(ready(*f));
  std::lock_guard<std::mutex> lock(mu);
  CHECK(order == std::vector<int>({0, 1, 2, 5}));
}

TEST(a_deadline_fails_the_caller_when_it_passes_not_when_a_worker_frees) {
  // The only worker is blocked; a call with a 30 ms deadline gets
  // DeadlineExceeded while it still is, and never reaches the function.
  auto gate = std::make_shared<Gate>();
  std::mutex mu;
  std::vector<int> seen;
  Batcher<int, int> b(opts(4, 0), gated_recorder(gate, mu, seen));
  OpenOnExit open{gate};
  auto first = b.submit(0);
  CHECK(gate->wait_entered(1));
  SubmitOptions soon;
  soon.deadline_us = 30000;
  auto late = b.submit(std::vector<int>{7, 8}, soon);
  auto patient = b.submit(9);
  CHECK(ready(late));
  CHECK(throws_type<DeadlineExceeded>(late));
  CHECK_EQ(b.stats().expired_items, 2u);
  gate->release();
  CHECK(ready(first) && ready(patient));
  CHECK_EQ(patient.get(), 9);
  std::lock_guard<std::mutex> lock(mu);
  CHECK(std::find(seen.begin(), seen.end(), 7) == seen.end());
  CHECK(std::find(seen.begin(), seen.end(), 8) == seen.end());
}

TEST(deadline_options_are_checked) {
  BatchOptions o = opts(4, 0);
  o.deadline_us = -1;
  try {
    Batcher<int, int> b(o, [](std::vector<int>& in) { return in; });
    CHECK(false);
  } catch (const std::invalid_argument& e) {
    CHECK(contains(e.what(), "deadline_us"));
  }
  Batcher<int, int> b(opts(4, 0), [](std::vector<int>& in) { return in; });
  SubmitOptions bad;
  bad.deadline_us = -5;
  try {
    b.submit(1, bad);
    CHECK(false);
  } catch (const std::invalid_argument& e) {
    CHECK(contains(e.what(), "SubmitOptions::deadline_us"));
  }
  // A generous deadline changes nothing.
  SubmitOptions fine;
  fine.deadline_us = 10000000;
  auto f = b.submit(std::vector<int>{1, 2, 3}, fine);
  CHECK(ready(f));
  CHECK(f.get() == std::vector<int>({1, 2, 3}));
}

TEST(keys_never_share_a_batch_and_the_function_reads_its_key) {
  std::mutex mu;
  int mixed = 0;
  std::vector<std::uint64_t> seen_keys;
  Batcher<int, int> b(opts(8, 2000), [&](std::vector<int>& in) {
    const std::uint64_t key = current_key();
    std::lock_guard<std::mutex> lock(mu);
    seen_keys.push_back(key);
    for (int x : in)
      if (static_cast<std::uint64_t>(x % 3) + 1 != key) ++mixed;
    return in;
  });
  std::vector<std::future<int>> fs;
  for (int i = 0; i < 300; ++i) {
    SubmitOptions m;
    m.key = static_cast<std::uint64_t>(i % 3) + 1;
    fs.push_back(b.submit(i, m));
  }
  for (int i = 0; i < 300; ++i) {
    CHECK(ready(fs[i]));
    CHECK_EQ(fs[i].get(), i);
  }
  CHECK_EQ(current_key(), 0u);  // outside a batch function
  std::lock_guard<std::mutex> lock(mu);
  CHECK_EQ(mixed, 0);
  CHECK(!seen_keys.empty());
}

TEST(length_metadata_respects_max_batch_length) {
  BatchOptions o = opts(64, 60000000);
  o.max_batch_length = 10;
  std::mutex mu;
  std::vector<std::vector<int>> batches;
  Batcher<int, int> b(o, [&](std::vector<int>& in) {
    std::lock_guard<std::mutex> lock(mu);
    batches.push_back(in);
    return in;
  });
  // Inputs are their own lengths: 4 + 4 fit, + 4 would exceed 10: budget.
  SubmitOptions m;
  m.lengths = {4, 4, 4};
  auto f = b.submit(std::vector<int>{4, 4, 4}, m);
  SubmitOptions one;
  one.length = 12;  // longer than the budget: goes alone
  auto g = b.submit(12, one);
  CHECK(ready(f));
  CHECK(ready(g));
  CHECK(f.get() == std::vector<int>({4, 4, 4}));
  CHECK_EQ(g.get(), 12);
  std::lock_guard<std::mutex> lock(mu);
  for (const auto& batch : batches) {
    int sum = 0;
    for (int x : batch) sum += x;
    CHECK(sum <= 10 || batch.size() == 1);
  }
  // A lengths vector of the wrong size is the caller's error, at once.
  SubmitOptions bad;
  bad.lengths = {1, 2};
  try {
    b.submit(std::vector<int>{1, 2, 3}, bad);
    CHECK(false);
  } catch (const std::invalid_argument& e) {
    CHECK(contains(e.what(), "2 elements for a call of 3 inputs"));
  }
}

TEST(many_producers_every_result_matches_its_input) {
  // 8 producers released together, single, multi and callback submits mixed,
  // two workers; every output checked against its own input; conservation.
  Batcher<int, long long> b(opts(32, 200, 2), [](std::vector<int>& in) {
    std::vector<long long> out;
    out.reserve(in.size());
    for (int x : in) out.push_back(f_of(x));
    return out;
  });
  constexpr int kThreads = 8, kCalls = 1500;
  std::atomic<int> ready_count{0};
  std::atomic<long long> mismatches{0}, items{0}, callback_items{0};
  std::vector<std::thread> ts;
  for (int t = 0; t < kThreads; ++t)
    ts.emplace_back([&, t] {
      ready_count.fetch_add(1);
      while (ready_count.load() < kThreads) std::this_thread::yield();
      std::vector<std::pair<int, std::future<long long>>> singles;
      std::vector<std::pair<std::vector<int>, std::future<std::vector<long long>>>> multis;
      for (int i = 0; i < kCalls; ++i) {
        const int x = t * 1000000 + i * 10;
        switch (i % 3) {
          case 0:
            singles.emplace_back(x, b.submit(x));
            items += 1;
            break;
          case 1: {
            std::vector<int> in;
            for (int k = 0; k < 1 + i % 40; ++k) in.push_back(x + k);
            auto f = b.submit(in);
            items += static_cast<long long>(in.size());
            multis.emplace_back(std::move(in), std::move(f));
            break;
          }
          default:
            b.submit(x, [&, x](Result<long long> r) {
              if (!r.ok() || r.value() != f_of(x)) mismatches.fetch_add(1);
              callback_items.fetch_add(1);
            });
            items += 1;
        }
      }
      for (auto& [x, f] : singles)
        if (!ready(f) || f.get() != f_of(x)) mismatches.fetch_add(1);
      for (auto& [in, f] : multis) {
        if (!ready(f)) {
          mismatches.fetch_add(1);
          continue;
        }
        const std::vector<long long> out = f.get();
        if (out.size() != in.size()) mismatches.fetch_add(1);
        for (std::size_t k = 0; k < out.size() && k < in.size(); ++k)
          if (out[k] != f_of(in[k])) mismatches.fetch_add(1);
      }
    });
  for (auto& t : ts) t.join();
  b.shutdown();  // joins the workers: every callback has run
  CHECK_EQ(mismatches.load(), 0);
  CHECK_EQ(callback_items.load(), static_cast<long long>(kThreads) * (kCalls / 3));
  const BatcherStats st = b.stats();
  CHECK_EQ(static_cast<long long>(st.total_processed), items.load());
  CHECK_EQ(st.queue_size, 0u);
  CHECK(st.avg_batch_size <= 32.0);
}

TEST(inputs_are_moved_and_destroyed_exactly_once) {
  {
    auto gate = std::make_shared<Gate>();
    Batcher<Counted, int> b(opts(4, 0), [gate](std::vector<Counted>& in) {
      std::vector<int> out;
      for (const Counted& c : in) {
        CHECK(!c.moved_from);
        out.push_back(c.v);
      }
      if (in[0].v == 0) gate->pass();
      return out;
    });
    OpenOnExit open{gate};
    auto a = b.submit(Counted(0));
    CHECK(gate->wait_entered(1));
    std::vector<Counted> many;
    for (int i = 1; i <= 5; ++i) many.emplace_back(i);
    auto m = b.submit(std::move(many));
    auto q = b.submit(Counted(9));
    gate->release();
    CHECK(ready(a));
    CHECK(ready(m));
    CHECK(ready(q));
    CHECK_EQ(a.get(), 0);
    CHECK(m.get() == std::vector<int>({1, 2, 3, 4, 5}));
    CHECK_EQ(q.get(), 9);
  }
  CHECK_EQ(Counted::live.load(), 0);
  {
    auto gate = std::make_shared<Gate>();
    std::future<int> queued;
    {
      Batcher<Counted, int> b(opts(1, 0), [gate](std::vector<Counted>& in) {
        gate->pass();
        return std::vector<int>{in[0].v};
      });
      OpenOnExit open{gate};
      auto running = b.submit(Counted(1));
      CHECK(gate->wait_entered(1));
      queued = b.submit(Counted(2));
      gate->release();
      CHECK(ready(running));
    }
    CHECK(ready(queued));
  }
  CHECK_EQ(Counted::live.load(), 0);
}

TEST(a_batch_function_may_call_shutdown) {
  std::promise<void> called;
  Batcher<int, int>* self = nullptr;
  auto b = std::make_unique<Batcher<int, int>>(opts(1, 0), [&](std::vector<int>& in) {
    if (in[0] == 42) {
      self->shutdown();  // must not join itself
      called.set_value();
    }
    return in;
  });
  self = b.get();
  auto f = b->submit(42);
  CHECK(ready(f));
  CHECK_EQ(f.get(), 42);
  auto c = called.get_future();
  CHECK(ready(c));
  CHECK(b->is_shut_down());
  b.reset();  // joins the worker that shut down
}

TEST(invalid_options_throw_invalid_argument) {
  auto fn = [](std::vector<int>& in) { return in; };
  bool threw = false;
  try {
    Batcher<int, int> b(opts(0, 0), fn);
  } catch (const std::invalid_argument& e) {
    threw = contains(e.what(), "max_batch_size");
  }
  CHECK(threw);
  threw = false;
  try {
    Batcher<int, int> b(opts(4, -1), fn);
  } catch (const std::invalid_argument& e) {
    threw = contains(e.what(), "timeout_us");
  }
  CHECK(threw);
}

TEST_MAIN()

// Batcher<In, Out>: dynamic batching for C++ callers (docs/semantics.md).
//
// Many threads submit inputs; the batcher groups the inputs that arrive close
// together, calls the batch function once per batch on one of its own worker
// threads, and hands every submitter exactly the outputs of its own inputs.
//
//   batched::BatchOptions o;
//   o.max_batch_size = 64;    // Python: batch_size
//   o.timeout_us = 2000;      // Python: timeout_ms = 2.0
//   batched::Batcher<Request, Embedding> b(o, [&](std::vector<Request>& batch) {
//     return model.embed(batch);  // std::vector<Embedding>, one per input
//   });
//   std::future<Embedding> f = b.submit(std::move(request));
//
// Contract (the same policy code as the Python drivers: Scheduler, policy.h)
//  * A batch leaves when it holds max_batch_size items, when its oldest item
//    has waited timeout_us (0: at once, as soon as a worker is free), or when
//    max_batch_length would be exceeded; items that queued while every worker
//    was busy leave as soon as one is free. Which items a batch takes follows
//    options.priority_rule (by default calls of at most small_batch_threshold
//    items go ahead of larger calls), after each call's explicit
//    SubmitOptions::priority; a call that batches have passed over for
//    aging_us goes first in the next one (nothing starves). docs/semantics.md
//    says it all; policy.h implements it.
//  * Every input is processed exactly once. submit(In) yields that input's
//    output; submit(std::vector<In>) yields the outputs in input order, the
//    call being split over several batches if it is larger than a batch.
//  * The batch function takes the batch's inputs (std::vector<In>&, which it
//    may modify or move from) and returns std::vector<Out> or
//    std::vector<Result<Out>> with one element per input, in order.
//    - If it throws, every submitter with an item in that batch gets that
//      exception (one shared exception object: catch it by const reference).
//    - If it returns the wrong number of outputs, every submitter of that
//      batch gets std::length_error naming the batcher and both sizes.
//    - A Result holding batched::failure(e) fails that item only.
//    - A call of several inputs fails if any of its items fails, with the
//      error of its first failed item (in input order).
//    The workers survive all of these; other batches are unaffected.
//  * Bounded queue (max_queue_size > 0): try_submit throws QueueFullError at
//    once; submit waits until there is room. A call of more than
//    max_queue_size items can never fit: both throw QueueFullError.
//  * Deadlines (BatchOptions::deadline_us, SubmitOptions::deadline_us): a
//    batch leaves early enough for its queued calls to finish in time, given
//    the batch time observed so far, and a call that could no longer finish
//    in time leaves the queue unsent and fails with DeadlineExceeded at that
//    moment (a call already partly running fails once that part is done).
//  * shutdown() (and the destructor) stops the workers after the batches they
//    are running; every item still queued completes with ShutdownError, and
//    every later submit throws ShutdownError.
//
// Threads: num_workers std::threads, started by the constructor and joined by
// shutdown() / the destructor. The batch function and completion callbacks
// run on them; futures become ready there. With deadlines, one more thread
// (started with the first deadline) fails expired calls while every worker is busy.
//
// Costs per submit call: one heap allocation for the request record (it holds
// the Entry, the inputs, and the promise or callback), plus the shared state of
// std::promise in the future form, plus the output vector of a multi-input
// call. A single-input push is lock-free unless a worker sleeps (scheduler.h).
// Per batch: the batch function's output vector; the input vector is reused.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <future>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include <batched/batch_error.h>
#include <batched/batcher_stats.h>
#include <batched/entry.h>
#include <batched/options.h>
#include <batched/result.h>
#include <batched/scheduler.h>

namespace batched {

// Per-call metadata of a submit.
struct SubmitOptions {
  // Lower goes first, before the priority rule (BatchOptions::priority_rule)
  // orders calls of equal priority. Aging (aging_us) overrides both for a
  // call that batches have passed over.
  std::int32_t priority = 0;
  // For max_batch_length: the length of a single-input submit's item.
  std::uint32_t length = 1;
  // For max_batch_length: one length per item of a multi-input submit, or
  // empty for `length` each.
  std::vector<std::uint32_t> lengths;
  // If non-zero: this call must be done within this many microseconds of the
  // submit (BatchOptions::deadline_us applies if earlier). Items that could
  // no longer finish in time are never sent; the call then fails with
  // DeadlineExceeded, as soon as that is known (docs/semantics.md, 11).
  std::int64_t deadline_us = 0;
  // The grouping key: a batch holds calls of one key only, and each key fills
  // and times out on its own (docs/semantics.md, 12). The batch function
  // reads its batch's key with batched::current_key().
  std::uint64_t key = 0;
};

namespace detail {
inline thread_local std::uint64_t current_batch_key = 0;
}  // namespace detail

// The grouping key of the batch the calling thread's batch function is
// running (SubmitOptions::key); 0 outside a batch function.
inline std::uint64_t current_key() noexcept { return detail::current_batch_key; }

namespace detail {
template <class In, class Out>
class Request;
template <class In, class Out, class Sink>
class SingleRequest;
template <class In, class Out, class Sink>
class ManyRequest;
template <class T>
struct PromiseSink;
template <class T, class F>
struct CallbackSink;
}  // namespace detail

template <class In, class Out>
class Batcher {
  static_assert(std::is_move_constructible_v<In>, "Inputs are moved into the request and then into the batch: In must be move-constructible.");
  static_assert(std::is_move_constructible_v<Out>, "Outputs are moved to their submitters: Out must be move-constructible.");
  static_assert(!std::is_reference_v<In> && !std::is_reference_v<Out>, "The batcher owns inputs and outputs: use values (or pointers), not references.");

 public:
  using input_type = In;
  using output_type = Out;

  // Starts options.num_workers worker threads that call `fn` with each batch.
  // `fn(std::vector<In>&)` returns std::vector<Out> or std::vector<Result<Out>>;
  // it is called from one worker at a time per batch, concurrently if
  // num_workers > 1. `name` appears in error messages.
  // Throws std::invalid_argument for bad options (BatchOptions::validate) and
  // std::system_error if a thread cannot start. Allocates.
  template <class Fn, class = std::enable_if_t<std::is_invocable_v<Fn&, std::vector<In>&>>>
  Batcher(const BatchOptions& options, Fn fn, std::string name = "batcher")
      : sched_(options),
        name_(std::move(name)),
        lengths_matter_(options.max_batch_length != 0 || options.max_batch_tokens != 0) {
    using R = std::invoke_result_t<Fn&, std::vector<In>&>;
    if constexpr (std::is_same_v<R, std::vector<Out>>) {
      fn_ = std::move(fn);
    } else {
      static_assert(std::is_same_v<R, std::vector<Result<Out>>>,
                    "The batch function must return std::vector<Out> or std::vector<batched::Result<Out>>.");
      fn_results_ = std::move(fn);
    }
    workers_.reserve(options.num_workers + 1);
    try {
      for (std::size_t i = 0; i < options.num_workers; ++i) workers_.emplace_back([this] { worker_main(); });
      if (options.deadline_us != 0) start_watcher();
    } catch (...) {
      shutdown();
      throw;
    }
  }

  // Shuts down (see shutdown()) and joins the workers. Must not run on a worker
  // thread (from inside the batch function or a completion callback).
  ~Batcher() { shutdown(); }

  Batcher(const Batcher&) = delete;
  Batcher& operator=(const Batcher&) = delete;

  // ---- submitting ----
  //
  // Ownership: the batcher takes the inputs (by value) and gives them to the
  // batch function; they are destroyed after the batch ran, before any output
  // of that batch is handed out. A submit that throws has queued nothing.

  // Queues one input; the future yields its output or its error. Waits while
  // a bounded queue is full. Throws ShutdownError after shutdown() (also while
  // waiting for room), std::invalid_argument if meta.lengths has more than 1
  // element, std::bad_alloc when out of memory (nothing queued then).
  // Thread-safe. Allocates the request record and the promise's shared state
  // (and, under kSmallFirstThenShortest, one unit per input: scheduler.h).
  std::future<Out> submit(In input, const SubmitOptions& meta = {}) {
    return submit_one_future(input, meta, /*wait_for_room=*/true);
  }

  // Queues the inputs as one call (split over batches if needed); the future
  // yields the outputs in input order, or the error of the first failed item.
  // An empty vector yields an empty vector at once. Waits while a bounded
  // queue is full. Throws ShutdownError after shutdown(), QueueFullError if
  // the call has more than max_queue_size items, std::invalid_argument if
  // meta.lengths has neither 0 nor inputs.size() elements.
  // Thread-safe. Allocates the record, the output vector and the promise.
  std::future<std::vector<Out>> submit(std::vector<In> inputs, const SubmitOptions& meta = {}) {
    return submit_many_future(inputs, meta, /*wait_for_room=*/true);
  }

  // Callback form: `on_done(Result<Out>)` is called exactly once, on a worker
  // thread (or on the thread calling shutdown() for items that never ran).
  // It must not throw (it runs as noexcept: a throw terminates) and should be
  // quick: the worker does not take the next batch until it returns.
  // Throws like submit(In); on a throw on_done is never called.
  // Thread-safe. Allocates the request record only.
  template <class OnDone, class = std::enable_if_t<std::is_invocable_v<OnDone&, Result<Out>&&>>>
  void submit(In input, OnDone on_done, const SubmitOptions& meta = {}) {
    auto r = std::make_unique<detail::SingleRequest<In, Out, detail::CallbackSink<Out, OnDone>>>(
        std::move(input), detail::CallbackSink<Out, OnDone>{std::move(on_done)});
    push(*r, meta, /*wait_for_room=*/true, nullptr);
    r.release();  // the scheduler holds it now; the last completion deletes it
  }

  // Callback form of submit(std::vector<In>): `on_done(Result<std::vector<Out>>)`
  // is called exactly once (at once, on this thread, for an empty vector).
  // Thread-safe. Allocates the record and the output vector.
  template <class OnDone, class = std::enable_if_t<std::is_invocable_v<OnDone&, Result<std::vector<Out>>&&>>>
  void submit(std::vector<In> inputs, OnDone on_done, const SubmitOptions& meta = {}) {
    if (inputs.empty()) {
      on_done(Result<std::vector<Out>>(std::vector<Out>()));
      return;
    }
    using Sink = detail::CallbackSink<std::vector<Out>, OnDone>;
    auto r = std::make_unique<detail::ManyRequest<In, Out, Sink>>(std::move(inputs), Sink{std::move(on_done)});
    push(*r, meta, /*wait_for_room=*/true, nullptr);
    r.release();
  }

  // Like submit(In), but never waits: throws QueueFullError at once if a
  // bounded queue is full. Takes `input` iff it returns; on a throw, `input`
  // holds what it held (moved back). Thread-safe. Allocates like submit(In).
  std::future<Out> try_submit(In&& input, const SubmitOptions& meta = {}) {
    return submit_one_future(input, meta, /*wait_for_room=*/false);
  }

  // Like submit(std::vector<In>), but never waits: throws QueueFullError at
  // once if the call does not fit. Takes `inputs` iff it returns; on a throw,
  // `inputs` holds what it held. Thread-safe. Allocates like submit(vector).
  std::future<std::vector<Out>> try_submit(std::vector<In>&& inputs, const SubmitOptions& meta = {}) {
    return submit_many_future(inputs, meta, /*wait_for_room=*/false);
  }

  // ---- lifecycle and observers ----

  // Stops the batcher: later submits throw ShutdownError, every queued item
  // completes with ShutdownError, batches already running finish normally,
  // and the workers are joined. Idempotent. Thread-safe; called from a worker
  // (inside the batch function) it does not join that worker, which stops
  // after its batch and is joined by the destructor. Allocates the message.
  void shutdown() {
    sched_.shutdown();
    {
      std::lock_guard<std::mutex> lock(room_mu_);
      room_closed_ = true;
    }
    room_cv_.notify_all();  // after unlocking: woken submitters need room_mu_ at once
    fail_drained();
    join_workers();
  }

  // Whether shutdown() has been called. Thread-safe.
  bool is_shut_down() const { return sched_.closed(); }

  // Racy observer: items submitted and not yet dispatched. Thread-safe, lock-free.
  std::size_t size_approx() const noexcept { return sched_.size_approx(); }

  // A consistent snapshot of the statistics (the Python fields). Thread-safe;
  // takes the worker and stats mutexes briefly, one after the other;
  // allocates the histogram.
  BatcherStats stats() const {
    BatcherStats s = BatcherStats::from_core(sched_.stats());
    // A waiting submit's refused tries are not rejections: it got in later.
    const std::uint64_t retried = retried_items_.load(std::memory_order_relaxed);
    s.rejected_items = s.rejected_items > retried ? s.rejected_items - retried : 0;
    return s;
  }

  // The core's own snapshot (dispatch counts, histograms). Thread-safe.
  BatchStats core_stats() const { return sched_.stats(); }

  // The options in force. Thread-safe.
  BatchOptions options() const { return sched_.options(); }

  // Changes the live settings (batch size, timeout, aging, adaptive waits,
  // max_queue_size, deadline): Scheduler::configure. Submitters waiting for
  // room look again (the bound may have moved). Thread-safe.
  void configure(const BatchOptions& options) {
    sched_.configure(options);
    {
      std::lock_guard<std::mutex> lock(room_mu_);
      ++room_epoch_;
    }
    room_cv_.notify_all();
  }
  const std::string& name() const noexcept { return name_; }

  // ---- implementation details follow ----
 private:
  using Req = detail::Request<In, Out>;

  std::future<Out> submit_one_future(In& input, const SubmitOptions& meta, bool wait_for_room) {
    using Sink = detail::PromiseSink<Out>;
    auto r = std::make_unique<detail::SingleRequest<In, Out, Sink>>(std::move(input), Sink{});
    std::future<Out> f = r->sink().promise.get_future();  // before the push: a worker may finish it at once
    push(*r, meta, wait_for_room, [&] { input = std::move(r->input()); });
    r.release();  // the scheduler holds it now; the last completion deletes it
    return f;
  }

  std::future<std::vector<Out>> submit_many_future(std::vector<In>& inputs, const SubmitOptions& meta,
                                                   bool wait_for_room) {
    if (inputs.empty()) {
      std::promise<std::vector<Out>> p;
      p.set_value({});
      return p.get_future();
    }
    using Sink = detail::PromiseSink<std::vector<Out>>;
    auto r = std::make_unique<detail::ManyRequest<In, Out, Sink>>(std::move(inputs), Sink{});
    std::future<std::vector<Out>> f = r->sink().promise.get_future();
    push(*r, meta, wait_for_room, [&] { inputs = std::move(r->inputs()); });
    r.release();
    return f;
  }

  // Sets the entry's metadata and queues it; on a throw, calls give_back()
  // first (so try_submit can return the inputs) and leaves `r` unqueued.
  template <class R, class GiveBack>
  void push(R& r, const SubmitOptions& meta, bool wait_for_room, GiveBack give_back) {
    const std::size_t n = r.size();
    if (n > std::numeric_limits<std::uint32_t>::max())
      fail_push(give_back, std::invalid_argument("batcher '" + name_ + "': a call may hold at most 2^32-1 items, got " + std::to_string(n)));
    Entry& e = r.entry;
    e.owner = static_cast<Req*>(&r);
    e.count = static_cast<std::uint32_t>(n);
    e.priority = meta.priority;
    e.key = meta.key;
    if (meta.deadline_us < 0 || meta.deadline_us > BatchOptions::kMaxDurationUs)
      fail_push(give_back, std::invalid_argument("batcher '" + name_ + "': SubmitOptions::deadline_us must be "
                                                 "between 0 (none) and 1e12, got " + std::to_string(meta.deadline_us)));
    e.deadline_ns = meta.deadline_us == 0 ? kNever : sched_.clock().now() + meta.deadline_us * 1000;
    if (meta.deadline_us != 0 && !watching_.load(std::memory_order_acquire)) start_watcher();
    if (!meta.lengths.empty() && meta.lengths.size() != n)
      fail_push(give_back, std::invalid_argument("batcher '" + name_ + "': SubmitOptions::lengths has " +
                                                 std::to_string(meta.lengths.size()) + " elements for a call of " +
                                                 std::to_string(n) + " inputs"));
    if (lengths_matter_) r.set_lengths(meta);  // else length 1 each
    r.pending.store(e.count, std::memory_order_relaxed);
    PushStatus status = sched_.try_push(&e);
    if (status == PushStatus::kQueueFull && wait_for_room && n <= sched_.max_queue_size()) status = push_when_room(&e);
    if (queued(status)) return;
    const std::size_t max_queue = sched_.max_queue_size();  // (after the wait: configure may have changed it)
    if (status == PushStatus::kClosed) fail_push(give_back, ShutdownError("batcher '" + name_ + "' has been shut down"));
    if (status == PushStatus::kNoMemory) fail_push(give_back, std::bad_alloc());
    if (n > max_queue)
      fail_push(give_back, QueueFullError("a call of " + std::to_string(n) + " items can never fit in batcher '" +
                                          name_ + "': max_queue_size=" + std::to_string(max_queue)));
    fail_push(give_back, QueueFullError("batcher '" + name_ + "' is full: " + std::to_string(size_approx()) +
                                        " items are queued, max_queue_size=" + std::to_string(max_queue) +
                                        ", and this call has " + std::to_string(n) + "; retry later"));
  }

  template <class GiveBack, class E>
  [[noreturn]] static void fail_push(GiveBack& give_back, const E& error) {
    if constexpr (!std::is_same_v<GiveBack, std::nullptr_t>) give_back();
    throw error;
  }

  // Retries the push each time a worker dispatches (and so frees room), until
  // it is queued or the batcher shuts down. The retry runs under room_mu_ and
  // a worker bumps room_epoch_ under room_mu_ after it dispatched: either the
  // retry sees the room, or the waiter sees the epoch move. No lost wake-up.
  PushStatus push_when_room(Entry* e) {
    std::unique_lock<std::mutex> lock(room_mu_);
    ++room_waiters_;
    PushStatus status = PushStatus::kQueueFull;
    for (;;) {
      retried_items_.fetch_add(e->count, std::memory_order_relaxed);  // the refused try before this one
      status = sched_.try_push(e);
      if (status != PushStatus::kQueueFull) break;
      const std::size_t limit = sched_.max_queue_size();  // (configure may have lowered it)
      if (limit != 0 && e->count > limit) break;           // it can never fit now: the caller says so
      const std::uint64_t epoch = room_epoch_;
      room_cv_.wait(lock, [&] { return room_epoch_ != epoch || room_closed_; });
    }
    --room_waiters_;
    return status;
  }

  // After a dispatch: wakes submitters waiting for room (bounded queues only).
  void on_dispatched() {
    if (sched_.max_queue_size() == 0) return;
    bool waiters;
    {
      std::lock_guard<std::mutex> lock(room_mu_);
      ++room_epoch_;
      waiters = room_waiters_ > 0;
    }
    if (waiters) room_cv_.notify_all();  // after unlocking, so the woken do not block on room_mu_
  }

  void worker_main() {
    Batch batch;
    std::vector<In> inputs;
    inputs.reserve(sched_.options().max_batch_size);
    while (sched_.wait_pop(batch)) {
      on_dispatched();
      fail_expired(batch.expired);
      if (!batch.empty()) run_batch(batch, inputs);
    }
  }

  // Starts the thread that fails calls whose deadline passes while every
  // worker is busy (once; with the first deadline). Thread-safe.
  void start_watcher() {
    std::lock_guard<std::mutex> lock(workers_mu_);
    if (watching_.load(std::memory_order_relaxed)) return;
    workers_.emplace_back([this] {
      std::vector<Expired> expired;
      while (sched_.wait_expired(expired)) {
        on_dispatched();  // room for waiting submitters
        fail_expired(expired);
      }
    });
    watching_.store(true, std::memory_order_release);
  }

  // Fails the calls whose deadline could no longer be met (their items left
  // the queue unsent).
  void fail_expired(const std::vector<Expired>& expired) {
    for (const Expired& x : expired) {
      Req* r = static_cast<Req*>(x.entry->owner);
      r->fail(x.first_left, std::make_exception_ptr(DeadlineExceeded(
                                "batcher '" + name_ + "': the call's deadline passed, or could no longer be met, "
                                "before its items were sent to a batch")));
      r->done(x.removed);  // may delete r
    }
  }

  // Runs one batch and hands out every item's outcome. Whatever fails (moving
  // the inputs, the batch function, its output size) becomes the error of
  // every item of the batch, so no submitter is left waiting.
  void run_batch(Batch& batch, std::vector<In>& inputs) noexcept {
    std::exception_ptr error;
    std::vector<Out> outs;
    std::vector<Result<Out>> results;
    const SteadyClock& clock = sched_.clock();
    TimePoint t0 = clock.now();
    TimePoint t1 = t0;
    try {
      for (const Span& s : batch.spans) {
        In* in = static_cast<Req*>(s.entry->owner)->items;
        for (std::uint32_t k = 0; k < s.count; ++k) inputs.push_back(std::move(in[s.begin + k]));
      }
      t0 = clock.now();
      std::size_t got;
      detail::current_batch_key = batch.key;
      if (fn_) {
        outs = fn_(inputs);
        got = outs.size();
      } else {
        results = fn_results_(inputs);
        got = results.size();
      }
      t1 = clock.now();
      if (got != batch.size)
        throw std::length_error("batch function of batcher '" + name_ + "' returned " + std::to_string(got) +
                                " results for a batch of " + std::to_string(batch.size) +
                                " inputs; it must return one result per input");
    } catch (...) {
      t1 = clock.now();
      error = std::current_exception();
    }
    detail::current_batch_key = 0;
    sched_.finish_batch(batch, t1 - t0, error != nullptr);
    inputs.clear();  // the inputs die before their submitters hear back
    if (error) {
      for (const Span& s : batch.spans) {
        Req* r = static_cast<Req*>(s.entry->owner);
        r->fail(s.begin, error);
        r->done(s.count);  // may delete r
      }
    } else if (fn_) {
      hand_out(batch, outs);
    } else {
      hand_out(batch, results);
    }
    sched_.batch_delivered(batch);  // the service estimate of deadlines
  }

  template <class V>
  static void hand_out(const Batch& batch, V& outs) noexcept {
    std::size_t i = 0;
    for (const Span& s : batch.spans) {
      Req* r = static_cast<Req*>(s.entry->owner);
      for (std::uint32_t k = 0; k < s.count; ++k) deliver(*r, s.begin + k, std::move(outs[i + k]));
      i += s.count;
      r->done(s.count);  // may delete r
    }
  }

  static void deliver(Req& r, std::uint32_t i, Out&& v) noexcept {
    try {
      r.set_value(i, std::move(v));
    } catch (...) {  // Out's move constructor threw
      r.fail(i, std::current_exception());
    }
  }
  static void deliver(Req& r, std::uint32_t i, Result<Out>&& v) noexcept {
    if (v.ok()) {
      deliver(r, i, std::move(v).value());
    } else {
      r.fail(i, v.error());
    }
  }

  // After sched_.shutdown(): fails what never ran. Items of a partly
  // dispatched call that are running now finish normally; the rest fail.
  void fail_drained() {
    std::vector<Entry*> left = sched_.drain();
    if (left.empty()) return;
    const std::string what = "batcher '" + name_ + "' was shut down before these items were processed";
    for (Entry* e : left) {
      // One exception object per call: submitters on different threads never
      // share one (see docs/cpp.md on shared batch errors).
      Req* r = static_cast<Req*>(e->owner);
      r->fail(e->first_left, std::make_exception_ptr(ShutdownError(what)));
      r->done(e->count - e->taken);  // may delete r
    }
  }

  void join_workers() {
    std::vector<std::thread> mine;
    {
      std::lock_guard<std::mutex> lock(workers_mu_);
      for (std::thread& t : workers_)
        if (t.joinable() && t.get_id() != std::this_thread::get_id()) mine.push_back(std::move(t));
    }
    for (std::thread& t : mine) t.join();  // outside the lock: a worker may call shutdown() meanwhile
  }

  Scheduler<SteadyClock> sched_;

  const std::string name_;
  const bool lengths_matter_;  // a length budget (fixed at construction: Scheduler::configure)
  std::function<std::vector<Out>(std::vector<In>&)> fn_;
  std::function<std::vector<Result<Out>>(std::vector<In>&)> fn_results_;

  // Submitters waiting for room in a bounded queue.
  std::mutex room_mu_;  // guards room_epoch_, room_waiters_, room_closed_
  std::condition_variable room_cv_;
  std::uint64_t room_epoch_ = 0;  // bumped after every dispatch
  int room_waiters_ = 0;
  bool room_closed_ = false;
  std::atomic<std::uint64_t> retried_items_{0};

  std::mutex workers_mu_;  // guards workers_ (join, the watcher's start)
  std::vector<std::thread> workers_;  // the workers, then the watcher if started
  std::atomic<bool> watching_{false};
};

namespace detail {

// The per-call record: one allocation holding the core's Entry, the inputs and
// where the outcome goes. The scheduler holds it from a successful push until
// every item is dispatched or drained; the thread completing its last item
// (a worker, or the one calling shutdown) delivers the outcome and deletes it.
template <class In, class Out>
class Request {
 public:
  Entry entry;
  In* items = nullptr;  // entry.count inputs, owned by the derived record
  std::atomic<std::uint32_t> pending{0};  // items not yet completed

  // Item i's output. May throw (Out's move constructor); the caller then fails it.
  virtual void set_value(std::uint32_t i, Out&& v) = 0;
  // Items from `first` on (of one span) failed with `error`.
  virtual void fail(std::uint32_t first, const std::exception_ptr& error) noexcept = 0;

  // `n` more items are completed; the last one delivers and deletes the record.
  // acq_rel: the completing thread sees every other thread's slot writes.
  void done(std::uint32_t n) noexcept {
    if (pending.fetch_sub(n, std::memory_order_acq_rel) == n) complete();
  }

  virtual ~Request() = default;

 protected:
  virtual void complete() noexcept = 0;  // delivers the outcome, then `delete this`
};

template <class T>
struct PromiseSink {
  std::promise<T> promise;
  void operator()(Result<T>&& r) noexcept {
    try {
      if (r.ok()) {
        promise.set_value(std::move(r).value());
      } else {
        promise.set_exception(r.error());
      }
    } catch (...) {  // T's move constructor threw
      promise.set_exception(std::current_exception());
    }
  }
};

template <class T, class F>
struct CallbackSink {
  F on_done;
  void operator()(Result<T>&& r) noexcept { on_done(std::move(r)); }
};

// submit(In): one input, stored inline.
template <class In, class Out, class Sink>
class SingleRequest final : public Request<In, Out> {
 public:
  SingleRequest(In&& input, Sink&& sink) : input_(std::move(input)), sink_(std::move(sink)) {
    this->items = &input_;
  }
  std::size_t size() const noexcept { return 1; }
  In& input() noexcept { return input_; }
  Sink& sink() noexcept { return sink_; }
  void set_lengths(const SubmitOptions& meta) noexcept {
    length_ = meta.lengths.empty() ? meta.length : meta.lengths[0];
    this->entry.lengths = &length_;
  }

  void set_value(std::uint32_t, Out&& v) override { value_.emplace(std::move(v)); }
  void fail(std::uint32_t, const std::exception_ptr& error) noexcept override { error_ = error; }

 private:
  void complete() noexcept override {
    if (error_) {
      sink_(Result<Out>(Failure{error_}));
    } else {
      sink_(Result<Out>(std::move(*value_)));
    }
    delete this;
  }

  In input_;
  std::uint32_t length_ = 1;
  std::optional<Out> value_;
  std::exception_ptr error_;
  Sink sink_;
};

// submit(std::vector<In>): the caller's vector is moved in (no copy); one
// output slot per input. Spans of one call may complete on different workers
// at once: each writes its own slots, and the first error is kept under a mutex.
template <class In, class Out, class Sink>
class ManyRequest final : public Request<In, Out> {
  // Slots are Out when it can be default-constructed (and handed over as the
  // result vector itself), std::optional<Out> otherwise.
  static constexpr bool kDirect = std::is_default_constructible_v<Out>;
  using Slot = std::conditional_t<kDirect, Out, std::optional<Out>>;

 public:
  ManyRequest(std::vector<In>&& inputs, Sink&& sink)
      : inputs_(std::move(inputs)), slots_(inputs_.size()), sink_(std::move(sink)) {
    this->items = inputs_.data();
  }
  std::size_t size() const noexcept { return inputs_.size(); }
  std::vector<In>& inputs() noexcept { return inputs_; }
  Sink& sink() noexcept { return sink_; }
  void set_lengths(const SubmitOptions& meta) {
    if (meta.lengths.empty()) {
      lengths_.assign(inputs_.size(), meta.length);
    } else {
      lengths_ = meta.lengths;
    }
    this->entry.lengths = lengths_.data();
  }

  void set_value(std::uint32_t i, Out&& v) override { slots_[i] = std::move(v); }
  void fail(std::uint32_t first, const std::exception_ptr& error) noexcept override {
    std::lock_guard<std::mutex> lock(error_mu_);
    if (first < error_index_) {
      error_index_ = first;
      error_ = error;
    }
  }

 private:
  void complete() noexcept override {
    if (error_) {
      sink_(Result<std::vector<Out>>(Failure{error_}));
    } else if constexpr (kDirect) {
      sink_(Result<std::vector<Out>>(std::move(slots_)));
    } else {
      try {
        std::vector<Out> out;
        out.reserve(slots_.size());
        for (Slot& s : slots_) out.push_back(std::move(*s));
        sink_(Result<std::vector<Out>>(std::move(out)));
      } catch (...) {
        sink_(Result<std::vector<Out>>(Failure{std::current_exception()}));
      }
    }
    delete this;
  }

  std::vector<In> inputs_;
  std::vector<std::uint32_t> lengths_;
  std::vector<Slot> slots_;
  std::mutex error_mu_;  // guards error_, error_index_
  std::exception_ptr error_;
  std::uint32_t error_index_ = std::numeric_limits<std::uint32_t>::max();
  Sink sink_;
};

}  // namespace detail
}  // namespace batched

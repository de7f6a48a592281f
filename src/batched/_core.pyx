# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
# distutils: language = c++
"""The bridge between Python callers and the C++ batching core.

One call of n items is one ``_Call``: n input slots, n result slots and one
completion, pushed to the scheduler as one entry. Worker threads (Python threads
running ``Engine.worker_main``) wait for batches without the GIL, take the GIL
to run the batch function, hand out results, and release it again.

An engine with a ``collator`` (the inference front ends) queues *rows calls*:
one request of n rows (say, a dict of arrays with n rows each) is one entry of
n items, with no Python object per row. The collator turns a batch's spans
``(request, first row, row count)`` into the function's input (padding them)
and its output back into one piece per span; the caller joins its pieces.
"""

from cpython.list cimport PyList_New, PyList_SET_ITEM
from cpython.ref cimport Py_DECREF, Py_INCREF
from cpython.exc cimport PyErr_CheckSignals
from cpython.pythread cimport PyThread_get_thread_ident

import atexit
import contextvars
import os
import threading
import weakref
from collections.abc import Mapping, Sized

from batched._log import logger
from batched.errors import QueueFullError, ShutdownError

cdef extern from "Python.h":
    bint PyExceptionInstance_Check(object o)

cdef extern from *:
    """
    // The engine whose worker this thread is (NULL on any other thread).
    static thread_local void* batched_worker_engine = nullptr;
    """
    void* batched_worker_engine

cdef unsigned long _main_thread_ident = threading.main_thread().ident
# Engines alive, shut down at interpreter exit so no worker outlives Python.
_live_engines = weakref.WeakSet()
# How often a caller on the main thread looks for Ctrl-C while it waits.
cdef int _SIGNAL_CHECK_MS = 100
# The batch (a _BatchBox) an async batch function is running in, for the
# tasks of that batch: a call of its own processor from there is refused.
_running_batch = contextvars.ContextVar("batched_running_batch", default=None)


cdef class _Call:
    """One call: the request record shared by the caller and the workers.

    Ownership: from a successful push until its last item is handed out (or it
    is drained at shutdown), the scheduler holds one reference to this object,
    taken in Engine.push and released in Engine.finish. The C++ core points at
    ``entry`` during that time only.
    """

    # `completion` is made only for blocking callers (Engine.call); asyncio
    # callers complete through their future.

    def __dealloc__(self):
        if self.completion != NULL:
            self.completion.release()

    cdef void fail(self, object error, Py_ssize_t index):
        # Keep the failure of the earliest item: that is what the caller sees.
        if self.error is None or index < self.error_index:
            self.error = error
            self.error_index = index

    cdef object outcome(self):
        if self.error is not None:
            raise _own_copy(self.error)
        return self.results[0] if self.single else self.results

    def cancel(self):
        """The awaiting caller was cancelled: its undispatched items leave the
        queue (SPEC 2.7); results of dispatched ones will be dropped. Call on
        the caller's loop, once the future is cancelled."""
        if self.engine is not None:
            (<Engine>self.engine).cancel_call(self)


def _deliver(list calls):
    """Runs on a caller's event loop: completes the futures of finished calls."""
    cdef _Call c
    for c in calls:
        fut = c.future
        if fut.cancelled():
            continue  # the caller went away; its results are dropped
        try:
            if c.error is not None:
                fut.set_exception(_for_asyncio(_own_copy(c.error)))
            else:
                fut.set_result(c.results[0] if c.single else c.results)
        except BaseException as e:  # one odd error object must not strand the others
            if not fut.done():
                fut.set_exception(RuntimeError(f"could not deliver the result: {e!r}"))


_copy_module = None


cdef object _own_copy(object error):
    """A copy of an error for one caller. Every caller of a failed batch gets
    its own exception object, so one caller's traceback (and the frames and
    locals in it) never grows into another's. The traceback from the batch
    function is kept. Falls back to the shared object if it cannot be copied."""
    global _copy_module
    if _copy_module is None:
        import copy as _copy_module
    try:
        mine = _copy_module.copy(error)
    except BaseException:
        return error
    if type(mine) is not type(error):
        return error
    mine.__cause__ = error.__cause__
    mine.__context__ = error.__context__
    mine.__suppress_context__ = error.__suppress_context__
    return mine.with_traceback(error.__traceback__)


cdef object _for_asyncio(object error):
    """asyncio treats KeyboardInterrupt/SystemExit in a task as fatal to the loop:
    one raised by the batch function on a worker is wrapped instead."""
    # Futures refuse StopIteration; tasks treat KeyboardInterrupt/SystemExit as fatal.
    if isinstance(error, Exception) and not isinstance(error, (StopIteration, StopAsyncIteration)):
        return error
    wrapped = RuntimeError(f"the batch function raised {type(error).__name__}: {error}")
    wrapped.__cause__ = error
    return wrapped


cdef class Engine:
    """A scheduler, its worker threads and the batch function they call.

    Worker threads hold the engine, never the processor object that owns it, so
    a processor can be garbage collected while its workers sleep; its finalizer
    then shuts the engine down.
    """

    def __cinit__(self, fn, *, Py_ssize_t batch_size, double timeout_ms,
                  Py_ssize_t small_batch_threshold, object max_queue_size,
                  Py_ssize_t num_workers, double aging_ms, str name,
                  object max_batch_length=None, bint small_first=True,
                  bint priority_by_length=False, bint event_loop_driver=False,
                  object collator=None):
        cdef CBatchOptions o
        o.max_batch_size = batch_size
        o.timeout_us = <int64_t>(timeout_ms * 1000.0 + 0.5)
        o.small_batch_threshold = small_batch_threshold
        o.max_age_us = <int64_t>(aging_ms * 1000.0 + 0.5)
        o.max_queue_size = 0 if max_queue_size is None else max_queue_size
        o.max_batch_length = 0 if max_batch_length is None else max_batch_length
        o.num_workers = num_workers
        # A rows call's pieces share one padded length only if it is not split.
        o.keep_calls_whole = collator is not None
        self.options = o
        self.sched = new CScheduler(o)
        self.measure_lengths = max_batch_length is not None or priority_by_length
        self.priority_by_length = priority_by_length
        self.small_first = small_first
        self.event_loop_driver = event_loop_driver
        self.timers = {}
        self.running = set()
        self.batch_size = batch_size
        # Any push may make a batch ready: greedy timeout, or a length budget.
        self.eager = timeout_ms == 0 or max_batch_length is not None
        self.fn = fn
        self.collator = collator
        self.name = name
        self.small_batch_threshold = small_batch_threshold
        self.num_workers = num_workers
        self.max_queue_size = max_queue_size
        self.threads = []
        self.start_lock = threading.Lock()
        _live_engines.add(self)

    def reset_after_fork(self):
        """In the child of a fork: the workers did not come along, and the
        scheduler's state (its lock perhaps held, calls of the parent's
        threads queued) belongs to the parent. Start afresh: a new scheduler,
        workers started on the next call. The old scheduler and the calls in
        it are left alone (leaked): no thread of this process waits on them."""
        self.sched = new CScheduler(self.options)
        if self.closed:
            self.sched.shutdown()
        self.threads = []
        self.started = False
        self.start_lock = threading.Lock()
        self.timers = {}
        self.running = set()
        self.in_flight = 0
        self.finished_box = None

    def __dealloc__(self):
        if self.sched != NULL:
            # Workers hold the engine while they run, and queued calls hold
            # their callers: nothing can be queued or running here.
            self.sched.shutdown()
            del self.sched
            self.sched = NULL

    # ---- callers ----

    cdef _Call new_call(self, object items):
        cdef _Call c = _Call.__new__(_Call)
        if isinstance(items, list):
            c.items = tuple(items)
            c.single = False
        else:
            c.items = (items,)
            c.single = True
        cdef Py_ssize_t n = len(c.items)
        if n > 0xFFFFFFFF:
            raise ValueError(f"a call may hold at most {0xFFFFFFFF} items, got {n}")
        c.results = [None] * n
        c.remaining = n
        c.entry.owner = <void*>c
        c.entry.count = <uint32_t>n
        cdef Py_ssize_t i
        cdef uint32_t longest = 0
        if self.measure_lengths:
            c.lengths.resize(n)
            for i in range(n):
                c.lengths[i] = _item_length(c.items[i])
                if c.lengths[i] > longest:
                    longest = c.lengths[i]
            c.entry.lengths = c.lengths.data()
        self.rank(c, longest)
        return c

    cdef _Call new_rows_call(self, object request):
        """A call of ``request.n_rows`` rows, whose lengths (for max_batch_length
        and PriorityStrategy.LENGTH) are the uint32 buffer ``request.lengths``."""
        cdef _Call c = _Call.__new__(_Call)
        cdef Py_ssize_t n = request.n_rows
        if n > 0xFFFFFFFF:
            raise ValueError(f"a call may hold at most {0xFFFFFFFF} rows, got {n}")
        c.rows = request
        c.single = False
        c.results = []
        c.remaining = n
        c.entry.owner = <void*>c
        c.entry.count = <uint32_t>n
        cdef const uint32_t[::1] lengths
        cdef uint32_t longest = 0
        cdef Py_ssize_t i
        if self.measure_lengths:
            lengths = request.lengths
            if lengths.shape[0] != n:
                raise ValueError(f"request has {n} rows but {lengths.shape[0]} lengths")
            c.lengths.assign(&lengths[0], &lengths[0] + n)
            for i in range(n):
                if lengths[i] > longest:
                    longest = lengths[i]
            c.entry.lengths = c.lengths.data()
        self.rank(c, longest)
        return c

    cdef int rank(self, _Call c, uint32_t longest) except -1:
        """The call's priority level: small calls first, then (PriorityStrategy.LENGTH)
        shorter bulk calls first; a call is ranked by its longest item, and its
        items keep their order."""
        c.entry.priority = 1 if self.small_first and c.entry.count > self.small_batch_threshold else 0
        if self.priority_by_length and c.entry.priority:
            c.entry.priority = 1 + <int32_t>min(longest, 0x7FFFFFF0)
        return 0

    cdef int push(self, _Call c) except -1:
        """Queues ``c``. The GIL stays held: the push is a few atomic operations,
        and releasing the GIL here would cost a GIL hand-over per call."""
        if not self.started:
            self.start_workers()
        Py_INCREF(c)  # the scheduler's reference; released in finish()
        return self.check_push(self.sched.try_push(&c.entry), c)

    cdef int check_push(self, CPushStatus status, _Call c) except -1:
        if status == kPushOk:
            return 0
        Py_DECREF(c)  # the push did not take it
        logger().debug("%r refused a call of %d items (%s)", self.name, c.entry.count,
                       "queue full" if status == kPushQueueFull else "shut down")
        if status == kPushQueueFull and c.entry.count > self.max_queue_size:
            raise QueueFullError(
                f"a call of {c.entry.count} items can never fit in batch processor "
                f"{self.name!r}: max_queue_size={self.max_queue_size}")
        if status == kPushQueueFull:
            raise QueueFullError(
                f"batch processor {self.name!r} is full: {self.sched.size_approx()} items are "
                f"queued, max_queue_size={self.max_queue_size}, and this call has "
                f"{c.entry.count}; retry later or raise max_queue_size")
        raise ShutdownError(f"batch processor {self.name!r} has been shut down")

    def call(self, items):
        """Queues ``items`` (one item, or a list) and blocks until their results are in."""
        if isinstance(items, list) and len(<list>items) == 0:
            return []
        return self.wait_for(self.new_call(items))

    def call_rows(self, request):
        """Queues a rows call (engines with a collator) and blocks until it is
        done; returns its pieces as ``[(first row, piece), ...]``, in no set order."""
        return self.wait_for(self.new_rows_call(request))

    cdef object wait_for(self, _Call c):
        cdef CPushStatus status
        cdef bint done = False
        cdef bint on_main = PyThread_get_thread_ident() == _main_thread_ident
        self.refuse_reentry()
        c.completion = new CCompletion()
        if not self.started:
            self.start_workers()
        Py_INCREF(c)  # the scheduler's reference; released in finish()
        # Push and wait in one GIL release: one hand-over of the GIL per call.
        with nogil:
            status = self.sched.try_push(&c.entry)
            if status == kPushOk:
                if on_main:
                    done = c.completion.wait_for_ms(_SIGNAL_CHECK_MS)
                else:
                    c.completion.wait()
                    done = True
        self.check_push(status, c)
        while not done:
            # The main thread waits in slices so Ctrl-C works; its items stay
            # queued and their results are dropped.
            PyErr_CheckSignals()
            with nogil:
                done = c.completion.wait_for_ms(_SIGNAL_CHECK_MS)
        return c.outcome()

    def submit_async(self, items, loop):
        """Queues ``items`` (not an empty list) and returns the call record;
        its ``future`` (of ``loop``) completes with their results. A caller
        that is cancelled while awaiting it must call ``record.cancel()``:
        that is cheaper than a done-callback on every future."""
        return self.submit(self.new_call(items), loop)

    def submit_rows_async(self, request, loop):
        """``submit_async`` for a rows call; the future's result is as ``call_rows``'s."""
        return self.submit(self.new_rows_call(request), loop)

    cdef _Call submit(self, _Call c, object loop):
        self.refuse_reentry()
        c.loop = loop
        c.future = loop.create_future()
        c.engine = self
        self.push(c)
        if self.event_loop_driver and self.in_flight < self.num_workers:
            # Drive only if this push can dispatch a batch or needs a timer;
            # otherwise the armed timer (or a finishing batch) will.
            if (loop not in self.timers or self.eager
                    or self.sched.size_approx() >= <size_t>self.batch_size):
                self.drive(loop)
        return c

    cdef int refuse_reentry(self) except -1:
        """A call from inside one of this engine's own batches (its worker
        thread, or the tasks of an async batch) would wait for the batch that
        makes it: fail at once rather than hang."""
        cdef _BatchBox box
        if batched_worker_engine != <void*>self:
            if not self.event_loop_driver:
                return 0
            box = _running_batch.get()
            if box is None or box.engine is not self or box.ended:
                return 0
        raise RuntimeError(
            f"batch function {self.name!r} called its own processor from inside a batch: "
            f"that call would wait for the batch that makes it; call the function directly")

    # ---- the event-loop driver (async batch functions) ----
    #
    # The same C++ policy as the worker threads; instead of sleeping in
    # wait_pop, the driver asks it for a ready batch (try_pop) and for the next
    # deadline, and arms one loop.call_at timer per loop for that deadline. A
    # batch runs as a task on the loop whose push, timer or finished batch
    # dispatched it; at most num_workers batches run at once. Idle: no timer.

    cdef int drive(self, object loop) except -1:
        """Dispatches what is ready, then arms this loop's timer. On ``loop``'s thread."""
        cdef _BatchBox box
        while self.in_flight < self.num_workers:
            box = _BatchBox.__new__(_BatchBox)
            if self.finished_box is not None:
                # the batch that just returned: its stamp drives the drain rule
                box.batch.finished_ns = (<_BatchBox>self.finished_box).batch.finished_ns
                self.finished_box = None
            if not self.sched.try_pop(box.batch):
                break
            self.in_flight += 1
            box.t0 = monotonic_ns()
            task = loop.create_task(_run_on_loop(self, box))
            # The loop keeps only weak references to tasks; and a task cancelled
            # before its first step never runs its body: the done-callback then
            # ends the batch, so no caller and no batch slot is stranded.
            self.running.add(task)
            box.engine = self
            box.loop = loop
            task.add_done_callback(box.on_task_done)
        self.arm_timer(loop)
        return 0

    cdef int arm_timer(self, object loop) except -1:
        cdef int64_t deadline = self.sched.next_deadline()
        armed = self.timers.get(loop)
        if deadline == kNeverNs or self.in_flight >= self.num_workers:
            # nothing waits, or a finishing batch will drive: no timer
            if armed is not None:
                armed[0].cancel()
                del self.timers[loop]
            return 0
        if armed is not None:
            if armed[1] <= deadline:
                return 0  # an earlier or equal timer is armed already
            armed[0].cancel()
        cdef double delay = max(0.0, (deadline - monotonic_ns()) / 1e9)
        handle = loop.call_at(loop.time() + delay, self.on_timer, loop)
        self.timers[loop] = (handle, deadline)
        return 0

    def on_timer(self, loop):
        self.timers.pop(loop, None)
        if not self.closed:
            self.drive(loop)

    def armed_timers(self):
        """How many event-loop timers are armed (0 when idle)."""
        return len(self.timers)

    def batch_inputs_of(self, _BatchBox box):
        return self.batch_inputs(box.batch)

    def end_async_batch(self, _BatchBox box, object out, object error, object loop):
        """Hands out the results of a batch run on ``loop``, then dispatches
        more. Called once per batch (by the task, or by its done-callback if
        the task never ran)."""
        if box.ended:
            return
        box.ended = True
        cdef int64_t t0 = box.t0
        cdef int64_t t1 = monotonic_ns()
        cdef CPendingNotifications none_to_notify  # async callers only: nothing to notify
        if error is None:
            try:
                out = self.read_output(out, box.batch)
            except BaseException as e:
                error = e
        self.finish_batch(box.batch, t1 - t0, error)
        try:
            self.hand_out(box.batch, out, error, none_to_notify)
        except BaseException as e:
            self.fail_rest(box.batch, e, none_to_notify)
        self.in_flight -= 1
        self.finished_box = box
        if not self.closed and not loop.is_closed():
            # Drive from a fresh callback rather than from inside this task:
            # callers cancelled meanwhile (a loop shutting down cancels them
            # all) take their items out first, and no task is started from a
            # task that is being cancelled.
            loop.call_soon(self.on_timer, loop)

    cdef int cancel_call(self, _Call c) except -1:
        """Takes the undispatched items of ``c`` out of the queue; its results,
        if any are computed, are dropped. Runs with the GIL, so it cannot
        interleave with a worker handing out results."""
        cdef uint32_t removed
        with nogil:
            removed = self.sched.cancel(&c.entry)
        if removed:
            by_loop = self.complete(c, removed, None, NULL)
            if by_loop is not None:
                _post(by_loop)  # delivery skips the cancelled future; this releases the record
            if self.event_loop_driver and not self.closed:
                self.arm_timer(c.loop)  # nothing left to wait for: no timer (and no loop kept alive)
        return 0

    # ---- workers ----

    cdef start_workers(self):
        with self.start_lock:
            if self.started or self.closed:
                return
            if self.event_loop_driver:
                self.started = True  # batches run on the callers' event loops
                return
            for i in range(self.num_workers):
                t = threading.Thread(target=self.worker_main, daemon=True,
                                     name=f"batched:{self.name}:{i}")
                t.start()
                self.threads.append(t)
            self.started = True
            logger().debug("%r started %d worker thread(s)", self.name, self.num_workers)

    def worker_main(self):
        global batched_worker_engine
        cdef CBatch batch
        cdef CPendingNotifications to_notify
        cdef bint ok
        batched_worker_engine = <void*>self
        while True:
            with nogil:
                # Wake the callers of the last batch only now, without the GIL,
                # so they do not queue for a GIL this thread still holds.
                to_notify.notify_all()
                ok = self.sched.wait_pop(batch)
            if not ok:
                return
            try:
                self.run_batch(batch, to_notify)
            except BaseException as e:  # a bug here must not strand callers
                self.fail_rest(batch, e, to_notify)

    cdef int run_batch(self, CBatch& batch, CPendingNotifications& to_notify) except -1:
        # Everything that can fail (the batch function, reading its output,
        # allocation) ends in `outs` or in `error`, which goes to the callers.
        error = None
        outs = None
        cdef int64_t t0 = monotonic_ns()
        cdef int64_t t1
        try:
            inputs = self.batch_inputs(batch)
            t0 = monotonic_ns()
            try:
                out = self.fn(inputs)
            finally:
                t1 = monotonic_ns()
            outs = self.read_output(out, batch)
        except BaseException as e:  # the worker survives whatever happens here
            error = e
            t1 = monotonic_ns()
        self.finish_batch(batch, t1 - t0, error)

        self.hand_out(batch, outs, error, to_notify)
        return 0

    cdef int finish_batch(self, CBatch& batch, int64_t run_ns, object error) except -1:
        """Counts a batch that has run (both drivers); logs its failure."""
        self.sched.finish_batch(batch, run_ns, error is not None)
        if error is not None:
            logger().warning("batch function of %r failed on a batch of %d items: %s: %s",
                             self.name, batch.size, type(error).__name__, error, exc_info=error)
        return 0

    cdef int hand_out(self, CBatch& batch, object outs, object error,
                      CPendingNotifications& to_notify) except -1:
        """Puts each result (or ``error``) in its call's slots; finishes calls.
        A span handed out gets count 0 (no span of a batch is empty), so
        fail_rest knows which are left: the batch itself keeps the progress."""
        cdef Py_ssize_t i = 0, k, count
        cdef size_t s
        cdef CSpan* span
        cdef _Call c
        cdef dict by_loop = None
        for s in range(batch.spans.size()):
            span = &batch.spans[s]
            c = <_Call>span.entry.owner
            if error is not None:
                c.fail(error, span.begin)
            elif self.collator is not None:
                c.results.append((span.begin, (<list>outs)[s]))
            else:
                for k in range(span.count):
                    r = (<list>outs)[i + k] if type(outs) is list else (<tuple>outs)[i + k]
                    c.results[span.begin + k] = r
                    if PyExceptionInstance_Check(r):
                        c.fail(r, span.begin + k)
            i += span.count
            count = span.count
            span.count = 0
            by_loop = self.complete(c, count, by_loop, &to_notify)
        if by_loop is not None:
            _post(by_loop)
        return 0

    cdef object batch_inputs(self, CBatch& batch):
        """The batch's items, in dispatch order, as the list given to the
        function; with a collator, what it makes of the batch's spans."""
        if self.collator is not None:
            return self.collator.collate(self.span_list(batch))
        cdef Py_ssize_t i = 0, j
        cdef size_t s
        cdef CSpan* span
        cdef _Call c
        inputs = PyList_New(batch.size)
        for s in range(batch.spans.size()):
            span = &batch.spans[s]
            c = <_Call>span.entry.owner
            for j in range(span.begin, span.begin + span.count):
                item = c.items[j]
                Py_INCREF(item)  # PyList_SET_ITEM steals it
                PyList_SET_ITEM(inputs, i, item)
                i += 1
        return inputs

    cdef int fail_rest(self, CBatch& batch, object error, CPendingNotifications& to_notify) except -1:
        """Last resort after an internal error: the calls of the spans not yet
        handed out get ``error``, so nobody waits forever."""
        cdef size_t s
        cdef CSpan* span
        cdef _Call c
        cdef dict by_loop = None
        cdef Py_ssize_t count
        for s in range(batch.spans.size()):
            span = &batch.spans[s]
            if span.count == 0:
                continue  # handed out already
            c = <_Call>span.entry.owner
            count = span.count
            span.count = 0
            c.fail(error, span.begin)
            by_loop = self.complete(c, count, by_loop, &to_notify)
        if by_loop is not None:
            _post(by_loop)
        return 0

    cdef list span_list(self, CBatch& batch):
        """The batch's spans as ``[(request, first row, row count), ...]`` (rows calls)."""
        cdef size_t s
        cdef CSpan* span
        spans = []
        for s in range(batch.spans.size()):
            span = &batch.spans[s]
            spans.append(((<_Call>span.entry.owner).rows, span.begin, span.count))
        return spans

    cdef object read_output(self, object out, CBatch& batch):
        """The batch function's output as one result per item (item calls), or
        one piece per span (rows calls); raises a clear error if it is unusable."""
        if self.collator is not None:
            pieces = self.collator.split(out, self.span_list(batch))
            if type(pieces) is not list or len(<list>pieces) != batch.spans.size():
                raise RuntimeError(f"collator returned {len(pieces)} pieces for {batch.spans.size()} spans")
            return pieces
        return self.check_output(out, batch.size)

    cdef object check_output(self, object out, Py_ssize_t n):
        """The batch output as a list or tuple of n results; raises a clear
        TypeError/ValueError for anything else."""
        if type(out) is not list and type(out) is not tuple:
            kind = type(out)
            if issubclass(kind, (str, bytes, dict)) or not hasattr(kind, "__len__"):
                raise TypeError(
                    f"batch function {self.name!r} must return a sequence of {n} results "
                    f"(one per item), got {kind.__name__}")
            try:
                out = list(out)  # an ndarray, a torch tensor, a custom sequence...
            except BaseException as e:
                raise TypeError(
                    f"the output of batch function {self.name!r} ({kind.__name__}) "
                    f"could not be read as a sequence: {e!r}") from e
        if len(out) != n:
            raise ValueError(
                f"batch function {self.name!r} returned {len(out)} results "
                f"for a batch of {n} items; it must return one result per item")
        return out

    cdef dict complete(self, _Call c, Py_ssize_t count, dict by_loop,
                       CPendingNotifications* to_notify):
        """``count`` more items of ``c`` are done; finishes ``c`` after its
        last. Returns ``by_loop``, created when an asyncio call needs it."""
        c.remaining -= count
        if c.remaining == 0:
            if c.future is not None and by_loop is None:
                by_loop = {}
            self.finish(c, by_loop, to_notify)
        return by_loop

    cdef int finish(self, _Call c, dict by_loop, CPendingNotifications* to_notify) except -1:
        """The call's last item is done: wake its caller (now, or via
        ``to_notify`` once the worker has released the GIL)."""
        if c.future is None:
            if to_notify != NULL:
                to_notify.add(c.completion)
            else:
                c.completion.notify()
        else:
            calls = by_loop.get(c.loop)
            if calls is None:
                by_loop[c.loop] = [c]
            else:
                (<list>calls).append(c)
        Py_DECREF(c)  # the scheduler's reference, taken in push()
        return 0

    # ---- lifecycle and stats ----

    def shutdown(self, bint wait=True, timeout=None):
        """Stops the workers; calls still queued fail with ShutdownError. Idempotent."""
        cdef vector[CEntry*] left
        cdef CEntry* e
        cdef _Call c
        cdef dict by_loop = None
        with self.start_lock:
            self.closed = True
        self.timers.clear()  # a timer that fires later finds the engine closed
        with nogil:
            self.sched.shutdown()
            left = self.sched.drain()
        if left.size():
            logger().info("%r shut down with %d call(s) still queued: they fail with ShutdownError",
                          self.name, left.size())
            error = ShutdownError(
                f"batch processor {self.name!r} was shut down before these items were processed")
            for e in left:
                c = <_Call>e.owner
                c.fail(error, e.taken)
                by_loop = self.complete(c, e.count - e.taken, by_loop, NULL)
            if by_loop is not None:
                _post(by_loop)
        if wait:
            me = threading.current_thread()
            for t in self.threads:
                if t is not me:  # shutdown from inside the batch function
                    t.join(timeout)

    def queue_size(self):
        return self.sched.size_approx()

    def clear_stats(self):
        self.sched.reset_stats()

    @staticmethod
    def empty_stats():
        """The stats of a processor that has done nothing yet."""
        return {
            "queue_size": 0, "total_processed": 0, "total_batches": 0, "failed_batches": 0,
            "failed_items": 0, "rejected_items": 0, "cancelled_items": 0, "oldest_wait_ms": 0.0,
            "total_run_s": 0.0, "queue_wait_ms": (0.0, 0.0, 0.0),
            "batch_latency_ms": (0.0, 0.0, 0.0), "batch_size_histogram": {},
            "batches_by_reason": {dispatch_reason_name(r).decode(): 0 for r in range(kDispatchReasonCount)},
        }

    def stats(self, latency_bounds_s=None):
        """A consistent snapshot of the scheduler's statistics, as a dict.

        With ``latency_bounds_s`` (ascending upper bounds in seconds), also
        "queue_wait" and "batch_latency" as (cumulative counts per bound,
        sum in seconds, count): the histograms for exporters. A duration
        counts under the first bound at or above its bucket's upper end, so a
        count may land one bound late (buckets are 1/8 of a power of two)."""
        cdef CBatchStats s = self.sched.stats()
        sizes = {}
        for n in range(s.batch_sizes.size()):
            if s.batch_sizes[n]:
                sizes[n] = s.batch_sizes[n]
        reasons = {}
        for r in range(kDispatchReasonCount):
            reasons[dispatch_reason_name(r).decode()] = s.batches_by_reason[r]
        out = {
            "queue_size": s.queued_items,
            "total_processed": s.total_processed,
            "total_batches": s.total_batches,
            "failed_batches": s.failed_batches,
            "failed_items": s.failed_items,
            "rejected_items": s.rejected_items,
            "cancelled_items": s.cancelled_items,
            "oldest_wait_ms": s.oldest_wait_ns / 1e6,
            "total_run_s": s.total_run_ns / 1e9,
            "queue_wait_ms": tuple(s.queue_wait.quantile(q) / 1e6 for q in (0.5, 0.95, 0.99)),
            "batch_latency_ms": tuple(s.batch_latency.quantile(q) / 1e6 for q in (0.5, 0.95, 0.99)),
            "batch_size_histogram": sizes,
            "batches_by_reason": reasons,
        }
        if latency_bounds_s is not None:
            out["queue_wait"] = _rebucket(s.queue_wait, latency_bounds_s)
            out["batch_latency"] = _rebucket(s.batch_latency, latency_bounds_s)
        return out


def histogram_bounds_s():
    """The upper bounds (seconds) of the core's latency histogram buckets:
    stats() at these bounds keeps everything the histograms know."""
    global _histogram_bounds_s
    if _histogram_bounds_s is None:
        _histogram_bounds_s = tuple(CLatencyHistogram.upper_bound(b) / 1e9 for b in range(kHistogramBuckets))
    return _histogram_bounds_s

_histogram_bounds_s = None


def counts_at_bounds(cumulative, bounds_s):
    """Cumulative counts at ``bounds_s`` (ascending, seconds), from the
    cumulative counts at each of histogram_bounds_s(): a duration counts under
    the first bound at or above the upper end of its core bucket."""
    fine = histogram_bounds_s()
    cdef Py_ssize_t i = 0, n = len(fine)
    seen = 0
    out = []
    for bound in bounds_s:
        while i < n and fine[i] <= bound:
            seen = cumulative[i]
            i += 1
        out.append(seen)
    return out


cdef tuple _rebucket(CLatencyHistogram& h, bounds_s):
    """(cumulative counts at each bound, sum in seconds, count) of ``h``."""
    cdef size_t b
    cdef uint64_t seen = 0
    cumulative = []
    for b in range(kHistogramBuckets):
        seen += h.count_at(b)
        cumulative.append(seen)
    return counts_at_bounds(cumulative, bounds_s), h.sum_ns() / 1e9, h.count()


cdef class _BatchBox:
    """A batch popped by the event-loop driver, owned by the task running it."""
    cdef CBatch batch
    cdef int64_t t0
    cdef bint ended
    cdef object engine
    cdef object loop  # the loop the batch runs on

    def on_task_done(self, task):
        engine = self.engine
        (<Engine>engine).running.discard(task)
        if not self.ended:  # cancelled before its first step
            error = RuntimeError("the batch was cancelled before it ran (its event loop is shutting down?)")
            engine.end_async_batch(self, None, error, self.loop)


async def _run_on_loop(Engine engine, _BatchBox box):
    """Runs one batch of an async batch function on its loop."""
    out = None
    error = None
    _running_batch.set(box)  # this task's context, and that of tasks it starts
    try:
        inputs = engine.batch_inputs_of(box)
        box.t0 = monotonic_ns()
        out = await engine.fn(inputs)
    except BaseException as e:  # delivered to the callers; the driver goes on
        error = e
    engine.end_async_batch(box, out, error, box.loop)
    if error is not None and not isinstance(error, (Exception, KeyboardInterrupt, SystemExit)):
        # CancelledError, GeneratorExit: the task itself was stopped. A
        # KeyboardInterrupt/SystemExit of the function went to its callers
        # (wrapped); raised from the task, it would stop the loop.
        raise error


cdef uint32_t _item_length(object item) except? 0xFFFFFFFF:
    """An item's length for max_batch_length and PriorityStrategy.LENGTH, as in
    0.1.5: len() of a sized item, of a mapping's first value; None is 0; else 1."""
    if item is None:
        return 0
    if isinstance(item, Mapping):
        if len(item) == 0:
            return 0
        return _item_length(next(iter(item.values())))
    if isinstance(item, Sized):
        return <uint32_t>min(len(item), 0xFFFFFFFE)
    return 1


_get_running_loop = None


cdef _post(dict by_loop):
    """Delivers the calls a batch finished: directly on the loop running in
    this thread (an async batch function's own loop), else with one
    call_soon_threadsafe per loop."""
    global _get_running_loop
    if _get_running_loop is None:
        from asyncio import _get_running_loop  # fast C accessor; only reached once asyncio is in use
    here = _get_running_loop()
    for loop, calls in by_loop.items():
        if loop is here:
            _deliver(calls)
            continue
        try:
            loop.call_soon_threadsafe(_deliver, calls)
        except RuntimeError:
            pass  # the loop is closed: nobody is left to receive these results


@atexit.register
def _shutdown_all_at_exit():
    for engine in list(_live_engines):
        engine.shutdown(wait=True, timeout=1.0)


def _reset_all_after_fork():
    global batched_worker_engine
    batched_worker_engine = NULL  # a worker that forked: the child's thread is no worker
    for engine in list(_live_engines):
        engine.reset_after_fork()


if hasattr(os, "register_at_fork"):
    # gunicorn --preload, multiprocessing with fork: processors made before the
    # fork work in the child, with workers of its own.
    os.register_at_fork(after_in_child=_reset_all_after_fork)

# The bridge's types, implemented in _core.pyx (and the bridge/*.pxi files it
# includes), declared here for the Cython modules that build on them: the
# rows collator of the inference front ends (_padding.pyx) subclasses Collator.

from libc.stdint cimport int64_t, uint32_t, uint64_t
from libcpp.vector cimport vector

from batched.includes.libbatched cimport (
    CBatch,
    CCompletion,
    CEntry,
    CExpired,
    CPendingNotifications,
    CPipeline,
    CPushStatus,
    CScheduler,
    CSpan,
)


cdef class Engine


cdef class _Call:
    cdef CEntry entry
    cdef CCompletion* completion  # blocking callers only
    cdef tuple items              # item calls of a list: the items
    cdef object item              # item calls of one item (single): the item, then its result
    cdef object rows              # rows calls: the collator's request
    cdef list results             # item calls of a list: a result per item; rows calls: (first row, piece) per span
    cdef object error
    cdef Py_ssize_t error_index
    cdef Py_ssize_t remaining
    cdef bint single              # item calls: one item, not a list
    cdef object loop              # asyncio callers: the loop the future belongs to
    cdef readonly object future
    cdef Engine engine
    cdef vector[uint32_t] lengths
    cdef object key               # the grouping key (group_by), or None

    cdef int init(self, Py_ssize_t n) except -1
    cdef void fail(self, object error, Py_ssize_t index)


cdef class Collator:
    cdef readonly str name
    cdef public bint measure_lengths   # the policy needs per-item lengths (budget, shortest first)
    cdef readonly bint keep_calls_whole

    cdef _Call new_call(self, object request)
    cdef object inputs(self, CBatch& batch)
    cdef object outputs(self, object out, CBatch& batch)
    cdef int store(self, _Call c, CSpan* span, object outs, size_t s, Py_ssize_t first) except -1
    cdef object outcome(self, _Call c)


cdef class ItemCollator(Collator):
    pass


cdef class Driver:
    cdef bint started
    cdef bint watching             # expiry is watched (a deadline was seen)
    cdef int start(self, Engine engine) except -1
    cdef int watch(self, Engine engine) except -1
    cdef int pushed(self, Engine engine, CPushStatus status) except -1
    cdef int cancelled(self, Engine engine) except -1
    cdef int refuse_reentry(self, Engine engine) except -1
    cdef int stop(self, Engine engine, bint wait, object timeout) except -1
    cdef int after_fork(self) except -1
    cdef int configured(self, Engine engine) except -1


cdef class ThreadDriver(Driver):
    cdef size_t num_workers
    cdef list threads             # the workers, then the deadline watcher if started
    cdef object start_lock
    cdef bint prefetch            # a second worker forms the next batch while one runs
    cdef CPipeline* pipeline      # prefetch: the two workers' hand-over (made at start)
    cdef object parked_inputs     # prefetch: the parked batch's collated inputs
    cdef object finished          # prefetch: (out, error, run_ns) of the batch handed over, or
                                  # (None, error, -1): the parked batch failed with error


cdef class LoopDriver(Driver):
    cdef readonly object loop
    cdef size_t num_workers
    cdef Py_ssize_t in_flight
    cdef object timer           # the armed loop.call_at handle, or None
    cdef int64_t timer_deadline
    cdef readonly set running   # the tasks of the batches running
    cdef int64_t finished_ns    # when the last batch returned: the drain rule's stamp

    cdef int drive(self, Engine engine) except -1
    cdef int arm_timer(self, Engine engine) except -1


cdef class Engine:
    cdef CScheduler* sched
    cdef readonly object options
    cdef readonly object fn
    cdef readonly str name
    cdef readonly Collator collator
    cdef readonly Driver driver
    cdef readonly bint closed
    cdef readonly bint deadlines  # calls may have deadlines (deadline_ms, or batched.deadline seen)
    cdef readonly object group_by  # the grouping key of an item or a call's features, or None
    cdef dict key_ids              # key -> [id for the core, calls holding it]
    cdef uint64_t next_key_id
    cdef tuple split_kinds         # split_on: (exception classes, qualified names)
    cdef object __weakref__

    cdef _Call keyed_call(self, object request, object key)
    cdef object split(self, object request)
    cdef void release_key(self, _Call c)
    cdef object wait_for_parts(self, list parts, Py_ssize_t n)
    cdef int wait_done(self, _Call c) except -1

    cdef int prepare(self, _Call c) except -1
    cdef int push(self, _Call c) except -1
    cdef int check_push(self, CPushStatus status, _Call c) except -1
    cdef object wait_for(self, _Call c)
    cdef int take_split_on(self, tuple split_on) except -1
    cdef bint too_big(self, object error, CBatch& batch)
    cdef tuple call_fn(self, CBatch& batch, int64_t* run_ns)
    cdef tuple collated(self, CBatch& batch)
    cdef tuple run_fn(self, CBatch& batch, object inputs, int64_t* run_ns)
    cdef int run_parts(self, CBatch& batch, int64_t run_ns, CPendingNotifications& to_notify) except -1
    cdef tuple checked(self, CBatch& batch, object out, object error)
    cdef int deliver(self, CBatch& batch, object out, object error, CPendingNotifications* to_notify) except -1
    cdef int run_batch(self, CBatch& batch, CPendingNotifications& to_notify) except -1
    cdef int end_batch(self, CBatch& batch, object out, object error, int64_t run_ns,
                       CPendingNotifications& to_notify) except -1
    cdef int hand_out(self, CBatch& batch, object outs, object error,
                      CPendingNotifications& to_notify) except -1
    cdef int fail_rest(self, CBatch& batch, object error, CPendingNotifications& to_notify) except -1
    cdef dict complete(self, _Call c, Py_ssize_t count, dict by_loop, CPendingNotifications* to_notify)
    cdef int finish(self, _Call c, dict by_loop, CPendingNotifications* to_notify) except -1
    cdef int cancel_call(self, _Call c) except -1
    cdef int fail_expired(self, vector[CExpired]& expired, CPendingNotifications* to_notify) except -1


cdef class _Part:
    cdef CBatch batch


cdef class _Splitter:
    cdef Engine engine
    cdef CBatch* top
    cdef list stack
    cdef _Part current
    cdef int64_t run_ns
    cdef size_t failed

    cdef int start(self, Engine engine, CBatch& batch, int64_t run_ns) except -1
    cdef int split(self, CBatch& whole) except -1
    cdef int part_done(self, _Part p, object out, object error, int64_t run_ns,
                       CPendingNotifications* to_notify) except -1
    cdef _Part next_part(self)
    cdef bint unfinished(self)
    cdef int fail_all(self, object error, CPendingNotifications* to_notify) except -1
    cdef int finish(self) except -1

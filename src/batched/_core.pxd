# Declarations of the C++ core (csrc/batched) and of the bridge's types.
# C++ types carry a C prefix; every extern block is nogil.

from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t
from libcpp cimport bool as cbool
from libcpp.vector cimport vector


cdef extern from "batched/options.h" namespace "batched" nogil:
    cdef cppclass CBatchOptions "batched::BatchOptions":
        size_t max_batch_size
        int64_t timeout_us
        size_t small_batch_threshold
        uint64_t max_batch_length
        int64_t max_age_us
        size_t max_queue_size
        size_t num_workers
        cbool keep_calls_whole


cdef extern from "batched/entry.h" namespace "batched" nogil:
    cdef cppclass CEntry "batched::Entry":
        void* owner
        uint32_t count
        int32_t priority
        const uint32_t* lengths
        int64_t enqueue_ns
        uint32_t taken

    cdef cppclass CSpan "batched::Span":
        CEntry* entry
        uint32_t begin
        uint32_t count

    cdef cppclass CBatch "batched::Batch":
        vector[CSpan] spans
        size_t size
        int64_t finished_ns

    const int64_t kNeverNs "batched::kNever"

    const size_t kDispatchReasonCount "batched::kDispatchReasonCount"


cdef extern from "batched/histogram.h" namespace "batched" nogil:
    cdef cppclass CLatencyHistogram "batched::LatencyHistogram":
        uint64_t count()
        double sum_ns()
        double quantile(double q)
        uint64_t count_at(size_t b)
        @staticmethod
        double upper_bound(size_t b)

    const size_t kHistogramBuckets "batched::LatencyHistogram::kBuckets"


cdef extern from "batched/stats.h" namespace "batched" nogil:
    cdef cppclass CBatchStats "batched::BatchStats":
        size_t queued_items
        uint64_t total_dispatched
        uint64_t total_processed
        uint64_t total_batches
        uint64_t failed_batches
        uint64_t failed_items
        uint64_t rejected_items
        uint64_t cancelled_items
        int64_t oldest_wait_ns
        int64_t total_run_ns
        uint64_t batches_by_reason[4]
        CLatencyHistogram queue_wait
        CLatencyHistogram batch_latency
        vector[uint64_t] batch_sizes


cdef extern from "_glue.h" nogil:
    cdef enum CPushStatus "batched::PushStatus":
        kPushOk "batched::PushStatus::kOk"
        kPushQueueFull "batched::PushStatus::kQueueFull"
        kPushClosed "batched::PushStatus::kClosed"

    cdef cppclass CScheduler "batched_glue::PyScheduler":
        CScheduler(const CBatchOptions& options) except +
        CPushStatus try_push(CEntry* entry)
        cbool wait_pop(CBatch& out) except +
        void finish_batch(CBatch& batch, int64_t run_ns, cbool failed) except +
        void shutdown() except +
        vector[CEntry*] drain() except +
        uint32_t cancel(CEntry* entry) except +
        cbool try_pop(CBatch& out) except +
        int64_t next_deadline() except +
        size_t size_approx()
        CBatchStats stats() except +
        void reset_stats() except +

    cdef cppclass CCompletion "batched_glue::Completion":
        CCompletion()
        void release()
        void notify()
        void wait()
        cbool wait_for_ms(int ms)

    cdef cppclass CPendingNotifications "batched_glue::PendingNotifications":
        void add(CCompletion* c) except +
        void notify_all()

    int64_t monotonic_ns "batched_glue::monotonic_ns" ()
    const char* dispatch_reason_name "batched_glue::dispatch_reason_name" (int reason)


cdef class _Call:
    cdef CEntry entry
    cdef CCompletion* completion
    cdef tuple items    # the items of an item call
    cdef object rows    # the request of a rows call (inference): see Engine.collator
    cdef list results   # item call: one result per item; rows call: (first row, piece) per batch
    cdef object error
    cdef Py_ssize_t error_index
    cdef Py_ssize_t remaining
    cdef bint single
    cdef object loop
    cdef readonly object future
    cdef object engine
    cdef vector[uint32_t] lengths

    cdef void fail(self, object error, Py_ssize_t index)
    cdef object outcome(self)


cdef class Engine:
    cdef CScheduler* sched
    cdef CBatchOptions options
    cdef readonly object fn
    cdef readonly object collator
    cdef readonly str name
    cdef Py_ssize_t small_batch_threshold
    cdef size_t num_workers
    cdef object max_queue_size
    cdef bint measure_lengths
    cdef bint priority_by_length
    cdef bint small_first
    cdef bint event_loop_driver
    cdef bint eager
    cdef Py_ssize_t batch_size
    cdef Py_ssize_t in_flight
    cdef dict timers
    cdef readonly set running
    cdef object finished_box
    cdef bint started
    cdef bint closed
    cdef list threads
    cdef object start_lock
    cdef object __weakref__

    cdef _Call new_call(self, object items)
    cdef _Call new_rows_call(self, object request)
    cdef int rank(self, _Call c, uint32_t longest) except -1
    cdef object wait_for(self, _Call c)
    cdef _Call submit(self, _Call c, object loop)
    cdef list span_list(self, CBatch& batch)
    cdef object read_output(self, object out, CBatch& batch)
    cdef int push(self, _Call call) except -1
    cdef int check_push(self, CPushStatus status, _Call call) except -1
    cdef start_workers(self)
    cdef int run_batch(self, CBatch& batch, CPendingNotifications& to_notify) except -1
    cdef int finish_batch(self, CBatch& batch, int64_t run_ns, object error) except -1
    cdef int hand_out(self, CBatch& batch, object outs, object error,
                      CPendingNotifications& to_notify) except -1
    cdef int drive(self, object loop) except -1
    cdef int arm_timer(self, object loop) except -1
    cdef object batch_inputs(self, CBatch& batch)
    cdef int fail_rest(self, CBatch& batch, object error, CPendingNotifications& to_notify) except -1
    cdef object check_output(self, object out, Py_ssize_t n)
    cdef dict complete(self, _Call call, Py_ssize_t count, dict by_loop,
                       CPendingNotifications* to_notify)
    cdef int finish(self, _Call call, dict by_loop, CPendingNotifications* to_notify) except -1
    cdef int cancel_call(self, _Call call) except -1
    cdef int refuse_reentry(self) except -1

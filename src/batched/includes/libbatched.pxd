# The C++ core (csrc/batched) and the bridge's glue (_glue.h), declared once
# for every Cython module of the package. C++ types carry a C prefix; every
# extern block is nogil.

from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t
from libcpp cimport bool as cbool
from libcpp.optional cimport optional
from libcpp.vector cimport vector


cdef extern from "batched/options.h" namespace "batched" nogil:
    cdef enum class CPriorityRule "batched::PriorityRule":
        kArrival "batched::PriorityRule::kArrival"
        kSmallFirst "batched::PriorityRule::kSmallFirst"
        kSmallFirstThenShortest "batched::PriorityRule::kSmallFirstThenShortest"

    cdef cppclass CBatchOptions "batched::BatchOptions":
        size_t max_batch_size
        int64_t timeout_us
        size_t small_batch_threshold
        CPriorityRule priority_rule
        uint64_t max_batch_length
        uint64_t max_batch_tokens
        uint32_t pad_to_multiple_of
        int64_t aging_us
        int64_t deadline_us
        size_t max_queue_size
        size_t num_workers
        cbool keep_calls_whole
        cbool adaptive


cdef extern from "batched/entry.h" namespace "batched" nogil:
    cdef cppclass CEntry "batched::Entry":
        void* owner
        uint32_t count
        int32_t priority
        const uint32_t* lengths
        int64_t deadline_ns
        uint64_t key
        int64_t enqueue_ns
        uint32_t taken
        uint32_t first_left

    cdef cppclass CSpan "batched::Span":
        CEntry* entry
        uint32_t begin
        uint32_t count

    cdef cppclass CExpired "batched::Expired":
        CEntry* entry
        uint32_t removed
        uint32_t first_left

    cdef cppclass CBatch "batched::Batch":
        vector[CSpan] spans
        vector[CExpired] expired
        size_t size
        uint64_t key
        int64_t finished_ns
        uint32_t splits

    cbool split_in_two "batched::split_in_two" (const CBatch& whole, CBatch& first, CBatch& second, cbool whole_spans) except +

    cdef enum class CDispatchReason "batched::DispatchReason":
        kFull "batched::DispatchReason::kFull"
        kTimeout "batched::DispatchReason::kTimeout"
        kBudget "batched::DispatchReason::kBudget"
        kDrain "batched::DispatchReason::kDrain"
        kDeadline "batched::DispatchReason::kDeadline"

    const int64_t kNeverNs "batched::kNever"
    const int64_t kNotFinished "batched::Batch::kNotFinished"
    const size_t kDispatchReasonCount "batched::kDispatchReasonCount"
    const char* reason_name "batched::to_string" (CDispatchReason r)


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
        uint64_t expired_items
        int64_t oldest_wait_ns
        int64_t total_run_ns
        uint64_t batches_by_reason[5]
        CLatencyHistogram queue_wait
        CLatencyHistogram batch_latency
        vector[uint64_t] batch_sizes
        uint64_t split_batches
        size_t batch_cap
        double cost_fixed_ns
        double cost_per_item_ns
        uint64_t cost_samples
        double arrival_per_s
        double start_followers
        size_t adaptive_enough
        int64_t adaptive_wait_ns


cdef extern from "batched/keyed_policy.h" namespace "batched" nogil:
    cdef cppclass CKeyedPolicy "batched::KeyedPolicy":
        CKeyedPolicy(const CBatchOptions& options) except +
        void add(CEntry* e) except +
        uint32_t remove(CEntry* e) except +
        optional[CDispatchReason] ready(int64_t now, int64_t busy_until)
        int64_t next_deadline()
        int64_t next_expiry()
        void set_service_ns(int64_t ns)
        void expire(int64_t now, vector[CExpired]& out) except +
        void pop(int64_t now, CDispatchReason reason, CBatch& out) except +
        size_t size()


cdef extern from "batched/pad.h" namespace "batched" nogil:
    cdef enum CPaddingSide "batched::PaddingSide":
        kPadRight "batched::PaddingSide::kRight"
        kPadLeft "batched::PaddingSide::kLeft"

    cdef struct CRowView "batched::RowView":
        const void* data
        int64_t length

    void pad_rows(const CRowView* rows, size_t n_rows, size_t step_bytes, int64_t max_length,
                  CPaddingSide side, const void* pad_value, size_t itemsize, void* out)


cdef extern from "_glue.h" nogil:
    cdef enum CPushStatus "batched::PushStatus":
        kPushOk "batched::PushStatus::kOk"
        kPushQueueFull "batched::PushStatus::kQueueFull"
        kPushClosed "batched::PushStatus::kClosed"
        kPushOkMayDispatch "batched::PushStatus::kOkMayDispatch"
        kPushNoMemory "batched::PushStatus::kNoMemory"

    cbool push_queued "batched::queued" (CPushStatus status)

    cdef cppclass CScheduler "batched_glue::PyScheduler":
        CScheduler(const CBatchOptions& options) except +
        CPushStatus try_push(CEntry* entry)
        cbool wait_pop(CBatch& out) except +
        void set_running(cbool running)
        void finish_batch(CBatch& batch, int64_t run_ns, cbool failed) except +
        void finish_batch_items(CBatch& batch, int64_t run_ns, size_t failed_items) except +
        void batch_split(CBatch& top, size_t n) except +
        void part_succeeded(size_t n) except +
        void configure(const CBatchOptions& options) except +
        void shutdown() except +
        vector[CEntry*] drain() except +
        uint32_t cancel(CEntry* entry) except +
        cbool try_pop(CBatch& out) except +
        int64_t next_deadline() except +
        int64_t next_expiry() except +
        void expire_now(vector[CExpired]& out) except +
        cbool wait_expired(vector[CExpired]& out) except +
        void batch_delivered(const CBatch& batch) except +
        int64_t service_estimate_ns()
        size_t size_approx()
        size_t max_queue_size()
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
        cbool empty()

    cdef cppclass CPipeline "batched_glue::Pipeline":
        CPipeline(CScheduler* sched)
        cbool start_or_park(CBatch* batch) except +
        CBatch* take_parked(cbool stop) except +
        void popped() except +
        void formed_nothing() except +
        void hand_over() except +
        void wait_handover() except +

    void swap_batches "batched_glue::swap_batches" (CBatch& a, CBatch& b)
    int64_t monotonic_ns "batched_glue::monotonic_ns" ()


cdef extern from "batched/shm_ring.h" namespace "batched::ipc" nogil:
    cdef cppclass CRing "batched::ipc::Ring":
        CRing(void* memory)
        void init(size_t capacity)
        uint64_t capacity()
        uint64_t max_payload()
        char* reserve(uint64_t payload, uint32_t tag)
        cbool publish()
        cbool wait_for_room(uint64_t payload)
        const char* peek(uint64_t* payload, uint32_t* tag)
        cbool consume()
        cbool sleep()
        void awake()
        cbool empty()
    size_t ring_bytes_for "batched::ipc::Ring::bytes_for" (size_t capacity)

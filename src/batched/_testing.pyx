# cython: language_level=3
# distutils: language = c++
"""Test support only: the C++ batching policy (csrc/batched/policy.h) on explicit time.

``PolicyModel`` wraps one ``batched::BatchPolicy`` and the entries queued in
it, so property tests (tests/test_policy_properties.py) can drive the real
policy with a simulated clock: every time is an argument, nothing sleeps and
no thread is involved. The library itself never imports this module.
"""

from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t
from libcpp.optional cimport optional
from libcpp.vector cimport vector

from batched.includes.libbatched cimport (
    CBatch,
    CBatchOptions,
    CKeyedPolicy,
    CDispatchReason,
    CEntry,
    CExpired,
    CPriorityRule,
    CSpan,
    kNeverNs,
    kNotFinished,
    reason_name,
)


#: Batch::kNotFinished: the ``busy_until`` of a worker that was idle.
IDLE = kNotFinished
#: batched::kNever: ``next_deadline()`` when nothing is queued.
NEVER = kNeverNs


cdef CPriorityRule _rule_of(str name) except *:
    if name == "arrival":
        return CPriorityRule.kArrival
    if name == "small_first":
        return CPriorityRule.kSmallFirst
    if name == "small_first_then_shortest":
        return CPriorityRule.kSmallFirstThenShortest
    raise ValueError(f"priority_rule must be arrival, small_first or small_first_then_shortest, got {name!r}")


cdef CDispatchReason _reason_of(str name) except *:
    if name == "full":
        return CDispatchReason.kFull
    if name == "timeout":
        return CDispatchReason.kTimeout
    if name == "budget":
        return CDispatchReason.kBudget
    if name == "drain":
        return CDispatchReason.kDrain
    if name == "deadline":
        return CDispatchReason.kDeadline
    raise ValueError(f"unknown dispatch reason {name!r}")


cdef class _ModelEntry:
    """One call queued in the model: its Entry and the lengths it points to."""
    cdef CEntry entry
    cdef vector[uint32_t] lengths
    cdef readonly object call_id
    cdef bint queued  # in the policy (not yet fully dispatched nor removed)


cdef class PolicyModel:
    """A ``batched::BatchPolicy`` whose entries the model owns (one per call id).

    Entries are Python objects held in ``self.calls`` until the model dies, so
    the addresses the policy links together stay valid.
    """
    cdef CKeyedPolicy* policy
    cdef dict calls
    cdef readonly object max_batch_size
    cdef readonly object max_batch_length
    cdef readonly object timeout_us
    cdef readonly object aging_us
    cdef readonly bint keep_calls_whole
    cdef readonly str priority_rule
    cdef readonly object small_batch_threshold
    cdef readonly object last_key

    def __cinit__(self, size_t max_batch_size, int64_t timeout_us, unsigned long long max_batch_length=0,
                  int64_t aging_us=100000, bint keep_calls_whole=False, str priority_rule="small_first",
                  size_t small_batch_threshold=8, unsigned long long max_batch_tokens=0,
                  uint32_t pad_to_multiple_of=1):
        cdef CBatchOptions o
        if max_batch_size == 0:
            raise ValueError("max_batch_size must be at least 1")
        if timeout_us < 0 or aging_us < 0:
            raise ValueError("timeout_us and aging_us must not be negative")
        o.max_batch_size = max_batch_size
        o.timeout_us = timeout_us
        o.max_batch_length = max_batch_length
        o.aging_us = aging_us
        o.keep_calls_whole = keep_calls_whole
        o.priority_rule = _rule_of(priority_rule)
        o.small_batch_threshold = small_batch_threshold
        o.max_batch_tokens = max_batch_tokens
        o.pad_to_multiple_of = pad_to_multiple_of
        self.policy = new CKeyedPolicy(o)
        self.calls = {}
        self.max_batch_size = max_batch_size
        self.max_batch_length = max_batch_length
        self.timeout_us = timeout_us
        self.aging_us = aging_us
        self.keep_calls_whole = keep_calls_whole
        self.priority_rule = priority_rule
        self.small_batch_threshold = small_batch_threshold

    def __dealloc__(self):
        del self.policy
        self.policy = NULL

    def add(self, call_id, uint32_t count, int32_t priority, lengths, int64_t now_ns, deadline_ns=None,
            uint64_t key=0):
        """Queues a call of ``count`` items at ``now_ns`` with an explicit
        ``priority`` (lower first; 0 unless the caller sets one); ``lengths``
        is None (each item of length 1) or one length per item;
        ``deadline_ns`` None (none) or when the call must be done; ``key``
        its grouping key (0: none)."""
        if call_id in self.calls:
            raise ValueError(f"call {call_id!r} was added already")
        if count == 0:
            raise ValueError("a call has at least one item")
        cdef _ModelEntry m = _ModelEntry.__new__(_ModelEntry)
        m.call_id = call_id
        m.entry.owner = <void*>m
        m.entry.count = count
        m.entry.priority = priority
        m.entry.enqueue_ns = now_ns
        m.entry.key = key
        m.entry.deadline_ns = kNeverNs if deadline_ns is None else <int64_t>deadline_ns
        if lengths is not None:
            if len(lengths) != count:
                raise ValueError(f"{count} items but {len(lengths)} lengths")
            for l in lengths:
                m.lengths.push_back(l)
            m.entry.lengths = m.lengths.data()
        self.calls[call_id] = m
        self.policy.add(&m.entry)
        m.queued = True

    def ready(self, int64_t now_ns, busy_until_ns=None):
        """Why a batch should leave at ``now_ns`` ("full", "budget", "drain",
        "timeout"), or None. ``busy_until_ns``: when the asking worker's last
        batch returned; None (or IDLE) for an idle worker."""
        cdef int64_t busy = kNotFinished if busy_until_ns is None else <int64_t>busy_until_ns
        cdef optional[CDispatchReason] r = self.policy.ready(now_ns, busy)
        if not r.has_value():
            return None
        return reason_name(r.value()).decode()

    def pop(self, int64_t now_ns, str reason="timeout"):
        """Forms the next batch (of the key the last ready() chose): a list
        of (call_id, begin, count) spans; ``last_key`` is then its key."""
        cdef CBatch out
        cdef size_t s
        cdef CSpan* span
        cdef _ModelEntry m
        self.policy.pop(now_ns, _reason_of(reason), out)
        self.last_key = out.key
        spans = []
        for s in range(out.spans.size()):
            span = &out.spans[s]
            m = <_ModelEntry>span.entry.owner
            if m.entry.taken == m.entry.count:
                m.queued = False  # fully dispatched: the policy has let go of it
            spans.append((m.call_id, span.begin, span.count))
        return spans

    def remove(self, call_id):
        """Cancels a call: takes its undispatched items out of the queue and
        returns how many (0 if none were left), as Scheduler::cancel does."""
        cdef _ModelEntry m = self.calls[call_id]
        if not m.queued:
            return 0
        m.queued = False
        cdef uint32_t removed = self.policy.remove(&m.entry)
        m.entry.taken = m.entry.count
        return removed

    def set_service_ns(self, int64_t ns):
        """The batch time (dispatch to hand-out) that deadlines count with."""
        self.policy.set_service_ns(ns)

    def next_expiry(self):
        """After this time (ns) the first call with a deadline expires; NEVER if none."""
        return self.policy.next_expiry()

    def expire(self, int64_t now_ns):
        """Takes the calls that can no longer finish by their deadline out of
        the queue: a list of (call_id, removed, first_left), as the Scheduler
        gets them."""
        cdef vector[CExpired] out
        cdef size_t i
        cdef _ModelEntry m
        self.policy.expire(now_ns, out)
        gone = []
        for i in range(out.size()):
            m = <_ModelEntry>out[i].entry.owner
            m.queued = False
            m.entry.taken = m.entry.count
            gone.append((m.call_id, out[i].removed, out[i].first_left))
        return gone

    def taken(self, call_id):
        """Items of the call dispatched so far (all of them once removed)."""
        return (<_ModelEntry>self.calls[call_id]).entry.taken

    def next_deadline(self):
        """When the timeout or deadline rule fires next, in ns; NEVER if nothing is queued."""
        return self.policy.next_deadline()

    def size(self):
        """Items queued."""
        return self.policy.size()

    def __len__(self):
        return self.policy.size()

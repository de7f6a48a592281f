# One side of a ring of records in shared memory (csrc/batched/shm_ring.h),
# for batched.ipc: a client's requests to the server, the answers back
# (included by _core.pyx). A record is a tag and a list of parts (byte
# buffers); each part is stored as its length (8 bytes) and its bytes,
# padded to 8.

from cpython.buffer cimport PyBUF_SIMPLE, PyBUF_WRITABLE, PyObject_GetBuffer, PyBuffer_Release
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.string cimport memcpy

# Copies at least this large are made without the GIL.
cdef Py_ssize_t _NOGIL_COPY = 1 << 18


cdef inline uint64_t _padded(uint64_t n):
    return (n + 7) & ~(<uint64_t>7)


cdef class ShmRing:
    """One side of a ring in ``memory`` (a writable buffer both processes
    map, such as an ``mmap``) at ``offset``; ``capacity`` > 0 sets the
    ring up (the side that creates the memory, once), 0 joins one set up.
    Not thread-safe: one producer and one consumer, each holding its own lock."""

    cdef CRing* ring
    cdef Py_buffer view
    cdef bint has_view
    cdef object memory_view  # memoryview of the whole mapping: records are sliced from it
    cdef Py_ssize_t base  # offset of the ring in the mapping
    cdef Py_ssize_t peeked_at  # offset of the payload peek() returned, in the mapping

    def __cinit__(self, memory, Py_ssize_t offset, uint64_t capacity=0):
        PyObject_GetBuffer(memory, &self.view, PyBUF_WRITABLE)
        self.has_view = True
        if offset < 0 or offset % 64 or <size_t>offset + ring_bytes_for(capacity) > <size_t>self.view.len:
            raise ValueError(f"a ring of {capacity} bytes at offset {offset} does not fit {self.view.len} bytes")
        self.ring = new CRing(<char*>self.view.buf + offset)
        if capacity:
            self.ring.init(capacity)
        elif <size_t>offset + ring_bytes_for(self.ring.capacity()) > <size_t>self.view.len:
            raise ValueError("the shared memory does not hold the ring it describes")
        self.memory_view = memoryview(memory)
        self.base = offset

    def __dealloc__(self):
        del self.ring
        if self.has_view:
            PyBuffer_Release(&self.view)

    @staticmethod
    def bytes_for(uint64_t capacity):
        """Bytes of shared memory a ring of ``capacity`` bytes takes (a multiple of 64)."""
        return (ring_bytes_for(capacity) + 63) & ~63

    @property
    def max_payload(self):
        """The most bytes one record's parts may take, lengths and padding included."""
        return self.ring.max_payload()

    @staticmethod
    def payload_of(parts):
        """The bytes ``parts`` take in a record."""
        cdef uint64_t total = 0
        for part in parts:
            total += 8 + _padded(len(memoryview(part).cast("B")))
        return total

    # ---- producer ----

    def write(self, uint32_t tag, list parts):
        """Writes a record. Returns 1 if written and the consumer is asleep
        (wake it), 0 if written, -1 if the ring has no room now (nothing is
        written). Raises ValueError if it never would (over max_payload)."""
        cdef Py_ssize_t n = len(parts), i
        cdef Py_buffer* views = <Py_buffer*>PyMem_Malloc(n * sizeof(Py_buffer) + 1)
        cdef Py_ssize_t got = 0
        cdef uint64_t total = 0, length
        cdef char* at
        if views == NULL:
            raise MemoryError()
        try:
            for i in range(n):
                PyObject_GetBuffer(parts[i], &views[i], PyBUF_SIMPLE)
                got += 1
                total += 8 + _padded(<uint64_t>views[i].len)
            if total > self.ring.max_payload():
                raise ValueError(f"a record of {total} bytes is over this ring's limit of "
                                 f"{self.ring.max_payload()} bytes")
            at = self.ring.reserve(total, tag)
            if at == NULL:
                return -1
            for i in range(n):
                length = <uint64_t>views[i].len
                memcpy(at, &length, 8)
                if views[i].len >= _NOGIL_COPY:
                    with nogil:
                        memcpy(at + 8, views[i].buf, views[i].len)
                else:
                    memcpy(at + 8, views[i].buf, views[i].len)
                at += 8 + _padded(length)
            return 1 if self.ring.publish() else 0
        finally:
            for i in range(got):
                PyBuffer_Release(&views[i])
            PyMem_Free(views)

    def wait_for_room(self, uint64_t payload):
        """The producer will block until the consumer frees room: True if it
        may (the consumer's consume() will say to wake it), False if room came."""
        return self.ring.wait_for_room(payload)

    # ---- consumer ----

    def peek(self):
        """The next record as (tag, [parts]), or None. The parts are
        memoryviews of the shared memory: valid until consume(), released by
        the caller before it."""
        cdef uint64_t payload, length, used = 0
        cdef uint32_t tag
        cdef const char* at = self.ring.peek(&payload, &tag)
        if at == NULL:
            return None
        cdef Py_ssize_t start = at - <const char*>self.view.buf
        parts = []
        while used < payload:
            memcpy(&length, at + used, 8)
            if used + 8 + length > payload:
                raise ValueError("a record in shared memory is corrupt (a part longer than its record)")
            parts.append(self.memory_view[start + used + 8:start + used + 8 + length])
            used += 8 + _padded(length)
        return tag, parts

    def consume(self):
        """Frees the record peek() returned. True: the producer waits for room (wake it)."""
        return self.ring.consume()

    def sleep(self):
        """The consumer will block until a record comes: True if it may (the
        producer's write() will say to wake it), False if one came meanwhile."""
        return self.ring.sleep()

    def awake(self):
        """The consumer is awake again."""
        self.ring.awake()

    def empty(self):
        return self.ring.empty()


cdef extern from "<sched.h>" nogil:
    int sched_yield()


def spin_for_records(list rings, int64_t spin_ns):
    """Waits up to ``spin_ns`` without the GIL, spinning, for a record in any
    of ``rings``; True if one came. A peer on another CPU is seen at once,
    where waking a sleeping thread costs a CPU wake-up (tens of microseconds
    on a VM; docs/scaling.md). Yields the CPU between checks, so a thread
    that has work there runs first."""
    cdef vector[CRing*] watched
    cdef ShmRing r
    cdef size_t i
    cdef int64_t end
    cdef bint found = False
    for r in rings:  # each holds its mapping (a view of it) while this spins
        watched.push_back(r.ring)
    if watched.size() == 0 or spin_ns <= 0:
        return False
    with nogil:
        end = monotonic_ns() + spin_ns
        while not found:
            for i in range(watched.size()):
                if not watched[i].empty():
                    found = True
                    break
            if found or monotonic_ns() >= end:
                break
            sched_yield()
    return found


from libcpp.atomic cimport atomic


cdef class Flag:
    """A flag one thread sets and another waits for: spinning without the
    GIL for a while (see spin_for_records), then the caller blocks its own
    way (batched.ipc's waiters: on a lock)."""

    cdef atomic[int] value

    def set(self):
        self.value.store(1)

    def spin(self, int64_t spin_ns, ShmRing ring=None):
        """Waits up to ``spin_ns`` for set(), or for a record in ``ring``;
        True if it was set."""
        cdef int64_t end
        cdef CRing* watched = NULL
        if ring is not None:
            watched = ring.ring
        cdef bint found = self.value.load() != 0
        if found or spin_ns <= 0:
            return found
        with nogil:
            end = monotonic_ns() + spin_ns
            while True:
                if self.value.load() != 0:
                    found = True
                    break
                if (watched != NULL and not watched.empty()) or monotonic_ns() >= end:
                    break
                sched_yield()
        return found

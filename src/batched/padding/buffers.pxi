# A pool of host buffers that padded batches are views of (included by
# _padding.pyx).


cdef class HostBuffers:
    """At most ``ARENAS`` uint8 numpy arrays that padded host batches are
    views of, each reused once nothing else refers to it.

    A fresh np.empty for every batch would page-fault its memory in each time
    wherever malloc gives large blocks back to the OS (1 ms instead of 60 us
    for 256 rows of 512 int64 steps). An arena is free when the pool's list is
    its only holder: every view of it (the padded array, a slice the model
    kept) holds a reference to it. Thread-safe."""
    cdef list arenas
    cdef object lock

    def __init__(self):
        self.arenas = []
        self.lock = threading.Lock()

    cdef object array(self, tuple shape, object dtype, size_t nbytes, char** data):
        """A new numpy array of ``shape`` and ``dtype`` (``nbytes`` bytes) on a
        free arena; sets ``data`` to its start."""
        np = _numpy()
        cdef Py_ssize_t i, spare = -1
        cdef Py_buffer view
        arena = None
        with self.lock:
            for i in range(len(self.arenas)):
                candidate = self.arenas[i]
                if Py_REFCNT(candidate) == 2:  # the list's reference and `candidate`'s
                    if candidate.nbytes >= nbytes:
                        arena = candidate
                        break
                    spare = i  # free but too small: may be replaced
            if arena is None:
                arena = np.empty(max(nbytes, 1), dtype=np.uint8)
                if len(self.arenas) < ARENAS:
                    self.arenas.append(arena)
                elif spare >= 0:
                    self.arenas[spare] = arena
            candidate = None
            out = arena[:nbytes].view(dtype).reshape(shape)
        PyObject_GetBuffer(arena, &view, PyBUF_SIMPLE)
        data[0] = <char*>view.buf
        PyBuffer_Release(&view)
        return out

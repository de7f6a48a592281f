# A pool of host buffers that padded batches are views of (included by
# _padding.pyx).


cdef class HostBuffers:
    """At most ``ARENAS`` uint8 numpy arrays that padded host batches are
    views of, each reused once nothing else refers to it.

    A fresh np.empty for every batch would page-fault its memory in each time
    wherever malloc gives large blocks back to the OS (1 ms instead of 60 us
    for 256 rows of 512 int64 steps). An arena is free when the pool's list is
    its only holder: every view of it (the padded array, a slice the model
    kept) holds a reference to it.

    Thread-safe without a lock: ``array`` runs with the GIL, and between
    seeing an arena free and holding it (a reference, which makes it busy to
    every other thread) no Python code runs that could let another thread in."""
    cdef list arenas
    cdef vector[size_t] sizes   # each arena's bytes
    cdef vector[char*] starts   # each arena's first byte

    def __init__(self):
        self.arenas = []

    cdef object array(self, tuple shape, object dtype, size_t nbytes, char** data):
        """A new numpy array of ``shape`` and ``dtype`` (``nbytes`` bytes) on a
        free arena; sets ``data`` to its start."""
        np = _numpy()
        cdef Py_ssize_t i, found = -1, spare = -1
        cdef Py_buffer view
        for i in range(len(self.arenas)):
            if PyList_GET_ITEM(self.arenas, i).ob_refcnt == 1:  # (borrowed) the list's reference only
                if self.sizes[i] >= nbytes:
                    found = i
                    break
                spare = i  # free but too small: may be replaced
        if found >= 0:
            arena = <object>PyList_GET_ITEM(self.arenas, found)  # (held from here: busy)
            data[0] = self.starts[found]
        else:
            arena = np.empty(max(nbytes, 1), dtype=np.uint8)
            PyObject_GetBuffer(arena, &view, PyBUF_SIMPLE)
            data[0] = <char*>view.buf
            PyBuffer_Release(&view)
            if len(self.arenas) < ARENAS:
                self.arenas.append(arena)
                self.sizes.push_back(max(nbytes, 1))
                self.starts.push_back(data[0])
            elif spare >= 0:
                self.arenas[spare] = arena
                self.sizes[spare] = max(nbytes, 1)
                self.starts[spare] = data[0]
        return np.ndarray(shape, dtype, arena)  # a view whose base is the arena

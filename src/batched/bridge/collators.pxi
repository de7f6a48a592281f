# Collators: how a batch becomes the batch function's input, and its output
# each call's results (included by _core.pyx). Item calls are collated here;
# rows calls (the inference front ends) by batched._padding.RowsCollator.


cdef class Collator:
    """The engine's view of what its calls hold. One per processor; its engines
    (one per event loop for an async function) share it.

    ``new_call`` makes the record of one call; ``inputs`` gives the batch
    function's argument for a batch; ``outputs`` checks what it returned;
    ``store`` puts one span's share of it into its call; ``outcome`` is what
    a finished call returns to its caller. Everything runs with the GIL."""

    def __init__(self, str name):
        self.name = name

    cdef _Call new_call(self, object request):
        raise NotImplementedError

    cdef object inputs(self, CBatch& batch):
        raise NotImplementedError

    cdef object outputs(self, object out, CBatch& batch):
        raise NotImplementedError

    cdef int store(self, _Call c, CSpan* span, object outs, size_t s, Py_ssize_t first) except -1:
        raise NotImplementedError

    cdef object outcome(self, _Call c):
        raise NotImplementedError


cdef class ItemCollator(Collator):
    """Item calls: a call is one item or a list of items; the batch function
    takes a list of items and returns one result per item (an ``Exception``
    instance at position i fails only that item)."""

    cdef _Call new_call(self, object items):
        cdef _Call c = _Call.__new__(_Call)
        cdef Py_ssize_t n = 1, i
        if type(items) is list:
            c.items = tuple(<list>items)
        elif isinstance(items, list):
            c.items = tuple(items)
        else:
            c.item = items  # (no tuple and no list for the common call of one item)
            c.single = True
        if not c.single:
            n = len(c.items)
            c.results = [None] * n
        c.init(n)
        if self.measure_lengths:
            c.lengths.resize(n)
            for i in range(n):
                c.lengths[i] = _item_length(c.item if c.single else c.items[i])
            c.entry.lengths = c.lengths.data()
        return c

    cdef object inputs(self, CBatch& batch):
        """The batch's items, in dispatch order."""
        cdef Py_ssize_t i = 0, j
        cdef size_t s
        cdef CSpan* span
        cdef _Call c
        inputs = PyList_New(batch.size)
        for s in range(batch.spans.size()):
            span = &batch.spans[s]
            c = <_Call>span.entry.owner
            if c.single:
                item = c.item
                Py_INCREF(item)  # PyList_SET_ITEM steals it
                PyList_SET_ITEM(inputs, i, item)
                i += 1
                continue
            for j in range(span.begin, span.begin + span.count):
                item = c.items[j]
                Py_INCREF(item)
                PyList_SET_ITEM(inputs, i, item)
                i += 1
        return inputs

    cdef object outputs(self, object out, CBatch& batch):
        """The batch output as a list or tuple of one result per item; raises
        a clear TypeError/ValueError for anything else (docs/semantics.md, 5)."""
        cdef Py_ssize_t n = batch.size
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

    cdef int store(self, _Call c, CSpan* span, object outs, size_t s, Py_ssize_t first) except -1:
        cdef Py_ssize_t k
        for k in range(span.count):
            r = (<list>outs)[first + k] if type(outs) is list else (<tuple>outs)[first + k]
            if c.single:
                c.item = r
            else:
                c.results[span.begin + k] = r
            if PyExceptionInstance_Check(r):
                c.fail(r, span.begin + k)
        return 0

    cdef object outcome(self, _Call c):
        return c.item if c.single else c.results


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

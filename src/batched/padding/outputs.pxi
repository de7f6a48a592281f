# Cutting outputs back: the batch function's output into one piece per call,
# and a call's pieces (from several batches) back into one (included by
# _padding.pyx).


cdef class OutputSplitter:
    """Cuts a batch's output into each call's rows (views, no copy), checking
    that it has one row per input row; joins the pieces of a call that was
    split over several batches."""
    cdef readonly str name

    def __init__(self, str name):
        self.name = name

    cdef list split(self, object out, list counts, Py_ssize_t padded):
        """The batch function's output cut into one piece per span of
        ``counts`` rows (views); ``padded`` rows in all (bucket padding).

        ``out`` is an array/tensor with the batch on axis 0, a dict or a
        list/tuple of them (as in batched 0.1.5), or a list of one result per
        row. A piece is (how to join it, the part of ``out``)."""
        cdef int how
        if _kind_of(out) >= 0:  # the common case, first
            self.check_rows(out, padded, "output")
            how = JOIN_ARRAY
        elif isinstance(out, Mapping):
            for key, value in out.items():
                self.check_rows(value, padded, f"output {key!r}")
            how = JOIN_DICT
        elif isinstance(out, (list, tuple)):
            if len(out) and all(_kind_of(v) >= 0 and _rows_or_none(v) == padded for v in out):
                how = JOIN_EACH  # one array per output, batch on axis 0
            elif len(out) == padded:
                how = JOIN_ROWS  # one result per row
            else:
                raise ValueError(
                    f"batch function {self.name!r} returned a {type(out).__name__} of {len(out)} "
                    f"elements for a batch of {padded} rows: return one array per output (batch on "
                    f"axis 0), or one result per row")
        else:
            self.check_rows(out, padded, "output")
            how = JOIN_ARRAY
        if how == JOIN_DICT:
            cut = {k: _cut(v, counts, padded) for k, v in out.items()}
            parts = [{k: cut[k][i] for k in cut} for i in range(len(counts))]
        elif how == JOIN_EACH:
            cut_each = [_cut(v, counts, padded) for v in out]
            parts = [type(out)([c[i] for c in cut_each]) for i in range(len(counts))]
        else:
            parts = _cut(out, counts, padded)
        return [(how, part) for part in parts]

    cdef int check_rows(self, object value, Py_ssize_t padded, str what) except -1:
        got = _rows_or_none(value)
        if got is None or isinstance(value, (str, bytes)):
            raise TypeError(
                f"batch function {self.name!r} must return an array or tensor with the batch on "
                f"axis 0 (or a dict or list of them); its {what} is a {_describe(value)}")
        if got != padded:
            raise ValueError(
                f"batch function {self.name!r} returned {got} rows in its {what} for a batch of "
                f"{padded} rows; it must return one row per input row, on axis 0")
        return 0

    def join(self, list pieces):
        """A call's result from its pieces [(first row, piece), ...]: the part
        itself if the call ran in one batch, else the parts concatenated."""
        if len(pieces) == 1:
            return pieces[0][1][1]
        ordered = sorted(pieces, key=lambda p: p[0])
        how = ordered[0][1][0]
        parts = [p[1][1] for p in ordered]
        try:
            if how == JOIN_DICT:
                return {k: _concat([p[k] for p in parts]) for k in parts[0]}
            if how == JOIN_EACH:
                return type(parts[0])(_concat(list(group)) for group in zip(*parts))
            return _concat(parts)
        except (ValueError, RuntimeError, TypeError) as e:
            raise ValueError(
                f"{self.name}: this call's rows ran in {len(parts)} batches whose outputs cannot be "
                f"joined ({e}); calls of at most batch_size rows, or a fixed padded length "
                f"(pad_to_multiple_of), avoid this") from e


cdef list _cut(object value, list counts, Py_ssize_t padded):
    """``value`` cut along axis 0 into parts of ``counts`` rows (views); rows
    past their sum (bucket padding) are dropped."""
    cdef Py_ssize_t a = 0, b
    if _kind_of(value) == TORCH:  # one split() call: slicing a tensor costs ~1 us a slice
        total = sum(counts)
        parts = value.split(counts + [padded - total] if padded > total else counts)
        return list(parts[:len(counts)])
    parts = []
    for count in counts:
        b = a + <Py_ssize_t>count
        parts.append(value[a:b])
        a = b
    return parts


cdef object _concat(list parts):
    first = parts[0]
    kind = _kind_of(first)
    if kind == NUMPY:
        return _numpy().concatenate(parts)
    if kind == TORCH:
        return _torch_mod().cat(parts)
    joined = list(first)
    for p in parts[1:]:
        joined.extend(p)
    return tuple(joined) if isinstance(first, tuple) else joined


cdef object _rows_or_none(object value):
    """The length of axis 0, or None if ``value`` has none."""
    shape = getattr(value, "shape", None)
    if shape is not None:
        return shape[0] if len(shape) else None
    if not hasattr(value, "__len__") or not hasattr(value, "__getitem__"):
        return None
    return len(value)

# Checking features: a call's features against the first call's, read into
# Rows (where each row's bytes are), with no Python object per row (included
# by _padding.pyx).


cdef class _FeatureRows:
    """The rows of one feature of one call."""
    cdef vector[Block] blocks
    cdef object source   # the array, or the list of row arrays: keeps the memory alive
    cdef bint ragged     # source is a list of rows (one block each)

    cdef object device_blocks(self, Py_ssize_t begin, Py_ssize_t count):
        """Rows [begin, begin + count) as torch blocks [n, L, ...] (device tensors)."""
        if not self.ragged:
            return [self.source.narrow(0, begin, count)]
        return [self.source[i].unsqueeze(0) for i in range(begin, begin + count)]


cdef class Rows:
    """One call's rows: the request the engine queues for a call (see _core)."""
    cdef readonly Py_ssize_t n_rows
    cdef vector[uint32_t] row_lengths  # each row's length (first feature): padding, max_batch_length
    cdef list features            # _FeatureRows, in the padder's feature order
    cdef readonly bint on_host

    @property
    def lengths(self):
        """array('I') of each row's length (first feature)."""
        return array("I", self.row_lengths)


cdef class _Spec:
    """One feature as fixed by the first call: every later call must match."""
    cdef readonly object key
    cdef object dtype
    cdef tuple trailing        # the shape of a row after its first axis
    cdef size_t itemsize
    cdef size_t step_bytes     # bytes per step along a row's first axis
    cdef vector[Py_ssize_t] trailing_dims  # trailing, for the fast read
    cdef object pad_value
    cdef bytes pad_bytes       # pad_value as one element of dtype
    cdef object torch_dtype    # for staging numpy features onto a torch device

    cdef str describe(self):
        return _rows_text(self.dtype, self.trailing)


cdef class _Schema:
    """The features as fixed by the first call."""
    cdef list specs        # _Spec per feature, in the first call's order
    cdef tuple keys
    cdef int kind
    cdef object input_device  # torch inputs: their device
    cdef bint on_host         # numpy, or torch on the CPU


cdef class FeatureReader:
    """Reads each call's features into ``Rows``, checking them against the
    features the first call fixed (names, kind, dtypes, trailing shapes,
    device), so that a bad call fails alone, at call time."""
    cdef readonly str name
    cdef dict pad_by_key
    cdef object default_pad
    cdef bint spread_kwargs
    cdef object device                 # the target torch device, or None
    cdef _Schema schema                # None until a first call has been read
    cdef object lock

    def __init__(self, str name, dict pad_by_key, default_pad, *, device=None, bint spread_kwargs=False):
        self.name = name
        self.pad_by_key = pad_by_key
        self.default_pad = default_pad
        self.device = device
        self.spread_kwargs = spread_kwargs
        self.lock = threading.Lock()

    def request(self, features):
        """The ``Rows`` of one call's features; raises TypeError/ValueError to
        this caller for features that cannot be batched with earlier calls'."""
        return self.read_request(features)

    cdef Rows read_request(self, features):
        if type(features) is dict and self.schema is not None and len(<dict>features):  # the common case, first
            return self.read(self.schema, features)
        if not isinstance(features, Mapping):
            raise TypeError(
                f"{self.name}: features must be a dict of arrays or tensors (or given as keyword "
                f"arguments), got {type(features).__name__}")
        if len(features) == 0:
            raise ValueError(f"{self.name}: no features given")
        if self.schema is not None:
            return self.read(self.schema, features)
        cdef _Schema schema
        with self.lock:
            if self.schema is not None:
                return self.read(self.schema, features)
            # The first call fixes the features, once it has been read without error.
            schema = self.make_schema(features)
            rows = self.read(schema, features)
            self.schema = schema
            return rows

    cdef Rows read(self, _Schema schema, features):
        cdef Rows rows = Rows.__new__(Rows)
        cdef Py_ssize_t n = -1, i
        cdef _Spec spec
        cdef _FeatureRows fr
        if len(features) != len(schema.keys):
            raise ValueError(self.key_mismatch(schema, features))
        rows.features = []
        for i in range(len(schema.specs)):
            spec = schema.specs[i]
            try:
                value = features[spec.key]
            except KeyError:
                raise ValueError(self.key_mismatch(schema, features)) from None
            fr = self.read_feature(schema, spec, value, rows)
            if n < 0:
                n = self.row_count(fr)
                rows.n_rows = n
                self.fill_lengths(fr, n, rows.row_lengths)
            elif self.row_count(fr) != n:
                raise ValueError(
                    f"{self.name}: feature {spec.key!r} has {self.row_count(fr)} rows but "
                    f"{schema.keys[0]!r} has {n}: every feature needs one entry per row")
            rows.features.append(fr)
        if n == 0:
            raise ValueError(f"{self.name}: the features hold no rows")
        return rows

    cdef str key_mismatch(self, _Schema schema, features):
        return (f"{self.name}: features {sorted(map(str, features))} do not match those of earlier "
                f"calls {sorted(map(str, schema.keys))}: every call must give the same features")

    cdef Py_ssize_t row_count(self, _FeatureRows fr):
        cdef Py_ssize_t n = 0
        cdef size_t b
        for b in range(fr.blocks.size()):
            n += fr.blocks[b].rows
        return n

    cdef int fill_lengths(self, _FeatureRows fr, Py_ssize_t n, vector[uint32_t]& lengths) except -1:
        cdef size_t b
        if fr.blocks.size() == 1:
            lengths.assign(n, <uint32_t>fr.blocks[0].length)
            return 0
        lengths.resize(n)
        for b in range(fr.blocks.size()):
            lengths[b] = <uint32_t>fr.blocks[b].length
        return 0

    cdef _FeatureRows read_feature(self, _Schema schema, _Spec spec, object value, Rows rows):
        cdef _FeatureRows fr = _FeatureRows.__new__(_FeatureRows)
        cdef _Array a
        cdef Block block
        cdef Py_ssize_t i
        if schema.kind == NUMPY and _read_numpy_rows(spec, value, fr):
            rows.on_host = True
            return fr
        cdef int kind = _kind_of(value)
        if kind >= 0:
            a = self.check_array(schema, spec, value, kind, True, -1)
            fr.source = a.obj
            block.data = a.data
            block.rows = a.shape[0]
            block.length = a.shape[1]
            block.row_stride = a.row_stride
            fr.blocks.push_back(block)
            rows.on_host = a.on_host
            return fr
        if not isinstance(value, (list, tuple)):
            raise TypeError(
                f"{self.name}: feature {spec.key!r} must be a numpy array, a torch tensor or a list "
                f"of them (one per row), got {type(value).__name__}")
        fr.ragged = True
        fr.source = list(value)
        fr.blocks.reserve(len(fr.source))
        for i in range(len(fr.source)):
            row = fr.source[i]
            kind = _kind_of(row)
            if kind < 0:
                raise TypeError(
                    f"{self.name}: row {i} of feature {spec.key!r} must be a numpy array or a torch "
                    f"tensor, got {type(row).__name__}")
            a = self.check_array(schema, spec, row, kind, False, i)
            fr.source[i] = a.obj
            block.data = a.data
            block.rows = 1
            block.length = a.shape[0]
            block.row_stride = 0
            fr.blocks.push_back(block)
            rows.on_host = a.on_host
        return fr

    cdef _Array check_array(self, _Schema schema, _Spec spec, object value, int kind, bint batched,
                            Py_ssize_t row):
        """Reads one array (a batch of rows, or row ``row`` of a list) and checks it against ``spec``."""
        cdef _Array a = _read_array(value, kind, batched)
        cdef tuple shape = a.shape
        cdef Py_ssize_t skip = 1 if batched else 0
        if (kind == schema.kind and (a.dtype is spec.dtype or a.dtype == spec.dtype)
                and len(shape) == skip + 1 + len(spec.trailing)
                and (not spec.trailing or shape[skip + 1:] == spec.trailing)
                and (kind != TORCH or a.on_host == schema.on_host and (a.on_host or a.device == schema.input_device))
                and shape[skip] <= MAX_LENGTH):
            return a  # (the checks below, in one test: their messages cost more than the checks)
        where = f"feature {spec.key!r}" if batched else f"row {row} of feature {spec.key!r}"
        if len(shape) < skip + 1:
            hint = (" (for one row of length L, give shape [1, L], e.g. x[None], or a list of rows)"
                    if batched else "")
            raise ValueError(
                f"{self.name}: {where} is a {_describe(value)}: it must have "
                f"{'a row axis and a length axis' if batched else 'a length axis'}{hint}")
        if kind != schema.kind:
            raise TypeError(
                f"{self.name}: {where} is a {'torch tensor' if kind == TORCH else 'numpy array'} but "
                f"earlier calls gave {'torch tensors' if schema.kind == TORCH else 'numpy arrays'}: "
                f"every call must use the same kind")
        if a.dtype != spec.dtype or shape[skip + 1:] != spec.trailing:
            raise ValueError(
                f"{self.name}: {where} has {_rows_text(a.dtype, shape[skip + 1:])}, but earlier calls gave {spec.describe()}: rows "
                f"padded into one batch must share dtype and trailing shape")
        if kind == TORCH and (a.on_host != schema.on_host
                              or not a.on_host and a.device != schema.input_device):
            raise ValueError(
                f"{self.name}: {where} is on {a.device}, but earlier calls gave tensors on "
                f"{schema.input_device}")
        if shape[skip] > MAX_LENGTH:
            raise ValueError(f"{self.name}: {where} has rows of length {shape[skip]}, more than {MAX_LENGTH}")
        return a

    cdef _Schema make_schema(self, features):
        """The features (keys, kind, dtypes, trailing shapes) of a first call;
        every later call is checked against them."""
        cdef _Spec spec
        cdef _Array a
        specs = []
        kind = -1
        input_device = None
        for key, value in features.items():
            if self.spread_kwargs and not isinstance(key, str):
                raise TypeError(f"{self.name}: with spread_kwargs, feature names must be str, got {key!r}")
            sample = value
            batched = True
            if isinstance(value, (list, tuple)):
                if len(value) == 0:
                    raise ValueError(f"{self.name}: feature {key!r} is an empty list: the features hold no rows")
                sample = value[0]
                batched = False
            k = _kind_of(sample)
            if k < 0:
                raise TypeError(
                    f"{self.name}: feature {key!r} must be a numpy array, a torch tensor or a list "
                    f"of them (one per row), got {type(sample).__name__}")
            if kind >= 0 and k != kind:
                raise TypeError(f"{self.name}: features mix numpy arrays and torch tensors")
            kind = k
            a = _read_array(sample, k, batched)
            trailing = a.shape[2:] if batched else a.shape[1:]
            if k == TORCH:
                if input_device is not None and a.device != input_device:
                    raise ValueError(f"{self.name}: features on several devices ({input_device}, {a.device})")
                input_device = a.device
            spec = _Spec.__new__(_Spec)
            spec.key = key
            spec.dtype = a.dtype
            spec.trailing = tuple(trailing)
            for d in trailing:
                spec.trailing_dims.push_back(d)
            spec.itemsize = a.itemsize
            spec.step_bytes = a.itemsize
            for d in trailing:
                spec.step_bytes *= d
            spec.pad_value = self.pad_by_key.get(key, self.default_pad)
            spec.pad_bytes = self.pad_bytes(spec, k, key)
            specs.append(spec)
        if self.device is not None and kind == TORCH and input_device.type != "cpu" \
                and input_device != self.device:
            raise ValueError(
                f"{self.name}: features are on {input_device} but the processor pads on "
                f"device={self.device}: give host arrays or tensors on {self.device}")
        if self.device is not None and kind == NUMPY:
            import torch  # numpy features padded into torch tensors on `device`
            for spec in specs:
                spec.torch_dtype = _torch_mod().from_numpy(_numpy().empty(0, dtype=spec.dtype)).dtype
        cdef _Schema schema = _Schema.__new__(_Schema)
        schema.kind = kind
        schema.input_device = input_device
        schema.on_host = input_device is None or input_device.type == "cpu"
        schema.keys = tuple((<_Spec>s).key for s in specs)
        schema.specs = specs
        return schema

    cdef bytes pad_bytes(self, _Spec spec, int kind, object key):
        value = spec.pad_value
        try:
            if kind == NUMPY:
                return _numpy().array(value, dtype=spec.dtype).tobytes()
            t = _torch_mod().full((1,), value, dtype=spec.dtype)
            return PyBytes_FromStringAndSize(<char*><uintptr_t>t.data_ptr(), spec.itemsize)
        except (OverflowError, ValueError, TypeError, RuntimeError) as e:
            raise ValueError(
                f"{self.name}: pad value {value!r} of feature {key!r} does not fit its dtype "
                f"{spec.dtype}: {e}") from None


cdef bint _read_numpy_rows(_Spec spec, object value, _FeatureRows fr) except -1:
    """The common case, read with no object made: a numpy array [n, L, ...]
    of ``spec``'s dtype (the same object) and trailing shape whose rows are
    contiguous becomes one block of ``fr``. False for anything else, which
    the full path (check_array) reads or rejects with its message."""
    np = _numpy()
    if type(value) is not np.ndarray or (<object>value).dtype is not spec.dtype:
        return False
    cdef Py_buffer view
    cdef Py_ssize_t d
    cdef size_t k
    cdef Block block
    PyObject_GetBuffer(value, &view, PyBUF_STRIDES)
    try:
        if (view.ndim != 2 + <Py_ssize_t>spec.trailing_dims.size() or view.shape[1] > MAX_LENGTH
                or not _contiguous_from(1, view.ndim, view.shape, view.strides, view.itemsize)):
            return False
        for k in range(spec.trailing_dims.size()):
            if view.shape[2 + k] != spec.trailing_dims[k]:
                return False
        block.data = <const char*>view.buf
        block.rows = view.shape[0]
        block.length = view.shape[1]
        block.row_stride = view.strides[0]
        fr.blocks.push_back(block)
        fr.source = value
        return True
    finally:
        PyBuffer_Release(&view)

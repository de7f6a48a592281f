# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
# distutils: language = c++
"""Padding for the inference front ends: the collator of their engines.

A call hands in a dict of features; each feature is a batch of rows
(``[n, L, ...]``) or a list of rows (``[L, ...]`` each, ragged). ``Padder.request``
checks it against the features of earlier calls and records where each row's
bytes are (``Rows``): one object per call, none per row. When a batch is
dispatched, ``Padder.collate`` pads every feature of the batch's rows straight
from the callers' buffers into one new array, with the C++ kernel ``pad_rows``
and the GIL released (host memory), or with the torch op ``pad_stack`` on the
device (CUDA tensors, or ``device=`` staging). ``Padder.split`` cuts the batch
function's output back into one piece per call, as views, and ``Padder.join``
puts together the pieces of a call that was split over several batches.

numpy and torch are never imported here: a value is recognised only if its
module is already loaded, which it is when the caller has made one.
"""

from cpython.buffer cimport PyBUF_RECORDS_RO, PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.ref cimport Py_REFCNT
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython cimport array as carray
from libc.stdint cimport int64_t, uint32_t, uint64_t, uintptr_t
from libc.string cimport memcpy
from libcpp.vector cimport vector

import sys
import threading
from array import array
from collections.abc import Mapping

cdef extern from "batched/pad.h" namespace "batched" nogil:
    cdef enum CPaddingSide "batched::PaddingSide":
        kPadRight "batched::PaddingSide::kRight"
        kPadLeft "batched::PaddingSide::kLeft"

    cdef struct CRowView "batched::RowView":
        const void* data
        int64_t length

    void pad_rows(const CRowView* rows, size_t n_rows, size_t step_bytes, int64_t max_length,
                  CPaddingSide side, const void* pad_value, size_t itemsize, void* out)


cdef struct Block:
    # `rows` rows of `length` steps each; row i starts at data + i * row_stride.
    # data is NULL for device memory (padded by the torch op, never touched here).
    const char* data
    int64_t rows
    int64_t length
    int64_t row_stride


cdef struct Segment:
    # rows[first_row, first_row + rows) of a batch: adjacent rows of one call, one length
    size_t first_row
    int64_t rows
    int64_t length
    size_t offset  # where staging packs them


# How the pieces of a call split over several batches are joined (Padder.split).
cdef enum JoinHow:
    JOIN_ARRAY = 0
    JOIN_DICT = 1
    JOIN_EACH = 2
    JOIN_ROWS = 3


cdef enum Kind:
    NUMPY = 0
    TORCH = 1

cdef uint32_t MAX_LENGTH = 0xFFFFFFFE
cdef size_t STAGING_ALIGN = 64  # staged blocks start on a 64-byte boundary (any dtype's alignment)
cdef Py_ssize_t ARENAS = 16     # host buffers a padder keeps for reuse (see Padder.host_array)

_np = None
_torch = None
# itemsize -> a numpy dtype of that size that torch.from_numpy takes
_INT_OF_SIZE = {1: "int8", 2: "int16", 4: "int32", 8: "int64", 16: "complex128"}


cdef object _numpy():
    global _np
    if _np is None:
        _np = sys.modules.get("numpy")
    return _np


cdef object _torch_mod():
    global _torch
    if _torch is None:
        _torch = sys.modules.get("torch")
    return _torch


cdef int _kind_of(object value) except -2:
    """NUMPY, TORCH, or -1 for anything else."""
    np = _numpy()
    if np is not None and isinstance(value, np.ndarray):
        return NUMPY
    torch = _torch_mod()
    if torch is not None and isinstance(value, torch.Tensor):
        return TORCH
    return -1


cdef class _Array:
    """What padding needs to know of one array or tensor."""
    cdef object obj         # the array itself (a contiguous copy if the caller's was not)
    cdef object dtype
    cdef object device      # torch only
    cdef bint on_host
    cdef const char* data   # NULL unless on_host
    cdef tuple shape
    cdef int64_t row_stride  # bytes between rows (axis 0)
    cdef size_t itemsize


cdef bint _contiguous_from(Py_ssize_t axis, Py_ssize_t ndim, const Py_ssize_t* shape,
                           const Py_ssize_t* strides, Py_ssize_t itemsize):
    """Whether the axes from ``axis`` on are one contiguous run (C order)."""
    cdef Py_ssize_t expected = itemsize
    cdef Py_ssize_t d
    for d in range(ndim - 1, axis - 1, -1):
        if shape[d] > 1 and strides[d] != expected:
            return False
        expected *= shape[d]
    return True


cdef _Array _read_array(object value, int kind, bint batched):
    """``value`` (a batch of rows [n, L, ...], or one row [L, ...]) with each
    row contiguous: the caller's memory, or a contiguous copy."""
    cdef _Array a = _Array.__new__(_Array)
    cdef Py_buffer view
    cdef Py_ssize_t d
    if kind == NUMPY:
        a.dtype = value.dtype
        if a.dtype.hasobject:
            raise TypeError(f"arrays of dtype {a.dtype} hold Python objects and cannot be padded")
        for attempt in range(2):
            try:
                PyObject_GetBuffer(value, &view, PyBUF_RECORDS_RO)
            except (BufferError, ValueError, TypeError):
                # dtypes without a buffer format (datetime64, ...): ask numpy
                a.obj = _numpy().ascontiguousarray(value)
                a.data = <const char*><uintptr_t>a.obj.__array_interface__["data"][0]
                a.shape = a.obj.shape
                a.itemsize = a.dtype.itemsize
                a.row_stride = a.obj.strides[0] if a.obj.ndim else 0
                a.on_host = True
                return a
            try:
                if attempt == 0 and not _contiguous_from(1 if batched else 0, view.ndim, view.shape,
                                                         view.strides, view.itemsize):
                    value = _numpy().ascontiguousarray(value)
                    continue
                a.obj = value
                a.data = <const char*>view.buf
                a.itemsize = view.itemsize
                a.shape = tuple([view.shape[d] for d in range(view.ndim)])
                a.row_stride = view.strides[0] if view.ndim else 0
                a.on_host = True
                return a
            finally:
                PyBuffer_Release(&view)
    # torch
    if not value.is_contiguous():
        value = value.contiguous()
    a.obj = value
    a.dtype = value.dtype
    a.device = value.device
    a.shape = tuple(value.shape)
    a.itemsize = value.element_size()
    # contiguous: a row is the product of the other axes (stride(0) is a slower call)
    a.row_stride = a.itemsize
    for d in range(1, len(a.shape)):
        a.row_stride *= <int64_t>a.shape[d]
    a.on_host = value.is_cpu
    if a.on_host:
        a.data = <const char*><uintptr_t>value.data_ptr()
    return a


cdef str _rows_text(object dtype, tuple trailing):
    """What a feature's rows are, for error messages: "dtype int64, rows of shape [L, 3]"."""
    return f"dtype {dtype}, rows of shape [{', '.join(['L', *map(str, trailing)])}]"


cdef str _describe(object value):
    shape = getattr(value, "shape", None)
    if shape is not None:
        return f"{type(value).__name__} of shape {tuple(shape)}"
    return type(value).__name__


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
    cdef readonly object lengths  # array('I'): each row's length (first feature), for max_batch_length
    cdef list features            # _FeatureRows, in the padder's feature order
    cdef readonly bint on_host


cdef class _Spec:
    """One feature as fixed by the first call: every later call must match."""
    cdef readonly object key
    cdef object dtype
    cdef tuple trailing        # the shape of a row after its first axis
    cdef size_t itemsize
    cdef size_t step_bytes     # bytes per step along a row's first axis
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


cdef class Padder:
    """Pads batches of one processor's calls (the collator of its engine)."""
    cdef readonly str name
    cdef readonly object pad_tokens    # as given: a dict of pad values, one number, or None
    cdef dict pad_by_key
    cdef object default_pad
    cdef readonly bint pad_left
    cdef object pad_to_multiple_of
    cdef tuple buckets
    cdef readonly object device        # target torch device, or None: where the inputs are
    cdef public bint stage_to_device   # for tests: stage host rows even when device is the CPU
    cdef readonly bint spread_kwargs
    cdef _Schema schema                # None until a first call has been read
    cdef object lock
    cdef list arenas                   # uint8 arrays that numpy outputs are views of, for reuse
    cdef object arenas_lock
    cdef uint64_t real_steps           # steps of the callers' rows in collated batches (first feature)
    cdef uint64_t padded_steps         # steps of those batches once padded

    def __init__(self, str name, pad_tokens, str padding_side, *, device=None,
                 pad_to_multiple_of=None, batch_size_buckets=None, bint spread_kwargs=False,
                 bint stage_to_device=False):
        self.name = name
        self.pad_tokens = pad_tokens
        if isinstance(pad_tokens, Mapping):
            self.pad_by_key = dict(pad_tokens)
            self.default_pad = 0
        else:
            self.pad_by_key = {}
            self.default_pad = 0 if pad_tokens is None else pad_tokens
        self.pad_left = padding_side == "left"
        self.pad_to_multiple_of = pad_to_multiple_of
        self.buckets = tuple(sorted(batch_size_buckets)) if batch_size_buckets else ()
        self.device = device
        self.stage_to_device = stage_to_device
        self.spread_kwargs = spread_kwargs
        self.lock = threading.Lock()
        self.arenas = []
        self.arenas_lock = threading.Lock()

    # ---- calls (the caller's thread) ----

    def request(self, features):
        """The ``Rows`` of one call's features; raises TypeError/ValueError to
        this caller for features that cannot be batched with earlier calls'."""
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
                rows.lengths = self.row_lengths(fr, n)
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

    cdef object row_lengths(self, _FeatureRows fr, Py_ssize_t n):
        if fr.blocks.size() == 1:
            return array("I", [<uint32_t>fr.blocks[0].length]) * n
        lengths = array("I", bytes(4 * n))
        cdef uint32_t[::1] out = lengths
        cdef size_t b
        for b in range(fr.blocks.size()):
            out[b] = <uint32_t>fr.blocks[b].length
        return lengths

    cdef _FeatureRows read_feature(self, _Schema schema, _Spec spec, object value, Rows rows):
        cdef _FeatureRows fr = _FeatureRows.__new__(_FeatureRows)
        cdef _Array a
        cdef Block block
        cdef Py_ssize_t i
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
        where = f"feature {spec.key!r}" if batched else f"row {row} of feature {spec.key!r}"
        cdef _Array a = _read_array(value, kind, batched)
        cdef tuple shape = a.shape
        cdef Py_ssize_t skip = 1 if batched else 0
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

    # ---- batches (a worker) ----

    cpdef Py_ssize_t padded_rows(self, Py_ssize_t n):
        """The batch dimension for ``n`` rows: ``n``, or the next bucket."""
        for b in self.buckets:
            if b >= n:
                return b
        return n

    def padding_efficiency(self):
        """Steps of the callers' rows / steps of the padded batches (first
        feature), over every batch collated since the last reset; None before
        the first."""
        return self.real_steps / self.padded_steps if self.padded_steps else None

    def reset_counts(self):
        self.real_steps = 0
        self.padded_steps = 0

    cdef int64_t padded_length(self, int64_t longest):
        if self.pad_to_multiple_of is None:
            return longest
        cdef int64_t m = self.pad_to_multiple_of
        return (longest + m - 1) // m * m

    def collate(self, list spans):
        """The padded batch of ``spans`` [(Rows, first row, row count), ...], as
        a dict of arrays [rows, max length, ...]: numpy if the calls gave numpy
        (and no ``device``), else torch on the target device."""
        cdef Py_ssize_t n = 0
        cdef Py_ssize_t i, first, count
        cdef uint64_t real = 0
        cdef uint32_t longest = 0, length
        cdef carray.array lengths
        for span in spans:
            lengths = (<Rows>span[0]).lengths
            first = span[1]
            count = span[2]
            n += count
            for i in range(first, first + count):
                length = lengths.data.as_uints[i]
                real += length
                if length > longest:
                    longest = length
        cdef Py_ssize_t padded = self.padded_rows(n)
        cdef bint on_host = (<Rows>spans[0][0]).on_host
        out = {}
        for i in range(len(self.schema.specs)):
            spec = self.schema.specs[i]
            if not on_host:
                out[(<_Spec>spec).key] = self.pad_on_device(spec, i, spans, n, padded)
            elif self.device is not None and (self.stage_to_device or self.device.type != "cpu"):
                out[(<_Spec>spec).key] = self.stage(spec, i, spans, n, padded)
            else:
                out[(<_Spec>spec).key] = self.pad_on_host(spec, i, spans, padded)
        # Counted once the batch is padded, with the GIL held: concurrent
        # workers' counts do not mix.
        self.real_steps += real
        self.padded_steps += <uint64_t>padded * <uint64_t>self.padded_length(longest)
        return out

    cdef object pad_on_host(self, _Spec spec, Py_ssize_t feature, list spans, Py_ssize_t padded):
        """C++ padding straight from the callers' buffers, without the GIL."""
        cdef vector[CRowView] rows
        cdef CRowView row
        cdef int64_t longest = 0
        rows.reserve(padded)
        for span in spans:
            _gather(<_FeatureRows>(<Rows>span[0]).features[feature], span[1], span[2], &rows, &longest)
        row.data = NULL
        row.length = 0
        while <Py_ssize_t>rows.size() < padded:
            rows.push_back(row)  # bucket padding: rows of pad only
        cdef int64_t max_length = self.padded_length(longest)
        shape = (padded, max_length) + spec.trailing
        cdef char* dst
        cdef size_t nbytes = padded * max_length * spec.step_bytes
        if self.schema.kind == NUMPY and self.device is None:
            out = self.host_array(shape, spec.dtype, nbytes, &dst)
        else:
            torch = _torch_mod()
            dtype = spec.dtype if self.schema.kind == TORCH else spec.torch_dtype
            same_size = _INT_OF_SIZE.get(spec.itemsize)
            if _numpy() is not None and same_size is not None:
                # torch on an arena too: the tensor's storage holds the numpy
                # view, so the arena stays busy while any view of it lives
                out = torch.from_numpy(self.host_array(shape, same_size, nbytes, &dst))
                if out.dtype != dtype:
                    out = out.view(dtype)
            else:
                out = torch.empty(shape, dtype=dtype)
                dst = <char*><uintptr_t>out.data_ptr()
        cdef const char* pad = spec.pad_bytes
        cdef CPaddingSide side = kPadLeft if self.pad_left else kPadRight
        with nogil:
            pad_rows(rows.data(), rows.size(), spec.step_bytes, max_length, side, pad,
                     spec.itemsize, dst)
        return out

    cdef object host_array(self, tuple shape, object dtype, size_t nbytes, char** data):
        """A new numpy array of ``shape``, on the memory of an earlier batch's
        array once nothing refers to that any more (sets ``data`` to its start).

        A fresh np.empty for every batch would page-fault its memory in each
        time wherever malloc gives large blocks back to the OS (1 ms instead
        of 60 us for 256 rows of 512 int64 steps). An arena is free when the
        pool's list is its only holder: every view of it (the padded array, a
        slice the model kept) holds a reference to it."""
        np = _numpy()
        cdef Py_ssize_t i, spare = -1
        cdef Py_buffer view
        arena = None
        with self.arenas_lock:
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

    cdef object pad_on_device(self, _Spec spec, Py_ssize_t feature, list spans, Py_ssize_t n,
                              Py_ssize_t padded):
        """Device tensors: the torch op pads them where they are (one launch)."""
        cdef _FeatureRows fr
        cdef int64_t longest = 0
        blocks = []
        for span in spans:
            fr = <_FeatureRows>(<Rows>span[0]).features[feature]
            blocks.extend(fr.device_blocks(span[1], span[2]))
            _gather(fr, span[1], span[2], NULL, &longest)
        return self.pad_blocks(spec, blocks, longest, n, padded, blocks[0].dtype, blocks[0].device)

    cdef object stage(self, _Spec spec, Py_ssize_t feature, list spans, Py_ssize_t n,
                      Py_ssize_t padded):
        """Host rows to a device: packed (unpadded) into one pinned buffer, copied
        once, and padded there by the torch op. Rows of one length that are
        adjacent in a call stay together: one block, not one tensor per row."""
        torch = _torch_mod()
        cdef vector[CRowView] rows
        cdef vector[Segment] segments
        cdef int64_t longest = 0
        cdef size_t total = 0, k, r
        cdef size_t step = spec.step_bytes
        cdef size_t row_bytes
        for span in spans:
            _gather(<_FeatureRows>(<Rows>span[0]).features[feature], span[1], span[2], &rows, &longest,
                    &segments)
        for k in range(segments.size()):
            segments[k].offset = total
            row_bytes = <size_t>segments[k].length * step
            total += (segments[k].rows * row_bytes + STAGING_ALIGN - 1) // STAGING_ALIGN * STAGING_ALIGN
        pinned = self.device.type == "cuda"
        host = torch.empty(max(total, 1), dtype=torch.uint8, pin_memory=pinned)
        cdef char* dst = <char*><uintptr_t>host.data_ptr()
        with nogil:
            for k in range(segments.size()):
                row_bytes = <size_t>segments[k].length * step
                if row_bytes:
                    for r in range(<size_t>segments[k].rows):
                        memcpy(dst + segments[k].offset + r * row_bytes,
                               rows[segments[k].first_row + r].data, row_bytes)
        flat = host.to(self.device, non_blocking=pinned)
        dtype = spec.dtype if self.schema.kind == TORCH else spec.torch_dtype
        blocks = []
        for k in range(segments.size()):
            row_bytes = <size_t>segments[k].length * step
            part = flat.narrow(0, segments[k].offset, segments[k].rows * row_bytes).view(dtype)
            blocks.append(part.view((segments[k].rows, segments[k].length) + spec.trailing))
        return self.pad_blocks(spec, blocks, longest, n, padded, dtype, flat.device)

    cdef object pad_blocks(self, _Spec spec, list blocks, int64_t longest, Py_ssize_t n,
                           Py_ssize_t padded, object dtype, object device):
        from batched.torch_ops import pad_stack
        if padded > n:  # bucket padding: rows of pad only
            blocks.append(_torch_mod().empty((padded - n, 0) + spec.trailing, dtype=dtype, device=device))
        return pad_stack(blocks, self.padded_length(longest), spec.pad_value, self.pad_left)

    def split(self, out, list spans):
        """The batch function's output cut into one piece per span (views).

        ``out`` is an array/tensor with the batch on axis 0, a dict or a
        list/tuple of them (as in batched 0.1.5), or a list of one result per
        row. A piece is (how to join it, the part of ``out``)."""
        cdef Py_ssize_t n = 0
        for span in spans:
            n += <Py_ssize_t>span[2]
        cdef Py_ssize_t padded = self.padded_rows(n)
        cdef int how
        if isinstance(out, Mapping):
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
        counts = [span[2] for span in spans]
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


cdef int _gather(_FeatureRows fr, Py_ssize_t begin, Py_ssize_t count, vector[CRowView]* rows,
                 int64_t* longest, vector[Segment]* segments=NULL) except -1:
    """Walks rows [begin, begin + count) of ``fr``: raises ``longest`` to their
    longest length and, where asked, appends them to ``rows`` and one segment
    per block they come from to ``segments``."""
    cdef size_t b = 0
    cdef Py_ssize_t i, take
    cdef Block* block
    cdef CRowView row
    cdef Segment segment
    while count > 0:
        block = &fr.blocks[b]
        b += 1
        if begin >= block.rows:
            begin -= block.rows
            continue
        take = min(block.rows - begin, count)
        row.length = block.length
        if block.length > longest[0]:
            longest[0] = block.length
        if segments != NULL:
            segment.first_row = rows.size()
            segment.rows = take
            segment.length = block.length
            segments.push_back(segment)
        if rows != NULL:
            for i in range(begin, begin + take):
                row.data = block.data + i * block.row_stride
                rows.push_back(row)
        count -= take
        begin = 0
    return 0

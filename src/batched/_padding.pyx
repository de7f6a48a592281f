# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
# distutils: language = c++
"""Padding for the inference front ends: the collator of their engines.

A call hands in a dict of features; each feature is a batch of rows
(``[n, L, ...]``) or a list of rows (``[L, ...]`` each, ragged). Four pieces,
each in its own file, make the ``RowsCollator`` (padding/collator.pxi):

* ``FeatureReader`` (padding/features.pxi) checks a call's features against
  the first call's and records where each row's bytes are (``Rows``): one
  object per call, none per row;
* ``Padder`` (padding/pad.pxi) pads a dispatched batch's rows straight from
  the callers' buffers into one array per feature, with the C++ kernel
  ``pad_rows`` and the GIL released (host memory), or with the torch op
  ``pad_stack`` on the device (CUDA tensors, or ``device=`` staging);
* ``HostBuffers`` (padding/buffers.pxi) is the pool of host memory those
  arrays are views of;
* ``OutputSplitter`` (padding/outputs.pxi) cuts the batch function's output
  back into one piece per call, as views, and joins the pieces of a call that
  was split over several batches.

numpy and torch are never imported here: a value is recognised only if its
module is already loaded, which it is when the caller has made one.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBUF_STRIDES, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.list cimport PyList_GET_ITEM
from cpython.ref cimport PyObject
from libc.stdint cimport int64_t, uint32_t, uint64_t, uintptr_t
from libc.string cimport memcpy
from libcpp.vector cimport vector

from batched._core cimport Collator, _Call
from batched.includes.libbatched cimport CBatch, CPaddingSide, CRowView, CSpan, kPadLeft, kPadRight, pad_rows

import sys
import threading
from array import array
from collections.abc import Mapping


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


# How the pieces of a call split over several batches are joined (OutputSplitter).
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
cdef Py_ssize_t ARENAS = 16     # host buffers a padder keeps for reuse (HostBuffers)
# Padding smaller than this keeps the GIL: a release costs a hand-over to a
# waiting thread and back (tens of us under contention), more than the copy.
cdef size_t NOGIL_BYTES = 1 << 20

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
                # (no format asked: the dtype says it, and numpy builds none then)
                PyObject_GetBuffer(value, &view, PyBUF_STRIDES)
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


include "padding/features.pxi"
include "padding/buffers.pxi"
include "padding/pad.pxi"
include "padding/outputs.pxi"
include "padding/collator.pxi"

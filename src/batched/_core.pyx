# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
# distutils: language = c++
"""The bridge between Python callers and the C++ batching core.

One call of n items is one ``_Call`` record (bridge/calls.pxi): n input slots,
n result slots and one completion, pushed to the scheduler as one entry. An
``Engine`` (bridge/engine.pxi) owns one C++ scheduler, the batch function, a
``Collator`` (bridge/collators.pxi: what a call holds and what a batch is;
the inference front ends' is batched._padding.RowsCollator) and a ``Driver``,
who runs the batches: worker threads that wait without the GIL
(bridge/thread_driver.pxi), or the callers' event loop
(bridge/loop_driver.pxi). Statistics snapshots: bridge/stats.pxi.
docs/architecture.md walks through it.
"""

from cpython.contextvars cimport get_value
from cpython.exc cimport PyErr_CheckSignals
from cpython.list cimport PyList_New, PyList_SET_ITEM
from cpython.pythread cimport PyThread_get_thread_ident
from cpython.ref cimport Py_DECREF, Py_INCREF
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t
from libcpp.vector cimport vector

from batched.includes.libbatched cimport (
    CBatch,
    CBatchOptions,
    CBatchStats,
    CCompletion,
    CDispatchReason,
    CEntry,
    CExpired,
    CLatencyHistogram,
    CPendingNotifications,
    CPipeline,
    CPriorityRule,
    CPushStatus,
    CScheduler,
    CSpan,
    kDispatchReasonCount,
    kHistogramBuckets,
    kNeverNs,
    kNotFinished,
    kPushNoMemory,
    kPushOkMayDispatch,
    kPushQueueFull,
    monotonic_ns,
    push_queued,
    reason_name,
    split_in_two,
    swap_batches,
    CRing,
    ring_bytes_for,
)

import atexit
import contextvars
import os
import threading
import weakref
from collections.abc import Mapping, Sized

from batched._log import logger
from batched.errors import DeadlineExceeded, QueueFullError, ShutdownError

cdef extern from "Python.h":
    bint PyExceptionInstance_Check(object o)

cdef unsigned long _main_thread_ident = threading.main_thread().ident
# Engines alive, shut down at interpreter exit so no worker outlives Python.
_live_engines = weakref.WeakSet()
# Request-scoped settings of the calls made in a context (batched._request:
# batched.priority, batched.deadline), read when a call is queued.
#: the explicit priority of calls made here: lower goes first (0: none)
priority_var = contextvars.ContextVar("batched_priority", default=0)
#: when calls made here must be done, on the core's clock (clock_ns); None: no deadline
deadline_var = contextvars.ContextVar("batched_deadline_ns", default=None)
# The grouping key of the batch that a batch function is running (group_by):
# set in the worker's or the batch task's context (batched.current_key).
_NO_KEY = object()
current_key_var = contextvars.ContextVar("batched_current_key", default=_NO_KEY)
# How often a caller on the main thread looks for Ctrl-C while it waits.
cdef int _SIGNAL_CHECK_MS = 100

include "bridge/calls.pxi"
include "bridge/collators.pxi"
include "bridge/engine.pxi"
include "bridge/thread_driver.pxi"
include "bridge/loop_driver.pxi"
include "bridge/stats.pxi"
include "bridge/ipc.pxi"


def current_key():
    """The grouping key of the batch being run (processors with ``group_by``):
    for a batch function to read, in its thread or task (docs/semantics.md, 12)."""
    key = current_key_var.get()
    if key is _NO_KEY:
        raise LookupError("batched.current_key() is only known inside the batch function "
                          "of a processor with group_by")
    return key


def clock_ns():
    """The core's clock (std::chrono::steady_clock), in nanoseconds: what
    deadlines are measured on."""
    return monotonic_ns()


@atexit.register
def _shutdown_all_at_exit():
    for engine in list(_live_engines):
        engine.shutdown(wait=True, timeout=1.0)


def _after_fork_in_child():
    global batched_worker_engine
    batched_worker_engine = NULL  # a worker that forked: the child's thread is no worker
    for engine in list(_live_engines):
        engine.after_fork()


if hasattr(os, "register_at_fork"):
    # gunicorn --preload, multiprocessing with fork: processors made before the
    # fork work in the child, with workers of its own.
    os.register_at_fork(after_in_child=_after_fork_in_child)

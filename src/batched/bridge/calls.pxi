# Call records, and how their outcome reaches the caller (included by _core.pyx).


cdef class _Call:
    """One call: the request record shared by the caller and the workers.

    Ownership: from a successful push until its last item is handed out (or it
    is drained at shutdown), the scheduler holds one reference to this object,
    taken in Engine.push / Engine.wait_for and released in Engine.finish. The
    C++ core points at ``entry`` during that time only. ``completion`` is made
    only for blocking callers (Engine.call); asyncio callers complete through
    their future.
    """

    def __dealloc__(self):
        if self.completion != NULL:
            self.completion.release()

    cdef int init(self, Py_ssize_t n) except -1:
        """A record of ``n`` items (collators call this first)."""
        if n > 0xFFFFFFFF:
            raise ValueError(f"a call may hold at most {0xFFFFFFFF} items, got {n}")
        self.remaining = n
        self.entry.owner = <void*>self
        self.entry.count = <uint32_t>n
        return 0

    cdef void fail(self, object error, Py_ssize_t index):
        # Keep the failure of the earliest item: that is what the caller sees.
        if self.error is None or index < self.error_index:
            self.error = error
            self.error_index = index

    def cancel(self):
        """The awaiting caller was cancelled: its undispatched items leave the
        queue (docs/semantics.md, 7); results of dispatched ones will be dropped.
        Call on the caller's loop, once the future is cancelled."""
        self.engine.cancel_call(self)


cdef object _outcome(_Call c):
    """What the caller gets: the results (as its collator assembles them), or
    raises its own copy of the error."""
    if c.error is not None:
        raise _own_copy(c.error)
    return c.engine.collator.outcome(c)


def _deliver(list calls):
    """Runs on a caller's event loop: completes the futures of finished calls."""
    cdef _Call c
    for c in calls:
        fut = c.future
        if fut.cancelled():
            continue  # the caller went away; its results are dropped
        try:
            try:
                value = _outcome(c)
            except BaseException as e:
                fut.set_exception(_for_asyncio(e))
            else:
                fut.set_result(value)
        except BaseException as e:  # one odd error object must not strand the others
            if not fut.done():
                fut.set_exception(RuntimeError(f"could not deliver the result: {e!r}"))


_copy_module = None


cdef object _own_copy(object error):
    """A copy of an error for one caller. Every caller of a failed batch gets
    its own exception object, so one caller's traceback (and the frames and
    locals in it) never grows into another's. The traceback from the batch
    function is kept. Falls back to the shared object if it cannot be copied."""
    global _copy_module
    if _copy_module is None:
        import copy as _copy_module
    try:
        mine = _copy_module.copy(error)
    except BaseException:
        return error
    if type(mine) is not type(error):
        return error
    mine.__cause__ = error.__cause__
    mine.__context__ = error.__context__
    mine.__suppress_context__ = error.__suppress_context__
    return mine.with_traceback(error.__traceback__)


cdef object _for_asyncio(object error):
    """Futures refuse StopIteration, and a task that raises KeyboardInterrupt
    or SystemExit stops its loop: those raised by the batch function (on a
    worker) reach asyncio callers wrapped."""
    if isinstance(error, Exception) and not isinstance(error, (StopIteration, StopAsyncIteration)):
        return error
    wrapped = RuntimeError(f"the batch function raised {type(error).__name__}: {error}")
    wrapped.__cause__ = error
    return wrapped


_get_running_loop = None


cdef object _running_loop():
    """The event loop running in this thread, or None."""
    global _get_running_loop
    if _get_running_loop is None:
        from asyncio import _get_running_loop  # fast C accessor; only reached once asyncio is in use
    return _get_running_loop()


cdef _post(dict by_loop):
    """Delivers the calls a batch finished: directly on the loop running in
    this thread (an async batch function's own loop), else with one
    call_soon_threadsafe per loop."""
    here = _running_loop()
    for loop, calls in by_loop.items():
        if loop is here:
            _deliver(calls)
            continue
        try:
            loop.call_soon_threadsafe(_deliver, calls)
        except RuntimeError:
            pass  # the loop is closed: nobody is left to receive these results

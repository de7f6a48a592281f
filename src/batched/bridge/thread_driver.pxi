# The thread driver: worker threads wait for batches (included by _core.pyx).

cdef extern from *:
    """
    // The engine whose worker this thread is (NULL on any other thread).
    static thread_local void* batched_worker_engine = nullptr;
    """
    void* batched_worker_engine


cdef class ThreadDriver(Driver):
    """``num_workers`` Python threads, started on the first call, each waiting
    in Scheduler::wait_pop without the GIL. A worker takes the GIL to run the
    batch function and hand out the results, and wakes the batch's blocking
    callers only after releasing it, so they do not queue for a GIL it still
    holds. Pushes wake a sleeping worker themselves (scheduler.h). Once a
    call has a deadline, one more thread watches the queue, so a caller hears
    that its deadline could not be met when that happens, even while every
    worker runs a batch."""

    def __init__(self, size_t num_workers, bint prefetch=False):
        self.num_workers = num_workers
        self.prefetch = prefetch
        self.threads = []
        self.start_lock = threading.Lock()

    def __dealloc__(self):
        if self.pipeline != NULL:
            del self.pipeline  # (its threads hold the engine, which holds this driver: none runs)

    cdef int start(self, Engine engine) except -1:
        with self.start_lock:
            if self.started or engine.closed:
                return 0
            if self.prefetch:
                self.pipeline = new CPipeline(engine.sched)
            for i in range(self.num_workers + self.prefetch):
                t = threading.Thread(target=_work, args=(engine,), daemon=True,
                                     name=f"batched:{engine.name}:{i}")
                t.start()
                self.threads.append(t)
            self.started = True
        logger().debug("%r started %d worker thread(s)", engine.name, self.num_workers + self.prefetch)
        return 0

    cdef int watch(self, Engine engine) except -1:
        with self.start_lock:
            if self.watching or engine.closed:
                return 0
            t = threading.Thread(target=_watch, args=(engine,), daemon=True,
                                 name=f"batched:{engine.name}:deadlines")
            t.start()
            self.threads.append(t)
            self.watching = True
        return 0

    cdef int refuse_reentry(self, Engine engine) except -1:
        if batched_worker_engine == <void*>engine:
            raise _reentry_error(engine)
        return 0

    cdef int stop(self, Engine engine, bint wait, object timeout) except -1:
        if not wait:
            return 0
        if self.prefetch and batched_worker_engine == <void*>engine:
            return 0  # from inside a batch: the other worker may wait for this one to return
        with self.start_lock:  # a start racing the shutdown has finished starting
            threads = list(self.threads)
        me = threading.current_thread()
        for t in threads:
            if t is not me:  # shutdown from inside the batch function
                t.join(timeout)
        return 0

    cdef int after_fork(self) except -1:
        self.pipeline = NULL  # (the parent's: its threads did not come along; left alone, like the scheduler)
        self.parked_inputs = None
        self.finished = None
        self.threads = []
        self.started = False
        self.watching = False
        self.start_lock = threading.Lock()
        return 0


def _work(Engine engine):
    """A worker thread's body."""
    global batched_worker_engine
    cdef ThreadDriver driver = <ThreadDriver>engine.driver
    cdef CBatch batch
    cdef CPendingNotifications to_notify
    cdef bint ok
    batched_worker_engine = <void*>engine
    while True:
        with nogil:
            # Wake the callers of the last batch only now, without the GIL,
            # so they do not queue for a GIL this thread still holds.
            to_notify.notify_all()
            ok = engine.sched.wait_pop(batch)
            if ok and batch.size and driver.pipeline != NULL:
                driver.pipeline.popped()
        if not ok:
            return
        try:
            engine.fail_expired(batch.expired, &to_notify)
            if batch.size:
                if driver.pipeline == NULL:
                    engine.run_batch(batch, to_notify)
                else:
                    _run_ahead(engine, driver, batch, to_notify)
        except BaseException as e:  # a bug here must not strand callers
            if driver.pipeline != NULL:
                driver.pipeline.formed_nothing()  # (if it failed before it ran or parked its batch)
            engine.fail_rest(batch, e, to_notify)


cdef int _run_ahead(Engine engine, ThreadDriver d, CBatch& batch, CPendingNotifications& to_notify) except -1:
    """A batch with prefetch (docs/semantics.md, 15), collated: run now if no
    batch runs; else parked as the next one, and this worker hands out the
    batch it is swapped for. The running worker, each time its batch returns,
    swaps it for the parked one and calls the function again at once, so the
    function is never called on both workers at the same time and the time
    between two batches is a swap, not a hand-out, a wake-up and a collate."""
    cdef int64_t run_ns = 0
    cdef CBatch* parked
    cdef CPipeline* pipe = d.pipeline  # (a fork inside the function resets d.pipeline in the child)
    inputs, error = engine.collated(batch)
    if error is not None:
        pipe.formed_nothing()
        return engine.end_batch(batch, None, error, 0, to_notify)
    d.parked_inputs = inputs  # (for the running worker, if this one parks; the GIL is held throughout)
    if not pipe.start_or_park(&batch):
        with nogil:
            pipe.wait_handover()
        out, error, run_ns = d.finished
        d.finished = None
        if run_ns < 0:  # the running worker failed: the batch parked here was never run
            return engine.fail_rest(batch, error, to_notify)
        if error is _HANDED_OUT:
            return 0  # split and handed out by the running worker already
        return engine.end_batch(batch, out, error, run_ns, to_notify)
    d.parked_inputs = None
    while True:
        if not to_notify.empty():  # (expired calls, split parts: their callers wait for no batch)
            with nogil:
                to_notify.notify_all()
        try:
            out, error = engine.run_fn(batch, inputs, &run_ns)
            if engine.too_big(error, batch):
                engine.run_parts(batch, run_ns, to_notify)
                out, error = None, _HANDED_OUT
        except BaseException as e:  # a bug here: the parked batch must not wait for ever
            with nogil:
                parked = pipe.take_parked(True)
            if parked != NULL:
                d.parked_inputs = None
                d.finished = (None, e, -1)
                pipe.hand_over()
            raise
        parked = NULL
        if d.pipeline == pipe:  # (else forked inside the function, and this is the child: no other worker)
            with nogil:  # (a batch being formed ahead needs the GIL to be parked)
                parked = pipe.take_parked(False)
        if parked == NULL:
            return 0 if error is _HANDED_OUT else engine.end_batch(batch, out, error, run_ns, to_notify)
        swap_batches(batch, parked[0])
        d.finished = (out, error, run_ns)
        inputs = d.parked_inputs
        d.parked_inputs = None
        pipe.hand_over()


_HANDED_OUT = object()  # (_run_ahead: a split batch, handed out by the worker that ran it)


def _watch(Engine engine):
    """The deadline watcher's body: fails calls as they expire."""
    cdef vector[CExpired] expired
    cdef CPendingNotifications to_notify
    cdef bint ok
    while True:
        with nogil:
            to_notify.notify_all()
            ok = engine.sched.wait_expired(expired)
        if not ok:
            return
        engine.fail_expired(expired, &to_notify)

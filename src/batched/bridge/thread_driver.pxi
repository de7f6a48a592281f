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

    def __init__(self, size_t num_workers):
        self.num_workers = num_workers
        self.threads = []
        self.start_lock = threading.Lock()

    cdef int start(self, Engine engine) except -1:
        with self.start_lock:
            if self.started or engine.closed:
                return 0
            for i in range(self.num_workers):
                t = threading.Thread(target=_work, args=(engine,), daemon=True,
                                     name=f"batched:{engine.name}:{i}")
                t.start()
                self.threads.append(t)
            self.started = True
        logger().debug("%r started %d worker thread(s)", engine.name, self.num_workers)
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
        with self.start_lock:  # a start racing the shutdown has finished starting
            threads = list(self.threads)
        me = threading.current_thread()
        for t in threads:
            if t is not me:  # shutdown from inside the batch function
                t.join(timeout)
        return 0

    cdef int after_fork(self) except -1:
        self.threads = []
        self.started = False
        self.watching = False
        self.start_lock = threading.Lock()
        return 0


def _work(Engine engine):
    """A worker thread's body."""
    global batched_worker_engine
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
        if not ok:
            return
        try:
            engine.fail_expired(batch.expired, &to_notify)
            if batch.size:
                engine.run_batch(batch, to_notify)
        except BaseException as e:  # a bug here must not strand callers
            engine.fail_rest(batch, e, to_notify)


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

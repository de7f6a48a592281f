# The event-loop driver: batches of an async def function run on their
# callers' event loop (included by _core.pyx).

# The batch an async batch function is running, in the context of its task
# (and of the tasks it starts): a call of its own processor from there is refused.
_running_batch = contextvars.ContextVar("batched_running_batch", default=None)


cdef class _LoopBatch:
    """A batch popped by the event-loop driver, owned by the task running it."""
    cdef CBatch batch
    cdef int64_t t0
    cdef bint ended
    cdef Engine engine
    cdef LoopDriver driver
    cdef _Splitter parts  # once the batch was too big (split_on): its parts

    def on_task_done(self, task):
        self.driver.running.discard(task)
        if not self.ended:  # cancelled before its first step
            error = RuntimeError("the batch was cancelled before it ran (its event loop is shutting down?)")
            self.driver.end(self, None, error)


cdef class LoopDriver(Driver):
    """The same policy, driven from one event loop instead of sleeping
    threads: after a push that may make a batch ready (the scheduler says so),
    after a batch returns, and when the one ``loop.call_at`` timer fires (armed
    for the policy's next deadline; while every batch slot is busy, for the
    first expiry of a call with a deadline), the driver fails the calls that
    expired, pops what is ready and runs each batch as a task on the loop, at
    most ``num_workers`` at once. Idle: no timer. An engine with this driver serves callers of this loop only
    (batched.aio makes one per loop), so a batch always runs on its callers' loop.
    """

    def __init__(self, loop, size_t num_workers):
        self.loop = loop
        self.num_workers = num_workers
        self.running = set()
        self.finished_ns = kNotFinished
        self.started = True  # batches run on the callers' loop: nothing to start

    @property
    def timer_armed(self):
        """Whether a timer is armed (never while idle)."""
        return self.timer is not None

    cdef int pushed(self, Engine engine, CPushStatus status) except -1:
        # Otherwise the armed timer, or a batch that returns, will drive.
        if status == kPushOkMayDispatch:
            if self.in_flight < self.num_workers:
                self.drive(engine)
            elif self.watching:
                self.arm_timer(engine)  # its expiry may come before any batch returns
        return 0

    cdef int cancelled(self, Engine engine) except -1:
        if not engine.closed:
            self.arm_timer(engine)  # nothing left to wait for: no timer (and no loop kept alive)
        return 0

    cdef int refuse_reentry(self, Engine engine) except -1:
        b = get_value(_running_batch, None)  # (not .get(): a bound method made per call)
        if b is not None and (<_LoopBatch>b).engine is engine and not (<_LoopBatch>b).ended:
            raise _reentry_error(engine)
        return 0

    cdef int stop(self, Engine engine, bint wait, object timeout) except -1:
        # shutdown() may run on any thread (another loop's, a finalizer, atexit):
        # a handle is cancelled on its own loop. One that fires anyway finds
        # the engine closed.
        handle, self.timer = self.timer, None
        if handle is None:
            return 0
        if _running_loop() is self.loop:
            handle.cancel()
        elif not self.loop.is_closed():
            try:
                self.loop.call_soon_threadsafe(handle.cancel)
            except RuntimeError:
                pass  # closed meanwhile
        return 0

    cdef int after_fork(self) except -1:
        self.timer = None
        self.watching = False
        self.running = set()
        self.in_flight = 0
        self.finished_ns = kNotFinished
        return 0

    cdef int drive(self, Engine engine) except -1:
        """Dispatches what is ready, then arms the timer. On the loop's thread."""
        cdef _LoopBatch b
        cdef vector[CExpired] expired
        cdef bint popped
        if self.in_flight >= self.num_workers and self.watching:
            engine.sched.expire_now(expired)
            engine.fail_expired(expired, NULL)
        while self.in_flight < self.num_workers:
            b = _LoopBatch.__new__(_LoopBatch)
            b.batch.finished_ns = self.finished_ns  # the batch that just returned: the drain rule
            self.finished_ns = kNotFinished
            popped = engine.sched.try_pop(b.batch)
            engine.fail_expired(b.batch.expired, NULL)
            if not popped:
                break
            self.in_flight += 1
            b.t0 = monotonic_ns()
            b.engine = engine
            b.driver = self
            task = self.loop.create_task(_run_on_loop(engine, b))
            # The loop keeps only weak references to tasks; and a task cancelled
            # before its first step never runs its body: the done-callback then
            # ends the batch, so no caller and no batch slot is stranded.
            self.running.add(task)
            task.add_done_callback(b.on_task_done)
        return self.arm_timer(engine)

    cdef int arm_timer(self, Engine engine) except -1:
        cdef int64_t deadline
        if self.in_flight < self.num_workers:
            deadline = engine.sched.next_deadline()
        elif self.watching:
            deadline = engine.sched.next_expiry()  # a batch that returns will drive; expiry cannot wait
        else:
            deadline = kNeverNs  # a batch that returns will drive
        if deadline == kNeverNs:
            # nothing waits, or a batch that returns will drive: no timer
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            return 0
        if self.timer is not None:
            if self.timer_deadline <= deadline:
                return 0  # an earlier or equal timer is armed already
            self.timer.cancel()
        cdef double delay = max(0.0, (deadline - monotonic_ns()) / 1e9)
        if delay > 0.05:
            # Linux lets a long poll timeout (the loop's selector) fire late by
            # 0.1 % of it (5 ms for 5 s); a deadline's guard is 5 ms (policy.h). Wake a
            # little early instead: the drive then finds nothing ready and
            # arms a short timer for the rest.
            delay -= delay / 256 + 0.001
        self.timer = self.loop.call_at(self.loop.time() + delay, self.on_timer, engine)
        self.timer_deadline = deadline
        return 0

    def on_timer(self, Engine engine):
        """The armed timer fired."""
        self.timer = None
        if not engine.closed:
            self.drive(engine)

    def redrive(self, Engine engine):
        """A batch returned, or the settings changed (a callback of its own,
        so the armed timer, if any, stays armed: drive() keeps it, moves it or
        cancels it)."""
        if not engine.closed:
            self.drive(engine)

    cdef int configured(self, Engine engine) except -1:
        if self.loop.is_closed():
            return 0
        if _running_loop() is self.loop:
            self.loop.call_soon(self.redrive, engine)
        else:
            try:
                self.loop.call_soon_threadsafe(self.redrive, engine)
            except RuntimeError:
                pass  # closed meanwhile
        return 0

    def end(self, _LoopBatch b, object out, object error):
        """Hands out the results of a batch, then drives again. Called once
        per batch (by its task, or by its done-callback if it never ran)."""
        if b.ended:
            return
        b.ended = True
        cdef CPendingNotifications none_to_notify  # asyncio callers only: nothing to notify
        if b.parts is None:
            b.engine.end_batch(b.batch, out, error, monotonic_ns() - b.t0, none_to_notify)
        else:  # split: the parts handed out what they ran; the rest fail with ``error``
            if b.parts.unfinished():
                b.parts.fail_all(error or RuntimeError("the batch was cancelled while its parts ran"),
                                 &none_to_notify)
            b.parts.finish()
        self.in_flight -= 1
        self.finished_ns = b.batch.finished_ns
        if not b.engine.closed and not self.loop.is_closed():
            # Drive from a fresh callback rather than from inside this task:
            # callers cancelled meanwhile (a loop shutting down cancels them
            # all) take their items out first, and no task is started from a
            # task that is being cancelled.
            self.loop.call_soon(self.redrive, b.engine)


async def _run_on_loop(Engine engine, _LoopBatch b):
    """Runs one batch of an async batch function on its loop."""
    out = None
    error = None
    _running_batch.set(b)  # this task's context, and that of tasks it starts
    if engine.group_by is not None:
        current_key_var.set((<_Call>b.batch.spans[0].entry.owner).key)  # batched.current_key()
    try:
        inputs = engine.collator.inputs(b.batch)
        b.t0 = monotonic_ns()
        out = await engine.fn(inputs)
    except BaseException as e:  # delivered to the callers; the driver goes on
        error = e
    if engine.too_big(error, b.batch):
        out = None
        try:
            error = await _run_parts(engine, b)
        except BaseException as e:  # an internal error: end() fails what was not handed out
            error = e
    b.driver.end(b, out, error)
    if error is not None and not isinstance(error, (Exception, KeyboardInterrupt, SystemExit)):
        # CancelledError, GeneratorExit: the task itself was stopped. A
        # KeyboardInterrupt/SystemExit of the function went to its callers
        # (wrapped); raised from the task, it would stop the loop.
        raise error


async def _run_parts(Engine engine, _LoopBatch b):
    """The batch was too big (split_on): runs its parts one after the other
    (_Splitter). Returns None, or the error that stopped the task (its
    cancellation): end() fails the parts not run with it."""
    cdef CPendingNotifications none_to_notify
    cdef _Part p
    cdef int64_t t0
    cdef _Splitter parts = _Splitter.__new__(_Splitter)
    parts.start(engine, b.batch, monotonic_ns() - b.t0)  # (if it raises, end() fails the batch whole)
    b.parts = parts
    while parts.stack:
        p = parts.next_part()
        out = None
        error = None
        t0 = monotonic_ns()
        try:
            out = await engine.fn(engine.collator.inputs(p.batch))
        except BaseException as e:
            error = e
        if error is not None and not isinstance(error, (Exception, KeyboardInterrupt, SystemExit)):
            return error  # the task is stopped: end() fails this part and the rest with it
        parts.part_done(p, out, error, monotonic_ns() - t0, &none_to_notify)
    return None

# The engine: call records, push, hand-out, shutdown, fork (included by _core.pyx).


cdef CBatchOptions _core_options(object options, Collator collator) except *:
    """The C++ options of ``options`` (a checked batched._options.Options)."""
    cdef CBatchOptions o
    o.max_batch_size = options.batch_size
    o.timeout_us = <int64_t>(options.timeout_ms * 1000.0 + 0.5)
    o.small_batch_threshold = options.small_batch_threshold
    o.priority_rule = <CPriorityRule><int>options.priority_rule
    o.aging_us = <int64_t>(options.aging_ms * 1000.0 + 0.5)
    o.deadline_us = 0 if options.deadline_ms is None else <int64_t>(options.deadline_ms * 1000.0 + 0.5)
    o.max_queue_size = 0 if options.max_queue_size is None else options.max_queue_size
    o.max_batch_length = 0 if options.max_batch_length is None else options.max_batch_length
    padding = options.padding
    if padding is not None and padding.max_batch_tokens is not None:
        o.max_batch_tokens = padding.max_batch_tokens
        o.pad_to_multiple_of = padding.pad_to_multiple_of or 1
    o.num_workers = options.num_workers
    # A rows call's pieces share one padded length only if it is not split.
    o.keep_calls_whole = collator.keep_calls_whole
    o.adaptive = options.adaptive
    return o


cdef class Engine:
    """One C++ scheduler, the batch function, a collator and a driver.

    The engine owns the call records: it pushes them, hands out each batch's
    results, and fails what is left at shutdown. The collator (collators.pxi,
    batched._padding) says what a call holds and what a batch is; the driver
    who runs batches: worker threads (thread_driver.pxi) or the callers' event
    loop (loop_driver.pxi). Workers and loop tasks hold the engine, never the
    processor that owns it, so a processor can be garbage collected while its
    workers sleep; its finalizer then shuts the engine down.
    """

    def __cinit__(self, fn, options, str name, Collator collator, Driver driver):
        collator.measure_lengths = (options.max_batch_length is not None or
                                    (options.padding is not None and options.padding.max_batch_tokens is not None) or
                                    options.priority_rule == <int>CPriorityRule.kSmallFirstThenShortest)
        self.sched = new CScheduler(_core_options(options, collator))
        self.options = options
        self.fn = fn
        self.name = name
        self.collator = collator
        self.driver = driver
        self.deadlines = options.deadline_ms is not None
        self.group_by = options.group_by
        self.key_ids = {}
        self.next_key_id = 1  # 0 is "no key"
        self.take_split_on(options.split_on)
        _live_engines.add(self)

    def __dealloc__(self):
        if self.sched != NULL:
            # Workers hold the engine while they run, and queued calls hold
            # their callers: nothing can be queued or running here.
            self.sched.shutdown()
            del self.sched
            self.sched = NULL

    # ---- live settings ----

    def configure(self, options):
        """Puts ``options`` (the processor's, changed by Processor.configure
        in batched._options.LIVE only) in force from the next batch."""
        cdef CBatchOptions o = _core_options(options, self.collator)
        cdef bint had_deadlines = self.deadlines
        if options.deadline_ms is not None:
            self.deadlines = True  # (first: a push from now on may get the deadline, and starts the watcher)
        try:
            with nogil:
                self.sched.configure(o)
        except ValueError as e:  # (std::invalid_argument: the Python checks should have caught it)
            self.deadlines = had_deadlines
            raise ValueError(f"batch processor {self.name!r}: {e}") from None
        self.options = options
        self.take_split_on(options.split_on)
        self.driver.configured(self)

    cdef int take_split_on(self, tuple split_on) except -1:
        # One assignment: a worker reads the classes and the names of one setting.
        self.split_kinds = (tuple([k for k in split_on if not isinstance(k, str)]),
                            frozenset([k for k in split_on if isinstance(k, str)]))
        return 0

    cdef bint too_big(self, object error, CBatch& batch):
        """Whether ``error`` says the batch was too big (split_on) and the
        batch can be split: its parts are then retried (docs/semantics.md, 13)."""
        if batch.size < 2 or error is None or (self.collator.keep_calls_whole and batch.spans.size() < 2):
            return False  # (one item, or one call whose rows stay together: it cannot be cut)
        types, names = self.split_kinds
        if types and isinstance(error, types):
            return True
        if names:
            for cls in type(error).__mro__:
                if f"{cls.__module__}.{cls.__qualname__}" in names:
                    return True
        return False

    # ---- callers ----

    def call(self, request):
        """Queues one call and blocks until it is done: an item gives its
        result, a list the list of results (item calls); a rows request its
        rows of the output (rows calls). Thread driver only."""
        if isinstance(request, list) and len(request) == 0:
            return []
        self.driver.refuse_reentry(self)
        if self.group_by is None:
            return self.wait_for(self.collator.new_call(request))
        parts = self.split(request)
        if type(parts) is not list:
            return self.wait_for(self.keyed_call(request, parts))
        return self.wait_for_parts(parts, len(request))

    def submit(self, request, loop):
        """Queues one call (not an empty list) for a caller on ``loop`` and
        returns its record, whose ``future`` completes with what ``call``
        would return. A caller cancelled while awaiting it must call
        ``record.cancel()``: cheaper than a done-callback on every future."""
        self.driver.refuse_reentry(self)
        cdef _Call c
        if self.group_by is None:
            c = self.collator.new_call(request)
        else:
            parts = self.split(request)
            if type(parts) is list:
                return _KeyedRecord(self, parts, len(request), loop)
            c = self.keyed_call(request, parts)
        c.loop = loop
        c.future = loop.create_future()
        self.push(c)
        return c

    # ---- grouping keys (docs/semantics.md, 12) ----

    cdef object split(self, object request):
        """The key of a call whose items share one (an item's, or a rows
        call's features'), or, for a list of items of several keys, the
        parts: a list of (key, positions, items), one per key, in order of
        first appearance."""
        group_by = self.group_by
        if not isinstance(request, list) or not isinstance(self.collator, ItemCollator):
            return _checked_key(self.name, group_by(request))
        groups = {}
        for i, item in enumerate(request):
            key = _checked_key(self.name, group_by(item))
            positions = groups.get(key)
            if positions is None:
                groups[key] = [i]
            else:
                positions.append(i)
        if len(groups) == 1:
            return next(iter(groups))
        return [(key, positions, [request[i] for i in positions]) for key, positions in groups.items()]

    cdef _Call keyed_call(self, object request, object key):
        """A call record of ``request`` under ``key``: equal keys share an
        id for the core while any call holds it (release_key)."""
        cdef _Call c = self.collator.new_call(request)
        held = self.key_ids.get(key)
        if held is None:
            held = [self.next_key_id, 0]
            self.next_key_id += 1
            self.key_ids[key] = held
        held[1] += 1
        c.key = key
        c.entry.key = <uint64_t>held[0]
        return c

    cdef void release_key(self, _Call c):
        """``c`` is done (or was never queued): it no longer holds its key."""
        if c.entry.key == 0:
            return
        c.entry.key = 0
        held = self.key_ids.get(c.key)
        if held is not None:
            held[1] -= 1
            if held[1] == 0:
                del self.key_ids[c.key]

    cdef object wait_for_parts(self, list parts, Py_ssize_t n):
        """A blocking list call of several keys: one call per key, all queued
        before waiting for any, the results put back in the caller's order."""
        cdef _Call c
        calls = []
        try:
            for key, positions, items in parts:
                c = self.keyed_call(items, key)
                c.completion = new CCompletion()
                self.push(c)
                calls.append((positions, c))
        except BaseException:
            for _, c in calls:  # the parts queued already: their results are dropped
                self.cancel_call(c)
            raise
        outcomes = []
        for positions, c in calls:
            self.wait_done(c)
            try:
                outcomes.append((positions, _outcome(c), None))
            except BaseException as e:
                outcomes.append((positions[c.error_index], None, e))
        return _assemble(outcomes, n)

    cdef int prepare(self, _Call c) except -1:
        """Gives ``c`` the priority and the deadline in force where it is made
        (batched.priority, batched.deadline: contextvars); refuses it if that
        deadline has passed already."""
        c.entry.priority = <int32_t>get_value(priority_var, 0)
        at = get_value(deadline_var, None)
        if at is not None:
            if <int64_t>at <= monotonic_ns():
                self.release_key(c)
                raise DeadlineExceeded(
                    f"batch processor {self.name!r}: the deadline of this call had passed when it was made")
            c.entry.deadline_ns = <int64_t>at
            self.deadlines = True
        if self.deadlines and not self.driver.watching:
            self.driver.watch(self)
        return 0

    cdef int push(self, _Call c) except -1:
        """Queues ``c``. The GIL stays held: the push is a few atomic operations,
        and releasing the GIL here would cost a GIL hand-over per call."""
        self.prepare(c)
        c.engine = self
        if not self.driver.started:
            self.driver.start(self)
        Py_INCREF(c)  # the scheduler's reference; released in finish()
        cdef CPushStatus status = self.sched.try_push(&c.entry)
        self.check_push(status, c)
        return self.driver.pushed(self, status)

    cdef object wait_for(self, _Call c):
        """A blocking caller: pushes and waits in one GIL release (one
        hand-over of the GIL per call)."""
        cdef CPushStatus status
        cdef bint done = False
        cdef bint on_main = PyThread_get_thread_ident() == _main_thread_ident
        self.prepare(c)
        c.engine = self
        c.completion = new CCompletion()
        if not self.driver.started:
            self.driver.start(self)
        Py_INCREF(c)  # the scheduler's reference; released in finish()
        with nogil:
            status = self.sched.try_push(&c.entry)
            if push_queued(status):
                if on_main:
                    done = c.completion.wait_for_ms(_SIGNAL_CHECK_MS)
                else:
                    c.completion.wait()
                    done = True
        self.check_push(status, c)
        if not done:
            self.wait_done(c)
        return _outcome(c)

    cdef int wait_done(self, _Call c) except -1:
        """Waits for a queued blocking call. The main thread waits in slices
        so Ctrl-C works; its items stay queued and their results are dropped."""
        cdef bint done = False
        if PyThread_get_thread_ident() != _main_thread_ident:
            with nogil:
                c.completion.wait()
            return 0
        while True:
            with nogil:
                done = c.completion.wait_for_ms(_SIGNAL_CHECK_MS)
            if done:
                return 0
            PyErr_CheckSignals()

    cdef int check_push(self, CPushStatus status, _Call c) except -1:
        if push_queued(status):
            return 0
        Py_DECREF(c)  # the push did not take it
        self.release_key(c)
        logger().debug("%r refused a call of %d items (%s)", self.name, c.entry.count,
                       "queue full" if status == kPushQueueFull else "no memory" if status == kPushNoMemory
                       else "shut down")
        if status == kPushNoMemory:
            raise MemoryError(f"batch processor {self.name!r}: no memory to queue a call of {c.entry.count} items")
        limit = self.sched.max_queue_size()  # (in force at the push: configure may change it)
        if status == kPushQueueFull and c.entry.count > limit:
            raise QueueFullError(
                f"a call of {c.entry.count} items can never fit in batch processor "
                f"{self.name!r}: max_queue_size={limit}")
        if status == kPushQueueFull:
            raise QueueFullError(
                f"batch processor {self.name!r} is full: {self.sched.size_approx()} items are "
                f"queued, max_queue_size={limit}, and this call has "
                f"{c.entry.count}; retry later or raise max_queue_size")
        raise ShutdownError(f"batch processor {self.name!r} has been shut down")

    cdef int cancel_call(self, _Call c) except -1:
        """Takes the undispatched items of ``c`` out of the queue; its results,
        if any are computed, are dropped. Runs with the GIL, so it cannot
        interleave with a worker handing out results."""
        cdef uint32_t removed
        with nogil:
            removed = self.sched.cancel(&c.entry)
        if removed:
            by_loop = self.complete(c, removed, None, NULL)
            if by_loop is not None:
                _post(by_loop)  # delivery skips the cancelled future; this releases the record
            self.driver.cancelled(self)
        return 0

    cdef int fail_expired(self, vector[CExpired]& expired, CPendingNotifications* to_notify) except -1:
        """Fails the calls whose deadline could no longer be met: their items
        left the queue unsent (docs/semantics.md, 11). Clears ``expired``."""
        cdef size_t i
        cdef _Call c
        cdef dict by_loop = None
        if expired.size() == 0:
            return 0
        error = DeadlineExceeded(
            f"batch processor {self.name!r}: the deadline of this call passed, or could no longer be met, "
            f"before its items were sent to a batch")
        for i in range(expired.size()):
            c = <_Call>expired[i].entry.owner
            c.fail(error, expired[i].first_left)  # each caller raises its own copy (_outcome)
            by_loop = self.complete(c, expired[i].removed, by_loop, to_notify)
        expired.clear()
        if by_loop is not None:
            _post(by_loop)
        return 0

    # ---- batches (both drivers) ----

    cdef int run_batch(self, CBatch& batch, CPendingNotifications& to_notify) except -1:
        """Runs a batch of a plain function (thread driver). Whatever fails
        (collating, the function, its output) becomes the callers' error; a
        batch that was too big (split_on) is retried in parts."""
        cdef int64_t run_ns = 0
        out, error = self.call_fn(batch, &run_ns)
        if not self.too_big(error, batch):
            return self.end_batch(batch, out, error, run_ns, to_notify)
        return self.run_parts(batch, run_ns, to_notify)

    cdef int run_parts(self, CBatch& batch, int64_t run_ns, CPendingNotifications& to_notify) except -1:
        """The batch was too big (split_on): runs and hands out its parts
        (thread driver), and counts the batch."""
        cdef _Splitter parts = _Splitter.__new__(_Splitter)
        cdef _Part p
        parts.start(self, batch, run_ns)  # (if it raises, the worker fails the batch: nothing was cut)
        try:
            while parts.stack:
                p = parts.next_part()
                out, error = self.call_fn(p.batch, &run_ns)
                parts.part_done(p, out, error, run_ns, &to_notify)
                with nogil:
                    to_notify.notify_all()  # each part's callers now, not after every retry
        except BaseException as e:  # a bug here must not strand callers
            parts.fail_all(e, &to_notify)
        return parts.finish()

    cdef tuple call_fn(self, CBatch& batch, int64_t* run_ns):
        """(out, error) of the function on ``batch``'s inputs; its run time in ``run_ns``."""
        inputs, error = self.collated(batch)
        if error is not None:
            run_ns[0] = 0
            return None, error
        return self.run_fn(batch, inputs, run_ns)

    cdef tuple collated(self, CBatch& batch):
        """(the batch function's argument for ``batch``, None), or (None, the error)."""
        try:
            return self.collator.inputs(batch), None
        except BaseException as e:  # the batch's callers get it
            return None, e

    cdef tuple run_fn(self, CBatch& batch, object inputs, int64_t* run_ns):
        """(out, error) of the function on ``inputs``; its run time in ``run_ns``."""
        error = None
        out = None
        cdef int64_t t0 = monotonic_ns()
        cdef int64_t t1
        try:
            token = None
            if self.group_by is not None:  # batched.current_key(), in this worker's context
                token = current_key_var.set((<_Call>batch.spans[0].entry.owner).key)
            t0 = monotonic_ns()
            try:
                out = self.fn(inputs)
            finally:
                t1 = monotonic_ns()
                if token is not None:
                    current_key_var.reset(token)
        except BaseException as e:  # the worker survives whatever happens here
            error = e
            t1 = monotonic_ns()
        run_ns[0] = t1 - t0
        return out, error

    cdef int end_batch(self, CBatch& batch, object out, object error, int64_t run_ns,
                       CPendingNotifications& to_notify) except -1:
        """A batch has run (``out``, or ``error``): checks the output, counts
        the batch, hands out every call's share (or the error)."""
        out, error = self.checked(batch, out, error)
        self.sched.finish_batch(batch, run_ns, error is not None)
        self.deliver(batch, out, error, &to_notify)
        self.sched.batch_delivered(batch)  # the service estimate of deadlines
        return 0

    cdef tuple checked(self, CBatch& batch, object out, object error):
        """(out, error) once the collator has checked ``out``."""
        if error is None:
            try:
                out = self.collator.outputs(out, batch)
            except BaseException as e:
                error = e
        return out, error

    cdef int deliver(self, CBatch& batch, object out, object error, CPendingNotifications* to_notify) except -1:
        """Hands out a checked batch's (or part's) results, or its error."""
        if error is not None:
            logger().warning("batch function of %r failed on a batch of %d items: %s: %s",
                             self.name, batch.size, type(error).__name__, error, exc_info=error)
        try:
            self.hand_out(batch, out, error, to_notify[0])
        except BaseException as e:  # a bug here must not strand callers
            self.fail_rest(batch, e, to_notify[0])
        return 0

    cdef int hand_out(self, CBatch& batch, object outs, object error,
                      CPendingNotifications& to_notify) except -1:
        """Puts each span's results (or ``error``) in its call; finishes calls.
        A span handed out gets count 0 (no span of a batch is empty), so
        fail_rest knows which are left: the batch itself keeps the progress."""
        cdef Py_ssize_t first = 0, count
        cdef size_t s
        cdef CSpan* span
        cdef _Call c
        cdef dict by_loop = None
        for s in range(batch.spans.size()):
            span = &batch.spans[s]
            c = <_Call>span.entry.owner
            if error is not None:
                c.fail(error, span.begin)
            else:
                self.collator.store(c, span, outs, s, first)
            first += span.count
            count = span.count
            span.count = 0
            by_loop = self.complete(c, count, by_loop, &to_notify)
        if by_loop is not None:
            _post(by_loop)
        return 0

    cdef int fail_rest(self, CBatch& batch, object error, CPendingNotifications& to_notify) except -1:
        """Last resort after an internal error: the calls of the spans not yet
        handed out get ``error``, so nobody waits forever."""
        cdef size_t s
        cdef CSpan* span
        cdef _Call c
        cdef dict by_loop = None
        cdef Py_ssize_t count
        for s in range(batch.spans.size()):
            span = &batch.spans[s]
            if span.count == 0:
                continue  # handed out already
            c = <_Call>span.entry.owner
            count = span.count
            span.count = 0
            c.fail(error, span.begin)
            by_loop = self.complete(c, count, by_loop, &to_notify)
        if by_loop is not None:
            _post(by_loop)
        return 0

    cdef dict complete(self, _Call c, Py_ssize_t count, dict by_loop,
                       CPendingNotifications* to_notify):
        """``count`` more items of ``c`` are done; finishes ``c`` after its
        last. Returns ``by_loop``, created when an asyncio call needs it."""
        c.remaining -= count
        if c.remaining == 0:
            if c.future is not None and by_loop is None:
                by_loop = {}
            self.finish(c, by_loop, to_notify)
        return by_loop

    cdef int finish(self, _Call c, dict by_loop, CPendingNotifications* to_notify) except -1:
        """The call's last item is done: wake its caller (now, or via
        ``to_notify`` once the worker has released the GIL)."""
        if c.future is None:
            if to_notify != NULL:
                to_notify.add(c.completion)
            else:
                c.completion.notify()
        else:
            calls = by_loop.get(c.loop)
            if calls is None:
                by_loop[c.loop] = [c]
            else:
                (<list>calls).append(c)
        self.release_key(c)
        Py_DECREF(c)  # the scheduler's reference, taken in push()
        return 0

    # ---- lifecycle ----

    def shutdown(self, bint wait=True, timeout=None):
        """Stops the driver; calls still queued fail with ShutdownError. Idempotent."""
        cdef vector[CEntry*] left
        cdef CEntry* e
        cdef _Call c
        cdef dict by_loop = None
        self.closed = True
        with nogil:
            self.sched.shutdown()
            left = self.sched.drain()
        if left.size():
            logger().info("%r shut down with %d call(s) still queued: they fail with ShutdownError",
                          self.name, left.size())
            error = ShutdownError(
                f"batch processor {self.name!r} was shut down before these items were processed")
            for e in left:
                c = <_Call>e.owner
                c.fail(error, e.first_left)
                by_loop = self.complete(c, e.count - e.taken, by_loop, NULL)
            if by_loop is not None:
                _post(by_loop)
        self.driver.stop(self, wait, timeout)

    def after_fork(self):
        """In the child of a fork: the workers did not come along, and the
        scheduler's state (its lock perhaps held, calls of the parent's
        threads queued) belongs to the parent. Start afresh: a new scheduler,
        the driver restarted on the next call. The old scheduler and the calls
        in it are left alone (leaked): no thread of this process waits on them."""
        self.sched = new CScheduler(_core_options(self.options, self.collator))
        self.key_ids = {}  # the parent's calls no longer hold their keys here
        if self.closed:
            self.sched.shutdown()
        self.driver.after_fork()

    # ---- stats (stats.pxi) ----

    def queue_size(self):
        return self.sched.size_approx()

    def clear_stats(self):
        self.sched.reset_stats()

    def stats(self, latency_bounds_s=None):
        """A consistent snapshot of the scheduler's statistics (see _snapshot)."""
        return _snapshot(self.sched.stats(), latency_bounds_s)


# ---- split and retry (split_on; docs/semantics.md, 13) ----

cdef class _Part:
    """A part of a batch that was too big, run on its own (its batch: _core.pxd)."""


cdef class _Splitter:
    """Works through a batch that was too big (the function raised one of
    split_on): its two halves are retried, each split again while it is too
    big, down to single items (a call kept whole is not cut: with one call
    left, its error goes to its caller). Each part's results are handed out
    when it succeeds. Both drivers use it: they pop a part from ``stack``,
    run it, and report it with part_done; finish() counts the batch once."""
    # (attributes in _core.pxd) top: the batch as dispatched, which its driver
    # keeps alive until finish(); stack: the parts to run, the next one last;
    # current: the part running; run_ns: the function's time, every attempt;
    # failed: items that got an error.

    cdef int start(self, Engine engine, CBatch& batch, int64_t run_ns) except -1:
        self.engine = engine
        self.top = &batch
        self.stack = []
        self.run_ns = run_ns
        self.split(batch)
        return 0

    cdef int split(self, CBatch& whole) except -1:
        """Queues the two halves of ``whole`` (the top batch, or a part)."""
        cdef _Part first = _Part.__new__(_Part)
        cdef _Part second = _Part.__new__(_Part)
        if not split_in_two(whole, first.batch, second.batch, self.engine.collator.keep_calls_whole):
            raise AssertionError("split a batch that cannot be cut")  # (too_big said it could)
        self.engine.sched.batch_split(self.top[0], whole.size)
        logger().info("%r: a batch of %d items was too big; its halves are retried (%d and %d items)",
                      self.engine.name, whole.size, first.batch.size, second.batch.size)
        self.stack.append(second)
        self.stack.append(first)
        # The parts hand out every span now: the top batch keeps none.
        cdef size_t s
        for s in range(whole.spans.size()):
            whole.spans[s].count = 0
        return 0

    cdef _Part next_part(self):
        """The next part to run; it is ``current`` until part_done."""
        self.current = self.stack.pop()
        return self.current

    cdef int part_done(self, _Part p, object out, object error, int64_t run_ns,
                       CPendingNotifications* to_notify) except -1:
        """A part ran: splits it again if it was too big, or hands it out."""
        self.run_ns += run_ns
        if self.engine.too_big(error, p.batch):
            self.split(p.batch)
        else:
            out, error = self.engine.checked(p.batch, out, error)
            if error is None:
                self.engine.sched.part_succeeded(p.batch.size)
            else:
                self.failed += p.batch.size
            self.engine.deliver(p.batch, out, error, to_notify)
        self.current = None
        return 0

    cdef bint unfinished(self):
        return self.current is not None or bool(self.stack)

    cdef int fail_all(self, object error, CPendingNotifications* to_notify) except -1:
        """Last resort (an internal error, a cancelled task): the part being
        run (if any) and those not run yet fail with ``error``. (A part cut
        already, or handed out in part, has its spans zeroed: fail_rest skips them.)"""
        cdef _Part p
        for p in ([self.current] if self.current is not None else []) + self.stack:
            self.failed += p.batch.size
            self.engine.fail_rest(p.batch, error, to_notify[0])
        self.current = None
        self.stack = []
        return 0

    cdef int finish(self) except -1:
        """Every part is handed out: counts the batch, once."""
        self.engine.sched.finish_batch_items(self.top[0], self.run_ns, self.failed)
        self.engine.sched.batch_delivered(self.top[0])
        return 0


# ---- drivers: who runs an engine's batches ----
#
# Both take batches from the same C++ scheduler and policy; they differ only
# in who waits for a batch to be ready and where the batch function runs:
# ThreadDriver (thread_driver.pxi) and LoopDriver (loop_driver.pxi).

cdef class Driver:
    """What an engine asks of its driver. Every method runs with the GIL."""

    cdef int start(self, Engine engine) except -1:
        """Before the first push."""
        self.started = True
        return 0

    cdef int watch(self, Engine engine) except -1:
        """Before the first push of a call with a deadline: from now on, calls
        that expire are failed when they do, even while every batch slot is busy."""
        self.watching = True
        return 0

    cdef int pushed(self, Engine engine, CPushStatus status) except -1:
        """After a push that queued a call (``status`` says whether a batch may
        be ready now or the next deadline moved)."""
        return 0

    cdef int cancelled(self, Engine engine) except -1:
        """After a cancelled call took items out of the queue."""
        return 0

    cdef int refuse_reentry(self, Engine engine) except -1:
        """Raises if the caller is one of this engine's own batches: that call
        would wait for the batch that makes it."""
        return 0

    cdef int stop(self, Engine engine, bint wait, object timeout) except -1:
        """After the scheduler has shut down: stops running batches."""
        return 0

    cdef int after_fork(self) except -1:
        """In the child of a fork."""
        return 0

    cdef int configured(self, Engine engine) except -1:
        """After Engine.configure (on any thread): the plan may have changed.
        Workers that sleep in the scheduler were woken by it."""
        return 0


cdef object _reentry_error(Engine engine):
    return RuntimeError(
        f"batch function {engine.name!r} called its own processor from inside a batch: "
        f"that call would wait for the batch that makes it; call the function directly")


cdef object _checked_key(str name, object key):
    """A key of group_by, checked hashable (it is a dict key)."""
    try:
        hash(key)
    except TypeError:
        raise TypeError(f"group_by of batch processor {name!r} returned an unhashable key: "
                        f"{type(key).__name__} {key!r}") from None
    return key


cdef object _assemble(list outcomes, Py_ssize_t n):
    """The results of a list call split by key, in the caller's order; or the
    error of its first failed item. ``outcomes``: (positions, results, None),
    or (the caller's position of the part's first failed item, None, error)."""
    cdef Py_ssize_t first = n
    error = None
    out = [None] * n
    for positions, results, e in outcomes:
        if e is not None:
            if positions < first:
                first, error = positions, e
            continue
        for i, r in zip(positions, results):
            out[i] = r
    if error is not None:
        raise error
    return out


cdef class _KeyedRecord:
    """The record of an asyncio list call split by key: one call per key,
    one future for the caller (Engine.submit)."""
    cdef readonly object future
    cdef list calls  # (positions, _Call)
    cdef Py_ssize_t n
    cdef Py_ssize_t left

    def __init__(self, Engine engine, list parts, Py_ssize_t n, loop):
        cdef _Call c
        self.future = loop.create_future()
        self.n = n
        self.calls = []
        try:
            for key, positions, items in parts:
                c = engine.keyed_call(items, key)
                c.loop = loop
                c.future = loop.create_future()
                engine.push(c)
                self.calls.append((positions, c))
        except BaseException:
            self.cancel()
            raise
        self.left = len(self.calls)
        for _, c in self.calls:
            c.future.add_done_callback(self._part_done)

    def _part_done(self, fut):
        cdef _Call c
        self.left -= 1
        if self.left or self.future.done():
            return
        outcomes = []
        for positions, c in self.calls:
            f = c.future
            if f.cancelled():
                return  # the caller was cancelled: nothing to deliver
            e = f.exception()
            outcomes.append((positions[c.error_index] if e is not None else positions,
                             None if e is not None else f.result(), e))
        try:
            self.future.set_result(_assemble(outcomes, self.n))
        except BaseException as e:
            self.future.set_exception(e)

    def cancel(self):
        """The awaiting caller was cancelled: every part leaves the queue."""
        cdef _Call c
        for _, c in self.calls:
            c.future.cancel()
            c.cancel()

"""The server side of ``batched.serve``: one processor, fed by the calls of
client processes (batched.ipc.client) through shared memory.

The server's thread accepts clients, reads their rings and queues each
request on the processor, as a call of its own (the processor's policy
batches them with everything else it is given). Its outcome goes back from
wherever it completes: with a processor whose batches run on worker threads,
straight from the worker that ran the batch (no hop to another thread); with
an ``async def`` batch function, from the server's event loop, which runs the
batches.
"""

from __future__ import annotations

import array
import atexit
import concurrent.futures
import errno
import functools
import mmap
import os
import select
import signal
import socket
import threading
import time
import weakref

from batched._core import ShmRing, deadline_var, priority_var
from batched._log import logger
from batched.errors import ServerGoneError
from batched.ipc._channel import (
    ANSWER_HEAD,
    CANCEL,
    DEFAULT_RING_BYTES,
    ERROR,
    REQUEST,
    Spin,
    REQUEST_HEAD,
    RESULT,
    RESULTS,
    STATS,
    Channel,
    check_platform,
    checked_name,
    dumps,
    hello,
    loads,
    peer_credentials,
    socket_path,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Optional

_HANDSHAKE_TIMEOUT_S = 5.0
# Servers alive in this process: a child forked from it closes their sockets,
# so that clients still see the server go when it does.
_live: weakref.WeakSet[Server] = weakref.WeakSet()


class _Outcome:
    """The future of a call the server made for a client (what _Outlet makes):
    completed on the thread that finished its batch, where its callbacks
    (the server's answer) run at once. The part of asyncio's Future API that
    the bridge uses, with none of its cost: no loop, no condition variable."""

    __slots__ = ("_lock", "_state", "_value", "_callbacks")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = 0  # 0 pending, 1 result, 2 exception, 3 cancelled
        self._value: Any = None
        self._callbacks: list[Any] = []

    def done(self) -> bool:
        return self._state != 0

    def cancelled(self) -> bool:
        return self._state == 3

    def _settle(self, state: int, value: Any) -> bool:
        with self._lock:
            if self._state:
                return False
            self._state, self._value = state, value
            callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            fn(self)
        return True

    def set_result(self, value: Any) -> None:
        if not self._settle(1, value):
            raise concurrent.futures.InvalidStateError("the outcome was set already")

    def set_exception(self, error: BaseException) -> None:
        if not self._settle(2, error):
            raise concurrent.futures.InvalidStateError("the outcome was set already")

    def cancel(self) -> bool:
        return self._settle(3, None)

    def add_done_callback(self, fn: Any) -> None:
        with self._lock:
            if not self._state:
                self._callbacks.append(fn)
                return
        fn(self)

    def exception(self) -> Optional[BaseException]:
        if self._state == 3:
            raise concurrent.futures.CancelledError()
        return self._value if self._state == 2 else None

    def result(self) -> Any:
        if self._state == 2:
            raise self._value
        if self._state == 3:
            raise concurrent.futures.CancelledError()
        return self._value


# The answers of the batch being handed out on this thread, by client:
# (server, call ids, results), sent as one record per client (_Outlet).
_batch_answers = threading.local()


class _Outlet:
    """What Engine.submit takes for a caller's event loop, for the calls the
    server makes for its clients: their futures complete on the thread that
    finished the batch (a worker, or the server's loop), which sends the
    answers at once, those of one client in one record."""

    create_future = _Outcome

    @staticmethod
    def call_soon_threadsafe(fn: Any, *args: Any) -> None:
        answers: dict[_Client, tuple[Server, list[int], list[Any]]] = {}
        _batch_answers.by_client = answers
        try:
            fn(*args)  # the bridge's _deliver: completes the outcomes (Server._answer collects)
        finally:
            _batch_answers.by_client = None
            for client, (server, ids, results) in answers.items():
                server._send_results(client, ids, results)


_OUTLET = _Outlet()


class _Client:
    """One connected client process: its channel, and the calls it has in
    flight here (call id -> the processor's record of it)."""

    __slots__ = ("channel", "pid", "pending", "__weakref__")

    def __init__(self, channel: Channel, pid: int) -> None:
        self.channel = channel
        self.pid = pid
        self.pending: dict[int, Any] = {}


def _cancel(record: Any) -> None:
    """Takes a call's undispatched items out of the queue; drops its results."""
    record.future.cancel()
    cancel = getattr(record, "cancel", None)
    if cancel is not None:
        cancel()


def _error_parts(error: BaseException) -> list[Any]:
    """An exception as record parts: (error, its cause), each itself if it
    pickles, else a RuntimeError that names it. Tracebacks stay here (the
    processor logs a failed batch's)."""
    return dumps((_portable(error), _portable(error.__cause__)))


def _portable(error: Optional[BaseException]) -> Optional[BaseException]:
    """``error`` if it pickles and unpickles, else a RuntimeError that names it."""
    if error is None:
        return None
    import pickle  # noqa: PLC0415

    try:
        pickle.loads(pickle.dumps(error, protocol=5))  # one that pickles but cannot unpickle fails here, not there
        return error
    except Exception:
        return RuntimeError(f"the server's batch call raised {type(error).__qualname__}: {error}")


class Server:
    """Serves ``processor`` under ``name`` (see ``serve``). ``start()`` runs it
    on a thread of its own; ``serve_forever()`` in the calling thread;
    ``stop()`` ends either."""

    def __init__(self, processor: Any, name: str, *, ring_bytes: int = DEFAULT_RING_BYTES) -> None:
        from batched._frontend import PaddingAttributes, Processor, name_of  # noqa: PLC0415

        check_platform()
        if not isinstance(processor, Processor):
            raise TypeError("serve() takes a batch processor (made by batched.dynamically, "
                            f"batched.aio.dynamically or their inference versions), got {type(processor).__name__}")
        if type(ring_bytes) is not int or not 1 << 16 <= ring_bytes <= 1 << 40:
            raise ValueError(f"ring_bytes must be an int from 65536 to 2**40, got {ring_bytes!r}")
        self.name = checked_name(name)
        self.processor: Any = processor  # one of the four front ends' processors
        self.function_name = name_of(processor.batch_func)
        self.ring_bytes = ring_bytes
        self.inference = isinstance(processor, PaddingAttributes)
        self.is_aio = hasattr(processor, "_engine_for")
        # An async def batch function runs on an event loop: the server runs one.
        self.needs_loop = self.is_aio and bool(getattr(processor, "is_async", False) or processor.options.cache is not None)
        self.path = socket_path(name)
        self._clients: dict[int, _Client] = {}  # by the fd of its socket, and of its eventfd
        self._stopping = False
        self._active = False  # the last wake-up read requests
        self._spin = Spin()
        self._closed = False
        self._thread: Optional[threading.Thread] = None
        self._loop: Any = None
        self._listener = self._listen()
        self._epoll = select.epoll()
        self._stop_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._epoll.register(self._listener.fileno(), select.EPOLLIN)
        self._epoll.register(self._stop_fd, select.EPOLLIN)
        _live.add(self)

    # ---- set-up ----

    def _listen(self) -> socket.socket:
        """The listening socket at ``path``. A socket file left by a server
        that died is removed; one of a live server is refused."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.bind(self.path)
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                sock.close()
                raise
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                probe.connect(self.path)
            except (ConnectionRefusedError, FileNotFoundError):
                os.unlink(self.path)  # nobody listens: left by a server that died
                sock.bind(self.path)
            else:
                sock.close()
                raise RuntimeError(f"a server named {self.name!r} is running already "
                                   f"(pid {peer_credentials(probe)[0]}, {self.path})") from None
            finally:
                probe.close()
        os.chmod(self.path, 0o600)
        self._inode = os.stat(self.path).st_ino  # to remove only our own socket file
        sock.listen(128)
        sock.setblocking(False)
        return sock

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                logger().warning("batched.serve(%r): accept failed: %s", self.name, e)
                return
            try:
                self._admit(sock)
            except Exception as e:
                logger().warning("batched.serve(%r): a client could not connect: %s", self.name, e)
                sock.close()

    def _admit(self, sock: socket.socket) -> None:
        """Hands a new client its segment and eventfds, if it runs as this user."""
        pid, uid = peer_credentials(sock)
        if uid != os.getuid():
            logger().warning("batched.serve(%r): refused a client of another user", self.name)
            sock.close()
            return
        ring_at = ShmRing.bytes_for(self.ring_bytes)
        size = 2 * ring_at
        memfd = os.memfd_create(f"batched-{self.name}", os.MFD_CLOEXEC)
        try:
            os.ftruncate(memfd, size)
            memory = mmap.mmap(memfd, size)
            requests = ShmRing(memory, 0, self.ring_bytes)
            answers = ShmRing(memory, ring_at, self.ring_bytes)
            wake_server = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
            wake_client = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
            sock.settimeout(_HANDSHAKE_TIMEOUT_S)
            info = hello({"name": self.name, "pid": os.getpid(), "function": self.function_name,
                          "aio": self.is_aio, "inference": self.inference,
                          "segment_bytes": size, "answers_at": ring_at})
            socket.send_fds(sock, [info], [memfd, wake_server, wake_client])
        finally:
            os.close(memfd)
        sock.setblocking(False)
        client = _Client(Channel(sock, memory, answers, requests, wake_client, wake_server), pid)
        self._clients[sock.fileno()] = client
        self._clients[wake_server] = client
        self._epoll.register(sock.fileno(), select.EPOLLIN | select.EPOLLRDHUP)
        self._epoll.register(wake_server, select.EPOLLIN)

    def _drop(self, client: _Client) -> None:
        """A client is gone (its process ended or it closed): its queued items
        leave the queue, results still to come are dropped, its segment goes."""
        ch = client.channel
        for fd in (ch.sock.fileno(), ch.wake_me):
            if self._clients.pop(fd, None) is not None:
                try:
                    self._epoll.unregister(fd)
                except (OSError, ValueError):
                    pass
        pending = list(client.pending.values())
        client.pending.clear()
        for record in pending:
            _cancel(record)
        ch.close()

    # ---- the loop ----

    def serve_forever(self) -> None:
        """Serves in this thread until ``stop()`` (or, on the main thread,
        Ctrl-C or SIGTERM). Then the socket is removed and every client is
        disconnected (their calls still waiting fail with ServerGoneError)."""
        restore = self._catch_sigterm()
        try:
            if self.needs_loop:
                self._serve_on_loop()
            else:
                while not self._step(-1):
                    pass
                self._finish_in_flight(lambda t: self._step(t))
        except KeyboardInterrupt:
            if threading.current_thread() is not threading.main_thread():
                raise
            logger().info("batched.serve(%r): stopped by a signal", self.name)
        finally:
            if restore is not None:
                signal.signal(signal.SIGTERM, restore)
            self._close()

    def _catch_sigterm(self) -> Any:
        """On the main thread, SIGTERM stops the server as Ctrl-C does, so that
        ``kill`` removes its socket too."""
        if threading.current_thread() is not threading.main_thread():
            return None
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return None

        def on_sigterm(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt("SIGTERM")

        return signal.signal(signal.SIGTERM, on_sigterm)

    def _finish_in_flight(self, step: Any, grace_s: float = 5.0) -> None:
        """After stop(): answers the calls in flight (new ones are refused), for
        at most ``grace_s``."""
        end = time.monotonic() + grace_s
        while any(c.pending for c in self._clients.values()) and time.monotonic() < end:
            step(0.01)

    def _step(self, timeout: float) -> bool:
        """Waits up to ``timeout`` s (-1: until woken) for clients, then reads
        every ring. Returns True once stop() was called."""
        clients = set(self._clients.values())
        if timeout != 0 and self._active and self._spin.wait([c.channel.incoming for c in clients]):
            timeout = 0  # a request came while this thread spun: no need to sleep (and be woken)
        if timeout != 0 and not self._arm_wakeups(clients):
            timeout = 0
        events = self._epoll.poll(timeout)
        for c in clients:
            c.channel.incoming.awake()
        self._handle_events(events)
        self._read_all()
        return self._stopping

    @staticmethod
    def _arm_wakeups(clients: set[_Client]) -> bool:
        """Before this thread blocks: asks every client to wake it with its next
        request. False if a request came meanwhile (do not block)."""
        asleep = True
        for c in clients:
            asleep = c.channel.incoming.sleep() and asleep
        return asleep

    def _handle_events(self, events: list[tuple[int, int]]) -> None:
        for fd, mask in events:
            if fd == self._listener.fileno():
                if not self._stopping:
                    self._accept()
            elif fd == self._stop_fd:
                self._stopping = True
            else:
                client = self._clients.get(fd)
                if client is None:
                    continue
                if fd == client.channel.wake_me:
                    client.channel.take_wakeup()
                elif mask & (select.EPOLLHUP | select.EPOLLRDHUP | select.EPOLLERR) or not client.channel.peer_alive():
                    client.channel.drain(functools.partial(self._on_record, client))  # what it sent before it went
                    self._drop(client)

    def _read_all(self) -> None:
        read = 0
        for client in set(self._clients.values()):
            client.channel.flush()
            read += client.channel.drain(functools.partial(self._on_record, client))
        self._active = read > 0  # the next wait spins first: more may come soon

    def _serve_on_loop(self) -> None:
        import asyncio  # noqa: PLC0415

        loop = self._loop = asyncio.new_event_loop()
        stopped = loop.create_future()
        scheduled = False

        def on_ready() -> None:
            nonlocal scheduled
            scheduled = False
            if self._step(0) and not stopped.done():
                stopped.set_result(None)
                return
            if not self._arm_wakeups(set(self._clients.values())) and not scheduled:
                scheduled = True  # a request came meanwhile: read it on the next turn of the loop
                loop.call_soon(on_ready)

        async def run() -> None:
            loop.add_reader(fd, on_ready)
            try:
                await stopped
                end = loop.time() + 5.0
                while any(c.pending for c in self._clients.values()) and loop.time() < end:
                    await asyncio.sleep(0.01)
                    self._step(0)
            finally:
                loop.remove_reader(fd)

        fd = self._epoll.fileno()
        main = loop.create_task(run())
        try:
            loop.run_until_complete(main)
        except BaseException:
            main.cancel()
            try:
                loop.run_until_complete(main)
            except BaseException:
                pass
            raise
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    # ---- requests ----

    def _on_record(self, client: _Client, tag: int, parts: list[memoryview]) -> None:
        if tag == REQUEST:
            call_id, deadline, priority, _ = REQUEST_HEAD.unpack(parts[0])
            self._on_request(client, call_id, deadline, priority, parts[1:])
        elif tag == CANCEL:
            record = client.pending.pop(ANSWER_HEAD.unpack(parts[0])[0], None)
            if record is not None:
                _cancel(record)
        elif tag == STATS:
            call_id = ANSWER_HEAD.unpack(parts[0])[0]
            try:
                self._send(client, call_id, RESULT, dumps(self.processor.stats))
            except Exception as e:
                self._send(client, call_id, ERROR, _error_parts(e))

    def _on_request(self, client: _Client, call_id: int, deadline: int, priority: int,
                    payload: list[memoryview]) -> None:
        if self._stopping:
            self._send(client, call_id, ERROR, _error_parts(ServerGoneError(
                f"the server {self.name!r} is stopping: the call was not queued")))
            return
        try:
            request = loads(payload)
        except Exception as e:
            error = TypeError(f"the server {self.name!r} could not unpickle the call: {e!r}")
            self._send(client, call_id, ERROR, _error_parts(error))
            return
        try:
            record = self._submit(request, deadline, priority)
        except Exception as e:  # bad input, QueueFullError, DeadlineExceeded, ShutdownError: that caller's
            self._send(client, call_id, ERROR, _error_parts(e))
            return
        client.pending[call_id] = record
        record.future.add_done_callback(functools.partial(self._answer, client, call_id))

    def _submit(self, request: Any, deadline: int, priority: int) -> Any:
        """Queues a client's call on the processor, with its deadline and
        priority; returns its record (its ``future`` completes with the outcome)."""
        deadline_token = deadline_var.set(deadline) if deadline else None
        priority_token = priority_var.set(priority) if priority else None
        try:
            proc = self.processor
            if not self.needs_loop:
                return proc._engine.submit(request, _OUTLET)
            if proc.options.cache is None:  # batches run on this loop; outcomes come through the outlet
                return proc._engine_for(self._loop).submit(request, _OUTLET)
            return _TaskRecord(self._loop.create_task(proc(request)))
        finally:
            if priority_token is not None:
                priority_var.reset(priority_token)
            if deadline_token is not None:
                deadline_var.reset(deadline_token)

    def _answer(self, client: _Client, call_id: int, future: Any) -> None:
        """A call is done: its outcome goes back (not if it was cancelled)."""
        if client.pending.pop(call_id, None) is None or future.cancelled():
            return
        error = future.exception()
        if error is None:
            collected = getattr(_batch_answers, "by_client", None)
            if collected is not None:  # sent with the other answers of its batch to this client
                entry = collected.get(client)
                if entry is None:
                    collected[client] = entry = (self, [], [])
                entry[1].append(call_id)
                entry[2].append(future.result())
            else:
                self._send_results(client, [call_id], [future.result()])
            return
        self._send(client, call_id, ERROR, _error_parts(error))

    def _send_results(self, client: _Client, ids: list[int], results: list[Any]) -> None:
        """The results of calls of ``client`` (one batch's): one record; one
        record each if there is one, or if they do not pickle or fit together."""
        if len(ids) > 1:
            try:
                client.channel.send(RESULTS, [array.array("Q", ids).tobytes(), *dumps(results)])
                return
            except Exception:
                pass  # each on its own: the one at fault fails alone
        for call_id, result in zip(ids, results):
            try:
                parts = dumps(result)
            except Exception as e:
                error = TypeError(f"the result of {self.function_name} could not be pickled to go back "
                                  f"to the client: {e!r}")
                self._send(client, call_id, ERROR, _error_parts(error))
            else:
                self._send(client, call_id, RESULT, parts)

    def _send(self, client: _Client, call_id: int, tag: int, parts: list[Any]) -> None:
        head = ANSWER_HEAD.pack(call_id)
        try:
            client.channel.send(tag, [head, *parts])
        except ValueError:
            size = ShmRing.payload_of(parts)
            error = ValueError(f"the answer of {size} bytes is over the limit of {client.channel.max_payload} "
                               f"bytes of one record (batched.serve(..., ring_bytes=) sets it)")
            client.channel.send(ERROR, [head, *_error_parts(error)])

    # ---- lifecycle ----

    def start(self) -> Server:
        """Serves on a thread of its own; returns self."""
        if self._thread is not None:
            raise RuntimeError(f"the server {self.name!r} was started already")
        self._thread = threading.Thread(target=self.serve_forever, name=f"batched:serve:{self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: Optional[float] = 10.0) -> None:
        """Stops serving: new connections and calls are refused, calls in
        flight are answered (for up to 5 s), then every client is
        disconnected and the socket removed. Idempotent."""
        self._stopping = True
        try:
            os.eventfd_write(self._stop_fd, 1)
        except OSError:
            pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stopping = True
        try:
            if os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)
        except OSError:
            pass
        self._listener.close()
        for client in set(self._clients.values()):
            self._drop(client)
        self._epoll.close()
        os.close(self._stop_fd)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _forget_in_child(self) -> None:
        """In a child forked from the server's process: close the inherited sockets."""
        self._closed = True
        self._listener.close()
        for client in set(self._clients.values()):
            client.channel.sock.close()

    def __repr__(self) -> str:
        state = "stopped" if self._closed else "serving"
        return f"<batched Server {self.name!r} of {self.function_name} {state}, {len(set(self._clients.values()))} clients>"


class _TaskRecord:
    """The record of a call made through the processor's own ``__call__`` (a
    processor with a cache): its task is its future."""

    __slots__ = ("future",)

    def __init__(self, task: Any) -> None:
        self.future = task


def _forget_servers() -> None:
    for server in list(_live):
        server._forget_in_child()


def _stop_all_at_exit() -> None:
    """Servers still running at interpreter exit stop: their sockets go, and
    their clients hear of it at once."""
    for server in list(_live):
        server.stop(timeout=5.0)


os.register_at_fork(after_in_child=_forget_servers)
atexit.register(_stop_all_at_exit)


def serve(processor: Any, name: str, *, ring_bytes: int = DEFAULT_RING_BYTES, block: bool = True) -> Server:
    """Serves ``processor`` to other processes of this user on this machine,
    under ``name``: ``batched.connect(name)`` in any of them gives a client
    that is called like the processor itself, and the processor batches the
    calls of every client together, under its own options.

    ``block=True`` (the default) serves until Ctrl-C, SIGTERM (on the main
    thread) or ``stop()`` from another thread; ``block=False`` serves on a
    thread of its own and returns the running Server at once (``stop()``
    it, or use it as a context manager). ``ring_bytes``: each client's ring
    each way; one call's payload, or its answer, may take half of it.

    Requests and answers travel through shared memory made for each client
    alone; only processes of the same user can connect (docs/scaling.md).
    """
    server = Server(processor, name, ring_bytes=ring_bytes)
    if not block:
        return server.start()
    server.serve_forever()
    return server

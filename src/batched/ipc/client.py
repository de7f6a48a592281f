"""The client side of ``batched.connect``: a processor served by another
process (batched.ipc.server), called as if it were here.

Each client process has one connection per server (made again after a fork,
or after the server went and came back). Calls from any thread or event
loop write their request to the connection's ring; one reader thread per
connection, asleep on its eventfd while nothing comes, hands each answer to
its caller: a blocking caller is woken directly, an asyncio caller through
its loop (one ``call_soon_threadsafe`` per loop per wake-up).
"""

from __future__ import annotations

import array
import itertools
import mmap
import os
import select
import socket
import threading
import time
import weakref

from batched._core import Flag, ShmRing, clock_ns, deadline_var, priority_var
from batched.errors import DeadlineExceeded, ServerGoneError, ShutdownError
from batched.ipc._channel import (
    ANSWER_HEAD,
    CANCEL,
    ERROR,
    HANDED_FDS,
    REQUEST,
    REQUEST_HEAD,
    RESULTS,
    SPIN_NS,
    Spin,
    STATS,
    Channel,
    check_platform,
    checked_name,
    dumps,
    loads,
    parse_hello,
    peer_credentials,
    socket_path,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Optional

_CONNECT_TIMEOUT_S = 5.0
# Connections alive in this process: a forked child must not use its
# parent's (one ring, two writers), nor keep its socket open.
_live: weakref.WeakSet[_Connection] = weakref.WeakSet()


class _Waiter:
    """A blocking caller: it reads the answers itself while nobody else does
    (no hand-over from the reader thread, whose wake-up can cost more than
    the whole call), spinning for its own as long as the connection's
    ``Spin`` says; then it sleeps on a lock that whoever reads its answer
    releases."""

    __slots__ = ("done", "lock", "ok", "value")

    def __init__(self) -> None:
        self.done = Flag()
        self.lock = threading.Lock()
        self.lock.acquire()
        self.ok = False
        self.value: Any = None

    def settle(self, ok: bool, value: Any, by_loop: dict[Any, list[Any]]) -> None:
        self.ok, self.value = ok, value
        self.done.set()
        self.lock.release()

    def wait(self, conn: _Connection) -> None:
        budget = conn.spin.budget()
        if budget:
            conn.reading_callers.add(self)  # (a set: add and discard are atomic under the GIL, += is not)
            try:
                found = self._read_own(conn, budget)
            finally:
                conn.reading_callers.discard(self)
                conn.rearm_reader()
            conn.spin.paid(found, budget)
        if not self.done.spin(0):
            self.lock.acquire()

    def _read_own(self, conn: _Connection, budget: int) -> bool:
        """Reads answers (everyone's) until its own comes, for ``budget`` ns at
        most; the server need not wake the reader thread meanwhile."""
        ring = conn.channel.incoming
        end = clock_ns() + budget
        ring.awake()
        while not self.done.spin(0):
            if conn.read_lock.acquire(blocking=False):
                try:
                    if conn.channel.closed:
                        break
                    conn.read_answers()
                finally:
                    conn.read_lock.release()
                if self.done.spin(0):
                    break
            left = end - clock_ns()
            if left <= 0:
                break
            self.done.spin(left, ring)  # until answered (by whoever reads), or an answer to read comes
        return bool(self.done.spin(0))


class _AsyncWaiter:
    """An asyncio caller: its future, completed on its loop."""

    __slots__ = ("loop", "future")

    def __init__(self, loop: Any) -> None:
        self.loop = loop
        self.future = loop.create_future()

    def settle(self, ok: bool, value: Any, by_loop: dict[Any, list[Any]]) -> None:
        calls = by_loop.get(self.loop)
        if calls is None:
            by_loop[self.loop] = calls = []
        calls.append((self.future, ok, value))


def _post(by_loop: dict[Any, list[Any]]) -> None:
    """Completes answered asyncio calls: one call_soon_threadsafe per loop."""
    for loop, calls in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle_all, calls)
        except RuntimeError:
            pass  # that loop is closed: nobody waits there


def _settle_all(calls: list[tuple[Any, bool, Any]]) -> None:
    """On a caller's loop: completes the futures of answered calls."""
    for future, ok, value in calls:
        if future.done():
            continue  # the caller was cancelled
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


class _Connection:
    """This process's connection to one server."""

    def __init__(self, name: str, path: str) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(_CONNECT_TIMEOUT_S)
        try:
            sock.connect(path)
            if peer_credentials(sock)[1] != os.getuid():
                raise PermissionError(f"the server at {path} runs as another user")
            data, fds, _, _ = socket.recv_fds(sock, 4096, HANDED_FDS)
        except (FileNotFoundError, ConnectionRefusedError) as e:
            sock.close()
            raise ServerGoneError(f"no server named {name!r} is running (nothing listens at {path})") from e
        except BaseException:
            sock.close()
            raise
        if len(fds) != HANDED_FDS:
            for fd in fds:
                os.close(fd)
            sock.close()
            raise ServerGoneError(f"the server {name!r} closed the connection while it was made")
        memfd, wake_server, wake_client = fds
        try:
            info = parse_hello(data)
            memory = mmap.mmap(memfd, info["segment_bytes"])
        except BaseException:
            for fd in fds:
                os.close(fd)
            sock.close()
            raise
        os.close(memfd)
        sock.setblocking(False)
        self.name = name
        self.info = info
        self.channel = Channel(sock, memory, ShmRing(memory, 0), ShmRing(memory, info["answers_at"]),
                               wake_server, wake_client)
        self.pending: dict[int, Any] = {}
        self.ids = itertools.count(1)
        self.gone: Optional[str] = None
        self.closing: Optional[str] = None
        self.read_lock = threading.Lock()  # whoever reads the answers ring holds it
        self.spin = Spin()  # the blocking callers' (one budget: they wait for the same server)
        # The reader thread's spins are shorter: its answers go on to an event
        # loop's wake-up anyway, and on a few cores a spinning reader in each
        # client takes CPU from the server.
        self.reader_spin = Spin(SPIN_NS // 4)
        # The reader thread is (about to be) asleep in poll; blocking callers
        # reading their own answers meanwhile (they keep its wake-up off).
        self.reader_polling = False
        self.reading_callers: set[_Waiter] = set()
        _live.add(self)
        self.reader = threading.Thread(target=self._read, name=f"batched:connect:{name}", daemon=True)
        self.reader.start()

    # ---- the reader thread ----

    def _read(self) -> None:
        ch = self.channel
        poller = select.poll()
        poller.register(ch.wake_me, select.POLLIN)
        poller.register(ch.sock.fileno(), select.POLLIN | select.POLLRDHUP)
        reason = f"the server {self.name!r} (pid {self.info['pid']}) is gone"
        try:
            while True:
                with self.read_lock:
                    read = self.read_answers()
                ch.flush()
                # Answers came (asyncio callers', or blocking ones' not reading their own): more may come soon.
                if read and self.pending and not self.reading_callers and self.reader_spin.wait([ch.incoming]):
                    continue  # one came while this thread spun: no need to sleep (and be woken)
                self.reader_polling = True  # before sleep(): see rearm_reader
                if not ch.incoming.sleep():
                    self.reader_polling = False
                    continue
                events = poller.poll()
                self.reader_polling = False
                ch.incoming.awake()
                if any(fd == ch.sock.fileno() and not ch.peer_alive() for fd, _ in events):
                    break
                ch.take_wakeup()
        except BaseException as e:  # never leave callers waiting on a reader that died
            reason = f"the connection to the server {self.name!r} failed: {e!r}"
        self._fail_all(self.closing or reason)

    def rearm_reader(self) -> None:
        """A blocking caller stops reading (its wait turned the reader's
        wake-up off): if the reader thread sleeps, the server must wake it for
        the next answer again; if answers came meanwhile, it is woken now."""
        if self.reader_polling and not self.reading_callers and not self.channel.incoming.sleep():
            try:
                os.eventfd_write(self.channel.wake_me, 1)
            except OSError:
                pass  # closed: the reader is on its way out

    def read_answers(self) -> int:
        """Hands every answer in the ring to its caller; returns how many.
        Under ``read_lock``: the reader thread's, or a blocking caller's
        (_Waiter.wait)."""
        by_loop: dict[Any, list[Any]] = {}
        read = self.channel.drain(lambda tag, parts: self._on_answer(tag, parts, by_loop))
        _post(by_loop)
        return read

    def _on_answer(self, tag: int, parts: list[memoryview], by_loop: dict[Any, list[Any]]) -> None:
        if tag == RESULTS:
            self._on_results(parts, by_loop)
            return
        waiter = self.pending.pop(ANSWER_HEAD.unpack(parts[0])[0], None)
        if waiter is None:
            return  # its caller went away
        try:
            value = loads(parts[1:])
            ok = tag != ERROR
            if not ok:
                value, value.__cause__ = value  # (error, its cause)
        except Exception as e:
            value = RuntimeError(f"could not unpickle the answer of the server {self.name!r}: {e!r}")
            ok = False
        waiter.settle(ok, value, by_loop)

    def _on_results(self, parts: list[memoryview], by_loop: dict[Any, list[Any]]) -> None:
        """The results of several calls (those of one batch)."""
        ids = array.array("Q")
        ids.frombytes(parts[0])
        try:
            results = loads(parts[1:])
            ok = True
        except Exception as e:
            error = RuntimeError(f"could not unpickle the answer of the server {self.name!r}: {e!r}")
            ok = False
        for i, call_id in enumerate(ids):
            waiter = self.pending.pop(call_id, None)
            if waiter is not None:
                waiter.settle(ok, results[i] if ok else error, by_loop)

    def _fail_all(self, reason: str) -> None:
        """The server is gone (or this client closed): every call still
        waiting fails with ServerGoneError, at once."""
        self.gone = reason
        with self.read_lock:
            try:  # answers that came before it went
                self.read_answers()
            except Exception:
                pass
            self.channel.close()
        by_loop: dict[Any, list[Any]] = {}
        for call_id in list(self.pending):
            waiter = self.pending.pop(call_id, None)
            if waiter is not None:
                waiter.settle(False, ServerGoneError(f"{reason}: the call may or may not have been computed"),
                              by_loop)
        _post(by_loop)

    # ---- callers ----

    def send(self, tag: int, call_id: int, request: Any, waiter: Any) -> None:
        """Sends a call; its answer goes to ``waiter``."""
        at = deadline_var.get()
        if at is not None and at <= clock_ns():
            raise DeadlineExceeded(f"client of {self.name!r}: the deadline of this call had passed when it was made")
        try:
            parts = dumps(request) if tag == REQUEST else []
        except Exception as e:
            raise TypeError(f"the call to the server {self.name!r} could not be pickled: {e!r}") from e
        head = (REQUEST_HEAD.pack(call_id, at or 0, priority_var.get(), 0) if tag == REQUEST
                else ANSWER_HEAD.pack(call_id))
        self.pending[call_id] = waiter
        try:
            self.channel.send(tag, [head, *parts])
        except ValueError:
            self.pending.pop(call_id, None)
            size = ShmRing.payload_of(parts)
            raise ValueError(f"the call's payload of {size} bytes is over the limit of {self.channel.max_payload} "
                             f"bytes of the server {self.name!r} (batched.serve(..., ring_bytes=) sets it)") from None
        if self.gone is not None and self.pending.pop(call_id, None) is not None:
            raise ServerGoneError(f"{self.gone}: the call was not sent")

    def cancel(self, call_id: int) -> None:
        """The caller went away: its undispatched items leave the server's queue."""
        if self.pending.pop(call_id, None) is not None and self.gone is None:
            self.channel.send(CANCEL, [ANSWER_HEAD.pack(call_id)])

    def close(self) -> None:
        """Disconnects: the server drops what this process had queued there."""
        self.closing = f"the client of {self.name!r} was closed"
        try:
            self.channel.sock.shutdown(socket.SHUT_RDWR)  # wakes the reader, who closes the rest
        except OSError:
            pass


class Client:
    """A processor served by another process (``batched.connect``), called as
    the processor itself is: ``client(item)``, ``client([items])``, or a
    model's features; ``await client.acall(...)`` from asyncio. See
    ``batched.connect``."""

    def __init__(self, name: str, connection: _Connection) -> None:
        self.name = name
        self._path = socket_path(name)
        self._connection = connection
        # A client that is collected disconnects (its connection's reader thread would keep it open).
        self._finalizer = weakref.finalize(self, connection.close)
        self._lock = threading.Lock()
        self._closed = False
        info = connection.info
        self.function_name: str = info["function"]
        self.inference: bool = info["inference"]

    def _live_connection(self) -> _Connection:
        conn = self._connection
        if conn.gone is None:  # (a forked child's is marked gone: _forget_connections)
            return conn
        if self._closed:
            raise ShutdownError(f"the client of {self.name!r} was closed")
        with self._lock:
            conn = self._connection
            if conn.gone is not None:
                conn = self._connection = _Connection(self.name, self._path)
                self._finalizer.detach()
                self._finalizer = weakref.finalize(self, conn.close)
            return conn

    def _request(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self.inference:
            from batched._frontend import features_of  # noqa: PLC0415

            return features_of(args, kwargs)
        if kwargs or len(args) != 1:
            raise TypeError(f"a call of {self.function_name} takes one item or one list of items")
        return args[0]

    def _call(self, request: Any) -> Any:
        if isinstance(request, list) and not request:
            return []
        return self._blocking(REQUEST, request)

    def _blocking(self, tag: int, request: Any) -> Any:
        """Sends a record (a call, or a stats request) and waits for its answer."""
        conn = self._live_connection()
        call_id = next(conn.ids)
        waiter = _Waiter()
        conn.send(tag, call_id, request, waiter)
        try:
            waiter.wait(conn)
        except BaseException:  # Ctrl-C: the call leaves the server's queue
            conn.cancel(call_id)
            raise
        if waiter.ok:
            return waiter.value
        raise waiter.value

    async def _acall(self, request: Any) -> Any:
        import asyncio  # noqa: PLC0415

        if isinstance(request, list) and not request:
            return []
        conn = self._live_connection()
        call_id = next(conn.ids)
        waiter = _AsyncWaiter(asyncio.get_running_loop())
        conn.send(REQUEST, call_id, request, waiter)
        try:
            return await waiter.future
        except asyncio.CancelledError:
            conn.cancel(call_id)
            raise

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """The outcome of one call: blocks until the server answers."""
        return self._call(self._request(args, kwargs))

    async def acall(self, *args: Any, **kwargs: Any) -> Any:
        """The outcome of one call, awaited (a cancelled caller's items leave the server's queue)."""
        return await self._acall(self._request(args, kwargs))

    @property
    def stats(self) -> Any:
        """The served processor's statistics (batched.types.BatchProcessorStats): all its callers'."""
        return self._blocking(STATS, None)

    @property
    def server_pid(self) -> int:
        return int(self._connection.info["pid"])

    def close(self) -> None:
        """Disconnects this process; calls still waiting fail with ServerGoneError. Idempotent."""
        self._closed = True
        self._connection.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __reduce__(self) -> Any:
        return connect, (self.name,)

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("disconnected" if self._connection.gone else "connected")
        return f"<batched {type(self).__name__} of {self.function_name} at {self.name!r}, {state}>"


class AsyncClient(Client):
    """A client of a server of a ``batched.aio`` processor: ``await client(...)``, as there."""

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return await self._acall(self._request(args, kwargs))


def connect(name: str, *, timeout: Optional[float] = None) -> Client:
    """A client of the processor that ``batched.serve(processor, name)`` serves
    in another process of this user (or this one): called exactly as the
    processor is (``client(x)``, ``await client.acall(x)``, or ``await
    client(x)`` for a batched.aio processor), its calls are batched there
    together with every other client's.

    Raises ServerGoneError if no server of that name is running, after
    waiting up to ``timeout`` seconds for one (None: no wait). Once
    connected, a call fails with ServerGoneError if the server goes while it
    waits; the next call connects again, to the server that came back.
    """
    check_platform()
    checked_name(name)
    path = socket_path(name)
    end = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            conn = _Connection(name, path)
            break
        except ServerGoneError:
            if end is None or time.monotonic() >= end:
                raise
            time.sleep(0.05)  # waiting for a server to start: there is nothing to be woken by
    cls = AsyncClient if conn.info["aio"] else Client
    return cls(name, conn)


def _forget_connections() -> None:
    for conn in list(_live):
        conn.gone = "forked"  # never used here again: the next call connects anew
        ch = conn.channel  # (no lock: another thread of the parent may have held it)
        for fd in (ch.sock.detach(), ch.wake_peer, ch.wake_me):
            try:
                os.close(fd)
            except OSError:
                pass


os.register_at_fork(after_in_child=_forget_connections)

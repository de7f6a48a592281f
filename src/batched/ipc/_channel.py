"""What the server and its clients share: where a server listens, how one
client's connection is set up, how records cross it, and how payloads are
written (docs/scaling.md, "One machine: batched.serve").

A connection is a Unix socket (for the set-up and to notice that the other
side is gone: its end closes when its process dies) and, for every request
and answer, a shared-memory segment that the server makes for that client
alone (``memfd_create``: no name anywhere, freed when the last process that
maps it goes) with two rings in it (csrc/batched/shm_ring.h): requests to the
server, answers to the client. Each side wakes the other through an eventfd,
only when the other is asleep (the ring's flags say so), so a busy pair makes
no system call per record. The segment and both eventfds are handed over
once, with the socket's SCM_RIGHTS.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import socket
import stat
import struct
import sys
import tempfile
import threading
from collections import deque

from batched._core import ShmRing, spin_for_records

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Optional

# Record tags. Client to server:
REQUEST = 1  # [head, pickle, *buffers]: one call
CANCEL = 2  # [head]: the caller of that call went away
STATS = 3  # [head]: the processor's statistics, please
# Server to client:
RESULT = 1  # [head, pickle, *buffers]: the call's outcome
ERROR = 2  # [head, pickle]: the exception the caller gets
RESULTS = 3  # [call ids (u64 each), pickle of their outcomes' list, *buffers]: the answers of one batch

#: request head: call id, deadline (clock_ns; 0: none), priority, flags
REQUEST_HEAD = struct.Struct("<QqiI")
#: answer head: call id
ANSWER_HEAD = struct.Struct("<Q")

PROTOCOL = 1  # of the hello: a client and a server of other versions refuse each other
#: the longest a reader that expects a record soon spins before it sleeps
SPIN_NS = int(os.environ.get("BATCHED_IPC_SPIN_US", "200")) * 1000
DEFAULT_RING_BYTES = 8 << 20  # each way, per client: one record may take half
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
HANDED_FDS = 3  # file descriptors handed to a client: segment, server's eventfd, client's eventfd


def check_platform() -> None:
    if not sys.platform.startswith("linux") or not hasattr(os, "eventfd"):
        raise RuntimeError("batched.serve and batched.connect need Linux and Python >= 3.10 (os.eventfd, memfd)")


def checked_name(name: object) -> str:
    """``name`` if it is a valid server name: 1 to 64 letters, digits, '_', '.'
    and '-', not starting with '.', '_' or '-' (no path tricks)."""
    if not isinstance(name, str):
        raise TypeError(f"a server name must be a str, got {type(name).__name__}")
    if not _NAME.fullmatch(name):
        raise ValueError(f"invalid server name {name!r}: use 1 to 64 letters, digits, '_', '.' and '-', "
                         "starting with a letter or digit")
    return name


def run_dir() -> str:
    """The directory of this user's server sockets: ``$BATCHED_RUN_DIR``, else
    ``batched-<uid>`` in ``$XDG_RUNTIME_DIR`` or the temporary directory.
    Made with mode 0700; refused unless it is a directory of this user that
    nobody else may enter (another user cannot plant or reach a socket)."""
    path = os.environ.get("BATCHED_RUN_DIR") or os.path.join(
        os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir(), f"batched-{os.getuid()}")
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise PermissionError(f"{path} must be a directory owned by this user with mode 0700 "
                              f"(found mode {stat.filemode(st.st_mode)}, uid {st.st_uid})")
    return path


def socket_path(name: str) -> str:
    return os.path.join(run_dir(), checked_name(name) + ".sock")


def peer_credentials(sock: socket.socket) -> tuple[int, int]:
    """(pid, uid) of the process at the other end of a Unix socket (SO_PEERCRED)."""
    pid, uid, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    return pid, uid


class Spin:
    """How long one reader spins (without the GIL) before it sleeps: ``most``
    ns (SPIN_NS) while spinning pays (what it waits for comes meanwhile), halved after
    each spin that did not, down to none, and then tried again once every
    64 waits. Where the peer cannot run while this thread spins (one CPU for
    both, a CPU quota), spinning only delays it: this stops it there."""

    __slots__ = ("most", "ns", "skipped")

    def __init__(self, most: int = SPIN_NS) -> None:
        self.most = most
        self.ns = most
        self.skipped = 0

    def budget(self) -> int:
        """Nanoseconds to spin for now (0: sleep at once)."""
        if self.ns:
            return self.ns
        self.skipped += 1
        if self.skipped < 64:
            return 0
        self.skipped = 0
        return self.most // 4

    def paid(self, found: bool, spent: int) -> None:
        """The outcome of a spin of ``spent`` ns: ``found`` what it waited for?"""
        if found:
            self.ns = self.most
        elif spent:
            self.ns = spent // 2 if spent >= 4000 else 0

    def wait(self, rings: list[ShmRing]) -> bool:
        """Spins for a record in ``rings``, as long as the budget says."""
        ns = self.budget()
        found = bool(ns) and spin_for_records(rings, ns)
        self.paid(found, ns)
        return found


# ---------------------------------------------------------------- payloads


def _tensor_from_bytes(data: Any, dtype: str, shape: tuple[int, ...]) -> Any:
    import torch  # noqa: PLC0415

    return torch.from_numpy(data).view(getattr(torch, dtype)).reshape(shape)


def _reduce_tensor(t: Any) -> Any:
    """A CPU tensor travels as its bytes (one out-of-band buffer, no element-
    wise pickling), any dtype, without autograd history; others (CUDA,
    sparse, quantized) as torch pickles them."""
    import torch  # noqa: PLC0415 - loaded already: only dumps() with torch loaded gets here

    if t.device.type != "cpu" or t.layout != torch.strided or t.is_quantized or t.is_nested:
        return t.__reduce_ex__(5)
    flat = t.detach().resolve_conj().resolve_neg().contiguous().reshape(-1)
    return _tensor_from_bytes, (flat.view(torch.uint8).numpy(), str(t.dtype).removeprefix("torch."), tuple(t.shape))


def dumps(obj: Any) -> list[Any]:
    """``obj`` as record parts: its pickle (protocol 5), then each large
    contiguous buffer (numpy arrays, CPU tensors) as it is, copied once, into
    the ring, by the write."""
    buffers: list[pickle.PickleBuffer] = []
    data: Any
    torch = sys.modules.get("torch")
    if torch is None:
        data = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    else:
        f = io.BytesIO()
        pickler = pickle.Pickler(f, protocol=5, buffer_callback=buffers.append)
        pickler.dispatch_table = _tensor_table(torch)
        pickler.dump(obj)
        data = f.getbuffer()
    return [data, *(b.raw() for b in buffers)]


_table: Optional[dict[Any, Any]] = None


def _tensor_table(torch: Any) -> dict[Any, Any]:
    global _table
    if _table is None:
        import copyreg  # noqa: PLC0415

        _table = dict(copyreg.dispatch_table)
        _table[torch.Tensor] = _reduce_tensor
    return _table


def loads(parts: list[memoryview]) -> Any:
    """The object of record parts written by ``dumps``. Buffers are copied out
    of the ring (the ring's room is reused as soon as the record is consumed)."""
    return pickle.loads(parts[0], buffers=[bytearray(p) for p in parts[1:]])


# ---------------------------------------------------------------- one connection


class Channel:
    """One client's connection, seen from either side: the socket, the
    segment's two rings, both eventfds. ``outgoing`` is the ring this side
    writes, ``incoming`` the one it reads; ``wake_peer`` the eventfd that
    wakes the other side, ``wake_me`` the one this side waits on.

    Writes from any thread (``send``, under ``lock``); a record that finds
    the ring full waits in ``backlog`` (this process's memory) until the
    peer frees room and wakes this side, who calls ``flush``. Reads from one
    thread (``drain``)."""

    def __init__(self, sock: socket.socket, memory: Any, outgoing: ShmRing, incoming: ShmRing,
                 wake_peer: int, wake_me: int) -> None:
        self.sock = sock
        self.memory = memory
        self.outgoing = outgoing
        self.incoming = incoming
        self.wake_peer = wake_peer
        self.wake_me = wake_me
        self.lock = threading.Lock()
        self.backlog: deque[tuple[int, list[Any]]] = deque()
        self.closed = False

    @property
    def max_payload(self) -> int:
        return int(self.outgoing.max_payload)

    def send(self, tag: int, parts: list[Any]) -> None:
        """Writes a record (ValueError if it is over the ring's limit). Never
        blocks: with the ring full it waits in the backlog. Does nothing once closed."""
        with self.lock:
            if self.closed:
                return
            if self.backlog:
                self.backlog.append((tag, parts))
                return
            written = self.outgoing.write(tag, parts)
            if written < 0:
                self.backlog.append((tag, parts))
                if not self.outgoing.wait_for_room(ShmRing.payload_of(parts)):
                    self._flush()
            elif written:
                self._wake()

    def flush(self) -> None:
        """Writes what waits in the backlog, as room allows (after a wake-up)."""
        if self.backlog:
            with self.lock:
                self._flush()

    def _flush(self) -> None:
        wake = False
        while self.backlog and not self.closed:
            tag, parts = self.backlog[0]
            written = self.outgoing.write(tag, parts)
            if written < 0:
                if self.outgoing.wait_for_room(ShmRing.payload_of(parts)):
                    break
                continue
            self.backlog.popleft()
            wake = wake or written > 0
        if wake:
            self._wake()

    def _wake(self) -> None:
        try:
            os.eventfd_write(self.wake_peer, 1)
        except OSError:
            pass  # closed meanwhile: the peer learns it from the socket

    def drain(self, handle: Callable[[int, list[memoryview]], None]) -> int:
        """Reads every record there is: ``handle(tag, parts)`` each (the parts
        are released after it returns). Returns how many. Reader's thread only."""
        n = 0
        ring = self.incoming
        while True:
            record = ring.peek()
            if record is None:
                return n
            tag, parts = record
            try:
                handle(tag, parts)
            finally:
                for p in parts:
                    p.release()
                del parts, record
                if ring.consume():
                    self._wake()
            n += 1

    def peer_alive(self) -> bool:
        """After the socket polled readable: False if the other side closed it
        (its process ended). Nothing is sent on it after the set-up."""
        try:
            return self.sock.recv(64) != b""
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False

    def take_wakeup(self) -> None:
        """Resets this side's eventfd after a wake-up."""
        try:
            os.eventfd_read(self.wake_me)
        except (BlockingIOError, OSError):
            pass

    def close(self) -> None:
        """Closes the socket and both eventfds. Idempotent. The segment is
        unmapped with the last reference to it (this channel's, a reader's
        that spins on a ring), never under a thread that reads it."""
        with self.lock:
            if self.closed:
                return
            self.closed = True
            self.backlog.clear()
        for fd in (self.wake_peer, self.wake_me):
            try:
                os.close(fd)
            except OSError:
                pass
        self.sock.close()


def hello(fields: dict[str, Any]) -> bytes:
    return json.dumps({"protocol": PROTOCOL, **fields}).encode()


def parse_hello(data: bytes) -> dict[str, Any]:
    fields: dict[str, Any] = json.loads(data)
    if fields.get("protocol") != PROTOCOL:
        raise ConnectionError(f"the server speaks protocol {fields.get('protocol')}, this client {PROTOCOL}: "
                              "run the same version of batched on both sides")
    return fields

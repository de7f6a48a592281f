"""One batcher for many processes (batched.serve / batched.connect), with real
processes: the model process is tests/_ipc_server.py, clients are fresh
interpreters or this one. The behaviour suite runs through a client too
(conftest's "remote" front end); here: what only processes show, such as
batches that mix clients, a process killed mid-batch, a server that comes
back, private sockets, an idle pair that burns no CPU, and a soak.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import TIMEOUT, wait_until

import batched
from batched import ServerGoneError

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or not hasattr(os, "eventfd"),
                                reason="batched.serve needs Linux and Python >= 3.10")

HERE = Path(__file__).resolve().parent
SERVER = str(HERE / "_ipc_server.py")


@pytest.fixture(autouse=True)
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test's servers listen in a directory of their own (children inherit it)."""
    path = tmp_path / "run"
    path.mkdir(mode=0o700)
    monkeypatch.setenv("BATCHED_RUN_DIR", str(path))
    return path


class ModelProcess:
    """tests/_ipc_server.py KIND NAME [LOG], started and waited for."""

    def __init__(self, kind: str, name: str, log: Path | None = None) -> None:
        args = [sys.executable, SERVER, kind, name] + ([str(log)] if log else [])
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.name = name
        self.client = batched.connect(name, timeout=TIMEOUT)
        assert self.client.server_pid == self.proc.pid

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=TIMEOUT)
        return out + err


@pytest.fixture
def servers() -> Iterator[list[ModelProcess]]:
    started: list[ModelProcess] = []
    yield started
    for s in started:
        s.client.close()
        if s.proc.poll() is None:
            s.proc.kill()
        s.proc.communicate(timeout=TIMEOUT)


def start(servers: list[ModelProcess], kind: str, name: str, log: Path | None = None) -> ModelProcess:
    server = ModelProcess(kind, name, log)
    servers.append(server)
    return server


def client_process(code: str, **popen: Any) -> subprocess.Popen[str]:
    """A fresh interpreter running ``code`` (its last stdout line: JSON)."""
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


def outcome(proc: subprocess.Popen[str], timeout: float = TIMEOUT * 4) -> Any:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def batches_in(log: Path) -> list[list[int]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# ---------------------------------------------------------------- batching across processes


def test_clients_in_four_processes_share_batches_and_each_gets_its_own_results(servers: list[ModelProcess]) -> None:
    start(servers, "echo", "echo")
    clients = [client_process(f"""
        import asyncio, json, threading, batched
        embed = batched.connect("echo")
        me = {k}
        wrong, mixed = [], 0
        def check(i, got):
            global mixed
            if tuple(got[:2]) != (me, i):
                wrong.append((i, got))
            mixed += got[2] > 1
        def in_thread(t):
            for j in range(50):
                i = 100000 + t * 1000 + j
                check(i, embed((me, i)))
            res = embed([(me, -t - j) for j in range(1, 8)])
            for j, got in zip(range(1, 8), res):
                check(-t - j, got)
        async def main():
            results = await asyncio.gather(*(embed.acall((me, i)) for i in range(500)))
            for i, got in enumerate(results):
                check(i, got)
        threads = [threading.Thread(target=in_thread, args=(t,)) for t in range(4)]
        for t in threads: t.start()
        asyncio.run(main())
        for t in threads: t.join()
        print(json.dumps({{"wrong": wrong[:5], "mixed": mixed}}))
    """) for k in range(4)]
    results = [outcome(c) for c in clients]
    assert all(r["wrong"] == [] for r in results), results
    assert sum(r["mixed"] for r in results) > 0  # batches held items of several processes
    stats = servers[0].client.stats
    assert stats.total_processed == 4 * (500 + 4 * (50 + 7))


def test_model_calls_and_lists_cross_processes(servers: list[ModelProcess]) -> None:
    np = pytest.importorskip("numpy")
    model = start(servers, "model", "model").client
    assert model.inference
    assert model({"input_ids": np.array([[1, 2, 3]])}).tolist() == [6]
    assert model(input_ids=np.array([[1, 2], [3, 4]])).tolist() == [3, 7]  # features as keywords
    rows = [np.arange(n) for n in (1, 5, 3)]  # ragged rows: padded there
    assert model({"input_ids": rows}).tolist() == [0, 10, 3]
    big = np.ones((64, 4096), dtype=np.int64)  # 2 MiB: one out-of-band buffer, not 262,144 pickled ints
    assert model({"input_ids": big}).tolist() == [4096] * 64

    async def concurrently() -> list[Any]:
        return await asyncio.gather(*(model.acall({"input_ids": np.full((1, k + 1), k)}) for k in range(100)))

    assert [r.tolist() for r in asyncio.run(concurrently())] == [[k * (k + 1)] for k in range(100)]


def test_arrays_and_tensors_travel_as_one_buffer_each() -> None:
    np = pytest.importorskip("numpy")
    from batched.ipc._channel import dumps, loads

    a = np.arange(100_000, dtype=np.float32).reshape(1000, 100)
    parts = dumps({"x": a, "y": [a[:2]]})
    assert len(parts) == 3 and len(parts[0]) < 1000  # the pickle holds no element; each array is one buffer
    back = loads([memoryview(p) for p in parts])
    assert np.array_equal(back["x"], a) and np.array_equal(back["y"][0], a[:2])
    torch = pytest.importorskip("torch")
    for t in (torch.arange(12, dtype=torch.bfloat16).reshape(3, 4), torch.ones(5, 3).t(),
              torch.tensor(7), torch.zeros(0, 4, dtype=torch.int64)):
        parts = dumps(t)
        assert len(parts) == 2
        back = loads([memoryview(p) for p in parts])
        assert back.dtype == t.dtype and back.shape == t.shape and torch.equal(back, t)


def test_an_async_def_processor_serves_as_it_is_called_there(servers: list[ModelProcess]) -> None:
    client = start(servers, "async", "async").client
    assert isinstance(client, batched.ipc.AsyncClient)

    async def main() -> Any:
        return await client(1), await client([1, 2, 3]), await asyncio.gather(*(client(i) for i in range(300)))

    assert asyncio.run(main()) == (2, [2, 3, 4], [i + 1 for i in range(300)])


def test_a_million_items_from_four_processes_nothing_lost_or_misrouted(servers: list[ModelProcess]) -> None:
    start(servers, "negate", "soak")
    clients = [client_process(f"""
        import asyncio, json, random, threading, batched
        c = batched.connect("soak")
        base = {k} * 10**9
        rng = random.Random({k})
        calls = []
        n = 0
        while n < 250_000:
            size = min(rng.choice((1, 1, 2, 3, 8, 17, 64, 200)), 250_000 - n)
            calls.append(list(range(base + n, base + n + size)))
            n += size
        bad = []
        def check(items, got):
            if got != [~x for x in items]:
                bad.append(items[0])
        def in_thread(part):
            for items in part:
                check(items, c(items) if len(items) > 1 else [c(items[0])])
        async def main(part):
            sem = asyncio.Semaphore(64)
            async def one(items):
                async with sem:
                    check(items, await c.acall(items))
            await asyncio.gather(*(one(items) for items in part))
        threads = [threading.Thread(target=in_thread, args=(calls[t::8],)) for t in range(4)]
        for t in threads: t.start()
        asyncio.run(main([x for t in range(4, 8) for x in calls[t::8]]))
        for t in threads: t.join()
        print(json.dumps({{"items": n, "bad": bad[:5]}}))
    """) for k in range(4)]
    results = [outcome(c, timeout=600) for c in clients]
    assert results == [{"items": 250_000, "bad": []}] * 4
    assert servers[0].client.stats.total_processed == 1_000_000


# ---------------------------------------------------------------- faults


def test_a_client_killed_mid_batch_loses_its_queued_items_and_nobody_else_is_affected(
        servers: list[ModelProcess], tmp_path: Path) -> None:
    log = tmp_path / "batches.jsonl"
    server = start(servers, "slow", "slow", log)
    fds_before = open_fds(server.pid)
    victim = client_process("""
        import threading, batched
        c = batched.connect("slow")
        threads = [threading.Thread(target=c, args=(1000 + i,)) for i in range(12)]
        for t in threads: t.start()
        for t in threads: t.join()
    """)
    def ran() -> set[int]:
        return {x for batch in batches_in(log) for x in batch if x >= 1000}

    wait_until(lambda: len(ran()) + server.client.stats.queue_size == 12 and ran(), "a batch runs, the rest queue")
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=TIMEOUT)
    # Another client is served as before, and nothing of the dead one's runs any more.
    assert server.client([1, 2, 3]) == [-2, -3, -4]
    assert len(ran()) < 12
    stats = server.client.stats
    assert stats.cancelled_items == 12 - len(ran())
    assert stats.total_processed == len(ran()) + 3
    wait_until(lambda: open_fds(server.pid) == fds_before, "the dead client's socket and eventfds closed")


def test_a_server_killed_mid_batch_fails_waiting_calls_at_once_and_clients_reconnect(
        servers: list[ModelProcess], tmp_path: Path) -> None:
    log = tmp_path / "batches.jsonl"
    server = start(servers, "slow", "slow", log)
    client = server.client
    errors: list[BaseException] = []

    def call(x: int) -> None:
        try:
            client(x)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()

    async def awaiting() -> BaseException:
        try:
            await client.acall(99)
        except BaseException as e:
            return e
        raise AssertionError("the call should have failed")

    loop_errors: list[BaseException] = []
    waiter = threading.Thread(target=lambda: loop_errors.append(asyncio.run(awaiting())))
    waiter.start()
    wait_until(lambda: len(batches_in(log)) >= 1, "a batch runs")
    time.sleep(0.05)
    killed_at = time.monotonic()
    os.kill(server.pid, signal.SIGKILL)
    for t in [*threads, waiter]:
        t.join(TIMEOUT)
    assert time.monotonic() - killed_at < 2.0  # at once, not after a timeout
    assert len(errors) == 6 and len(loop_errors) == 1
    for e in [*errors, *loop_errors]:
        assert isinstance(e, ServerGoneError) and "is gone" in str(e), e
    with pytest.raises(ServerGoneError, match="no server named 'slow' is running"):
        client(1)
    # A new server under the same name (its socket file was left behind: it is
    # replaced); the same client object reconnects on its next call.
    again = start(servers, "slow", "slow")
    assert client(5) == -6
    assert client.server_pid == again.pid


def test_bad_payloads_fail_their_own_caller_only() -> None:
    @batched.dynamically(batch_size=8, timeout_ms=1)
    def echo(items: list[Any]) -> list[Any]:
        answers = {"unpicklable result": lambda: 0, "big answer": b"z" * 40_000}
        return [answers.get(x, x) if isinstance(x, str) else x for x in items]

    with batched.serve(echo, "bad", ring_bytes=1 << 16, block=False), batched.connect("bad") as client:
        good = []
        t = threading.Thread(target=lambda: good.extend(client(list(range(200)))))
        t.start()
        with pytest.raises(TypeError, match="could not be pickled"):
            client(lambda: 1)
        with pytest.raises(ValueError, match=r"over the limit of 32760 bytes of the server 'bad'"):
            client(b"x" * 40_000)
        with pytest.raises(TypeError, match="could not be pickled to go back to the client"):
            client("unpicklable result")
        with pytest.raises(ValueError, match="the answer of .* bytes is over the limit of 32760 bytes"):
            client("big answer")
        t.join(TIMEOUT)
        assert good == list(range(200))
        assert client("fine") == "fine"

    # The answers of one batch to one client go as one record; one that does
    # not pickle is sent apart, and fails alone.
    pair = batched.BatchProcessor(echo, batch_size=2, timeout_ms=10_000)  # a batch leaves with 2 items
    with batched.serve(pair, "pair", block=False), batched.connect("pair") as client:
        outcomes: dict[str, Any] = {}

        def call(x: str) -> None:
            try:
                outcomes[x] = client(x)
            except Exception as e:
                outcomes[x] = e

        threads = [threading.Thread(target=call, args=(x,)) for x in ("fine", "unpicklable result")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIMEOUT)
        assert outcomes["fine"] == "fine"
        assert isinstance(outcomes["unpicklable result"], TypeError)
        assert pair.stats.total_batches == 1
    pair.shutdown()


def test_cancellation_and_deadlines_cross_the_process_boundary(servers: list[ModelProcess], tmp_path: Path) -> None:
    log = tmp_path / "batches.jsonl"
    client = start(servers, "slow", "slow", log).client

    async def main() -> None:
        first = asyncio.ensure_future(client.acall(1))
        await asyncio.to_thread(wait_until, lambda: len(batches_in(log)) == 1, "the first batch runs")
        queued = asyncio.ensure_future(client.acall(2))
        await asyncio.to_thread(wait_until, lambda: client.stats.queue_size == 1, "the second call queued")
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        await asyncio.to_thread(wait_until, lambda: client.stats.cancelled_items == 1, "it left the queue")
        with batched.deadline(100):
            started = time.monotonic()
            with pytest.raises(batched.DeadlineExceeded):
                await asyncio.gather(first, client.acall(3))
            assert time.monotonic() - started < 0.29  # expired while queued, not after the batch
        assert await first == -2

    asyncio.run(main())
    time.sleep(0.4)
    assert [x for batch in batches_in(log) for x in batch] == [1]  # 2 and 3 never ran
    assert client.stats.expired_items == 1


# ---------------------------------------------------------------- names, files, security, idle


def test_names_are_checked_and_sockets_are_private(run_dir: Path) -> None:
    proc = batched.BatchProcessor(lambda xs: xs)
    for bad in ("", "../up", "a/b", ".hidden", "-x", "x" * 65, "sp ace", "nul\0"):
        with pytest.raises(ValueError, match="invalid server name"):
            batched.serve(proc, bad, block=False)
        with pytest.raises(ValueError, match="invalid server name"):
            batched.connect(bad)
    with pytest.raises(TypeError, match="a server name must be a str"):
        batched.connect(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="serve\\(\\) takes a batch processor"):
        batched.serve(lambda xs: xs, "fn", block=False)
    with pytest.raises(ServerGoneError, match="no server named 'nobody' is running"):
        batched.connect("nobody")
    with batched.serve(proc, "private", block=False) as server:
        assert stat.S_IMODE(os.stat(server.path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(run_dir).st_mode) == 0o700
        with pytest.raises(RuntimeError, match="a server named 'private' is running already"):
            batched.serve(proc, "private", block=False)
        assert batched.connect("private")([1]) == [1]
    assert not os.path.exists(server.path)  # removed when it stops
    assert not [f for f in os.listdir("/dev/shm") if "batched" in f]  # segments are memfds: nothing named
    os.chmod(run_dir, 0o755)
    with pytest.raises(PermissionError, match="mode 0700"):
        batched.serve(proc, "open", block=False)
    proc.shutdown()


def test_an_idle_server_and_client_use_no_cpu(servers: list[ModelProcess]) -> None:
    server = start(servers, "negate", "idle")
    client = client_process("""
        import sys, time, batched
        c = batched.connect("idle")
        assert c(list(range(100))) == [~x for x in range(100)]
        print("idle", flush=True)
        sys.stdin.readline()
        print("{}")
    """, stdin=subprocess.PIPE)
    assert client.stdout is not None and client.stdout.readline().strip() == "idle"
    time.sleep(0.2)
    before = cpu_seconds(server.pid), cpu_seconds(client.pid)
    time.sleep(1.5)
    after = cpu_seconds(server.pid), cpu_seconds(client.pid)
    client.kill()
    client.communicate(timeout=TIMEOUT)
    assert after[0] - before[0] < 0.03 and after[1] - before[1] < 0.03, (before, after)


def test_a_forked_child_connects_anew() -> None:
    @batched.dynamically(batch_size=8, timeout_ms=1)
    def negate(items: list[int]) -> list[int]:
        return [~x for x in items]

    with batched.serve(negate, "fork", block=False), batched.connect("fork") as client:
        assert client(1) == -2
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: its parent's connection is not used (one ring, one writer)
            try:
                os.write(w, json.dumps([client(2), client([3, 4])]).encode())
            finally:
                os._exit(0)
        os.close(w)
        with os.fdopen(r) as f:
            assert json.loads(f.read()) == [-3, [-4, -5]]
        os.waitpid(pid, 0)
        assert client(5) == -6


def test_a_collected_client_disconnects_and_an_exiting_server_removes_its_socket(run_dir: Path) -> None:
    import gc

    @batched.dynamically(batch_size=8, timeout_ms=1)
    def negate(items: list[int]) -> list[int]:
        return [~x for x in items]

    with batched.serve(negate, "gc", block=False) as server:
        client = batched.connect("gc")
        assert client(1) == -2
        assert "1 clients" in repr(server)
        del client
        gc.collect()
        wait_until(lambda: "0 clients" in repr(server), "the collected client's connection closed")
    negate.shutdown()
    # A process that exits with a server still running (block=False) removes its socket.
    code = "import batched; batched.serve(batched.BatchProcessor(lambda xs: xs), 'exiting', block=False)"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=TIMEOUT)
    assert not (run_dir / "exiting.sock").exists()

"""Process-level behaviour: interpreter exit, Ctrl-C and fork never hang (docs/semantics.md, 8)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import TIMEOUT

EXIT_LIMIT = 60  # seconds; a hang fails the test by timeout


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=EXIT_LIMIT,
    )


def test_interpreter_exits_with_idle_and_busy_processors() -> None:
    out = run_python(
        """
        import threading, time, batched

        @batched.dynamically(timeout_ms=0)
        def idle(xs): return xs

        @batched.dynamically(timeout_ms=0)
        def busy(xs):
            time.sleep(0.5)
            return xs

        assert idle([1, 2]) == [1, 2]
        threading.Thread(target=busy, args=(1,), daemon=True).start()
        time.sleep(0.1)  # busy's worker is now inside the batch function
        print("exiting")
        """
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "exiting"


def test_ctrl_c_interrupts_a_waiting_main_thread_and_the_processor_survives() -> None:
    out = run_python(
        """
        import os, signal, threading, time, batched

        release = threading.Event()

        @batched.dynamically(timeout_ms=0)
        def slow(xs):
            release.wait(30)
            return xs

        # (a runner started in the background hands its children SIGINT ignored,
        # and Python then installs no KeyboardInterrupt for it)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        threading.Timer(0.2, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
        start = time.monotonic()
        try:
            slow(1)
        except KeyboardInterrupt:
            print("interrupted after %.1f s" % (time.monotonic() - start))
        release.set()
        print("then", slow(2))
        """
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("interrupted after ")
    assert float(lines[0].split()[2]) < 5.0
    assert lines[1] == "then 2"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # 3.12+: fork of a multi-threaded process
def test_a_forked_child_gets_a_working_processor_and_the_parent_keeps_its_own() -> None:
    """gunicorn --preload, multiprocessing with fork: the processor was used
    (its worker started) before the fork; the child has no worker thread of
    its own until it calls, and must not hang."""
    from batched import BatchProcessor

    proc = BatchProcessor(lambda xs: [x * 2 for x in xs], timeout_ms=0)
    assert proc([1, 2]) == [2, 4]  # the worker thread runs in the parent
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report through the pipe, never return into pytest
        try:
            os.close(read_end)
            result = proc([3, 4, 5]) + [proc(6)]
            os.write(write_end, repr(result).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    deadline = time.monotonic() + TIMEOUT
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung calling the processor")
        time.sleep(0.01)
    with os.fdopen(read_end) as pipe:
        assert pipe.read() == "[6, 8, 10, 12]"
    assert proc(7) == 14  # the parent's processor is unaffected
    proc.shutdown()

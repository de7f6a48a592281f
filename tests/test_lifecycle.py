"""Process-level behaviour: interpreter exit and Ctrl-C never hang (SPEC 2.8)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

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

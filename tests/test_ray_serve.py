"""batched inside a real Ray Serve deployment: examples/ray_serve.py, run as a
user runs it (its deployment class lives in __main__, so Serve ships it with
cloudpickle), 2 replicas on a small local Ray, driven over Serve's HTTP proxy
on loopback by 32 concurrent clients.

Needs the optional ``ray[serve]`` (``pip install ".[ray]"``); skipped without
it, except on CI (BATCHED_REQUIRE_RAY=1), where a missing Ray fails.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

if os.environ.get("BATCHED_REQUIRE_RAY") != "1":
    pytest.importorskip("ray.serve")

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "ray_serve.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def processes_in_session(sid: int) -> list[str]:
    ps = subprocess.run(["ps", "-eo", "sid=,pid=,stat=,args="], capture_output=True, text=True, check=True).stdout
    return [line for line in ps.splitlines()
            if line.split()[0] == str(sid) and not line.split()[2].startswith("Z")]  # zombies are already gone


@pytest.mark.timeout(600)
def test_batched_methods_in_two_serve_replicas_over_http() -> None:
    # A session of its own, so that every process Ray starts for this run can be found afterwards.
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLE), "--json", "--requests", "800", "--clients", "32", "--port", str(free_port())],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
    assert proc.returncode == 0, err[-4000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["wrong_count"] == 0, summary["wrong"]  # every answer is for the caller's own text
    replicas = summary["replicas"]
    # both routes (the aio method, and the threaded processor through .acall) on both replicas
    assert sorted({name.split(" @ ")[0] for name in replicas}) == ["classify", "embed"]
    assert len({name.split(" @ ")[1] for name in replicas}) == 2, replicas
    for name, s in replicas.items():
        assert s["largest_batch"] > 1, f"{name} never batched: {s}"
    assert sum(s["requests"] for s in replicas.values()) == 800
    # serve.shutdown() and ray.shutdown() leave no thread in the driver and no process of the run
    assert summary["threads_left"] == []
    deadline = time.monotonic() + 30
    while processes_in_session(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert processes_in_session(proc.pid) == []

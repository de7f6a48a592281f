"""The type annotations have teeth: mypy accepts correct uses of the public API
and rejects wrong ones (examples/typed_usage.py is the long version, checked
by scripts/test.sh). Runs mypy once, on the batched that these tests import."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

import batched

pytest.importorskip("mypy")

GOOD = """
    import asyncio
    import batched
    from batched import aio
    from batched.types import BatchProcessorStats, Percentiles

    @batched.dynamically
    def lengths(texts: list[str]) -> list[int]:
        return [len(t) for t in texts]

    @batched.dynamically(batch_size=4, max_queue_size=10)
    def halves(xs: list[int]) -> tuple[float, ...]:
        return tuple(x / 2 for x in xs)

    class Model:
        @batched.dynamically
        def ids(self, words: list[str]) -> list[int]:
            return [len(w) for w in words]

    @aio.dynamically(timeout_ms=1.0)
    async def fetch(keys: list[int]) -> list[str]:
        return [str(k) for k in keys]

    @batched.inference.dynamically(pad_tokens={"input_ids": 0})
    def model(features: dict[str, object]) -> bytes:
        return b""

    one: int = lengths("a")
    many: list[int] = lengths(["a", "b"])
    half: float = halves(3)
    word: int = Model().ids("abc")
    proc: batched.BatchProcessor[str, int] = lengths
    stats: BatchProcessorStats = lengths.stats
    p99: float = stats.queue_wait_ms.p99
    out: bytes = model({"input_ids": [1, 2]})

    async def main() -> None:
        value: str = await fetch(1)
        values: list[str] = await fetch([1, 2])
        awaited: int = await lengths.acall("x")
        awaited_many: list[int] = await lengths.acall(["x"])
        pending: asyncio.Task[str] = asyncio.ensure_future(fetch(3))
"""

# Each line must fail type checking, with this error code.
BAD = [
    ("one: str = lengths('a')", "assignment"),  # one item -> its result (int)
    ("many: int = lengths(['a'])", "assignment"),  # a list -> a list
    ("lengths(3)", "call-overload"),  # items are str
    ("halves(['x'])", "list-item"),  # items are int
    ("word: str = Model().ids('abc')", "assignment"),  # a method: the instance's processor
    ("value: str = fetch(1)", "assignment"),  # aio: an awaitable, not the result
    ("proc: batched.BatchProcessor[int, int] = lengths", "assignment"),
    ("lengths.stats.no_such_field", "attr-defined"),
    ("batched.dynamically(batch_size='8')", "call-overload"),
    ("batched.dynamically(lengths.batch_func, bogus=1)", "call-overload"),
    ("aio.dynamically(timeout_ms=None)", "call-overload"),
    ("out: str = model({'input_ids': [1]})", "assignment"),  # the model's output type
    ("model(3)", "call-overload"),  # features are a mapping
]


def _mypy_env(tmp: Path) -> tuple[list[str], dict[str, str]]:
    """mypy on the batched these tests import: src/ (through MYPYPATH) or the
    installed package (found through its py.typed; mypy refuses site-packages
    in MYPYPATH)."""
    env = dict(os.environ)
    root = Path(batched.__file__).resolve().parent.parent
    site = {Path(p).resolve() for p in (sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"])}
    if root not in site:
        env["MYPYPATH"] = str(root)
    else:
        env.pop("MYPYPATH", None)
        assert (root / "batched" / "py.typed").is_file(), "the installed package lacks py.typed"
    config = tmp / "mypy.ini"
    config.write_text(
        textwrap.dedent(
            f"""\
            [mypy]
            strict = True
            cache_dir = {tmp / "cache"}
            # numpy and torch types are not needed here and are slow to load
            [mypy-numpy,numpy.*,torch,torch.*]
            follow_imports = skip
            [mypy-diskcache,diskcache.*]
            ignore_missing_imports = True
            """
        )
    )
    return [sys.executable, "-m", "mypy", "--config-file", str(config), "--no-error-summary"], env


@pytest.mark.timeout(180)
def test_mypy_accepts_correct_and_rejects_wrong_uses(tmp_path: Path) -> None:
    good = textwrap.dedent(GOOD)
    (tmp_path / "good.py").write_text(good)
    bad = good + "\n\ndef wrong() -> None:\n" + "".join(f"    {line}\n" for line, _ in BAD)
    (tmp_path / "bad.py").write_text(bad)
    first_bad = bad.splitlines().index("def wrong() -> None:") + 2  # 1-based line of BAD[0]
    cmd, env = _mypy_env(tmp_path)
    run = subprocess.run(
        [*cmd, "good.py", "bad.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=170
    )
    assert run.returncode in (0, 1), run.stdout + run.stderr
    errors: dict[tuple[str, int], list[str]] = {}
    for m in re.finditer(r"^(good|bad)\.py:(\d+): error: .*\[([a-z-]+)\]$", run.stdout, re.M):
        errors.setdefault((m[1], int(m[2])), []).append(m[3])
    good_errors = {k: v for k, v in errors.items() if k[0] == "good"}
    assert not good_errors, run.stdout
    for i, (line, code) in enumerate(BAD):
        got = errors.get(("bad", first_bad + i), [])
        assert code in got, f"mypy should reject {line!r} with [{code}], got {got}\n{run.stdout}"
    # and nothing else in bad.py (its copy of GOOD is fine)
    assert set(k for k in errors if k[0] == "bad") == {("bad", first_bad + i) for i in range(len(BAD))}, run.stdout

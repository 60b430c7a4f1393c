#!/usr/bin/env bash
# The GPU check, for a machine with a CUDA GPU (e.g. the lent H100/H200): build in place with the
# CUDA kernels, run every test (CUDA included), run compute-sanitizer memcheck over the CUDA
# tests, run the benchmarks, and write logs + JSON to $OUT (default benchmarks/results/gpu).
# Uses the python on the PATH (PYTHON=... to choose), which must have torch with CUDA.
set -uo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
out=${OUT:-benchmarks/results/gpu}
mkdir -p "$out"
status=0
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
"$py" -m pip install -q pytest hypothesis expecttest 2>/dev/null || true
FORCE_CUDA=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} "$py" setup.py -q build_ext --inplace 2>&1 | tail -20 || status=1
"$py" -c "import deepem, json; print(json.dumps(deepem.build_info()))" | tee "$out/build_info.json" || status=1
"$py" -m pytest -q -rs tests 2>&1 | tee "$out/tests.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
if [ -x "$sanitizer" ]; then
  "$sanitizer" --tool memcheck --error-exitcode 99 "$py" -m pytest -q -x -m cuda tests 2>&1 | tail -40 | tee "$out/memcheck.txt"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
else
  echo "compute-sanitizer not found" | tee "$out/memcheck.txt"
fi
for bench in benchmarks/bench_*.py; do
  name=$(basename "$bench" .py)
  "$py" "$bench" --json "$out/$name.json" 2>&1 | tee "$out/$name.txt"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
done
echo "gpu_check status: $status" | tee "$out/status.txt"
exit $status

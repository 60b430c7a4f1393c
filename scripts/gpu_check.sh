#!/usr/bin/env bash
# The GPU check, for a machine with a CUDA GPU (e.g. the lent H100/H200), sized to fit one short
# lease: build in place with the CUDA kernels (sm_90 only unless TORCH_CUDA_ARCH_LIST says
# otherwise), run the kernel tests on the GPU, run the benchmarks, then compute-sanitizer
# memcheck over the CUDA tests. Each step has its own time limit so that one slow step cannot
# eat the others; logs + JSON go to $OUT (default benchmarks/results/gpu).
# Uses the python on the PATH (PYTHON=... to choose), which must have torch with CUDA.
# Wheels for missing pure-Python packages (expecttest for opcheck, monai for a baseline) may be
# put in .whl/ beforehand; they are installed to /tmp/site.
set -uo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
out=${OUT:-benchmarks/results/gpu}
mkdir -p "$out"
status=0
step() {  # step NAME SECONDS CMD...: run with a time limit, log to $out/NAME.txt, keep going
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" > "$out/$name.txt" 2>&1
  local rc=$?
  echo "step $name: rc=$rc in $((SECONDS - t0)) s" | tee -a "$out/steps.txt"
  [ $rc -eq 0 ] || status=1
  return $rc
}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv | tee "$out/gpu.txt"
if ls .whl/*.whl >/dev/null 2>&1; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # benchmarks import deepem from this checkout
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
step build 300 env FORCE_CUDA=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} "$py" setup.py -q build_ext --inplace \
  || { tail -30 "$out/build.txt"; echo "gpu_check status: 1 (build failed)" | tee "$out/status.txt"; exit 1; }
"$py" -c "import deepem, json, torch; i = deepem.build_info(); i['torch'] = torch.__version__; print(json.dumps(i))" \
  | tee "$out/build_info.json"
kernel_tests="tests/test_box_iou3d.py tests/test_nms3d.py tests/test_anchors.py tests/test_roi3d.py tests/test_estep.py tests/test_box_formats.py tests/test_estep_record.py tests/test_integrations_monai.py"
step tests 240 "$py" -m pytest -q -rs -m cuda -p no:cacheprovider $kernel_tests ${PYTEST_ARGS:-}
tail -3 "$out/tests.txt"
benches=${BENCHES:-nms3d anchors roi3d estep detect train monai}  # a subset when rerunning
for b in $benches; do
  case $b in
    nms3d) step bench_nms3d 120 "$py" benchmarks/bench_nms3d.py --sizes 1000,10000,100000 --loop-max 2000 --json "$out/bench_nms3d.json" ;;
    anchors) step bench_anchors 60 "$py" benchmarks/bench_anchors.py --json "$out/bench_anchors.json" ;;
    roi3d) step bench_roi3d 90 "$py" benchmarks/bench_roi3d.py --json "$out/bench_roi3d.json" ;;
    estep) step bench_estep 60 "$py" benchmarks/bench_estep.py --baseline-scans 20 --json "$out/bench_estep.json" ;;
    # whole-scan detection, DeepLung's tiles vs the planned path, bf16 where the GPU has it
    detect) step bench_detect 180 "$py" benchmarks/bench_detect.py --device cuda --amp auto --json "$out/bench_detect.json" ;;
    # a training step of the network: eager fp32 vs channels_last_3d vs bf16 autocast
    train) step bench_train 120 "$py" benchmarks/bench_train.py --device cuda --no-full --repeats 5 --json "$out/bench_train.json" ;;
    monai) step bench_monai 120 "$py" benchmarks/bench_monai.py --device cuda --json "$out/bench_monai.json" ;;
  esac
done
sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
if [ -x "$sanitizer" ]; then
  step memcheck "${MEMCHECK_SECONDS:-150}" "$sanitizer" --tool memcheck --error-exitcode 99 \
    "$py" -m pytest -q -x -m cuda -p no:cacheprovider $kernel_tests ${PYTEST_ARGS:-}
  tail -5 "$out/memcheck.txt"
else
  echo "compute-sanitizer not found" | tee "$out/memcheck.txt"
fi
echo "gpu_check status: $status" | tee "$out/status.txt"
exit $status

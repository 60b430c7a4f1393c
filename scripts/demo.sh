#!/usr/bin/env bash
# The main job. Until the end-to-end phantom demo lands, it sets up and runs the NMS benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
"${DEEPEM_VENV:-.venv}/bin/python" benchmarks/bench_nms3d.py "$@"

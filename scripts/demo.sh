#!/usr/bin/env bash
# The main job: sets up (scripts/setup.sh), then runs the DeepEM phantom benchmark end to end
# (deepem demo: phantom data, baseline, DeepEM MAP and sampling, oracle, LUNA16 FROC table).
# Arguments go to `deepem demo` (e.g. --quick, --seeds 3, --out DIR); results land in demo_out/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${DEEPEM_VENV:-.venv}/bin/python" -m deepem demo "$@"

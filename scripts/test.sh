#!/usr/bin/env bash
# Sets up (scripts/setup.sh), then runs the C++ (CMake/ctest) build and test and the Python
# tests. Tests that need a GPU are listed as skipped when there is none.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
py="${DEEPEM_VENV:-.venv}/bin/python"
bash scripts/cmake_test.sh "$py"
"$py" -m pytest -q -rs tests "$@"

#!/usr/bin/env bash
# Builds the CMake library (same sources as setup.py, from csrc/sources.txt) against LibTorch
# and runs its C++ test with ctest. Usage: scripts/cmake_test.sh PYTHON
set -euo pipefail
cd "$(dirname "$0")/.."
py=${1:-python3}
prefix=$("$py" -c "import torch; print(torch.utils.cmake_prefix_path)")
cmake -S . -B build/cmake -G Ninja -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build/cmake -j "${MAX_JOBS:-$(nproc)}"
ctest --test-dir build/cmake --output-on-failure

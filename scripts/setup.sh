#!/usr/bin/env bash
# Makes (or reuses) the virtual environment and builds deepem._C in place.
# CUDA kernels are built when nvcc and a CUDA build of torch are present (FORCE_CUDA=1 insists,
# DEEPEM_CPU_ONLY=1 skips them). Environment: DEEPEM_VENV (default .venv), MAX_JOBS.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${DEEPEM_VENV:-.venv}
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
py="$venv/bin/python"
# torch 2.14.1 (CUDA 13.0 build) and torchvision come from this machine's local package store.
"$py" -m pip install -q --disable-pip-version-check \
  "torch==2.14.1" "torchvision==0.29.1" numpy scipy SimpleITK tqdm \
  matplotlib pyyaml setuptools wheel ninja pytest hypothesis expecttest "pydicom==3.0.2"
# MONAI is a baseline in tests and benchmarks; its own dependencies are already here.
"$py" -m pip install -q --disable-pip-version-check --no-deps "monai==1.6.1"
MAX_JOBS=${MAX_JOBS:-$(nproc)} "$py" setup.py -q build_ext --inplace
# Make this checkout importable from anywhere in the venv (what an editable install does,
# without a second build): benchmarks and `python -m deepem` then use the in-place build.
site=$("$py" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
pwd > "$site/deepem-checkout.pth"
"$py" -c "import deepem; print('deepem', deepem.__version__, deepem.build_info())"

"""Builds deepem._C: CPU kernels always, CUDA kernels where nvcc and a CUDA build of torch are.

Environment: FORCE_CUDA=1 (CUDA kernels or fail), DEEPEM_CPU_ONLY=1 (skip them),
TORCH_CUDA_ARCH_LIST (default "8.0;9.0+PTX"), CUDA_HOME (found by itself otherwise),
MAX_JOBS (parallel compile jobs).
"""
import glob
import os
import shutil
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCHS = "8.0;9.0+PTX"


def read_sources():
    sources = {"cpu": [], "cuda": [], "python": []}
    with open(os.path.join(ROOT, "csrc", "sources.txt")) as f:
        for line in f:
            line = line.split("#", 1)[0].split()
            if line:
                kind, path = line
                sources[kind].append(path)
    return sources


def find_cuda_home():
    """A CUDA toolkit with nvcc and the runtime headers. A wrapper script at /usr/local/bin/nvcc
    makes torch guess /usr/local, which has no headers: such candidates are skipped."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates += sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    for home in candidates:
        if home and os.path.isfile(os.path.join(home, "bin", "nvcc")) and os.path.isfile(
            os.path.join(home, "include", "cuda_runtime_api.h")
        ):
            return home
    return None


def nvidia_wheel_includes():
    """Header folders of the nvidia-* wheels that CUDA builds of torch pull in (cuBLAS and
    friends, which a bare toolkit may lack and ATen's CUDA headers include)."""
    found = []
    for base in sys.path:
        for inc in glob.glob(os.path.join(base, "nvidia", "*", "include")):
            if os.path.isfile(os.path.join(inc, "cublas_v2.h")):
                found.append(inc)
    return found


CUDA_HOME = find_cuda_home()
if CUDA_HOME:
    os.environ["CUDA_HOME"] = CUDA_HOME  # must be set before cpp_extension is imported

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def want_cuda():
    if os.environ.get("DEEPEM_CPU_ONLY", "0") == "1":
        return False
    if os.environ.get("FORCE_CUDA", "0") == "1":
        if CUDA_HOME is None:
            sys.exit("FORCE_CUDA=1 but no CUDA toolkit (bin/nvcc + include/) was found; set CUDA_HOME")
        if torch.version.cuda is None:
            sys.exit("FORCE_CUDA=1 but the installed torch is a CPU build; install a CUDA build of torch")
        return True
    return CUDA_HOME is not None and torch.version.cuda is not None


def extensions():
    sources = read_sources()
    with_cuda = want_cuda()
    # No fused multiply-add contraction on either side: CPU and CUDA kernels share their
    # arithmetic (csrc/common) and must round every step alike to give identical results.
    # -fno-trapping-math changes no result (FP exceptions are never trapped here); it lets GCC
    # vectorise loops with float compares and selects (the E-step's weights, 1.2x).
    cxx = ["-O3", "-g0", "-fopenmp", "-ffp-contract=off", "-fno-trapping-math"]
    macros = []
    kwargs = {}
    srcs = sources["cpu"] + sources["python"]
    if with_cuda:
        archs = os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCHS)
        macros += [
            ("WITH_CUDA", None),
            ("DEEPEM_CUDA_ARCHS", '"%s"' % archs),
            ("DEEPEM_CUDA_VERSION", '"%s"' % torch.version.cuda),
        ]
        if not os.path.isfile(os.path.join(CUDA_HOME, "include", "cublas_v2.h")):
            for inc in nvidia_wheel_includes():
                cxx += ["-idirafter", inc]
        kwargs["extra_compile_args"] = {"cxx": cxx, "nvcc": ["-O3", "--expt-relaxed-constexpr", "--fmad=false"]}
        ext = CUDAExtension
        srcs += sources["cuda"]
    else:
        kwargs["extra_compile_args"] = {"cxx": cxx}
        ext = CppExtension
    print("deepem: building %s kernels" % ("CPU and CUDA" if with_cuda else "CPU"), file=sys.stderr)
    return [
        ext(
            "deepem._C",
            srcs,
            include_dirs=[os.path.join(ROOT, "csrc")],
            define_macros=macros,
            extra_link_args=["-fopenmp"],
            **kwargs,
        )
    ]


setup(
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)

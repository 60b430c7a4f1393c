// The Python module deepem._C: importing it loads the op registrations of the library.
// Plain CPython API (no pybind11) keeps this file quick to compile.
#include <Python.h>
#include <torch/version.h>

#include "ops/cpu/avx2.h"

#ifndef DEEPEM_CUDA_ARCHS
#define DEEPEM_CUDA_ARCHS ""
#endif
#ifndef DEEPEM_CUDA_VERSION
#define DEEPEM_CUDA_VERSION ""
#endif

#define DEEPEM_STR2(x) #x
#define DEEPEM_STR(x) DEEPEM_STR2(x)

namespace {

PyObject* build_info(PyObject*, PyObject*) {
#ifdef WITH_CUDA
  PyObject* cuda = Py_True;
#else
  PyObject* cuda = Py_False;
#endif
  return Py_BuildValue(
      "{s:O,s:s,s:s,s:s}", "cuda_kernels", cuda, "cuda_archs", DEEPEM_CUDA_ARCHS,
      "cuda_version", DEEPEM_CUDA_VERSION, "torch",
      DEEPEM_STR(TORCH_VERSION_MAJOR) "." DEEPEM_STR(TORCH_VERSION_MINOR) "." DEEPEM_STR(
          TORCH_VERSION_PATCH));
}

PyObject* avx2_kernels(PyObject*, PyObject*) { return PyBool_FromLong(deepem::avx2_fma_supported()); }

PyMethodDef kMethods[] = {
    {"build_info", build_info, METH_NOARGS,
     "What this build of deepem._C contains: CUDA kernels, archs, CUDA and torch versions."},
    {"avx2_kernels", avx2_kernels, METH_NOARGS,
     "Whether deepem's AVX2 + FMA CPU kernels run here (this CPU has them, DEEPEM_NO_AVX2 unset); "
     "elsewhere those ops fall back to torch's."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef kModule = {PyModuleDef_HEAD_INIT, "_C", "deepem compiled ops", -1, kMethods};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&kModule); }

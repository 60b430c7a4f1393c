#pragma once
// DEEPEM_HD marks the geometry shared by the CPU and CUDA kernels: compiled for the
// device under nvcc, as ordinary inline C++ everywhere else.
#if defined(__CUDACC__)
#define DEEPEM_HD __host__ __device__ __forceinline__
#else
#define DEEPEM_HD inline
#endif

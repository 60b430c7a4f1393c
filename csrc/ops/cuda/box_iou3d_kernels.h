#pragma once
// Launchers of the box IoU kernels. No ATen here: .cu files stay quick to compile.
#include <cuda_runtime_api.h>

#include <cstdint>

namespace deepem {

template <typename T>
cudaError_t launch_box_iou3d(const T* boxes1, int64_t n, const T* boxes2, int64_t m, T* out,
                             cudaStream_t stream);

}  // namespace deepem

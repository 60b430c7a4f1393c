#pragma once
// Launchers of the 3D RoI align / RoI pooling kernels (per-thread work: csrc/common/roi3d.h).
// No ATen here, so the .cu file compiles quickly. grad_input must be zeroed by the caller.
#include <cuda_runtime_api.h>

#include <cstdint>

#include "../../common/roi3d.h"

namespace deepem {

template <typename T>
cudaError_t launch_roi_align3d_forward(const T* input, const T* rois, int64_t num_rois,
                                       const Roi3dShape& shape, T spatial_scale,
                                       int64_t sampling_ratio, bool aligned, T* output,
                                       cudaStream_t stream);

template <typename T>
cudaError_t launch_roi_align3d_backward(const T* grad_output, const T* rois, int64_t num_rois,
                                        const Roi3dShape& shape, T spatial_scale,
                                        int64_t sampling_ratio, bool aligned, T* grad_input,
                                        cudaStream_t stream);

template <typename T>
cudaError_t launch_roi_pool3d_forward(const T* input, const T* rois, int64_t num_rois,
                                      const Roi3dShape& shape, T spatial_scale, T* output,
                                      int64_t* argmax, cudaStream_t stream);

template <typename T>
cudaError_t launch_roi_pool3d_backward(const T* grad_output, const T* rois,
                                       const int64_t* argmax, int64_t num_rois,
                                       const Roi3dShape& shape, T* grad_input,
                                       cudaStream_t stream);

}  // namespace deepem

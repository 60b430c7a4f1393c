#pragma once
#include <ATen/ATen.h>

#include "../common/roi3d.h"

namespace deepem {

// Checks of a forward call: input [N, C, D, H, W] floating, rois [K, 7] floating on the same
// device, three positive output sizes, a positive finite spatial_scale, and every
// rois[:, 0] a batch index in [0, N). Returns the launch shape.
Roi3dShape check_roi3d_forward_args(const at::Tensor& input, const at::Tensor& rois,
                                    at::IntArrayRef output_size, double spatial_scale,
                                    const char* op);
// Checks of a backward call: grad_output [K, C, d, h, w], input_shape [N, C, D, H, W].
Roi3dShape check_roi3d_backward_args(const at::Tensor& grad_output, const at::Tensor& rois,
                                     at::IntArrayRef input_shape, double spatial_scale,
                                     const char* op);

// argmax of a roi_pool3d backward call: int64, shaped like grad_output, entries in
// [-1, D * H * W).
void check_roi_pool3d_argmax(const at::Tensor& argmax, const at::Tensor& grad_output,
                             const Roi3dShape& shape, const char* op);

// Compute-dtype operands of a call: `t` contiguous in float32/float64, rois in the same dtype.
at::Tensor roi3d_rois_like(const at::Tensor& rois, const at::Tensor& like);

// CPU kernels. Tensors are contiguous in the compute dtype; rois valid (checked).
at::Tensor roi_align3d_cpu_kernel(const at::Tensor& input, const at::Tensor& rois,
                                  const Roi3dShape& shape, double spatial_scale,
                                  int64_t sampling_ratio, bool aligned);
at::Tensor roi_align3d_backward_cpu_kernel(const at::Tensor& grad_output, const at::Tensor& rois,
                                           const Roi3dShape& shape, double spatial_scale,
                                           int64_t sampling_ratio, bool aligned);
std::tuple<at::Tensor, at::Tensor> roi_pool3d_cpu_kernel(const at::Tensor& input,
                                                         const at::Tensor& rois,
                                                         const Roi3dShape& shape,
                                                         double spatial_scale);
at::Tensor roi_pool3d_backward_cpu_kernel(const at::Tensor& grad_output, const at::Tensor& rois,
                                          const at::Tensor& argmax, const Roi3dShape& shape);

// The CUDA roi_align3d kernels' per-thread functions run over their launch grids on the CPU
// (see _roi_align3d_emulated in csrc/deepem.cpp): (output, grad_input for grad_output).
std::tuple<at::Tensor, at::Tensor> roi_align3d_emulated(
    const at::Tensor& input, const at::Tensor& rois, at::IntArrayRef output_size,
    double spatial_scale, int64_t sampling_ratio, bool aligned, const at::Tensor& grad_output);
// The same for the roi_pool3d forward kernel: (output, argmax).
std::tuple<at::Tensor, at::Tensor> roi_pool3d_emulated(const at::Tensor& input,
                                                       const at::Tensor& rois,
                                                       at::IntArrayRef output_size,
                                                       double spatial_scale);

}  // namespace deepem

#pragma once
#include <ATen/ATen.h>

namespace deepem {

void check_box_iou3d_args(const at::Tensor& boxes1, const at::Tensor& boxes2);
// Inputs contiguous in the compute dtype (float32 or float64); output [N, M] in that dtype.
at::Tensor box_iou3d_cpu_kernel(const at::Tensor& boxes1, const at::Tensor& boxes2);

}  // namespace deepem

#include "box_iou3d.h"

#include <torch/library.h>

#include "checks.h"

namespace deepem {

void check_box_iou3d_args(const at::Tensor& boxes1, const at::Tensor& boxes2) {
  check_float_matrix(boxes1, 6, "box_iou3d", "boxes1");
  check_float_matrix(boxes2, 6, "box_iou3d", "boxes2");
  check_same_device(boxes2, boxes1, "box_iou3d", "boxes2", "boxes1");
  check_same_dtype(boxes2, boxes1, "box_iou3d", "boxes2", "boxes1");
}

namespace {

at::Tensor box_iou3d_cpu(const at::Tensor& boxes1, const at::Tensor& boxes2) {
  check_box_iou3d_args(boxes1, boxes2);
  return box_iou3d_cpu_kernel(to_compute(boxes1), to_compute(boxes2)).to(boxes1.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(deepem, CPU, m) { m.impl("box_iou3d", &box_iou3d_cpu); }

}  // namespace deepem

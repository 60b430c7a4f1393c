// CUDA entry of box_iou3d: checks, device guard, current stream, launch check.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../box_iou3d.h"
#include "../checks.h"
#include "box_iou3d_kernels.h"

namespace deepem {
namespace {

at::Tensor box_iou3d_cuda(const at::Tensor& boxes1, const at::Tensor& boxes2) {
  check_box_iou3d_args(boxes1, boxes2);
  const c10::cuda::CUDAGuard guard(boxes1.device());
  const at::Tensor a = to_compute(boxes1), b = to_compute(boxes2);
  at::Tensor out = at::empty({a.size(0), b.size(0)}, a.options());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  if (a.scalar_type() == at::kDouble) {
    C10_CUDA_CHECK(launch_box_iou3d(a.data_ptr<double>(), a.size(0), b.data_ptr<double>(),
                                    b.size(0), out.data_ptr<double>(), stream));
  } else {
    C10_CUDA_CHECK(launch_box_iou3d(a.data_ptr<float>(), a.size(0), b.data_ptr<float>(),
                                    b.size(0), out.data_ptr<float>(), stream));
  }
  return out.to(boxes1.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(deepem, CUDA, m) { m.impl("box_iou3d", &box_iou3d_cuda); }

}  // namespace deepem

// CUDA entries of roi_align3d / roi_pool3d and their backward passes: checks, device guard
// (after the checks, so that a CPU tensor gets the message naming it), current stream,
// launch check. float16/bfloat16 run in float32 (so the atomics are on float).
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../checks.h"
#include "../roi3d.h"
#include "roi3d_kernels.h"

namespace deepem {
namespace {

at::Tensor output_like(const at::Tensor& t, int64_t num_rois, const Roi3dShape& s) {
  return at::empty({num_rois, s.channels, s.pooled[0], s.pooled[1], s.pooled[2]}, t.options());
}

at::Tensor grad_input_like(const at::Tensor& t, const Roi3dShape& s) {
  return at::zeros({s.batch, s.channels, s.size[0], s.size[1], s.size[2]}, t.options());
}

at::Tensor roi_align3d_cuda(const at::Tensor& input, const at::Tensor& rois,
                            at::IntArrayRef output_size, double spatial_scale,
                            int64_t sampling_ratio, bool aligned) {
  const Roi3dShape s =
      check_roi3d_forward_args(input, rois, output_size, spatial_scale, "roi_align3d");
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor x = to_compute(input), r = roi3d_rois_like(rois, x);
  at::Tensor out = output_like(x, r.size(0), s);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "roi_align3d_cuda", [&] {
    C10_CUDA_CHECK(launch_roi_align3d_forward(
        x.data_ptr<scalar_t>(), r.data_ptr<scalar_t>(), r.size(0), s,
        static_cast<scalar_t>(spatial_scale), sampling_ratio, aligned, out.data_ptr<scalar_t>(),
        stream));
  });
  return out.to(input.scalar_type());
}

at::Tensor roi_align3d_backward_cuda(const at::Tensor& grad_output, const at::Tensor& rois,
                                     at::IntArrayRef input_shape, double spatial_scale,
                                     int64_t sampling_ratio, bool aligned) {
  const Roi3dShape s = check_roi3d_backward_args(grad_output, rois, input_shape, spatial_scale,
                                                 "_roi_align3d_backward");
  const c10::cuda::CUDAGuard guard(grad_output.device());
  const at::Tensor g = to_compute(grad_output), r = roi3d_rois_like(rois, g);
  // Atomic adds in an arbitrary order: last bits may differ from run to run.
  at::globalContext().alertNotDeterministic("_roi_align3d_backward (CUDA)");
  at::Tensor grad_input = grad_input_like(g, s);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "roi_align3d_backward_cuda", [&] {
    C10_CUDA_CHECK(launch_roi_align3d_backward(
        g.data_ptr<scalar_t>(), r.data_ptr<scalar_t>(), r.size(0), s,
        static_cast<scalar_t>(spatial_scale), sampling_ratio, aligned,
        grad_input.data_ptr<scalar_t>(), stream));
  });
  return grad_input.to(grad_output.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> roi_pool3d_cuda(const at::Tensor& input,
                                                   const at::Tensor& rois,
                                                   at::IntArrayRef output_size,
                                                   double spatial_scale) {
  const Roi3dShape s =
      check_roi3d_forward_args(input, rois, output_size, spatial_scale, "roi_pool3d");
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor x = to_compute(input), r = roi3d_rois_like(rois, x);
  at::Tensor out = output_like(x, r.size(0), s);
  at::Tensor argmax = at::empty(out.sizes(), out.options().dtype(at::kLong));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "roi_pool3d_cuda", [&] {
    C10_CUDA_CHECK(launch_roi_pool3d_forward(x.data_ptr<scalar_t>(), r.data_ptr<scalar_t>(),
                                             r.size(0), s, static_cast<scalar_t>(spatial_scale),
                                             out.data_ptr<scalar_t>(),
                                             argmax.data_ptr<int64_t>(), stream));
  });
  return {out.to(input.scalar_type()), argmax};
}

at::Tensor roi_pool3d_backward_cuda(const at::Tensor& grad_output, const at::Tensor& rois,
                                    const at::Tensor& argmax, at::IntArrayRef input_shape) {
  const char* op = "_roi_pool3d_backward";
  const Roi3dShape s = check_roi3d_backward_args(grad_output, rois, input_shape, 1.0, op);
  check_roi_pool3d_argmax(argmax, grad_output, s, op);
  const c10::cuda::CUDAGuard guard(grad_output.device());
  const at::Tensor g = to_compute(grad_output), r = roi3d_rois_like(rois, g);
  const at::Tensor a = argmax.contiguous();
  at::globalContext().alertNotDeterministic("_roi_pool3d_backward (CUDA)");
  at::Tensor grad_input = grad_input_like(g, s);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "roi_pool3d_backward_cuda", [&] {
    C10_CUDA_CHECK(launch_roi_pool3d_backward(g.data_ptr<scalar_t>(), r.data_ptr<scalar_t>(),
                                              a.data_ptr<int64_t>(), r.size(0), s,
                                              grad_input.data_ptr<scalar_t>(), stream));
  });
  return grad_input.to(grad_output.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(deepem, CUDA, m) {
  m.impl("roi_align3d", &roi_align3d_cuda);
  m.impl("_roi_align3d_backward", &roi_align3d_backward_cuda);
  m.impl("roi_pool3d", &roi_pool3d_cuda);
  m.impl("_roi_pool3d_backward", &roi_pool3d_backward_cuda);
}

}  // namespace deepem

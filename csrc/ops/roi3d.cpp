#include "roi3d.h"

#include <torch/library.h>

#include <cmath>

#include "checks.h"

namespace deepem {
namespace {

void check_output_size(at::IntArrayRef output_size, const char* op) {
  DEEPEM_CHECK(output_size.size() == 3 && output_size[0] > 0 && output_size[1] > 0 &&
                  output_size[2] > 0,
              op, ": argument 'output_size' must be three positive sizes (d, h, w), got ",
              output_size);
}

void check_rois(const at::Tensor& rois, const at::Tensor& like, const char* op,
                const char* like_name) {
  check_float_matrix(rois, 7, op, "rois");
  check_same_device(rois, like, op, "rois", like_name);
}

// Every rois[:, 0] must name a scan of the batch: a wrong index would read another scan's
// memory. It is checked as the kernels read it, in the compute dtype of `like` (2.9999999999
// in float64 becomes 3 in float32). One reduction (one host sync on CUDA); the failing row is
// looked up only on error.
void check_batch_indices(const at::Tensor& rois, const at::Tensor& like, int64_t batch,
                         const char* op) {
  if (rois.size(0) == 0) return;
  const at::Tensor b =
      rois.select(1, 0).to(compute_dtype(like.scalar_type())).to(at::kDouble);
  const at::Tensor bad = (b >= static_cast<double>(batch)).logical_or_(b < 0).logical_or_(b.isnan());
  if (!bad.any().item<bool>()) return;
  const int64_t row = bad.nonzero()[0][0].item<int64_t>();
  DEEPEM_CHECK(false, op, ": argument 'rois' row ", row, " has batch index rois[", row,
              ", 0] = ", b[row].item<double>(), ", expected a batch index in [0, ", batch,
              ") (the input has ", batch, " scans)");
}

Roi3dShape make_shape(at::IntArrayRef input_shape, at::IntArrayRef output_size) {
  Roi3dShape s;
  s.batch = input_shape[0];
  s.channels = input_shape[1];
  for (int a = 0; a < 3; ++a) {
    s.size[a] = input_shape[2 + a];
    s.pooled[a] = output_size[a];
  }
  return s;
}

void check_spatial_scale(double spatial_scale, const char* op) {
  DEEPEM_CHECK(std::isfinite(spatial_scale) && spatial_scale > 0, op,
              ": argument 'spatial_scale' must be a positive finite number, got ", spatial_scale);
}

}  // namespace

Roi3dShape check_roi3d_forward_args(const at::Tensor& input, const at::Tensor& rois,
                                    at::IntArrayRef output_size, double spatial_scale,
                                    const char* op) {
  DEEPEM_CHECK(input.dim() == 5, op, ": argument 'input' must have shape [N, C, D, H, W], got ",
              input.sizes());
  DEEPEM_CHECK(at::isFloatingType(input.scalar_type()), op,
              ": argument 'input' must be float16, bfloat16, float32 or float64, got ",
              input.scalar_type());
  check_rois(rois, input, op, "input");
  check_output_size(output_size, op);
  check_spatial_scale(spatial_scale, op);
  check_batch_indices(rois, input, input.size(0), op);
  return make_shape(input.sizes(), output_size);
}

Roi3dShape check_roi3d_backward_args(const at::Tensor& grad_output, const at::Tensor& rois,
                                     at::IntArrayRef input_shape, double spatial_scale,
                                     const char* op) {
  DEEPEM_CHECK(input_shape.size() == 5, op,
              ": argument 'input_shape' must be [N, C, D, H, W], got ", input_shape);
  for (int64_t v : input_shape)
    DEEPEM_CHECK(v >= 0, op, ": argument 'input_shape' must be non-negative, got ", input_shape);
  DEEPEM_CHECK(at::isFloatingType(grad_output.scalar_type()), op,
              ": argument 'grad_output' must be a floating tensor, got ",
              grad_output.scalar_type());
  check_rois(rois, grad_output, op, "grad_output");
  DEEPEM_CHECK(grad_output.dim() == 5 && grad_output.size(0) == rois.size(0) &&
                  grad_output.size(1) == input_shape[1],
              op, ": argument 'grad_output' must have shape [", rois.size(0), ", ",
              input_shape[1], ", d, h, w] (rois, channels, output size), got ",
              grad_output.sizes());
  check_output_size(grad_output.sizes().slice(2), op);
  check_spatial_scale(spatial_scale, op);
  check_batch_indices(rois, grad_output, input_shape[0], op);
  return make_shape(input_shape, grad_output.sizes().slice(2));
}

at::Tensor roi3d_rois_like(const at::Tensor& rois, const at::Tensor& like) {
  return rois.to(like.scalar_type()).contiguous();
}

namespace {

at::Tensor roi_align3d_cpu(const at::Tensor& input, const at::Tensor& rois,
                           at::IntArrayRef output_size, double spatial_scale,
                           int64_t sampling_ratio, bool aligned) {
  const Roi3dShape s =
      check_roi3d_forward_args(input, rois, output_size, spatial_scale, "roi_align3d");
  const at::Tensor x = to_compute(input);
  return roi_align3d_cpu_kernel(x, roi3d_rois_like(rois, x), s, spatial_scale, sampling_ratio,
                                aligned)
      .to(input.scalar_type());
}

at::Tensor roi_align3d_backward_cpu(const at::Tensor& grad_output, const at::Tensor& rois,
                                    at::IntArrayRef input_shape, double spatial_scale,
                                    int64_t sampling_ratio, bool aligned) {
  const Roi3dShape s = check_roi3d_backward_args(grad_output, rois, input_shape, spatial_scale,
                                                 "_roi_align3d_backward");
  const at::Tensor g = to_compute(grad_output);
  return roi_align3d_backward_cpu_kernel(g, roi3d_rois_like(rois, g), s, spatial_scale,
                                         sampling_ratio, aligned)
      .to(grad_output.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> roi_pool3d_cpu(const at::Tensor& input, const at::Tensor& rois,
                                                  at::IntArrayRef output_size,
                                                  double spatial_scale) {
  const Roi3dShape s =
      check_roi3d_forward_args(input, rois, output_size, spatial_scale, "roi_pool3d");
  const at::Tensor x = to_compute(input);
  auto [out, argmax] = roi_pool3d_cpu_kernel(x, roi3d_rois_like(rois, x), s, spatial_scale);
  return {out.to(input.scalar_type()), argmax};
}

}  // namespace

void check_roi_pool3d_argmax(const at::Tensor& argmax, const at::Tensor& grad_output,
                             const Roi3dShape& s, const char* op) {
  DEEPEM_CHECK(argmax.scalar_type() == at::kLong && argmax.sizes() == grad_output.sizes(), op,
              ": argument 'argmax' must be an int64 tensor of shape ", grad_output.sizes(),
              " (as returned by roi_pool3d), got ", argmax.scalar_type(), " ", argmax.sizes());
  check_same_device(argmax, grad_output, op, "argmax", "grad_output");
  if (argmax.numel() == 0) return;
  // An index outside the scan would write outside grad_input.
  const int64_t plane = s.size[0] * s.size[1] * s.size[2];
  DEEPEM_CHECK(!(argmax < -1).logical_or_(argmax >= plane).any().item<bool>(), op,
              ": argument 'argmax' has entries outside [-1, ", plane,
              ") (not the argmax of roi_pool3d for this input_shape)");
}

namespace {

at::Tensor roi_pool3d_backward_cpu(const at::Tensor& grad_output, const at::Tensor& rois,
                                   const at::Tensor& argmax, at::IntArrayRef input_shape) {
  const char* op = "_roi_pool3d_backward";
  const Roi3dShape s = check_roi3d_backward_args(grad_output, rois, input_shape, 1.0, op);
  check_roi_pool3d_argmax(argmax, grad_output, s, op);
  const at::Tensor g = to_compute(grad_output);
  return roi_pool3d_backward_cpu_kernel(g, roi3d_rois_like(rois, g), argmax.contiguous(), s)
      .to(grad_output.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(deepem, CPU, m) {
  m.impl("roi_align3d", &roi_align3d_cpu);
  m.impl("_roi_align3d_backward", &roi_align3d_backward_cpu);
  m.impl("roi_pool3d", &roi_pool3d_cpu);
  m.impl("_roi_pool3d_backward", &roi_pool3d_backward_cpu);
  m.impl("_roi_align3d_emulated", &roi_align3d_emulated);
  m.impl("_roi_pool3d_emulated", &roi_pool3d_emulated);
}

}  // namespace deepem

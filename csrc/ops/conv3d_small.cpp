// Entries of _conv3d_small and _conv3d_small_weight_grad: argument checks, then the AVX2 kernels
// of ops/cpu/conv3d_small_kernel.cpp, or torch's own convolution on a CPU without AVX2 + FMA.
// CPU only: deepem.model.conv3d calls them for the narrow detector's CPU training and
// deepem.infer.fused for its full-resolution layers in detection (with the ReLU that follows
// them); CUDA tensors take cuDNN there.
#include "conv3d_small.h"

#include <torch/library.h>

#include "checks.h"
#include "cpu/avx2.h"

namespace deepem {
namespace {

void check_volume(const at::Tensor& t, const char* op, const char* name) {
  DEEPEM_CHECK(t.dim() == 5, op, ": argument '", name, "' must have shape [B, C, D, H, W], got ", t.sizes());
  DEEPEM_CHECK(t.scalar_type() == at::kFloat, op, ": argument '", name, "' must be float32, got ",
               t.scalar_type());
  DEEPEM_CHECK(t.device().is_cpu(), op, ": argument '", name, "' must be on the CPU, got ", t.device());
}

void check_weight(const at::Tensor& weight, int64_t in_channels, const char* op) {
  DEEPEM_CHECK(weight.dim() == 5 && weight.size(1) == in_channels && weight.size(2) == 3 && weight.size(3) == 3 &&
                   weight.size(4) == 3,
               op, ": argument 'weight' must have shape [O, ", in_channels, ", 3, 3, 3], got ", weight.sizes());
  DEEPEM_CHECK(weight.scalar_type() == at::kFloat, op, ": argument 'weight' must be float32, got ",
               weight.scalar_type());
  DEEPEM_CHECK(weight.device().is_cpu(), op, ": argument 'weight' must be on the CPU, got ", weight.device());
}

at::Tensor conv3d_small_cpu(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                            bool relu) {
  constexpr const char* op = "_conv3d_small";
  check_volume(input, op, "input");
  check_weight(weight, input.size(1), op);
  const int64_t O = weight.size(0);
  if (bias) {
    DEEPEM_CHECK(bias->dim() == 1 && bias->size(0) == O, op, ": argument 'bias' must have shape [", O, "], got ",
                 bias->sizes());
    DEEPEM_CHECK(bias->scalar_type() == at::kFloat && bias->device().is_cpu(), op,
                 ": argument 'bias' must be a float32 CPU tensor, got ", bias->scalar_type(), " on ",
                 bias->device());
  }
  if (!avx2_fma_supported()) {
    at::Tensor out = at::conv3d(input, weight, bias, 1, 1);
    return relu ? out.relu_() : out;
  }
  const at::Tensor x = input.contiguous(), w = weight.contiguous();
  const at::Tensor b = bias ? bias->contiguous() : at::Tensor();
  at::Tensor out = at::empty({x.size(0), O, x.size(2), x.size(3), x.size(4)}, x.options());
  if (out.numel() == 0) return out;
  if (x.size(1) == 0) {  // no input channels: the convolution is zero
    out.zero_();
    if (bias) out.add_(b.view({1, O, 1, 1, 1}));
    return relu ? out.relu_() : out;
  }
  conv3d_small_forward_cpu_kernel(x.data_ptr<float>(), w.data_ptr<float>(), bias ? b.data_ptr<float>() : nullptr,
                                  relu, out.data_ptr<float>(), x.size(0), x.size(1), O, x.size(2), x.size(3),
                                  x.size(4));
  return out;
}

at::Tensor conv3d_small_weight_grad_cpu(const at::Tensor& input, const at::Tensor& grad_output) {
  constexpr const char* op = "_conv3d_small_weight_grad";
  check_volume(input, op, "input");
  check_volume(grad_output, op, "grad_output");
  DEEPEM_CHECK(grad_output.size(0) == input.size(0) && grad_output.size(2) == input.size(2) &&
                   grad_output.size(3) == input.size(3) && grad_output.size(4) == input.size(4),
               op, ": argument 'grad_output' must have the batch size and volume of 'input' ", input.sizes(),
               " (a padding-1 3^3 convolution keeps the volume), got ", grad_output.sizes());
  const int64_t O = grad_output.size(1), I = input.size(1);
  if (!avx2_fma_supported()) {
    const at::Tensor weight = at::empty({O, I, 3, 3, 3}, input.options());
    return std::get<1>(at::convolution_backward(grad_output, input, weight, c10::nullopt, {1, 1, 1}, {1, 1, 1},
                                                {1, 1, 1}, false, {0, 0, 0}, 1, {false, true, false}));
  }
  at::Tensor grad_weight = at::zeros({O, I, 3, 3, 3}, input.options());
  if (input.numel() == 0 || grad_weight.numel() == 0) return grad_weight;
  const at::Tensor x = input.contiguous(), g = grad_output.contiguous();
  conv3d_small_weight_grad_cpu_kernel(x.data_ptr<float>(), g.data_ptr<float>(), grad_weight.data_ptr<float>(),
                                           x.size(0), I, O, x.size(2), x.size(3), x.size(4));
  return grad_weight;
}

}  // namespace

TORCH_LIBRARY_IMPL(deepem, CPU, m) {
  m.impl("_conv3d_small", &conv3d_small_cpu);
  m.impl("_conv3d_small_weight_grad", &conv3d_small_weight_grad_cpu);
}

}  // namespace deepem

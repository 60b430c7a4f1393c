// Entries of _batch_norm3d_train and _batch_norm3d_train_backward: argument checks, then the AVX2
// kernels of ops/cpu/batch_norm3d_kernel.cpp, or torch's batch norm on a CPU without AVX2 + FMA.
// CPU only: deepem.model.batch_norm calls them in training; other devices take torch's.
#include "batch_norm3d.h"

#include <torch/library.h>

#include "checks.h"
#include "cpu/avx2.h"

namespace deepem {
namespace {

void check_float_cpu(const at::Tensor& t, const char* op, const char* name) {
  DEEPEM_CHECK(t.scalar_type() == at::kFloat && t.device().is_cpu(), op, ": argument '", name,
               "' must be a float32 CPU tensor, got ", t.scalar_type(), " on ", t.device());
}

void check_per_channel(const c10::optional<at::Tensor>& t, int64_t C, const char* op, const char* name) {
  if (!t) return;
  DEEPEM_CHECK(t->dim() == 1 && t->size(0) == C, op, ": argument '", name, "' must have shape [", C,
               "] (one per channel), got ", t->sizes());
  check_float_cpu(*t, op, name);
}

void check_input(const at::Tensor& input, const char* op) {
  DEEPEM_CHECK(input.dim() == 5 && input.size(1) > 0, op,
               ": argument 'input' must have shape [B, C, D, H, W] with C > 0, got ", input.sizes());
  check_float_cpu(input, op, "input");
  DEEPEM_CHECK(input.numel() > 0, op, ": argument 'input' is empty (", input.sizes(),
               "): batch statistics need at least one value per channel");
}

const float* data_or_null(const at::Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; }

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> batch_norm3d_train_cpu(
    const at::Tensor& input, const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias,
    double eps, bool relu) {
  constexpr const char* op = "_batch_norm3d_train";
  check_input(input, op);
  const int64_t C = input.size(1);
  check_per_channel(weight, C, op, "weight");
  check_per_channel(bias, C, op, "bias");
  DEEPEM_CHECK(eps > 0, op, ": argument 'eps' must be > 0, got ", eps);
  const double n = static_cast<double>(input.numel() / C);
  if (!avx2_fma_supported()) {
    auto [out, mean, invstd] = at::native_batch_norm(input, weight, bias, {}, {}, true, 0.0, eps);
    const at::Tensor var = (invstd.pow(-2) - eps) * (n > 1 ? n / (n - 1) : NAN);
    return {relu ? out.relu_() : out, mean, invstd, var};
  }
  const at::Tensor x = input.contiguous();
  const at::Tensor w = weight ? weight->contiguous() : at::Tensor(), b = bias ? bias->contiguous() : at::Tensor();
  at::Tensor out = at::empty_like(x), mean = at::empty({C}, x.options()), invstd = at::empty({C}, x.options()),
             var = at::empty({C}, x.options());
  batch_norm3d_forward_cpu_kernel(x.data_ptr<float>(), data_or_null(w), data_or_null(b), out.data_ptr<float>(),
                                  mean.data_ptr<float>(), invstd.data_ptr<float>(), var.data_ptr<float>(), x.size(0),
                                  C, x.numel() / (x.size(0) * C), eps, relu);
  return {out, mean, invstd, var};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm3d_train_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const c10::optional<at::Tensor>& weight,
    const at::Tensor& mean, const at::Tensor& invstd, const c10::optional<at::Tensor>& relu_output,
    std::array<bool, 3> output_mask) {
  constexpr const char* op = "_batch_norm3d_train_backward";
  check_input(input, op);
  const int64_t C = input.size(1);
  DEEPEM_CHECK(grad_output.sizes() == input.sizes(), op, ": argument 'grad_output' must have the shape of 'input' ",
               input.sizes(), ", got ", grad_output.sizes());
  check_float_cpu(grad_output, op, "grad_output");
  check_per_channel(weight, C, op, "weight");
  check_per_channel(mean, C, op, "mean");
  check_per_channel(invstd, C, op, "invstd");
  if (relu_output) {
    DEEPEM_CHECK(relu_output->sizes() == input.sizes(), op, ": argument 'relu_output' must have the shape of 'input' ",
                 input.sizes(), ", got ", relu_output->sizes());
    check_float_cpu(*relu_output, op, "relu_output");
  }
  if (!avx2_fma_supported()) {
    const at::Tensor g = relu_output ? grad_output * relu_output->gt(0) : grad_output;
    return at::native_batch_norm_backward(g, input, weight, {}, {}, mean, invstd, true, 0.0, output_mask);
  }
  const at::Tensor x = input.contiguous(), g = grad_output.contiguous(), m = mean.contiguous(),
                   s = invstd.contiguous();
  const at::Tensor r = relu_output ? relu_output->contiguous() : at::Tensor();
  const at::Tensor w = weight ? weight->contiguous() : at::Tensor();
  at::Tensor grad_x = output_mask[0] ? at::empty_like(x) : at::Tensor();
  at::Tensor grad_w = output_mask[1] ? at::empty({C}, x.options()) : at::Tensor();
  at::Tensor grad_b = output_mask[2] ? at::empty({C}, x.options()) : at::Tensor();
  batch_norm3d_backward_cpu_kernel(g.data_ptr<float>(), x.data_ptr<float>(), data_or_null(w), m.data_ptr<float>(),
                                   s.data_ptr<float>(), data_or_null(r), grad_x.defined() ? grad_x.data_ptr<float>() : nullptr,
                                   grad_w.defined() ? grad_w.data_ptr<float>() : nullptr,
                                   grad_b.defined() ? grad_b.data_ptr<float>() : nullptr, x.size(0), C,
                                   x.numel() / (x.size(0) * C));
  return {grad_x, grad_w, grad_b};
}

}  // namespace

TORCH_LIBRARY_IMPL(deepem, CPU, m) {
  m.impl("_batch_norm3d_train", &batch_norm3d_train_cpu);
  m.impl("_batch_norm3d_train_backward", &batch_norm3d_train_backward_cpu);
}

}  // namespace deepem

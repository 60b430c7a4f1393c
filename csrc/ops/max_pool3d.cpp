// Entry of _max_pool3d_2x: argument checks, then ops/cpu/max_pool3d_kernel.cpp. CPU only:
// deepem.model.pool calls it in training; its backward is torch's max_pool3d_with_indices_backward.
#include "max_pool3d.h"

#include <torch/library.h>

#include "checks.h"

namespace deepem {
namespace {

std::tuple<at::Tensor, at::Tensor> max_pool3d_2x_cpu(const at::Tensor& input) {
  constexpr const char* op = "_max_pool3d_2x";
  DEEPEM_CHECK(input.dim() == 5 && input.size(2) % 2 == 0 && input.size(3) % 2 == 0 && input.size(4) % 2 == 0, op,
               ": argument 'input' must have shape [B, C, D, H, W] with even D, H, W, got ", input.sizes());
  DEEPEM_CHECK(input.scalar_type() == at::kFloat && input.device().is_cpu(), op,
               ": argument 'input' must be a float32 CPU tensor, got ", input.scalar_type(), " on ", input.device());
  const at::Tensor x = input.contiguous();
  const int64_t B = x.size(0), C = x.size(1), D = x.size(2), H = x.size(3), W = x.size(4);
  at::Tensor out = at::empty({B, C, D / 2, H / 2, W / 2}, x.options());
  at::Tensor idx = at::empty({B, C, D / 2, H / 2, W / 2}, x.options().dtype(at::kLong));
  if (out.numel() > 0) max_pool3d_2x_cpu_kernel(x.data_ptr<float>(), out.data_ptr<float>(), idx.data_ptr<int64_t>(), B * C, D, H, W);
  return {out, idx};
}

}  // namespace

TORCH_LIBRARY_IMPL(deepem, CPU, m) { m.impl("_max_pool3d_2x", &max_pool3d_2x_cpu); }

}  // namespace deepem

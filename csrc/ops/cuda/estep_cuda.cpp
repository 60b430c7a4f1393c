// CUDA entries of em_posterior, em_map and em_sample: checks, device guard, launch on the
// current stream (kernels in estep_kernels.cu).
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../checks.h"
#include "../estep.h"
#include "estep_kernels.h"

namespace deepem {
namespace {

std::tuple<at::Tensor, at::Tensor> em_posterior_cuda(
    const at::Tensor& proposals, const at::Tensor& num_proposals, const at::Tensor& weak_z,
    const at::Tensor& weak_lobe, const at::Tensor& num_weak,
    const c10::optional<at::Tensor>& lobe_log_probs, double mu, double sigma, double z_window,
    const c10::optional<at::Tensor>& weak_diameter, double size_sigma,
    const c10::optional<at::Tensor>& weak_texture,
    const c10::optional<at::Tensor>& texture_log_probs, double texture_weight) {
  const c10::cuda::CUDAGuard guard(proposals.device());
  const EmPosteriorInputs in = check_em_posterior_args(
      proposals, num_proposals, weak_z, weak_lobe, num_weak, lobe_log_probs, mu, sigma, z_window,
      weak_diameter, size_sigma, weak_texture, texture_log_probs, texture_weight);
  const int64_t B = in.proposals.size(0), P = in.proposals.size(1), M = in.weak_z.size(1);
  at::Tensor out = at::empty({B, M, P}, in.proposals.options());
  at::Tensor has = at::empty({B, M}, in.proposals.options().dtype(at::kBool));
  const bool lobes = in.lobe_log_probs.defined();
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "em_posterior_cuda", [&] {
    const EmRecordPointers<scalar_t> records(in);
    C10_CUDA_CHECK(launch_em_posterior<scalar_t>(
        in.proposals.data_ptr<scalar_t>(), in.num_proposals.data_ptr<int64_t>(),
        in.weak_z.data_ptr<scalar_t>(), in.weak_lobe.data_ptr<int64_t>(),
        in.num_weak.data_ptr<int64_t>(),
        lobes ? in.lobe_log_probs.data_ptr<scalar_t>() : nullptr,
        lobes ? in.lobe_log_probs.size(2) : 0, records.log_diameter, records.texture,
        records.texture_log_probs, records.K, B, M, P, in.params<scalar_t>(mu, sigma, z_window),
        out.data_ptr<scalar_t>(), has.data_ptr<bool>(), c10::cuda::getCurrentCUDAStream()));
  });
  return {out.to(proposals.scalar_type()), has};
}

at::Tensor em_map_cuda(const at::Tensor& log_posterior) {
  const c10::cuda::CUDAGuard guard(log_posterior.device());
  const at::Tensor lp = check_log_posterior(log_posterior, "em_map");
  const int64_t rows = lp.size(0) * lp.size(1), P = lp.size(2);
  at::Tensor index = at::empty({lp.size(0), lp.size(1)}, lp.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES(lp.scalar_type(), "em_map_cuda", [&] {
    C10_CUDA_CHECK(launch_em_map<scalar_t>(lp.data_ptr<scalar_t>(), rows, P,
                                           index.data_ptr<int64_t>(),
                                           c10::cuda::getCurrentCUDAStream()));
  });
  return index;
}

at::Tensor em_sample_cuda(const at::Tensor& log_posterior, int64_t k, int64_t seed,
                          int64_t offset) {
  const c10::cuda::CUDAGuard guard(log_posterior.device());
  const at::Tensor lp = check_log_posterior(log_posterior, "em_sample");
  check_sample_count(k, "em_sample");
  const int64_t B = lp.size(0), M = lp.size(1), P = lp.size(2);
  at::Tensor index = at::empty({B, M, k}, lp.options().dtype(at::kLong));
  if (index.numel() == 0) return index;
  // The keys of every (label, proposal): the draw rounds read them k times.
  at::Tensor keys = at::empty({B * M * P}, lp.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES(lp.scalar_type(), "em_sample_cuda", [&] {
    C10_CUDA_CHECK(launch_em_sample<scalar_t>(
        lp.data_ptr<scalar_t>(), B, M, P, k, static_cast<uint64_t>(seed),
        static_cast<uint64_t>(offset), keys.data_ptr<double>(), index.data_ptr<int64_t>(),
        c10::cuda::getCurrentCUDAStream()));
  });
  return index;
}

}  // namespace

TORCH_LIBRARY_IMPL(deepem, CUDA, m) {
  m.impl("em_posterior", &em_posterior_cuda);
  m.impl("em_map", &em_map_cuda);
  m.impl("em_sample", &em_sample_cuda);
}

}  // namespace deepem

#pragma once
// The E-step ops (schemas in csrc/deepem.cpp, arithmetic in csrc/common/estep.h).
#include <ATen/ATen.h>

#include <tuple>

namespace deepem {

// Inputs of em_posterior after the checks: contiguous, proposals / weak_z / lobe_log_probs in
// the compute dtype, counts and lobes int64. lobe_log_probs undefined when absent.
struct EmPosteriorInputs {
  at::Tensor proposals, num_proposals, weak_z, weak_lobe, num_weak, lobe_log_probs;
};

// Checks of every em_posterior argument (shapes, dtypes, devices, count ranges, lobe ids of
// real labels, mu / sigma / z_window); returns the inputs ready for a kernel.
EmPosteriorInputs check_em_posterior_args(const at::Tensor& proposals,
                                          const at::Tensor& num_proposals,
                                          const at::Tensor& weak_z, const at::Tensor& weak_lobe,
                                          const at::Tensor& num_weak,
                                          const c10::optional<at::Tensor>& lobe_log_probs,
                                          double mu, double sigma, double z_window);

// log_posterior [B, M, P] of a floating dtype; returns it contiguous in the compute dtype.
at::Tensor check_log_posterior(const at::Tensor& log_posterior, const char* op);
void check_sample_count(int64_t k, const char* op);

// CPU kernels. Posterior returns (log_posterior in the compute dtype, has_candidate bool).
std::tuple<at::Tensor, at::Tensor> em_posterior_cpu_kernel(const EmPosteriorInputs& in,
                                                           double mu, double sigma,
                                                           double z_window);
at::Tensor em_map_cpu_kernel(const at::Tensor& log_posterior);
at::Tensor em_sample_cpu_kernel(const at::Tensor& log_posterior, int64_t k, int64_t seed,
                                int64_t offset);

// The CUDA kernels' launch grids run sequentially on the CPU (test-only ops).
std::tuple<at::Tensor, at::Tensor> em_posterior_emulated(
    const at::Tensor& proposals, const at::Tensor& num_proposals, const at::Tensor& weak_z,
    const at::Tensor& weak_lobe, const at::Tensor& num_weak,
    const c10::optional<at::Tensor>& lobe_log_probs, double mu, double sigma, double z_window);
at::Tensor em_map_emulated(const at::Tensor& log_posterior);
at::Tensor em_sample_emulated(const at::Tensor& log_posterior, int64_t k, int64_t seed,
                              int64_t offset);

}  // namespace deepem

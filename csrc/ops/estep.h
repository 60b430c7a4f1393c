#pragma once
// The E-step ops (schemas in csrc/deepem.cpp, arithmetic in csrc/common/estep.h).
#include <ATen/ATen.h>

#include <tuple>

#include "../common/estep.h"

namespace deepem {

// Inputs of em_posterior after the checks: contiguous, proposals / weak_z / lobe_log_probs in
// the compute dtype, counts and lobes int64. lobe_log_probs undefined when absent.
struct EmPosteriorInputs {
  at::Tensor proposals, num_proposals, weak_z, weak_lobe, num_weak, lobe_log_probs;
  // The record terms (each undefined when absent): log of each label's diameter (NaN: none),
  // each label's texture id (-1: none) and log p(texture | proposal) [B, P, K].
  at::Tensor weak_log_diameter, weak_texture, texture_log_probs;
  double size_sigma = 1.0, texture_weight = 1.0;

  template <typename T>
  EmParams<T> params(double mu, double sigma, double z_window) const {
    return em_params<T>(mu, sigma, z_window, size_sigma, texture_weight);
  }
};

// Checks of every em_posterior argument (shapes, dtypes, devices, count ranges, lobe ids of
// real labels, mu / sigma / z_window); returns the inputs ready for a kernel.
EmPosteriorInputs check_em_posterior_args(
    const at::Tensor& proposals, const at::Tensor& num_proposals, const at::Tensor& weak_z,
    const at::Tensor& weak_lobe, const at::Tensor& num_weak,
    const c10::optional<at::Tensor>& lobe_log_probs, double mu, double sigma, double z_window,
    const c10::optional<at::Tensor>& weak_diameter, double size_sigma,
    const c10::optional<at::Tensor>& weak_texture,
    const c10::optional<at::Tensor>& texture_log_probs, double texture_weight);

// log_posterior [B, M, P] of a floating dtype; returns it contiguous in the compute dtype.
at::Tensor check_log_posterior(const at::Tensor& log_posterior, const char* op);
void check_sample_count(int64_t k, const char* op);

// CPU kernels. Posterior returns (log_posterior in the compute dtype, has_candidate bool).
std::tuple<at::Tensor, at::Tensor> em_posterior_cpu_kernel(const EmPosteriorInputs& in,
                                                           double mu, double sigma,
                                                           double z_window);

// Pointers of the record inputs (null when absent), for the kernels.
template <typename T>
struct EmRecordPointers {
  const T* log_diameter;
  const int64_t* texture;
  const T* texture_log_probs;
  int64_t K;
  explicit EmRecordPointers(const EmPosteriorInputs& in)
      : log_diameter(in.weak_log_diameter.defined() ? in.weak_log_diameter.data_ptr<T>() : nullptr),
        texture(in.weak_texture.defined() ? in.weak_texture.data_ptr<int64_t>() : nullptr),
        texture_log_probs(in.texture_log_probs.defined() ? in.texture_log_probs.data_ptr<T>()
                                                          : nullptr),
        K(in.texture_log_probs.defined() ? in.texture_log_probs.size(2) : 0) {}
  EmLabelRecord<T> label(int64_t P, int64_t b, int64_t r) const {
    return em_label_record(log_diameter, texture, texture_log_probs, K, P, b, r);
  }
};

at::Tensor em_map_cpu_kernel(const at::Tensor& log_posterior);
at::Tensor em_sample_cpu_kernel(const at::Tensor& log_posterior, int64_t k, int64_t seed,
                                int64_t offset);

// The CUDA kernels' launch grids run sequentially on the CPU (test-only ops).
std::tuple<at::Tensor, at::Tensor> em_posterior_emulated(
    const at::Tensor& proposals, const at::Tensor& num_proposals, const at::Tensor& weak_z,
    const at::Tensor& weak_lobe, const at::Tensor& num_weak,
    const c10::optional<at::Tensor>& lobe_log_probs, double mu, double sigma, double z_window,
    const c10::optional<at::Tensor>& weak_diameter, double size_sigma,
    const c10::optional<at::Tensor>& weak_texture,
    const c10::optional<at::Tensor>& texture_log_probs, double texture_weight);
at::Tensor em_map_emulated(const at::Tensor& log_posterior);
at::Tensor em_sample_emulated(const at::Tensor& log_posterior, int64_t k, int64_t seed,
                              int64_t offset);

}  // namespace deepem

#pragma once
// Launchers of the E-step kernels: one warp per weak label (row b * M + m). No ATen here, so
// the .cu file compiles quickly.
#include <cuda_runtime_api.h>

#include <cstdint>

#include "../../common/estep.h"

namespace deepem {

// lobe_log_probs may be null (no lobe term); out [B, M, P], has [B, M].
// The record inputs may be null (no size / texture term): weak_log_diameter [B, M],
// weak_texture [B, M], texture_log_probs [B, P, num_textures].
template <typename T>
cudaError_t launch_em_posterior(const T* proposals, const int64_t* num_proposals,
                                const T* weak_z, const int64_t* weak_lobe,
                                const int64_t* num_weak, const T* lobe_log_probs,
                                int64_t num_lobes, const T* weak_log_diameter,
                                const int64_t* weak_texture, const T* texture_log_probs,
                                int64_t num_textures, int64_t B, int64_t M, int64_t P,
                                EmParams<T> params, T* out, bool* has, cudaStream_t stream);

template <typename T>
cudaError_t launch_em_map(const T* log_posterior, int64_t rows, int64_t P, int64_t* index,
                          cudaStream_t stream);

// keys: scratch of B * M * P doubles; index [B, M, k] (filled with -1 past the draws).
template <typename T>
cudaError_t launch_em_sample(const T* log_posterior, int64_t B, int64_t M, int64_t P, int64_t k,
                             uint64_t seed, uint64_t offset, double* keys, int64_t* index,
                             cudaStream_t stream);

}  // namespace deepem

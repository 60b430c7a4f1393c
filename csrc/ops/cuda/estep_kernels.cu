// E-step CUDA kernels: one warp per weak label, lanes striding over its proposals with the
// per-lane functions of csrc/common/estep.h and xor-shuffle reductions (the CPU emulation in
// ops/cpu/estep_emulation.cpp runs the same grid and reductions in the same order).
#include "estep_kernels.h"
#include "launch.cuh"

namespace deepem {
namespace {

constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = 4;
constexpr unsigned kFullMask = 0xffffffffu;

unsigned grid_for_rows(int64_t rows) { return grid_blocks(rows, kWarpsPerBlock); }

__device__ int64_t first_row() {
  return blockIdx.x * int64_t(kWarpsPerBlock) + threadIdx.x / kWarp;
}
__device__ int64_t row_stride() { return int64_t(gridDim.x) * kWarpsPerBlock; }

template <typename T>
__device__ T warp_max(T v) {
  for (int o = kWarp / 2; o > 0; o /= 2) {
    const T other = __shfl_xor_sync(kFullMask, v, o);
    v = v > other ? v : other;
  }
  return v;
}

template <typename T>
__device__ T warp_sum(T v) {
  for (int o = kWarp / 2; o > 0; o /= 2) v = v + __shfl_xor_sync(kFullMask, v, o);
  return v;
}

template <typename T>
__global__ void em_posterior_kernel(const T* __restrict__ proposals,
                                    const int64_t* __restrict__ num_proposals,
                                    const T* __restrict__ weak_z,
                                    const int64_t* __restrict__ weak_lobe,
                                    const int64_t* __restrict__ num_weak,
                                    const T* __restrict__ lobe_log_probs, int64_t num_lobes,
                                    const T* __restrict__ weak_log_diameter,
                                    const int64_t* __restrict__ weak_texture,
                                    const T* __restrict__ texture_log_probs, int64_t num_textures,
                                    int64_t B, int64_t M, int64_t P, EmParams<T> prm,
                                    T* __restrict__ out, bool* __restrict__ has) {
  const int64_t lane = threadIdx.x % kWarp;
  for (int64_t r = first_row(); r < B * M; r += row_stride()) {  // warp-uniform
    const int64_t b = r / M, m = r % M;
    T* row = out + r * P;
    if (m >= num_weak[b]) {
      for (int64_t p = lane; p < P; p += kWarp) row[p] = T(-INFINITY);
      if (lane == 0) has[r] = false;
      continue;
    }
    const int64_t n = num_proposals[b];
    const T* lobes = lobe_log_probs ? lobe_log_probs + b * P * num_lobes : nullptr;
    const EmLabelRecord<T> rec = em_label_record(weak_log_diameter, weak_texture,
                                                 texture_log_probs, num_textures, P, b, r);
    const T max_w = warp_max(em_lane_weights(proposals + b * P * 5, lobes, num_lobes,
                                             weak_lobe[r], n, P, weak_z[r], rec, prm, lane,
                                             kWarp, row));
    if (!(max_w > T(-INFINITY))) {
      if (lane == 0) has[r] = false;
      continue;
    }
    // Each lane reads back only the entries it wrote: no barrier needed.
    const T sum = warp_sum(em_lane_sum_exp(row, n, max_w, lane, kWarp));
    em_lane_normalise(row, n, max_w + log(sum), lane, kWarp);
    if (lane == 0) has[r] = true;
  }
}

template <typename T>
__global__ void em_map_kernel(const T* __restrict__ log_posterior, int64_t rows, int64_t P,
                              int64_t* __restrict__ index) {
  const int64_t lane = threadIdx.x % kWarp;
  for (int64_t r = first_row(); r < rows; r += row_stride()) {
    T best;
    int64_t best_index;
    em_lane_argmax(log_posterior + r * P, P, lane, kWarp, &best, &best_index);
    for (int o = kWarp / 2; o > 0; o /= 2) {
      const T other = __shfl_xor_sync(kFullMask, best, o);
      const int64_t other_index = __shfl_xor_sync(kFullMask, best_index, o);
      if (em_better(other, other_index, best, best_index)) {
        best = other;
        best_index = other_index;
      }
    }
    if (lane == 0) index[r] = best_index;
  }
}

template <typename T>
__global__ void em_sample_kernel(const T* __restrict__ log_posterior, int64_t B, int64_t M,
                                 int64_t P, int64_t k, uint64_t seed, uint64_t offset,
                                 double* __restrict__ keys, int64_t* __restrict__ index) {
  const int64_t lane = threadIdx.x % kWarp;
  for (int64_t r = first_row(); r < B * M; r += row_stride()) {
    const uint64_t stream = em_label_stream(seed, offset, r / M, r % M);
    double* key = keys + r * P;
    for (int64_t p = lane; p < P; p += kWarp) key[p] = em_sample_key(log_posterior[r * P + p], stream, p);
    __syncwarp();
    // Round j draws the first entry in key order after draw j - 1.
    double prev_key = 0.0;
    int64_t prev_index = -1;
    int64_t j = 0;
    for (; j < k; ++j) {
      double best;
      int64_t best_index;
      em_lane_next_draw(key, P, prev_key, prev_index, lane, kWarp, &best, &best_index);
      for (int o = kWarp / 2; o > 0; o /= 2) {
        const double other = __shfl_xor_sync(kFullMask, best, o);
        const int64_t other_index = __shfl_xor_sync(kFullMask, best_index, o);
        em_merge_draw(&best, &best_index, other, other_index);
      }
      if (best_index < 0) break;  // the same on every lane
      if (lane == 0) index[r * k + j] = best_index;
      prev_key = best;
      prev_index = best_index;
    }
    for (int64_t t = j + lane; t < k; t += kWarp) index[r * k + t] = -1;
  }
}

}  // namespace

template <typename T>
cudaError_t launch_em_posterior(const T* proposals, const int64_t* num_proposals,
                                const T* weak_z, const int64_t* weak_lobe,
                                const int64_t* num_weak, const T* lobe_log_probs,
                                int64_t num_lobes, const T* weak_log_diameter,
                                const int64_t* weak_texture, const T* texture_log_probs,
                                int64_t num_textures, int64_t B, int64_t M, int64_t P,
                                EmParams<T> params, T* out, bool* has, cudaStream_t stream) {
  if (B * M == 0) return cudaSuccess;
  em_posterior_kernel<T><<<grid_for_rows(B * M), kWarp * kWarpsPerBlock, 0, stream>>>(
      proposals, num_proposals, weak_z, weak_lobe, num_weak, lobe_log_probs, num_lobes,
      weak_log_diameter, weak_texture, texture_log_probs, num_textures, B, M, P, params, out,
      has);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_em_map(const T* log_posterior, int64_t rows, int64_t P, int64_t* index,
                          cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  em_map_kernel<T><<<grid_for_rows(rows), kWarp * kWarpsPerBlock, 0, stream>>>(log_posterior,
                                                                               rows, P, index);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_em_sample(const T* log_posterior, int64_t B, int64_t M, int64_t P, int64_t k,
                             uint64_t seed, uint64_t offset, double* keys, int64_t* index,
                             cudaStream_t stream) {
  if (B * M == 0 || k == 0) return cudaSuccess;
  em_sample_kernel<T><<<grid_for_rows(B * M), kWarp * kWarpsPerBlock, 0, stream>>>(
      log_posterior, B, M, P, k, seed, offset, keys, index);
  return cudaGetLastError();
}

#define DEEPEM_INSTANTIATE(T)                                                                  \
  template cudaError_t launch_em_posterior<T>(                                                 \
      const T*, const int64_t*, const T*, const int64_t*, const int64_t*, const T*, int64_t,   \
      const T*, const int64_t*, const T*, int64_t, int64_t, int64_t, int64_t, EmParams<T>, T*, \
      bool*, cudaStream_t);                                                                    \
  template cudaError_t launch_em_map<T>(const T*, int64_t, int64_t, int64_t*, cudaStream_t);   \
  template cudaError_t launch_em_sample<T>(const T*, int64_t, int64_t, int64_t, int64_t,       \
                                           uint64_t, uint64_t, double*, int64_t*, cudaStream_t);
DEEPEM_INSTANTIATE(float)
DEEPEM_INSTANTIATE(double)
#undef DEEPEM_INSTANTIATE

}  // namespace deepem

#include "anchors3d_kernels.h"
#include "launch.cuh"

namespace deepem {
namespace {

constexpr int kThreads = 256;

unsigned grid_for(int64_t items) { return grid_blocks(items, kThreads); }

template <typename T>
__global__ void anchors3d_kernel(const AnchorGrid<T> g, bool cubes, T* __restrict__ out) {
  DEEPEM_GRID_STRIDE(k, g.count()) {
    if (cubes) anchor_cube(g, k, out + 4 * k);
    else anchor_box(g, k, out + 6 * k);
  }
}

template <typename T>
__global__ void code_boxes3d_kernel(bool encode, const T* __restrict__ rows, int64_t n,
                                    const T* __restrict__ anchors, int64_t k, int64_t width,
                                    const CodingWeights<T> wt, T log_clamp, T* __restrict__ out) {
  DEEPEM_GRID_STRIDE(i, n) {
    const T* anchor = anchors + width * (i % k);
    const T* r = rows + width * i;
    T* o = out + width * i;
    if (encode) {
      if (width == 4) encode_cube(r, anchor, wt.w, o);
      else encode_box(r, anchor, wt.w, o);
    } else {
      if (width == 4) decode_cube(r, anchor, wt.w, log_clamp, o);
      else decode_box(r, anchor, wt.w, log_clamp, o);
    }
  }
}

struct AtomicMinKey {
  uint64_t* keys;
  DEEPEM_HD void operator()(int64_t i, uint64_t key) {
#ifdef __CUDA_ARCH__
    atomicMin(reinterpret_cast<unsigned long long*>(keys + i), static_cast<unsigned long long>(key));
#endif
  }
};

template <typename T>
__global__ void label_match_kernel(const AnchorGrid<T> g, const T* __restrict__ gts,
                                   const int64_t* __restrict__ num_gt, int64_t batch,
                                   int64_t max_gt, const T* __restrict__ bands,
                                   int64_t num_bands, T pos, T neg, uint64_t seed,
                                   int8_t* __restrict__ labels, T* __restrict__ iou,
                                   int64_t* __restrict__ matched, uint64_t* candidates,
                                   int64_t* __restrict__ sample_keys) {
  AtomicMinKey on_candidate{candidates};
  const int64_t k_total = g.count();
  DEEPEM_GRID_STRIDE(i, batch * k_total) {
    label_match_thread(g, i / k_total, i % k_total, gts, num_gt, max_gt, bands, num_bands, pos,
                       neg, seed, labels, iou, matched, sample_keys, on_candidate);
  }
}

__global__ void label_sampled_kernel(const int64_t* __restrict__ values,
                                     const int64_t* __restrict__ indices, int64_t total,
                                     int64_t n, int64_t num_anchors, int8_t* __restrict__ labels) {
  DEEPEM_GRID_STRIDE(i, total) { label_sampled_thread(i, values, indices, n, num_anchors, labels); }
}

template <typename T>
__global__ void label_positives_kernel(const AnchorGrid<T> g, const T* __restrict__ gts,
                                       const int64_t* __restrict__ num_gt, int64_t batch,
                                       int64_t max_gt, const uint64_t* __restrict__ candidates,
                                       bool cube_form, const CodingWeights<T> w,
                                       int8_t* __restrict__ labels,
                                       int64_t* __restrict__ pos_anchor, T* __restrict__ targets) {
  DEEPEM_GRID_STRIDE(i, batch * max_gt) {
    label_positive_thread(g, i / max_gt, i % max_gt, gts, num_gt, max_gt, candidates, cube_form,
                          w.w, labels, pos_anchor, targets);
  }
}

}  // namespace

template <typename T>
cudaError_t launch_anchors3d(const AnchorGrid<T>& grid, bool cubes, T* out, cudaStream_t stream) {
  if (grid.count() == 0) return cudaSuccess;
  anchors3d_kernel<T><<<grid_for(grid.count()), kThreads, 0, stream>>>(grid, cubes, out);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_code_boxes3d(bool encode, const T* rows, int64_t n, const T* anchors,
                                int64_t k, int64_t width, const CodingWeights<T>& weights,
                                T log_clamp, T* out, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  code_boxes3d_kernel<T><<<grid_for(n), kThreads, 0, stream>>>(encode, rows, n, anchors, k, width,
                                                              weights, log_clamp, out);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_label_match(const AnchorGrid<T>& grid, const T* gts, const int64_t* num_gt,
                               int64_t batch, int64_t max_gt, const T* bands, int64_t num_bands,
                               T pos_threshold, T neg_threshold, uint64_t seed, int8_t* labels,
                               T* iou, int64_t* matched, uint64_t* candidates,
                               int64_t* sample_keys, cudaStream_t stream) {
  const int64_t total = batch * grid.count();
  if (total == 0) return cudaSuccess;
  label_match_kernel<T><<<grid_for(total), kThreads, 0, stream>>>(
      grid, gts, num_gt, batch, max_gt, bands, num_bands, pos_threshold, neg_threshold, seed,
      labels, iou, matched, candidates, sample_keys);
  return cudaGetLastError();
}

cudaError_t launch_label_sampled(const int64_t* values, const int64_t* indices, int64_t total,
                                 int64_t n, int64_t num_anchors, int8_t* labels,
                                 cudaStream_t stream) {
  if (total == 0) return cudaSuccess;
  label_sampled_kernel<<<grid_for(total), kThreads, 0, stream>>>(values, indices, total, n,
                                                                 num_anchors, labels);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_label_positives(const AnchorGrid<T>& grid, const T* gts,
                                   const int64_t* num_gt, int64_t batch, int64_t max_gt,
                                   const uint64_t* candidates, bool cube_form,
                                   const CodingWeights<T>& weights, int8_t* labels,
                                   int64_t* pos_anchor, T* targets, cudaStream_t stream) {
  const int64_t total = batch * max_gt;
  if (total == 0) return cudaSuccess;
  label_positives_kernel<T><<<grid_for(total), kThreads, 0, stream>>>(
      grid, gts, num_gt, batch, max_gt, candidates, cube_form, weights, labels, pos_anchor,
      targets);
  return cudaGetLastError();
}

#define DEEPEM_INSTANTIATE(T)                                                                   \
  template cudaError_t launch_anchors3d<T>(const AnchorGrid<T>&, bool, T*, cudaStream_t);      \
  template cudaError_t launch_code_boxes3d<T>(bool, const T*, int64_t, const T*, int64_t,      \
                                              int64_t, const CodingWeights<T>&, T, T*,         \
                                              cudaStream_t);                                   \
  template cudaError_t launch_label_match<T>(const AnchorGrid<T>&, const T*, const int64_t*,   \
                                             int64_t, int64_t, const T*, int64_t, T, T,        \
                                             uint64_t, int8_t*, T*, int64_t*, uint64_t*,       \
                                             int64_t*, cudaStream_t);                          \
  template cudaError_t launch_label_positives<T>(const AnchorGrid<T>&, const T*,               \
                                                 const int64_t*, int64_t, int64_t,             \
                                                 const uint64_t*, bool,                        \
                                                 const CodingWeights<T>&, int8_t*, int64_t*,   \
                                                 T*, cudaStream_t);
DEEPEM_INSTANTIATE(float)
DEEPEM_INSTANTIATE(double)
#undef DEEPEM_INSTANTIATE

}  // namespace deepem

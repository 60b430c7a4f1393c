#pragma once
// Launchers of the anchor kernels (anchors3d, box coding, labelling). No ATen here, so the
// .cu file compiles quickly. Per-thread work: common/anchors.h.
#include <cuda_runtime_api.h>

#include <cstdint>

#include "../../common/anchors.h"

namespace deepem {

template <typename T>
cudaError_t launch_anchors3d(const AnchorGrid<T>& grid, bool cubes, T* out, cudaStream_t stream);

// rows [n, width], anchors [k, width] (anchor r % k codes row r); width 4 or 6.
template <typename T>
cudaError_t launch_code_boxes3d(bool encode, const T* rows, int64_t n, const T* anchors,
                                int64_t k, int64_t width, const CodingWeights<T>& weights,
                                T log_clamp, T* out, cudaStream_t stream);

template <typename T>
cudaError_t launch_label_match(const AnchorGrid<T>& grid, const T* gts, const int64_t* num_gt,
                               int64_t batch, int64_t max_gt, const T* bands, int64_t num_bands,
                               T pos_threshold, T neg_threshold, uint64_t seed, int8_t* labels,
                               T* iou, int64_t* matched, uint64_t* candidates,
                               int64_t* sample_keys, cudaStream_t stream);

cudaError_t launch_label_sampled(const int64_t* values, const int64_t* indices, int64_t total,
                                 int64_t n, int64_t num_anchors, int8_t* labels,
                                 cudaStream_t stream);

template <typename T>
cudaError_t launch_label_positives(const AnchorGrid<T>& grid, const T* gts,
                                   const int64_t* num_gt, int64_t batch, int64_t max_gt,
                                   const uint64_t* candidates, bool cube_form,
                                   const CodingWeights<T>& weights, int8_t* labels,
                                   int64_t* pos_anchor, T* targets, cudaStream_t stream);

}  // namespace deepem

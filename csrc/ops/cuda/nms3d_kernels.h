#pragma once
// Launchers of the bitmask NMS kernels (algorithm: csrc/ops/nms3d_bitmask.h). No ATen here,
// so the .cu file compiles quickly.
#include <cuda_runtime_api.h>

#include <cstdint>

namespace deepem {

template <typename T>
cudaError_t launch_nms_invalid_words(const T* boxes, const T* scores, int64_t n,
                                     uint64_t* removed, cudaStream_t stream);

template <typename T>
cudaError_t launch_nms_mask(const T* boxes, const int64_t* groups, int64_t n, T threshold,
                            int64_t first_block, int64_t num_blocks, int64_t stride,
                            int64_t num_pairs, const int64_t* pair_offsets, uint64_t* mask,
                            cudaStream_t stream);

cudaError_t launch_nms_gather(const uint64_t* mask, int64_t first_block, int64_t num_blocks,
                              int64_t stride, const int64_t* col_end, int64_t n,
                              uint64_t* removed, uint64_t* keep, cudaStream_t stream);

}  // namespace deepem

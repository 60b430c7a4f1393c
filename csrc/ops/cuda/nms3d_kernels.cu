#include "../../common/nms_bitmask.h"
#include "launch.cuh"
#include "nms3d_kernels.h"

namespace deepem {
namespace {

constexpr int kGatherThreads = 256;

template <typename T>
__global__ void nms_invalid_words_kernel(const T* __restrict__ boxes, const T* __restrict__ scores,
                                         int64_t n, uint64_t* __restrict__ removed) {
  const int64_t words = nms_num_words(n);
  DEEPEM_GRID_STRIDE(w, words) { removed[w] = nms_invalid_word(boxes, scores, w, n); }
}

// One block per (row block, column block) pair of the upper triangle, one thread per row;
// the column block's boxes are staged in shared memory.
template <typename T>
__global__ void nms_mask_kernel(const T* __restrict__ boxes, const int64_t* __restrict__ groups,
                                int64_t n, T threshold, int64_t first_block, int64_t num_blocks,
                                int64_t stride, int64_t num_pairs,
                                const int64_t* __restrict__ pair_offsets,
                                uint64_t* __restrict__ mask) {
  __shared__ T col_boxes[kNmsBlock * 6];
  __shared__ int64_t col_groups[kNmsBlock];
  for (int64_t p = blockIdx.x; p < num_pairs; p += gridDim.x) {
    const int64_t k = nms_pair_row_block(pair_offsets, num_blocks, p);
    const int64_t rb = first_block + k, cb = rb + (p - pair_offsets[k]);
    const int64_t col0 = cb * kNmsBlock;
    for (int e = threadIdx.x; e < kNmsBlock * 6; e += blockDim.x) {
      col_boxes[e] = col0 * 6 + e < n * 6 ? boxes[col0 * 6 + e] : T(0);
    }
    if (groups != nullptr) col_groups[threadIdx.x] = col0 + threadIdx.x < n ? groups[col0 + threadIdx.x] : -1;
    __syncthreads();
    const int64_t row = rb * kNmsBlock + threadIdx.x;
    if (row < n) {
      mask[(row - first_block * kNmsBlock) * stride + (cb - first_block)] =
          nms_mask_word(boxes + 6 * row, groups ? groups[row] : 0, row, col_boxes,
                        groups ? col_groups : nullptr, cb, n, threshold);
    }
    __syncthreads();
  }
}

// One block walks the tile's row blocks in order. Per row block: its diagonal words are
// staged in shared memory, one thread resolves the block's greedy choice, then all threads
// OR the kept rows into the removed bits of the later column blocks of the group.
__global__ void nms_gather_kernel(const uint64_t* __restrict__ mask, int64_t first_block,
                                  int64_t num_blocks, int64_t stride,
                                  const int64_t* __restrict__ col_end, int64_t n,
                                  uint64_t* __restrict__ removed, uint64_t* __restrict__ keep) {
  __shared__ uint64_t diagonal[kNmsBlock];
  __shared__ uint64_t kept_bits;
  for (int64_t k = 0; k < num_blocks; ++k) {
    const int64_t rb = first_block + k;
    const uint64_t* rows = mask + k * kNmsBlock * stride;
    if (threadIdx.x < kNmsBlock) {
      // Rows past the end are never read by the mask kernel's writes: load only real rows.
      diagonal[threadIdx.x] =
          rb * kNmsBlock + threadIdx.x < n ? rows[threadIdx.x * stride + (rb - first_block)] : 0;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      kept_bits = nms_resolve_block(diagonal, 1, removed[rb]);
      keep[rb] = kept_bits;
    }
    __syncthreads();
    const uint64_t kept = kept_bits;
    if (kept != 0) {
      for (int64_t w = rb + 1 + threadIdx.x; w < col_end[k]; w += blockDim.x) {
        removed[w] |= nms_removed_by(rows + (w - first_block), stride, kept);
      }
    }
    __syncthreads();
  }
}

}  // namespace

template <typename T>
cudaError_t launch_nms_invalid_words(const T* boxes, const T* scores, int64_t n,
                                     uint64_t* removed, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  nms_invalid_words_kernel<T><<<grid_blocks(nms_num_words(n), 256), 256, 0, stream>>>(boxes, scores, n, removed);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_nms_mask(const T* boxes, const int64_t* groups, int64_t n, T threshold,
                            int64_t first_block, int64_t num_blocks, int64_t stride,
                            int64_t num_pairs, const int64_t* pair_offsets, uint64_t* mask,
                            cudaStream_t stream) {
  if (num_pairs == 0) return cudaSuccess;
  nms_mask_kernel<T><<<grid_blocks(num_pairs, 1), kNmsBlock, 0, stream>>>(
      boxes, groups, n, threshold, first_block, num_blocks, stride, num_pairs, pair_offsets, mask);
  return cudaGetLastError();
}

cudaError_t launch_nms_gather(const uint64_t* mask, int64_t first_block, int64_t num_blocks,
                              int64_t stride, const int64_t* col_end, int64_t n,
                              uint64_t* removed, uint64_t* keep, cudaStream_t stream) {
  if (num_blocks == 0) return cudaSuccess;
  nms_gather_kernel<<<1, kGatherThreads, 0, stream>>>(mask, first_block, num_blocks, stride,
                                                      col_end, n, removed, keep);
  return cudaGetLastError();
}

#define DEEPEM_INSTANTIATE(T)                                                                   \
  template cudaError_t launch_nms_invalid_words<T>(const T*, const T*, int64_t, uint64_t*,      \
                                                   cudaStream_t);                               \
  template cudaError_t launch_nms_mask<T>(const T*, const int64_t*, int64_t, T, int64_t,        \
                                          int64_t, int64_t, int64_t, const int64_t*, uint64_t*, \
                                          cudaStream_t);
DEEPEM_INSTANTIATE(float)
DEEPEM_INSTANTIATE(double)
#undef DEEPEM_INSTANTIATE

}  // namespace deepem

// CUDA entries of nms3d and batched_nms3d: the bitmask algorithm of ops/nms3d_bitmask.h with
// an executor that launches the kernels of nms3d_kernels.cu on the current stream.
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../checks.h"
#include "../nms3d_bitmask.h"
#include "nms3d_kernels.h"

namespace deepem {
namespace {

// The mask of one tile is at most 256 MiB; larger inputs are processed in row tiles.
constexpr int64_t kBudgetWords = int64_t(1) << 25;

template <typename T>
struct CudaExecutor {
  cudaStream_t stream;

  void invalid_words(const T* boxes, const T* scores, int64_t n, uint64_t* removed) {
    C10_CUDA_CHECK(launch_nms_invalid_words(boxes, scores, n, removed, stream));
  }
  void mask_tile(const T* boxes, const int64_t* groups, int64_t n, T threshold,
                 const NmsTile& tile, const int64_t* pair_offsets, const int64_t*,
                 uint64_t* mask) {
    C10_CUDA_CHECK(launch_nms_mask(boxes, groups, n, threshold, tile.first_block,
                                   tile.num_blocks, tile.stride, tile.num_pairs, pair_offsets,
                                   mask, stream));
  }
  void gather_tile(const uint64_t* mask, const NmsTile& tile, const int64_t* col_end, int64_t n,
                   uint64_t* removed, uint64_t* keep) {
    C10_CUDA_CHECK(launch_nms_gather(mask, tile.first_block, tile.num_blocks, tile.stride,
                                     col_end, n, removed, keep, stream));
  }
};

at::Tensor nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                    double iou_threshold, const char* op) {
  check_nms3d_args(boxes, scores, idxs, iou_threshold, op);
  const c10::cuda::CUDAGuard guard(boxes.device());
  const at::Tensor b = to_compute(boxes), s = to_compute(scores);
  const at::Tensor g = idxs.defined() ? idxs.to(at::kLong).contiguous() : at::Tensor();
  return AT_DISPATCH_FLOATING_TYPES(b.scalar_type(), "nms3d_cuda", [&] {
    CudaExecutor<scalar_t> exec{c10::cuda::getCurrentCUDAStream()};
    return bitmask_nms<scalar_t>(b, s, g, iou_threshold, kBudgetWords, exec);
  });
}

at::Tensor nms3d_cuda(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  return nms_cuda(boxes, scores, at::Tensor(), iou_threshold, "nms3d");
}

at::Tensor batched_nms3d_cuda(const at::Tensor& boxes, const at::Tensor& scores,
                              const at::Tensor& idxs, double iou_threshold) {
  return nms_cuda(boxes, scores, idxs, iou_threshold, "batched_nms3d");
}

}  // namespace

TORCH_LIBRARY_IMPL(deepem, CUDA, m) {
  m.impl("nms3d", &nms3d_cuda);
  m.impl("batched_nms3d", &batched_nms3d_cuda);
}

}  // namespace deepem

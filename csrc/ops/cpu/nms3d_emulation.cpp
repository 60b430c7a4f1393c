// The CUDA NMS kernels' launch grids, run sequentially on the CPU with the same per-thread
// functions (csrc/common/nms_bitmask.h) and the same orchestration (ops/nms3d_bitmask.h).
#include <ATen/Dispatch.h>

#include "../checks.h"
#include "../nms3d_bitmask.h"

namespace deepem {
namespace {

template <typename T>
struct HostGridExecutor {
  void invalid_words(const T* boxes, const T* scores, int64_t n, uint64_t* removed) {
    for (int64_t w = 0; w < nms_num_words(n); ++w) removed[w] = nms_invalid_word(boxes, scores, w, n);
  }

  void mask_tile(const T* boxes, const int64_t* groups, int64_t n, T threshold,
                 const NmsTile& tile, const int64_t* pair_offsets, const int64_t*,
                 uint64_t* mask) {
    for (int64_t p = 0; p < tile.num_pairs; ++p) {  // blocks
      const int64_t k = nms_pair_row_block(pair_offsets, tile.num_blocks, p);
      const int64_t rb = tile.first_block + k, cb = rb + (p - pair_offsets[k]);
      for (int64_t t = 0; t < kNmsBlock; ++t) {  // threads
        const int64_t row = rb * kNmsBlock + t;
        if (row >= n) continue;
        mask[(row - tile.first_block * kNmsBlock) * tile.stride + (cb - tile.first_block)] =
            nms_mask_word(boxes + 6 * row, groups ? groups[row] : 0, row,
                          boxes + 6 * cb * kNmsBlock, groups ? groups + cb * kNmsBlock : nullptr,
                          cb, n, threshold);
      }
    }
  }

  void gather_tile(const uint64_t* mask, const NmsTile& tile, const int64_t* col_end, int64_t n,
                   uint64_t* removed, uint64_t* keep) {
    uint64_t diagonal[kNmsBlock];
    for (int64_t k = 0; k < tile.num_blocks; ++k) {
      const int64_t rb = tile.first_block + k;
      const uint64_t* rows = mask + k * kNmsBlock * tile.stride;
      for (int64_t t = 0; t < kNmsBlock; ++t)  // staged like the kernel's shared memory
        diagonal[t] = rb * kNmsBlock + t < n ? rows[t * tile.stride + (rb - tile.first_block)] : 0;
      const uint64_t kept = nms_resolve_block(diagonal, 1, removed[rb]);
      keep[rb] = kept;
      for (int64_t w = rb + 1; w < col_end[k]; ++w)
        removed[w] |= nms_removed_by(rows + (w - tile.first_block), tile.stride, kept);
    }
  }
};

}  // namespace

at::Tensor nms3d_bitmask_emulated(const at::Tensor& boxes, const at::Tensor& scores,
                                  const c10::optional<at::Tensor>& idxs, double iou_threshold,
                                  int64_t budget_words) {
  const at::Tensor groups = idxs.has_value() ? idxs->to(at::kLong).contiguous() : at::Tensor();
  check_nms3d_args(boxes, scores, groups, iou_threshold, "_nms3d_bitmask_emulated");
  DEEPEM_CHECK(budget_words > 0, "_nms3d_bitmask_emulated: argument 'budget_words' must be > 0");
  const at::Tensor b = to_compute(boxes), s = to_compute(scores);
  return AT_DISPATCH_FLOATING_TYPES(b.scalar_type(), "nms3d_bitmask_emulated", [&] {
    HostGridExecutor<scalar_t> exec;
    return bitmask_nms<scalar_t>(b, s, groups, iou_threshold, budget_words, exec);
  });
}

}  // namespace deepem

#pragma once
// The bitmask NMS algorithm of the CUDA kernels, written once over an executor that either
// launches the kernels (ops/cuda/nms3d_cuda.cpp) or emulates their grids on the CPU
// (ops/cpu/nms3d_emulation.cpp, tested on every CI run).
//
// Boxes are put in NMS order (groups contiguous). The N x N/64 suppression bitmask is built in
// tiles of row blocks that fit `budget_words`: for each tile, the mask kernel fills the words
// (row block, column block) of the upper triangle up to the end of the rows' group, then the
// gather kernel walks the tile's row blocks in order, resolving each block's greedy choice
// from its diagonal word and ORing the kept rows into the "removed" bits of later blocks.
// The keep bits stay on the device; only the kept indices come back.
//
// Executor<T> provides:
//   invalid_words(boxes, scores, n, removed)                       one thread per word
//   mask_tile(boxes, groups|nullptr, n, thr, tile, pair_offsets, col_end, mask)
//   gather_tile(mask, tile, col_end, n, removed, keep)
// where tile pointers (pair_offsets, col_end) are on the executor's device.
#include <ATen/ATen.h>

#include <algorithm>
#include <vector>

#include "../common/nms_bitmask.h"
#include "nms3d.h"

namespace deepem {

struct NmsTile {
  int64_t first_block = 0;  // first row block; also the first column block stored
  int64_t num_blocks = 0;   // row blocks in the tile
  int64_t stride = 0;       // words per stored row: column blocks [first_block, first_block + stride)
  int64_t num_pairs = 0;    // (row block, column block) pairs the mask kernel computes
};

// Split the row blocks into tiles whose mask (64 rows x stride words per block) fits the
// budget; a tile holds at least one row block.
inline std::vector<NmsTile> plan_nms_tiles(const std::vector<int64_t>& col_end,
                                           int64_t budget_words) {
  std::vector<NmsTile> tiles;
  const int64_t blocks = static_cast<int64_t>(col_end.size());
  for (int64_t rb = 0; rb < blocks;) {
    NmsTile t;
    t.first_block = rb;
    int64_t end_col = 0;
    while (rb < blocks) {
      const int64_t new_end = std::max(end_col, col_end[rb]);
      const int64_t words = (t.num_blocks + 1) * kNmsBlock * (new_end - t.first_block);
      if (t.num_blocks > 0 && words > budget_words) break;
      end_col = new_end;
      t.num_pairs += col_end[rb] - rb;
      ++t.num_blocks;
      ++rb;
    }
    t.stride = end_col - t.first_block;
    tiles.push_back(t);
  }
  return tiles;
}

// One past the last column block each row block must look at: the end of the group of the
// block's last row (groups are contiguous in NMS order). `groups` on the host, or undefined.
inline std::vector<int64_t> nms_column_ends(const at::Tensor& groups, int64_t n) {
  const int64_t blocks = nms_num_words(n);
  std::vector<int64_t> col_end(blocks, blocks);
  if (!groups.defined()) return col_end;
  const int64_t* g = groups.data_ptr<int64_t>();
  int64_t group_end = n;
  std::vector<int64_t> end_of(n);
  for (int64_t i = n - 1; i >= 0; --i) {
    if (i + 1 < n && g[i] != g[i + 1]) group_end = i + 1;
    end_of[i] = group_end;
  }
  for (int64_t rb = 0; rb < blocks; ++rb) {
    const int64_t last_row = std::min(n, (rb + 1) * kNmsBlock) - 1;
    col_end[rb] = nms_num_words(end_of[last_row]);
  }
  return col_end;
}

// boxes [N, 6] and scores [N] in the compute dtype T, idxs int64 or undefined; all on the
// executor's device. Returns kept indices in output order (score descending, ties by index).
template <typename T, typename Executor>
at::Tensor bitmask_nms(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                       double iou_threshold, int64_t budget_words, Executor& exec) {
  const int64_t n = boxes.size(0);
  const auto long_opts = boxes.options().dtype(at::kLong);
  if (n == 0) return at::empty({0}, long_opts);
  const at::Tensor order = nms3d_order(scores, idxs);
  const at::Tensor sorted_boxes = boxes.index_select(0, order).contiguous();
  const at::Tensor sorted_scores = scores.index_select(0, order).contiguous();
  at::Tensor sorted_groups;
  std::vector<int64_t> col_end;
  if (idxs.defined()) {
    sorted_groups = idxs.index_select(0, order).contiguous();
    col_end = nms_column_ends(sorted_groups.cpu(), n);
  } else {
    col_end = nms_column_ends(at::Tensor(), n);
  }
  const int64_t words = nms_num_words(n);
  at::Tensor removed = at::empty({words}, long_opts);
  at::Tensor keep = at::zeros({words}, long_opts);
  auto as_words = [](const at::Tensor& t) { return reinterpret_cast<uint64_t*>(t.data_ptr<int64_t>()); };
  const T* b = sorted_boxes.data_ptr<T>();
  const int64_t* g = sorted_groups.defined() ? sorted_groups.data_ptr<int64_t>() : nullptr;
  exec.invalid_words(b, sorted_scores.data_ptr<T>(), n, as_words(removed));
  for (const NmsTile& tile : plan_nms_tiles(col_end, budget_words)) {
    // Per row block of the tile: its column end, and where its pairs start in the launch.
    std::vector<int64_t> host(2 * tile.num_blocks + 1);
    host[tile.num_blocks] = 0;
    for (int64_t k = 0; k < tile.num_blocks; ++k) {
      const int64_t rb = tile.first_block + k;
      host[k] = col_end[rb];
      host[tile.num_blocks + k + 1] = host[tile.num_blocks + k] + (col_end[rb] - rb);
    }
    const at::Tensor tile_info =
        at::tensor(host, at::TensorOptions().dtype(at::kLong)).to(boxes.device());
    const int64_t* tile_col_end = tile_info.data_ptr<int64_t>();
    const int64_t* pair_offsets = tile_col_end + tile.num_blocks;
    at::Tensor mask = at::empty({tile.num_blocks * kNmsBlock, tile.stride}, long_opts);
    exec.mask_tile(b, g, n, static_cast<T>(iou_threshold), tile, pair_offsets, tile_col_end,
                   as_words(mask));
    exec.gather_tile(as_words(mask), tile, tile_col_end, n, as_words(removed), as_words(keep));
  }
  const at::Tensor bits = keep.unsqueeze(1)
                              .bitwise_right_shift(at::arange(kNmsBlock, long_opts))
                              .bitwise_and(1)
                              .reshape({-1})
                              .narrow(0, 0, n);
  const at::Tensor kept = order.index_select(0, bits.nonzero().squeeze(1));
  return idxs.defined() ? nms3d_output_order(kept, scores) : kept;
}

}  // namespace deepem

#pragma once
// The per-thread work of the bitmask NMS, written once for the CUDA kernels and for the CPU
// emulation of their launch grid (tests run the emulation on every CI run).
//
// Boxes are in the NMS order (score descending, ties by lower index; for batched NMS grouped
// first). Bit c of the word (row i, column block b) says "box i suppresses box 64*b + c".
// A row only suppresses later rows, so only blocks b >= i / 64 are ever computed.
#include <cstdint>

#include "box3d.h"
#include "macros.h"

namespace deepem {

constexpr int kNmsBlock = 64;  // boxes per bitmask word

DEEPEM_HD int64_t nms_num_words(int64_t n) { return (n + kNmsBlock - 1) / kNmsBlock; }

// Word `column_block` of row `row`: column boxes of that block which `row` suppresses.
// `col_boxes` points at the block's first box (64 x 6, fewer at the end), `col_groups` at its
// group ids or is null (one group). Only columns after the row are considered.
template <typename T>
DEEPEM_HD uint64_t nms_mask_word(const T* row_box, int64_t row_group, int64_t row,
                                 const T* col_boxes, const int64_t* col_groups,
                                 int64_t column_block, int64_t n, T threshold) {
  const int64_t col0 = column_block * kNmsBlock;
  int64_t first = row + 1 - col0;
  if (first < 0) first = 0;
  int64_t last = n - col0;
  if (last > kNmsBlock) last = kNmsBlock;
  const T row_volume = box_volume(row_box);
  uint64_t word = 0;
  for (int64_t c = first; c < last; ++c) {
    if (col_groups != nullptr && col_groups[c] != row_group) continue;
    const T* col_box = col_boxes + 6 * c;
    if (box_iou_exceeds(row_box, row_volume, col_box, box_volume(col_box), threshold)) {
      word |= uint64_t(1) << c;
    }
  }
  return word;
}

// Rows that can never be kept, as a word of "already removed" bits: a non-finite
// coordinate, a NaN score, or a position past the end (padding of the last word).
template <typename T>
DEEPEM_HD uint64_t nms_invalid_word(const T* boxes, const T* scores, int64_t word, int64_t n) {
  uint64_t bits = 0;
  for (int c = 0; c < kNmsBlock; ++c) {
    const int64_t i = word * kNmsBlock + c;
    const bool invalid = i >= n || !box_is_finite(boxes + 6 * i) || scores[i] != scores[i];
    if (invalid) bits |= uint64_t(1) << c;
  }
  return bits;
}

// Greedy NMS inside one row block: walks its rows in order; a row not yet removed is kept
// and removes the later rows of the block it suppresses. `diagonal` points at the block's
// own word of its first row, `stride` words between rows. Returns the kept rows as bits.
DEEPEM_HD uint64_t nms_resolve_block(const uint64_t* diagonal, int64_t stride, uint64_t removed) {
  uint64_t kept = 0;
  for (int r = 0; r < kNmsBlock; ++r) {
    if ((removed >> r) & 1) continue;
    kept |= uint64_t(1) << r;
    removed |= diagonal[r * stride];
  }
  return kept;
}

// OR of the words of the kept rows of a block, for one later column block: what the block's
// kept boxes remove there. `rows` points at that column's word of the block's first row.
DEEPEM_HD uint64_t nms_removed_by(const uint64_t* rows, int64_t stride, uint64_t kept) {
  uint64_t removed = 0;
  for (int r = 0; r < kNmsBlock; ++r) {
    if ((kept >> r) & 1) removed |= rows[r * stride];
  }
  return removed;
}

// The launch of the mask kernel is flat over the (row block, column block) pairs of a tile;
// pair_offsets[k] is the first pair of the tile's k-th row block (num_blocks + 1 entries).
// Returns k for pair p (binary search: the tile has few row blocks).
DEEPEM_HD int64_t nms_pair_row_block(const int64_t* pair_offsets, int64_t num_blocks, int64_t p) {
  int64_t lo = 0, hi = num_blocks;  // invariant: pair_offsets[lo] <= p < pair_offsets[hi]
  while (hi - lo > 1) {
    const int64_t mid = (lo + hi) / 2;
    if (pair_offsets[mid] <= p) lo = mid; else hi = mid;
  }
  return lo;
}

}  // namespace deepem

#pragma once
// Launch sizing shared by the .cu files: grids are capped and kernels loop grid-stride, so any
// problem size launches within the grid limits; a launch never has 0 blocks.
#include <cstdint>

namespace deepem {

constexpr int64_t kMaxGridBlocks = int64_t(1) << 20;

// Blocks for `items` work items, `per_block` per block: at least 1, at most kMaxGridBlocks.
inline unsigned grid_blocks(int64_t items, int64_t per_block) {
  const int64_t blocks = (items + per_block - 1) / per_block;
  return static_cast<unsigned>(blocks < 1 ? 1 : (blocks < kMaxGridBlocks ? blocks : kMaxGridBlocks));
}

}  // namespace deepem

// for (i = this thread's first item; i < n; i += all threads of the grid), int64 indices.
#define DEEPEM_GRID_STRIDE(i, n)                                              \
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < (n); \
       i += int64_t(gridDim.x) * blockDim.x)

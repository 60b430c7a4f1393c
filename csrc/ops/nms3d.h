#pragma once
#include <ATen/ATen.h>

namespace deepem {

// Checks of nms3d / batched_nms3d arguments; `idxs` may be undefined (single group).
void check_nms3d_args(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                      double iou_threshold, const char* op);

// The NMS order: positions sorted by score descending, ties by lower index, NaN scores last.
// With `idxs`, stably regrouped by group id (groups ascending, score order inside).
at::Tensor nms3d_order(const at::Tensor& scores, const at::Tensor& idxs);

// Kept indices of a batched NMS gathered per group, put back into the output order:
// score descending, ties by lower index.
at::Tensor nms3d_output_order(const at::Tensor& kept, const at::Tensor& scores);

// Candidates the CPU NMS decides per parallel round (checked against the boxes kept in
// earlier rounds in parallel, then in order inside the round).
constexpr int64_t kNmsCpuChunk = 2048;

// CPU greedy NMS with spatial pruning. boxes [N, 6] and scores [N] contiguous in the
// compute dtype; idxs int64 [N] or undefined. Returns kept indices in output order.
// `chunk` (> 0) changes only the work split, never the result (tests force small ones).
at::Tensor nms3d_cpu_kernel(const at::Tensor& boxes, const at::Tensor& scores,
                            const at::Tensor& idxs, double iou_threshold,
                            int64_t chunk = kNmsCpuChunk);

// The CUDA algorithm run on the CPU (see _nms3d_bitmask_emulated in csrc/deepem.cpp).
at::Tensor nms3d_bitmask_emulated(const at::Tensor& boxes, const at::Tensor& scores,
                                  const c10::optional<at::Tensor>& idxs, double iou_threshold,
                                  int64_t budget_words);

}  // namespace deepem

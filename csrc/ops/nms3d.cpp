#include "nms3d.h"

#include <torch/library.h>

#include "checks.h"

namespace deepem {

void check_nms3d_args(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                      double iou_threshold, const char* op) {
  check_float_matrix(boxes, 6, op, "boxes");
  check_scores(scores, boxes, op, "scores", "boxes");
  if (idxs.defined()) {
    DEEPEM_CHECK(idxs.dim() == 1 && idxs.size(0) == boxes.size(0), op,
                ": argument 'idxs' must have shape [", boxes.size(0),
                "] (one group id per box), got ", idxs.sizes());
    DEEPEM_CHECK(at::isIntegralType(idxs.scalar_type(), /*includeBool=*/false), op,
                ": argument 'idxs' must be an integer tensor, got ", idxs.scalar_type());
    check_same_device(idxs, boxes, op, "idxs", "boxes");
  }
  check_unit_interval(iou_threshold, op, "iou_threshold");
}

at::Tensor nms3d_order(const at::Tensor& scores, const at::Tensor& idxs) {
  const at::Tensor keys = scores.masked_fill(scores.isnan(), -std::numeric_limits<double>::infinity());
  at::Tensor order = std::get<1>(keys.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
  if (idxs.defined()) {
    const at::Tensor by_group =
        std::get<1>(idxs.index_select(0, order).sort(/*stable=*/true, 0, false));
    order = order.index_select(0, by_group);
  }
  return order;
}

at::Tensor nms3d_output_order(const at::Tensor& kept, const at::Tensor& scores) {
  const at::Tensor by_index = std::get<0>(kept.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false));
  const at::Tensor by_score =
      std::get<1>(scores.index_select(0, by_index).sort(/*stable=*/true, 0, /*descending=*/true));
  return by_index.index_select(0, by_score);
}

namespace {

at::Tensor idxs_int64(const at::Tensor& idxs) { return idxs.to(at::kLong).contiguous(); }

at::Tensor nms3d_cpu(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  check_nms3d_args(boxes, scores, at::Tensor(), iou_threshold, "nms3d");
  return nms3d_cpu_kernel(to_compute(boxes), to_compute(scores), at::Tensor(), iou_threshold);
}

at::Tensor batched_nms3d_cpu(const at::Tensor& boxes, const at::Tensor& scores,
                             const at::Tensor& idxs, double iou_threshold) {
  check_nms3d_args(boxes, scores, idxs, iou_threshold, "batched_nms3d");
  return nms3d_cpu_kernel(to_compute(boxes), to_compute(scores), idxs_int64(idxs),
                          iou_threshold);
}

// The CPU kernel with another chunk size, so that tests cross many chunk boundaries with
// few boxes.
at::Tensor nms3d_cpu_chunked(const at::Tensor& boxes, const at::Tensor& scores,
                             const c10::optional<at::Tensor>& idxs, double iou_threshold,
                             int64_t chunk) {
  const at::Tensor groups = idxs.has_value() ? idxs_int64(*idxs) : at::Tensor();
  check_nms3d_args(boxes, scores, groups, iou_threshold, "_nms3d_cpu_chunked");
  DEEPEM_CHECK(chunk > 0, "_nms3d_cpu_chunked: argument 'chunk' must be > 0, got ", chunk);
  return nms3d_cpu_kernel(to_compute(boxes), to_compute(scores), groups, iou_threshold, chunk);
}

}  // namespace

TORCH_LIBRARY_IMPL(deepem, CPU, m) {
  m.impl("nms3d", &nms3d_cpu);
  m.impl("batched_nms3d", &batched_nms3d_cpu);
  m.impl("_nms3d_bitmask_emulated", &nms3d_bitmask_emulated);
  m.impl("_nms3d_cpu_chunked", &nms3d_cpu_chunked);
}

}  // namespace deepem

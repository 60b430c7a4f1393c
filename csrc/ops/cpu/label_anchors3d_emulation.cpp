// The CUDA labelling kernels' launch grids, run sequentially on the CPU with the same
// per-thread functions (common/anchors.h) and orchestration (ops/label_anchors3d_grid.h).
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>

#include "../label_anchors3d_grid.h"

namespace deepem {
namespace {

struct MinKey {  // the host stand-in for the kernel's atomicMin
  uint64_t* keys;
  void operator()(int64_t i, uint64_t key) { keys[i] = std::min(keys[i], key); }
};

template <typename T>
struct HostGridExecutor {
  void match(const AnchorGrid<T>& g, const T* gts, const int64_t* num_gt, int64_t batch,
             int64_t max_gt, const T* bands, int64_t num_bands, T pos, T neg, uint64_t seed,
             int8_t* labels, T* iou, int64_t* matched, uint64_t* candidates,
             int64_t* sample_keys) {
    MinKey on_candidate{candidates};
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t k = 0; k < g.count(); ++k)
        label_match_thread(g, b, k, gts, num_gt, max_gt, bands, num_bands, pos, neg, seed,
                           labels, iou, matched, sample_keys, on_candidate);
  }
  void sampled(const int64_t* values, const int64_t* indices, int64_t total, int64_t n,
               int64_t num_anchors, int8_t* labels) {
    for (int64_t i = 0; i < total; ++i)
      label_sampled_thread(i, values, indices, n, num_anchors, labels);
  }
  void positives(const AnchorGrid<T>& g, const T* gts, const int64_t* num_gt, int64_t batch,
                 int64_t max_gt, const uint64_t* candidates, bool cube_form,
                 const CodingWeights<T>& w, int8_t* labels, int64_t* pos, T* targets) {
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t j = 0; j < max_gt; ++j)
        label_positive_thread(g, b, j, gts, num_gt, max_gt, candidates, cube_form, w.w, labels,
                              pos, targets);
  }
};

LabelOutputs label_anchors3d_emulated(
    const at::Tensor& gt_boxes, const c10::optional<at::Tensor>& num_gt,
    const c10::optional<at::Tensor>& neg_exclude_z, at::IntArrayRef feature_size,
    at::ArrayRef<double> stride, at::ArrayRef<double> offset, at::ArrayRef<double> anchor_shapes,
    double pos_threshold, double neg_threshold, int64_t num_neg, int64_t seed, bool cube_targets,
    c10::optional<at::ArrayRef<double>> weights) {
  const char* op = "_label_anchors3d_emulated";
  const LabelArgs args = make_label_args(feature_size, stride, offset, anchor_shapes,
                                         pos_threshold, neg_threshold, num_neg, seed,
                                         cube_targets, weights, op);
  const LabelInputs in = check_label_args(gt_boxes, num_gt, neg_exclude_z, args, op);
  LabelOutputs out = label_outputs(in, args);
  AT_DISPATCH_FLOATING_TYPES(in.gt.scalar_type(), "label_anchors3d_emulated", [&] {
    HostGridExecutor<scalar_t> exec;
    label_anchors3d_grid<scalar_t>(in, args, out, exec);
  });
  std::get<1>(out) = std::get<1>(out).to(gt_boxes.scalar_type());
  std::get<4>(out) = std::get<4>(out).to(gt_boxes.scalar_type());
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(deepem, CPU, m) { m.impl("_label_anchors3d_emulated", &label_anchors3d_emulated); }

}  // namespace deepem

#pragma once
// anchors3d, encode_boxes3d, decode_boxes3d and label_anchors3d: argument checks and the
// pieces shared by the CPU kernels, the CUDA glue and the CPU emulation of the CUDA grid.
#include <ATen/ATen.h>

#include <tuple>
#include <vector>

#include "../common/anchors.h"

namespace deepem {

// The grid arguments of an op, checked (feature_size 3 ints > 0, stride 3 numbers > 0,
// offset 3 finite numbers, shapes 3 * A positive numbers with 1 <= A <= kMaxAnchorShapes).
struct GridArgs {
  std::vector<int64_t> feature_size;
  std::vector<double> stride, offset, shapes;
};
void check_grid_args(const GridArgs& g, const char* op);

template <typename T>
AnchorGrid<T> make_anchor_grid(const GridArgs& args) {
  AnchorGrid<T> g{};
  for (int j = 0; j < 3; ++j) {
    g.size[j] = args.feature_size[j];
    g.stride[j] = static_cast<T>(args.stride[j]);
    g.offset[j] = static_cast<T>(args.offset[j]);
  }
  g.num_shapes = static_cast<int64_t>(args.shapes.size() / 3);
  for (size_t i = 0; i < args.shapes.size(); ++i) g.shapes[i] = static_cast<T>(args.shapes[i]);
  return g;
}

// Coding weights (see CodingWeights in common/anchors.h); all ones when absent.
std::vector<double> checked_weights(const c10::optional<at::ArrayRef<double>>& weights,
                                    int64_t width, const char* op);
template <typename T>
CodingWeights<T> make_weights(const std::vector<double>& w) {
  CodingWeights<T> out{};
  for (size_t i = 0; i < 6; ++i) out.w[i] = static_cast<T>(i < w.size() ? w[i] : 1.0);
  return out;
}

// ---- anchors3d ----
// anchor_shapes [A, 3] floating (the output's dtype and device); returns the checked grid
// with the shapes read to the host.
GridArgs anchors3d_args(const at::Tensor& anchor_shapes, at::IntArrayRef feature_size,
                        at::ArrayRef<double> stride, at::ArrayRef<double> offset, bool cubes);
at::Tensor anchors3d_cpu_kernel(const GridArgs& grid, bool cubes, at::ScalarType dtype);

// ---- encode / decode ----
// Checks boxes [..., W] and anchors [..., W] (W 4 or 6, rows of boxes a multiple of the rows
// of anchors: anchor r % K codes row r). Returns W.
int64_t check_coding_args(const at::Tensor& boxes, const at::Tensor& anchors, const char* op,
                          const char* boxes_name);
// Inputs [N, W] and [K, W] contiguous in the compute dtype.
at::Tensor encode_boxes3d_cpu_kernel(const at::Tensor& boxes, const at::Tensor& anchors,
                                     const std::vector<double>& weights);
at::Tensor decode_boxes3d_cpu_kernel(const at::Tensor& deltas, const at::Tensor& anchors,
                                     const std::vector<double>& weights, double log_clamp);

// ---- label_anchors3d ----
struct LabelArgs {
  GridArgs grid;
  double pos_threshold = 0.5, neg_threshold = 0.02;
  int64_t num_neg = -1;  // negatives kept per crop; -1 keeps all
  uint64_t seed = 0;
  bool cube_targets = true;
  std::vector<double> weights;
};

// Checked inputs in kernel form: gt [B, G, 6] contiguous compute dtype, num_gt int64 [B] or
// undefined, bands [B, E, 2] in the compute dtype or undefined.
struct LabelInputs {
  at::Tensor gt, num_gt, bands;
};

using LabelOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

LabelInputs check_label_args(const at::Tensor& gt_boxes, const c10::optional<at::Tensor>& num_gt,
                             const c10::optional<at::Tensor>& neg_exclude_z,
                             const LabelArgs& args, const char* op);
LabelArgs make_label_args(at::IntArrayRef feature_size, at::ArrayRef<double> stride,
                          at::ArrayRef<double> offset, at::ArrayRef<double> anchor_shapes,
                          double pos_threshold, double neg_threshold, int64_t num_neg,
                          int64_t seed, bool cube_targets,
                          const c10::optional<at::ArrayRef<double>>& weights, const char* op);
// Outputs: labels int8 [B, K], matched IoU [B, K], matched GT int64 [B, K] (uninitialised:
// the kernels write them all), positive anchor int64 [B, G] (-1), targets [B, G, W] (0).
LabelOutputs label_outputs(const LabelInputs& in, const LabelArgs& args);
// The windowed CPU labelling (fills the outputs of label_outputs).
void label_anchors3d_cpu_kernel(const LabelInputs& in, const LabelArgs& args, LabelOutputs& out);

}  // namespace deepem

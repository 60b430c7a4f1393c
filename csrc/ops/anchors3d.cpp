#include "anchors3d.h"

#include <torch/library.h>

#include <cmath>

#include "checks.h"

namespace deepem {

namespace {

bool all_finite(at::ArrayRef<double> v) {
  for (double x : v)
    if (!std::isfinite(x)) return false;
  return true;
}

bool all_positive(at::ArrayRef<double> v) {
  for (double x : v)
    if (!(x > 0.0)) return false;
  return true;
}

}  // namespace

void check_grid_args(const GridArgs& g, const char* op) {
  DEEPEM_CHECK(g.feature_size.size() == 3, op,
              ": argument 'feature_size' must hold 3 ints (D, H, W), got ", g.feature_size.size());
  for (int64_t s : g.feature_size)
    DEEPEM_CHECK(s > 0, op, ": argument 'feature_size' must be positive, got ",
                at::IntArrayRef(g.feature_size));
  DEEPEM_CHECK(g.stride.size() == 3 && all_finite(g.stride) && all_positive(g.stride), op,
              ": argument 'stride' must hold 3 finite numbers > 0 (z, y, x), got ",
              at::ArrayRef<double>(g.stride));
  DEEPEM_CHECK(g.offset.size() == 3 && all_finite(g.offset), op,
              ": argument 'offset' must hold 3 finite numbers (z, y, x), got ",
              at::ArrayRef<double>(g.offset));
  const int64_t a = static_cast<int64_t>(g.shapes.size() / 3);
  DEEPEM_CHECK(g.shapes.size() % 3 == 0 && a >= 1 && a <= kMaxAnchorShapes, op,
              ": argument 'anchor_shapes' must hold 1 to ", kMaxAnchorShapes,
              " shapes of 3 extents (d, h, w), got ", g.shapes.size(), " numbers");
  DEEPEM_CHECK(all_finite(g.shapes) && all_positive(g.shapes), op,
              ": argument 'anchor_shapes' must be finite numbers > 0, got ",
              at::ArrayRef<double>(g.shapes));
  // The anchor count, bounded factor by factor so that the product cannot overflow.
  int64_t room = (int64_t(1) << 31) / a;
  bool fits = true;
  for (int64_t s : g.feature_size) {
    fits = fits && s <= room;
    room = fits ? room / s : 0;
  }
  DEEPEM_CHECK(fits, op,
              ": the grid has too many anchors (feature_size ", at::IntArrayRef(g.feature_size), " x ", a,
              " shapes); at most 2^31 are supported");
}

std::vector<double> checked_weights(const c10::optional<at::ArrayRef<double>>& weights,
                                    int64_t width, const char* op) {
  if (!weights.has_value()) return std::vector<double>(width, 1.0);
  DEEPEM_CHECK(static_cast<int64_t>(weights->size()) == width, op, ": argument 'weights' must hold ",
              width, " numbers (one per delta of the ", width == 4 ? "cube" : "box",
              " form), got ", weights->size());
  DEEPEM_CHECK(all_finite(*weights) && all_positive(*weights), op,
              ": argument 'weights' must be finite numbers > 0, got ", *weights);
  return weights->vec();
}

// ---- anchors3d ----

GridArgs anchors3d_args(const at::Tensor& anchor_shapes, at::IntArrayRef feature_size,
                        at::ArrayRef<double> stride, at::ArrayRef<double> offset, bool cubes) {
  DEEPEM_CHECK(anchor_shapes.dim() == 2 && anchor_shapes.size(1) == 3, "anchors3d: argument "
              "'anchor_shapes' must have shape [A, 3] (d, h, w per shape), got ",
              anchor_shapes.sizes());
  DEEPEM_CHECK(at::isFloatingType(anchor_shapes.scalar_type()), "anchors3d: argument "
              "'anchor_shapes' must be float16, bfloat16, float32 or float64, got ",
              anchor_shapes.scalar_type());
  const at::Tensor host = anchor_shapes.to(at::kCPU, at::kDouble).contiguous();
  GridArgs g{feature_size.vec(), stride.vec(), offset.vec(),
             std::vector<double>(host.data_ptr<double>(), host.data_ptr<double>() + host.numel())};
  check_grid_args(g, "anchors3d");
  if (cubes) {
    for (size_t a = 0; a < g.shapes.size(); a += 3)
      DEEPEM_CHECK(g.shapes[a] == g.shapes[a + 1] && g.shapes[a] == g.shapes[a + 2],
                  "anchors3d: argument 'cubes' is true but 'anchor_shapes' row ", a / 3,
                  " is not a cube: (", g.shapes[a], ", ", g.shapes[a + 1], ", ", g.shapes[a + 2],
                  ")");
  }
  return g;
}

// ---- encode / decode ----

int64_t check_coding_args(const at::Tensor& boxes, const at::Tensor& anchors, const char* op,
                          const char* boxes_name) {
  const int64_t w = boxes.dim() >= 1 ? boxes.size(-1) : 0;
  DEEPEM_CHECK(boxes.dim() >= 1 && (w == 4 || w == 6), op, ": argument '", boxes_name,
              "' must have shape [..., 4] (cubes z, y, x, d) or [..., 6] (boxes z1, y1, x1, z2, "
              "y2, x2), got ", boxes.sizes());
  DEEPEM_CHECK(anchors.dim() >= 1 && anchors.size(-1) == w, op,
              ": argument 'anchors' must have shape [..., ", w, "] like '", boxes_name, "', got ",
              anchors.sizes());
  DEEPEM_CHECK(at::isFloatingType(boxes.scalar_type()), op, ": argument '", boxes_name,
              "' must be float16, bfloat16, float32 or float64, got ", boxes.scalar_type());
  check_same_device(anchors, boxes, op, "anchors", boxes_name);
  check_same_dtype(anchors, boxes, op, "anchors", boxes_name);
  const int64_t n = boxes.numel() / w, k = anchors.numel() / w;
  DEEPEM_CHECK(k > 0 ? n % k == 0 : n == 0, op, ": the rows of '", boxes_name, "' (", n,
              ") must be a multiple of the rows of 'anchors' (", k,
              "); anchor r % K codes row r, so leading batch dims repeat the anchors");
  return w;
}

namespace {

at::Tensor anchors3d_cpu(const at::Tensor& anchor_shapes, at::IntArrayRef feature_size,
                         at::ArrayRef<double> stride, at::ArrayRef<double> offset, bool cubes) {
  const GridArgs g = anchors3d_args(anchor_shapes, feature_size, stride, offset, cubes);
  return anchors3d_cpu_kernel(g, cubes, compute_dtype(anchor_shapes.scalar_type()))
      .to(anchor_shapes.scalar_type());
}

at::Tensor encode_boxes3d_cpu(const at::Tensor& boxes, const at::Tensor& anchors,
                              c10::optional<at::ArrayRef<double>> weights) {
  const int64_t w = check_coding_args(boxes, anchors, "encode_boxes3d", "boxes");
  const auto wt = checked_weights(weights, w, "encode_boxes3d");
  return encode_boxes3d_cpu_kernel(to_compute(boxes).view({-1, w}),
                                   to_compute(anchors).view({-1, w}), wt)
      .view(boxes.sizes())
      .to(boxes.scalar_type());
}

at::Tensor decode_boxes3d_cpu(const at::Tensor& deltas, const at::Tensor& anchors,
                              c10::optional<at::ArrayRef<double>> weights,
                              c10::optional<double> log_clamp) {
  const int64_t w = check_coding_args(deltas, anchors, "decode_boxes3d", "deltas");
  const auto wt = checked_weights(weights, w, "decode_boxes3d");
  return decode_boxes3d_cpu_kernel(to_compute(deltas).view({-1, w}),
                                   to_compute(anchors).view({-1, w}), wt,
                                   log_clamp.value_or(INFINITY))
      .view(deltas.sizes())
      .to(deltas.scalar_type());
}

}  // namespace

// ---- label_anchors3d ----

LabelArgs make_label_args(at::IntArrayRef feature_size, at::ArrayRef<double> stride,
                          at::ArrayRef<double> offset, at::ArrayRef<double> anchor_shapes,
                          double pos_threshold, double neg_threshold, int64_t num_neg,
                          int64_t seed, bool cube_targets,
                          const c10::optional<at::ArrayRef<double>>& weights, const char* op) {
  LabelArgs a;
  a.grid = GridArgs{feature_size.vec(), stride.vec(), offset.vec(), anchor_shapes.vec()};
  check_grid_args(a.grid, op);
  check_unit_interval(pos_threshold, op, "pos_threshold");
  check_unit_interval(neg_threshold, op, "neg_threshold");
  DEEPEM_CHECK(pos_threshold > 0.0, op, ": argument 'pos_threshold' must be > 0, got ",
              pos_threshold);
  DEEPEM_CHECK(num_neg >= -1, op, ": argument 'num_neg' must be >= 0, or -1 to keep every "
              "negative, got ", num_neg);
  a.pos_threshold = pos_threshold;
  a.neg_threshold = neg_threshold;
  a.num_neg = num_neg;
  a.seed = static_cast<uint64_t>(seed);
  a.cube_targets = cube_targets;
  a.weights = checked_weights(weights, cube_targets ? 4 : 6, op);
  return a;
}

LabelInputs check_label_args(const at::Tensor& gt_boxes, const c10::optional<at::Tensor>& num_gt,
                             const c10::optional<at::Tensor>& neg_exclude_z,
                             const LabelArgs& args, const char* op) {
  DEEPEM_CHECK(gt_boxes.dim() == 3 && gt_boxes.size(2) == 6, op,
              ": argument 'gt_boxes' must have shape [B, G, 6] (G boxes z1, y1, x1, z2, y2, x2 "
              "per crop, padded), got ", gt_boxes.sizes());
  DEEPEM_CHECK(at::isFloatingType(gt_boxes.scalar_type()), op,
              ": argument 'gt_boxes' must be float16, bfloat16, float32 or float64, got ",
              gt_boxes.scalar_type());
  LabelInputs in;
  in.gt = to_compute(gt_boxes);
  if (num_gt.has_value()) {
    DEEPEM_CHECK(num_gt->dim() == 1 && num_gt->size(0) == gt_boxes.size(0), op,
                ": argument 'num_gt' must have shape [", gt_boxes.size(0),
                "] (boxes used per crop), got ", num_gt->sizes());
    DEEPEM_CHECK(at::isIntegralType(num_gt->scalar_type(), /*includeBool=*/false), op,
                ": argument 'num_gt' must be an integer tensor, got ", num_gt->scalar_type());
    check_same_device(*num_gt, gt_boxes, op, "num_gt", "gt_boxes");
    in.num_gt = num_gt->to(at::kLong).contiguous();
  }
  if (neg_exclude_z.has_value()) {
    const at::Tensor& z = *neg_exclude_z;
    DEEPEM_CHECK(z.dim() == 3 && z.size(0) == gt_boxes.size(0) && z.size(2) == 2, op,
                ": argument 'neg_exclude_z' must have shape [", gt_boxes.size(0),
                ", E, 2] (E bands z_lo, z_hi per crop, NaN rows unused), got ", z.sizes());
    check_same_device(z, gt_boxes, op, "neg_exclude_z", "gt_boxes");
    check_same_dtype(z, gt_boxes, op, "neg_exclude_z", "gt_boxes");
    in.bands = to_compute(z);
  }
  (void)args;
  return in;
}

LabelOutputs label_outputs(const LabelInputs& in, const LabelArgs& args) {
  const int64_t b = in.gt.size(0), g = in.gt.size(1);
  const auto& fs = args.grid.feature_size;
  const int64_t k = fs[0] * fs[1] * fs[2] * static_cast<int64_t>(args.grid.shapes.size() / 3);
  const auto opts = in.gt.options();
  // The kernels write every [B, K] entry; positives and targets only where a GT has one.
  return {at::empty({b, k}, opts.dtype(at::kChar)), at::empty({b, k}, opts),
          at::empty({b, k}, opts.dtype(at::kLong)), at::full({b, g}, -1, opts.dtype(at::kLong)),
          at::zeros({b, g, args.cube_targets ? 4 : 6}, opts)};
}

namespace {

LabelOutputs label_anchors3d_cpu(const at::Tensor& gt_boxes, const c10::optional<at::Tensor>& num_gt,
                                 const c10::optional<at::Tensor>& neg_exclude_z,
                                 at::IntArrayRef feature_size, at::ArrayRef<double> stride,
                                 at::ArrayRef<double> offset, at::ArrayRef<double> anchor_shapes,
                                 double pos_threshold, double neg_threshold, int64_t num_neg,
                                 int64_t seed, bool cube_targets,
                                 c10::optional<at::ArrayRef<double>> weights) {
  const char* op = "label_anchors3d";
  const LabelArgs args =
      make_label_args(feature_size, stride, offset, anchor_shapes, pos_threshold, neg_threshold,
                      num_neg, seed, cube_targets, weights, op);
  const LabelInputs in = check_label_args(gt_boxes, num_gt, neg_exclude_z, args, op);
  LabelOutputs out = label_outputs(in, args);
  label_anchors3d_cpu_kernel(in, args, out);
  std::get<1>(out) = std::get<1>(out).to(gt_boxes.scalar_type());
  std::get<4>(out) = std::get<4>(out).to(gt_boxes.scalar_type());
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(deepem, CPU, m) {
  m.impl("anchors3d", &anchors3d_cpu);
  m.impl("encode_boxes3d", &encode_boxes3d_cpu);
  m.impl("decode_boxes3d", &decode_boxes3d_cpu);
  m.impl("label_anchors3d", &label_anchors3d_cpu);
}

}  // namespace deepem

// CPU labelling, one crop per task. Instead of testing every anchor against every GT (what
// the CUDA kernel does), each GT visits only the anchors that intersect it, with the IoU
// arithmetic split per axis; results are identical to the dense grid (tests check it).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "../anchors3d.h"

namespace deepem {
namespace {

// The anchors of shape a that intersect a GT, axis by axis: cells [lo, hi] and, per cell,
// the anchor's extent and its overlap with the GT, computed exactly as box_iou does.
template <typename T>
struct AxisWindow {
  int64_t lo = 0, hi = -1;
  std::vector<T> extent, overlap;  // indexed i - lo
};

template <typename T>
void axis_window(const AnchorGrid<T>& g, int j, int64_t a, T gmin, T gmax, AxisWindow<T>* w) {
  // A conservative range first (one cell of margin absorbs rounding), then trimmed to the
  // cells with a positive overlap.
  const double half = double(g.shapes[3 * a + j]) / 2.0;
  const double s = double(g.stride[j]), off = double(g.offset[j]), last = double(g.size[j] - 1);
  const double l = std::floor((double(gmin) - half - off) / s) - 1.0;
  const double h = std::ceil((double(gmax) + half - off) / s) + 1.0;
  int64_t lo = static_cast<int64_t>(std::max(0.0, std::min(l, last + 1.0)));
  int64_t hi = static_cast<int64_t>(std::min(last, std::max(h, -1.0)));
  w->extent.clear();
  w->overlap.clear();
  for (int64_t i = lo; i <= hi; ++i) {
    const T c = anchor_centre(g, j, i), half_t = g.shapes[3 * a + j] / T(2);
    const T alo = c - half_t, ahi = c + half_t;
    w->extent.push_back(clamp_extent(alo, ahi));
    w->overlap.push_back(clamp_extent(box_max(alo, gmin), box_min(ahi, gmax)));
  }
  int64_t first = 0, end = static_cast<int64_t>(w->overlap.size());
  while (first < end && !(w->overlap[first] > T(0))) ++first;
  while (end > first && !(w->overlap[end - 1] > T(0))) --end;
  w->lo = lo + first;
  w->hi = lo + end - 1;
  w->extent.erase(w->extent.begin(), w->extent.begin() + first);
  w->overlap.erase(w->overlap.begin(), w->overlap.begin() + first);
}

template <typename T>
void label_crop(const AnchorGrid<T>& g, int64_t b, const T* gts, int64_t num_gt,
                const T* bands, int64_t num_bands, const LabelArgs& args, int8_t* labels, T* iou,
                int64_t* matched, int64_t* pos_anchor, T* targets, int64_t width) {
  const int64_t k_total = g.count(), num_shapes = g.num_shapes;
  const int64_t slab = g.size[1] * g.size[2] * num_shapes;  // anchors per z cell
  const T pos_thr = static_cast<T>(args.pos_threshold), neg_thr = static_cast<T>(args.neg_threshold);
  // best IoU < 0 never holds: with neg_threshold 0 there are no negatives.
  std::fill(labels, labels + k_total, neg_thr > T(0) ? kLabelNegative : kLabelIgnore);
  std::fill(iou, iou + k_total, T(0));
  std::fill(matched, matched + k_total, int64_t(-1));
  for (int64_t iz = 0; bands != nullptr && iz < g.size[0]; ++iz) {
    if (in_z_bands(anchor_centre(g, 0, iz), bands, num_bands))
      std::fill(labels + iz * slab, labels + (iz + 1) * slab, kLabelIgnore);
  }
  // An anchor that does not intersect a GT has IoU 0 with it: it changes nothing (0 is not
  // > the best IoU, not >= pos_threshold > 0, and >= neg_threshold only when that is 0, in
  // which case nothing is negative), so only the intersecting anchors are visited.
  std::vector<uint64_t> candidate(num_gt, kNoKey);
  AxisWindow<T> wz, wy, wx;
  for (int64_t j = 0; j < num_gt; ++j) {
    const T* gt = gts + 6 * j;
    if (!gt_box_valid(gt)) continue;
    const uint64_t stream = random_stream(args.seed, b, uint64_t(j));
    const T gt_volume = box_volume(gt);
    for (int64_t a = 0; a < num_shapes; ++a) {
      axis_window(g, 0, a, gt[0], gt[3], &wz);
      axis_window(g, 1, a, gt[1], gt[4], &wy);
      axis_window(g, 2, a, gt[2], gt[5], &wx);
      for (int64_t iz = wz.lo; iz <= wz.hi; ++iz) {
        for (int64_t iy = wy.lo; iy <= wy.hi; ++iy) {
          const T ov_zy = wz.overlap[iz - wz.lo] * wy.overlap[iy - wy.lo];
          const T ext_zy = wz.extent[iz - wz.lo] * wy.extent[iy - wy.lo];
          const int64_t row = (iz * g.size[1] + iy) * g.size[2];
          for (int64_t ix = wx.lo; ix <= wx.hi; ++ix) {
            // box_iou's arithmetic, in its order: inter = (dz * dy) * dx, union = vol_a + vol_b - inter.
            const T inter = ov_zy * wx.overlap[ix - wx.lo];
            const T uni = ext_zy * wx.extent[ix - wx.lo] + gt_volume - inter;
            const T v = uni > T(0) ? inter / uni : T(0);
            const int64_t k = (row + ix) * num_shapes + a;
            if (v > iou[k]) {
              iou[k] = v;
              matched[k] = j;
            }
            if (v >= neg_thr) labels[k] = kLabelIgnore;
            if (v >= pos_thr) candidate[j] = std::min(candidate[j], random_key(stream, k));
          }
        }
      }
    }
  }
  // Random negatives: the first num_neg negatives in the crop's random order.
  const int64_t num_neg = args.num_neg;
  if (num_neg >= 0) {
    int64_t count = 0;
    for (int64_t k = 0; k < k_total; ++k) count += labels[k] == kLabelNegative;
    if (count > num_neg) {
      const SampleOrder order = sample_order(random_stream(args.seed, b, kNegativeStream), k_total);
      std::vector<int64_t> picked;
      picked.reserve(num_neg);
      // Positions in chunks: the permutation's rounds are a long dependent chain, and
      // independent positions let the CPU overlap them.
      constexpr int64_t kChunk = 256;
      int64_t chunk[kChunk];
      for (int64_t t0 = 0; static_cast<int64_t>(picked.size()) < num_neg; t0 += kChunk) {
        for (int64_t i = 0; i < kChunk; ++i) chunk[i] = sample_order_anchor(order, t0 + i);
        for (int64_t i = 0; i < kChunk && static_cast<int64_t>(picked.size()) < num_neg; ++i) {
          const int64_t k = chunk[i];
          if (k < k_total && labels[k] == kLabelNegative) picked.push_back(k);
        }
      }
      // Unconditional stores, so that the loop vectorises.
      for (int64_t k = 0; k < k_total; ++k)
        labels[k] = labels[k] == kLabelNegative ? kLabelIgnore : labels[k];
      for (int64_t k : picked) labels[k] = kLabelNegative;
    }
  }
  const CodingWeights<T> w = make_weights<T>(args.weights);
  for (int64_t j = 0; j < num_gt; ++j) {
    const T* gt = gts + 6 * j;
    const int64_t k = positive_anchor(g, gt, candidate[j]);
    pos_anchor[j] = k;
    if (k < 0) continue;
    labels[k] = kLabelPositive;
    anchor_target(g, k, gt, args.cube_targets, w.w, targets + width * j);
  }
}

}  // namespace

void label_anchors3d_cpu_kernel(const LabelInputs& in, const LabelArgs& args, LabelOutputs& out) {
  const int64_t batch = in.gt.size(0), max_gt = in.gt.size(1);
  const int64_t num_bands = in.bands.defined() ? in.bands.size(1) : 0;
  const int64_t width = args.cube_targets ? 4 : 6;
  AT_DISPATCH_FLOATING_TYPES(in.gt.scalar_type(), "label_anchors3d_cpu", [&] {
    const AnchorGrid<scalar_t> g = make_anchor_grid<scalar_t>(args.grid);
    const int64_t k_total = g.count();
    const scalar_t* gts = in.gt.data_ptr<scalar_t>();
    const int64_t* counts = in.num_gt.defined() ? in.num_gt.data_ptr<int64_t>() : nullptr;
    const scalar_t* bands = in.bands.defined() ? in.bands.data_ptr<scalar_t>() : nullptr;
    int8_t* labels = std::get<0>(out).data_ptr<int8_t>();
    scalar_t* iou = std::get<1>(out).data_ptr<scalar_t>();
    int64_t* matched = std::get<2>(out).data_ptr<int64_t>();
    int64_t* pos = std::get<3>(out).data_ptr<int64_t>();
    scalar_t* targets = std::get<4>(out).data_ptr<scalar_t>();
    at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        label_crop(g, b, gts + 6 * max_gt * b, crop_gt_count(counts, b, max_gt),
                   bands ? bands + 2 * num_bands * b : nullptr, num_bands, args,
                   labels + k_total * b, iou + k_total * b, matched + k_total * b,
                   pos + max_gt * b, targets + width * max_gt * b, width);
      }
    });
  });
}

}  // namespace deepem

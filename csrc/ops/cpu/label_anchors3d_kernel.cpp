// CPU labelling, one crop per task. Instead of testing every anchor against every GT (what
// the CUDA kernel does), each GT visits only the window of cells whose anchors can overlap
// it; the results are identical because an anchor outside every window has IoU exactly 0.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "../anchors3d.h"

namespace deepem {
namespace {

// Cells [lo, hi] of axis j whose anchors of shape a may intersect [gmin, gmax]; lo > hi when
// none. One cell of margin on each side absorbs rounding.
template <typename T>
void overlap_window(const AnchorGrid<T>& g, int j, int64_t a, T gmin, T gmax, int64_t* lo,
                    int64_t* hi) {
  const double half = double(g.shapes[3 * a + j]) / 2.0;
  const double s = double(g.stride[j]), off = double(g.offset[j]);
  const double last = double(g.size[j] - 1);
  const double l = std::floor((double(gmin) - half - off) / s);
  const double h = std::ceil((double(gmax) + half - off) / s);
  *lo = static_cast<int64_t>(std::max(0.0, std::min(l, last + 1.0)));
  *hi = static_cast<int64_t>(std::min(last, std::max(h, -1.0)));
}

template <typename T>
void label_crop(const AnchorGrid<T>& g, int64_t b, const T* gts, int64_t num_gt,
                const T* bands, int64_t num_bands, const LabelArgs& args, int8_t* labels, T* iou,
                int64_t* matched, int64_t* pos_anchor, T* targets, int64_t width) {
  const int64_t k_total = g.count();
  const int64_t slab = g.size[1] * g.size[2] * g.num_shapes;  // anchors per z cell
  const T pos_thr = static_cast<T>(args.pos_threshold), neg_thr = static_cast<T>(args.neg_threshold);
  // best IoU < 0 never holds: with neg_threshold 0 there are no negatives.
  std::fill(labels, labels + k_total, neg_thr > T(0) ? kLabelNegative : kLabelIgnore);
  std::fill(iou, iou + k_total, T(0));
  std::fill(matched, matched + k_total, int64_t(-1));
  for (int64_t iz = 0; bands != nullptr && iz < g.size[0]; ++iz) {
    if (in_z_bands(anchor_centre(g, 0, iz), bands, num_bands))
      std::fill(labels + iz * slab, labels + (iz + 1) * slab, kLabelIgnore);
  }
  std::vector<uint64_t> candidate(num_gt, kNoKey);
  for (int64_t j = 0; j < num_gt; ++j) {
    const T* gt = gts + 6 * j;
    if (!gt_box_valid(gt)) continue;
    const uint64_t stream = random_stream(args.seed, b, uint64_t(j));
    for (int64_t a = 0; a < g.num_shapes; ++a) {
      int64_t lo[3], hi[3];
      for (int ax = 0; ax < 3; ++ax) overlap_window(g, ax, a, gt[ax], gt[ax + 3], lo + ax, hi + ax);
      for (int64_t iz = lo[0]; iz <= hi[0]; ++iz) {
        for (int64_t iy = lo[1]; iy <= hi[1]; ++iy) {
          for (int64_t ix = lo[2]; ix <= hi[2]; ++ix) {
            const int64_t k = ((iz * g.size[1] + iy) * g.size[2] + ix) * g.num_shapes + a;
            T box[6];
            anchor_box_at(g, iz, iy, ix, a, box);
            const T v = box_iou(box, gt);
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
  // Random negatives: the num_neg smallest sampling keys. Keys are uniform, so only those
  // under a threshold a little above the expected cut need sorting.
  const int64_t num_neg = args.num_neg;
  if (num_neg >= 0) {
    int64_t count = 0;
    for (int64_t k = 0; k < k_total; ++k) count += labels[k] == kLabelNegative;
    if (count > num_neg) {
      std::vector<int64_t> keys;
      const uint64_t stream = random_stream(args.seed, b, kNegativeStream);
      double frac = std::min(1.0, 1.25 * double(num_neg) / double(count) + 64.0 / double(count));
      while (num_neg > 0) {
        const int64_t thr = static_cast<int64_t>(frac * 2147483648.0);
        keys.clear();
        for (int64_t k = 0; k < k_total; ++k) {
          if (labels[k] != kLabelNegative) continue;
          const int64_t key = sample_key(stream, k);
          if ((key >> 32) < thr) keys.push_back(key);
        }
        if (static_cast<int64_t>(keys.size()) >= num_neg || frac >= 1.0) break;
        frac = std::min(1.0, 2.0 * frac);
      }
      for (int64_t k = 0; k < k_total; ++k)
        if (labels[k] == kLabelNegative) labels[k] = kLabelIgnore;
      if (num_neg > 0) {
        std::nth_element(keys.begin(), keys.begin() + (num_neg - 1), keys.end());
        for (int64_t i = 0; i < num_neg; ++i) labels[keys[i] & 0xffffffffLL] = kLabelNegative;
      }
    }
  }
  for (int64_t j = 0; j < num_gt; ++j) {
    const T* gt = gts + 6 * j;
    const int64_t k = positive_anchor(g, gt, candidate[j]);
    pos_anchor[j] = k;
    if (k < 0) continue;
    labels[k] = kLabelPositive;
    const CodingWeights<T> w = make_weights<T>(args.weights);
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

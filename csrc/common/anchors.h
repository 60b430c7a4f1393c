#pragma once
// Anchor grids, box coding and the per-anchor work of anchor labelling, written once for the
// CPU kernels, the CUDA kernels and the CPU emulation of the CUDA launch grid.
//
// Grid: anchor k = ((iz * H + iy) * W + ix) * A + a (the network output layout D, H, W, A);
// its centre on axis j is offset[j] + stride[j] * i_j and its extents are shapes[a] (d, h, w).
// Boxes are (z1, y1, x1, z2, y2, x2); cubes are (z, y, x, d).
#include <math.h>

#include <cstdint>

#include "box3d.h"
#include "macros.h"
#include "random.h"

namespace deepem {

constexpr int kMaxAnchorShapes = 32;

// Passed by value to the kernels (a few hundred bytes), so no device copy is needed.
template <typename T>
struct AnchorGrid {
  int64_t size[3];  // D, H, W
  T stride[3];
  T offset[3];
  int64_t num_shapes;                 // A
  T shapes[kMaxAnchorShapes * 3];     // (d, h, w) per anchor shape

  DEEPEM_HD int64_t cells() const { return size[0] * size[1] * size[2]; }
  DEEPEM_HD int64_t count() const { return cells() * num_shapes; }
};

// Math that resolves to the float or double function on host and device alike.
DEEPEM_HD float dm_log(float x) { return logf(x); }
DEEPEM_HD double dm_log(double x) { return log(x); }
DEEPEM_HD float dm_exp(float x) { return expf(x); }
DEEPEM_HD double dm_exp(double x) { return exp(x); }
DEEPEM_HD float dm_abs(float x) { return fabsf(x); }
DEEPEM_HD double dm_abs(double x) { return fabs(x); }
// Round half to even, like numpy.round (DeepLung's fallback cell).
DEEPEM_HD double dm_rint(double x) { return rint(x); }

// A product nvcc may not fuse into a following add (an FMA rounds once, the host twice), so
// that anchor centres are bit-identical on CPU and GPU.
DEEPEM_HD float dm_mul(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
DEEPEM_HD double dm_mul(double a, double b) {
#ifdef __CUDA_ARCH__
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}

// Centre coordinate of cell i on axis j.
template <typename T>
DEEPEM_HD T anchor_centre(const AnchorGrid<T>& g, int j, int64_t i) {
  return g.offset[j] + dm_mul(g.stride[j], T(i));
}

template <typename T>
DEEPEM_HD void anchor_box_at(const AnchorGrid<T>& g, int64_t iz, int64_t iy, int64_t ix,
                             int64_t a, T* box) {
  const int64_t cell[3] = {iz, iy, ix};
  for (int j = 0; j < 3; ++j) {
    const T c = anchor_centre(g, j, cell[j]), half = g.shapes[3 * a + j] / T(2);
    box[j] = c - half;
    box[j + 3] = c + half;
  }
}

template <typename T>
DEEPEM_HD void anchor_box(const AnchorGrid<T>& g, int64_t k, T* box) {
  const int64_t a = k % g.num_shapes, cell = k / g.num_shapes;
  const int64_t ix = cell % g.size[2], iy = (cell / g.size[2]) % g.size[1];
  anchor_box_at(g, cell / (g.size[2] * g.size[1]), iy, ix, a, box);
}

// Anchor k as a cube (z, y, x, d) (d: the shape's mean extent, exact for cubes).
template <typename T>
DEEPEM_HD void anchor_cube(const AnchorGrid<T>& g, int64_t k, T* cube) {
  T box[6];
  anchor_box(g, k, box);
  for (int j = 0; j < 3; ++j) cube[j] = (box[j] + box[j + 3]) / T(2);
  const int64_t a = k % g.num_shapes;
  cube[3] = (g.shapes[3 * a] + g.shapes[3 * a + 1] + g.shapes[3 * a + 2]) / T(3);
}

// ---- box coding -------------------------------------------------------------------------
// Cube form (DeepLung): t = ((z - za) / da, (y - ya) / da, (x - xa) / da, log(d / da)).
// Box form: per axis j, t_j = (c_j - ca_j) / sa_j and t_{3+j} = log(s_j / sa_j).
// Weights multiply the deltas on encoding and divide them on decoding; on decoding the log
// terms are clamped to <= log_clamp (pass +inf for none) before exp.

template <typename T>
struct CodingWeights {  // one per delta (4 cube form, 6 box form), by value to kernels
  T w[6];
};

template <typename T>
DEEPEM_HD void encode_cube(const T* cube, const T* anchor, const T* w, T* out) {
  for (int j = 0; j < 3; ++j) out[j] = w[j] * (cube[j] - anchor[j]) / anchor[3];
  out[3] = w[3] * dm_log(cube[3] / anchor[3]);
}

template <typename T>
DEEPEM_HD void decode_cube(const T* delta, const T* anchor, const T* w, T log_clamp, T* out) {
  for (int j = 0; j < 3; ++j) out[j] = anchor[j] + delta[j] / w[j] * anchor[3];
  T t = delta[3] / w[3];
  if (t > log_clamp) t = log_clamp;
  out[3] = anchor[3] * dm_exp(t);
}

template <typename T>
DEEPEM_HD void encode_box(const T* box, const T* anchor, const T* w, T* out) {
  for (int j = 0; j < 3; ++j) {
    const T sa = anchor[j + 3] - anchor[j], s = box[j + 3] - box[j];
    const T ca = (anchor[j] + anchor[j + 3]) / T(2), c = (box[j] + box[j + 3]) / T(2);
    out[j] = w[j] * (c - ca) / sa;
    out[j + 3] = w[j + 3] * dm_log(s / sa);
  }
}

template <typename T>
DEEPEM_HD void decode_box(const T* delta, const T* anchor, const T* w, T log_clamp, T* out) {
  for (int j = 0; j < 3; ++j) {
    const T sa = anchor[j + 3] - anchor[j], ca = (anchor[j] + anchor[j + 3]) / T(2);
    T t = delta[j + 3] / w[j + 3];
    if (t > log_clamp) t = log_clamp;
    const T c = ca + delta[j] / w[j] * sa, half = sa * dm_exp(t) / T(2);
    out[j] = c - half;
    out[j + 3] = c + half;
  }
}

// ---- counter-based random keys ------------------------------------------------------------
// A random choice is "the smallest key": key = (hash << 32) | k, with hash a bijection of the
// anchor index k under a per-stream seed. Keys are unique, so every executor (CPU loop, CUDA
// atomicMin, top-k) picks the same anchors; the choice among candidates is uniform.

DEEPEM_HD uint32_t hash32(uint32_t x) {  // "lowbias32": an invertible 32-bit mixer
  x ^= x >> 16;
  x *= 0x7feb352dU;
  x ^= x >> 15;
  x *= 0x846ca68bU;
  x ^= x >> 16;
  return x;
}

// Stream of one crop: `stream` is the GT index for the positive draw of that GT, and
// kNegativeStream for the negative sampling of the crop.
constexpr uint64_t kNegativeStream = 0xffffffffffffffffULL;

DEEPEM_HD uint64_t random_stream(uint64_t seed, int64_t crop, uint64_t stream) {
  return splitmix64(splitmix64(splitmix64(seed) ^ uint64_t(crop)) ^ stream);
}

DEEPEM_HD uint32_t random_hash(uint64_t stream, int64_t k) {
  return hash32(hash32(uint32_t(k) ^ uint32_t(stream)) ^ uint32_t(stream >> 32));
}

DEEPEM_HD uint64_t random_key(uint64_t stream, int64_t k) {
  return (uint64_t(random_hash(stream, k)) << 32) | uint64_t(uint32_t(k));
}

constexpr uint64_t kNoKey = 0xffffffffffffffffULL;

// Negative sampling keeps the negatives that come first in a random order of the crop's
// anchors: a 4-round Feistel permutation of [0, 2^(2h)) >= [0, K) keyed by the crop's stream
// (positions mapping to k >= K are skipped). The CPU walks the order from the start and
// stops after num_neg negatives; the GPU gives each anchor its position (the inverse
// permutation) as key and takes the num_neg smallest. Both pick the same set.
struct SampleOrder {
  uint32_t half_bits;  // h
  uint32_t round_keys[4];
};

DEEPEM_HD SampleOrder sample_order(uint64_t stream, int64_t num_anchors) {
  SampleOrder o;
  o.half_bits = 1;
  while ((int64_t(1) << (2 * o.half_bits)) < num_anchors) ++o.half_bits;
  for (int r = 0; r < 4; ++r) o.round_keys[r] = uint32_t(splitmix64(stream + uint64_t(r)));
  return o;
}

DEEPEM_HD uint32_t feistel_round(const SampleOrder& o, int r, uint32_t x) {
  return hash32(x ^ o.round_keys[r]) & ((1u << o.half_bits) - 1u);
}

// Position t -> anchor.
DEEPEM_HD int64_t sample_order_anchor(const SampleOrder& o, int64_t t) {
  const uint32_t mask = (1u << o.half_bits) - 1u;
  uint32_t l = uint32_t(t >> o.half_bits) & mask, r = uint32_t(t) & mask;
  for (int i = 0; i < 4; ++i) {
    const uint32_t next = l ^ feistel_round(o, i, r);
    l = r;
    r = next;
  }
  return (int64_t(l) << o.half_bits) | int64_t(r);
}

// Anchor -> position (the sampling key).
DEEPEM_HD int64_t sample_key(const SampleOrder& o, int64_t k) {
  const uint32_t mask = (1u << o.half_bits) - 1u;
  uint32_t l = uint32_t(k >> o.half_bits) & mask, r = uint32_t(k) & mask;
  for (int i = 3; i >= 0; --i) {
    const uint32_t prev = r ^ feistel_round(o, i, l);
    r = l;
    l = prev;
  }
  return (int64_t(l) << o.half_bits) | int64_t(r);
}

constexpr int64_t kNoSampleKey = 0x7fffffffffffffffLL;

// ---- labelling ----------------------------------------------------------------------------

// A ground-truth box takes part in labelling when it is finite with positive extents.
template <typename T>
DEEPEM_HD bool gt_box_valid(const T* b) {
  return box_is_finite(b) && b[3] > b[0] && b[4] > b[1] && b[5] > b[2];
}

// True when z lies in one of the closed bands [lo, hi] (rows of `bands`; NaN rows never match).
template <typename T>
DEEPEM_HD bool in_z_bands(T z, const T* bands, int64_t num_bands) {
  for (int64_t e = 0; e < num_bands; ++e) {
    if (z >= bands[2 * e] && z <= bands[2 * e + 1]) return true;
  }
  return false;
}

// The DeepLung fallback positive of a GT with no candidate: the cell nearest its centre and
// the shape with the log-closest extents (sum over axes of |log(s_j / shape_j)|; ties: lower
// shape). Returns -1 when the centre does not round to a cell of the grid (GT outside).
template <typename T>
DEEPEM_HD int64_t fallback_anchor(const AnchorGrid<T>& g, const T* gt) {
  int64_t cell[3];
  for (int j = 0; j < 3; ++j) {
    const double c = (double(gt[j]) + double(gt[j + 3])) / 2.0;
    const double i = dm_rint((c - double(g.offset[j])) / double(g.stride[j]));
    if (!(i >= 0.0 && i <= double(g.size[j] - 1))) return -1;
    cell[j] = int64_t(i);
  }
  int64_t best_a = 0;
  T best = T(0);
  for (int64_t a = 0; a < g.num_shapes; ++a) {
    T dist = T(0);
    for (int j = 0; j < 3; ++j) dist += dm_abs(dm_log((gt[j + 3] - gt[j]) / g.shapes[3 * a + j]));
    if (a == 0 || dist < best) {
      best = dist;
      best_a = a;
    }
  }
  return ((cell[0] * g.size[1] + cell[1]) * g.size[2] + cell[2]) * g.num_shapes + best_a;
}

// GT rows a crop uses: num_gt[crop] clamped to [0, G] (all G without num_gt).
DEEPEM_HD int64_t crop_gt_count(const int64_t* num_gt, int64_t crop, int64_t max_gt) {
  if (num_gt == nullptr) return max_gt;
  const int64_t n = num_gt[crop];
  return n < 0 ? 0 : (n > max_gt ? max_gt : n);
}

// The positive anchor of a GT: its smallest-key candidate, else the fallback; -1 for an
// invalid GT or one outside the grid.
template <typename T>
DEEPEM_HD int64_t positive_anchor(const AnchorGrid<T>& g, const T* gt, uint64_t candidate_key) {
  if (!gt_box_valid(gt)) return -1;
  if (candidate_key != kNoKey) return int64_t(uint32_t(candidate_key));
  return fallback_anchor(g, gt);
}

// Regression target of GT `gt` for anchor k: cube form (width 4) or box form (width 6).
template <typename T>
DEEPEM_HD void anchor_target(const AnchorGrid<T>& g, int64_t k, const T* gt, bool cube_form,
                             const T* w, T* out) {
  if (cube_form) {
    T anchor[4], cube[4];
    anchor_cube(g, k, anchor);
    for (int j = 0; j < 3; ++j) cube[j] = (gt[j] + gt[j + 3]) / T(2);
    cube[3] = ((gt[3] - gt[0]) + (gt[4] - gt[1]) + (gt[5] - gt[2])) / T(3);
    encode_cube(cube, anchor, w, out);
  } else {
    T anchor[6];
    anchor_box(g, k, anchor);
    encode_box(gt, anchor, w, out);
  }
}

// Label values.
constexpr int8_t kLabelIgnore = -1;
constexpr int8_t kLabelNegative = 0;
constexpr int8_t kLabelPositive = 1;

// One anchor of one crop against its crop's GT boxes. Writes the best IoU (0 when none
// overlaps) and its GT (-1 when none; ties: lower GT), and calls
// on_candidate(candidate_base + j, key) for each GT j whose IoU reaches pos_threshold.
// Returns whether the anchor is a negative: best IoU < neg_threshold and its centre z
// outside the bands.
template <typename T, typename OnCandidate>
DEEPEM_HD bool match_anchor(const AnchorGrid<T>& g, int64_t k, const T* gts, int64_t num_gt,
                            const T* bands, int64_t num_bands, T pos_threshold,
                            T neg_threshold, uint64_t seed, int64_t crop, T* best_iou,
                            int64_t* best_gt, int64_t candidate_base, OnCandidate& on_candidate) {
  T box[6];
  anchor_box(g, k, box);
  T best = T(0);
  int64_t best_idx = -1;
  for (int64_t j = 0; j < num_gt; ++j) {
    const T* gt = gts + 6 * j;
    if (!gt_box_valid(gt)) continue;
    const T iou = box_iou(box, gt);
    if (iou > best) {
      best = iou;
      best_idx = j;
    }
    if (iou >= pos_threshold) {
      on_candidate(candidate_base + j, random_key(random_stream(seed, crop, uint64_t(j)), k));
    }
  }
  *best_iou = best;
  *best_gt = best_idx;
  const T zc = anchor_centre(g, 0, k / g.num_shapes / (g.size[1] * g.size[2]));
  return best < neg_threshold && !in_z_bands(zc, bands, num_bands);
}

// ---- the threads of the CUDA labelling kernels (also run by the CPU emulation) ----------
// Inputs: gts [B, G, 6], num_gt [B] or null, bands [B, E, 2] or null. Outputs [B, K]: labels,
// iou, matched; candidates [B, G] (uint64 keys, kNoKey initially); sample_keys [B, K] or null.

// Match kernel, thread (crop b, anchor k). With sample_keys the anchor is labelled ignore and
// its sampling key (kNoSampleKey for a non-negative) is written for the top-k selection.
template <typename T, typename OnCandidate>
DEEPEM_HD void label_match_thread(const AnchorGrid<T>& g, int64_t b, int64_t k, const T* gts,
                                  const int64_t* num_gt, int64_t max_gt, const T* bands,
                                  int64_t num_bands, T pos_threshold, T neg_threshold,
                                  uint64_t seed, int8_t* labels, T* iou, int64_t* matched,
                                  int64_t* sample_keys, OnCandidate& on_candidate) {
  const int64_t i = b * g.count() + k;
  const bool negative = match_anchor(
      g, k, gts + 6 * max_gt * b, crop_gt_count(num_gt, b, max_gt),
      bands != nullptr ? bands + 2 * num_bands * b : nullptr, num_bands, pos_threshold,
      neg_threshold, seed, b, iou + i, matched + i, b * max_gt, on_candidate);
  if (sample_keys != nullptr) {
    labels[i] = kLabelIgnore;
    const SampleOrder order = sample_order(random_stream(seed, b, kNegativeStream), g.count());
    sample_keys[i] = negative ? sample_key(order, k) : kNoSampleKey;
  } else {
    labels[i] = negative ? kLabelNegative : kLabelIgnore;
  }
}

// Sampled-negative kernel, thread i of the [B, n] top-k result (values, anchor indices).
DEEPEM_HD void label_sampled_thread(int64_t i, const int64_t* values, const int64_t* indices,
                                    int64_t n, int64_t num_anchors, int8_t* labels) {
  if (values[i] != kNoSampleKey) labels[(i / n) * num_anchors + indices[i]] = kLabelNegative;
}

// Positive kernel, thread (crop b, GT j): after the negatives, so a positive always wins.
// Two GTs may choose the same anchor; both keep it as their positive.
template <typename T>
DEEPEM_HD void label_positive_thread(const AnchorGrid<T>& g, int64_t b, int64_t j, const T* gts,
                                     const int64_t* num_gt, int64_t max_gt,
                                     const uint64_t* candidates, bool cube_form, const T* w,
                                     int8_t* labels, int64_t* pos_anchor, T* targets) {
  const int64_t i = b * max_gt + j;
  const int64_t k = j < crop_gt_count(num_gt, b, max_gt)
                        ? positive_anchor(g, gts + 6 * i, candidates[i])
                        : int64_t(-1);
  pos_anchor[i] = k;
  if (k < 0) return;
  labels[b * g.count() + k] = kLabelPositive;
  anchor_target(g, k, gts + 6 * i, cube_form, w, targets + (cube_form ? 4 : 6) * i);
}

}  // namespace deepem

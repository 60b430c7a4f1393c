#pragma once
// 3D RoI align / RoI pooling geometry shared by the CPU and CUDA kernels.
//
// A roi is (batch_index, z1, y1, x1, z2, y2, x2) in input coordinates before spatial_scale.
// Axis a (0 = z, 1 = y, 2 = x) of a roi spans roi[1 + a] .. roi[4 + a].
// Conventions follow torchvision's 2D roi_align / roi_pool, extended to three axes:
// - align: sample v of a bin at start + p * bin + (i + 0.5) * bin / grid; a sample with any
//   coordinate < -1 or > size contributes zero, otherwise coordinates are clamped into the
//   volume and interpolated trilinearly; the bin is the mean over all grid samples.
// - pool: the roi is rounded to voxels (exclusive max, at least one voxel) and each bin is
//   the max over its voxels; empty bins give 0 and argmax -1.
// - a roi with a NaN or infinite coordinate gives NaN outputs (argmax -1) and no gradient.
#include <cmath>
#include <cstdint>

#include "macros.h"

namespace deepem {

template <typename T>
DEEPEM_HD bool roi_coords_finite(const T* roi) {
  // x - x is 0 for finite x and NaN for NaN or +-Inf, so one comparison covers all six.
  T s = (roi[1] - roi[1]) + (roi[2] - roi[2]) + (roi[3] - roi[3]) + (roi[4] - roi[4]) +
        (roi[5] - roi[5]) + (roi[6] - roi[6]);
  return s == T(0);
}

// ---------------------------------------------------------------- RoI align

// Sampling layout of one roi axis: bin p's samples are at start + p * bin + (i + .5) * step.
template <typename T>
struct RoiAlignAxis {
  T start;
  T bin;
  T step;        // bin / grid
  int64_t grid;  // samples per bin along this axis (>= 0)
};

template <typename T>
DEEPEM_HD RoiAlignAxis<T> roi_align_axis(T lo, T hi, T spatial_scale, int64_t pooled,
                                         int64_t sampling_ratio, bool aligned) {
  const T offset = aligned ? T(0.5) : T(0);
  const T start = lo * spatial_scale - offset;
  T size = hi * spatial_scale - offset - start;
  if (!aligned && size < T(1)) size = T(1);  // legacy: a roi is at least one voxel
  RoiAlignAxis<T> a;
  a.start = start;
  a.bin = size / static_cast<T>(pooled);
  if (sampling_ratio > 0) {
    a.grid = sampling_ratio;
  } else {
    const T g = ceil(a.bin);
    a.grid = g > T(0) ? static_cast<int64_t>(g) : 0;
  }
  a.step = a.grid > 0 ? a.bin / static_cast<T>(a.grid) : T(0);
  return a;
}

template <typename T>
DEEPEM_HD T roi_align_sample_coord(const RoiAlignAxis<T>& a, int64_t p, int64_t i) {
  return a.start + static_cast<T>(p) * a.bin + (static_cast<T>(i) + T(0.5)) * a.step;
}

// Linear interpolation along one axis of length `size`: the two voxels and their weights.
// Returns false (weights 0, voxels 0) when v is outside [-1, size]: the sample contributes
// zero, and since the trilinear weight is the product of the three axes' weights, a sample
// outside on any axis contributes zero as a whole.
template <typename T>
DEEPEM_HD bool roi_linear_weights(T v, int64_t size, int64_t* lo, int64_t* hi, T* w_lo, T* w_hi) {
  if (!(v >= T(-1) && v <= static_cast<T>(size)) || size <= 0) {
    *lo = 0;
    *hi = 0;
    *w_lo = T(0);
    *w_hi = T(0);
    return false;
  }
  if (v <= T(0)) v = T(0);
  int64_t l = static_cast<int64_t>(v), h;
  if (l >= size - 1) {
    l = h = size - 1;
    v = static_cast<T>(l);
  } else {
    h = l + 1;
  }
  const T f = v - static_cast<T>(l);
  *lo = l;
  *hi = h;
  *w_lo = T(1) - f;
  *w_hi = f;
  return true;
}

// The three axes of a roi in (z, y, x) order.
template <typename T>
struct RoiAlignBox {
  RoiAlignAxis<T> axis[3];
  T count;  // samples per bin (at least 1: the divisor of the mean)
};

template <typename T>
DEEPEM_HD RoiAlignBox<T> roi_align_box(const T* roi, T spatial_scale, const int64_t* pooled,
                                       int64_t sampling_ratio, bool aligned) {
  RoiAlignBox<T> b;
  int64_t n = 1;
  for (int a = 0; a < 3; ++a) {
    b.axis[a] = roi_align_axis(roi[1 + a], roi[4 + a], spatial_scale, pooled[a], sampling_ratio,
                               aligned);
    n *= b.axis[a].grid;
  }
  b.count = static_cast<T>(n > 0 ? n : 1);
  return b;
}

// Trilinear corners of one sample: voxel indices on each axis and their weights.
template <typename T>
struct RoiSample {
  int64_t z0, z1, y0, y1, x0, x1;
  T wz0, wz1, wy0, wy1, wx0, wx1;
};

// Calls visit(sample) for every sample of bin (pz, py, px) that lies inside the volume: the
// sampling loop shared by the forward and the backward of one output element.
template <typename T, typename Visit>
DEEPEM_HD void roi_align3d_for_each_sample(const int64_t* size, const RoiAlignBox<T>& box,
                                           int64_t pz, int64_t py, int64_t px, Visit&& visit) {
  RoiSample<T> q;
  for (int64_t iz = 0; iz < box.axis[0].grid; ++iz) {
    if (!roi_linear_weights(roi_align_sample_coord(box.axis[0], pz, iz), size[0], &q.z0, &q.z1,
                            &q.wz0, &q.wz1))
      continue;
    for (int64_t iy = 0; iy < box.axis[1].grid; ++iy) {
      if (!roi_linear_weights(roi_align_sample_coord(box.axis[1], py, iy), size[1], &q.y0,
                              &q.y1, &q.wy0, &q.wy1))
        continue;
      for (int64_t ix = 0; ix < box.axis[2].grid; ++ix) {
        if (!roi_linear_weights(roi_align_sample_coord(box.axis[2], px, ix), size[2], &q.x0,
                                &q.x1, &q.wx0, &q.wx1))
          continue;
        visit(q);
      }
    }
  }
}

// One output element of roi_align3d: bin (pz, py, px) of one channel `plane` [D, H, W] —
// the per-thread work of the CUDA forward kernel.
template <typename T>
DEEPEM_HD T roi_align3d_bin(const T* plane, const int64_t* size, const T* roi,
                            const RoiAlignBox<T>& box, int64_t pz, int64_t py, int64_t px) {
  if (!roi_coords_finite(roi)) return T(NAN);
  const int64_t H = size[1], W = size[2];
  T sum = T(0);
  roi_align3d_for_each_sample(size, box, pz, py, px, [&](const RoiSample<T>& q) {
    const T* r00 = plane + (q.z0 * H + q.y0) * W;
    const T* r01 = plane + (q.z0 * H + q.y1) * W;
    const T* r10 = plane + (q.z1 * H + q.y0) * W;
    const T* r11 = plane + (q.z1 * H + q.y1) * W;
    sum += q.wz0 * (q.wy0 * (q.wx0 * r00[q.x0] + q.wx1 * r00[q.x1]) +
                    q.wy1 * (q.wx0 * r01[q.x0] + q.wx1 * r01[q.x1])) +
           q.wz1 * (q.wy0 * (q.wx0 * r10[q.x0] + q.wx1 * r10[q.x1]) +
                    q.wy1 * (q.wx0 * r11[q.x0] + q.wx1 * r11[q.x1]));
  });
  return sum / box.count;
}

// The backward of one output element: grad / count spread over the 8 voxels of every sample
// of the bin with `add(pointer, value)` (an atomic add on the GPU). Per-thread work of the
// CUDA backward kernel.
template <typename T, typename Add>
DEEPEM_HD void roi_align3d_bin_backward(T grad, T* grad_plane, const int64_t* size, const T* roi,
                                        const RoiAlignBox<T>& box, int64_t pz, int64_t py,
                                        int64_t px, const Add& add) {
  if (!roi_coords_finite(roi)) return;
  const int64_t H = size[1], W = size[2];
  const T g = grad / box.count;
  roi_align3d_for_each_sample(size, box, pz, py, px, [&](const RoiSample<T>& q) {
    T* r00 = grad_plane + (q.z0 * H + q.y0) * W;
    T* r01 = grad_plane + (q.z0 * H + q.y1) * W;
    T* r10 = grad_plane + (q.z1 * H + q.y0) * W;
    T* r11 = grad_plane + (q.z1 * H + q.y1) * W;
    const T g0 = g * q.wz0, g1 = g * q.wz1;
    add(r00 + q.x0, g0 * q.wy0 * q.wx0);
    add(r00 + q.x1, g0 * q.wy0 * q.wx1);
    add(r01 + q.x0, g0 * q.wy1 * q.wx0);
    add(r01 + q.x1, g0 * q.wy1 * q.wx1);
    add(r10 + q.x0, g1 * q.wy0 * q.wx0);
    add(r10 + q.x1, g1 * q.wy0 * q.wx1);
    add(r11 + q.x0, g1 * q.wy1 * q.wx0);
    add(r11 + q.x1, g1 * q.wy1 * q.wx1);
  });
}

// ---------------------------------------------------------------- RoI pooling

// Voxel range [begin, end) of bin p along one axis (torchvision's quantization with an
// exclusive max: the roi is round(lo * scale) .. round(hi * scale), at least one voxel).
template <typename T>
DEEPEM_HD void roi_pool_bin_range(T lo, T hi, T spatial_scale, int64_t pooled, int64_t p,
                                  int64_t size, int64_t* begin, int64_t* end) {
  const int64_t start = static_cast<int64_t>(round(lo * spatial_scale));
  const int64_t stop = static_cast<int64_t>(round(hi * spatial_scale));
  const int64_t extent = stop - start > 1 ? stop - start : 1;
  const T bin = static_cast<T>(extent) / static_cast<T>(pooled);
  int64_t b = static_cast<int64_t>(floor(static_cast<T>(p) * bin)) + start;
  int64_t e = static_cast<int64_t>(ceil(static_cast<T>(p + 1) * bin)) + start;
  b = b < 0 ? 0 : (b > size ? size : b);
  e = e < 0 ? 0 : (e > size ? size : e);
  *begin = b;
  *end = e;
}

// The max of the voxels [b, e) of one channel `plane` and its flat index in the plane (-1 for
// an empty region, value 0). Ties keep the first voxel in z, y, x order; a NaN voxel wins
// and stays (NaN propagates).
template <typename T>
DEEPEM_HD T roi_pool3d_region_max(const T* plane, const int64_t* size, const int64_t* b,
                                  const int64_t* e, int64_t* argmax) {
  *argmax = -1;
  if (e[0] <= b[0] || e[1] <= b[1] || e[2] <= b[2]) return T(0);
  T best = T(0);
  int64_t best_i = -1;
  for (int64_t z = b[0]; z < e[0]; ++z)
    for (int64_t y = b[1]; y < e[1]; ++y) {
      const int64_t row = (z * size[1] + y) * size[2];
      for (int64_t x = b[2]; x < e[2]; ++x) {
        const T v = plane[row + x];
        if (best_i < 0 || v > best || (v != v && best == best)) {
          best = v;
          best_i = row + x;
        }
      }
    }
  *argmax = best_i;
  return best;
}

// One output element of roi_pool3d: bin (pz, py, px) of one channel `plane` — the per-thread
// work of the CUDA forward kernel. A non-finite roi gives NaN and argmax -1.
template <typename T>
DEEPEM_HD T roi_pool3d_bin(const T* plane, const int64_t* size, const T* roi, T spatial_scale,
                           const int64_t* pooled, int64_t pz, int64_t py, int64_t px,
                           int64_t* argmax) {
  if (!roi_coords_finite(roi)) {
    *argmax = -1;
    return T(NAN);
  }
  const int64_t p[3] = {pz, py, px};
  int64_t b[3], e[3];
  for (int a = 0; a < 3; ++a)
    roi_pool_bin_range(roi[1 + a], roi[4 + a], spatial_scale, pooled[a], p[a], size[a], &b[a],
                       &e[a]);
  return roi_pool3d_region_max(plane, size, b, e, argmax);
}

// ---------------------------------------------------------------- launch grid

// Sizes of one roi op: input [batch, channels, size...], output [rois, channels, pooled...].
struct Roi3dShape {
  int64_t batch;
  int64_t channels;
  int64_t size[3];    // D, H, W
  int64_t pooled[3];  // output d, h, w
};

// Flat output index (k, c, pz, py, px), row-major: the CUDA kernels' thread -> element map.
DEEPEM_HD void roi3d_unravel(int64_t index, const Roi3dShape& s, int64_t* k, int64_t* c,
                             int64_t* pz, int64_t* py, int64_t* px) {
  *px = index % s.pooled[2];
  index /= s.pooled[2];
  *py = index % s.pooled[1];
  index /= s.pooled[1];
  *pz = index % s.pooled[0];
  index /= s.pooled[0];
  *c = index % s.channels;
  *k = index / s.channels;
}

// Offset of channel c of the roi's scan in an [batch, channels, D, H, W] tensor. Batch
// indices are validated on the host before any kernel runs.
template <typename T>
DEEPEM_HD int64_t roi3d_plane_offset(const T* roi, const Roi3dShape& s, int64_t c) {
  const int64_t b = static_cast<int64_t>(roi[0]);
  return (b * s.channels + c) * s.size[0] * s.size[1] * s.size[2];
}

}  // namespace deepem

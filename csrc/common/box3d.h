#pragma once
// Axis-aligned 3D boxes (z1, y1, x1, z2, y2, x2), exclusive max: volume = product of
// extents, no +1. A box whose max is below its min on an axis has zero volume.
#include <cmath>

#include "macros.h"

namespace deepem {

template <typename T>
DEEPEM_HD T clamp_extent(T lo, T hi) {
  T e = hi - lo;
  return e > T(0) ? e : T(0);
}

template <typename T>
DEEPEM_HD T box_volume(const T* b) {
  return clamp_extent(b[0], b[3]) * clamp_extent(b[1], b[4]) * clamp_extent(b[2], b[5]);
}

template <typename T>
DEEPEM_HD T box_min(T a, T b) { return a < b ? a : b; }
template <typename T>
DEEPEM_HD T box_max(T a, T b) { return a > b ? a : b; }

template <typename T>
DEEPEM_HD T box_intersection(const T* a, const T* b) {
  T dz = clamp_extent(box_max(a[0], b[0]), box_min(a[3], b[3]));
  T dy = clamp_extent(box_max(a[1], b[1]), box_min(a[4], b[4]));
  T dx = clamp_extent(box_max(a[2], b[2]), box_min(a[5], b[5]));
  return dz * dy * dx;
}

template <typename T>
DEEPEM_HD bool box_is_finite(const T* b) {
  // x - x is 0 for finite x and NaN for NaN or +-Inf, so one comparison covers all six.
  T s = (b[0] - b[0]) + (b[1] - b[1]) + (b[2] - b[2]) + (b[3] - b[3]) + (b[4] - b[4]) +
        (b[5] - b[5]);
  return s == T(0);
}

// IoU with the conventions of box_iou3d: NaN when either box has a non-finite coordinate,
// 0 when the union is empty (two zero-volume boxes).
template <typename T>
DEEPEM_HD T box_iou(const T* a, const T* b) {
  if (!box_is_finite(a) || !box_is_finite(b)) return T(NAN);
  T inter = box_intersection(a, b);
  T uni = box_volume(a) + box_volume(b) - inter;
  return uni > T(0) ? inter / uni : T(0);
}

// The NMS suppression test "IoU(a, b) > threshold" without a division:
// inter > threshold * union (union >= inter >= 0, so the forms agree for union > 0, and an
// empty union never suppresses). Callers pass only finite boxes.
template <typename T>
DEEPEM_HD bool box_iou_exceeds(const T* a, T volume_a, const T* b, T volume_b, T threshold) {
  T inter = box_intersection(a, b);
  if (inter <= T(0)) return false;
  return inter > threshold * (volume_a + volume_b - inter);
}

}  // namespace deepem

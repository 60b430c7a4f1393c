// CPU kernels of roi_align3d / roi_pool3d and their backward passes.
//
// RoI align on the CPU is computed separably: the trilinear weight of a sample is the product
// of three per-axis weights and the samples of a bin form a tensor grid, so a bin's mean is
// (Az x Ay x Ax) applied to the input, where A[p, v] is the summed (per-axis) weight of voxel
// v over the samples of bin p. Contracting x, then y, then z costs a few operations per voxel
// instead of 8 loads per sample, and is the same sum (in another order) as the per-sample
// loop of the CUDA kernel (csrc/common/roi3d.h).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "../roi3d.h"

namespace deepem {
namespace {

// A[p, v] of one axis, stored per bin as the voxel range [first, first + count) and weights.
template <typename T>
struct AxisTable {
  std::vector<int64_t> first, count, offset;
  std::vector<T> w;
  int64_t lo = 0, hi = 0;  // union of the bins' voxel ranges
  std::vector<char> used;  // voxel lo + i carries weight in some bin

  void build(const RoiAlignAxis<T>& ax, int64_t pooled, int64_t size) {
    first.assign(pooled, 0);
    count.assign(pooled, 0);
    offset.assign(pooled, 0);
    w.clear();
    lo = std::numeric_limits<int64_t>::max();
    hi = std::numeric_limits<int64_t>::min();
    for (int64_t p = 0; p < pooled; ++p) {
      int64_t mn = std::numeric_limits<int64_t>::max(), mx = -1, l, h;
      T wl, wh;
      for (int64_t i = 0; i < ax.grid; ++i) {
        if (roi_linear_weights(roi_align_sample_coord(ax, p, i), size, &l, &h, &wl, &wh)) {
          mn = std::min(mn, l);
          mx = std::max(mx, h);
        }
      }
      offset[p] = static_cast<int64_t>(w.size());
      if (mx < 0) continue;
      first[p] = mn;
      count[p] = mx - mn + 1;
      w.resize(w.size() + count[p], T(0));
      T* wp = w.data() + offset[p] - mn;
      for (int64_t i = 0; i < ax.grid; ++i) {
        if (roi_linear_weights(roi_align_sample_coord(ax, p, i), size, &l, &h, &wl, &wh)) {
          wp[l] += wl;
          wp[h] += wh;
        }
      }
      lo = std::min(lo, mn);
      hi = std::max(hi, mx + 1);
    }
    if (hi <= lo) {
      lo = hi = 0;
      used.clear();
      return;
    }
    used.assign(hi - lo, 0);
    for (int64_t p = 0; p < pooled; ++p)
      for (int64_t j = 0; j < count[p]; ++j)
        if (w[offset[p] + j] != T(0)) used[first[p] + j - lo] = 1;
  }
  int64_t extent() const { return hi - lo; }
};

template <typename T>
struct RoiTables {
  bool finite = true;
  bool empty = true;  // no sample inside the volume: output 0, no gradient
  int64_t batch = 0;
  T count = T(1);
  AxisTable<T> axis[3];

  void build(const T* roi, const Roi3dShape& s, T scale, int64_t sampling_ratio, bool aligned) {
    finite = roi_coords_finite(roi);
    if (!finite) return;
    batch = static_cast<int64_t>(roi[0]);
    const RoiAlignBox<T> box = roi_align_box(roi, scale, s.pooled, sampling_ratio, aligned);
    count = box.count;
    empty = false;
    for (int a = 0; a < 3; ++a) {
      axis[a].build(box.axis[a], s.pooled[a], s.size[a]);
      empty = empty || axis[a].extent() == 0;
    }
  }
};

// All channels of one roi at once: out[c, pd, ph, pw] = (Az x Ay x Ax) scan[., ., ., c] / count
// on a channels-last scan [D, H, W, C], so that the innermost loops run over contiguous
// channels (vectorized). Scratch: xbuf [nz, ny, pw, C], ybuf [nz, ph, pw, C], zbuf [ph, pw, C],
// zeroed once per roi: rows of voxels without weight stay 0 and meet only zero weights.
template <typename T>
void align_forward_roi(const T* scan, const Roi3dShape& s, const RoiTables<T>& t, T* out,
                       T* xbuf, T* ybuf, T* zbuf) {
  const AxisTable<T>&az = t.axis[0], &ay = t.axis[1], &ax = t.axis[2];
  const int64_t C = s.channels, H = s.size[1], W = s.size[2];
  const int64_t Pd = s.pooled[0], Ph = s.pooled[1], Pw = s.pooled[2];
  const int64_t nz = az.extent(), ny = ay.extent();
  for (int64_t z = 0; z < nz; ++z) {
    if (!az.used[z]) continue;
    for (int64_t y = 0; y < ny; ++y) {
      if (!ay.used[y]) continue;
      const T* row = scan + ((az.lo + z) * H + ay.lo + y) * W * C;
      T* dst = xbuf + (z * ny + y) * Pw * C;
      for (int64_t px = 0; px < Pw; ++px, dst += C) {
        for (int64_t j = 0; j < ax.count[px]; ++j) {
          const T w = ax.w[ax.offset[px] + j];
          const T* src = row + (ax.first[px] + j) * C;
          for (int64_t c = 0; c < C; ++c) dst[c] += w * src[c];
        }
      }
    }
  }
  const int64_t line = Pw * C, slab = Ph * Pw * C;
  for (int64_t z = 0; z < nz; ++z) {
    if (!az.used[z]) continue;
    for (int64_t py = 0; py < Ph; ++py) {
      T* dst = ybuf + (z * Ph + py) * line;
      for (int64_t j = 0; j < ay.count[py]; ++j) {
        const T w = ay.w[ay.offset[py] + j];
        const T* src = xbuf + (z * ny + ay.first[py] + j - ay.lo) * line;
        for (int64_t i = 0; i < line; ++i) dst[i] += w * src[i];
      }
    }
  }
  const int64_t bins = Pd * Ph * Pw;
  const T inv = T(1) / t.count;
  for (int64_t pz = 0; pz < Pd; ++pz) {
    std::fill(zbuf, zbuf + slab, T(0));
    for (int64_t j = 0; j < az.count[pz]; ++j) {
      const T w = az.w[az.offset[pz] + j];
      const T* src = ybuf + (az.first[pz] + j - az.lo) * slab;
      for (int64_t i = 0; i < slab; ++i) zbuf[i] += w * src[i];
    }
    for (int64_t b = 0; b < Ph * Pw; ++b)
      for (int64_t c = 0; c < C; ++c) out[c * bins + pz * Ph * Pw + b] = zbuf[b * C + c] * inv;
  }
}

// The transpose of align_forward_roi for one channel plane [D, H, W]: grad_plane += (Az x Ay x Ax)^T grad / count.
template <typename T>
void align_backward_plane(const T* grad, const Roi3dShape& s, const RoiTables<T>& t,
                          T* grad_plane, std::vector<T>& xbuf, std::vector<T>& ybuf) {
  const AxisTable<T>&az = t.axis[0], &ay = t.axis[1], &ax = t.axis[2];
  const int64_t H = s.size[1], W = s.size[2];
  const int64_t Pd = s.pooled[0], Ph = s.pooled[1], Pw = s.pooled[2];
  const int64_t nz = az.extent(), ny = ay.extent(), slab = Ph * Pw;
  const T inv = T(1) / t.count;
  ybuf.assign(nz * slab, T(0));
  xbuf.assign(nz * ny * Pw, T(0));
  for (int64_t pz = 0; pz < Pd; ++pz) {
    const T* src = grad + pz * slab;
    for (int64_t j = 0; j < az.count[pz]; ++j) {
      const T wz = az.w[az.offset[pz] + j] * inv;
      T* dst = ybuf.data() + (az.first[pz] + j - az.lo) * slab;
      for (int64_t i = 0; i < slab; ++i) dst[i] += wz * src[i];
    }
  }
  for (int64_t z = 0; z < nz; ++z) {
    if (!az.used[z]) continue;
    for (int64_t py = 0; py < Ph; ++py) {
      const T* src = ybuf.data() + (z * Ph + py) * Pw;
      for (int64_t j = 0; j < ay.count[py]; ++j) {
        const T wy = ay.w[ay.offset[py] + j];
        T* dst = xbuf.data() + (z * ny + ay.first[py] + j - ay.lo) * Pw;
        for (int64_t px = 0; px < Pw; ++px) dst[px] += wy * src[px];
      }
    }
  }
  for (int64_t z = 0; z < nz; ++z) {
    if (!az.used[z]) continue;
    for (int64_t y = 0; y < ny; ++y) {
      if (!ay.used[y]) continue;
      T* row = grad_plane + ((az.lo + z) * H + ay.lo + y) * W;
      const T* src = xbuf.data() + (z * ny + y) * Pw;
      for (int64_t px = 0; px < Pw; ++px) {
        const T g = src[px];
        const T* wx = ax.w.data() + ax.offset[px];
        T* r = row + ax.first[px];
        for (int64_t j = 0; j < ax.count[px]; ++j) r[j] += wx[j] * g;
      }
    }
  }
}

int64_t bins(const Roi3dShape& s) { return s.pooled[0] * s.pooled[1] * s.pooled[2]; }
int64_t voxels(const Roi3dShape& s) { return s.size[0] * s.size[1] * s.size[2]; }

}  // namespace

at::Tensor roi_align3d_cpu_kernel(const at::Tensor& input, const at::Tensor& rois,
                                  const Roi3dShape& s, double spatial_scale,
                                  int64_t sampling_ratio, bool aligned) {
  const int64_t K = rois.size(0), C = s.channels;
  at::Tensor out = at::empty({K, C, s.pooled[0], s.pooled[1], s.pooled[2]}, input.options());
  if (out.numel() == 0) return out;
  // Channels last (free when the caller's input already is).
  const at::Tensor scans = input.permute({0, 2, 3, 4, 1}).contiguous();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "roi_align3d_cpu", [&] {
    const scalar_t* x = scans.data_ptr<scalar_t>();
    const scalar_t* r = rois.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    const int64_t per_roi = C * bins(s);
    // Rois in parallel: each writes its own output block.
    at::parallel_for(0, K, 1, [&](int64_t begin, int64_t end) {
      RoiTables<scalar_t> t;
      std::vector<scalar_t> xbuf, ybuf, zbuf(s.pooled[1] * s.pooled[2] * C);
      for (int64_t k = begin; k < end; ++k) {
        scalar_t* ok = o + k * per_roi;
        t.build(r + 7 * k, s, static_cast<scalar_t>(spatial_scale), sampling_ratio, aligned);
        if (!t.finite || t.empty) {
          std::fill(ok, ok + per_roi, t.finite ? scalar_t(0) : scalar_t(NAN));
          continue;
        }
        const int64_t nz = t.axis[0].extent(), ny = t.axis[1].extent();
        xbuf.assign(nz * ny * s.pooled[2] * C, scalar_t(0));
        ybuf.assign(nz * s.pooled[1] * s.pooled[2] * C, scalar_t(0));
        align_forward_roi(x + t.batch * voxels(s) * C, s, t, ok, xbuf.data(), ybuf.data(),
                          zbuf.data());
      }
    });
  });
  return out;
}

at::Tensor roi_align3d_backward_cpu_kernel(const at::Tensor& grad_output, const at::Tensor& rois,
                                           const Roi3dShape& s, double spatial_scale,
                                           int64_t sampling_ratio, bool aligned) {
  const int64_t K = rois.size(0), C = s.channels;
  at::Tensor grad_input =
      at::zeros({s.batch, C, s.size[0], s.size[1], s.size[2]}, grad_output.options());
  if (K == 0 || grad_input.numel() == 0) return grad_input;
  AT_DISPATCH_FLOATING_TYPES(grad_output.scalar_type(), "roi_align3d_backward_cpu", [&] {
    const scalar_t* g = grad_output.data_ptr<scalar_t>();
    const scalar_t* r = rois.data_ptr<scalar_t>();
    scalar_t* gi = grad_input.data_ptr<scalar_t>();
    std::vector<RoiTables<scalar_t>> tables(K);
    at::parallel_for(0, K, 16, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k)
        tables[k].build(r + 7 * k, s, static_cast<scalar_t>(spatial_scale), sampling_ratio,
                        aligned);
    });
    // Channels in parallel: a channel's gradient planes are written by that channel only, and
    // the rois are added in order, so the result does not depend on the thread count.
    at::parallel_for(0, C, 1, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> xbuf, ybuf;
      for (int64_t c = begin; c < end; ++c)
        for (int64_t k = 0; k < K; ++k) {
          const RoiTables<scalar_t>& t = tables[k];
          if (!t.finite || t.empty) continue;
          align_backward_plane(g + (k * C + c) * bins(s), s, t,
                               gi + (t.batch * C + c) * voxels(s), xbuf, ybuf);
        }
    });
  });
  return grad_input;
}

std::tuple<at::Tensor, at::Tensor> roi_pool3d_cpu_kernel(const at::Tensor& input,
                                                         const at::Tensor& rois,
                                                         const Roi3dShape& s,
                                                         double spatial_scale) {
  const int64_t K = rois.size(0), C = s.channels;
  at::Tensor out = at::empty({K, C, s.pooled[0], s.pooled[1], s.pooled[2]}, input.options());
  at::Tensor argmax = at::empty(out.sizes(), input.options().dtype(at::kLong));
  if (out.numel() == 0) return {out, argmax};
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "roi_pool3d_cpu", [&] {
    const scalar_t* x = input.data_ptr<scalar_t>();
    const scalar_t* r = rois.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    int64_t* am = argmax.data_ptr<int64_t>();
    const scalar_t scale = static_cast<scalar_t>(spatial_scale);
    at::parallel_for(0, K, 1, [&](int64_t begin, int64_t end) {
      // The bins' voxel ranges of a roi, per axis, shared by its channels.
      std::vector<int64_t> range[3];
      for (int64_t k = begin; k < end; ++k) {
        const scalar_t* roi = r + 7 * k;
        scalar_t* ok = o + k * C * bins(s);
        int64_t* ak = am + k * C * bins(s);
        if (!roi_coords_finite(roi)) {
          std::fill(ok, ok + C * bins(s), scalar_t(NAN));
          std::fill(ak, ak + C * bins(s), int64_t(-1));
          continue;
        }
        for (int a = 0; a < 3; ++a) {
          range[a].resize(2 * s.pooled[a]);
          for (int64_t p = 0; p < s.pooled[a]; ++p)
            roi_pool_bin_range(roi[1 + a], roi[4 + a], scale, s.pooled[a], p, s.size[a],
                               &range[a][2 * p], &range[a][2 * p + 1]);
        }
        for (int64_t c = 0; c < C; ++c) {
          const scalar_t* plane = x + roi3d_plane_offset(roi, s, c);
          int64_t i = c * bins(s);
          for (int64_t pz = 0; pz < s.pooled[0]; ++pz)
            for (int64_t py = 0; py < s.pooled[1]; ++py)
              for (int64_t px = 0; px < s.pooled[2]; ++px, ++i) {
                const int64_t b[3] = {range[0][2 * pz], range[1][2 * py], range[2][2 * px]};
                const int64_t e[3] = {range[0][2 * pz + 1], range[1][2 * py + 1],
                                      range[2][2 * px + 1]};
                ok[i] = roi_pool3d_region_max(plane, s.size, b, e, ak + i);
              }
        }
      }
    });
  });
  return {out, argmax};
}

at::Tensor roi_pool3d_backward_cpu_kernel(const at::Tensor& grad_output, const at::Tensor& rois,
                                          const at::Tensor& argmax, const Roi3dShape& s) {
  const int64_t K = rois.size(0), C = s.channels;
  at::Tensor grad_input =
      at::zeros({s.batch, C, s.size[0], s.size[1], s.size[2]}, grad_output.options());
  if (K == 0 || grad_input.numel() == 0) return grad_input;
  AT_DISPATCH_FLOATING_TYPES(grad_output.scalar_type(), "roi_pool3d_backward_cpu", [&] {
    const scalar_t* g = grad_output.data_ptr<scalar_t>();
    const scalar_t* r = rois.data_ptr<scalar_t>();
    const int64_t* am = argmax.data_ptr<int64_t>();
    scalar_t* gi = grad_input.data_ptr<scalar_t>();
    // Channels in parallel, rois in order: deterministic (see the align backward).
    at::parallel_for(0, C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c)
        for (int64_t k = 0; k < K; ++k) {
          scalar_t* plane = gi + roi3d_plane_offset(r + 7 * k, s, c);
          const int64_t base = (k * C + c) * bins(s);
          for (int64_t i = 0; i < bins(s); ++i)
            if (am[base + i] >= 0) plane[am[base + i]] += g[base + i];
        }
    });
  });
  return grad_input;
}

}  // namespace deepem

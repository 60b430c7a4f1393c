// CPU kernels of anchors3d, encode_boxes3d and decode_boxes3d: the per-element functions of
// common/anchors.h over at::parallel_for.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include "../anchors3d.h"

namespace deepem {

at::Tensor anchors3d_cpu_kernel(const GridArgs& grid, bool cubes, at::ScalarType dtype) {
  const int64_t a = static_cast<int64_t>(grid.shapes.size() / 3), w = cubes ? 4 : 6;
  const auto& fs = grid.feature_size;
  at::Tensor out = at::empty({fs[0], fs[1], fs[2], a, w}, at::TensorOptions().dtype(dtype));
  AT_DISPATCH_FLOATING_TYPES(dtype, "anchors3d_cpu", [&] {
    const AnchorGrid<scalar_t> g = make_anchor_grid<scalar_t>(grid);
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, g.count(), 16384, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
        if (cubes) anchor_cube(g, k, o + 4 * k);
        else anchor_box(g, k, o + 6 * k);
      }
    });
  });
  return out;
}

namespace {

template <bool kEncode>
at::Tensor code_rows(const at::Tensor& rows, const at::Tensor& anchors,
                     const std::vector<double>& weights, double log_clamp) {
  const int64_t w = rows.size(1), n = rows.size(0), k = anchors.size(0);
  at::Tensor out = at::empty_like(rows);
  if (n == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(rows.scalar_type(), "code_boxes3d_cpu", [&] {
    const CodingWeights<scalar_t> wt = make_weights<scalar_t>(weights);
    const scalar_t clamp = static_cast<scalar_t>(log_clamp);
    const scalar_t* r = rows.data_ptr<scalar_t>();
    const scalar_t* an = anchors.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, n, 8192, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const scalar_t* anchor = an + w * (i % k);
        if (kEncode) {
          if (w == 4) encode_cube(r + 4 * i, anchor, wt.w, o + 4 * i);
          else encode_box(r + 6 * i, anchor, wt.w, o + 6 * i);
        } else {
          if (w == 4) decode_cube(r + 4 * i, anchor, wt.w, clamp, o + 4 * i);
          else decode_box(r + 6 * i, anchor, wt.w, clamp, o + 6 * i);
        }
      }
    });
  });
  return out;
}

}  // namespace

at::Tensor encode_boxes3d_cpu_kernel(const at::Tensor& boxes, const at::Tensor& anchors,
                                     const std::vector<double>& weights) {
  return code_rows<true>(boxes, anchors, weights, 0.0);
}

at::Tensor decode_boxes3d_cpu_kernel(const at::Tensor& deltas, const at::Tensor& anchors,
                                     const std::vector<double>& weights, double log_clamp) {
  return code_rows<false>(deltas, anchors, weights, log_clamp);
}

}  // namespace deepem

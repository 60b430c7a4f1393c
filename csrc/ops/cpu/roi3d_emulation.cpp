// The CUDA roi_align3d / roi_pool3d kernels' launch grids run sequentially on the CPU with the
// same per-thread functions (csrc/common/roi3d.h): one thread per output element, forward and
// backward (the atomic add becomes a plain add).
#include <ATen/Dispatch.h>

#include "../checks.h"
#include "../roi3d.h"

namespace deepem {
namespace {

struct HostAdd {
  template <typename T>
  void operator()(T* p, T v) const { *p += v; }
};

}  // namespace

std::tuple<at::Tensor, at::Tensor> roi_align3d_emulated(
    const at::Tensor& input, const at::Tensor& rois, at::IntArrayRef output_size,
    double spatial_scale, int64_t sampling_ratio, bool aligned, const at::Tensor& grad_output) {
  const char* op = "_roi_align3d_emulated";
  const Roi3dShape s = check_roi3d_forward_args(input, rois, output_size, spatial_scale, op);
  const at::Tensor x = to_compute(input), r = roi3d_rois_like(rois, x);
  const int64_t K = r.size(0);
  at::Tensor out = at::empty({K, s.channels, s.pooled[0], s.pooled[1], s.pooled[2]}, x.options());
  DEEPEM_CHECK(grad_output.sizes() == out.sizes(), op, ": argument 'grad_output' must have shape ",
              out.sizes(), ", got ", grad_output.sizes());
  const at::Tensor g = grad_output.to(x.scalar_type()).contiguous();
  at::Tensor grad_input = at::zeros(x.sizes(), x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "_roi_align3d_emulated", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* rp = r.data_ptr<scalar_t>();
    const scalar_t* gp = g.data_ptr<scalar_t>();
    scalar_t* op_ = out.data_ptr<scalar_t>();
    scalar_t* gip = grad_input.data_ptr<scalar_t>();
    const scalar_t scale = static_cast<scalar_t>(spatial_scale);
    for (int64_t i = 0; i < out.numel(); ++i) {  // the forward kernel's threads
      int64_t k, c, pz, py, px;
      roi3d_unravel(i, s, &k, &c, &pz, &py, &px);
      const scalar_t* roi = rp + 7 * k;
      const RoiAlignBox<scalar_t> box = roi_align_box(roi, scale, s.pooled, sampling_ratio, aligned);
      op_[i] = roi_align3d_bin(xp + roi3d_plane_offset(roi, s, c), s.size, roi, box, pz, py, px);
    }
    for (int64_t i = 0; i < g.numel(); ++i) {  // the backward kernel's threads
      int64_t k, c, pz, py, px;
      roi3d_unravel(i, s, &k, &c, &pz, &py, &px);
      const scalar_t* roi = rp + 7 * k;
      const RoiAlignBox<scalar_t> box = roi_align_box(roi, scale, s.pooled, sampling_ratio, aligned);
      roi_align3d_bin_backward(gp[i], gip + roi3d_plane_offset(roi, s, c), s.size, roi, box, pz,
                               py, px, HostAdd());
    }
  });
  return {out.to(input.scalar_type()), grad_input.to(input.scalar_type())};
}

std::tuple<at::Tensor, at::Tensor> roi_pool3d_emulated(const at::Tensor& input,
                                                       const at::Tensor& rois,
                                                       at::IntArrayRef output_size,
                                                       double spatial_scale) {
  const Roi3dShape s =
      check_roi3d_forward_args(input, rois, output_size, spatial_scale, "_roi_pool3d_emulated");
  const at::Tensor x = to_compute(input), r = roi3d_rois_like(rois, x);
  at::Tensor out = at::empty({r.size(0), s.channels, s.pooled[0], s.pooled[1], s.pooled[2]},
                             x.options());
  at::Tensor argmax = at::empty(out.sizes(), out.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "_roi_pool3d_emulated", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* rp = r.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    int64_t* a = argmax.data_ptr<int64_t>();
    for (int64_t i = 0; i < out.numel(); ++i) {  // the forward kernel's threads
      int64_t k, c, pz, py, px;
      roi3d_unravel(i, s, &k, &c, &pz, &py, &px);
      const scalar_t* roi = rp + 7 * k;
      o[i] = roi_pool3d_bin(xp + roi3d_plane_offset(roi, s, c), s.size, roi,
                            static_cast<scalar_t>(spatial_scale), s.pooled, pz, py, px, a + i);
    }
  });
  return {out.to(input.scalar_type()), argmax};
}

}  // namespace deepem

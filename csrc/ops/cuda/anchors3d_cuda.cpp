// CUDA entries of anchors3d, encode_boxes3d, decode_boxes3d and label_anchors3d: checks,
// device guard, current stream, launch checks. Labelling runs ops/label_anchors3d_grid.h with
// an executor that launches the kernels of anchors3d_kernels.cu.
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cmath>

#include "../checks.h"
#include "../label_anchors3d_grid.h"
#include "anchors3d_kernels.h"

namespace deepem {
namespace {

at::Tensor anchors3d_cuda(const at::Tensor& anchor_shapes, at::IntArrayRef feature_size,
                          at::ArrayRef<double> stride, at::ArrayRef<double> offset, bool cubes) {
  // The shapes are read to the host (A numbers; the grid goes to the kernel by value).
  const GridArgs args = anchors3d_args(anchor_shapes, feature_size, stride, offset, cubes);
  const c10::cuda::CUDAGuard guard(anchor_shapes.device());
  const int64_t a = static_cast<int64_t>(args.shapes.size() / 3);
  const auto& fs = args.feature_size;
  const auto opts = anchor_shapes.options().dtype(compute_dtype(anchor_shapes.scalar_type()));
  at::Tensor out = at::empty({fs[0], fs[1], fs[2], a, cubes ? 4 : 6}, opts);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "anchors3d_cuda", [&] {
    C10_CUDA_CHECK(launch_anchors3d(make_anchor_grid<scalar_t>(args), cubes,
                                    out.data_ptr<scalar_t>(), stream));
  });
  return out.to(anchor_shapes.scalar_type());
}

at::Tensor code_cuda(bool encode, const at::Tensor& rows, const at::Tensor& anchors,
                     const c10::optional<at::ArrayRef<double>>& weights, double log_clamp,
                     const char* op, const char* rows_name) {
  const int64_t w = check_coding_args(rows, anchors, op, rows_name);
  const auto wt = checked_weights(weights, w, op);
  const c10::cuda::CUDAGuard guard(rows.device());
  const at::Tensor r = to_compute(rows).view({-1, w}), an = to_compute(anchors).view({-1, w});
  at::Tensor out = at::empty_like(r);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(r.scalar_type(), "code_boxes3d_cuda", [&] {
    C10_CUDA_CHECK(launch_code_boxes3d(encode, r.data_ptr<scalar_t>(), r.size(0),
                                       an.data_ptr<scalar_t>(), an.size(0), w,
                                       make_weights<scalar_t>(wt),
                                       static_cast<scalar_t>(log_clamp),
                                       out.data_ptr<scalar_t>(), stream));
  });
  return out.view(rows.sizes()).to(rows.scalar_type());
}

at::Tensor encode_boxes3d_cuda(const at::Tensor& boxes, const at::Tensor& anchors,
                               c10::optional<at::ArrayRef<double>> weights) {
  return code_cuda(true, boxes, anchors, weights, 0.0, "encode_boxes3d", "boxes");
}

at::Tensor decode_boxes3d_cuda(const at::Tensor& deltas, const at::Tensor& anchors,
                               c10::optional<at::ArrayRef<double>> weights,
                               c10::optional<double> log_clamp) {
  return code_cuda(false, deltas, anchors, weights, log_clamp.value_or(INFINITY),
                   "decode_boxes3d", "deltas");
}

template <typename T>
struct CudaExecutor {
  cudaStream_t stream;

  void match(const AnchorGrid<T>& g, const T* gts, const int64_t* num_gt, int64_t batch,
             int64_t max_gt, const T* bands, int64_t num_bands, T pos, T neg, uint64_t seed,
             int8_t* labels, T* iou, int64_t* matched, uint64_t* candidates,
             int64_t* sample_keys) {
    C10_CUDA_CHECK(launch_label_match(g, gts, num_gt, batch, max_gt, bands, num_bands, pos, neg,
                                      seed, labels, iou, matched, candidates, sample_keys,
                                      stream));
  }
  void sampled(const int64_t* values, const int64_t* indices, int64_t total, int64_t n,
               int64_t num_anchors, int8_t* labels) {
    C10_CUDA_CHECK(launch_label_sampled(values, indices, total, n, num_anchors, labels, stream));
  }
  void positives(const AnchorGrid<T>& g, const T* gts, const int64_t* num_gt, int64_t batch,
                 int64_t max_gt, const uint64_t* candidates, bool cube_form,
                 const CodingWeights<T>& w, int8_t* labels, int64_t* pos, T* targets) {
    C10_CUDA_CHECK(launch_label_positives(g, gts, num_gt, batch, max_gt, candidates, cube_form,
                                          w, labels, pos, targets, stream));
  }
};

LabelOutputs label_anchors3d_cuda(
    const at::Tensor& gt_boxes, const c10::optional<at::Tensor>& num_gt,
    const c10::optional<at::Tensor>& neg_exclude_z, at::IntArrayRef feature_size,
    at::ArrayRef<double> stride, at::ArrayRef<double> offset, at::ArrayRef<double> anchor_shapes,
    double pos_threshold, double neg_threshold, int64_t num_neg, int64_t seed, bool cube_targets,
    c10::optional<at::ArrayRef<double>> weights) {
  const char* op = "label_anchors3d";
  const LabelArgs args = make_label_args(feature_size, stride, offset, anchor_shapes,
                                         pos_threshold, neg_threshold, num_neg, seed,
                                         cube_targets, weights, op);
  const c10::cuda::CUDAGuard guard(gt_boxes.device());
  const LabelInputs in = check_label_args(gt_boxes, num_gt, neg_exclude_z, args, op);
  LabelOutputs out = label_outputs(in, args);
  AT_DISPATCH_FLOATING_TYPES(in.gt.scalar_type(), "label_anchors3d_cuda", [&] {
    CudaExecutor<scalar_t> exec{c10::cuda::getCurrentCUDAStream()};
    label_anchors3d_grid<scalar_t>(in, args, out, exec);
  });
  std::get<1>(out) = std::get<1>(out).to(gt_boxes.scalar_type());
  std::get<4>(out) = std::get<4>(out).to(gt_boxes.scalar_type());
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(deepem, CUDA, m) {
  m.impl("anchors3d", &anchors3d_cuda);
  m.impl("encode_boxes3d", &encode_boxes3d_cuda);
  m.impl("decode_boxes3d", &decode_boxes3d_cuda);
  m.impl("label_anchors3d", &label_anchors3d_cuda);
}

}  // namespace deepem

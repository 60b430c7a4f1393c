#pragma once
// The labelling algorithm of the CUDA kernels, written once over an executor that either
// launches them (ops/cuda/anchors3d_cuda.cpp) or runs their grids on the CPU
// (ops/cpu/label_anchors3d_emulation.cpp, tested on every CI run):
//   1. match: one thread per (crop, anchor): best IoU and GT, negative or not, sampling key;
//      positive candidates race for the smallest key per GT (atomicMin on the device);
//   2. sampling: top-k smallest keys per crop (at::topk), then one thread per pick;
//   3. positives: one thread per (crop, GT): smallest-key candidate or fallback, target.
//
// Executor<T> provides (pointers on the executor's device):
//   match(grid, gts, num_gt, B, G, bands, E, pos, neg, seed, labels, iou, matched,
//         candidates, sample_keys | nullptr)
//   sampled(values, indices, B * n, n, K, labels)
//   positives(grid, gts, num_gt, B, G, candidates, cube_form, weights, labels, pos, targets)
#include <ATen/ATen.h>

#include <algorithm>

#include "anchors3d.h"

namespace deepem {

template <typename T, typename Executor>
void label_anchors3d_grid(const LabelInputs& in, const LabelArgs& args, LabelOutputs& out,
                          Executor& exec) {
  const AnchorGrid<T> g = make_anchor_grid<T>(args.grid);
  const int64_t batch = in.gt.size(0), max_gt = in.gt.size(1), k_total = g.count();
  if (batch == 0) return;
  const auto long_opts = in.gt.options().dtype(at::kLong);
  // -1 as int64 is kNoKey as uint64.
  at::Tensor candidates = at::full({batch, max_gt}, -1, long_opts);
  auto as_keys = [](const at::Tensor& t) { return reinterpret_cast<uint64_t*>(t.data_ptr<int64_t>()); };
  const bool sample = args.num_neg >= 0;
  at::Tensor keys = sample ? at::empty({batch, k_total}, long_opts) : at::Tensor();
  int8_t* labels = std::get<0>(out).data_ptr<int8_t>();
  const T* gts = in.gt.data_ptr<T>();
  const int64_t* counts = in.num_gt.defined() ? in.num_gt.data_ptr<int64_t>() : nullptr;
  const T* bands = in.bands.defined() ? in.bands.data_ptr<T>() : nullptr;
  exec.match(g, gts, counts, batch, max_gt, bands, in.bands.defined() ? in.bands.size(1) : 0,
             static_cast<T>(args.pos_threshold), static_cast<T>(args.neg_threshold), args.seed,
             labels, std::get<1>(out).data_ptr<T>(), std::get<2>(out).data_ptr<int64_t>(),
             as_keys(candidates), sample ? keys.data_ptr<int64_t>() : nullptr);
  if (sample && args.num_neg > 0) {
    const int64_t n = std::min(args.num_neg, k_total);
    const auto picked = at::topk(keys, n, /*dim=*/1, /*largest=*/false, /*sorted=*/false);
    const at::Tensor values = std::get<0>(picked).contiguous();
    const at::Tensor indices = std::get<1>(picked).contiguous();
    exec.sampled(values.data_ptr<int64_t>(), indices.data_ptr<int64_t>(), batch * n, n, k_total,
                 labels);
  }
  const CodingWeights<T> w = make_weights<T>(args.weights);
  exec.positives(g, gts, counts, batch, max_gt, as_keys(candidates), args.cube_targets, w,
                 labels, std::get<3>(out).data_ptr<int64_t>(), std::get<4>(out).data_ptr<T>());
}

}  // namespace deepem

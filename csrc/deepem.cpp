// The one place where every deepem op is declared. Kernels register per dispatch key in
// csrc/ops/**; the Python face (deepem/ops) adds defaults, docs and fake kernels.
#include <torch/library.h>

#include <string>

namespace {

// Ops whose name starts with '_' are internal (test entries, backward passes, the CPU training
// convolution, batch norm and pooling); only the backward passes have CUDA kernels, reached through their
// forward op.
constexpr const char* kSchemas[] = {
    "box_iou3d(Tensor boxes1, Tensor boxes2) -> Tensor",
    "nms3d(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor",
    "batched_nms3d(Tensor boxes, Tensor scores, Tensor idxs, float iou_threshold) -> Tensor",
    // The CUDA NMS algorithm (bitmask tiles, block resolution) run on the CPU by emulating
    // its launch grid, so that CI without a GPU tests the CUDA kernels' logic.
    "_nms3d_bitmask_emulated(Tensor boxes, Tensor scores, Tensor? idxs, float iou_threshold, "
    "int budget_words) -> Tensor",
    // The CPU NMS kernel with a chosen chunk size (candidates per parallel round; default
    // 2048), so that tests cross its chunk boundaries with few boxes.
    "_nms3d_cpu_chunked(Tensor boxes, Tensor scores, Tensor? idxs, float iou_threshold, "
    "int chunk) -> Tensor",
    // The DeepEM E-step (csrc/common/estep.h): posterior of each weak label over its scan's
    // proposals, returned with a per-label "has an admissible proposal" flag; MAP and Gumbel
    // top-k sampling picks (-1: none).
    // The record terms (size, texture) are optional and off by default.
    "em_posterior(Tensor proposals, Tensor num_proposals, Tensor weak_z, Tensor weak_lobe, "
    "Tensor num_weak, Tensor? lobe_log_probs, float mu, float sigma, float z_window, "
    "Tensor? weak_diameter=None, float size_sigma=1.0, Tensor? weak_texture=None, "
    "Tensor? texture_log_probs=None, float texture_weight=1.0) "
    "-> (Tensor log_posterior, Tensor has_candidate)",
    "em_map(Tensor log_posterior) -> Tensor",
    "em_sample(Tensor log_posterior, int k, int seed, int offset) -> Tensor",
    // The CUDA E-step kernels' warp grids emulated on the CPU (tests without a GPU).
    "_em_posterior_emulated(Tensor proposals, Tensor num_proposals, Tensor weak_z, "
    "Tensor weak_lobe, Tensor num_weak, Tensor? lobe_log_probs, float mu, float sigma, "
    "float z_window, Tensor? weak_diameter=None, float size_sigma=1.0, "
    "Tensor? weak_texture=None, Tensor? texture_log_probs=None, float texture_weight=1.0) "
    "-> (Tensor log_posterior, Tensor has_candidate)",
    "_em_map_emulated(Tensor log_posterior) -> Tensor",
    "_em_sample_emulated(Tensor log_posterior, int k, int seed, int offset) -> Tensor",
    "anchors3d(Tensor anchor_shapes, int[] feature_size, float[] stride, float[] offset, "
    "bool cubes) -> Tensor",
    "encode_boxes3d(Tensor boxes, Tensor anchors, float[]? weights) -> Tensor",
    "decode_boxes3d(Tensor deltas, Tensor anchors, float[]? weights, float? log_clamp) -> Tensor",
    // Outputs: labels int8 [B, K], matched IoU [B, K], matched GT [B, K], positive anchor per
    // GT [B, G], regression target per GT [B, G, 4 or 6].
    "label_anchors3d(Tensor gt_boxes, Tensor? num_gt, Tensor? neg_exclude_z, int[] feature_size, "
    "float[] stride, float[] offset, float[] anchor_shapes, float pos_threshold, "
    "float neg_threshold, int num_neg, int seed, bool cube_targets, float[]? weights) "
    "-> (Tensor, Tensor, Tensor, Tensor, Tensor)",
    // The CUDA labelling kernels' grids run on the CPU (tests the CUDA logic without a GPU).
    "_label_anchors3d_emulated(Tensor gt_boxes, Tensor? num_gt, Tensor? neg_exclude_z, "
    "int[] feature_size, float[] stride, float[] offset, float[] anchor_shapes, float pos_threshold, "
    "float neg_threshold, int num_neg, int seed, bool cube_targets, float[]? weights) "
    "-> (Tensor, Tensor, Tensor, Tensor, Tensor)",
    // 3D RoI align / RoI pooling; rois [K, 7] = (batch_index, z1, y1, x1, z2, y2, x2).
    "roi_align3d(Tensor input, Tensor rois, int[3] output_size, float spatial_scale, "
    "int sampling_ratio, bool aligned) -> Tensor",
    "_roi_align3d_backward(Tensor grad_output, Tensor rois, SymInt[5] input_shape, "
    "float spatial_scale, int sampling_ratio, bool aligned) -> Tensor",
    "roi_pool3d(Tensor input, Tensor rois, int[3] output_size, float spatial_scale) "
    "-> (Tensor, Tensor)",
    "_roi_pool3d_backward(Tensor grad_output, Tensor rois, Tensor argmax, SymInt[5] input_shape) "
    "-> Tensor",
    // The CUDA roi kernels' per-thread functions run over their grids on the CPU:
    // (output, grad_input for grad_output) and (output, argmax).
    "_roi_align3d_emulated(Tensor input, Tensor rois, int[3] output_size, float spatial_scale, "
    "int sampling_ratio, bool aligned, Tensor grad_output) -> (Tensor, Tensor)",
    "_roi_pool3d_emulated(Tensor input, Tensor rois, int[3] output_size, float spatial_scale) "
    "-> (Tensor, Tensor)",
    // CPU-only kernels of deepem.model.conv3d (training) and deepem.infer.fused (detection): a
    // 3^3, stride-1, padding-1 float32 convolution with few channels, then a ReLU if relu, and
    // its weight gradient (CUDA tensors take cuDNN there).
    "_conv3d_small(Tensor input, Tensor weight, Tensor? bias, bool relu=False) -> Tensor",
    "_conv3d_small_weight_grad(Tensor input, Tensor grad_output) -> Tensor",
    // CPU-only training batch norm of deepem.model.batch_norm (batch statistics of float32
    // NCDHW volumes, optionally followed by a ReLU; var_unbiased for the running variance).
    "_batch_norm3d_train(Tensor input, Tensor? weight, Tensor? bias, float eps, bool relu=False) "
    "-> (Tensor output, Tensor mean, Tensor invstd, Tensor var_unbiased)",
    "_batch_norm3d_train_backward(Tensor grad_output, Tensor input, Tensor? weight, Tensor mean, "
    "Tensor invstd, Tensor? relu_output, bool[3] output_mask) -> (Tensor, Tensor, Tensor)",
    // CPU-only training max pooling of deepem.model.pool: 2x2x2, stride 2, torch's indices.
    "_max_pool3d_2x(Tensor input) -> (Tensor output, Tensor indices)",
};

}  // namespace

TORCH_LIBRARY(deepem, m) {
  for (const char* schema : kSchemas) m.def(schema);
}

#ifndef WITH_CUDA
// A build without CUDA kernels still owns the CUDA dispatch key, so that a CUDA tensor
// gets an error that says what to do instead of a dispatcher message or an undefined symbol.
namespace {

void cuda_kernels_not_built(const c10::OperatorHandle& op, torch::jit::Stack*) {
  // One std::string message: no std::ostream on the error path (see ops/message.h).
  TORCH_CHECK(false, op.schema().name() +
              ": this deepem build has no CUDA kernels (it was built without nvcc or without a "
              "CUDA build of PyTorch, or with DEEPEM_CPU_ONLY=1). Rebuild with CUDA: "
              "`FORCE_CUDA=1 pip install --no-build-isolation .` with nvcc on the PATH and a "
              "CUDA build of torch installed, or move the tensors to the CPU.");
}

}  // namespace

TORCH_LIBRARY_IMPL(deepem, CUDA, m) {
  for (const char* schema : kSchemas) {
    std::string name(schema);
    name = name.substr(0, name.find('('));
    if (name[0] == '_') continue;
    m.impl(name.c_str(), torch::CppFunction::makeFromBoxedFunction<&cuda_kernels_not_built>());
  }
}
#endif

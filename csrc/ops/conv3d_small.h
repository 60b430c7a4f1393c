#pragma once
// conv3d_small: a 3x3x3, stride-1, padding-1 convolution of float32 NCDHW volumes with few
// channels (the narrow detector's full-resolution layers), and its weight gradient.
#include <cstdint>

namespace deepem {

// output[B, O, D, H, W] = conv(input[B, I, D, H, W], weight[O, I, 3, 3, 3]) + bias[O] (bias may be null),
// then max(0, .) if relu.
void conv3d_small_forward_cpu_kernel(const float* input, const float* weight, const float* bias, bool relu,
                                     float* output, int64_t B, int64_t I, int64_t O, int64_t D, int64_t H, int64_t W);

// grad_weight[O, I, 3, 3, 3] of that convolution from its input and the gradient of its output.
void conv3d_small_weight_grad_cpu_kernel(const float* input, const float* grad, float* grad_weight, int64_t B,
                                         int64_t I, int64_t O, int64_t D, int64_t H, int64_t W);

}  // namespace deepem

#pragma once
// Training-mode batch normalisation of float32 NCDHW volumes on the CPU (the narrow detector's
// full-resolution layers), forward and backward, two passes over the data each.
#include <cstdint>

namespace deepem {

// Per channel c of x[B, C, N]: mean[c], invstd[c] = 1 / sqrt(biased var + eps), and
// y = (x - mean) * invstd * weight + bias, then max(y, 0) with relu. var_unbiased[c] for the
// running statistics.
void batch_norm3d_forward_cpu_kernel(const float* x, const float* weight, const float* bias, float* y, float* mean,
                                     float* invstd, float* var_unbiased, int64_t B, int64_t C, int64_t N, double eps,
                                     bool relu);

// Gradients of that normalisation (batch statistics) for grad_y: grad_x [B, C, N], grad_weight
// and grad_bias [C] (each output may be null). relu_output: the forward's output when it had
// the ReLU (grad_y counts only where it is > 0), else null.
void batch_norm3d_backward_cpu_kernel(const float* grad_y, const float* x, const float* weight, const float* mean,
                                      const float* invstd, const float* relu_output, float* grad_x,
                                      float* grad_weight, float* grad_bias, int64_t B, int64_t C, int64_t N);

}  // namespace deepem

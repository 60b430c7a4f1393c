#pragma once
// 2x2x2 max pooling with stride 2 of float32 NCDHW volumes (even sides) and torch's indices,
// for the narrow detector's CPU training (its backward is torch's max_pool3d_with_indices_backward).
#include <cstdint>

namespace deepem {

// planes = B * C; each plane [D, H, W] -> [D/2, H/2, W/2]; index = flat position in the input
// plane of the first maximum in (z, y, x) window order, a NaN winning as in torch's CPU kernel.
void max_pool3d_2x_cpu_kernel(const float* input, float* output, int64_t* indices, int64_t planes, int64_t D,
                              int64_t H, int64_t W);

}  // namespace deepem

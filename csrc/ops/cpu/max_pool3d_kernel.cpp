// CPU kernel of _max_pool3d_2x: 8 outputs of a row at a time in AVX2 registers (the even and odd
// x of each of the window's 4 input rows de-interleaved), the rest in a scalar loop. torch's
// generic kernel takes 3.5 ms for the quarter-width Res18's first pooling (8 x 6 x 32^3) on the
// 2-core AVX2 VM. Same rule and window order as torch's (aten/native/cpu/MaxPoolKernel.cpp): the
// maximum starts at -inf with the window's first index, replaced when val > max or val is NaN.
#include "../max_pool3d.h"

#include <ATen/Parallel.h>

#include <cmath>
#include <limits>

#include "avx2.h"

namespace deepem {
namespace {

// Window element k = 2 * row + dx of output x: the scalar rule.
inline void pool_one(const float* in, const int64_t* rows, int64_t x, float* out, int64_t* idx) {
  float best = -std::numeric_limits<float>::infinity();
  int64_t at = rows[0] + 2 * x;
  for (int k = 0; k < 8; ++k) {
    const int64_t i = rows[k / 2] + 2 * x + k % 2;
    const float v = in[i];
    if (v > best || std::isnan(v)) {
      best = v;
      at = i;
    }
  }
  *out = best;
  *idx = at;
}

#if DEEPEM_AVX2
// Outputs x .. x + 7 of one row; returns the next x.
DEEPEM_AVX2_FMA int64_t pool_row_avx2(const float* in, const int64_t* rows, int64_t ow, float* out, int64_t* idx) {
  int64_t x = 0;
  alignas(32) int32_t ks[8];
  for (; x + 8 <= ow; x += 8) {
    __m256 best = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
    __m256i kv = _mm256_setzero_si256();
    for (int r = 0; r < 4; ++r) {
      const float* src = in + rows[r] + 2 * x;
      const __m256 a0 = _mm256_loadu_ps(src), a1 = _mm256_loadu_ps(src + 8);
      // lanes (0, 2, 8, 10, 4, 6, 12, 14) -> natural order by the 64-bit permute (0, 2, 1, 3)
      const __m256 even = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a0, a1, 0x88)), 0xD8));
      const __m256 odd = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a0, a1, 0xDD)), 0xD8));
      for (int dx = 0; dx < 2; ++dx) {
        const __m256 v = dx ? odd : even;
        const __m256 take = _mm256_or_ps(_mm256_cmp_ps(v, best, _CMP_GT_OQ), _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
        best = _mm256_blendv_ps(best, v, take);
        kv = _mm256_blendv_epi8(kv, _mm256_set1_epi32(2 * r + dx), _mm256_castps_si256(take));
      }
    }
    _mm256_storeu_ps(out + x, best);
    _mm256_store_si256(reinterpret_cast<__m256i*>(ks), kv);
    for (int l = 0; l < 8; ++l) idx[x + l] = rows[ks[l] / 2] + 2 * (x + l) + ks[l] % 2;
  }
  return x;
}
#endif

}  // namespace

void max_pool3d_2x_cpu_kernel(const float* input, float* output, int64_t* indices, int64_t planes, int64_t D,
                              int64_t H, int64_t W) {
  const int64_t od = D / 2, oh = H / 2, ow = W / 2;
  at::parallel_for(0, planes * od, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t p = r / od, z = r % od;
      const float* in = input + p * D * H * W;
      for (int64_t y = 0; y < oh; ++y) {
        float* out = output + ((p * od + z) * oh + y) * ow;
        int64_t* idx = indices + ((p * od + z) * oh + y) * ow;
        const int64_t rows[4] = {(2 * z * H + 2 * y) * W, (2 * z * H + 2 * y + 1) * W, ((2 * z + 1) * H + 2 * y) * W,
                                 ((2 * z + 1) * H + 2 * y + 1) * W};
        int64_t x = 0;
#if DEEPEM_AVX2
        if (avx2_fma_supported()) x = pool_row_avx2(in, rows, ow, out, idx);
#endif
        for (; x < ow; ++x) pool_one(in, rows, x, out + x, idx + x);
      }
    }
  });
}

}  // namespace deepem

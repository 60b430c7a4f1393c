#pragma once
// AVX2 + FMA kernels in a build for any x86-64: functions marked DEEPEM_AVX2_FMA are compiled
// for those instructions and are called only where avx2_fma_supported() (checked at run time).
// Elsewhere (other CPUs, other compilers) DEEPEM_AVX2 is 0 and the callers use torch's kernels.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define DEEPEM_AVX2 1
#define DEEPEM_AVX2_FMA __attribute__((target("avx2,fma")))
#else
#define DEEPEM_AVX2 0
#endif

#include <cstdlib>

namespace deepem {

// DEEPEM_NO_AVX2 set in the environment (read once) answers false: how the tests reach the
// torch fallbacks of the CPU training kernels on a machine that has AVX2.
inline bool avx2_fma_supported() {
#if DEEPEM_AVX2
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                         std::getenv("DEEPEM_NO_AVX2") == nullptr;
  return ok;
#else
  return false;
#endif
}

#if DEEPEM_AVX2
// The sum of the 8 lanes (float64 result of a float32 sum).
DEEPEM_AVX2_FMA inline double horizontal_sum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

// A mask of the first n of 8 lanes (for _mm256_maskload_ps / _mm256_maskstore_ps).
DEEPEM_AVX2_FMA inline __m256i lane_mask(int64_t n) {
  const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), lanes);
}
#endif

}  // namespace deepem

#pragma once
// The E-step arithmetic of DeepEM, written once for the CPU kernels, the CUDA kernels and the
// CPU emulation of the CUDA launch grids.
//
// Posterior of weak label m (slice z_m, lobe l_m) over the proposals H of its scan:
//   log w(H) = log sigmoid(logit_H) + log N+(max(|z_m - z_H| - mu, 0); sigma) + log p(l_m | H)
//              [+ the record terms of EmLabelRecord, where the label has them]
//   log p(H | m) = log w(H) - logsumexp_H' log w(H')
// A proposal outside the label's z window, or whose log w is not finite (NaN inputs, logit
// -inf, lobe log-probability -inf or +inf), has probability 0 (log -inf).
//
// Sampling: Gumbel top-k. Proposal p of label (b, m) gets the key log p(p | m) + G where
// G = -log(-log U) and U comes from a counter-based hash of (seed, offset, b, m, p); the k
// largest keys (ties: lower index) are k draws without replacement, in draw order. The keys
// are computed in double with only correctly rounded +, -, *, / (no libm, no fused
// multiply-add), so the CPU and the GPU compute bit-identical keys and pick the same indices.
#include <cmath>
#include <cstdint>
#include <cstring>

#include "macros.h"
#include "random.h"

namespace deepem {

// ---------------------------------------------------------------- posterior

// Per-op constants of the half-Gaussian term, computed once on the host.
template <typename T>
struct EmParams {
  T mu;           // minimal nodule radius: distances up to mu are free
  T z_window;     // proposals with |z_m - z_H| > z_window are not admissible
  T log_norm;     // log(2 / sqrt(2 pi sigma^2))
  T inv_two_var;  // 1 / (2 sigma^2)
  T inv_two_var_size;  // record size term: 1 / (2 s^2), s the spread of log diameter
  T texture_weight;    // record texture term: its weight
};

template <typename T>
EmParams<T> em_params(double mu, double sigma, double z_window, double size_sigma = 1.0,
                      double texture_weight = 1.0) {
  const double log_norm = 0.5 * std::log(2.0 / 3.14159265358979323846) - std::log(sigma);
  return EmParams<T>{static_cast<T>(mu), static_cast<T>(z_window), static_cast<T>(log_norm),
                     static_cast<T>(0.5 / (sigma * sigma)),
                     static_cast<T>(0.5 / (size_sigma * size_sigma)),
                     static_cast<T>(texture_weight)};
}

// What a weak label's record says beyond slice and lobe (all optional):
//   size term     -(log d_H - log d_m)^2 / (2 s^2)    where the label has a diameter d_m,
//   texture term  w_t * log p(texture_m | H)          where it has a texture,
// added to the paper's log weight; a label with neither keeps the paper's weight bit for bit.
template <typename T>
struct EmLabelRecord {
  T log_d;           // log of the recorded diameter; NaN: no size term
  const T* texture;  // the scan's log p(texture | proposal) [P, K] at the label's texture column,
                     // or null: no texture term
  int64_t texture_stride;  // K
};

template <typename T>
DEEPEM_HD EmLabelRecord<T> em_no_record() {
  return EmLabelRecord<T>{T(NAN), nullptr, 0};
}

template <typename T>
DEEPEM_HD bool em_has_record(const EmLabelRecord<T>& rec) {
  return (rec.log_d == rec.log_d) || rec.texture != nullptr;
}

// The record of label row r = b * M + m: log_diameter [B, M] (NaN: none), texture [B, M]
// (-1: none) and texture_log_probs [B, P, K]; null pointers where the op has no such input.
template <typename T>
DEEPEM_HD EmLabelRecord<T> em_label_record(const T* log_diameter, const int64_t* texture,
                                           const T* texture_log_probs, int64_t K, int64_t P,
                                           int64_t b, int64_t r) {
  EmLabelRecord<T> rec = em_no_record<T>();
  if (log_diameter) rec.log_d = log_diameter[r];
  if (texture && texture[r] >= 0) {
    rec.texture = texture_log_probs + b * P * K + texture[r];
    rec.texture_stride = K;
  }
  return rec;
}

// The record terms of proposal p (log diameter log_d_h) under label `rec`.
template <typename T>
DEEPEM_HD T em_record_term(T log_d_h, int64_t p, const EmLabelRecord<T>& rec,
                           const EmParams<T>& prm) {
  const T t = log_d_h - rec.log_d;
  const T size = rec.log_d == rec.log_d ? -(t * t) * prm.inv_two_var_size : T(0);
  const T tex = rec.texture ? prm.texture_weight * rec.texture[p * rec.texture_stride] : T(0);
  return size + tex;
}

// libm on the host, CUDA's overloads on the device (float stays float on both).
template <typename T>
DEEPEM_HD T em_exp(T x) {
#if defined(__CUDA_ARCH__)
  return exp(x);
#else
  return std::exp(x);
#endif
}

template <typename T>
DEEPEM_HD T em_log(T x) {
#if defined(__CUDA_ARCH__)
  return log(x);
#else
  return std::log(x);
#endif
}
template <typename T>
DEEPEM_HD T em_abs(T x) {
#if defined(__CUDA_ARCH__)
  return fabs(x);
#else
  return std::fabs(x);
#endif
}

// log(1 / (1 + exp(-x))) = min(x, 0) - log(1 + exp(-|x|)) without overflow for either sign;
// NaN for NaN. log(1 + e) rather than log1p(e): the absolute error is < e, and only for e
// below the epsilon, so under an ulp of the log weight it is added to; log is several times
// faster than log1p in libm.
template <typename T>
DEEPEM_HD T em_log_sigmoid(T x) {
  const T lower = x < T(0) ? x : T(0);
  return lower - em_log(T(1) + em_exp(-em_abs(x)));
}

// Unnormalised log posterior from the proposal's log sigmoid, its z, the label's z and the
// lobe term (0 when there is no lobe model). -inf when not admissible (see the top).
// Written with selects, no early return, so that CPU compilers need no unpredictable branch.
template <typename T>
DEEPEM_HD T em_log_weight(T log_sig, T z, T z_m, T lobe_log_prob, const EmParams<T>& prm,
                          T record = T(0), bool has_record = false) {
  const T dz = em_abs(z - z_m);
  T t = dz - prm.mu;
  t = t > T(0) ? t : T(0);
  T w = log_sig + prm.log_norm - t * t * prm.inv_two_var + lobe_log_prob;
  w = has_record ? w + record : w;  // a select: without a record, the paper's weight exactly
  // Inside the window (false for a NaN z) and finite (w - w is NaN for NaN and +-inf).
  const bool ok = (dz <= prm.z_window) & (w - w == T(0));
  return ok ? w : T(-INFINITY);
}

// A proposal row (logit, z, y, x, d) at position p.
template <typename T>
DEEPEM_HD T em_log_weight_of(const T* proposal, int64_t p, T z_m, T lobe_log_prob,
                             const EmLabelRecord<T>& rec, const EmParams<T>& prm) {
  const bool has_record = em_has_record(rec);
  const T record = has_record ? em_record_term(em_log(proposal[4]), p, rec, prm) : T(0);
  return em_log_weight(em_log_sigmoid(proposal[0]), proposal[1], z_m, lobe_log_prob, prm, record,
                       has_record);
}

// The per-label work of the CUDA posterior kernel (and its CPU emulation), split by lane: lane
// `lane` of `lanes` handles proposals p = lane, lane + lanes, ... (the CPU kernel does the same
// per-entry arithmetic in one lane, with each proposal's log sigmoid computed once per scan
// and only admissible entries summed). Pass 1 writes
// the unnormalised log weights into the label's output row and returns the lane's maximum;
// pass 2 returns the lane's sum of exp(w - max) (max over all lanes); pass 3 subtracts the
// log normaliser. Positions n..P-1 (padding) get -inf in pass 1.
template <typename T>
DEEPEM_HD T em_lane_weights(const T* proposals, const T* lobe_log_probs, int64_t lobe_stride,
                            int64_t lobe, int64_t n, int64_t P, T z_m, const EmLabelRecord<T>& rec,
                            const EmParams<T>& prm, int64_t lane, int64_t lanes, T* out) {
  T best = T(-INFINITY);
  for (int64_t p = lane; p < P; p += lanes) {
    T w = T(-INFINITY);
    if (p < n) {
      const T lobe_term = lobe_log_probs ? lobe_log_probs[p * lobe_stride + lobe] : T(0);
      w = em_log_weight_of(proposals + 5 * p, p, z_m, lobe_term, rec, prm);
    }
    out[p] = w;
    best = w > best ? w : best;
  }
  return best;
}

template <typename T>
DEEPEM_HD T em_lane_sum_exp(const T* out, int64_t n, T max_w, int64_t lane, int64_t lanes) {
  T sum = T(0);
  for (int64_t p = lane; p < n; p += lanes) sum += em_exp(out[p] - max_w);  // exp(-inf) = 0
  return sum;
}

template <typename T>
DEEPEM_HD void em_lane_normalise(T* out, int64_t n, T log_z, int64_t lane, int64_t lanes) {
  for (int64_t p = lane; p < n; p += lanes) out[p] -= log_z;
}

// ---------------------------------------------------------------- MAP

// Is (value a, index ia) a better pick than (b, ib)? Only values > -inf are admissible
// (NaN and -inf never are); larger value wins, ties go to the lower index.
template <typename T>
DEEPEM_HD bool em_better(T a, int64_t ia, T b, int64_t ib) {
  if (!(a > T(-INFINITY))) return false;
  if (!(b > T(-INFINITY))) return true;
  return a > b || (a == b && ia < ib);
}

// The lane's best admissible entry of a row of P values, index -1 when none. Within a lane the
// indices ascend, so em_better reduces to a strict ">" from -inf (NaN and -inf never win,
// ties keep the earlier entry).
template <typename T>
DEEPEM_HD void em_lane_argmax(const T* row, int64_t P, int64_t lane, int64_t lanes, T* best,
                              int64_t* best_index) {
  T v = T(-INFINITY);
  int64_t iv = -1;
  for (int64_t p = lane; p < P; p += lanes) {
    const T x = row[p];
    const bool take = x > v;
    v = take ? x : v;
    iv = take ? p : iv;
  }
  *best = v;
  *best_index = iv;
}

// ---------------------------------------------------------------- sampling

// IEEE operations that no compiler may fuse into a multiply-add, so that the CPU and the GPU
// round every step the same way: nvcc never fuses the __d*_rn intrinsics; on the host, an
// empty asm makes the rounded product a value the compiler cannot see through (GCC and Clang
// contract a * b + c when -march enables FMA).
DEEPEM_HD double em_mul(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  double r = a * b;
#if defined(__GNUC__) && defined(__x86_64__)
  __asm__("" : "+x"(r));
#elif defined(__GNUC__) && defined(__aarch64__)
  __asm__("" : "+w"(r));
#endif
  return r;
#endif
}
DEEPEM_HD double em_add(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}
DEEPEM_HD double em_div(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __ddiv_rn(a, b);
#else
  return a / b;
#endif
}

DEEPEM_HD uint64_t em_bits(double x) {
#if defined(__CUDA_ARCH__)
  return static_cast<uint64_t>(__double_as_longlong(x));
#else
  uint64_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
#endif
}
DEEPEM_HD double em_from_bits(uint64_t u) {
#if defined(__CUDA_ARCH__)
  return __longlong_as_double(static_cast<long long>(u));
#else
  double x;
  std::memcpy(&x, &u, sizeof x);
  return x;
#endif
}

// Natural log of a positive normal double with the same bits on every platform (relative
// error < 1e-15, plenty for sampling): x = m * 2^e from the bits (exact), m in
// [sqrt(1/2), sqrt(2)), log m = 2 atanh(s) with s = (m - 1) / (m + 1), |s| < 0.172, as an odd
// series to s^19. Branch-free, so that compilers can vectorise loops over it.
DEEPEM_HD double em_portable_log(double x) {
  const uint64_t bits = em_bits(x);
  // m in [1, 2) from the mantissa; halve it (one more exponent) when m >= sqrt(2).
  const uint64_t mant = (bits & 0x000fffffffffffffULL) | 0x3ff0000000000000ULL;
  const bool high = mant >= 0x3ff6a09e667f3bcdULL;  // the bits of sqrt(2), rounded up
  const double m = em_from_bits(high ? mant - 0x0010000000000000ULL : mant);
  const int64_t e = static_cast<int64_t>((bits >> 52) & 0x7ff) - 1023 + (high ? 1 : 0);
  const double s = em_div(em_add(m, -1.0), em_add(m, 1.0));
  const double s2 = em_mul(s, s);
  double poly = 1.0 / 19.0;
  poly = em_add(em_mul(poly, s2), 1.0 / 17.0);
  poly = em_add(em_mul(poly, s2), 1.0 / 15.0);
  poly = em_add(em_mul(poly, s2), 1.0 / 13.0);
  poly = em_add(em_mul(poly, s2), 1.0 / 11.0);
  poly = em_add(em_mul(poly, s2), 1.0 / 9.0);
  poly = em_add(em_mul(poly, s2), 1.0 / 7.0);
  poly = em_add(em_mul(poly, s2), 1.0 / 5.0);
  poly = em_add(em_mul(poly, s2), 1.0 / 3.0);
  poly = em_add(em_mul(poly, s2), 1.0);
  // ln 2 split so that e * kLn2Hi is exact for |e| < 2^11.
  constexpr double kLn2Hi = 6.93147180369123816490e-01;
  constexpr double kLn2Lo = 1.90821492927058770002e-10;
  const double de = static_cast<double>(e);  // |e| < 1100: exact
  return em_add(em_mul(de, kLn2Hi), em_add(em_mul(de, kLn2Lo), em_mul(em_mul(2.0, s), poly)));
}

// The random words of label (b, m): a stateless hash of the counter (seed, offset, b, m, p),
// so any thread computes any draw and padding sizes never shift the stream. The label's
// prefix is hashed once; each proposal adds one more mixing round.
DEEPEM_HD uint64_t em_label_stream(uint64_t seed, uint64_t offset, int64_t b, int64_t m) {
  uint64_t h = mix64(seed + kGolden);
  h = mix64(h + 2 * kGolden + offset);
  h = mix64(h + 3 * kGolden + static_cast<uint64_t>(b));
  return mix64(h + 4 * kGolden + static_cast<uint64_t>(m));
}

DEEPEM_HD uint64_t em_random_word(uint64_t label_stream, int64_t p) {
  return mix64(label_stream + 5 * kGolden + static_cast<uint64_t>(p));
}

// Uniform in (0, 1) from the top 52 bits: (2j + 1) / 2^53, exact in double, never 0 or 1.
DEEPEM_HD double em_uniform(uint64_t word) {
  return static_cast<double>(((word >> 12) << 1) | 1) * 1.1102230246251565404e-16;
}

// Gumbel(0, 1) noise -log(-log U).
DEEPEM_HD double em_gumbel(uint64_t word) {
  return -em_portable_log(-em_portable_log(em_uniform(word)));
}

// The sampling key of entry p of row (b, m); -inf when the entry is not admissible (log
// posterior NaN or -inf). Admissible keys are > -inf: the Gumbel noise is finite.
template <typename T>
DEEPEM_HD double em_sample_key(T log_posterior, uint64_t label_stream, int64_t p) {
  if (!(log_posterior > T(-INFINITY))) return -INFINITY;
  return em_add(static_cast<double>(log_posterior), em_gumbel(em_random_word(label_stream, p)));
}

// Key order of the draws: larger key first, ties by lower index. (ka, ia) before (kb, ib)?
DEEPEM_HD bool em_key_before(double ka, int64_t ia, double kb, int64_t ib) {
  return ka > kb || (ka == kb && ia < ib);
}

// One round of the GPU selection: the lane's first admissible entry (in key order) strictly
// after the previous draw (prev_index < 0: no previous draw); index -1 when none.
DEEPEM_HD void em_lane_next_draw(const double* keys, int64_t P, double prev_key,
                                 int64_t prev_index, int64_t lane, int64_t lanes,
                                 double* best_key, int64_t* best_index) {
  double bk = -INFINITY;
  int64_t bi = -1;
  for (int64_t p = lane; p < P; p += lanes) {
    const double k = keys[p];
    if (!(k > -INFINITY)) continue;
    if (prev_index >= 0 && !em_key_before(prev_key, prev_index, k, p)) continue;
    if (bi < 0 || em_key_before(k, p, bk, bi)) {
      bk = k;
      bi = p;
    }
  }
  *best_key = bk;
  *best_index = bi;
}

// Merge of two lanes' candidates (index -1: none).
DEEPEM_HD void em_merge_draw(double* key, int64_t* index, double other_key, int64_t other_index) {
  if (other_index < 0) return;
  if (*index < 0 || em_key_before(other_key, other_index, *key, *index)) {
    *key = other_key;
    *index = other_index;
  }
}

}  // namespace deepem

// CPU E-step kernels: the per-(label, proposal) arithmetic of csrc/common/estep.h, one scan
// (posterior) or one label (MAP, sampling) per parallel task.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include "../../common/estep.h"
#include "../estep.h"

namespace deepem {
namespace {

// Tasks of about this many (label, proposal) pairs: smaller work is not worth waking threads.
constexpr int64_t kWorkPerTask = 1 << 16;

int64_t grain_for(int64_t work_per_item) {
  return std::max<int64_t>(1, kWorkPerTask / std::max<int64_t>(1, work_per_item));
}

// log of x[i * stride], i < n, into out: the size term's log diameter of every proposal, once
// per scan. float: a branch-free log that compilers vectorise (libm's logf is a call per
// element, most of the size term's cost): x = m 2^e, m in [sqrt(1/2), sqrt(2)), log m =
// 2 atanh(s), s = (m - 1) / (m + 1), |s| < 0.172, the odd series to s^9 (truncation < 3e-9,
// within an ulp or two of logf); values outside the positive normal floats (0, negative,
// subnormal, inf, NaN) are redone by std::log. double: std::log.
void log_strided(const float* x, int64_t stride, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i * stride];
    uint32_t bits;
    std::memcpy(&bits, &v, sizeof bits);
    uint32_t mant = (bits & 0x007fffffu) | 0x3f800000u;  // m in [1, 2)
    const bool high = mant >= 0x3fb504f3u;                 // m >= sqrt(2): halve it
    mant = high ? mant - 0x00800000u : mant;
    float m;
    std::memcpy(&m, &mant, sizeof m);
    const float e = static_cast<float>(static_cast<int32_t>((bits >> 23) & 0xffu) - 127 + (high ? 1 : 0));
    const float s = (m - 1.0f) / (m + 1.0f);
    const float s2 = s * s;
    const float poly = (((s2 * (1.0f / 9.0f) + (1.0f / 7.0f)) * s2 + (1.0f / 5.0f)) * s2 + (1.0f / 3.0f)) * s2 + 1.0f;
    out[i] = e * 0.693147182f + 2.0f * s * poly;
  }
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i * stride];
    if (!(v >= FLT_MIN && v <= FLT_MAX)) out[i] = std::log(v);
  }
}

void log_strided(const double* x, int64_t stride, int64_t n, double* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = std::log(x[i * stride]);
}

template <typename T>
void posterior_scans(const EmPosteriorInputs& in, const EmParams<T>& prm, T* out, bool* has,
                     int64_t M, int64_t P) {
  const int64_t B = in.proposals.size(0);
  const T* props = in.proposals.data_ptr<T>();
  const int64_t* counts = in.num_proposals.data_ptr<int64_t>();
  const T* wz = in.weak_z.data_ptr<T>();
  const int64_t* lobes = in.weak_lobe.data_ptr<int64_t>();
  const int64_t* nweak = in.num_weak.data_ptr<int64_t>();
  const T* lobe_lp = in.lobe_log_probs.defined() ? in.lobe_log_probs.data_ptr<T>() : nullptr;
  const int64_t L = in.lobe_log_probs.defined() ? in.lobe_log_probs.size(2) : 0;
  const EmRecordPointers<T> records(in);
  at::parallel_for(0, B, grain_for(M * P), [&](int64_t begin, int64_t end) {
    std::vector<T> log_sig;         // per proposal of the scan: shared by its labels
    std::vector<T> log_d;           // log diameter per proposal (only with a size term)
    std::vector<int64_t> admitted;  // positions with a finite weight in the current label
    for (int64_t b = begin; b < end; ++b) {
      const int64_t n = counts[b];
      const T* pb = props + b * P * 5;
      log_sig.resize(n);
      admitted.resize(n);
      for (int64_t p = 0; p < n; ++p) log_sig[p] = em_log_sigmoid(pb[5 * p]);
      if (records.log_diameter) {
        log_d.resize(n);
        log_strided(pb + 4, 5, n, log_d.data());
      }
      for (int64_t m = 0; m < M; ++m) {
        T* row = out + (b * M + m) * P;
        has[b * M + m] = false;
        if (m >= nweak[b]) {
          std::fill(row, row + P, T(-INFINITY));
          continue;
        }
        const T z_m = wz[b * M + m];
        const T* lobe_col = lobe_lp ? lobe_lp + b * P * L + lobes[b * M + m] : nullptr;
        const EmLabelRecord<T> rec = records.label(P, b, b * M + m);
        // Pass 1, every proposal's log weight, with no branch, conditional load or compaction,
        // so that compilers vectorise it: an absent term reads a zero (stride 0) with a zero
        // coefficient. The record term (em_record_term's arithmetic) in the same pass: a pass
        // per term costs more than the terms.
        const T zero = T(0);
        const T* lobe_at = lobe_col ? lobe_col : &zero;
        const int64_t lobe_step = lobe_col ? L : 0;
        if (!em_has_record(rec)) {
          for (int64_t p = 0; p < n; ++p)
            row[p] = em_log_weight(log_sig[p], pb[5 * p + 1], z_m, lobe_at[p * lobe_step], prm);
        } else {
          const bool size_on = rec.log_d == rec.log_d;
          const T* log_d_at = size_on ? log_d.data() : &zero;
          const int64_t log_d_step = size_on ? 1 : 0;
          const T log_d_m = size_on ? rec.log_d : T(0);
          const T size_coef = size_on ? prm.inv_two_var_size : T(0);
          const bool texture_on = rec.texture != nullptr;
          const T* texture_at = texture_on ? rec.texture : &zero;
          const int64_t texture_step = texture_on ? rec.texture_stride : 0;
          const T texture_coef = texture_on ? prm.texture_weight : T(0);
          for (int64_t p = 0; p < n; ++p) {
            const T t = log_d_at[p * log_d_step] - log_d_m;
            const T r = -(t * t) * size_coef + texture_coef * texture_at[p * texture_step];
            row[p] = em_log_weight(log_sig[p], pb[5 * p + 1], z_m, lobe_at[p * lobe_step], prm, r, true);
          }
        }
        // Pass 2: the maximum and the admitted positions (weights are finite or -inf, never NaN).
        T max_w = T(-INFINITY);
        int64_t count = 0;
        for (int64_t p = 0; p < n; ++p) {
          const T w = row[p];
          admitted[count] = p;
          count += w > T(-INFINITY);
          max_w = w > max_w ? w : max_w;
        }
        std::fill(row + n, row + P, T(-INFINITY));
        if (count == 0) continue;
        // The sum in ascending p, as em_lane_sum_exp with one lane (skipped terms are 0).
        T sum = T(0);
        for (int64_t j = 0; j < count; ++j) sum += em_exp(row[admitted[j]] - max_w);
        const T log_z = max_w + std::log(sum);
        for (int64_t j = 0; j < count; ++j) row[admitted[j]] -= log_z;
        has[b * M + m] = true;
      }
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> em_posterior_cpu_kernel(const EmPosteriorInputs& in,
                                                           double mu, double sigma,
                                                           double z_window) {
  const int64_t B = in.proposals.size(0), P = in.proposals.size(1), M = in.weak_z.size(1);
  at::Tensor out = at::empty({B, M, P}, in.proposals.options());
  at::Tensor has = at::empty({B, M}, in.proposals.options().dtype(at::kBool));
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "em_posterior_cpu", [&] {
    posterior_scans<scalar_t>(in, in.params<scalar_t>(mu, sigma, z_window),
                              out.data_ptr<scalar_t>(), has.data_ptr<bool>(), M, P);
  });
  return {out, has};
}

at::Tensor em_map_cpu_kernel(const at::Tensor& log_posterior) {
  const int64_t B = log_posterior.size(0), M = log_posterior.size(1), P = log_posterior.size(2);
  at::Tensor index = at::empty({B, M}, log_posterior.options().dtype(at::kLong));
  int64_t* idx = index.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(log_posterior.scalar_type(), "em_map_cpu", [&] {
    const scalar_t* lp = log_posterior.data_ptr<scalar_t>();
    at::parallel_for(0, B * M, grain_for(P), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        scalar_t best;
        em_lane_argmax(lp + r * P, P, 0, 1, &best, idx + r);
      }
    });
  });
  return index;
}

namespace {

// Upper bounds of the Gumbel noise per bucket of the random word's top 12 bits: a word of
// bucket j has U < (j + 1) / 4096, so G = -log(-log U) < g((j + 1) / 4096); a margin of 1e-9
// covers libm's and em_portable_log's rounding (both ~1e-15). The last bucket is unbounded.
constexpr int kBucketBits = 12;

const double* gumbel_bucket_bounds() {
  static const std::vector<double> bounds = [] {
    std::vector<double> g(size_t(1) << kBucketBits);
    for (size_t j = 0; j + 1 < g.size(); ++j) {
      const double u = double(j + 1) / double(g.size());
      g[j] = -std::log(-std::log(u)) + 1e-9;
    }
    g.back() = INFINITY;
    return g;
  }();
  return bounds.data();
}

// Gumbel top-k of one row, pruned: the exact key (em_sample_key) is computed only for entries
// whose bound lp + bound(bucket) reaches the k-th largest exact key of the k entries with the
// largest bounds; every other entry has a key below that, so the picks are exactly those of
// computing every key (as the CUDA kernel does).
template <typename T>
struct RowSampler {
  static constexpr int64_t kSmallK = 8;  // up to here the k largest bounds are tracked inline
  struct Entry {
    double bound;
    int64_t p;
  };
  std::vector<Entry> entries;  // admissible entries of the row with their bounds
  std::vector<std::pair<double, int64_t>> keys;
  const double* bucket = gumbel_bucket_bounds();

  static bool before(const std::pair<double, int64_t>& a, const std::pair<double, int64_t>& c) {
    return em_key_before(a.first, a.second, c.first, c.second);
  }

  void run(const T* row, int64_t P, int64_t k, uint64_t stream, int64_t* out) {
    if (k == 0) return;
    // One pass: the bounds of the admissible entries, and (small k) the k largest of them.
    entries.clear();
    Entry best[kSmallK];  // descending bounds
    int64_t have = 0;
    for (int64_t p = 0; p < P; ++p) {
      if (!(row[p] > T(-INFINITY))) continue;
      const double b = em_add(static_cast<double>(row[p]),
                              bucket[em_random_word(stream, p) >> (64 - kBucketBits)]);
      entries.push_back({b, p});
      if (k > kSmallK || (have == k && !(b > best[k - 1].bound))) continue;
      int64_t j = have < k ? have++ : k - 1;
      for (; j > 0 && best[j - 1].bound < b; --j) best[j] = best[j - 1];
      best[j] = {b, p};
    }
    const int64_t n = static_cast<int64_t>(entries.size());
    const int64_t take = std::min(k, n);
    keys.clear();
    if (take > 0 && take < n) {
      // Threshold: the smallest exact key among the entries with the `take` largest bounds.
      const Entry* top = best;
      if (k > kSmallK) {
        std::nth_element(entries.begin(), entries.begin() + (take - 1), entries.end(),
                         [](const Entry& a, const Entry& c) { return a.bound > c.bound; });
        top = entries.data();
      }
      double t = INFINITY;
      for (int64_t j = 0; j < take; ++j) t = std::min(t, em_sample_key(row[top[j].p], stream, top[j].p));
      for (const Entry& e : entries) {
        if (e.bound >= t) keys.emplace_back(em_sample_key(row[e.p], stream, e.p), e.p);
      }
    } else {  // every admissible entry is a pick
      for (const Entry& e : entries) keys.emplace_back(em_sample_key(row[e.p], stream, e.p), e.p);
    }
    std::partial_sort(keys.begin(), keys.begin() + take, keys.end(), before);
    for (int64_t j = 0; j < k; ++j) out[j] = j < take ? keys[j].second : -1;
  }
};

}  // namespace

at::Tensor em_sample_cpu_kernel(const at::Tensor& log_posterior, int64_t k, int64_t seed,
                                int64_t offset) {
  const int64_t B = log_posterior.size(0), M = log_posterior.size(1), P = log_posterior.size(2);
  at::Tensor index = at::empty({B, M, k}, log_posterior.options().dtype(at::kLong));
  if (index.numel() == 0) return index;
  int64_t* idx = index.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(log_posterior.scalar_type(), "em_sample_cpu", [&] {
    const scalar_t* lp = log_posterior.data_ptr<scalar_t>();
    gumbel_bucket_bounds();  // built once, before the threads
    at::parallel_for(0, B * M, grain_for(P), [&](int64_t begin, int64_t end) {
      RowSampler<scalar_t> sampler;
      for (int64_t r = begin; r < end; ++r) {
        const uint64_t stream = em_label_stream(static_cast<uint64_t>(seed),
                                                static_cast<uint64_t>(offset), r / M, r % M);
        sampler.run(lp + r * P, P, k, stream, idx + r * k);
      }
    });
  });
  return index;
}

}  // namespace deepem

// The CUDA E-step kernels' launch grids run sequentially on the CPU: one 32-lane warp per weak
// label, the lanes' per-thread functions of csrc/common/estep.h, and the warps' butterfly
// (xor-shuffle) reductions in the kernels' order, so that tests without a GPU cover the
// kernels' indexing, reductions and draw rounds.
#include <ATen/Dispatch.h>

#include <cmath>
#include <utility>

#include "../../common/estep.h"
#include "../estep.h"

namespace deepem {
namespace {

constexpr int kLanes = 32;  // must match kWarp in cuda/estep_kernels.cu

// for (o = 16; o > 0; o /= 2) v[lane] = f(v[lane], v[lane ^ o]) on all lanes at once.
template <typename V, typename F>
void butterfly(V (&v)[kLanes], F&& f) {
  for (int o = kLanes / 2; o > 0; o /= 2) {
    V next[kLanes];
    for (int l = 0; l < kLanes; ++l) next[l] = f(v[l], v[l ^ o]);
    for (int l = 0; l < kLanes; ++l) v[l] = next[l];
  }
}

struct Draw {
  double key;
  int64_t index;
};

Draw merge(Draw a, Draw c) {
  em_merge_draw(&a.key, &a.index, c.key, c.index);
  return a;
}

template <typename T>
void posterior_warps(const EmPosteriorInputs& in, const EmParams<T>& prm, T* out, bool* has) {
  const int64_t B = in.proposals.size(0), P = in.proposals.size(1), M = in.weak_z.size(1);
  const T* props = in.proposals.data_ptr<T>();
  const int64_t* counts = in.num_proposals.data_ptr<int64_t>();
  const T* wz = in.weak_z.data_ptr<T>();
  const int64_t* lobes = in.weak_lobe.data_ptr<int64_t>();
  const int64_t* nweak = in.num_weak.data_ptr<int64_t>();
  const T* lobe_lp = in.lobe_log_probs.defined() ? in.lobe_log_probs.data_ptr<T>() : nullptr;
  const int64_t L = in.lobe_log_probs.defined() ? in.lobe_log_probs.size(2) : 0;
  const EmRecordPointers<T> records(in);
  for (int64_t r = 0; r < B * M; ++r) {  // warps
    const int64_t b = r / M, m = r % M;
    T* row = out + r * P;
    has[r] = false;
    if (m >= nweak[b]) {
      for (int64_t p = 0; p < P; ++p) row[p] = T(-INFINITY);
      continue;
    }
    const int64_t n = counts[b];
    T v[kLanes];
    const EmLabelRecord<T> rec = records.label(P, b, r);
    for (int l = 0; l < kLanes; ++l) {
      v[l] = em_lane_weights(props + b * P * 5, lobe_lp ? lobe_lp + b * P * L : nullptr, L,
                             lobes[r], n, P, wz[r], rec, prm, l, kLanes, row);
    }
    butterfly(v, [](T a, T c) { return a > c ? a : c; });
    const T max_w = v[0];
    if (!(max_w > T(-INFINITY))) continue;
    for (int l = 0; l < kLanes; ++l) v[l] = em_lane_sum_exp(row, n, max_w, l, kLanes);
    butterfly(v, [](T a, T c) { return a + c; });
    const T log_z = max_w + std::log(v[0]);
    for (int l = 0; l < kLanes; ++l) em_lane_normalise(row, n, log_z, l, kLanes);
    has[r] = true;
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> em_posterior_emulated(
    const at::Tensor& proposals, const at::Tensor& num_proposals, const at::Tensor& weak_z,
    const at::Tensor& weak_lobe, const at::Tensor& num_weak,
    const c10::optional<at::Tensor>& lobe_log_probs, double mu, double sigma, double z_window,
    const c10::optional<at::Tensor>& weak_diameter, double size_sigma,
    const c10::optional<at::Tensor>& weak_texture,
    const c10::optional<at::Tensor>& texture_log_probs, double texture_weight) {
  const EmPosteriorInputs in = check_em_posterior_args(
      proposals, num_proposals, weak_z, weak_lobe, num_weak, lobe_log_probs, mu, sigma, z_window,
      weak_diameter, size_sigma, weak_texture, texture_log_probs, texture_weight);
  const int64_t B = in.proposals.size(0), P = in.proposals.size(1), M = in.weak_z.size(1);
  at::Tensor out = at::empty({B, M, P}, in.proposals.options());
  at::Tensor has = at::empty({B, M}, in.proposals.options().dtype(at::kBool));
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "em_posterior_emulated", [&] {
    posterior_warps<scalar_t>(in, in.params<scalar_t>(mu, sigma, z_window),
                              out.data_ptr<scalar_t>(), has.data_ptr<bool>());
  });
  return {out.to(proposals.scalar_type()), has};
}

at::Tensor em_map_emulated(const at::Tensor& log_posterior) {
  const at::Tensor lp = check_log_posterior(log_posterior, "_em_map_emulated");
  const int64_t B = lp.size(0), M = lp.size(1), P = lp.size(2);
  at::Tensor index = at::empty({B, M}, lp.options().dtype(at::kLong));
  int64_t* idx = index.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(lp.scalar_type(), "em_map_emulated", [&] {
    using Best = std::pair<scalar_t, int64_t>;
    for (int64_t r = 0; r < B * M; ++r) {
      Best v[kLanes];
      for (int l = 0; l < kLanes; ++l)
        em_lane_argmax(lp.data_ptr<scalar_t>() + r * P, P, l, kLanes, &v[l].first, &v[l].second);
      butterfly(v, [](Best a, Best c) {
        return em_better(c.first, c.second, a.first, a.second) ? c : a;
      });
      idx[r] = v[0].second;
    }
  });
  return index;
}

at::Tensor em_sample_emulated(const at::Tensor& log_posterior, int64_t k, int64_t seed,
                              int64_t offset) {
  const at::Tensor lp = check_log_posterior(log_posterior, "_em_sample_emulated");
  check_sample_count(k, "_em_sample_emulated");
  const int64_t B = lp.size(0), M = lp.size(1), P = lp.size(2);
  at::Tensor index = at::full({B, M, k}, -1, lp.options().dtype(at::kLong));
  at::Tensor keys = at::empty({B * M * P}, lp.options().dtype(at::kDouble));
  int64_t* idx = index.data_ptr<int64_t>();
  double* key = keys.data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES(lp.scalar_type(), "em_sample_emulated", [&] {
    const scalar_t* values = lp.data_ptr<scalar_t>();
    for (int64_t r = 0; r < B * M && k > 0; ++r) {
      const uint64_t stream = em_label_stream(static_cast<uint64_t>(seed),
                                              static_cast<uint64_t>(offset), r / M, r % M);
      for (int l = 0; l < kLanes; ++l)
        for (int64_t p = l; p < P; p += kLanes)
          key[r * P + p] = em_sample_key(values[r * P + p], stream, p);
      Draw prev{0.0, -1};
      for (int64_t j = 0; j < k; ++j) {  // draw rounds
        Draw v[kLanes];
        for (int l = 0; l < kLanes; ++l)
          em_lane_next_draw(key + r * P, P, prev.key, prev.index, l, kLanes, &v[l].key,
                            &v[l].index);
        butterfly(v, merge);
        if (v[0].index < 0) break;
        idx[r * k + j] = v[0].index;
        prev = v[0];
      }
    }
  });
  return index;
}

}  // namespace deepem

#include "estep.h"

#include <torch/library.h>

#include <cmath>

#include "checks.h"

namespace deepem {
namespace {

constexpr const char* kOp = "em_posterior";

void check_integer(const at::Tensor& t, const char* op, const char* name) {
  DEEPEM_CHECK(at::isIntegralType(t.scalar_type(), /*includeBool=*/false), op, ": argument '",
              name, "' must be an integer tensor, got ", t.scalar_type());
}

void check_floating(const at::Tensor& t, const char* op, const char* name) {
  DEEPEM_CHECK(at::isFloatingType(t.scalar_type()), op, ": argument '", name,
              "' must be float16, bfloat16, float32 or float64, got ", t.scalar_type());
}

void check_shape(const at::Tensor& t, at::IntArrayRef shape, const char* what, const char* op,
                 const char* name) {
  DEEPEM_CHECK(t.sizes() == shape, op, ": argument '", name, "' must have shape ", shape, " (",
              what, "), got ", t.sizes());
}

// counts[b] in [0, upper] for every scan: one host read (a single sync on a GPU).
void check_counts(const at::Tensor& counts, int64_t upper, const char* op, const char* name,
                  const char* upper_name) {
  if (counts.numel() == 0) return;
  const bool bad = at::logical_or(counts < 0, counts > upper).any().item<bool>();
  DEEPEM_CHECK(!bad, op, ": argument '", name, "' must hold counts in [0, ", upper, "] (the ",
              upper_name, "), got values from ", counts.min().item<int64_t>(), " to ",
              counts.max().item<int64_t>());
}

// Labels that are real (not padding): bool [B, M].
at::Tensor real_labels(const EmPosteriorInputs& in) {
  const int64_t M = in.weak_z.size(1);
  return at::arange(M, in.num_weak.options()).unsqueeze(0) < in.num_weak.unsqueeze(1);
}

// A per-proposal log-probability input [B, P, K] (lobe or texture model): checked, in `dt`.
at::Tensor checked_log_probs(const at::Tensor& t, const at::Tensor& proposals, at::ScalarType dt,
                             const char* name, const char* what) {
  const int64_t B = proposals.size(0), P = proposals.size(1);
  DEEPEM_CHECK(t.dim() == 3 && t.size(0) == B && t.size(1) == P && t.size(2) >= 1, kOp,
              ": argument '", name, "' must have shape [", B, ", ", P, ", K] (", what,
              ", K >= 1), got ", t.sizes());
  check_floating(t, kOp, name);
  check_same_device(t, proposals, kOp, name, "proposals");
  return t.to(dt).contiguous();
}

// Ids [B, M] of real labels (padded slots may hold anything) in [lowest, count): the last
// dimension of `source`.
void check_label_ids(const EmPosteriorInputs& in, const at::Tensor& ids, int64_t lowest,
                     int64_t count, const char* name, const char* source) {
  if (ids.numel() == 0) return;
  const at::Tensor out_of_range =
      at::logical_or(ids < lowest, ids >= count).logical_and_(real_labels(in));
  DEEPEM_CHECK(!out_of_range.any().item<bool>(), kOp, ": argument '", name,
              "' must hold ids in [", lowest, ", ", count, ") (", lowest < 0 ? "-1: none; " : "",
              "the last dimension of '", source, "') for every real label");
}

void check_record_args(EmPosteriorInputs& in, const c10::optional<at::Tensor>& weak_diameter,
                       double size_sigma, const c10::optional<at::Tensor>& weak_texture,
                       const c10::optional<at::Tensor>& texture_log_probs,
                       double texture_weight) {
  const int64_t B = in.proposals.size(0), M = in.weak_z.size(1);
  const at::ScalarType dt = in.proposals.scalar_type();
  if (weak_diameter.has_value()) {
    const at::Tensor& d = *weak_diameter;
    check_shape(d, {B, M}, "one recorded diameter per weak label, NaN where none", kOp,
                "weak_diameter");
    check_floating(d, kOp, "weak_diameter");
    check_same_device(d, in.proposals, kOp, "weak_diameter", "proposals");
    DEEPEM_CHECK(std::isfinite(size_sigma) && size_sigma > 0.0, kOp,
                ": argument 'size_sigma' must be a finite number > 0, got ", size_sigma);
    const at::Tensor dd = d.to(dt);
    const at::Tensor bad = at::logical_and(at::logical_not(at::isnan(dd)),
                                           at::logical_not(at::logical_and(at::isfinite(dd), dd > 0)))
                               .logical_and_(real_labels(in));
    DEEPEM_CHECK(!bad.any().item<bool>(), kOp,
                ": argument 'weak_diameter' must hold a diameter > 0 (finite) or NaN (unknown) "
                "for every real label");
    in.weak_log_diameter = dd.log().contiguous();
    in.size_sigma = size_sigma;
  }
  DEEPEM_CHECK(weak_texture.has_value() == texture_log_probs.has_value(), kOp,
              ": arguments 'weak_texture' and 'texture_log_probs' go together (the labels' "
              "textures and log p(texture | proposal)); got only ",
              weak_texture.has_value() ? "'weak_texture'" : "'texture_log_probs'");
  if (weak_texture.has_value()) {
    in.texture_log_probs = checked_log_probs(*texture_log_probs, in.proposals, dt, "texture_log_probs",
                                             "log p(texture | proposal)");
    check_shape(*weak_texture, {B, M}, "one texture id per weak label, -1 where none", kOp,
                "weak_texture");
    check_integer(*weak_texture, kOp, "weak_texture");
    check_same_device(*weak_texture, in.proposals, kOp, "weak_texture", "proposals");
    DEEPEM_CHECK(std::isfinite(texture_weight) && texture_weight > 0.0, kOp,
                ": argument 'texture_weight' must be a finite number > 0, got ", texture_weight);
    in.weak_texture = weak_texture->to(at::kLong).contiguous();
    in.texture_weight = texture_weight;
    check_label_ids(in, in.weak_texture, -1, in.texture_log_probs.size(2), "weak_texture",
                    "texture_log_probs");
  }
}

}  // namespace

EmPosteriorInputs check_em_posterior_args(
    const at::Tensor& proposals, const at::Tensor& num_proposals, const at::Tensor& weak_z,
    const at::Tensor& weak_lobe, const at::Tensor& num_weak,
    const c10::optional<at::Tensor>& lobe_log_probs, double mu, double sigma, double z_window,
    const c10::optional<at::Tensor>& weak_diameter, double size_sigma,
    const c10::optional<at::Tensor>& weak_texture,
    const c10::optional<at::Tensor>& texture_log_probs, double texture_weight) {
  DEEPEM_CHECK(proposals.dim() == 3 && proposals.size(2) == 5, kOp,
              ": argument 'proposals' must have shape [B, P, 5] (logit, z, y, x, d), got ",
              proposals.sizes());
  check_floating(proposals, kOp, "proposals");
  const int64_t B = proposals.size(0), P = proposals.size(1);
  DEEPEM_CHECK(weak_z.dim() == 2 && weak_z.size(0) == B, kOp,
              ": argument 'weak_z' must have shape [B, M] with B = ", B,
              " (one row of label slices per scan of 'proposals'), got ", weak_z.sizes());
  const int64_t M = weak_z.size(1);
  check_floating(weak_z, kOp, "weak_z");
  check_shape(num_proposals, {B}, "one count per scan", kOp, "num_proposals");
  check_integer(num_proposals, kOp, "num_proposals");
  check_shape(weak_lobe, {B, M}, "one lobe per weak label, like 'weak_z'", kOp, "weak_lobe");
  check_integer(weak_lobe, kOp, "weak_lobe");
  check_shape(num_weak, {B}, "one count per scan", kOp, "num_weak");
  check_integer(num_weak, kOp, "num_weak");
  check_same_device(num_proposals, proposals, kOp, "num_proposals", "proposals");
  check_same_device(weak_z, proposals, kOp, "weak_z", "proposals");
  check_same_device(weak_lobe, proposals, kOp, "weak_lobe", "proposals");
  check_same_device(num_weak, proposals, kOp, "num_weak", "proposals");
  DEEPEM_CHECK(std::isfinite(mu) && mu >= 0.0, kOp,
              ": argument 'mu' must be a finite number >= 0, got ", mu);
  DEEPEM_CHECK(std::isfinite(sigma) && sigma > 0.0, kOp,
              ": argument 'sigma' must be a finite number > 0, got ", sigma);
  DEEPEM_CHECK(z_window >= 0.0, kOp, ": argument 'z_window' must be >= 0 (inf: no window), got ",
              z_window);

  EmPosteriorInputs in;
  const at::ScalarType dt = compute_dtype(proposals.scalar_type());
  in.proposals = proposals.to(dt).contiguous();
  in.num_proposals = num_proposals.to(at::kLong).contiguous();
  in.weak_z = weak_z.to(dt).contiguous();
  in.weak_lobe = weak_lobe.to(at::kLong).contiguous();
  in.num_weak = num_weak.to(at::kLong).contiguous();
  check_counts(in.num_proposals, P, kOp, "num_proposals", "proposal slots P of 'proposals'");
  check_counts(in.num_weak, M, kOp, "num_weak", "label slots M of 'weak_z'");
  if (lobe_log_probs.has_value()) {
    in.lobe_log_probs = checked_log_probs(*lobe_log_probs, proposals, dt, "lobe_log_probs",
                                          "log p(lobe | proposal)");
    check_label_ids(in, in.weak_lobe, 0, in.lobe_log_probs.size(2), "weak_lobe", "lobe_log_probs");
  }
  check_record_args(in, weak_diameter, size_sigma, weak_texture, texture_log_probs,
                    texture_weight);
  return in;
}

at::Tensor check_log_posterior(const at::Tensor& log_posterior, const char* op) {
  DEEPEM_CHECK(log_posterior.dim() == 3, op,
              ": argument 'log_posterior' must have shape [B, M, P], got ", log_posterior.sizes());
  check_floating(log_posterior, op, "log_posterior");
  return to_compute(log_posterior);
}

void check_sample_count(int64_t k, const char* op) {
  DEEPEM_CHECK(k >= 0, op, ": argument 'k' must be >= 0 (draws per weak label), got ", k);
}

namespace {

std::tuple<at::Tensor, at::Tensor> em_posterior_cpu(
    const at::Tensor& proposals, const at::Tensor& num_proposals, const at::Tensor& weak_z,
    const at::Tensor& weak_lobe, const at::Tensor& num_weak,
    const c10::optional<at::Tensor>& lobe_log_probs, double mu, double sigma, double z_window,
    const c10::optional<at::Tensor>& weak_diameter, double size_sigma,
    const c10::optional<at::Tensor>& weak_texture,
    const c10::optional<at::Tensor>& texture_log_probs, double texture_weight) {
  const EmPosteriorInputs in = check_em_posterior_args(
      proposals, num_proposals, weak_z, weak_lobe, num_weak, lobe_log_probs, mu, sigma, z_window,
      weak_diameter, size_sigma, weak_texture, texture_log_probs, texture_weight);
  auto [log_post, has] = em_posterior_cpu_kernel(in, mu, sigma, z_window);
  return {log_post.to(proposals.scalar_type()), has};
}

at::Tensor em_map_cpu(const at::Tensor& log_posterior) {
  return em_map_cpu_kernel(check_log_posterior(log_posterior, "em_map"));
}

at::Tensor em_sample_cpu(const at::Tensor& log_posterior, int64_t k, int64_t seed,
                         int64_t offset) {
  const at::Tensor lp = check_log_posterior(log_posterior, "em_sample");
  check_sample_count(k, "em_sample");
  return em_sample_cpu_kernel(lp, k, seed, offset);
}

}  // namespace

TORCH_LIBRARY_IMPL(deepem, CPU, m) {
  m.impl("em_posterior", &em_posterior_cpu);
  m.impl("em_map", &em_map_cpu);
  m.impl("em_sample", &em_sample_cpu);
  m.impl("_em_posterior_emulated", &em_posterior_emulated);
  m.impl("_em_map_emulated", &em_map_emulated);
  m.impl("_em_sample_emulated", &em_sample_emulated);
}

}  // namespace deepem

#include "checks.h"

#include <cmath>

namespace deepem {

void check_float_matrix(const at::Tensor& t, int64_t width, const char* op, const char* name) {
  DEEPEM_CHECK(t.dim() == 2 && t.size(1) == width, op, ": argument '", name,
              "' must have shape [N, ", width, "], got ", t.sizes());
  DEEPEM_CHECK(at::isFloatingType(t.scalar_type()), op, ": argument '", name,
              "' must be float16, bfloat16, float32 or float64, got ", t.scalar_type());
}

void check_same_device(const at::Tensor& t, const at::Tensor& like, const char* op,
                       const char* name, const char* like_name) {
  DEEPEM_CHECK(t.device() == like.device(), op, ": argument '", name, "' is on ", t.device(),
              " but '", like_name, "' is on ", like.device(), "; both must be on one device");
}

void check_same_dtype(const at::Tensor& t, const at::Tensor& like, const char* op,
                      const char* name, const char* like_name) {
  DEEPEM_CHECK(t.scalar_type() == like.scalar_type(), op, ": argument '", name, "' has dtype ",
              t.scalar_type(), " but '", like_name, "' has ", like.scalar_type(),
              "; they must match");
}

void check_scores(const at::Tensor& scores, const at::Tensor& like, const char* op,
                  const char* name, const char* like_name) {
  DEEPEM_CHECK(scores.dim() == 1 && scores.size(0) == like.size(0), op, ": argument '", name,
              "' must have shape [", like.size(0), "] (one per row of '", like_name, "'), got ",
              scores.sizes());
  check_same_device(scores, like, op, name, like_name);
  check_same_dtype(scores, like, op, name, like_name);
}

void check_unit_interval(double value, const char* op, const char* name) {
  DEEPEM_CHECK(value >= 0.0 && value <= 1.0, op, ": argument '", name,
              "' must be a number in [0, 1], got ", value);
}

at::ScalarType compute_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

at::Tensor to_compute(const at::Tensor& t) {
  return t.to(compute_dtype(t.scalar_type())).contiguous();
}

}  // namespace deepem

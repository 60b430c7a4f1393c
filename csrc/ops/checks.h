#pragma once
// Argument checks shared by every op: each failure names the op, the argument and what was
// expected, so a user can fix the call without reading the source.
#include <ATen/ATen.h>

#include "message.h"

namespace deepem {

// A floating tensor of shape [N, width] (float16, bfloat16, float32 or float64).
void check_float_matrix(const at::Tensor& t, int64_t width, const char* op, const char* name);
// A floating tensor of shape [n] with the dtype and device of `like`.
void check_scores(const at::Tensor& scores, const at::Tensor& like, const char* op,
                  const char* name, const char* like_name);
// Same device as `like` (error names both arguments).
void check_same_device(const at::Tensor& t, const at::Tensor& like, const char* op,
                       const char* name, const char* like_name);
// Same dtype as `like`.
void check_same_dtype(const at::Tensor& t, const at::Tensor& like, const char* op,
                      const char* name, const char* like_name);
// An IoU threshold: a number in [0, 1].
void check_unit_interval(double value, const char* op, const char* name);

// The dtype a kernel computes in: float32 for the 16-bit types, the dtype itself otherwise.
at::ScalarType compute_dtype(at::ScalarType t);

// Contiguous copy in the compute dtype (no copy when already so).
at::Tensor to_compute(const at::Tensor& t);

}  // namespace deepem

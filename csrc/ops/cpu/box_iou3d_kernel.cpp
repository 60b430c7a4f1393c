#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include "../../common/box3d.h"
#include "../box_iou3d.h"

namespace deepem {

at::Tensor box_iou3d_cpu_kernel(const at::Tensor& boxes1, const at::Tensor& boxes2) {
  const int64_t n = boxes1.size(0), m = boxes2.size(0);
  at::Tensor out = at::empty({n, m}, boxes1.options());
  if (n == 0 || m == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(boxes1.scalar_type(), "box_iou3d_cpu", [&] {
    const scalar_t* a = boxes1.data_ptr<scalar_t>();
    const scalar_t* b = boxes2.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    // Rows in parallel; a grain of rows worth ~16k pairs keeps small inputs on one thread.
    const int64_t grain = std::max<int64_t>(1, 16384 / m);
    at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        for (int64_t j = 0; j < m; ++j) o[i * m + j] = box_iou(a + 6 * i, b + 6 * j);
      }
    });
  });
  return out;
}

}  // namespace deepem

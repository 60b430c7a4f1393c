// The ops seen from C++ through the dispatcher, as a LibTorch user calls them.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdio>
#include <vector>

namespace {

int failures = 0, passes = 0;

void expect(bool ok, const char* what) {
  std::printf("%s: %s\n", ok ? "ok" : "FAILED", what);
  (ok ? passes : failures) += 1;
}

template <typename Signature>
c10::TypedOperatorHandle<Signature> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

std::vector<int64_t> as_vector(const at::Tensor& t) {
  const at::Tensor c = t.contiguous();
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

}  // namespace

int main() {
  const at::Tensor boxes = at::tensor({0., 0., 0., 10., 10., 10.,    //
                                       1., 1., 1., 11., 11., 11.,    //
                                       50., 50., 50., 60., 60., 60.})
                               .reshape({3, 6});
  const at::Tensor scores = at::tensor({1.0, 2.0, 0.5});

  const auto iou = op<at::Tensor(const at::Tensor&, const at::Tensor&)>("deepem::box_iou3d")
                       .call(boxes, boxes);
  const double want = 729.0 / (2000.0 - 729.0);  // 9^3 overlap of two 10^3 cubes
  expect(std::abs(iou[0][1].item<double>() - want) < 1e-12, "box_iou3d of shifted cubes");
  expect(iou[0][2].item<double>() == 0.0, "box_iou3d of disjoint cubes is 0");

  const auto nms = op<at::Tensor(const at::Tensor&, const at::Tensor&, double)>("deepem::nms3d");
  expect(as_vector(nms.call(boxes, scores, 0.5)) == std::vector<int64_t>{1, 2}, "nms3d keeps 1, 2");
  expect(as_vector(nms.call(boxes, scores, 0.6)) == std::vector<int64_t>{1, 0, 2}, "nms3d at 0.6 keeps all");

  const auto batched =
      op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, double)>("deepem::batched_nms3d");
  const at::Tensor groups = at::tensor({int64_t(0), int64_t(1), int64_t(0)});
  expect(as_vector(batched.call(boxes, scores, groups, 0.5)) == std::vector<int64_t>{1, 0, 2},
         "batched_nms3d keeps boxes of other groups");

  bool threw = false;
  try {
    nms.call(boxes, scores, 1.5);
  } catch (const c10::Error& e) {
    threw = std::string(e.what()).find("iou_threshold") != std::string::npos;
  }
  expect(threw, "nms3d rejects iou_threshold 1.5 naming the argument");

  std::printf("%d passed, %d failed\n", passes, failures);
  return failures == 0 ? 0 : 1;
}

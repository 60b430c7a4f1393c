// CPU NMS: the classic greedy result, with candidates checked only against kept boxes that
// share a cell of a uniform 3D grid (memory O(N), no N x N matrix), and the check against
// boxes kept in earlier chunks run in parallel.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "../../common/box3d.h"
#include "../nms3d.h"

namespace deepem {
namespace {

constexpr int64_t kGrain = 64;

// A uniform grid over the candidates' bounds. The cell edge is the median box extent (most
// boxes touch at most 2 cells per axis), widened so that there are at most ~N cells.
struct Grid {
  double lo[3], inv_cell[3];
  int64_t dims[3];

  template <typename T>
  Grid(const T* boxes, const std::vector<int64_t>& items) {
    const int64_t n = static_cast<int64_t>(items.size());
    std::vector<double> extent(n);
    for (int a = 0; a < 3; ++a) {
      double lo_a = INFINITY, hi_a = -INFINITY;
      for (int64_t k = 0; k < n; ++k) {
        const T* b = boxes + 6 * items[k];
        lo_a = std::min(lo_a, double(b[a]));
        hi_a = std::max(hi_a, double(b[a + 3]));
        extent[k] = double(b[a + 3]) - double(b[a]);
      }
      double cell = 1.0;
      if (n > 0) {
        std::nth_element(extent.begin(), extent.begin() + n / 2, extent.end());
        cell = std::max(extent[n / 2], (hi_a - lo_a) / std::cbrt(double(n)));
      }
      lo[a] = n > 0 ? lo_a : 0.0;
      if (!(cell > 0.0) || !std::isfinite(cell) || !std::isfinite(hi_a - lo_a)) {
        inv_cell[a] = 0.0;  // one cell on this axis
        dims[a] = 1;
      } else {
        inv_cell[a] = 1.0 / cell;
        dims[a] = static_cast<int64_t>((hi_a - lo_a) * inv_cell[a]) + 1;
      }
    }
  }

  int64_t num_cells() const { return dims[0] * dims[1] * dims[2]; }

  int64_t cell_of(double v, int a) const {
    const double c = std::floor((v - lo[a]) * inv_cell[a]);
    if (!(c > 0.0)) return 0;
    return std::min<int64_t>(static_cast<int64_t>(std::min(c, 9.0e18)), dims[a] - 1);
  }

  // Calls f(cell) for every cell the box touches; stops early when f returns true.
  template <typename T, typename F>
  bool any_cell(const T* b, F&& f) const {
    const int64_t z0 = cell_of(b[0], 0), z1 = cell_of(b[3], 0);
    const int64_t y0 = cell_of(b[1], 1), y1 = cell_of(b[4], 1);
    const int64_t x0 = cell_of(b[2], 2), x1 = cell_of(b[5], 2);
    for (int64_t z = z0; z <= z1; ++z)
      for (int64_t y = y0; y <= y1; ++y)
        for (int64_t x = x0; x <= x1; ++x)
          if (f((z * dims[1] + y) * dims[2] + x)) return true;
    return false;
  }
};

// Greedy NMS over `items` (indices, already in NMS order, all with finite coordinates).
// Returns the kept indices in that order.
template <typename T>
std::vector<int64_t> greedy_nms(const T* boxes, const std::vector<int64_t>& items, T threshold,
                                int64_t chunk) {
  const int64_t n = static_cast<int64_t>(items.size());
  std::vector<int64_t> kept;
  // A zero-volume box has IoU 0 with everything: always kept, never suppresses.
  std::vector<int64_t> solid;
  for (int64_t i : items)
    if (box_volume(boxes + 6 * i) > T(0)) solid.push_back(i);
  const Grid grid(boxes, solid);
  std::vector<std::vector<int64_t>> cells(solid.empty() ? 0 : grid.num_cells());
  std::vector<int64_t> kept_solid;  // the grid stores positions in this list
  std::vector<T> kept_volume;

  // Does a kept box at position >= first_seq suppress box j?
  auto suppressed = [&](int64_t j, int64_t first_seq) {
    const T* b = boxes + 6 * j;
    const T vb = box_volume(b);
    return grid.any_cell(b, [&](int64_t cell) {
      const std::vector<int64_t>& entries = cells[cell];
      for (auto it = entries.rbegin(); it != entries.rend() && *it >= first_seq; ++it) {
        const int64_t k = kept_solid[*it];
        if (box_iou_exceeds(boxes + 6 * k, kept_volume[*it], b, vb, threshold)) return true;
      }
      return false;
    });
  };

  std::vector<char> suppressed_before(std::min(chunk, n));
  for (int64_t start = 0; start < n; start += chunk) {
    const int64_t stop = std::min(n, start + chunk);
    const int64_t kept_before = static_cast<int64_t>(kept_solid.size());
    // Against boxes kept in earlier chunks: read-only, so in parallel.
    at::parallel_for(start, stop, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        const int64_t j = items[p];
        suppressed_before[p - start] =
            box_volume(boxes + 6 * j) > T(0) && kept_before > 0 && suppressed(j, 0);
      }
    });
    // Against boxes kept in this chunk: in order, only the newest grid entries.
    for (int64_t p = start; p < stop; ++p) {
      const int64_t j = items[p];
      if (suppressed_before[p - start]) continue;
      const T* b = boxes + 6 * j;
      if (box_volume(b) > T(0)) {
        if (suppressed(j, kept_before)) continue;
        const int64_t seq = static_cast<int64_t>(kept_solid.size());
        kept_solid.push_back(j);
        kept_volume.push_back(box_volume(b));
        grid.any_cell(b, [&](int64_t cell) {
          cells[cell].push_back(seq);
          return false;
        });
      }
      kept.push_back(j);
    }
  }
  return kept;
}

template <typename T>
std::vector<int64_t> valid_in_order(const T* boxes, const T* scores, const int64_t* order,
                                    int64_t begin, int64_t end) {
  std::vector<int64_t> items;
  items.reserve(end - begin);
  for (int64_t p = begin; p < end; ++p) {
    const int64_t i = order[p];
    if (box_is_finite(boxes + 6 * i) && !std::isnan(scores[i])) items.push_back(i);
  }
  return items;
}

}  // namespace

at::Tensor nms3d_cpu_kernel(const at::Tensor& boxes, const at::Tensor& scores,
                            const at::Tensor& idxs, double iou_threshold, int64_t chunk) {
  const int64_t n = boxes.size(0);
  if (n == 0) return at::empty({0}, boxes.options().dtype(at::kLong));
  const at::Tensor order = nms3d_order(scores, idxs);
  const int64_t* ord = order.data_ptr<int64_t>();
  std::vector<int64_t> kept;
  AT_DISPATCH_FLOATING_TYPES(boxes.scalar_type(), "nms3d_cpu", [&] {
    const scalar_t* b = boxes.data_ptr<scalar_t>();
    const scalar_t* s = scores.data_ptr<scalar_t>();
    const scalar_t thr = static_cast<scalar_t>(iou_threshold);
    if (!idxs.defined()) {
      kept = greedy_nms(b, valid_in_order(b, s, ord, 0, n), thr, chunk);
      return;
    }
    // Groups are contiguous in `order`; each is an independent NMS.
    const int64_t* g = idxs.data_ptr<int64_t>();
    std::vector<int64_t> starts;
    for (int64_t p = 0; p < n; ++p)
      if (p == 0 || g[ord[p]] != g[ord[p - 1]]) starts.push_back(p);
    starts.push_back(n);
    const int64_t groups = static_cast<int64_t>(starts.size()) - 1;
    std::vector<std::vector<int64_t>> kept_per_group(groups);
    // Many groups: one per task. Few groups: one after another, each NMS parallel inside.
    const int64_t grain = groups >= 4 * at::get_num_threads() ? 1 : groups;
    at::parallel_for(0, groups, grain, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k)
        kept_per_group[k] =
            greedy_nms(b, valid_in_order(b, s, ord, starts[k], starts[k + 1]), thr, chunk);
    });
    for (const auto& part : kept_per_group) kept.insert(kept.end(), part.begin(), part.end());
  });
  at::Tensor out = at::empty({static_cast<int64_t>(kept.size())}, boxes.options().dtype(at::kLong));
  std::copy(kept.begin(), kept.end(), out.data_ptr<int64_t>());
  return idxs.defined() ? nms3d_output_order(out, scores) : out;
}

}  // namespace deepem

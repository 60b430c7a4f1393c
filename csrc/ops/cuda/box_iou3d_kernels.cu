#include "../../common/box3d.h"
#include "box_iou3d_kernels.h"
#include "launch.cuh"

namespace deepem {
namespace {

constexpr int kTile = 32;

// One 32x32 tile of the output per block; both tiles of boxes staged in shared memory.
// The launch bound makes the compiler fit 1024 threads per block in the register file.
template <typename T>
__global__ void __launch_bounds__(kTile * kTile) box_iou3d_kernel(const T* __restrict__ a, int64_t n, const T* __restrict__ b,
                                 int64_t m, T* __restrict__ out, int64_t row_tiles,
                                 int64_t col_tiles) {
  __shared__ T sa[kTile * 6];
  __shared__ T sb[kTile * 6];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int t = ty * kTile + tx;
  for (int64_t tile = blockIdx.x; tile < row_tiles * col_tiles; tile += gridDim.x) {
    const int64_t i0 = (tile / col_tiles) * kTile, j0 = (tile % col_tiles) * kTile;
    if (t < kTile * 6) {
      const int64_t ia = i0 * 6 + t, jb = j0 * 6 + t;
      sa[t] = ia < n * 6 ? a[ia] : T(0);
      sb[t] = jb < m * 6 ? b[jb] : T(0);
    }
    __syncthreads();
    const int64_t i = i0 + ty, j = j0 + tx;
    if (i < n && j < m) out[i * m + j] = box_iou(sa + 6 * ty, sb + 6 * tx);
    __syncthreads();
  }
}

}  // namespace

template <typename T>
cudaError_t launch_box_iou3d(const T* boxes1, int64_t n, const T* boxes2, int64_t m, T* out,
                             cudaStream_t stream) {
  if (n == 0 || m == 0) return cudaSuccess;
  const int64_t row_tiles = (n + kTile - 1) / kTile, col_tiles = (m + kTile - 1) / kTile;
  box_iou3d_kernel<T><<<grid_blocks(row_tiles * col_tiles, 1), dim3(kTile, kTile), 0, stream>>>(boxes1, n, boxes2, m, out,
                                                                 row_tiles, col_tiles);
  return cudaGetLastError();
}

template cudaError_t launch_box_iou3d<float>(const float*, int64_t, const float*, int64_t,
                                             float*, cudaStream_t);
template cudaError_t launch_box_iou3d<double>(const double*, int64_t, const double*, int64_t,
                                              double*, cudaStream_t);

}  // namespace deepem

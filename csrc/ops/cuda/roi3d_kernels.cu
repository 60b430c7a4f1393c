// One thread per output element (k, c, pz, py, px), grid-stride loops, int64 indices.
// The backward kernels scatter with atomicAdd (float or double: 16-bit types are upcast by
// the caller).
#include "launch.cuh"
#include "roi3d_kernels.h"

namespace deepem {
namespace {

constexpr int kThreads = 256;

unsigned grid_for(int64_t items) { return grid_blocks(items, kThreads); }

int64_t num_outputs(int64_t num_rois, const Roi3dShape& s) {
  return num_rois * s.channels * s.pooled[0] * s.pooled[1] * s.pooled[2];
}

// Called from the __host__ __device__ per-thread functions; only the device path is used.
struct AtomicAdd {
  template <typename T>
  __host__ __device__ void operator()(T* p, T v) const {
#ifdef __CUDA_ARCH__
    atomicAdd(p, v);
#else
    *p += v;
#endif
  }
};

template <typename T>
__global__ void roi_align3d_forward_kernel(const T* __restrict__ input, const T* __restrict__ rois,
                                           int64_t total, Roi3dShape s, T scale,
                                           int64_t sampling_ratio, bool aligned, T* output) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    int64_t k, c, pz, py, px;
    roi3d_unravel(i, s, &k, &c, &pz, &py, &px);
    const T* roi = rois + 7 * k;
    const RoiAlignBox<T> box = roi_align_box(roi, scale, s.pooled, sampling_ratio, aligned);
    output[i] = roi_align3d_bin(input + roi3d_plane_offset(roi, s, c), s.size, roi, box, pz, py, px);
  }
}

template <typename T>
__global__ void roi_align3d_backward_kernel(const T* __restrict__ grad_output,
                                            const T* __restrict__ rois, int64_t total,
                                            Roi3dShape s, T scale, int64_t sampling_ratio,
                                            bool aligned, T* grad_input) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    int64_t k, c, pz, py, px;
    roi3d_unravel(i, s, &k, &c, &pz, &py, &px);
    const T* roi = rois + 7 * k;
    const RoiAlignBox<T> box = roi_align_box(roi, scale, s.pooled, sampling_ratio, aligned);
    roi_align3d_bin_backward(grad_output[i], grad_input + roi3d_plane_offset(roi, s, c), s.size,
                             roi, box, pz, py, px, AtomicAdd());
  }
}

template <typename T>
__global__ void roi_pool3d_forward_kernel(const T* __restrict__ input, const T* __restrict__ rois,
                                          int64_t total, Roi3dShape s, T scale, T* output,
                                          int64_t* argmax) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    int64_t k, c, pz, py, px;
    roi3d_unravel(i, s, &k, &c, &pz, &py, &px);
    const T* roi = rois + 7 * k;
    output[i] = roi_pool3d_bin(input + roi3d_plane_offset(roi, s, c), s.size, roi, scale,
                               s.pooled, pz, py, px, argmax + i);
  }
}

template <typename T>
__global__ void roi_pool3d_backward_kernel(const T* __restrict__ grad_output,
                                           const T* __restrict__ rois,
                                           const int64_t* __restrict__ argmax, int64_t total,
                                           Roi3dShape s, T* grad_input) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t a = argmax[i];
    if (a < 0) continue;
    int64_t k, c, pz, py, px;
    roi3d_unravel(i, s, &k, &c, &pz, &py, &px);
    atomicAdd(grad_input + roi3d_plane_offset(rois + 7 * k, s, c) + a, grad_output[i]);
  }
}

}  // namespace

template <typename T>
cudaError_t launch_roi_align3d_forward(const T* input, const T* rois, int64_t num_rois,
                                       const Roi3dShape& shape, T spatial_scale,
                                       int64_t sampling_ratio, bool aligned, T* output,
                                       cudaStream_t stream) {
  const int64_t total = num_outputs(num_rois, shape);
  if (total == 0) return cudaSuccess;
  roi_align3d_forward_kernel<T><<<grid_for(total), kThreads, 0, stream>>>(
      input, rois, total, shape, spatial_scale, sampling_ratio, aligned, output);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_roi_align3d_backward(const T* grad_output, const T* rois, int64_t num_rois,
                                        const Roi3dShape& shape, T spatial_scale,
                                        int64_t sampling_ratio, bool aligned, T* grad_input,
                                        cudaStream_t stream) {
  const int64_t total = num_outputs(num_rois, shape);
  if (total == 0) return cudaSuccess;
  roi_align3d_backward_kernel<T><<<grid_for(total), kThreads, 0, stream>>>(
      grad_output, rois, total, shape, spatial_scale, sampling_ratio, aligned, grad_input);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_roi_pool3d_forward(const T* input, const T* rois, int64_t num_rois,
                                      const Roi3dShape& shape, T spatial_scale, T* output,
                                      int64_t* argmax, cudaStream_t stream) {
  const int64_t total = num_outputs(num_rois, shape);
  if (total == 0) return cudaSuccess;
  roi_pool3d_forward_kernel<T><<<grid_for(total), kThreads, 0, stream>>>(
      input, rois, total, shape, spatial_scale, output, argmax);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_roi_pool3d_backward(const T* grad_output, const T* rois,
                                       const int64_t* argmax, int64_t num_rois,
                                       const Roi3dShape& shape, T* grad_input,
                                       cudaStream_t stream) {
  const int64_t total = num_outputs(num_rois, shape);
  if (total == 0) return cudaSuccess;
  roi_pool3d_backward_kernel<T><<<grid_for(total), kThreads, 0, stream>>>(
      grad_output, rois, argmax, total, shape, grad_input);
  return cudaGetLastError();
}

#define DEEPEM_INSTANTIATE(T)                                                                  \
  template cudaError_t launch_roi_align3d_forward<T>(const T*, const T*, int64_t,             \
                                                     const Roi3dShape&, T, int64_t, bool, T*, \
                                                     cudaStream_t);                            \
  template cudaError_t launch_roi_align3d_backward<T>(const T*, const T*, int64_t,            \
                                                      const Roi3dShape&, T, int64_t, bool,    \
                                                      T*, cudaStream_t);                       \
  template cudaError_t launch_roi_pool3d_forward<T>(const T*, const T*, int64_t,              \
                                                    const Roi3dShape&, T, T*, int64_t*,        \
                                                    cudaStream_t);                             \
  template cudaError_t launch_roi_pool3d_backward<T>(const T*, const T*, const int64_t*,      \
                                                     int64_t, const Roi3dShape&, T*,           \
                                                     cudaStream_t);
DEEPEM_INSTANTIATE(float)
DEEPEM_INSTANTIATE(double)
#undef DEEPEM_INSTANTIATE

}  // namespace deepem

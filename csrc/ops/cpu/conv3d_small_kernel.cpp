// CPU kernels of conv3d_small and conv3d_small_weight_grad: a 3x3x3, stride-1, padding-1
// convolution of float32 NCDHW volumes with few channels, in AVX2 + FMA registers.
//
// Why: oneDNN runs the narrow detector's full-resolution layers (1 -> 6 and 6 -> 6 channels at
// 32^3 x 8) at 25-45 GFLOP/s on the 2-core AVX2 VM, a quarter of the machine's peak, because its
// kernels block over channels and these layers have almost none. Here the vector lanes run along
// x instead: each output row is computed from a zero-padded copy of the three input planes it
// needs, with a block of output channels x 16 voxels held in registers across all 27 I taps.
// The weight gradient sweeps each plane once per (input channel, dz, dy, output-channel block),
// the three dx taps of a block of output channels accumulating in registers.
//
// Compiled for AVX2 + FMA by function attributes (cpu/avx2.h); the entry (ops/conv3d_small.cpp)
// uses torch's own convolution on a CPU without them.
#include "../conv3d_small.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "avx2.h"

namespace deepem {

#if DEEPEM_AVX2
namespace {

// Rows y0 - 1 .. y0 + rows of the input planes z-1, z, z+1 of one batch item, every channel,
// zero-padded by one voxel in y and x (planes and rows outside the volume are zero), in a ring
// of three slots per channel so that moving to the next z copies one strip, not three: strip
// dz of channel i starts at data + i * 3 * plane + dz_offset[dz], its voxel (y, x) at
// + (y - y0 + 1) * row + x + 1. A whole plane (y0 = 0, rows = H) for small volumes; strips of a
// few rows keep the three planes of a large one in the L2 cache (see the forward's entry).
struct Slab {
  int64_t row, plane;  // W + 2, (rows + 2) * (W + 2)
  std::vector<float> data;
  int64_t dz_offset[3] = {0, 0, 0};
  int64_t held[3][3] = {{-1, -9, -1}, {-1, -9, -1}, {-1, -9, -1}};  // (batch item, z, y0) in each slot

  Slab(int64_t channels, int64_t rows, int64_t W)
      : row(W + 2), plane((rows + 2) * (W + 2)), data(channels * 3 * (rows + 2) * (W + 2) + 16, 0.f) {}

  void fill(const float* volume, int64_t b, int64_t channels, int64_t D, int64_t H, int64_t W, int64_t z,
            int64_t y0 = 0) {
    const int64_t rows = plane / row - 2;
    for (int64_t dz = 0; dz < 3; ++dz) {
      const int64_t zz = z + dz - 1, slot = (zz + 3) % 3;
      dz_offset[dz] = slot * plane;
      if (held[slot][0] == b && held[slot][1] == zz && held[slot][2] == y0) continue;
      held[slot][0] = b;
      held[slot][1] = zz;
      held[slot][2] = y0;
      for (int64_t i = 0; i < channels; ++i) {
        float* dst = data.data() + (i * 3 + slot) * plane;
        if (zz < 0 || zz >= D) {
          std::memset(dst, 0, sizeof(float) * plane);
          continue;
        }
        const float* src = volume + (i * D + zz) * H * W;  // x's borders stay zero: only rows' insides are copied
        for (int64_t r = 0; r < rows + 2; ++r) {
          const int64_t y = y0 - 1 + r;
          if (y >= 0 && y < H)
            std::memcpy(dst + r * row + 1, src + y * W, sizeof(float) * W);
          else
            std::memset(dst + r * row, 0, sizeof(float) * row);
        }
      }
    }
  }
};

// out[o][x .. x + 8 * NC) of one output row for OB output channels; taps[(i * 27 + t) * O + o]
// are the weights; rows = the slab's data + y * row (channel i, plane dz at + i * 3 * plane +
// dz_offset[dz]; tap dx of output x at + x + dx).
template <int OB, int NC, bool MASKED>
DEEPEM_AVX2_FMA void forward_block(const float* rows, const Slab& slab, int64_t I, const float* taps, int64_t O,
                                   const float* bias, bool relu, float* const* out, int64_t x, int64_t n_last) {
  __m256 acc[OB][NC];
  for (int o = 0; o < OB; ++o)
    for (int c = 0; c < NC; ++c) acc[o][c] = _mm256_set1_ps(bias ? bias[o] : 0.f);
  const __m256i mask = lane_mask(n_last);
  for (int64_t i = 0; i < I; ++i) {
#pragma GCC unroll 9  // the 9 (dz, dy) rows unrolled: GCC then keeps 12 accumulators in registers
    for (int t9 = 0; t9 < 9; ++t9) {
      const float* r = rows + i * 3 * slab.plane + slab.dz_offset[t9 / 3] + (t9 % 3) * slab.row + x;
      const float* w = taps + (i * 27 + t9 * 3) * O;
      for (int dx = 0; dx < 3; ++dx, w += O) {
        __m256 v[NC];
        for (int c = 0; c < NC; ++c)
          v[c] = (MASKED && c == NC - 1) ? _mm256_maskload_ps(r + dx + 8 * c, mask) : _mm256_loadu_ps(r + dx + 8 * c);
        for (int o = 0; o < OB; ++o) {
          const __m256 wv = _mm256_broadcast_ss(w + o);
          for (int c = 0; c < NC; ++c) acc[o][c] = _mm256_fmadd_ps(wv, v[c], acc[o][c]);
        }
      }
    }
  }
  for (int o = 0; o < OB; ++o)
    for (int c = 0; c < NC; ++c) {
      const __m256 v = relu ? _mm256_max_ps(_mm256_setzero_ps(), acc[o][c]) : acc[o][c];  // max(0, NaN) = NaN
      if (MASKED && c == NC - 1)
        _mm256_maskstore_ps(out[o] + x + 8 * c, mask, v);
      else
        _mm256_storeu_ps(out[o] + x + 8 * c, v);
    }
}

template <int OB>
DEEPEM_AVX2_FMA void forward_row(const float* rows, const Slab& slab, int64_t I, const float* taps, int64_t O,
                                 const float* bias, bool relu, float* const* out, int64_t W) {
  int64_t x = 0;
  for (; x + 16 <= W; x += 16) forward_block<OB, 2, false>(rows, slab, I, taps, O, bias, relu, out, x, 8);
  if (x + 8 <= W) {
    forward_block<OB, 1, false>(rows, slab, I, taps, O, bias, relu, out, x, 8);
    x += 8;
  }
  if (x < W) forward_block<OB, 1, true>(rows, slab, I, taps, O, bias, relu, out, x, W - x);
}

// Output channels in blocks of at most 6, as even as possible: 6 x 2 accumulators + 2 inputs + 1
// weight = 15 of the 16 vector registers; 12 independent accumulators hide the FMA latency (8
// do not). With the (dz, dy) loop rolled GCC kept them on the stack across it, and blocks of 4
// were faster; unrolled, blocks of 6 run 8 x 6 -> 6 x 32^3 in 6.5 ms on 1 thread against 7.9-8.2
// (blocks of 4): 85% of the core's fp32 peak.
using ForwardRow = void (*)(const float*, const Slab&, int64_t, const float*, int64_t, const float*, bool, float* const*,
                            int64_t);
const ForwardRow kForwardRows[] = {nullptr,        forward_row<1>, forward_row<2>, forward_row<3>,
                                   forward_row<4>, forward_row<5>, forward_row<6>};

// The weight gradient's partial sums of one plane: acc[((o * I + i) * 27 + t)] += sum over the
// plane of grad[o] * (tap t of input channel i), for the OB output channels from o0.
template <int OB, bool MASKED>
DEEPEM_AVX2_FMA inline void weight_grad_taps(const float* r, const float* const* g, int64_t x, __m256i mask,
                                             __m256 (&acc)[OB][3]) {
  __m256 v[3];
  for (int dx = 0; dx < 3; ++dx) v[dx] = MASKED ? _mm256_maskload_ps(r + x + dx, mask) : _mm256_loadu_ps(r + x + dx);
  for (int o = 0; o < OB; ++o) {
    const __m256 gv = MASKED ? _mm256_maskload_ps(g[o] + x, mask) : _mm256_loadu_ps(g[o] + x);
    for (int dx = 0; dx < 3; ++dx) acc[o][dx] = _mm256_fmadd_ps(gv, v[dx], acc[o][dx]);
  }
}

template <int OB>
DEEPEM_AVX2_FMA void weight_grad_plane(const Slab& slab, int64_t I, const float* grad_plane, int64_t channel_stride,
                                       int64_t o0, int64_t H, int64_t W, double* acc_out) {
  const int64_t full = W / 8 * 8;
  const __m256i mask = lane_mask(W - full);
  for (int64_t i = 0; i < I; ++i) {
    for (int t9 = 0; t9 < 9; ++t9) {
      __m256 acc[OB][3];
      for (int o = 0; o < OB; ++o)
        for (int dx = 0; dx < 3; ++dx) acc[o][dx] = _mm256_setzero_ps();
      const float* base = slab.data.data() + i * 3 * slab.plane + slab.dz_offset[t9 / 3] + (t9 % 3) * slab.row;
      for (int64_t y = 0; y < H; ++y) {
        const float* r = base + y * slab.row;
        const float* g[OB];
        for (int o = 0; o < OB; ++o) g[o] = grad_plane + (o0 + o) * channel_stride + y * W;
        int64_t x = 0;
        for (; x < full; x += 8) weight_grad_taps<OB, false>(r, g, x, mask, acc);
        if (x < W) weight_grad_taps<OB, true>(r, g, x, mask, acc);
      }
      for (int o = 0; o < OB; ++o)
        for (int dx = 0; dx < 3; ++dx) acc_out[((o0 + o) * I + i) * 27 + t9 * 3 + dx] += horizontal_sum(acc[o][dx]);
    }
  }
}

// Blocks of at most 4 output channels (4 x 3 accumulators + 3 inputs + 1 gradient = 16 registers).
using WeightGradPlane = void (*)(const Slab&, int64_t, const float*, int64_t, int64_t, int64_t, int64_t, double*);
const WeightGradPlane kWeightGradPlanes[] = {nullptr, weight_grad_plane<1>, weight_grad_plane<2>,
                                             weight_grad_plane<3>, weight_grad_plane<4>};

std::vector<int64_t> channel_blocks(int64_t O, int64_t most) {
  const int64_t n = (O + most - 1) / most;
  std::vector<int64_t> sizes;
  for (int64_t b = 0; b < n; ++b) sizes.push_back(O / n + (b < O % n ? 1 : 0));
  return sizes;
}

}  // namespace

void conv3d_small_forward_cpu_kernel(const float* input, const float* weight, const float* bias, bool relu,
                                     float* output, int64_t B, int64_t I, int64_t O,
                                     int64_t D, int64_t H, int64_t W) {
  // taps[(i * 27 + t) * O + o] = weight[o, i, t]: a tap's output channels side by side
  std::vector<float> taps(I * 27 * O);
  for (int64_t o = 0; o < O; ++o)
    for (int64_t i = 0; i < I; ++i)
      for (int64_t t = 0; t < 27; ++t) taps[(i * 27 + t) * O + o] = weight[(o * I + i) * 27 + t];
  const std::vector<int64_t> blocks = channel_blocks(O, 6);
  // Strips of rows whose three padded planes of every channel fit in 320 KB, so that the rows
  // an output row shares with the next stay in the L2 cache: whole 288 x 384 planes of 6
  // channels (8 MB) ran at 70-100 GFLOP/s on the 2-core AVX2 VM. A detector crop's planes
  // (32 x 32) fit whole. The threads take (batch item, strip) pairs, each all its z.
  const int64_t strip =
      std::min<int64_t>(H, std::max<int64_t>(1, 320 * 1024 / (I * 3 * (W + 2) * int64_t(sizeof(float))) - 2));
  const int64_t strips = (H + strip - 1) / strip;
  at::parallel_for(0, B * strips, 1, [&](int64_t begin, int64_t end) {
    Slab slab(I, strip, W);
    std::vector<float*> out(O);
    for (int64_t p = begin; p < end; ++p) {
      const int64_t b = p / strips, y0 = p % strips * strip, y1 = std::min(H, y0 + strip);
      for (int64_t z = 0; z < D; ++z) {
        slab.fill(input + b * I * D * H * W, b, I, D, H, W, z, y0);
        for (int64_t y = y0; y < y1; ++y) {
          int64_t o0 = 0;
          for (int64_t ob : blocks) {
            for (int64_t o = 0; o < ob; ++o) out[o] = output + (((b * O + o0 + o) * D + z) * H + y) * W;
            kForwardRows[ob](slab.data.data() + (y - y0) * slab.row, slab, I, taps.data() + o0, O,
                             bias ? bias + o0 : nullptr, relu, out.data(), W);
            o0 += ob;
          }
        }
      }
    }
  });
}

void conv3d_small_weight_grad_cpu_kernel(const float* input, const float* grad, float* grad_weight, int64_t B,
                                         int64_t I, int64_t O, int64_t D, int64_t H, int64_t W) {
  const int64_t n_weights = O * I * 27;
  const std::vector<int64_t> blocks = channel_blocks(O, 4);
  const int64_t planes = B * D;
  // one partial sum per thread's chunk of planes, in float64, added up in chunk order
  const int64_t chunks = std::min<int64_t>(planes, std::max<int64_t>(1, at::get_num_threads()));
  std::vector<double> partial(chunks * n_weights, 0.0);
  at::parallel_for(0, chunks, 1, [&](int64_t cb, int64_t ce) {
    Slab slab(I, H, W);
    for (int64_t c = cb; c < ce; ++c) {
      double* acc = partial.data() + c * n_weights;
      for (int64_t p = planes * c / chunks; p < planes * (c + 1) / chunks; ++p) {
        const int64_t b = p / D, z = p % D;
        slab.fill(input + b * I * D * H * W, b, I, D, H, W, z);
        const float* grad_plane = grad + (b * O * D + z) * H * W;  // channel o at + o * D * H * W
        int64_t o0 = 0;
        for (int64_t ob : blocks) {
          kWeightGradPlanes[ob](slab, I, grad_plane, D * H * W, o0, H, W, acc);
          o0 += ob;
        }
      }
    }
  });
  for (int64_t k = 0; k < n_weights; ++k) {
    double s = 0.0;
    for (int64_t c = 0; c < chunks; ++c) s += partial[c * n_weights + k];
    grad_weight[k] = static_cast<float>(s);
  }
}
#else
void conv3d_small_forward_cpu_kernel(const float*, const float*, const float*, bool, float*, int64_t, int64_t,
                                     int64_t, int64_t, int64_t, int64_t) {}
void conv3d_small_weight_grad_cpu_kernel(const float*, const float*, float*, int64_t, int64_t, int64_t, int64_t,
                                         int64_t, int64_t) {}
#endif

}  // namespace deepem

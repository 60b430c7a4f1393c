"""The CPU training convolution of narrow detectors: a 3^3, stride-1, padding-1 float32
convolution with few channels (torch.ops.deepem._conv3d_small) and its weight gradient
(torch.ops.deepem._conv3d_small_weight_grad), in AVX2 + FMA registers along x.

Internal to deepem.model.conv3d (training) and deepem.infer.fused (detection; CPU only, CUDA
takes cuDNN there). On the 2-core AVX2 VM they
run the quarter-width Res18's full-resolution layers 2-4x faster than oneDNN, which blocks over
channels these layers do not have (benchmarks/results/train-network-cpu-2core.txt). A CPU
without AVX2 + FMA gets torch's own convolution from the same ops.
"""
import torch
from torch import Tensor

from .._extension import load

load()

MAX_CHANNELS = 8  # above this oneDNN's channel blocking wins (measured: 32 -> 32 at 8^3 is 2x slower here)


def applies(x: Tensor, weight: Tensor) -> bool:
    """Whether conv3d_small serves this convolution: float32 CPU tensors in NCDHW layout (a
    channels_last_3d run keeps oneDNN's convolution in its layout), a 3^3 kernel (padding 1 by
    the caller's contract), at most MAX_CHANNELS in and out."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and x.dim() == 5 and tuple(weight.shape[2:]) == (3, 3, 3)
            and weight.shape[0] <= MAX_CHANNELS and weight.shape[1] <= MAX_CHANNELS
            and ncdhw(x) and ncdhw(weight))


def ncdhw(t: Tensor) -> bool:
    """Strides exactly those of a contiguous tensor, size-1 axes included (is_contiguous()
    ignores them: a channels_last_3d weight with one output channel would pass)."""
    stride, want = 1, []
    for n in reversed(t.shape):
        want.append(stride)
        stride *= max(n, 1)
    return t.stride() == tuple(reversed(want))


def avx2_kernels() -> bool:
    """Whether the AVX2 + FMA kernels run on this CPU (elsewhere the ops are torch's convolution,
    and a caller choosing them for speed should not)."""
    return load().avx2_kernels()


def conv3d_small(x: Tensor, weight: Tensor, bias=None, relu: bool = False) -> Tensor:
    """F.conv3d(x, weight, bias, padding=1) for weight [O, I, 3, 3, 3], then a ReLU if relu (in
    the same pass over the output)."""
    return torch.ops.deepem._conv3d_small(x, weight, bias, relu)


def conv3d_small_weight_grad(x: Tensor, grad_output: Tensor) -> Tensor:
    """The gradient of conv3d_small(x, weight) with respect to weight, [O, I, 3, 3, 3]."""
    return torch.ops.deepem._conv3d_small_weight_grad(x, grad_output)


@torch.library.register_fake("deepem::_conv3d_small")
def _conv3d_small_fake(x, weight, bias, relu=False):
    torch._check(x.dim() == 5, lambda: "input must be [B, C, D, H, W]")
    return x.new_empty((x.shape[0], weight.shape[0], *x.shape[2:]))


@torch.library.register_fake("deepem::_conv3d_small_weight_grad")
def _conv3d_small_weight_grad_fake(x, grad_output):
    return x.new_empty((grad_output.shape[1], x.shape[1], 3, 3, 3))

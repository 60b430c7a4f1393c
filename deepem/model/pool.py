"""The Res18's 2x2x2 max pooling, on the CPU through deepem's kernel (torch.ops.deepem.
_max_pool3d_2x: the same values and indices as torch's, 10x faster on the narrow detector's
full-resolution activation, 3.7 -> 0.34 ms for 8 x 6 x 32^3 on the 2-core AVX2 VM); the backward
is torch's max_pool3d_with_indices_backward on those indices. Other devices, dtypes, layouts,
odd sides, torch.compile and TorchScript use nn.MaxPool3d itself."""
import torch
from torch import Tensor, nn

from .._extension import load
from ..ops.conv3d_small import ncdhw

load()


class _MaxPool2x(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        out, indices = torch.ops.deepem._max_pool3d_2x(x)
        ctx.save_for_backward(x, indices)
        ctx.mark_non_differentiable(indices)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, indices = ctx.saved_tensors
        return torch.ops.aten.max_pool3d_with_indices_backward(grad, x, [2] * 3, [2] * 3, [0] * 3, [1] * 3, False,
                                                               indices)


@torch.library.register_fake("deepem::_max_pool3d_2x")
def _max_pool3d_2x_fake(x):
    shape = (*x.shape[:2], *(s // 2 for s in x.shape[2:]))
    return x.new_empty(shape), x.new_empty(shape, dtype=torch.long)


class MaxPool3d2x(nn.MaxPool3d):
    """nn.MaxPool3d(2, 2) with the CPU kernel above; cpu_kernels=False keeps torch's."""

    def __init__(self, cpu_kernels: bool = True):
        super().__init__(2, 2)
        self.cpu_kernels = cpu_kernels

    def forward(self, x: Tensor) -> Tensor:
        if (self.cpu_kernels and x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 5
                and all(s % 2 == 0 for s in x.shape[2:]) and ncdhw(x)
                and not torch.compiler.is_compiling() and not torch.jit.is_tracing() and not torch.jit.is_scripting()):
            return _MaxPool2x.apply(x)
        return super().forward(x)

"""A Conv3d whose CPU backward runs as two forward convolutions.

Why: oneDNN's convolution backward is slow for the few channels of a narrow detector. On the
2-core AVX2 VM, the quarter-width Res18's 6-channel 3^3 layer on 8 x 32^3 takes 10 ms forward
and 43-50 ms backward; the same gradients computed as forward convolutions take 25 ms:
    grad_input  = conv3d(grad_out, weight flipped in space, in/out channels swapped),
    grad_weight = conv3d(input padded, as a batch of C_in one-per-channel volumes,
                         with grad_out's batch as the channels and the whole volume as kernel).
Both are the textbook identities of a stride-1 convolution; oneDNN runs them through its well
tuned forward kernels (benchmarks/bench_train.py, benchmarks/results/train-network-cpu-2core.txt).
Layers of at most 8 channels (the full-resolution ones) go further: forward, input gradient and
weight gradient run in deepem's own AVX2 kernels (deepem.ops.conv3d_small), 2-4x oneDNN there.

The results equal oneDNN's backward up to float rounding (tests/test_model_conv3d.py, against
float64). The fast path is taken only where it is measured to help: CPU, float32/64 outside
autocast, stride 1, no dilation or groups, while autograd records; everything else (CUDA,
bf16, inference, TorchScript tracing) is nn.Conv3d itself. Parameters and state_dict keys are
nn.Conv3d's, so checkpoints are the same either way.
"""
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops import conv3d_small as small


class _ConvGradAsForward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias, padding: int) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.has_bias = padding, bias is not None
        if padding == 1 and small.applies(x, weight):
            return small.conv3d_small(x, weight, bias)
        return F.conv3d(x, weight, bias, padding=padding)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        p, k = ctx.padding, weight.shape[2]
        grad_input = grad_weight = grad_bias = None
        narrow = p == 1 and small.applies(x, weight)  # the same choice as forward
        if narrow:
            grad = grad.contiguous()
        if ctx.needs_input_grad[0]:
            flipped = weight.flip(2, 3, 4).transpose(0, 1)
            grad_input = (small.conv3d_small(grad, flipped.contiguous()) if narrow
                          else F.conv3d(grad, flipped, padding=k - 1 - p))
        if narrow and ctx.needs_input_grad[1]:
            grad_weight = small.conv3d_small_weight_grad(x, grad)
        elif ctx.needs_input_grad[1]:
            # grad_weight[o, i] = sum over batch b and voxels n of grad[b, o, n] * x_padded[b, i, n + offset]
            x_padded = F.pad(x, (p,) * 6) if p else x
            grad_weight = F.conv3d(x_padded.transpose(0, 1), grad.transpose(0, 1)).transpose(0, 1)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum((0, 2, 3, 4))
        return grad_input, grad_weight, grad_bias, None


class Conv3d(nn.Conv3d):
    """nn.Conv3d (cubic kernel, stride 1, same padding on every side) with the CPU training
    path above. cpu_kernels=False keeps oneDNN's (the benchmarks' baseline)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0,
                 cpu_kernels: bool = True):
        super().__init__(in_channels, out_channels, kernel_size, padding=padding)
        self.cpu_kernels = cpu_kernels

    def forward(self, x: Tensor) -> Tensor:
        if self.cpu_kernels and _fast_backward_applies(x, self.weight):
            return _ConvGradAsForward.apply(x, self.weight, self.bias, self.padding[0])
        return super().forward(x)


def _fast_backward_applies(x: Tensor, weight: Tensor) -> bool:
    return (torch.is_grad_enabled() and weight.requires_grad and x.device.type == "cpu"
            and x.dtype in (torch.float32, torch.float64) and x.dtype == weight.dtype
            and not torch.is_autocast_enabled("cpu")
            and not torch.jit.is_tracing() and not torch.jit.is_scripting())

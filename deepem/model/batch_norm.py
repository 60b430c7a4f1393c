"""A BatchNorm3d whose CPU training pass runs deepem's batch norm kernels.

Why: torch's CPU batch norm forward takes 1.8 ms on the quarter-width Res18's 6-channel
8 x 32^3 activation (3 ms inside a training step) where one pass of channel sums and one
normalising pass take 0.2 ms (deepem.ops.batch_norm3d; benchmarks/bench_train.py). The path is
taken in training mode on float32 NCDHW CPU tensors with running statistics and a momentum
(Res18's case) of at least MIN_VALUES values, outside autocast and torch.compile; everything
else is nn.BatchNorm3d itself.
The running statistics follow nn.BatchNorm3d's update (momentum, unbiased variance, batches
tracked); parameters, buffers and checkpoints are nn.BatchNorm3d's.
"""
import torch
from torch import Tensor, nn

from ..ops import batch_norm3d as kernels
from ..ops.conv3d_small import ncdhw


MIN_VALUES = 32768  # measured: 8 x 16 x 8^3 (65k values) 0.08 -> 0.02 ms; 8 x 16 x 4^3 no gain


class _BatchNormTrain(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight, bias, eps: float, relu: bool):
        out, mean, invstd, var = kernels.batch_norm3d_train(x, weight, bias, eps, relu)
        ctx.save_for_backward(x, weight, mean, invstd, out if relu else None)
        ctx.mark_non_differentiable(mean, var)
        return out, mean, var

    @staticmethod
    def backward(ctx, grad: Tensor, _mean, _var):
        x, weight, mean, invstd, relu_output = ctx.saved_tensors
        mask = ctx.needs_input_grad[:3]
        grads = kernels.batch_norm3d_train_backward(grad, x, weight, mean, invstd, relu_output, mask)
        return (*grads, None, None)


class BatchNorm3d(nn.BatchNorm3d):
    """nn.BatchNorm3d with the CPU training pass above; cpu_kernels=False keeps torch's.
    relu=True: followed by a ReLU, which the CPU kernels apply in the same passes (the
    activation's own pass forward and its mask pass backward saved)."""

    def __init__(self, num_features: int, cpu_kernels: bool = True, relu: bool = False, **kwargs):
        super().__init__(num_features, **kwargs)
        self.cpu_kernels, self.relu = cpu_kernels, relu

    def extra_repr(self) -> str:
        return super().extra_repr() + (", relu=True" if self.relu else "")

    def forward(self, x: Tensor) -> Tensor:
        if not self._fast_path_applies(x):
            out = super().forward(x)
            return out.relu_() if self.relu else out  # in place: batch norm's backward does not read its output
        out, mean, var = _BatchNormTrain.apply(x, self.weight, self.bias, self.eps, self.relu)
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            self.running_mean.mul_(1 - self.momentum).add_(mean, alpha=self.momentum)
            self.running_var.mul_(1 - self.momentum).add_(var, alpha=self.momentum)
        return out

    def _fast_path_applies(self, x: Tensor) -> bool:
        return (self.cpu_kernels and self.training and self.track_running_stats and self.momentum is not None
                and x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 5 and ncdhw(x)
                and x.numel() >= MIN_VALUES  # below, the autograd.Function's own overhead loses
                and (self.weight is None or self.weight.dtype == torch.float32)
                and not torch.is_autocast_enabled("cpu") and not torch.compiler.is_compiling()
                and not torch.jit.is_tracing() and not torch.jit.is_scripting())

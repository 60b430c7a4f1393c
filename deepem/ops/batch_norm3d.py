"""The CPU training batch norm of narrow detectors: batch statistics and normalisation of
float32 NCDHW volumes (torch.ops.deepem._batch_norm3d_train) and its backward
(torch.ops.deepem._batch_norm3d_train_backward), two passes over the data each in AVX2.

Internal to deepem.model.batch_norm (CPU only). A CPU without AVX2 + FMA gets torch's batch
norm from the same ops.
"""
import torch
from torch import Tensor

from .._extension import load

load()


def batch_norm3d_train(x: Tensor, weight, bias, eps: float, relu: bool = False):
    """(output, mean, invstd, var_unbiased) of training-mode batch norm over (B, D, H, W),
    the output through a ReLU with relu."""
    return torch.ops.deepem._batch_norm3d_train(x, weight, bias, eps, relu)


def batch_norm3d_train_backward(grad_output: Tensor, x: Tensor, weight, mean: Tensor, invstd: Tensor,
                                relu_output=None, output_mask=(True, True, True)):
    """(grad_input, grad_weight, grad_bias); None where output_mask says so. relu_output: the
    forward's output where it had the ReLU (the gradient passes only where it is > 0)."""
    return torch.ops.deepem._batch_norm3d_train_backward(grad_output, x, weight, mean, invstd, relu_output,
                                                         list(output_mask))


@torch.library.register_fake("deepem::_batch_norm3d_train")
def _batch_norm3d_train_fake(x, weight, bias, eps, relu=False):
    c = x.shape[1]
    return x.new_empty(x.shape), x.new_empty(c), x.new_empty(c), x.new_empty(c)


@torch.library.register_fake("deepem::_batch_norm3d_train_backward")
def _batch_norm3d_train_backward_fake(grad_output, x, weight, mean, invstd, relu_output, output_mask):
    c = x.shape[1]
    return (x.new_empty(x.shape) if output_mask[0] else None, x.new_empty(c) if output_mask[1] else None,
            x.new_empty(c) if output_mask[2] else None)

"""3D RoI align and RoI pooling (torchvision's roi_align / roi_pool extended to volumes).

Conventions:
- input is [N, C, D, H, W] (any memory format; channels-last-3d is copied to contiguous).
- rois is a [K, 7] tensor of (batch_index, z1, y1, x1, z2, y2, x2) in input coordinates
  before ``spatial_scale``, or a list of N tensors [K_i, 6] (z1, y1, x1, z2, y2, x2), one per
  scan, as torchvision accepts. batch_index must lie in [0, N) (it is truncated to an integer);
  anything else is an error naming the row.
- Output [K, C, d, h, w] in the input's dtype; float16 and bfloat16 are computed in float32.
- A roi with a NaN or infinite coordinate gives NaN for all its outputs and no gradient.
- Empty rois give an empty output; a roi wholly outside the volume gives 0.
- Gradients flow to ``input`` (not to ``rois``) through torch.autograd and torch.compile.
"""
from typing import List, Sequence, Tuple, Union

import torch
from torch import Tensor

from .._extension import load

load()

Rois = Union[Tensor, Sequence[Tensor]]
Size3 = Union[int, Tuple[int, int, int], List[int]]


def _size3(output_size: Size3) -> List[int]:
    if isinstance(output_size, int):
        return [output_size] * 3
    size = [int(s) for s in output_size]
    if len(size) != 3:
        raise ValueError("output_size must be an int or three ints (d, h, w), got %r" % (output_size,))
    return size


def rois_to_tensor(rois: Rois) -> Tensor:
    """A list of per-scan [K_i, 6] boxes -> one [sum K_i, 7] tensor with the scan index in
    column 0 (a [K, 7] tensor is returned as is)."""
    if isinstance(rois, Tensor):
        return rois
    rois = list(rois)
    if not rois:
        raise ValueError("rois: an empty list has no dtype or device; pass a [0, 7] tensor")
    parts = []
    for i, r in enumerate(rois):
        if not isinstance(r, Tensor) or r.dim() != 2 or r.shape[1] != 6:
            raise ValueError(
                "rois[%d]: each per-scan entry must be a [K, 6] tensor (z1, y1, x1, z2, y2, x2), "
                "got %s" % (i, tuple(r.shape) if isinstance(r, Tensor) else type(r).__name__)
            )
        parts.append(torch.cat([torch.full_like(r[:, :1], i), r], dim=1))
    return torch.cat(parts, dim=0)


def roi_align3d(
    input: Tensor,
    rois: Rois,
    output_size: Size3,
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """RoI align: each of the d*h*w bins of a roi is the mean of a grid of trilinearly
    interpolated samples.

    sampling_ratio > 0 gives that many samples per bin along each axis; <= 0 picks
    ceil(roi_size / bin) per axis for each roi. aligned=True shifts the roi by -0.5 voxel
    (pixel-center model, as torchvision's aligned=True); aligned=False keeps torchvision's
    legacy convention of rois at least one voxel wide. A sample with a coordinate < -1 or
    > size along any axis contributes zero (and still counts in the mean); other samples are
    clamped into the volume. With aligned=True a zero-size roi has no samples and gives 0."""
    return torch.ops.deepem.roi_align3d(
        input, rois_to_tensor(rois), _size3(output_size), float(spatial_scale),
        int(sampling_ratio), bool(aligned)
    )


def roi_pool3d(input: Tensor, rois: Rois, output_size: Size3, spatial_scale: float = 1.0) -> Tensor:
    """RoI max pooling: the roi is rounded to voxels, round(c * spatial_scale), with an
    exclusive max (unlike torchvision's inclusive +1) and at least one voxel per axis, split
    into d*h*w bins (floor/ceil edges) and each bin is its max. Bins outside the volume give 0.
    The gradient goes to the first maximal voxel (z, y, x order); a NaN voxel is the max."""
    return roi_pool3d_with_argmax(input, rois, output_size, spatial_scale)[0]


def roi_pool3d_with_argmax(
    input: Tensor, rois: Rois, output_size: Size3, spatial_scale: float = 1.0
) -> Tuple[Tensor, Tensor]:
    """roi_pool3d and the int64 flat index (z * H * W + y * W + x) of each bin's max in its
    scan, -1 for an empty bin or a non-finite roi."""
    return torch.ops.deepem.roi_pool3d(
        input, rois_to_tensor(rois), _size3(output_size), float(spatial_scale)
    )


# ----------------------------------------------------------------- fake kernels (torch.compile)


def _check_forward(input, rois, output_size):
    torch._check(input.dim() == 5, lambda: "input must be [N, C, D, H, W]")
    torch._check(rois.dim() == 2 and rois.shape[1] == 7, lambda: "rois must be [K, 7]")
    torch._check(len(output_size) == 3, lambda: "output_size must be (d, h, w)")
    return (rois.shape[0], input.shape[1], *output_size)


@torch.library.register_fake("deepem::roi_align3d")
def _roi_align3d_fake(input, rois, output_size, spatial_scale, sampling_ratio, aligned):
    return input.new_empty(_check_forward(input, rois, output_size))


@torch.library.register_fake("deepem::roi_pool3d")
def _roi_pool3d_fake(input, rois, output_size, spatial_scale):
    shape = _check_forward(input, rois, output_size)
    return input.new_empty(shape), input.new_empty(shape, dtype=torch.long)


@torch.library.register_fake("deepem::_roi_align3d_backward")
def _roi_align3d_backward_fake(grad_output, rois, input_shape, spatial_scale, sampling_ratio, aligned):
    return grad_output.new_empty(input_shape)


@torch.library.register_fake("deepem::_roi_pool3d_backward")
def _roi_pool3d_backward_fake(grad_output, rois, argmax, input_shape):
    return grad_output.new_empty(input_shape)


@torch.library.register_fake("deepem::_roi_align3d_emulated")
def _roi_align3d_emulated_fake(input, rois, output_size, spatial_scale, sampling_ratio, aligned, grad_output):
    return input.new_empty(_check_forward(input, rois, output_size)), input.new_empty(input.shape)


@torch.library.register_fake("deepem::_roi_pool3d_emulated")
def _roi_pool3d_emulated_fake(input, rois, output_size, spatial_scale):
    return _roi_pool3d_fake(input, rois, output_size, spatial_scale)


# ----------------------------------------------------------------- autograd


def _align_setup(ctx, inputs, output):
    input, rois, output_size, spatial_scale, sampling_ratio, aligned = inputs
    ctx.save_for_backward(rois)
    ctx.input_shape = list(input.shape)
    ctx.args = (spatial_scale, sampling_ratio, aligned)


def _align_backward(ctx, grad):
    (rois,) = ctx.saved_tensors
    grad_input = torch.ops.deepem._roi_align3d_backward(grad, rois, ctx.input_shape, *ctx.args)
    return grad_input, None, None, None, None, None


def _pool_setup(ctx, inputs, output):
    input, rois, output_size, spatial_scale = inputs
    ctx.save_for_backward(rois, output[1])
    ctx.input_shape = list(input.shape)


def _pool_backward(ctx, grad, grad_argmax):
    rois, argmax = ctx.saved_tensors
    grad_input = torch.ops.deepem._roi_pool3d_backward(grad, rois, argmax, ctx.input_shape)
    return grad_input, None, None, None


torch.library.register_autograd("deepem::roi_align3d", _align_backward, setup_context=_align_setup)
torch.library.register_autograd("deepem::roi_pool3d", _pool_backward, setup_context=_pool_setup)

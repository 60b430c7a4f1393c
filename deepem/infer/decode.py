"""From the stitched network output to candidates and marks, all tensor ops (no per-box loop).

- decode: every anchor whose logit is above a threshold -> float [K, 5] (logit, z, y, x, d)
  in preprocessed voxels (no NMS, no cap): what the EM E-step filters by weak-label windows.
- postprocess: diameter > min_diameter, cube NMS at IoU nms_iou, the best max_marks.
"""
import torch
from torch import Tensor

from ..model.res18 import STRIDE
from ..ops.anchors import DEEPLUNG_SIZES, anchor_grid, decode_boxes3d
from ..ops.boxes import nms_cubes

CANDIDATE_COLUMNS = ("logit", "z", "y", "x", "d")


def check_output(output: Tensor, sizes=DEEPLUNG_SIZES) -> None:
    if not isinstance(output, Tensor) or output.dim() != 5 or output.shape[-1] != 5 \
            or output.shape[-2] != len(sizes):
        shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
        raise ValueError("output must be [D, H, W, %d, 5] (logit, dz, dy, dx, dd per anchor), got %s"
                         % (len(sizes), shape))


def anchors_at(grid, index: Tensor, dtype=torch.float32) -> Tensor:
    """Cube anchors (z, y, x, d) [K, 4] of the flat anchor indices `index` of an AnchorGrid
    (k = ((iz * H + iy) * W + ix) * A + a), without building the whole grid's anchors."""
    d, h, w = grid.feature_size
    a_count = len(grid.shapes)
    if any(len(set(s)) != 1 for s in grid.shapes):
        raise ValueError("decode needs cube anchors, got shapes %s" % (grid.shapes,))
    sizes = torch.tensor([s[0] for s in grid.shapes], dtype=dtype, device=index.device)
    cell, a = index // a_count, index % a_count
    pos = torch.stack([cell // (h * w), (cell // w) % h, cell % w], 1).to(dtype)
    stride = torch.tensor(grid.stride, dtype=dtype, device=index.device)
    offset = torch.tensor(grid.offset, dtype=dtype, device=index.device)
    return torch.cat([offset + stride * pos, sizes[a, None]], 1)


def decode(output: Tensor, threshold: float = -2.0, sizes=DEEPLUNG_SIZES, stride=STRIDE) -> Tensor:
    """Candidates of a whole-scan output [D, H, W, A, 5]: float32 [K, 5] (logit, z, y, x, d)
    in preprocessed voxels for every anchor with logit > threshold (NaN logits never pass),
    in anchor order. Anchors are the whole scan's (centre 1.5 + 4 i, sides `sizes`)."""
    check_output(output, sizes)
    flat = output.reshape(-1, 5)
    index = torch.nonzero(flat[:, 0] > threshold).squeeze(1)
    grid = anchor_grid(output.shape[:3], stride, sizes)
    picked = flat.index_select(0, index).float()
    boxes = decode_boxes3d(picked[:, 1:5].contiguous(), anchors_at(grid, index))
    return torch.cat([picked[:, :1], boxes], 1)


def postprocess(candidates: Tensor, nms_iou: float = 0.1, min_diameter: float = 3.0,
                max_marks=100) -> Tensor:
    """Candidates [K, 5] -> marks [M, 5], best first: d > min_diameter (same units as d),
    greedy NMS of the cubes at IoU > nms_iou (deepem.ops.nms3d), at most max_marks (None: all)."""
    if not isinstance(candidates, Tensor) or candidates.dim() != 2 or candidates.shape[1] != 5:
        shape = tuple(candidates.shape) if isinstance(candidates, Tensor) else type(candidates).__name__
        raise ValueError("candidates must be [K, 5] (logit, z, y, x, d), got %s" % (shape,))
    if max_marks is not None and max_marks < 0:
        raise ValueError("max_marks must be >= 0 or None, got %r" % (max_marks,))
    kept = candidates[candidates[:, 4] > min_diameter]
    order = nms_cubes(kept[:, 1:5], kept[:, 0], nms_iou)
    if max_marks is not None:
        order = order[:max_marks]
    return kept[order]

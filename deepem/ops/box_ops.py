"""IoU and NMS of axis-aligned 3D boxes (z1, y1, x1, z2, y2, x2), exclusive max.

Conventions shared by the ops:
- A box with max < min on an axis has zero volume; its IoU with anything is 0.
- IoU(a, b) > t is evaluated as inter > t * union (no division); an empty union gives IoU 0.
- float16 and bfloat16 are computed in float32, float64 in float64.
"""
import torch
from torch import Tensor

from .._extension import load

load()


def box_iou3d(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise IoU, [N, 6] x [M, 6] -> [N, M] in the boxes' dtype.

    A box with a NaN or infinite coordinate has IoU NaN with every box."""
    return torch.ops.deepem.box_iou3d(boxes1, boxes2)


def nms3d(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression: a box is dropped when its IoU with a kept box of
    higher rank is > iou_threshold (in [0, 1]).

    Returns int64 indices of the kept boxes in decreasing score order (ties: lower index
    first). A box with a NaN or infinite coordinate, or a NaN score, is never kept and never
    suppresses; +-inf scores rank first/last as numbers do."""
    return torch.ops.deepem.nms3d(boxes, scores, float(iou_threshold))


def batched_nms3d(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """NMS done independently per group (`idxs`: an integer group id per box, e.g. the scan
    or the class): boxes of different groups never suppress each other. Cost follows the
    groups' sizes, not the total. Output order as for nms3d, across all groups."""
    return torch.ops.deepem.batched_nms3d(boxes, scores, idxs, float(iou_threshold))


@torch.library.register_fake("deepem::box_iou3d")
def _box_iou3d_fake(boxes1, boxes2):
    torch._check(boxes1.dim() == 2 and boxes1.shape[1] == 6, lambda: "boxes1 must be [N, 6]")
    torch._check(boxes2.dim() == 2 and boxes2.shape[1] == 6, lambda: "boxes2 must be [M, 6]")
    return boxes1.new_empty((boxes1.shape[0], boxes2.shape[0]))


def _kept_indices_fake(boxes):
    # The number of kept boxes depends on the data: an unbacked size for the compiler.
    kept = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((kept,), dtype=torch.long)


@torch.library.register_fake("deepem::nms3d")
def _nms3d_fake(boxes, scores, iou_threshold):
    torch._check(boxes.dim() == 2 and boxes.shape[1] == 6, lambda: "boxes must be [N, 6]")
    return _kept_indices_fake(boxes)


@torch.library.register_fake("deepem::batched_nms3d")
def _batched_nms3d_fake(boxes, scores, idxs, iou_threshold):
    torch._check(boxes.dim() == 2 and boxes.shape[1] == 6, lambda: "boxes must be [N, 6]")
    return _kept_indices_fake(boxes)

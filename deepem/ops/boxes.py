"""Box format conversions. deepem's ops take (z1, y1, x1, z2, y2, x2), exclusive max, in the
(z, y, x) order of the arrays.

- DeepLung cubes: (z, y, x, d), centre and side length.
- MONAI "xyzxyz": (x1, y1, z1, x2, y2, z2).
- MONAI "cccwhd": (x_centre, y_centre, z_centre, x_size, y_size, z_size).

All functions take [..., 4] or [..., 6] tensors and keep dtype and device.
"""
import torch
from torch import Tensor

from .box_ops import nms3d

_XYZ_ZYX = [2, 1, 0, 5, 4, 3]  # swaps x and z in min and max; its own inverse


def _check_width(t: Tensor, width: int, name: str) -> None:
    if not isinstance(t, Tensor) or t.dim() < 1 or t.shape[-1] != width:
        shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
        raise ValueError("%s must have shape [..., %d], got %s" % (name, width, shape))


def cubes_to_boxes(cubes: Tensor) -> Tensor:
    """(z, y, x, d) cubes -> (z1, y1, x1, z2, y2, x2)."""
    _check_width(cubes, 4, "cubes")
    centre, half = cubes[..., :3], cubes[..., 3:4] / 2
    return torch.cat([centre - half, centre + half], dim=-1)


def boxes_to_cubes(boxes: Tensor) -> Tensor:
    """(z1, y1, x1, z2, y2, x2) -> (z, y, x, d), d the mean extent (exact for cubes)."""
    _check_width(boxes, 6, "boxes")
    centre = (boxes[..., :3] + boxes[..., 3:]) / 2
    side = (boxes[..., 3:] - boxes[..., :3]).mean(dim=-1, keepdim=True)
    return torch.cat([centre, side], dim=-1)


def xyzxyz_to_boxes(xyzxyz: Tensor) -> Tensor:
    """MONAI (x1, y1, z1, x2, y2, z2) -> (z1, y1, x1, z2, y2, x2)."""
    _check_width(xyzxyz, 6, "xyzxyz")
    return xyzxyz[..., _XYZ_ZYX]


def boxes_to_xyzxyz(boxes: Tensor) -> Tensor:
    """(z1, y1, x1, z2, y2, x2) -> MONAI (x1, y1, z1, x2, y2, z2)."""
    _check_width(boxes, 6, "boxes")
    return boxes[..., _XYZ_ZYX]


def cccwhd_to_boxes(cccwhd: Tensor) -> Tensor:
    """MONAI (xc, yc, zc, w, h, d) -> (z1, y1, x1, z2, y2, x2); w, h, d are the x, y, z sizes."""
    _check_width(cccwhd, 6, "cccwhd")
    centre, half = cccwhd[..., [2, 1, 0]], cccwhd[..., [5, 4, 3]] / 2
    return torch.cat([centre - half, centre + half], dim=-1)


def boxes_to_cccwhd(boxes: Tensor) -> Tensor:
    """(z1, y1, x1, z2, y2, x2) -> MONAI (xc, yc, zc, w, h, d)."""
    _check_width(boxes, 6, "boxes")
    centre = (boxes[..., [2, 1, 0]] + boxes[..., [5, 4, 3]]) / 2
    size = boxes[..., [5, 4, 3]] - boxes[..., [2, 1, 0]]
    return torch.cat([centre, size], dim=-1)


def nms_cubes(cubes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """NMS of DeepLung cubes (z, y, x, d) at cube IoU `iou_threshold`; see deepem.ops.nms3d."""
    return nms3d(cubes_to_boxes(cubes), scores, iou_threshold)

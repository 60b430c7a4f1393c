"""deepem's 3D detection kernels: torch.ops.deepem.* with CPU and CUDA implementations.

Usable on their own by any detection codebase::

    from deepem.ops import box_iou3d, nms3d, batched_nms3d, boxes
"""
from . import boxes
from .box_ops import batched_nms3d, box_iou3d, nms3d

__all__ = ["box_iou3d", "nms3d", "batched_nms3d", "boxes"]

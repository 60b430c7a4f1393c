"""deepem's 3D detection kernels: torch.ops.deepem.* with CPU and CUDA implementations.

Usable on their own by any detection codebase::

    from deepem.ops import box_iou3d, nms3d, batched_nms3d, boxes
    from deepem.ops import em_posterior, em_map, em_sample, pseudo_boxes
"""
from . import boxes
from .box_ops import batched_nms3d, box_iou3d, nms3d
from .estep import PseudoBoxes, em_map, em_posterior, em_sample, pseudo_boxes

__all__ = [
    "box_iou3d",
    "nms3d",
    "batched_nms3d",
    "boxes",
    "em_posterior",
    "em_map",
    "em_sample",
    "pseudo_boxes",
    "PseudoBoxes",
]

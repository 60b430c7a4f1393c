"""deepem's 3D detection kernels: torch.ops.deepem.* with CPU and CUDA implementations.

Usable on their own by any detection codebase::

    from deepem.ops import box_iou3d, nms3d, batched_nms3d, boxes
    from deepem.ops import roi_align3d, roi_pool3d
"""
from . import boxes
from .box_ops import batched_nms3d, box_iou3d, nms3d
from .roi import roi_align3d, roi_pool3d, roi_pool3d_with_argmax

__all__ = [
    "box_iou3d",
    "nms3d",
    "batched_nms3d",
    "boxes",
    "roi_align3d",
    "roi_pool3d",
    "roi_pool3d_with_argmax",
]

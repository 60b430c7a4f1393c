"""deepem's 3D detection kernels: torch.ops.deepem.* with CPU and CUDA implementations.

Usable on their own by any detection codebase::

    from deepem.ops import box_iou3d, nms3d, batched_nms3d, boxes
    from deepem.ops import anchors3d, encode_boxes3d, decode_boxes3d, label_anchors3d
"""
from . import boxes
from .anchors import (
    AnchorGrid,
    AnchorLabels,
    anchor_grid,
    anchors3d,
    decode_boxes3d,
    encode_boxes3d,
    hard_negatives,
    label_anchors3d,
    pad_boxes,
)
from .box_ops import batched_nms3d, box_iou3d, nms3d

__all__ = [
    "box_iou3d",
    "nms3d",
    "batched_nms3d",
    "boxes",
    "AnchorGrid",
    "AnchorLabels",
    "anchor_grid",
    "anchors3d",
    "encode_boxes3d",
    "decode_boxes3d",
    "label_anchors3d",
    "pad_boxes",
    "hard_negatives",
]

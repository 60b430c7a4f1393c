"""deepem's 3D detection kernels: torch.ops.deepem.* with CPU and CUDA implementations.

Usable on their own by any detection codebase::

    from deepem.ops import box_iou3d, nms3d, batched_nms3d, boxes
    from deepem.ops import em_posterior, em_map, em_sample, pseudo_boxes
    from deepem.ops import anchors3d, encode_boxes3d, decode_boxes3d, label_anchors3d
    from deepem.ops import roi_align3d, roi_pool3d
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
from .estep import PseudoBoxes, em_map, em_posterior, em_sample, pseudo_boxes
from .roi import roi_align3d, roi_pool3d, roi_pool3d_with_argmax

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
    "AnchorGrid",
    "AnchorLabels",
    "anchor_grid",
    "anchors3d",
    "encode_boxes3d",
    "decode_boxes3d",
    "label_anchors3d",
    "pad_boxes",
    "hard_negatives",
    "roi_align3d",
    "roi_pool3d",
    "roi_pool3d_with_argmax",
]

"""DeepLung's detection loss, with the labelling done by deepem.ops on the training device.

Per batch of crops: label the anchors (label_anchors3d: one positive per box, sampled
negatives below IoU 0.02, optionally none inside the EM weak z bands), take the
`num_hard * batch` highest-scoring negatives of the whole batch (hard_negatives), then
    total = 0.5 BCE(positives) + 0.5 BCE(hard negatives) + sum of smooth-L1(dz, dy, dx, dd)
over the positives (without positives: 0.5 BCE(hard negatives), as DeepLung). Optional
per-box weights (the EM posterior) scale each positive's BCE and regression terms; terms are
averaged over the number of positives, so weights below 1 shrink uncertain boxes' pull.
Optional per-box regression weights scale the regression terms alone (0: a box that teaches
classification only, e.g. an EM pseudo box whose size and centre are the detector's guess).
"""
from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops import anchor_grid, hard_negatives, label_anchors3d, pad_boxes
from ..ops.anchors import DEEPLUNG_SIZES
from ..ops.boxes import cubes_to_boxes
from .res18 import STRIDE

REGRESSION_TERMS = ("reg_z", "reg_y", "reg_x", "reg_d")


@dataclass
class LossResult:
    total: Tensor  # the scalar to backpropagate
    parts: dict  # floats for logging: cls_pos, cls_neg, reg_*, pos_acc, neg_acc, num_pos, num_neg


class DetectionLoss(nn.Module):
    """output [B, D, H, W, A, 5] (Res18's), boxes: per crop a [G_b, 4] tensor of cubes
    (z, y, x, d) in crop voxels; weights, reg_weights: per crop [G_b] or None; neg_exclude_z: per
    crop an [E_b, 2] tensor of z bands (crop voxels) where no negative is taken, or None."""

    def __init__(self, sizes: Sequence[float] = DEEPLUNG_SIZES, stride: int = STRIDE,
                 pos_threshold: float = 0.5, neg_threshold: float = 0.02, num_neg: int = 800,
                 num_hard: int = 2):
        super().__init__()
        self.sizes, self.stride = tuple(sizes), stride
        self.pos_threshold, self.neg_threshold = pos_threshold, neg_threshold
        self.num_neg, self.num_hard = num_neg, num_hard

    def forward(self, output: Tensor, boxes: List[Tensor], weights: Optional[List[Tensor]] = None,
                neg_exclude_z: Optional[List[Tensor]] = None, seed: int = 0,
                reg_weights: Optional[List[Tensor]] = None) -> LossResult:
        if output.dim() != 6 or output.shape[-1] != 5 or output.shape[-2] != len(self.sizes):
            raise ValueError("DetectionLoss: output must be [B, D, H, W, %d, 5], got %s"
                             % (len(self.sizes), tuple(output.shape)))
        batch = output.shape[0]
        if len(boxes) != batch:
            raise ValueError("DetectionLoss: %d box lists for a batch of %d crops" % (len(boxes), batch))
        device = output.device
        out = output.float().reshape(batch, -1, 5)
        grid = anchor_grid(output.shape[1:4], self.stride, self.sizes)
        gt, num_gt = pad_boxes([cubes_to_boxes(b.to(device, torch.float32).reshape(-1, 4)) for b in boxes])
        exclude = None
        if neg_exclude_z is not None:
            exclude = _pad_bands([z.to(device, torch.float32).reshape(-1, 2) for z in neg_exclude_z])
        lab = label_anchors3d(gt, grid, num_gt=num_gt, pos_threshold=self.pos_threshold,
                              neg_threshold=self.neg_threshold, num_neg=self.num_neg, seed=seed,
                              neg_exclude_z=exclude)
        logits = out[..., 0]
        crop, box = (lab.pos_anchor >= 0).nonzero(as_tuple=True)
        anchor = lab.pos_anchor[crop, box]
        pos_logit, pos_pred = logits[crop, anchor], out[crop, anchor, 1:]
        pos_target = lab.pos_targets[crop, box].float()
        w = _per_box(weights, gt, crop, box, pos_logit)
        w_reg = w if reg_weights is None else w * _per_box(reg_weights, gt, crop, box, pos_logit)
        neg_logit = logits[hard_negatives(logits, lab.labels, self.num_hard * batch)]

        cls_neg = F.binary_cross_entropy_with_logits(neg_logit, torch.zeros_like(neg_logit)) \
            if neg_logit.numel() else out.sum() * 0
        n_pos = pos_logit.numel()
        if n_pos:
            cls_pos = (w * F.binary_cross_entropy_with_logits(pos_logit, torch.ones_like(pos_logit),
                                                              reduction="none")).sum() / n_pos
            reg = [(w_reg * F.smooth_l1_loss(pos_pred[:, k], pos_target[:, k], reduction="none")).sum() / n_pos
                   for k in range(4)]
            total = 0.5 * cls_pos + 0.5 * cls_neg + sum(reg)
        else:
            cls_pos, reg = out.sum() * 0, [out.sum() * 0] * 4
            total = 0.5 * cls_neg
        with torch.no_grad():
            parts = {"cls_pos": float(cls_pos), "cls_neg": float(cls_neg),
                     **{name: float(r) for name, r in zip(REGRESSION_TERMS, reg)},
                     "pos_acc": float((pos_logit >= 0).float().mean()) if n_pos else float("nan"),
                     "neg_acc": float((neg_logit < 0).float().mean()) if neg_logit.numel() else float("nan"),
                     "num_pos": n_pos, "num_neg": int(neg_logit.numel())}
        return LossResult(total, parts)


def _per_box(values, gt, crop, box, like):
    """Per-crop [G_b] values -> the positives' values (ones when `values` is None)."""
    if values is None:
        return torch.ones_like(like)
    pad = torch.zeros(gt.shape[:2], device=like.device)
    for i, v in enumerate(values):
        pad[i, : len(v)] = v.to(like.device, torch.float32)
    return pad[crop, box]


def _pad_bands(bands: List[Tensor]):
    """Per-crop [E_b, 2] z bands -> [B, max E_b, 2] padded with NaN (unused rows)."""
    e = max(1, max(int(b.shape[0]) for b in bands))
    out = bands[0].new_full((len(bands), e, 2), float("nan"))
    for i, b in enumerate(bands):
        out[i, : b.shape[0]] = b
    return out

"""3D anchors, box coding and anchor labelling (DeepLung / DeepEM conventions by default).

Anchor grid: for a feature map (D, H, W) of stride s, the anchors of cell (iz, iy, ix) are
centred at offset + s * i on each axis (offset defaults to (s - 1) / 2, DeepLung's 1.5 + 4i for
s = 4) and have the extents of each anchor shape (d, h, w): cubes of side 5, 10, 20 by default.
Anchor k = ((iz * H + iy) * W + ix) * A + a, the layout of the network output (D, H, W, A).

Box coding, with anchors and boxes in one of two forms (the last dim says which):
- cube form [..., 4], (z, y, x, d): t = ((z - za) / da, (y - ya) / da, (x - xa) / da, log(d / da));
- box form [..., 6], (z1, y1, x1, z2, y2, x2): per axis (c - ca) / sa and log(s / sa).
Weights multiply the deltas when encoding and divide them when decoding; decoding clamps the
log terms to <= log_clamp (torchvision's log(1000 / 16) by default, None for no clamp).
"""
import math
from typing import NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .._extension import load

load()

DEEPLUNG_SIZES = (5.0, 10.0, 20.0)
DEFAULT_LOG_CLAMP = math.log(1000.0 / 16)

Triple = Union[float, Sequence[float]]


def _triple(value: Triple, name: str) -> Tuple[float, float, float]:
    if isinstance(value, (int, float)):
        return (float(value),) * 3
    values = tuple(float(v) for v in value)
    if len(values) != 3:
        raise ValueError("%s must be a number or 3 numbers (z, y, x), got %r" % (name, value))
    return values


def _shapes(sizes) -> Tuple[Tuple[float, float, float], ...]:
    """Anchor sizes -> (d, h, w) shapes: a number is a cube, a triple an anisotropic shape."""
    shapes = tuple(_triple(s, "anchor size") for s in sizes)
    if not shapes:
        raise ValueError("sizes must hold at least one anchor size")
    return shapes


class AnchorGrid(NamedTuple):
    """The anchors of one feature map; see the module docstring."""

    feature_size: Tuple[int, int, int]
    stride: Tuple[float, float, float]
    offset: Tuple[float, float, float]
    shapes: Tuple[Tuple[float, float, float], ...]

    @property
    def num_anchors(self) -> int:
        d, h, w = self.feature_size
        return d * h * w * len(self.shapes)

    def flat_shapes(self) -> list:
        return [e for shape in self.shapes for e in shape]

    def anchors(self, *, cubes: bool = True, device=None, dtype=torch.float32) -> Tensor:
        return anchors3d(self.feature_size, self.stride, self.shapes, self.offset, cubes=cubes,
                         device=device, dtype=dtype)


def anchor_grid(feature_size: Sequence[int], stride: Triple = 4, sizes=DEEPLUNG_SIZES,
                offset: Optional[Triple] = None) -> AnchorGrid:
    """An AnchorGrid; `sizes` holds numbers (cubes) or (d, h, w) triples, `offset` defaults to
    (stride - 1) / 2 per axis."""
    fs = tuple(int(s) for s in feature_size)
    if len(fs) != 3:
        raise ValueError("feature_size must hold 3 ints (D, H, W), got %r" % (feature_size,))
    st = _triple(stride, "stride")
    off = tuple((s - 1) / 2 for s in st) if offset is None else _triple(offset, "offset")
    return AnchorGrid(fs, st, off, _shapes(sizes))


def anchors3d(feature_size: Sequence[int], stride: Triple = 4, sizes=DEEPLUNG_SIZES,
              offset: Optional[Triple] = None, *, cubes: bool = True, device=None,
              dtype=torch.float32) -> Tensor:
    """All anchors of a feature map, shape (D, H, W, A, 4) as cubes (z, y, x, d) or, with
    cubes=False, (D, H, W, A, 6) as boxes (z1, y1, x1, z2, y2, x2). Anisotropic shapes
    (sizes given as (d, h, w)) need cubes=False."""
    g = anchor_grid(feature_size, stride, sizes, offset)
    shapes = torch.tensor(g.shapes, dtype=dtype, device=device)
    return torch.ops.deepem.anchors3d(shapes, list(g.feature_size), list(g.stride),
                                      list(g.offset), bool(cubes))


def encode_boxes3d(boxes: Tensor, anchors: Tensor,
                   weights: Optional[Sequence[float]] = None) -> Tensor:
    """Deltas of `boxes` relative to `anchors` (both [..., 4] cubes or [..., 6] boxes). The
    rows of `boxes` must be a multiple of the rows of `anchors`: anchor r % K codes row r, so
    anchors (D, H, W, A, 4) code outputs (B, D, H, W, A, 4)."""
    return torch.ops.deepem.encode_boxes3d(boxes, anchors, _weights(weights))


def decode_boxes3d(deltas: Tensor, anchors: Tensor, weights: Optional[Sequence[float]] = None,
                   log_clamp: Optional[float] = DEFAULT_LOG_CLAMP) -> Tensor:
    """Inverse of encode_boxes3d (log terms clamped to <= log_clamp before exp)."""
    clamp = None if log_clamp is None else float(log_clamp)
    return torch.ops.deepem.decode_boxes3d(deltas, anchors, _weights(weights), clamp)


def _weights(weights):
    return None if weights is None else [float(w) for w in weights]


class AnchorLabels(NamedTuple):
    """Output of label_anchors3d for B crops, G boxes per crop and K anchors."""

    labels: Tensor  # int8 [B, K]: 1 positive, 0 negative (sampled), -1 ignore
    matched_iou: Tensor  # [B, K] best IoU with a GT of the crop (0 when none overlaps)
    matched_gt: Tensor  # int64 [B, K] that GT (-1 when none; ties: lower index)
    pos_anchor: Tensor  # int64 [B, G] the positive anchor of each GT (-1: none)
    pos_targets: Tensor  # [B, G, 4 or 6] its regression target (0 where pos_anchor is -1)


def label_anchors3d(gt_boxes: Tensor, grid: AnchorGrid, *, num_gt: Optional[Tensor] = None,
                    pos_threshold: float = 0.5, neg_threshold: float = 0.02,
                    num_neg: Optional[int] = 800, seed: int = 0,
                    neg_exclude_z: Optional[Tensor] = None, cube_targets: bool = True,
                    weights: Optional[Sequence[float]] = None) -> AnchorLabels:
    """Training targets of a batch of crops (DeepLung's rules).

    gt_boxes [B, G, 6] (z1, y1, x1, z2, y2, x2) in crop voxels, padded; crop b uses its first
    num_gt[b] rows (all G without num_gt). A GT row takes part only when finite with positive
    extents (NaN rows are padding).

    - Negative: best IoU with the crop's GTs < neg_threshold and the anchor centre's z outside
      every band [z_lo, z_hi] of neg_exclude_z [B, E, 2] (NaN rows unused; the EM M-step's weak
      slices). Then num_neg of them per crop are kept at random (None keeps all); the others
      become ignore.
    - Positive: exactly one anchor per GT, drawn uniformly among the anchors with IoU >=
      pos_threshold to it; with none, the cell nearest the GT centre with the log-closest
      shape. A GT whose centre lies outside the grid and has no candidate gets no positive.
    - Everything else is ignored.

    Random choices come from a counter-based generator keyed by (seed, crop, GT, anchor): the
    result depends on the seed only, identical on CPU and CUDA. Targets are encode_boxes3d of
    the GT against its positive anchor, cube form (the GT's mean extent as d) by default or
    box form with cube_targets=False.
    """
    if not isinstance(grid, AnchorGrid):
        raise TypeError("grid must be an AnchorGrid (deepem.ops.anchor_grid(...)), got %s"
                        % type(grid).__name__)
    return AnchorLabels(*torch.ops.deepem.label_anchors3d(
        gt_boxes, num_gt, neg_exclude_z, list(grid.feature_size), list(grid.stride),
        list(grid.offset), grid.flat_shapes(), float(pos_threshold), float(neg_threshold),
        -1 if num_neg is None else int(num_neg), _seed(seed), bool(cube_targets),
        _weights(weights)))


def _seed(seed: int) -> int:
    """Any int -> a signed 64-bit seed (the kernels use its 64 bits)."""
    seed = int(seed) & 0xFFFFFFFFFFFFFFFF
    return seed - (1 << 64) if seed >= 1 << 63 else seed


def pad_boxes(boxes_per_crop: Sequence[Tensor]) -> Tuple[Tensor, Tensor]:
    """A list of [G_b, 6] tensors -> (gt_boxes [B, max G_b, 6] padded with NaN, num_gt [B])."""
    if len(boxes_per_crop) == 0:
        raise ValueError("boxes_per_crop must hold at least one crop")
    first = boxes_per_crop[0]
    g = max(int(b.shape[0]) for b in boxes_per_crop)
    out = first.new_full((len(boxes_per_crop), g, 6), float("nan"))
    for i, b in enumerate(boxes_per_crop):
        out[i, : b.shape[0]] = b
    counts = torch.tensor([b.shape[0] for b in boxes_per_crop], dtype=torch.long,
                          device=first.device)
    return out, counts


def hard_negatives(logits: Tensor, labels: Tensor, num: int, per_crop: bool = False) -> Tensor:
    """Bool mask [B, K] of the `num` negatives (labels == 0) with the highest logits: over the
    whole batch (DeepLung's loss: num = hard negatives per crop x batch size) or, with
    per_crop=True, `num` per crop. Fewer when there are fewer negatives."""
    if logits.shape != labels.shape or logits.dim() != 2:
        raise ValueError("logits and labels must both have shape [B, K], got %s and %s"
                         % (tuple(logits.shape), tuple(labels.shape)))
    if num < 0:
        raise ValueError("num must be >= 0, got %d" % num)
    negative = labels == 0
    scores = logits.detach().float().masked_fill(~negative, -math.inf)
    flat = scores if per_crop else scores.reshape(1, -1)
    k = min(int(num), flat.shape[1])
    mask = torch.zeros_like(flat, dtype=torch.bool)
    if k > 0:
        mask.scatter_(1, flat.topk(k, dim=1).indices, True)
    return mask.reshape(labels.shape) & negative


@torch.library.register_fake("deepem::anchors3d")
def _anchors3d_fake(anchor_shapes, feature_size, stride, offset, cubes):
    torch._check(anchor_shapes.dim() == 2 and anchor_shapes.shape[1] == 3,
                 lambda: "anchor_shapes must be [A, 3]")
    return anchor_shapes.new_empty((*feature_size, anchor_shapes.shape[0], 4 if cubes else 6))


@torch.library.register_fake("deepem::encode_boxes3d")
def _encode_boxes3d_fake(boxes, anchors, weights):
    torch._check(boxes.shape[-1] in (4, 6), lambda: "boxes must be [..., 4] or [..., 6]")
    return boxes.new_empty(boxes.shape)


@torch.library.register_fake("deepem::decode_boxes3d")
def _decode_boxes3d_fake(deltas, anchors, weights, log_clamp):
    torch._check(deltas.shape[-1] in (4, 6), lambda: "deltas must be [..., 4] or [..., 6]")
    return deltas.new_empty(deltas.shape)


def _label_fake(gt_boxes, num_gt, neg_exclude_z, feature_size, stride, offset, anchor_shapes,
                pos_threshold, neg_threshold, num_neg, seed, cube_targets, weights):
    torch._check(gt_boxes.dim() == 3 and gt_boxes.shape[2] == 6,
                 lambda: "gt_boxes must be [B, G, 6]")
    b, g = gt_boxes.shape[0], gt_boxes.shape[1]
    k = feature_size[0] * feature_size[1] * feature_size[2] * (len(anchor_shapes) // 3)
    return (gt_boxes.new_empty((b, k), dtype=torch.int8), gt_boxes.new_empty((b, k)),
            gt_boxes.new_empty((b, k), dtype=torch.long),
            gt_boxes.new_empty((b, g), dtype=torch.long),
            gt_boxes.new_empty((b, g, 4 if cube_targets else 6)))


torch.library.register_fake("deepem::label_anchors3d")(_label_fake)
torch.library.register_fake("deepem::_label_anchors3d_emulated")(_label_fake)

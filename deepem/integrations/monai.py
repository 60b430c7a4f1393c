"""MONAI's 3D box IoU and NMS on deepem's kernels: MONAI's signatures and MONAI's results.

    import deepem.integrations.monai as dm

    keep = dm.batched_nms(boxes, scores, labels, 0.22)   # as monai.data.box_utils.batched_nms
    dm.use_deepem(detector)                              # one RetinaNetDetector (or BoxSelector, Matcher)
    with dm.patch_monai():                               # everything in MONAI that calls them
        detector(images)

`box_iou`, `non_max_suppression` and `batched_nms` take what MONAI's functions of the same name
take and return what they return (checked against MONAI 1.6.1 by tests/test_integrations_monai.py
and by MONAI's own detection tests, see scripts/monai_tests.sh):

- Boxes in MONAI's StandardMode, (x1, y1, z1, x2, y2, z2). IoU and NMS do not depend on which
  spatial axis is which, so the boxes go to deepem's kernels (written for (z1, y1, x1, z2, y2,
  x2)) without a column swap; the extents are multiplied in MONAI's order, x, y, z.
- numpy arrays, tensors and MetaTensors in; the same container and dtype out (IoU: the boxes'
  float dtype, float32 for integer boxes; NMS: int64 indices). float16/bfloat16/float64/integer
  boxes are computed in float32 as MONAI does; IoU is `inter / (union + eps)` with
  eps = torch.finfo(float32).eps. Invalid boxes (max < min, NaN or infinite volume) raise
  MONAI's ValueError.
- box_iou equals MONAI's bit for bit on the CPU: the kernel's inter and union are MONAI's
  float32 operations in MONAI's order, and for a union >= 4 the `+ eps` does not change a
  float32; pairs of boxes that are both of volume < 8 are computed by MONAI's own formula.
- NMS keeps a box while its IoU with every kept box is <= nms_thresh, compared as MONAI does it
  (the IoU rounded to the boxes' dtype, then `<=` against the Python float); boxes are taken in
  MONAI's order (a stable descending sort of the scores, cast to the boxes' dtype); at most
  `max_proposals` are kept when it is >= 1. batched_nms is MONAI's: float32 boxes shifted by
  label * (max coordinate + 1), then one NMS.
- How the NMS stays exact: the kernel runs twice, at thresholds just below and just above
  MONAI's decision boundary (by a margin that bounds the float32 rounding and the eps). Every
  decision that differs between the two is a pair within that margin of the threshold; where
  the two keep lists agree, MONAI's agrees with them. Where they differ, the first differing box
  is decided with MONAI's own arithmetic and the kernel goes on from there (`CALLS['restarts']`);
  after 16 such restarts the rest is finished by an exact greedy loop. With max_proposals, NMS
  runs on a prefix of the sorted boxes that is grown until it keeps max_proposals (a greedy
  pick depends only on the boxes before it), as MONAI's loop stops there too.
- RetinaNetDetector's post-processing (use_deepem, patch_monai) decodes the regressions of the
  anchors the box selector keeps, not of every anchor: MONAI's detections, bit for bit, at a
  fraction of the time (MONAI decodes 5.4 million anchors per window of its lung nodule bundle).
- Anything deepem has no kernel for goes to MONAI's own function: 2D boxes ([N, 4]), an overlap
  metric other than IoU (e.g. box_giou), malformed shapes (MONAI raises its own error).

`CALLS` counts what ran where: 'box_iou' / 'non_max_suppression' / 'batched_nms' (calls served
by deepem's kernels), 'kernel' (kernel launches), 'fallback' (calls handed to MONAI's own
function; 'fallback box_iou (not [N, 6])', 'fallback non_max_suppression (metric)' etc. by
function and reason), 'restarts' and 'greedy_finish' (see above), 'postprocess_detections'.

Importing this module imports monai; `import deepem` and `import deepem.ops` never do.
"""
from __future__ import annotations

import functools
import math
import sys
import threading
import types
import warnings
from collections import Counter

import numpy as np
import torch

try:
    from monai.data import box_utils as _box_utils
    from monai.utils import convert_data_type, convert_to_dst_type
    from monai.apps.detection.utils.box_selector import BoxSelector
    from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
except ImportError as e:  # pragma: no cover - exercised only without monai
    raise ImportError("deepem.integrations.monai needs MONAI (`pip install monai`): %s" % e) from e

from deepem.ops import box_iou3d, nms3d

__all__ = [
    "CALLS",
    "DeepEMBoxSelector",
    "batched_nms",
    "box_iou",
    "non_max_suppression",
    "patch_monai",
    "postprocess_detections",
    "unpatch_monai",
    "use_deepem",
]

# MONAI's own functions, taken before anything is patched: the fallbacks and the reference.
MONAI_FUNCTIONS = {
    "box_iou": _box_utils.box_iou,
    "non_max_suppression": _box_utils.non_max_suppression,
    "batched_nms": _box_utils.batched_nms,
}
MONAI_POSTPROCESS = RetinaNetDetector.postprocess_detections

CALLS: Counter = Counter()

_EPS = float(torch.finfo(torch.float32).eps)  # MONAI's union + eps
_U = 2.0 ** -24  # float32 unit roundoff
_SMALL_VOLUME = 8.0  # a pair with a volume >= this has a union >= 4, where + eps is a no-op
_MAX_RESTARTS = 16
_PAIRS_PER_CHUNK = 4_000_000


# ---------------------------------------------------------------------------------- helpers

def _plain(t: torch.Tensor) -> torch.Tensor:
    return t if type(t) is torch.Tensor else t.as_subclass(torch.Tensor)


def _is_3d(boxes) -> bool:
    shape = getattr(boxes, "shape", None)
    return shape is not None and len(shape) == 2 and shape[1] == 6


def _is_iou(metric) -> bool:
    return metric is box_iou or metric is MONAI_FUNCTIONS["box_iou"]


def _monai_metric(metric):
    """The metric to hand to MONAI's own function (ours would count every call as a fallback)."""
    return MONAI_FUNCTIONS["box_iou"] if metric is box_iou else metric


def _fallback(name, why, *args):
    CALLS["fallback"] += 1
    CALLS["fallback %s (%s)" % (name, why)] += 1
    return MONAI_FUNCTIONS[name](*args)


def _validated_volumes(b: torch.Tensor) -> torch.Tensor:
    """MONAI's box_area on float32 boxes, with its checks and messages. (A rounded difference
    has the sign of the exact one, so extent < 0 is MONAI's max < min test; the volume is
    MONAI's product in its order, up to the sign of a zero.)"""
    ext = b[:, 3:] - b[:, :3]
    if bool((ext < 0).any()):
        raise ValueError("Given boxes has invalid values. The box size must be non-negative.")
    vol = ext[:, 0] * ext[:, 1] * ext[:, 2]
    if not bool(torch.isfinite(vol).all()):
        raise ValueError("Box area is NaN or Inf.")
    return vol


def _float32(boxes: torch.Tensor) -> torch.Tensor:
    return _plain(boxes).to(torch.float32).contiguous()


def _monai_iou_pairs(a, b, va, vb):
    """MONAI's float32 IoU of the pairs (a[k], b[k]), its operations in its order."""
    lt = torch.max(a[:, :3], b[:, :3])
    rb = torch.min(a[:, 3:], b[:, 3:])
    inter = torch.prod((rb - lt + 0.0).clamp(min=0), dim=-1)
    union = va + vb - inter
    return inter / (union + _EPS)


def _iou32(b1: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
    """MONAI's float32 IoU matrix of two float32 box sets, on the kernel."""
    v1, v2 = _validated_volumes(b1), _validated_volumes(b2)
    out = box_iou3d(b1, b2)
    CALLS["kernel"] += 1
    rows = torch.nonzero(v1 < _SMALL_VOLUME).flatten()
    if rows.numel():
        cols = torch.nonzero(v2 < _SMALL_VOLUME).flatten()
        if cols.numel():  # unions that may be < 4: MONAI's formula, + eps included
            small = MONAI_FUNCTIONS["box_iou"](b1[rows], b2[cols])
            out[rows[:, None], cols] = small
    return out


# ---------------------------------------------------------------------------------- box_iou

def box_iou(boxes1, boxes2):
    """monai.data.box_utils.box_iou on deepem's box_iou3d kernel (see the module notes)."""
    if not (_is_3d(boxes1) and _is_3d(boxes2)):
        return _fallback("box_iou", "not [N, 6]", boxes1, boxes2)
    if not isinstance(boxes1, type(boxes2)):
        warnings.warn(f"boxes1 is {type(boxes1)}, while boxes2 is {type(boxes2)}. The result will be {type(boxes1)}.")
    b1, *_ = convert_data_type(boxes1, torch.Tensor)
    b2, *_ = convert_data_type(boxes2, torch.Tensor)
    box_dtype = b1.dtype if b1.dtype.is_floating_point else torch.float32
    iou = _iou32(_float32(b1), _float32(b2)).to(box_dtype)
    CALLS["box_iou"] += 1
    out, *_ = convert_to_dst_type(src=iou, dst=boxes1, dtype=box_dtype)
    return out


# ---------------------------------------------------------------------------------- NMS

@functools.lru_cache(maxsize=256)
def _decision_threshold(iou_dtype: torch.dtype, nms_thresh: float):
    """The float32 IoU tau above which MONAI suppresses: MONAI keeps while
    `iou.to(iou_dtype) <= nms_thresh`, a predicate monotone in the float32 iou, so it is
    `iou <= tau`. None: even IoU 0 suppresses (nms_thresh < 0 or NaN); inf: nothing does."""
    def keeps(values):
        return (values.to(iou_dtype) <= nms_thresh).tolist()

    k0, k1 = keeps(torch.tensor([0.0, 1.0]))
    if not k0:
        return None
    if k1:
        return math.inf
    lo, hi = 0, int(torch.tensor(1.0).view(torch.int32))  # bit patterns: keeps(lo), not keeps(hi)
    while hi - lo > 1:
        step = max(1, (hi - lo) // 4096)
        cand = torch.arange(lo, hi, step, dtype=torch.int32)
        last = max(i for i, k in enumerate(keeps(cand.view(torch.float32))) if k)
        lo, hi = int(cand[last]), (int(cand[last + 1]) if last + 1 < len(cand) else hi)
    return float(torch.tensor(lo, dtype=torch.int32).view(torch.float32))


def _suppressed(a, va, b, vb, tau, lo, hi):
    """For each box of b: does MONAI's IoU with any box of a exceed tau? Kernel IoU, with the
    pairs inside (lo, hi] decided by MONAI's own arithmetic."""
    out = torch.zeros(b.shape[0], dtype=torch.bool, device=b.device)
    if a.shape[0] == 0 or b.shape[0] == 0:
        return out
    chunk = max(1, _PAIRS_PER_CHUNK // b.shape[0])
    for s in range(0, a.shape[0], chunk):
        r = box_iou3d(a[s:s + chunk], b)
        CALLS["kernel"] += 1
        sure = r > hi
        ii, jj = torch.nonzero((r > lo) & ~sure, as_tuple=True)
        if ii.numel():
            hit = _monai_iou_pairs(a[s + ii], b[jj], va[s + ii], vb[jj]) > tau
            sure[ii[hit], jj[hit]] = True
        out |= sure.any(0)
    return out


def _first_difference(k_lo, k_hi):
    """Two ascending keep lists: the first index where membership differs, and the common
    kept prefix before it."""
    m = min(k_lo.numel(), k_hi.numel())
    neq = torch.nonzero(k_lo[:m] != k_hi[:m]).flatten()
    if neq.numel():
        p = int(neq[0])
        d = min(int(k_lo[p]), int(k_hi[p]))
    else:
        p = m
        d = int(k_lo[m]) if k_lo.numel() > m else int(k_hi[m])
    return d, k_lo[:p]


def _exact_nms(b, vol, tau, limit):
    """Positions kept by MONAI's greedy loop over float32 boxes b, already in MONAI's order.

    With a limit, the loop's first `limit` picks depend only on the boxes up to the last of
    them: NMS runs on a prefix (4 * limit boxes, then 4 times more) until it keeps `limit`."""
    n = b.shape[0]
    if limit is None or 4 * limit >= n:
        return _exact_nms_all(b, vol, tau, limit)
    size = 4 * limit
    while True:
        keep = _exact_nms_all(b[:size], vol[:size], tau, limit)
        if keep.numel() >= limit or size >= n:
            return keep
        size = min(n, 4 * size)


def _exact_nms_all(b, vol, tau, limit):
    n, dev = b.shape[0], b.device
    positive = vol[vol > 0]
    if positive.numel() == 0:  # no box has volume: no intersection, no suppression (tau >= 0)
        return torch.arange(n, device=dev)
    delta = 32 * _U + _EPS / float(positive.min())
    lo = max(0.0, tau * (1 - delta))
    hi = min(1.0, tau * (1 + delta) + 1e-30)
    zeros = torch.zeros(n, dtype=b.dtype, device=dev)  # equal scores: the kernel keeps b's order
    alive = torch.arange(n, device=dev)
    parts, count = [], 0
    for _ in range(_MAX_RESTARTS + 1):
        sub, m = b[alive], alive.numel()
        k_lo = nms3d(sub, zeros[:m], lo)
        k_hi = nms3d(sub, zeros[:m], hi)
        CALLS["kernel"] += 2
        if k_lo.numel() == k_hi.numel() and torch.equal(k_lo, k_hi):
            parts.append(alive[k_lo])
            return torch.cat(parts)
        CALLS["restarts"] += 1
        d, new = _first_difference(k_lo, k_hi)
        sub_vol = vol[alive]
        if not bool(_suppressed(sub[new], sub_vol[new], sub[d:d + 1], sub_vol[d:d + 1], tau, lo, hi)[0]):
            new = torch.cat([new, torch.tensor([d], device=dev)])
        parts.append(alive[new])
        count += new.numel()
        if limit is not None and count >= limit:
            return torch.cat(parts)
        rest = torch.arange(d + 1, m, device=dev)
        rest = rest[~_suppressed(sub[new], sub_vol[new], sub[rest], sub_vol[rest], tau, lo, hi)]
        alive = alive[rest]
        if alive.numel() == 0:
            return torch.cat(parts)
    CALLS["greedy_finish"] += 1
    while alive.numel() and (limit is None or count < limit):  # MONAI's loop, exact rows
        i = alive[:1]
        parts.append(i)
        count += 1
        rest = alive[1:]
        alive = rest[~_suppressed(b[i], vol[i], b[rest], vol[rest], tau, lo, hi)]
    return torch.cat(parts)


def _nms_sorted(boxes_sorted: torch.Tensor, iou_dtype, nms_thresh, max_proposals) -> torch.Tensor:
    n, dev = boxes_sorted.shape[0], boxes_sorted.device
    limit = math.ceil(max_proposals) if max_proposals >= 1 else None
    if limit == 1:  # MONAI picks the first box and stops before any IoU (or check)
        return torch.zeros(1, dtype=torch.long, device=dev)
    b = _float32(boxes_sorted)
    vol = _validated_volumes(b)
    tau = _decision_threshold(iou_dtype, float(nms_thresh))
    if tau is None:
        keep = torch.zeros(1, dtype=torch.long, device=dev)
    elif tau == math.inf:
        keep = torch.arange(n, device=dev)
    else:
        keep = _exact_nms(b, vol, tau, limit)
    return keep if limit is None else keep[:limit]


def non_max_suppression(boxes, scores, nms_thresh: float, max_proposals: int = -1, box_overlap_metric=box_iou):
    """monai.data.box_utils.non_max_suppression on deepem's nms3d kernel (see the module notes)."""
    if boxes.shape[0] == 0:
        return convert_to_dst_type(src=np.array([]), dst=boxes, dtype=torch.long)[0]
    if not (_is_iou(box_overlap_metric) and _is_3d(boxes)):
        return _fallback("non_max_suppression", "not [N, 6]" if not _is_3d(boxes) else "metric",
                         boxes, scores, nms_thresh, max_proposals, _monai_metric(box_overlap_metric))
    if boxes.shape[0] != scores.shape[0]:
        raise ValueError(
            f"boxes and scores should have same length, got boxes shape {boxes.shape}, scores shape {scores.shape}"
        )
    boxes_t, *_ = convert_data_type(boxes, torch.Tensor)
    scores_t, *_ = convert_to_dst_type(scores, boxes_t)
    order = _plain(torch.argsort(scores_t, dim=0, descending=True, stable=True))
    iou_dtype = boxes_t.dtype if boxes_t.dtype.is_floating_point else torch.float32
    pick_idx = order[_nms_sorted(_plain(boxes_t)[order], iou_dtype, nms_thresh, max_proposals)]
    CALLS["non_max_suppression"] += 1
    return convert_to_dst_type(src=pick_idx, dst=boxes, dtype=pick_idx.dtype)[0]


def batched_nms(boxes, scores, labels, nms_thresh: float, max_proposals: int = -1, box_overlap_metric=box_iou):
    """monai.data.box_utils.batched_nms on deepem's nms3d kernel: MONAI's per-label offsets
    (float32 boxes + label * (max coordinate + 1)), then non_max_suppression above."""
    if boxes.shape[0] == 0:
        return convert_to_dst_type(src=np.array([]), dst=boxes, dtype=torch.long)[0]
    if not (_is_iou(box_overlap_metric) and _is_3d(boxes)):
        return _fallback("batched_nms", "not [N, 6]" if not _is_3d(boxes) else "metric",
                         boxes, scores, labels, nms_thresh, max_proposals, _monai_metric(box_overlap_metric))
    boxes_t, *_ = convert_data_type(boxes, torch.Tensor, dtype=torch.float32)
    scores_t, *_ = convert_to_dst_type(scores, boxes_t)
    labels_t, *_ = convert_to_dst_type(labels, boxes_t, dtype=torch.long)
    boxes_t, scores_t, labels_t = _plain(boxes_t), _plain(scores_t), _plain(labels_t)
    max_coordinate = boxes_t.max()
    offsets = labels_t.to(boxes_t) * (max_coordinate + 1)
    keep = non_max_suppression(boxes_t + offsets[:, None], scores_t, nms_thresh, max_proposals, box_iou)
    CALLS["batched_nms"] += 1
    return convert_to_dst_type(src=keep, dst=boxes, dtype=keep.dtype)[0]


# ---------------------------------------------------------------------------------- MONAI objects

class DeepEMBoxSelector(BoxSelector):
    """MONAI's BoxSelector whose NMS is deepem's batched_nms (its box_overlap_metric defaults
    to deepem's box_iou). Same steps and results: per level the scores above score_thresh,
    the top topk_candidates_per_level of them, boxes clipped to the image (empty ones dropped);
    then NMS over the image, at most detections_per_img kept."""

    def __init__(self, box_overlap_metric=box_iou, apply_sigmoid: bool = True, score_thresh: float = 0.05,
                 topk_candidates_per_level: int = 1000, nms_thresh: float = 0.5, detections_per_img: int = 300):
        super().__init__(box_overlap_metric=box_overlap_metric, apply_sigmoid=apply_sigmoid,
                         score_thresh=score_thresh, topk_candidates_per_level=topk_candidates_per_level,
                         nms_thresh=nms_thresh, detections_per_img=detections_per_img)

    def select_boxes_per_image(self, boxes_list, logits_list, spatial_size):
        if len(boxes_list) != len(logits_list):
            raise ValueError(
                "len(boxes_list) should equal to len(logits_list). "
                f"Got len(boxes_list)={len(boxes_list)}, len(logits_list)={len(logits_list)}"
            )
        return self._select(lambda idxs: torch.cat([boxes[i] for boxes, i in zip(boxes_list, idxs)]),
                            logits_list, spatial_size, boxes_list[0].dtype)

    def select_top_score_idx_per_level(self, logits):
        # MONAI's steps and results, with one pass over the mask instead of two (torch.where and
        # a boolean index each scan it; over a level's millions of anchors that is the cost),
        # numpy's on the CPU (3-4x faster than torch.nonzero there)
        num_classes = logits.shape[-1]
        if self.apply_sigmoid and logits.requires_grad and torch.is_grad_enabled():
            scores = torch.sigmoid(logits.to(torch.float32)).flatten()  # out= takes no autograd
        elif self.apply_sigmoid:  # into a reused buffer: a fresh one costs more in page faults than the sigmoid
            scores = torch.sigmoid(logits.to(torch.float32).flatten(), out=_scratch(logits.numel(), logits.device))
        else:
            scores = logits.flatten()
        above = scores > self.score_thresh
        if above.device.type == "cpu":
            flat_idxs = torch.from_numpy(np.flatnonzero(above.numpy()))
        else:
            flat_idxs = above.nonzero().squeeze(1)
        scores = scores[flat_idxs]
        selected_scores, order = scores.to(torch.float32).topk(min(self.topk_candidates_per_level, flat_idxs.numel()))
        flat_idxs = flat_idxs[order]
        return torch.div(flat_idxs, num_classes, rounding_mode="floor"), selected_scores, flat_idxs % num_classes

    def _select(self, boxes_of, logits_list, spatial_size, boxes_dtype):
        """The selection with the boxes fetched for the top-scoring indices only:
        boxes_of([idx per level]) returns those boxes, level after level. Clipping is per box,
        so clipping all levels at once gives MONAI's per-level result."""
        logits_dtype = logits_list[0].dtype
        picked = [self.select_top_score_idx_per_level(level_logits) for level_logits in logits_list]
        boxes = boxes_of([idx for idx, _, _ in picked])
        scores, labels = (torch.cat([p[k] for p in picked]) for k in (1, 2))
        boxes, inside = _box_utils.clip_boxes_to_image(boxes, spatial_size, remove_empty=True)
        scores, labels = scores[inside], labels[inside]
        keep = batched_nms(boxes, scores, labels, self.nms_thresh,
                           box_overlap_metric=self.box_overlap_metric, max_proposals=self.detections_per_img)
        return boxes[keep].to(boxes_dtype), scores[keep].to(logits_dtype), labels[keep]


_scratch_buffers = threading.local()


def _scratch(numel, device):
    """A float32 buffer of numel kept between calls (one per thread and device)."""
    key = "buf_%s" % device
    buf = getattr(_scratch_buffers, key, None)
    if buf is None or buf.numel() < numel:
        buf = torch.empty(numel, dtype=torch.float32, device=device)
        setattr(_scratch_buffers, key, buf)
    return buf[:numel]


def _lazy_postprocess_applies(detector) -> bool:
    """Decoding only the selected anchors gives MONAI's detections when the selector and the
    box coder are MONAI's own (or deepem's selector): a subclass may select by the boxes."""
    from monai.apps.detection.utils.box_coder import BoxCoder

    return (type(detector.box_selector) in (BoxSelector, DeepEMBoxSelector)
            and type(detector.box_coder) is BoxCoder)


def postprocess_detections(self, head_outputs_reshape, anchors, image_sizes, num_anchor_locs_per_level,
                           need_sigmoid=True):
    """RetinaNetDetector.postprocess_detections that decodes the regressions of the selected
    anchors only (at most topk_candidates_per_level per level) instead of every anchor's
    (5.4 million for MONAI's lung nodule bundle's window). The box selector picks anchors by
    their scores alone and decoding is per anchor, so the detections are MONAI's (the
    benchmark and the tests check bit-equality). One difference: MONAI raises ValueError when
    any anchor's decoded size is NaN or infinite, here only when a selected anchor's is (the
    check would read all the regressions again, as long as the rest of this function takes);
    the detections returned are the same either way."""
    if not _lazy_postprocess_applies(self):
        return MONAI_POSTPROCESS(self, head_outputs_reshape, anchors, image_sizes, num_anchor_locs_per_level,
                                  need_sigmoid)
    CALLS["postprocess_detections"] += 1
    selector = _as_deepem_selector(self.box_selector)
    per_level = [locs * self.num_anchors_per_loc for locs in num_anchor_locs_per_level]
    logits_all = head_outputs_reshape[self.cls_key]
    regression_all = head_outputs_reshape[self.box_reg_key]
    compute_dtype = logits_all.dtype
    detections = []
    for index, spatial_size in enumerate(image_sizes):
        logits = list(logits_all[index].split(per_level))
        regression = list(regression_all[index].split(per_level))
        anchor_levels = list(anchors[index].split(per_level))

        def boxes_of(idxs):  # decoding is per anchor: all levels' picks in one call
            codes = torch.cat([r[i] for r, i in zip(regression, idxs)]).to(torch.float32)
            picked = torch.cat([a[i] for a, i in zip(anchor_levels, idxs)])
            return self.box_coder.decode_single(codes, picked).to(compute_dtype)

        boxes, scores, labels = selector._select(boxes_of, logits, spatial_size, compute_dtype)
        detections.append({self.target_box_key: boxes, self.pred_score_key: scores,
                           self.target_label_key: labels})
    return detections


def _as_deepem_selector(selector):
    if isinstance(selector, DeepEMBoxSelector):
        return selector
    new = DeepEMBoxSelector.__new__(DeepEMBoxSelector)
    new.__dict__.update(selector.__dict__)
    if new.box_overlap_metric is MONAI_FUNCTIONS["box_iou"]:
        new.box_overlap_metric = box_iou
    return new


def use_deepem(obj):
    """Routes one MONAI object's box IoU and NMS through deepem, in place where it can:

    - a RetinaNetDetector: its box_overlap_metric (when MONAI's box_iou), its box_selector
      (becomes a DeepEMBoxSelector), its proposal matcher's similarity_fn and its
      postprocess_detections (decodes the selected anchors only, see postprocess_detections); a matcher set
      later with set_atss_matcher takes the detector's (now deepem's) metric. Call it again
      after set_box_selector_parameters, which builds a new MONAI BoxSelector (or use
      patch_monai(), which covers that too);
    - a BoxSelector: returns a DeepEMBoxSelector with its settings;
    - a Matcher (e.g. ATSSMatcher): its similarity_fn, when MONAI's box_iou.
    Returns the object (the new one for a BoxSelector). Other metrics (e.g. GIoU) stay."""
    from monai.apps.detection.utils.ATSS_matcher import Matcher

    if isinstance(obj, BoxSelector):
        return _as_deepem_selector(obj)
    if isinstance(obj, Matcher):
        if obj.similarity_fn is MONAI_FUNCTIONS["box_iou"]:
            obj.similarity_fn = box_iou
        return obj
    if isinstance(obj, RetinaNetDetector):
        if obj.box_overlap_metric is MONAI_FUNCTIONS["box_iou"]:
            obj.box_overlap_metric = box_iou
        obj.box_selector = _as_deepem_selector(obj.box_selector)
        obj.postprocess_detections = types.MethodType(postprocess_detections, obj)
        matcher = getattr(obj, "proposal_matcher", None)
        if isinstance(matcher, Matcher):
            use_deepem(matcher)
        return obj
    raise TypeError("use_deepem takes a RetinaNetDetector, a BoxSelector or a Matcher, got %s" % type(obj).__name__)


# ---------------------------------------------------------------------------------- patching MONAI

_MONAI_MODULES = (
    "monai.data.box_utils",
    "monai.data",
    "monai.apps.detection.utils.box_selector",
    "monai.apps.detection.utils.ATSS_matcher",
    "monai.apps.detection.networks.retinanet_detector",
    "monai.apps.detection.metrics.coco",
    "monai.apps.detection.metrics.matching",
)
_patches = None  # the undo list while patched


def _function_of(member):
    if isinstance(member, (staticmethod, classmethod)):
        member = member.__func__
    return member if isinstance(member, types.FunctionType) else None


def _swap_defaults(fn, swaps, undo):
    defaults = fn.__defaults__
    if defaults and any(id(d) in swaps for d in defaults):
        undo.append(("defaults", fn, defaults))
        fn.__defaults__ = tuple(swaps.get(id(d), d) for d in defaults)
    kw = fn.__kwdefaults__
    if kw and any(id(d) in swaps for d in kw.values()):
        undo.append(("kwdefaults", fn, dict(kw)))
        fn.__kwdefaults__ = {k: swaps.get(id(d), d) for k, d in kw.items()}


class _Patched:
    """What patch_monai() returns: `with patch_monai(): ...` unpatches on leaving."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        unpatch_monai()
        return False


def patch_monai():
    """Makes MONAI call deepem's box_iou / non_max_suppression / batched_nms everywhere:
    rebinds the names in every loaded monai module (box_utils, monai.data, the detection box
    selector, ATSS matcher, RetinaNetDetector, the COCO metric and matching), and swaps the
    default arguments that hold MONAI's functions (BoxSelector(box_overlap_metric=box_iou),
    Matcher / ATSSMatcher(similarity_fn=box_iou), RetinaNetDetector(box_overlap_metric=...),
    non_max_suppression / batched_nms(box_overlap_metric=...)), so objects built afterwards
    use deepem too; RetinaNetDetector.postprocess_detections becomes deepem's (decodes only the
    selected anchors). Objects built before keep MONAI's function as their attribute; deepem's
    NMS still serves them (it recognises MONAI's box_iou), use_deepem() converts them fully.
    Idempotent; unpatch_monai() undoes it, as does leaving `with patch_monai():`."""
    global _patches
    if _patches is not None:
        return _Patched()
    import importlib

    for name in _MONAI_MODULES:
        importlib.import_module(name)
    swaps = {id(MONAI_FUNCTIONS[k]): v for k, v in
             (("box_iou", box_iou), ("non_max_suppression", non_max_suppression), ("batched_nms", batched_nms))}
    undo, seen = [], set()
    for mod_name, mod in list(sys.modules.items()):
        if mod is None or not (mod_name == "monai" or mod_name.startswith("monai.")):
            continue
        for attr, value in list(vars(mod).items()):
            if id(value) in swaps and value is MONAI_FUNCTIONS.get(getattr(value, "__name__", ""), None):
                undo.append(("attr", mod, attr, value))
                setattr(mod, attr, swaps[id(value)])
                continue
            members = [value]
            if isinstance(value, type) and str(getattr(value, "__module__", "")).startswith("monai"):
                members = list(vars(value).values())
            for member in members:
                fn = _function_of(member)
                if fn is None or id(fn) in seen or not str(fn.__module__).startswith("monai"):
                    continue
                seen.add(id(fn))
                _swap_defaults(fn, swaps, undo)
    undo.append(("attr", RetinaNetDetector, "postprocess_detections", MONAI_POSTPROCESS))
    RetinaNetDetector.postprocess_detections = postprocess_detections
    _patches = undo
    return _Patched()


def unpatch_monai():
    """Undoes patch_monai(): MONAI's names and default arguments as they were."""
    global _patches
    undo, _patches = _patches, None
    for entry in reversed(undo or []):
        if entry[0] == "attr":
            setattr(entry[1], entry[2], entry[3])
        elif entry[0] == "defaults":
            entry[1].__defaults__ = entry[2]
        else:
            entry[1].__kwdefaults__ = entry[2]

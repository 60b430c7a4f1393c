"""Plain numpy float64 references for the 3D box ops, written for clarity, not speed."""
import numpy as np


def volume(b):
    ext = np.clip(b[..., 3:] - b[..., :3], 0, None)
    return ext.prod(axis=-1)


def intersection(a, b):
    """a [N, 6], b [M, 6] -> [N, M]."""
    lo = np.maximum(a[:, None, :3], b[None, :, :3])
    hi = np.minimum(a[:, None, 3:], b[None, :, 3:])
    return np.clip(hi - lo, 0, None).prod(axis=-1)


def box_iou3d(a, b):
    a = np.asarray(a, np.float64).reshape(-1, 6)
    b = np.asarray(b, np.float64).reshape(-1, 6)
    with np.errstate(invalid="ignore", divide="ignore"):  # inf - inf for non-finite boxes
        inter = intersection(a, b)
        union = volume(a)[:, None] + volume(b)[None, :] - inter
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)
    bad = ~np.isfinite(a).all(1)[:, None] | ~np.isfinite(b).all(1)[None, :]
    iou[bad] = np.nan
    return iou


def nms3d(boxes, scores, thr):
    """Classic greedy NMS: in order of score (descending, ties by lower index), keep a box
    unless a kept box has IoU > thr with it (as inter > thr * union). Boxes with a non-finite
    coordinate or a NaN score are never kept."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 6)
    scores = np.asarray(scores, np.float64)
    valid = np.isfinite(boxes).all(1) & ~np.isnan(scores)
    order = [i for i in sorted(range(len(scores)), key=lambda i: (-scores[i], i)) if valid[i]]
    kept = []
    vol = volume(boxes)
    for i in order:
        if kept:
            k = np.asarray(kept)
            inter = intersection(boxes[k], boxes[i : i + 1])[:, 0]
            union = vol[k] + vol[i] - inter
            if np.any((inter > 0) & (inter > thr * union)):
                continue
        kept.append(i)
    return np.asarray(kept, np.int64)


def nms3d_fast(boxes, scores, thr):
    """The same greedy result as nms3d, vectorised for large N (seconds at 20,000 boxes):
    take the best box left, keep it, drop every box left that it suppresses. No spatial grid
    and no chunks, so it shares nothing with the CPU kernel's pruning."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 6)
    scores = np.asarray(scores, np.float64)
    valid = np.isfinite(boxes).all(1) & ~np.isnan(scores)
    order = np.argsort(-scores, kind="stable")  # ties by lower index
    order = order[valid[order]]
    # One contiguous array per coordinate (the loop filters them all each step), then the
    # volume and the original index.
    cols = [boxes[order, j].copy() for j in range(6)] + [volume(boxes[order]), order]
    kept = []
    while len(cols[7]):
        z1, y1, x1, z2, y2, x2, vol, idx = cols
        kept.append(idx[0])
        inter = np.clip(np.minimum(z2, z2[0]) - np.maximum(z1, z1[0]), 0, None)
        inter *= np.clip(np.minimum(y2, y2[0]) - np.maximum(y1, y1[0]), 0, None)
        inter *= np.clip(np.minimum(x2, x2[0]) - np.maximum(x1, x1[0]), 0, None)
        drop = (inter > 0) & (inter > thr * (vol[0] + vol - inter))
        drop[0] = True
        cols = [c[~drop] for c in cols]
    return np.asarray(kept, np.int64)


def batched_nms3d(boxes, scores, idxs, thr, nms=nms3d):
    boxes = np.asarray(boxes, np.float64).reshape(-1, 6)
    scores = np.asarray(scores, np.float64)
    idxs = np.asarray(idxs)
    kept = []
    for g in np.unique(idxs):
        members = np.nonzero(idxs == g)[0]
        kept += list(members[nms(boxes[members], scores[members], thr)])
    kept.sort(key=lambda i: (-scores[i], i))
    return np.asarray(kept, np.int64)


def random_boxes(rng, n, volume_size=256.0, max_side=40.0, integer=False):
    """Random boxes in a cube volume; integer=True gives exactly representable coordinates."""
    lo = rng.uniform(0, volume_size, size=(n, 3))
    side = rng.uniform(2, max_side, size=(n, 3))
    if integer:
        lo, side = np.floor(lo), np.ceil(side)
    return np.concatenate([lo, lo + side], axis=1)


def clustered_boxes(rng, n, centres=30, volume_size=256.0, integer=False):
    """Detector-like output: many jittered boxes around a few dozen nodule centres."""
    c = rng.uniform(20, volume_size - 20, size=(centres, 3))
    d = rng.uniform(4, 30, size=centres)
    k = rng.integers(0, centres, size=n)
    centre = c[k] + rng.normal(0, 0.15, size=(n, 3)) * d[k, None]
    side = d[k, None] * rng.uniform(0.7, 1.3, size=(n, 1))
    boxes = np.concatenate([centre - side / 2, centre + side / 2], axis=1)
    return np.round(boxes) if integer else boxes

"""numpy float64 references of deepem.ops.anchors: written from the rules in the docstrings,
dense (every anchor against every GT), with the same counter-based random keys."""
import numpy as np

M64 = (1 << 64) - 1
NEGATIVE_STREAM = M64


def splitmix64(z):
    z = (z + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def random_stream(seed, crop, stream):
    return splitmix64(splitmix64(splitmix64(seed & M64) ^ crop) ^ stream)


def hash32(x):
    x = np.asarray(x, dtype=np.uint32)
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint32(16))
        x = x * np.uint32(0x7FEB352D)
        x = x ^ (x >> np.uint32(15))
        x = x * np.uint32(0x846CA68B)
        x = x ^ (x >> np.uint32(16))
    return x


def random_hash(stream, k):
    k = np.asarray(k, dtype=np.uint64).astype(np.uint32)
    return hash32(hash32(k ^ np.uint32(stream & 0xFFFFFFFF)) ^ np.uint32(stream >> 32))


def random_key(stream, k):
    """Positive draw key (uint64): (hash << 32) | k."""
    return (random_hash(stream, k).astype(np.uint64) << np.uint64(32)) | np.asarray(k, np.uint64)


def sample_key(stream, k, num_anchors):
    """Negative sampling key of anchors k: their position in the crop's random order, the
    inverse of a 4-round Feistel permutation of [0, 4^h) >= [0, num_anchors)."""
    h = 1
    while (1 << (2 * h)) < num_anchors:
        h += 1
    round_keys = [splitmix64((stream + r) & M64) & 0xFFFFFFFF for r in range(4)]
    mask = (1 << h) - 1
    k = np.asarray(k, np.int64)
    left, right = ((k >> h) & mask).astype(np.uint32), (k & mask).astype(np.uint32)
    for i in (3, 2, 1, 0):
        prev = right ^ (hash32(left ^ np.uint32(round_keys[i])) & np.uint32(mask))
        right, left = left, prev
    return (left.astype(np.int64) << np.int64(h)) | right.astype(np.int64)


def anchor_boxes(feature_size, stride, offset, shapes):
    """[D, H, W, A, 6] boxes."""
    d, h, w = feature_size
    shapes = np.asarray(shapes, np.float64).reshape(-1, 3)
    out = np.empty((d, h, w, len(shapes), 6))
    cz = offset[0] + stride[0] * np.arange(d, dtype=np.float64)
    cy = offset[1] + stride[1] * np.arange(h, dtype=np.float64)
    cx = offset[2] + stride[2] * np.arange(w, dtype=np.float64)
    for a, shape in enumerate(shapes):
        for j, c in enumerate((cz, cy, cx)):
            view = [1, 1, 1]
            view[j] = -1
            half = shape[j] / 2
            out[:, :, :, a, j] = (c - half).reshape(view)
            out[:, :, :, a, j + 3] = (c + half).reshape(view)
    return out


def anchor_cubes(feature_size, stride, offset, shapes):
    boxes = anchor_boxes(feature_size, stride, offset, shapes)
    shapes = np.asarray(shapes, np.float64).reshape(-1, 3)
    centre = (boxes[..., :3] + boxes[..., 3:]) / 2
    side = (shapes[:, 0] + shapes[:, 1] + shapes[:, 2]) / 3
    return np.concatenate([centre, np.broadcast_to(side[:, None], centre.shape[:-1] + (1,))], -1)


def iou(boxes, gt):
    """IoU of [K, 6] boxes with one GT box, in the kernels' order of operations."""
    ext = lambda lo, hi: np.maximum(hi - lo, 0.0)  # noqa: E731
    inter = (ext(np.maximum(boxes[:, 0], gt[0]), np.minimum(boxes[:, 3], gt[3]))
             * ext(np.maximum(boxes[:, 1], gt[1]), np.minimum(boxes[:, 4], gt[4]))
             * ext(np.maximum(boxes[:, 2], gt[2]), np.minimum(boxes[:, 5], gt[5])))
    vol = lambda b: ext(b[..., 0], b[..., 3]) * ext(b[..., 1], b[..., 4]) * ext(b[..., 2], b[..., 5])  # noqa: E731
    union = vol(boxes) + vol(gt) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _tiled(anchors, rows):
    """Anchor r % K for each row r."""
    w = rows.shape[-1]
    a = anchors.reshape(-1, w)
    return np.tile(a, (rows.size // w // len(a) if len(a) else 0, 1))


def encode(boxes, anchors, weights=None):
    boxes, anchors = np.asarray(boxes, np.float64), np.asarray(anchors, np.float64)
    w = boxes.shape[-1]
    wt = np.ones(w) if weights is None else np.asarray(weights, np.float64)
    b, a = boxes.reshape(-1, w), _tiled(anchors, boxes)
    out = np.empty_like(b)
    if w == 4:
        for j in range(3):
            out[:, j] = wt[j] * (b[:, j] - a[:, j]) / a[:, 3]
        out[:, 3] = wt[3] * np.log(b[:, 3] / a[:, 3])
    else:
        for j in range(3):
            sa, s = a[:, j + 3] - a[:, j], b[:, j + 3] - b[:, j]
            ca, c = (a[:, j] + a[:, j + 3]) / 2, (b[:, j] + b[:, j + 3]) / 2
            out[:, j] = wt[j] * (c - ca) / sa
            out[:, j + 3] = wt[j + 3] * np.log(s / sa)
    return out.reshape(boxes.shape)


def decode(deltas, anchors, weights=None, log_clamp=np.inf):
    deltas, anchors = np.asarray(deltas, np.float64), np.asarray(anchors, np.float64)
    w = deltas.shape[-1]
    wt = np.ones(w) if weights is None else np.asarray(weights, np.float64)
    d, a = deltas.reshape(-1, w), _tiled(anchors, deltas)
    out = np.empty_like(d)
    if w == 4:
        for j in range(3):
            out[:, j] = a[:, j] + d[:, j] / wt[j] * a[:, 3]
        out[:, 3] = a[:, 3] * np.exp(np.minimum(d[:, 3] / wt[3], log_clamp))
    else:
        for j in range(3):
            sa, ca = a[:, j + 3] - a[:, j], (a[:, j] + a[:, j + 3]) / 2
            c = ca + d[:, j] / wt[j] * sa
            half = sa * np.exp(np.minimum(d[:, j + 3] / wt[j + 3], log_clamp)) / 2
            out[:, j], out[:, j + 3] = c - half, c + half
    return out.reshape(deltas.shape)


def gt_valid(gt):
    return bool(np.all(np.isfinite(gt)) and np.all(gt[3:] > gt[:3]))


def fallback(feature_size, stride, offset, shapes, gt):
    cell = []
    for j in range(3):
        i = np.rint(((gt[j] + gt[j + 3]) / 2 - offset[j]) / stride[j])
        if not (0 <= i <= feature_size[j] - 1):
            return -1
        cell.append(int(i))
    dists = [sum(abs(np.log((gt[j + 3] - gt[j]) / s[j])) for j in range(3)) for s in shapes]
    a = int(np.argmin(dists))  # first minimum: lower shape on ties
    return ((cell[0] * feature_size[1] + cell[1]) * feature_size[2] + cell[2]) * len(shapes) + a


def label(gt_boxes, feature_size, stride, offset, shapes, num_gt=None, bands=None,
          pos_threshold=0.5, neg_threshold=0.02, num_neg=800, seed=0, cube_targets=True,
          weights=None):
    """Returns (labels, matched_iou, matched_gt, pos_anchor, pos_targets) as numpy arrays."""
    gt_boxes = np.asarray(gt_boxes, np.float64)
    shapes = [tuple(s) for s in np.asarray(shapes, np.float64).reshape(-1, 3)]
    b_count, g_count = gt_boxes.shape[:2]
    boxes = anchor_boxes(feature_size, stride, offset, shapes).reshape(-1, 6)
    cubes = anchor_cubes(feature_size, stride, offset, shapes).reshape(-1, 4)
    k_total = boxes.shape[0]
    zc = offset[0] + stride[0] * np.arange(feature_size[0], dtype=np.float64)
    zc = np.repeat(zc, k_total // feature_size[0])
    width = 4 if cube_targets else 6
    labels = np.full((b_count, k_total), -1, np.int8)
    best = np.zeros((b_count, k_total))
    matched = np.full((b_count, k_total), -1, np.int64)
    pos = np.full((b_count, g_count), -1, np.int64)
    targets = np.zeros((b_count, g_count, width))
    for b in range(b_count):
        n = g_count if num_gt is None else int(min(max(num_gt[b], 0), g_count))
        chosen = {}
        for j in range(n):
            gt = gt_boxes[b, j]
            if not gt_valid(gt):
                continue
            v = iou(boxes, gt)
            better = v > best[b]
            best[b, better] = v[better]
            matched[b, better] = j
            cand = np.nonzero(v >= pos_threshold)[0]
            if len(cand):
                keys = random_key(random_stream(seed, b, j), cand)
                chosen[j] = int(cand[np.argmin(keys)])
        negative = best[b] < neg_threshold
        if bands is not None:
            for lo, hi in np.asarray(bands[b], np.float64):
                negative &= ~((zc >= lo) & (zc <= hi))
        neg_idx = np.nonzero(negative)[0]
        if num_neg is not None and num_neg >= 0 and len(neg_idx) > num_neg:
            keys = sample_key(random_stream(seed, b, NEGATIVE_STREAM), neg_idx, k_total)
            neg_idx = neg_idx[np.argsort(keys, kind="stable")[:num_neg]]
        labels[b, neg_idx] = 0
        for j in range(n):
            gt = gt_boxes[b, j]
            if not gt_valid(gt):
                continue
            k = chosen.get(j, None)
            if k is None:
                k = fallback(feature_size, stride, offset, shapes, gt)
            if k < 0:
                continue
            pos[b, j] = k
            labels[b, k] = 1
            wt = None if weights is None else weights
            if cube_targets:
                cube = np.concatenate([(gt[:3] + gt[3:]) / 2,
                                       [((gt[3] - gt[0]) + (gt[4] - gt[1]) + (gt[5] - gt[2])) / 3]])
                targets[b, j] = encode(cube[None], cubes[k][None], wt)[0]
            else:
                targets[b, j] = encode(gt[None], boxes[k][None], wt)[0]
    return labels, best, matched, pos, targets

"""Anchor labelling of a training batch: deepem.ops.label_anchors3d vs a numpy per-crop
labeller in DeepLung's style (its LabelMapping: windowed IoU per nodule and anchor size,
np.where + random.sample for 800 negatives, one positive per nodule).

Batch: 32 crops of 96^3 (24^3 cells x 3 anchors = 41,472 anchors per crop), 1-5 nodules each.

    python benchmarks/bench_anchors.py [--crops 32] [--repeats 7] [--json PATH]
"""
import argparse
import os
import random
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import fmt_ms, machine, print_table, timeit, with_threads, write_json  # noqa: E402

from deepem.ops import anchor_grid, label_anchors3d  # noqa: E402
from deepem.ops.boxes import cubes_to_boxes  # noqa: E402

STRIDE, CROP, SIZES, NUM_NEG, TH_NEG, TH_POS = 4, 96, (5.0, 10.0, 20.0), 800, 0.02, 0.5


# ---- the baseline: DeepLung's LabelMapping, one positive per nodule ----------------------

def select_samples(bbox, anchor, th, oz, oh, ow):
    """Cells whose anchor of side `anchor` has IoU >= th with the cube `bbox` (z, y, x, d)."""
    z, h, w, d = bbox
    empty = (np.zeros((0,), np.int64),) * 3
    max_overlap = min(d, anchor)
    min_overlap = np.power(max(d, anchor), 3) * th / max_overlap / max_overlap
    if min_overlap > max_overlap:
        return empty
    idx = []
    for c, o in ((z, oz), (h, oh), (w, ow)):
        s = c - 0.5 * np.abs(d - anchor) - (max_overlap - min_overlap)
        e = c + 0.5 * np.abs(d - anchor) + (max_overlap - min_overlap)
        idx.append(np.where(np.logical_and(o >= s, o <= e))[0])
    iz, ih, iw = idx
    if len(iz) == 0 or len(ih) == 0 or len(iw) == 0:
        return empty
    lz, lh, lw = len(iz), len(ih), len(iw)
    iz = np.tile(iz.reshape((-1, 1, 1)), (1, lh, lw)).reshape(-1)
    ih = np.tile(ih.reshape((1, -1, 1)), (lz, 1, lw)).reshape(-1)
    iw = np.tile(iw.reshape((1, 1, -1)), (lz, lh, 1)).reshape(-1)
    centers = np.stack([oz[iz], oh[ih], ow[iw]], axis=1)
    s0, e0 = centers - anchor / 2, centers + anchor / 2
    s1, e1 = (bbox[:3] - d / 2).reshape(1, -1), (bbox[:3] + d / 2).reshape(1, -1)
    overlap = np.maximum(0, np.minimum(e0, e1) - np.maximum(s0, s1))
    intersection = overlap[:, 0] * overlap[:, 1] * overlap[:, 2]
    iou = intersection / (anchor ** 3 + d ** 3 - intersection)
    mask = iou >= th
    return iz[mask], ih[mask], iw[mask]


def deeplung_label(bboxes):
    """label[z, y, x, a, 5] = (1 pos / -1 sampled negative / 0 ignore, dz, dy, dx, dd)."""
    anchors = np.asarray(SIZES)
    n = CROP // STRIDE
    offset = (STRIDE - 1) / 2.0
    oz = oh = ow = np.arange(offset, offset + STRIDE * (n - 1) + 1, STRIDE)
    label = -1 * np.ones((n, n, n, len(anchors), 5), np.float32)
    for bbox in bboxes:
        for i, anchor in enumerate(anchors):
            iz, ih, iw = select_samples(bbox, anchor, TH_NEG, oz, oh, ow)
            label[iz, ih, iw, i, 0] = 0
    neg_z, neg_h, neg_w, neg_a = np.where(label[:, :, :, :, 0] == -1)
    neg_idcs = random.sample(range(len(neg_z)), min(NUM_NEG, len(neg_z)))
    label[:, :, :, :, 0] = 0
    label[neg_z[neg_idcs], neg_h[neg_idcs], neg_w[neg_idcs], neg_a[neg_idcs], 0] = -1
    for target in bboxes:
        iz, ih, iw, ia = [], [], [], []
        for i, anchor in enumerate(anchors):
            iiz, iih, iiw = select_samples(target, anchor, TH_POS, oz, oh, ow)
            iz.append(iiz), ih.append(iih), iw.append(iiw)
            ia.append(i * np.ones((len(iiz),), np.int64))
        iz, ih, iw, ia = (np.concatenate(v, 0) for v in (iz, ih, iw, ia))
        if len(iz) == 0:
            pos = [min(n - 1, max(0, int(np.round((target[i] - offset) / STRIDE)))) for i in range(3)]
            pos.append(int(np.argmin(np.abs(np.log(target[3] / anchors)))))
        else:
            j = random.sample(range(len(iz)), 1)[0]
            pos = [iz[j], ih[j], iw[j], ia[j]]
        a = anchors[pos[3]]
        label[pos[0], pos[1], pos[2], pos[3], :] = [
            1, (target[0] - oz[pos[0]]) / a, (target[1] - oh[pos[1]]) / a,
            (target[2] - ow[pos[2]]) / a, np.log(target[3] / a)]
    return label


# ---- harness ------------------------------------------------------------------------------

def make_batch(crops, seed=0):
    rng = np.random.default_rng(seed)
    cubes = []
    for _ in range(crops):
        k = int(rng.integers(1, 6))
        d = rng.uniform(3, 30, size=(k, 1))
        c = rng.uniform(12, CROP - 12, size=(k, 3))
        cubes.append(np.concatenate([c, d], 1))
    return cubes


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--crops", type=int, default=32)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    args = p.parse_args()

    cubes = make_batch(args.crops)
    grid = anchor_grid((CROP // STRIDE,) * 3, STRIDE, SIZES)
    g = max(len(c) for c in cubes)
    padded = torch.full((args.crops, g, 4), float("nan"))
    for i, c in enumerate(cubes):
        padded[i, : len(c)] = torch.tensor(c, dtype=torch.float32)
    counts = torch.tensor([len(c) for c in cubes])

    def deepem(device):
        gt, n = cubes_to_boxes(padded.to(device)), counts.to(device)
        return lambda: label_anchors3d(gt, grid, num_gt=n, num_neg=NUM_NEG, seed=1)

    runs = dict(min_runs=args.repeats, max_runs=args.repeats, budget=0)  # median of exactly --repeats

    rows = []
    random.seed(0)
    base = timeit(lambda: [deeplung_label(c) for c in cubes], **runs)
    rows.append(("numpy per crop (DeepLung style)", base))
    threads = torch.get_num_threads()
    rows.append(("deepem CPU, 1 thread", with_threads(1, lambda: timeit(deepem("cpu"), **runs))))
    rows.append(("deepem CPU, %d threads" % threads, timeit(deepem("cpu"), **runs)))
    if torch.cuda.is_available():
        rows.append(("deepem CUDA (%s)" % torch.cuda.get_device_name(),
                     timeit(deepem("cuda"), cuda=True, **runs)))

    anchors = grid.num_anchors
    print("label_anchors3d: %d crops of %d^3, %d anchors each, %d nodules, %d negatives/crop"
          % (args.crops, CROP, anchors, int(counts.sum()), NUM_NEG))
    print_table(["implementation", "ms / batch", "vs numpy"],
                [(name, fmt_ms(t, 2), "%.1fx" % (base / t)) for name, t in rows], left=(0,))
    if args.json:
        write_json(args.json, {"benchmark": "label_anchors3d", "crops": args.crops, "crop_size": CROP,
                               "anchors_per_crop": anchors, "nodules": int(counts.sum()),
                               "num_neg": NUM_NEG, "repeats": args.repeats, "machine": machine(),
                               "cpu_threads": threads,
                               "results": [{"name": n, "seconds": t, "speedup_vs_numpy": base / t}
                                           for n, t in rows]})


if __name__ == "__main__":
    main()

"""What the detection path does to the output, the marks and the CPM: a trained model on a
demo data set, DeepLung's fixed tiles (and the demo's own earlier setting) against the planned
one-tile path at several borders. Chooses on the validation split, reports the test split.

    python scripts/detect_paths.py RUN_DIR [--borders 0 8 16 24 32] [--reference 64] [--amp bf16] [--json OUT]

RUN_DIR: a demo run folder (its preprocessed/, raw/ and a trained init/best.pt), e.g. the
demo's default setting's data and initial detector. For each split (val, test) and each path:
seconds per scan (network), the output's change against the reference border (the largest
|delta logit| on the cells the reference calls positive, logit > -2, and the share of all cells
that move by more than 0.5), the LUNA16 CPM, and the marks' agreement with DeepLung's path
(the share of marks with probability > 0.5 that the other path has within a voxel). With --amp,
each planned border also runs under that autocast, compared with the same border in fp32 (the
numbers, not the speed, where the CPU emulates bf16).
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from deepem.data import tables  # noqa: E402
from deepem.eval import froc  # noqa: E402
from deepem.infer import Detector  # noqa: E402
from deepem.infer.detector import load_preprocessed  # noqa: E402
from deepem.machine import describe  # noqa: E402


def run_path(det, pre, uids):
    outputs, marks, seconds = {}, {}, 0.0
    for uid in uids:
        image, meta = load_preprocessed(pre, uid)
        image = np.ascontiguousarray(image)
        t0 = time.perf_counter()
        out = det.network_output(image)
        seconds += time.perf_counter() - t0
        kept = det.postprocess(det.decode(out), resolution=meta.get("resolution", 1.0))
        from deepem.infer.marks import Marks

        m = Marks.from_grid(kept, meta, uid)
        outputs[uid] = out[..., 0].clone()
        marks[uid] = np.concatenate([m.world_xyz, m.probability[:, None]], 1)
    return outputs, marks, seconds / max(1, len(uids))


def output_change(outputs, reference):
    worst, moved, total = 0.0, 0, 0
    for uid, ref in reference.items():
        d = (outputs[uid] - ref).abs()
        pos = ref > -2
        if pos.any():
            worst = max(worst, float(d[pos].max()))
        moved += int((d > 0.5).sum())
        total += d.numel()
    return worst, moved / max(1, total)


def marks_agree(a, b, radius_mm=1.0):
    """Share of the marks with probability > 0.5 (both paths' together) that the other path
    also has, within radius_mm (a preprocessed voxel is 1 mm)."""
    matched, total = 0, 0
    for uid in a:
        x, y = a[uid][a[uid][:, 3] > 0.5, :3], b[uid][b[uid][:, 3] > 0.5, :3]
        for p, q in ((x, y), (y, x)):
            total += len(p)
            if len(p) and len(q):
                matched += int((np.linalg.norm(p[:, None] - q[None], axis=2).min(1) <= radius_mm).sum())
    return matched / total if total else 1.0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run")
    ap.add_argument("--borders", type=int, nargs="+", default=[0, 8, 16, 24, 32])
    ap.add_argument("--reference", type=int, default=64, help="border of the reference output (default 64)")
    ap.add_argument("--splits", nargs="+", default=["val", "test"])
    ap.add_argument("--max-scans", type=int, default=0, help="at most this many scans per split (0: all)")
    ap.add_argument("--amp", choices=["bf16", "fp16"], help="also run each planned border under this autocast")
    ap.add_argument("--json")
    args = ap.parse_args()
    pre, raw = os.path.join(args.run, "preprocessed"), os.path.join(args.run, "raw")
    ckpt = os.path.join(args.run, "init", "best.pt")
    with open(os.path.join(pre, "splits.json")) as f:
        splits = json.load(f)
    annotations = tables.read_annotations(os.path.join(raw, "annotations.csv"))
    excluded = tables.read_annotations(os.path.join(raw, "annotations_excluded.csv"), excluded=True)
    paths = {"deeplung (tile 144, margin 32, module)": dict(tile=144, margin=32, fast=False),
             "demo before (tile 128, margin 8, module)": dict(tile=128, margin=8, fast=False)}
    for b in args.borders:
        paths["planned, border %d, fast" % b] = dict(margin=b)
        if args.amp:
            paths["planned, border %d, %s" % (b, args.amp)] = dict(margin=b, amp=args.amp)
    results = {"machine": describe(), "checkpoint": ckpt, "reference_border": args.reference, "splits": {}}
    for split in args.splits:
        uids = splits[split][: args.max_scans or None]
        ref_out, _, _ = run_path(Detector(ckpt, margin=args.reference), pre, uids)
        rows, base_marks, fp32 = {}, None, {}
        for name, kw in paths.items():
            det = Detector(ckpt, **kw)
            outputs, marks, sec = run_path(det, pre, uids)
            worst, moved = output_change(outputs, ref_out)
            r = froc.evaluate(marks, annotations, uids, excluded=excluded, bootstrap=0)
            base_marks = base_marks or marks
            rows[name] = {"seconds_per_scan": sec, "max_delta_logit_positive": worst, "cells_moved_gt_0.5": moved,
                          "cpm": float(r.cpm), "marks_agree_with_deeplung": marks_agree(marks, base_marks)}
            line = "%-5s %-42s %6.2f s/scan  max|d| pos %.3f  moved %.4f  CPM %.4f  same marks %.2f" % (
                split, name, sec, worst, moved, r.cpm, rows[name]["marks_agree_with_deeplung"])
            if "amp" in kw:  # against the same border in fp32
                ref_outputs, ref_marks = fp32[kw["margin"]]
                worst, moved = output_change(outputs, ref_outputs)
                rows[name].update(vs_fp32={"max_delta_logit_positive": worst, "cells_moved_gt_0.5": moved,
                                           "cpm_fp32": rows["planned, border %d, fast" % kw["margin"]]["cpm"],
                                           "marks_agree": marks_agree(marks, ref_marks)})
                line += "  vs fp32: max|d| pos %.3f  moved %.4f  same marks %.3f" % (
                    worst, moved, rows[name]["vs_fp32"]["marks_agree"])
            elif args.amp and "margin" in kw and "tile" not in kw:
                fp32[kw["margin"]] = (outputs, marks)
            print(line, flush=True)
        results["splits"][split] = {"scans": len(uids), "paths": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    main()

"""MONAI's RetinaNetDetector with and without deepem: post-processing time per image, and the
ATSS matcher's IoU time and peak memory. Same run, same inputs; the script checks that both
paths return the same detections and the same IoU matrix.

    python benchmarks/bench_monai.py [--candidates 1000,10000,50000] [--json PATH] [--device cpu|cuda]

The detector is MONAI's lung nodule bundle (lung_nodule_ct_detection, configs/train.json):
ResNet-50 FPN (conv1 stride 2, 2, 1; returned layers 1, 2), 3 anchor shapes (6, 8, 4),
(8, 6, 5), (10, 10, 6) at feature map scales 1, 2, 4, ATSS matcher (4 candidates, centre not in
GT), box selector score_thresh 0.02, nms_thresh 0.22, detections_per_img 300. Random weights.
"MONAI" is the detector as built; "deepem" is the same detector after
deepem.integrations.monai.use_deepem(detector).

Post-processing, per image, for the bundle's 512 x 512 x 192 inference window (5,382,144
anchors): head outputs are synthesized in the network's layout (random weights put every score
under the 0.02 threshold, so logits are drawn to make the candidates): 'iid' logits N(0, 1)
(candidates spread over the window, nearly all survive NMS, so both stop at 300), 'clustered'
logits peaked at 40 nodule-like centres (candidates crowd there, as a trained detector's do).
In both, nearly every anchor scores above the threshold (an untrained or early detector), so the
per-level top-k runs over millions of scores on both sides. 'sparse' is a trained detector's
output: the clustered logits' top N anchors keep their logits (at least -3.5, above the
threshold), every other anchor scores far below it (N(-8, 0.5)), so N candidates exist.
topk_candidates_per_level is set so that the given number of candidates enters NMS.
- postprocess: RetinaNetDetector.postprocess_detections, all of it: MONAI's decodes every
  anchor's regression, then per-level top-k, clipping, NMS; deepem's (use_deepem) scores every
  anchor, decodes the selected ones only, then the same steps;
- select: the box selector alone (select_boxes_per_image) on the candidates' boxes and logits,
  the part deepem replaces.
ATSS matcher, for the bundle's training patch 192 x 192 x 80 (315,360 anchors) and the whole
window: the IoU of 3 GT boxes with every anchor (the matcher's similarity_fn), its peak memory
above the inputs (CPU: peak RSS in a fresh process where every large block is a fresh mapping;
CUDA: the allocator's peak), and the matcher's whole compute_matches.
"""
import argparse
import copy
import gc
import json
import math
import os
import subprocess
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import fmt_ms, machine, print_table, timeit, write_json  # noqa: E402

import deepem  # noqa: E402
import deepem.integrations.monai as dm  # noqa: E402

WINDOW = (512, 512, 192)  # the bundle's val_patch_size / inference roi
PATCH = (192, 192, 80)  # the bundle's training patch_size
SELECTOR = dict(score_thresh=0.02, nms_thresh=0.22, detections_per_img=300)


def bundle_detector():
    from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
    from monai.apps.detection.networks.retinanet_network import RetinaNet, resnet_fpn_feature_extractor
    from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape
    from monai.networks.nets import resnet50

    torch.manual_seed(0)
    backbone = resnet50(spatial_dims=3, n_input_channels=1, conv1_t_stride=[2, 2, 1], conv1_t_size=[7, 7, 7])
    extractor = resnet_fpn_feature_extractor(backbone, 3, False, [1, 2], None)
    net = RetinaNet(spatial_dims=3, num_classes=1, num_anchors=3, feature_extractor=extractor, size_divisible=[16, 16, 8])
    anchors = AnchorGeneratorWithAnchorShape(feature_map_scales=[1, 2, 4],
                                             base_anchor_shapes=[[6, 8, 4], [8, 6, 5], [10, 10, 6]])
    det = RetinaNetDetector(network=net, anchor_generator=anchors, debug=False)
    det.set_atss_matcher(num_candidates=4, center_in_gt=False)
    det.set_box_selector_parameters(topk_candidates_per_level=1000, **SELECTOR)
    det.eval()
    return det


def anchors_for(det, size, device):
    """The detector's anchors for an image of `size`: feature map shapes from a meta-device pass
    of the feature extractor, anchors from the detector's own generator."""
    meta = copy.deepcopy(det.network.feature_extractor).to("meta")
    shapes = [tuple(v.shape[2:]) for v in meta(torch.empty(1, 1, *size, device="meta")).values()]
    image = torch.zeros(1, device=device).expand(1, 1, *size)
    maps = [torch.zeros(1, device=device).expand(1, 1, *s) for s in shapes]
    anchors = det.anchor_generator(image, maps)[0]
    return anchors, [math.prod(s) for s in shapes]


def head_outputs(anchors, workload, rng, device, n_candidates=None):
    n = anchors.shape[0]
    g = torch.Generator().manual_seed(int(rng.integers(1 << 30)))
    reg = (torch.randn(1, n, 6, generator=g) * 0.1).to(device)
    if workload == "iid":
        logits = torch.randn(1, n, 1, generator=g)
    else:  # peaks at 40 centres, sigma 8 voxels, plus noise
        centres = torch.tensor(rng.uniform([40, 40, 20], [472, 472, 172], (40, 3)), dtype=torch.float32)
        c = ((anchors[:, :3] + anchors[:, 3:]) / 2).cpu()
        near = torch.full((n,), float("inf"))
        for chunk in range(0, n, 1 << 20):
            d2 = torch.cdist(c[chunk:chunk + (1 << 20)], centres).pow(2).min(1).values
            near[chunk:chunk + (1 << 20)] = d2
        logits = 6 * torch.exp(-near / (2 * 8.0**2)) - 3 + 0.5 * torch.randn(n, generator=g)
        if workload == "sparse":  # a trained detector: background far below the threshold
            top = logits.topk(n_candidates).indices
            peaks = logits[top].clamp(min=-3.5)
            logits = -8 + 0.5 * torch.randn(n, generator=g)
            logits[top] = peaks
        logits = logits[None, :, None]
    return {"classification": logits.to(device), "box_regression": reg}


def set_topk(det, selector, n_candidates, levels):
    selector.topk_candidates_per_level = math.ceil(n_candidates / levels)
    det.box_selector = selector


def entering_nms(logits_list, selector):
    """How many candidates enter NMS: per level, scores above the threshold, at most topk."""
    total = 0
    for lg in logits_list:
        above = int((torch.sigmoid(lg.float()) > selector.score_thresh).sum())
        total += min(above, selector.topk_candidates_per_level)
    return total


def same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


def _mmap_large_allocations():
    """glibc serves allocations >= 64 KiB with fresh mmaps (and unmaps them when freed), so the
    peak RSS sees every large temporary instead of memory reused from the heap."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 16)  # M_MMAP_THRESHOLD
    except OSError:
        pass


def peak_extra_bytes(fn, cuda):
    """Peak memory of fn() above what was in use before it: CUDA allocator peak, or on the CPU
    the process's peak RSS (reset through /proc/self/clear_refs) minus its RSS before."""
    gc.collect()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base

    def status(key):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = status("VmRSS")
    fn()
    return status("VmHWM") - base


def bench_postprocess(det, sizes, workloads, device, cuda, rng):
    anchors, locs = anchors_for(det, WINDOW, device)
    levels = len(locs)
    monai_sel = det.box_selector
    deepem_sel = dm.use_deepem(monai_sel)
    deepem_det = dm.use_deepem(bundle_detector().to(device))
    rows = []
    for workload in workloads:
        per_level = [loc * det.num_anchors_per_loc for loc in locs]
        for n in sizes:
            split = 1 if workload == "sparse" else levels  # sparse: all N candidates enter NMS
            if workload == "sparse" or n == sizes[0]:
                heads = head_outputs(anchors, workload, rng, device, n)
            def post(detector):
                set_topk(detector, detector.box_selector, n, split)
                return detector.postprocess_detections(heads, [anchors], [list(WINDOW)], locs)[0]

            # the candidates alone: per level, the top ones by score, decoded
            set_topk(det, monai_sel, n, split)
            logits_l = list(heads["classification"][0].split(per_level))
            reg_l = list(heads["box_regression"][0].split(per_level))
            anc_l = list(anchors.split(per_level))
            boxes_c, logits_c = [], []
            for lg, rg, an in zip(logits_l, reg_l, anc_l):
                top = lg.flatten().topk(min(monai_sel.topk_candidates_per_level, lg.shape[0])).indices
                boxes_c.append(det.box_coder.decode_single(rg[top].float(), an[top]))
                logits_c.append(lg[top])
            n_in = entering_nms(logits_c, monai_sel)
            deepem_sel.topk_candidates_per_level = monai_sel.topk_candidates_per_level

            want = monai_sel.select_boxes_per_image(boxes_c, logits_c, WINDOW)
            got = deepem_sel.select_boxes_per_image(boxes_c, logits_c, WINDOW)
            assert same(want, got), "box selector: deepem and MONAI disagree"
            full_want, full_got = post(det), post(deepem_det)
            assert all(torch.equal(full_want[k], full_got[k]) for k in full_want), "postprocess disagrees"
            r = {"workload": workload, "candidates": n_in, "detections": int(want[0].shape[0]), "device": device}
            r["select_monai"] = timeit(lambda: monai_sel.select_boxes_per_image(boxes_c, logits_c, WINDOW),
                                       cuda=cuda, min_runs=3, budget=1.0)
            r["select_deepem"] = timeit(lambda: deepem_sel.select_boxes_per_image(boxes_c, logits_c, WINDOW),
                                        cuda=cuda, min_runs=5, budget=1.0)
            r["postprocess_monai"] = timeit(lambda: post(det), cuda=cuda, min_runs=3, budget=2.0)
            r["postprocess_deepem"] = timeit(lambda: post(deepem_det), cuda=cuda, min_runs=5, budget=2.0)
            rows.append(r)
            print("done postprocess %s %d %s" % (workload, n, device), file=sys.stderr)
    det.box_selector = monai_sel
    return rows


def bench_atss(det, device, cuda, rng):
    from monai.apps.detection.utils.ATSS_matcher import ATSSMatcher

    rows = []
    for name, size in [("train patch", PATCH), ("window", WINDOW)]:
        anchors, locs = anchors_for(det, size, device)
        gt = gt_boxes(size, device)
        want = dm.MONAI_FUNCTIONS["box_iou"](gt, anchors)
        got = dm.box_iou(gt, anchors)
        assert torch.equal(want, got) if not cuda else float((want - got).abs().max()) <= 1e-6
        r = {"case": name, "anchors": int(anchors.shape[0]), "gt": 3, "device": device}
        r["iou_monai"] = timeit(lambda: dm.MONAI_FUNCTIONS["box_iou"](gt, anchors), cuda=cuda, min_runs=3, budget=1.0)
        r["iou_deepem"] = timeit(lambda: dm.box_iou(gt, anchors), cuda=cuda, min_runs=3, budget=1.0)
        m_monai = ATSSMatcher(4, dm.MONAI_FUNCTIONS["box_iou"], center_in_gt=False)
        m_deepem = ATSSMatcher(4, dm.box_iou, center_in_gt=False)
        assert torch.equal(m_monai.compute_matches(gt, anchors, locs, 3)[1], m_deepem.compute_matches(gt, anchors, locs, 3)[1])
        r["match_monai"] = timeit(lambda: m_monai.compute_matches(gt, anchors, locs, 3), cuda=cuda, min_runs=3, budget=1.0)
        r["match_deepem"] = timeit(lambda: m_deepem.compute_matches(gt, anchors, locs, 3), cuda=cuda, min_runs=3, budget=1.0)
        if cuda:
            r["iou_peak_monai"] = peak_extra_bytes(lambda: dm.MONAI_FUNCTIONS["box_iou"](gt, anchors), cuda)
            r["iou_peak_deepem"] = peak_extra_bytes(lambda: dm.box_iou(gt, anchors), cuda)
        rows.append(r)
        print("done atss %s %s" % (name, device), file=sys.stderr)
    if not cuda:  # CPU peaks in a fresh process (see iou_peaks)
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--iou-peaks"], check=True,
                             capture_output=True, text=True).stdout
        for r, peaks in zip(rows, json.loads(out.strip().splitlines()[-1])):
            r.update(peaks)
    return rows


def gt_boxes(size, device):
    """3 nodule-like GT boxes (sides 4-30 voxels) inside an image of `size`, fixed by `size`."""
    rng = np.random.default_rng(sum(size))
    lo = torch.tensor(rng.uniform(10, np.array(size) - 40, (3, 3)), dtype=torch.float32)
    return torch.cat([lo, lo + torch.tensor(rng.uniform(4, 30, (3, 3)), dtype=torch.float32)], 1).to(device)


def iou_peaks():
    """CPU peak memory of the ATSS IoU, MONAI then deepem, per case: run in a fresh process
    whose heap holds no freed memory yet, with every large block a fresh mapping, so that the
    peak RSS sees each temporary. Prints one JSON line."""
    _mmap_large_allocations()
    det = bundle_detector()
    peaks = []
    for size in (PATCH, WINDOW):
        anchors, _ = anchors_for(det, size, "cpu")
        gt = gt_boxes(size, "cpu")
        dm.box_iou(gt[:1], anchors[:1])  # first-call setup outside the measurement
        peaks.append({"iou_peak_monai": peak_extra_bytes(lambda: dm.MONAI_FUNCTIONS["box_iou"](gt, anchors), False),
                      "iou_peak_deepem": peak_extra_bytes(lambda: dm.box_iou(gt, anchors), False)})
    print(json.dumps(peaks))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--candidates", default="1000,10000,50000")
    parser.add_argument("--workloads", default="iid,clustered,sparse")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument("--iou-peaks", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.iou_peaks:
        return iou_peaks()
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.candidates.split(",")]
    device, cuda = args.device, args.device == "cuda"
    rng = np.random.default_rng(0)
    det = bundle_detector()

    post = bench_postprocess(det, sizes, args.workloads.split(","), device, cuda, rng)
    atss = bench_atss(det, device, cuda, rng)

    x = lambda r, a, b: "%.1f" % (r[a] / r[b])
    print("RetinaNetDetector post-processing per image, MONAI's lung nodule configuration, %s, %d torch "
          "threads; window %s, %d detections max; x = MONAI time / deepem time"
          % (device, torch.get_num_threads(), "x".join(map(str, WINDOW)), SELECTOR["detections_per_img"]))
    rows = [[r["workload"], r["candidates"], r["detections"], fmt_ms(r["select_monai"]), fmt_ms(r["select_deepem"]),
             x(r, "select_monai", "select_deepem"), fmt_ms(r["postprocess_monai"]), fmt_ms(r["postprocess_deepem"]),
             x(r, "postprocess_monai", "postprocess_deepem")] for r in post]
    print_table(["workload", "candidates", "kept", "select monai ms", "select deepem ms", "x select",
                 "postprocess monai ms", "postprocess deepem ms", "x postprocess"], rows)
    print()
    print("ATSS matcher: IoU of 3 GT boxes with every anchor (similarity_fn), its peak memory above the "
          "inputs, and the whole compute_matches; %s" % device)
    mb = lambda v: "%.1f" % (v / 2**20)
    rows = [[r["case"], r["anchors"], fmt_ms(r["iou_monai"]), fmt_ms(r["iou_deepem"]), x(r, "iou_monai", "iou_deepem"),
             mb(r["iou_peak_monai"]), mb(r["iou_peak_deepem"]), fmt_ms(r["match_monai"]), fmt_ms(r["match_deepem"]),
             x(r, "match_monai", "match_deepem")] for r in atss]
    print_table(["case", "anchors", "iou monai ms", "iou deepem ms", "x iou", "peak monai MiB", "peak deepem MiB",
                 "match monai ms", "match deepem ms", "x match"], rows)
    if args.json:
        import monai

        write_json(args.json, {"benchmark": "monai", "machine": machine(), "monai": monai.__version__,
                               "deepem": deepem.__version__, "window": WINDOW, "train_patch": PATCH,
                               "selector": SELECTOR, "postprocess": post, "atss": atss})


if __name__ == "__main__":
    main()

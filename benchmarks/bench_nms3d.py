"""3D NMS: deepem (CPU 1 thread / all threads, CUDA) against the alternatives a user has.

Baselines, all in this process on the same boxes: a pure-torch greedy loop, MONAI's
non_max_suppression (when monai is installed), and torchvision's 2D nms on the same N
(the boxes' (y, x) faces) as the yardstick of a compiled kernel.

    python benchmarks/bench_nms3d.py [--sizes 1000,5000,20000,100000] [--json out.json]
"""
import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import fmt_ms, machine, print_table, timeit, with_threads, write_json  # noqa: E402

from deepem.ops import nms3d  # noqa: E402

THRESHOLD = 0.1  # DeepLung's post-processing IoU


def random_cubes(rng, n):
    """Cubes of side 3-30 anywhere in a 256^3 volume."""
    lo = rng.uniform(0, 256, (n, 3))
    side = rng.uniform(3, 30, (n, 1))
    return np.concatenate([lo, lo + side], 1)


def detector_like(rng, n, centres=40):
    """Many jittered boxes around a few dozen nodule centres, as a detector outputs them."""
    c = rng.uniform(20, 236, (centres, 3))
    d = rng.uniform(4, 30, centres)
    k = rng.integers(0, centres, n)
    centre = c[k] + rng.normal(0, 0.2, (n, 3)) * d[k, None]
    side = d[k, None] * rng.uniform(0.7, 1.3, (n, 1))
    return np.concatenate([centre - side / 2, centre + side / 2], 1)


def torch_greedy(boxes, scores, thr):
    """The pure-torch loop a user writes: pick the best, drop what overlaps it, repeat."""
    order = scores.argsort(descending=True, stable=True)
    boxes = boxes[order]
    vol = (boxes[:, 3:] - boxes[:, :3]).clamp(min=0).prod(1)
    alive = torch.ones(len(boxes), dtype=torch.bool)
    keep = []
    for i in range(len(boxes)):
        if not alive[i]:
            continue
        keep.append(i)
        lo = torch.maximum(boxes[i, :3], boxes[i + 1 :, :3])
        hi = torch.minimum(boxes[i, 3:], boxes[i + 1 :, 3:])
        inter = (hi - lo).clamp(min=0).prod(1)
        alive[i + 1 :] &= ~(inter > thr * (vol[i] + vol[i + 1 :] - inter))
    return order[torch.tensor(keep, dtype=torch.long)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,5000,20000,100000")
    parser.add_argument("--loop-max", type=int, default=20000, help="largest N for the Python-loop baselines")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    try:
        from monai.data.box_utils import non_max_suppression as monai_nms
    except ImportError:
        monai_nms = None
    try:
        from torchvision.ops import nms as tv_nms
    except Exception:  # torchvision missing or built for another torch
        tv_nms = None
    cuda = torch.cuda.is_available() and deepem_has_cuda()
    threads = torch.get_num_threads()

    results = []
    rng = np.random.default_rng(0)
    for workload, make in [("random", random_cubes), ("clusters", detector_like)]:
        for n in sizes:
            boxes = torch.tensor(make(rng, n), dtype=torch.float32)
            scores = torch.rand(n, generator=torch.Generator().manual_seed(n))
            r = {"workload": workload, "n": n}
            want = nms3d(boxes, scores, THRESHOLD)
            r["kept"] = len(want)
            r["deepem_cpu_1t"] = with_threads(1, lambda: timeit(lambda: nms3d(boxes, scores, THRESHOLD)))
            r["deepem_cpu_all"] = timeit(lambda: nms3d(boxes, scores, THRESHOLD))
            if cuda:
                bc, sc = boxes.cuda(), scores.cuda()
                assert torch.equal(nms3d(bc, sc, THRESHOLD).cpu(), want)
                r["deepem_cuda"] = timeit(lambda: nms3d(bc, sc, THRESHOLD), cuda=True)
            if n <= args.loop_max:
                got = torch_greedy(boxes, scores, THRESHOLD)
                assert torch.equal(got, want), "pure-torch loop disagrees with deepem"
                r["torch_loop"] = with_threads(1, lambda: timeit(lambda: torch_greedy(boxes, scores, THRESHOLD), min_runs=1))
                if monai_nms is not None:
                    xyz = boxes[:, [2, 1, 0, 5, 4, 3]]
                    r["monai_1t"] = with_threads(1, lambda: timeit(lambda: monai_nms(xyz, scores, THRESHOLD), min_runs=1))
            if tv_nms is not None:
                yx = boxes[:, [1, 2, 4, 5]].contiguous()
                r["torchvision2d_cpu_1t"] = with_threads(1, lambda: timeit(lambda: tv_nms(yx, scores, THRESHOLD)))
                if cuda:
                    yxc, sc = yx.cuda(), scores.cuda()
                    r["torchvision2d_cuda"] = timeit(lambda: tv_nms(yxc, sc, THRESHOLD), cuda=True)
            results.append(r)
            print("done %s n=%d" % (workload, n), file=sys.stderr)

    headers = ["workload", "N", "kept", "cpu 1t ms", "cpu %dt ms" % threads, "cuda ms",
               "torch loop ms", "monai 1t ms", "tv2d cpu 1t ms", "tv2d cuda ms",
               "x loop", "x monai", "x tv2d cpu", "x tv2d cuda"]
    rows = []
    for r in results:
        ratio = lambda base, ours: "-" if base not in r or ours not in r else "%.1f" % (r[base] / r[ours])
        rows.append([r["workload"], r["n"], r["kept"], fmt_ms(r["deepem_cpu_1t"]), fmt_ms(r["deepem_cpu_all"]),
                     fmt_ms(r.get("deepem_cuda")), fmt_ms(r.get("torch_loop")), fmt_ms(r.get("monai_1t")),
                     fmt_ms(r.get("torchvision2d_cpu_1t")), fmt_ms(r.get("torchvision2d_cuda")),
                     ratio("torch_loop", "deepem_cpu_1t"), ratio("monai_1t", "deepem_cpu_1t"),
                     ratio("torchvision2d_cpu_1t", "deepem_cpu_1t"), ratio("torchvision2d_cuda", "deepem_cuda")])
    print("3D NMS at IoU %.2f; x = baseline time / deepem time (CPU columns: 1 thread each)" % THRESHOLD)
    print_table(headers, rows)
    if args.json:
        write_json(args.json, {"benchmark": "nms3d", "machine": machine(), "threshold": THRESHOLD, "results": results})


def deepem_has_cuda():
    import deepem

    return deepem.build_info()["cuda_kernels"]


if __name__ == "__main__":
    main()

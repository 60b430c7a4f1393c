"""How hard are the phantoms? Classical untrained nodule detectors, scored with the LUNA16 FROC.

Two detectors, both multi-scale (Gaussian sigma 1-5 mm, scale-normalised by sigma^2) on the
scan resampled to 1 mm and clipped to [-1000, 200] HU, restricted to the lung mask (the seg-lungs mask after DeepLung's
per-slice convex hull, dilated 2 mm, so juxtapleural nodules are in it):
- the Hessian "dot" filter of Li, Sone and Doi (Med. Phys. 2003): |l3|^2 / |l1| where all
  three eigenvalues are negative (|l1| >= |l2| >= |l3|), 0 elsewhere;
- the Laplacian of Gaussian: -sigma^2 (Hzz + Hyy + Hxx).
Marks are the local maxima (5 mm neighbourhood) of the best response over the scales, at most
100 per scan, mapped to world (x, y, z); their score is the response. Fresh phantoms are made
in memory (seeds not used for training data); the FROC is deepem.eval.froc's, with a
bootstrap over scans.

    python benchmarks/bench_phantom.py [--preset demo luna16] [--scans 40 16] [--seed 1000]
        [--workers 1] [--json PATH] [--txt PATH]
"""
import argparse
import contextlib
import io as io_
import json
import os
import sys
import time

import numpy as np
from scipy import ndimage

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a checkout
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine, print_table  # noqa: E402

from deepem.data import io, lung_mask, phantom  # noqa: E402
from deepem.eval import froc  # noqa: E402

SIGMAS_MM = (1.0, 1.5, 2.2, 3.3, 5.0)
MAX_MARKS = 100
HU_RANGE = (-1000.0, 200.0)  # as CAD systems window: bone's edges are no nodules


def to_1mm(volume, seg, margin_mm=8.0):
    """HU and lung mask on a 1 mm grid over the lungs' box, and the source voxel of grid (0, 0, 0)."""
    sp = np.asarray(volume.spacing_zyx, dtype=np.float64)
    idx = np.nonzero(seg)
    lo = np.maximum(np.array([i.min() for i in idx]) - np.ceil(margin_mm / sp), 0)
    hi = np.minimum(np.array([i.max() for i in idx]) + np.ceil(margin_mm / sp), np.asarray(seg.shape) - 1)
    shape = tuple(int(v) for v in np.floor((hi - lo) * sp) + 1)
    scale = 1.0 / sp  # source voxels per output voxel
    hu = ndimage.affine_transform(volume.array.astype(np.float32), scale, offset=lo, output_shape=shape, order=1,
                                  mode="nearest")
    mask = ndimage.affine_transform((seg > 0).astype(np.uint8), scale, offset=lo, output_shape=shape, order=0) > 0
    mask = lung_mask.convex_hull_refine(mask)
    mask = ndimage.binary_dilation(mask, iterations=2)
    return hu, mask, lo, scale


def sym_eigvals(a, b, c, d, e, f):
    """Eigenvalues (descending) of the symmetric 3x3 [[a, d, e], [d, b, f], [e, f, c]], per voxel
    (the trigonometric closed form)."""
    q = (a + b + c) / 3
    p1 = d * d + e * e + f * f
    p2 = (a - q) ** 2 + (b - q) ** 2 + (c - q) ** 2 + 2 * p1
    p = np.sqrt(p2 / 6) + 1e-12
    ba, bb, bc = (a - q) / p, (b - q) / p, (c - q) / p
    bd, be, bf = d / p, e / p, f / p
    det = ba * (bb * bc - bf * bf) - bd * (bd * bc - bf * be) + be * (bd * bf - bb * be)
    phi = np.arccos(np.clip(det / 2, -1, 1)) / 3
    e1 = q + 2 * p * np.cos(phi)
    e3 = q + 2 * p * np.cos(phi + 2 * np.pi / 3)
    return e1, 3 * q - e1 - e3, e3


def responses(hu):
    """(dot, log): the best scale-normalised response of each filter over SIGMAS_MM."""
    dot = np.zeros(hu.shape, np.float32)
    log = np.full(hu.shape, -np.inf, np.float32)
    for s in SIGMAS_MM:
        g = ndimage.gaussian_filter(hu, s, truncate=3.0)
        d = np.gradient(g)
        hzz, hzy, hzx = np.gradient(d[0])
        hyy, hyx = np.gradient(d[1], axis=(1, 2))
        hxx = np.gradient(d[2], axis=2)
        del d, g
        n = np.float32(s * s)
        log = np.maximum(log, -n * (hzz + hyy + hxx))
        e1, _, e3 = sym_eigvals(hzz, hyy, hxx, hzy, hzx, hyx)
        z = np.where(e1 < 0, e1 * e1 / np.minimum(e3, -1e-6) * -1, 0).astype(np.float32) * n
        dot = np.maximum(dot, z)
    return dot, log


def marks_of(response, mask, lo, scale, volume):
    """Up to MAX_MARKS local maxima in the mask: [K, 4] world (x, y, z, score)."""
    peak = (response == ndimage.maximum_filter(response, size=5)) & mask & (response > 0)
    idx = np.argwhere(peak)
    score = response[peak]
    order = np.argsort(-score, kind="stable")[:MAX_MARKS]
    if len(order) == 0:
        return np.zeros((0, 4))
    world = io.voxel_to_world(lo + idx[order] * scale, volume.origin, volume.spacing, volume.direction)
    return np.concatenate([world, score[order, None].astype(np.float64)], 1)


def one_scan(args):
    seed, index, preset = args
    t0 = time.perf_counter()
    volume, seg, info = phantom.make_scan(seed, index, preset=preset)
    t1 = time.perf_counter()
    hu, mask, lo, scale = to_1mm(volume, seg)
    np.clip(hu, *HU_RANGE, out=hu)
    dot, log = responses(hu)
    marks = {"dot": marks_of(dot, mask, lo, scale, volume), "log": marks_of(log, mask, lo, scale, volume)}
    t2 = time.perf_counter()
    return dict(uid=phantom.series_uid(seed, index), marks=marks, nodules=info["nodules"], excluded=info["excluded"],
                types=info["types"], shape=list(volume.array.shape), grid_1mm=list(hu.shape),
                generate_s=t1 - t0, detect_s=t2 - t1)


def run_preset(preset, n_scans, seed, workers):
    jobs = [(seed, i, preset) for i in range(n_scans)]
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=workers) as pool:
            scans = list(pool.map(one_scan, jobs))
    else:
        scans = [one_scan(j) for j in jobs]
    uids = [s["uid"] for s in scans]
    ann = {s["uid"]: s["nodules"] for s in scans if len(s["nodules"])}
    excl = {s["uid"]: s["excluded"] for s in scans if len(s["excluded"])}
    out = {"preset": preset, "scans": n_scans, "seed": seed, "nodules": int(sum(len(s["nodules"]) for s in scans)),
           "generate_s_median": float(np.median([s["generate_s"] for s in scans])),
           "detect_s_median": float(np.median([s["detect_s"] for s in scans])),
           "voxels_median": float(np.median([np.prod(s["shape"]) for s in scans])),
           "voxels_1mm_median": float(np.median([np.prod(s["grid_1mm"]) for s in scans])),
           "types": {k: dict(zip(*np.unique([t[k] for s in scans for t in s["types"]], return_counts=True)))
                     for k in ("texture", "attachment", "shape")}}
    out["types"] = {k: {str(a): int(b) for a, b in v.items()} for k, v in out["types"].items()}
    for name in ("dot", "log"):
        r = froc.evaluate({s["uid"]: s["marks"][name] for s in scans}, ann, uids, excluded=excl, bootstrap=1000,
                          seed=0)
        out[name] = r.to_json()
    return out


def report_lines(results):
    """The printed table and one line per preset (printed, and returned for --txt)."""
    rows = []
    for r in results:
        for name, label in (("dot", "Hessian dot (Li 2003)"), ("log", "LoG")):
            f = r[name]
            rows.append([r["preset"], label, str(r["scans"]), str(r["nodules"]), "%.3f" % f["cpm"],
                         "[%.3f, %.3f]" % tuple(f["ci95"]["cpm"]), " ".join("%.2f" % v for v in f["sensitivity"])])
    buf = io_.StringIO()
    with contextlib.redirect_stdout(buf):
        print_table(["preset", "detector", "scans", "nodules", "CPM", "95% CI", "sens @ 1/8..8 FP/scan"], rows,
                    left=(0, 1))
    print(buf.getvalue(), end="")
    lines = buf.getvalue().splitlines()
    for r in results:
        msg = ("%s: %.2f s to generate a scan (median, %s voxels), %.2f s to detect; %s M voxels at 1 mm; types %s"
               % (r["preset"], r["generate_s_median"], "%.2fM" % (r["voxels_median"] / 1e6), r["detect_s_median"],
                  "%.2f" % (r["voxels_1mm_median"] / 1e6), json.dumps(r["types"])))
        print(msg)
        lines.append(msg)
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", nargs="+", default=["demo", "luna16"])
    p.add_argument("--scans", type=int, nargs="+", default=[40, 16], help="per preset")
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--json")
    p.add_argument("--txt")
    args = p.parse_args(argv)
    results = []
    for preset, n in zip(args.preset, args.scans):
        t = time.perf_counter()
        results.append(run_preset(preset, n, args.seed, args.workers))
        results[-1]["wall_s"] = time.perf_counter() - t
    lines = report_lines(results)
    report = {"machine": machine(), "sigmas_mm": SIGMAS_MM, "results": results}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    if args.txt:
        with open(args.txt, "w") as f:
            f.write("machine: %s\n" % json.dumps(report["machine"]) + "\n".join(lines) + "\n")
    return report


if __name__ == "__main__":
    main()

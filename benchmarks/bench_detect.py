"""Whole-scan detection benchmark: seconds per scan split into reading, network, post-processing
(decode + threshold + NMS) and mapping to world mm, with peak memory, for two paths side by side:
'deeplung' (DeepLung's 144-voxel tiles with 32-voxel margins, the module as it is, glibc's
malloc as it is: deepem's path before issue 33), 'planned_torchscript' (the fewest tiles that fit memory, a 16-voxel border,
the network as TorchScript's frozen graph: deepem's default before the fused path) and
'planned' (deepem's default: the same tiles, the network as oneDNN's fused convolutions in
channels_last_3d, deepem.infer.fused), with the network's achieved
GFLOP/s and its share of the CPU's fp32 peak; and, on the same network
outputs, DeepLung's post-processing (numpy decode of every anchor, threshold, pure-Python greedy
NMS, written the way its code does it) against deepem's (decode_boxes3d on the anchors above the
threshold, nms3d).

    python benchmarks/bench_detect.py [--json PATH] [--widths 0.25 1] [--tiles N] [--full]
                                      [--paths deeplung planned_torchscript planned]
                                      [--candidates K] [--threads T] [--device cpu|cuda] [--amp auto]

Cases: a phantom scan (deepem.data.phantom's 'demo' preset, a 128 x 128 x ~60 voxel window onto
one lung, preprocessed from its .mhd: the CPU demo's scans) and a LUNA16-size volume (that
scan's preprocessed volume resampled to 300 x 250 x 350 voxels: real image content, geometry
approximate; --real-luna makes a whole-chest phantom instead, minutes more). Random weights
(timing only). Each (case, width) runs in its own process, so peak RSS (getrusage) is that
case's.

On the deeplung path a LUNA16-size scan is 18 equal tiles (3 x 2 x 3 of 112 x 128 x 128 + 2 x 32
margin). Its network time is measured on --tiles of them (default 1) and scaled to all (stated in
the output; the planned paths always run every tile); the other tiles' outputs are copies of those computed (logits lowered by 1e-4 per
copy, so no two anchors tie), pasted by the detector's own stitching, so post-processing sees
a whole-scan output of real network values in the detector's layout. --full runs every tile
(phantom scans always run whole).

Random weights put logits anywhere; to time post-processing at a realistic load, the logits
are shifted so that --candidates anchors (default 1000 per scan) lie above the -2 threshold.
Both post-processing paths then keep diameter > 3 mm, NMS at IoU 0.1 and the best 100; the
script checks that they return the same marks.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a checkout
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine, print_table, timeit, write_json  # noqa: E402

from deepem.data import io, phantom, preprocess  # noqa: E402
from deepem.infer import Detector, Marks  # noqa: E402
from deepem.model import Res18  # noqa: E402

LUNA_SHAPE = (300, 250, 350)
THRESHOLD, NMS_IOU, MIN_D, MAX_MARKS = -2.0, 0.1, 3.0, 100


# ---- DeepLung's post-processing, as its code writes it (split_combine.py / layers.py) ----

def deeplung_getpbb(output, thresh, stride=4, anchors=(5.0, 10.0, 20.0)):
    """layers.GetPBB: decode every anchor in numpy, then keep logit > thresh."""
    anchors = np.asarray(anchors)
    output = np.copy(output)
    offset = (float(stride) - 1) / 2
    output_size = output.shape
    oz = np.arange(offset, offset + stride * (output_size[0] - 1) + 1, stride)
    oh = np.arange(offset, offset + stride * (output_size[1] - 1) + 1, stride)
    ow = np.arange(offset, offset + stride * (output_size[2] - 1) + 1, stride)
    output[:, :, :, :, 1] = oz.reshape((-1, 1, 1, 1)) + output[:, :, :, :, 1] * anchors.reshape((1, 1, 1, -1))
    output[:, :, :, :, 2] = oh.reshape((1, -1, 1, 1)) + output[:, :, :, :, 2] * anchors.reshape((1, 1, 1, -1))
    output[:, :, :, :, 3] = ow.reshape((1, 1, -1, 1)) + output[:, :, :, :, 3] * anchors.reshape((1, 1, 1, -1))
    output[:, :, :, :, 4] = np.exp(output[:, :, :, :, 4]) * anchors.reshape((1, 1, 1, -1))
    mask = output[..., 0] > thresh
    xx, yy, zz, aa = np.where(mask)
    return output[xx, yy, zz, aa]


def deeplung_iou(box0, box1):
    r0 = box0[3] / 2
    s0 = box0[:3] - r0
    e0 = box0[:3] + r0
    r1 = box1[3] / 2
    s1 = box1[:3] - r1
    e1 = box1[:3] + r1
    overlap = []
    for i in range(len(s0)):
        overlap.append(max(0, min(e0[i], e1[i]) - max(s0[i], s1[i])))
    intersection = overlap[0] * overlap[1] * overlap[2]
    union = box0[3] * box0[3] * box0[3] + box1[3] * box1[3] * box1[3] - intersection
    return intersection / union


def deeplung_nms(output, nms_th):
    if len(output) == 0:
        return output
    output = output[np.argsort(-output[:, 0], kind="stable")]  # DeepLung: quicksort; stable = same ties
    bboxes = [output[0]]
    for i in np.arange(1, len(output)):
        bbox = output[i]
        flag = 1
        for j in range(len(bboxes)):
            if deeplung_iou(bbox[1:5], bboxes[j][1:5]) > nms_th:  # DeepLung: >=; deepem's rule is >
                flag = -1
                break
        if flag == 1:
            bboxes.append(bbox)
    return np.asarray(bboxes, np.float32)


# ---- inputs ----

def prepare(folder, seed=0, real_luna=False):
    """The phantom scan (.mhd), its preprocessed scan, and the LUNA16-size volume, in `folder`."""
    vol, _, _ = phantom.make_scan(seed, 0, preset="demo")
    path = os.path.join(folder, "phantom.mhd")
    io.write_image(vol, path)
    t0 = time.perf_counter()
    meta = preprocess.preprocess_scan(path, folder, "phantom")
    raw_seconds = time.perf_counter() - t0
    info = {"phantom_source_shape": list(vol.array.shape), "phantom_spacing": list(vol.spacing),
            "phantom_shape": meta["shape"], "raw_preprocess_s": raw_seconds}
    if real_luna:  # a whole-chest phantom at 512 x 512 pixels (minutes to make and preprocess)
        big_vol, _, _ = phantom.make_scan(seed, 0, preset="luna16")
        path = os.path.join(folder, "luna.mhd")
        io.write_image(big_vol, path)
        t0 = time.perf_counter()
        preprocess.preprocess_scan(path, folder, "luna")
        info.update(luna_source_shape=list(big_vol.array.shape), luna_raw_preprocess_s=time.perf_counter() - t0,
                    luna_shape=list(np.load(os.path.join(folder, "luna_clean.npy"), mmap_mode="r").shape),
                    luna_input="phantom luna16 preset, preprocessed")
        return info
    from scipy import ndimage

    image = np.load(os.path.join(folder, "phantom_clean.npy"))
    zoom = np.asarray(LUNA_SHAPE) / np.asarray(image.shape)
    big = ndimage.zoom(image, zoom, order=1)
    luna_meta = dict(meta, seriesuid="luna", shape=list(big.shape),
                     resolution=float(meta["resolution"]) / float(zoom.mean()))
    np.save(os.path.join(folder, "luna_clean.npy"), big)
    with open(os.path.join(folder, "luna_meta.json"), "w") as f:
        json.dump(luna_meta, f)
    info.update(luna_shape=list(big.shape), luna_input="the phantom's preprocessed scan resampled (linear)")
    return info


# ---- one (case, width, path) in a child process ----

# today's path before planning (DeepLung's fixed tiles, the module as it is) and the planned one
PATHS = {"deeplung": dict(tile=144, margin=32, fast=False), "planned_torchscript": dict(fast="torchscript"),
         "planned": dict()}


def flop_per_voxel(width):
    """Forward FLOPs per input voxel of a Res18 of `width` (torch's FLOP counter, 32^3 input;
    multiply-add = 2 FLOPs)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = Res18(width).eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, 1, 32, 32, 32), torch.zeros(1, 3, 8, 8, 8))
    return counter.get_total_flops() / 32 ** 3


def peak_gflops(threads):
    """fp32 peak of `threads` cores: 2 FMA units x SIMD lanes x 2 FLOPs x the clock (cpu MHz),
    AVX-512 16 lanes, AVX2 8; an estimate (turbo and AVX clocks differ)."""
    mhz, lanes = None, 4
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("cpu MHz") and mhz is None:
                    mhz = float(line.split(":")[1])
                if line.startswith("flags"):
                    flags = line.split()
                    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    except OSError:
        pass
    return None if mhz is None else threads * 2 * lanes * 2 * mhz / 1e3

class FirstTiles(torch.nn.Module):
    """The network on the first `n` tile batches; later calls return copies of those outputs
    (logits lowered by 1e-4 per round, so no two anchors tie), so the detector's own tiling
    and stitching still run over the whole scan."""

    def __init__(self, model, n, sync):
        super().__init__()
        self.model, self.n, self.sync, self.outputs, self.calls, self.seconds = model, n, sync, [], 0, 0.0

    def forward(self, x, coord):
        self.calls += 1
        if len(self.outputs) < self.n:
            t0 = time.perf_counter()
            y = self.model(x, coord)
            self.sync()
            self.seconds += time.perf_counter() - t0
            self.outputs.append(y)
            return y
        k = self.calls - 1
        y = self.outputs[k % self.n].clone()
        y[..., 0] -= 1e-4 * (k // self.n)
        return y


def network_output(det, image, max_tiles):
    """(stitched output, seconds for all tiles, tiles run, tiles in the scan)."""
    tiles = len(det.split_comb(image.shape).starts(image.shape))
    if max_tiles is None or tiles <= max_tiles:
        t0 = time.perf_counter()
        out = det.network_output(image)
        det._sync()
        return out, time.perf_counter() - t0, tiles, tiles
    model = det.model
    det.model = FirstTiles(model, max_tiles, det._sync)
    try:
        out = det.network_output(image)
        seconds = det.model.seconds * tiles / max_tiles
    finally:
        det.model = model
    return out, seconds, max_tiles, tiles


def child(args):
    folder, case, width = args.folder, args.case, args.width
    torch.manual_seed(0)
    path = PATHS[args.path]
    det = Detector(Res18(width), device=args.device, tile_batch=1, amp=args.amp, threshold=THRESHOLD, **path)
    t0 = time.perf_counter()  # first-call setup (oneDNN / cuDNN, the TorchScript trace) outside the timings
    det.network_output(np.full((16, 16, 16), 170, np.uint8))
    setup_seconds = time.perf_counter() - t0
    rss_base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def read():
        image = np.load(os.path.join(folder, case + "_clean.npy"))
        with open(os.path.join(folder, case + "_meta.json")) as f:
            return image, json.load(f)

    t_read = timeit(read, min_runs=3, max_runs=3, budget=0)
    image, meta = read()
    max_tiles = None if (args.full or case == "phantom" or args.path.startswith("planned")) else args.tiles
    out, t_net, tiles_run, tiles = network_output(det, image, max_tiles)
    t_next = None
    if tiles_run == tiles:  # the same scan again: what each later scan of a run costs
        t_next = network_output(det, image, None)[1]
    # logits shifted so that `candidates` anchors pass the threshold (see the docstring)
    logits = out[..., 0].reshape(-1)
    k = min(args.candidates, logits.numel() - 1)
    top = logits.topk(k + 1).values
    out[..., 0] += THRESHOLD - (top[k - 1] + top[k]) / 2  # exactly k above the threshold

    def ours():
        return det.postprocess(det.decode(out), resolution=1.0)

    t_post = timeit(ours, min_runs=3, max_runs=20, budget=1.0, cuda=det.device.type == "cuda")
    cand = det.decode(out)
    t_decode = timeit(lambda: det.decode(out), min_runs=3, max_runs=20, budget=0.5, cuda=det.device.type == "cuda")
    t_nms = timeit(lambda: det.postprocess(cand, resolution=1.0), min_runs=3, max_runs=20, budget=0.5,
                   cuda=det.device.type == "cuda")
    kept = ours()
    t_map = timeit(lambda: Marks.from_grid(kept, meta, case), min_runs=3, max_runs=20, budget=0.2)
    out_np = out.cpu().numpy()
    t0 = time.perf_counter()
    pbb = deeplung_getpbb(out_np, THRESHOLD)
    t1 = time.perf_counter()
    theirs = deeplung_nms(pbb[pbb[:, 4] > MIN_D], NMS_IOU)[:MAX_MARKS]
    t2 = time.perf_counter()
    t_deeplung = t2 - t0
    ours_np = kept.cpu().numpy()
    same = len(theirs) == len(ours_np) and np.allclose(theirs, ours_np, rtol=1e-4, atol=1e-3)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gpu_peak = torch.cuda.max_memory_allocated() / 2 ** 20 if det.device.type == "cuda" else None
    total = t_read + t_net + t_post + t_map
    tile_shape = list(det.split_comb(image.shape).tile_shape)
    flop_voxel = flop_per_voxel(width)
    computed = flop_voxel * tiles * float(np.prod(tile_shape))
    useful = flop_voxel * float(np.prod(image.shape))
    return {"case": case, "width": width, "path": args.path, "detector": {k: str(v) for k, v in path.items()},
            "amp_chosen": det.amp, "setup_s": setup_seconds,
            "shape": list(image.shape), "tiles": tiles, "tiles_timed": tiles_run,
            "tile_shape": tile_shape, "output_shape": list(out.shape),
            "flop_per_voxel": flop_voxel, "gflop_computed": computed / 1e9, "gflop_scan": useful / 1e9,
            "gflops_achieved": computed / 1e9 / t_net, "gflops_useful": useful / 1e9 / t_net,
            "candidates": int(k), "marks": int(len(ours_np)), "same_marks_as_deeplung_path": bool(same),
            "seconds": {"read": t_read, "network": t_net, "network_next_scan": t_next, "postprocess": t_post, "mapping": t_map, "total": total,
                        "deeplung_postprocess": t_deeplung},
            "postprocess_parts": {"decode_threshold": t_decode, "diameter_nms_cap": t_nms},
            "deeplung_parts": {"decode_all_threshold": t1 - t0, "diameter_python_nms_cap": t2 - t1},
            "postprocess_speedup": t_deeplung / t_post, "postprocess_share": t_post / total,
            "peak_rss_mb": peak, "rss_after_setup_mb": rss_base, "gpu_peak_mb": gpu_peak}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the results to this path")
    ap.add_argument("--widths", type=float, nargs="+", default=[0.25, 1.0])
    ap.add_argument("--cases", nargs="+", default=["phantom", "luna"], choices=["phantom", "luna"])
    ap.add_argument("--tiles", type=int, default=1,
                    help="tiles of the LUNA16-size scan timed, then scaled to all (default 1)")
    ap.add_argument("--full", action="store_true", help="run every tile of every scan")
    ap.add_argument("--candidates", type=int, default=1000, help="anchors above the threshold (default 1000)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--real-luna", action="store_true",
                    help="LUNA16-size case from the phantom's luna16 preset (512 x 512 pixels), not a resampled "
                    "demo scan (adds minutes)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", default="none", choices=["auto", "none", "bf16", "fp16"])
    ap.add_argument("--paths", nargs="+", default=list(PATHS), choices=list(PATHS),
                    help="deeplung: DeepLung's 144-voxel tiles, 32-voxel margins, the module as it is; "
                    "planned_torchscript: the fewest tiles that fit memory, 16-voxel border, TorchScript on the CPU; "
                    "planned: deepem's default (those tiles, oneDNN's fused convolutions on the CPU)")
    ap.add_argument("--path", default="planned", help=argparse.SUPPRESS)
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--width", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.case:  # child: one (case, width)
        print(json.dumps(child(args)))
        return
    info = machine()
    threads = args.threads or torch.get_num_threads()
    results = {"machine": info, "threads": threads, "device": args.device, "amp": args.amp,
               "candidates": args.candidates, "tiles_timed": "all" if args.full else args.tiles,
               "threshold": THRESHOLD, "nms_iou": NMS_IOU, "min_diameter_mm": MIN_D, "max_marks": MAX_MARKS,
               "targets": "post-processing >= 100x the DeepLung path and < 5% of a scan's time", "runs": []}
    print("detection benchmark: %s, %d threads, load average %.1f" % (args.device, threads,
          info["load_average_1min"] or 0), file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="bench-detect-") as folder:
        results["inputs"] = prepare(folder, real_luna=args.real_luna)
        for case, width, path in [(c, w, p) for c in args.cases for w in args.widths for p in args.paths]:
            cmd = [sys.executable, os.path.abspath(__file__), "--case", case, "--width", repr(width), "--path", path,
                   "--folder", folder, "--tiles", str(args.tiles), "--candidates", str(args.candidates),
                   "--device", args.device, "--amp", args.amp] + (["--full"] if args.full else []) \
                + (["--threads", str(args.threads)] if args.threads else [])
            t0 = time.perf_counter()
            # the path before issue 33 ran without deepem.heap: its freed memory went back to the kernel
            env = dict(os.environ, **({"DEEPEM_KEEP_FREED_MEMORY": "0"} if path == "deeplung" else {}))
            done = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if done.returncode:
                sys.stderr.write(done.stderr)
                raise SystemExit("bench_detect: the %s / width %g / %s run failed" % (case, width, path))
            results["runs"].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print("done %s width %g %s (%.0f s)" % (case, width, path, time.perf_counter() - t0), file=sys.stderr)
    peak = peak_gflops(threads) if args.device == "cpu" else None
    results["peak_gflops_estimate"] = peak
    base = {(r["case"], r["width"]): r["seconds"]["network"] for r in results["runs"] if r["path"] == "deeplung"}
    rows = []
    for r in results["runs"]:
        s = r["seconds"]
        tiles = "%d" % r["tiles"]
        if r["tiles_timed"] < r["tiles"]:
            tiles += " (%d timed)" % r["tiles_timed"]
        old = base.get((r["case"], r["width"]))
        rows.append([r["case"], "x".join(map(str, r["shape"])), "%g" % r["width"], r["path"], r["amp_chosen"], tiles,
                     "x".join(map(str, r["tile_shape"])), "%.2f" % s["total"], "%.2f" % s["network"],
                     "%.2f" % s["network_next_scan"] if s.get("network_next_scan") else "-",
                     "%.1fx" % (old / s["network"]) if old else "-", "%.0f" % r["gflops_achieved"],
                     "%.0f" % r["gflops_useful"], "%.0f%%" % (100 * r["gflops_achieved"] / peak) if peak else "-",
                     "%.1f" % (s["postprocess"] * 1e3), "%.2f" % s["deeplung_postprocess"],
                     "%.0f" % r["peak_rss_mb"], "yes" if r["same_marks_as_deeplung_path"] else "NO"])
    print_table(["case", "voxels", "width", "path", "amp", "tiles", "tile", "s/scan", "network s", "next scan s", "x network",
                 "GFLOP/s", "scan GFLOP/s", "of peak", "post ms", "DeepLung post s", "peak RSS MB",
                 "same marks"], rows, left=(0, 3, 4))
    print("network s: the first scan's network time in a fresh process (after a 16^3 warm-up); next scan s: the "
          "same scan's again (oneDNN's primitives, the packed weights and the freed memory kept, as for each later "
          "scan of a run; the paths timed on some tiles: -)")
    print("x network: the deeplung path's network time / this path's (same case and width, same run). GFLOP/s: "
          "the FLOPs computed (every tile voxel, %s FLOP per voxel at width 1) per second; scan GFLOP/s: those "
          "of the scan's own voxels only; of peak: GFLOP/s against an fp32 peak estimate of %s GFLOP/s for %d "
          "cores (2 FMA x SIMD lanes x 2 x the clock)" % (
              "%.0fk" % (flop_per_voxel(1.0) / 1e3), "%.0f" % peak if peak else "?", threads))
    inp = results["inputs"]
    print("phantom: %s source voxels, spacing %s mm -> %s preprocessed (raw preprocessing %.1f s, not in s/scan); "
          "LUNA16-size: %s (%s); %d candidates above the threshold per scan"
          % ("x".join(map(str, inp["phantom_source_shape"])), "x".join("%.3g" % v for v in inp["phantom_spacing"]),
             "x".join(map(str, inp["phantom_shape"])), inp["raw_preprocess_s"], "x".join(map(str, inp["luna_shape"])),
             inp["luna_input"], args.candidates))
    for r in results["runs"]:
        p = r["postprocess_parts"]
        q = r["deeplung_parts"]
        print("%s width %g: post-processing = decode + threshold %.1f ms, diameter + NMS + cap %.1f ms "
              "(DeepLung: %.0f ms, %.0f ms; %d marks); network %s"
              % (r["case"], r["width"], p["decode_threshold"] * 1e3, p["diameter_nms_cap"] * 1e3,
                 q["decode_all_threshold"] * 1e3, q["diameter_python_nms_cap"] * 1e3, r["marks"],
                              "timed on %d of %d tiles, scaled" % (r["tiles_timed"], r["tiles"])
                              if r["tiles_timed"] < r["tiles"] else "all tiles"))
    if args.json:
        write_json(args.json, results)
        print("wrote %s" % args.json, file=sys.stderr)


if __name__ == "__main__":
    main()

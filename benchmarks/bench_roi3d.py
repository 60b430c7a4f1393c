"""3D RoI align: deepem (CPU 1 thread / all threads, CUDA) against a grid_sample reference.

The reference is what a user writes with PyTorch alone: the sample points of every bin
(sampling_ratio per axis) gathered by torch.nn.functional.grid_sample (border padding and a
mask for the samples outside the volume, torchvision's convention), then averaged per bin;
its backward is grid_sample's autograd. Forward and backward (input gradient) are timed on the
same rois, output 7^3, sampling_ratio 2, aligned=True. The reference's cost is linear in the
roi count (it runs in chunks of 64 rois), so it is timed on --ref-rois rois and scaled to K;
deepem is timed at every K. roi_pool3d is timed alongside (no baseline).

    python benchmarks/bench_roi3d.py [--quick] [--rois 128,512,2048] [--json out.json]
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import fmt_ms, machine, print_table, timeit, with_threads, write_json  # noqa: E402

from deepem.ops import roi_align3d  # noqa: E402
from deepem.ops.roi import roi_pool3d_with_argmax  # noqa: E402

OPS = torch.ops.deepem
OUT = (7, 7, 7)
SAMPLING = 2
# (name, batch, channels, size): DeepEM's 24^3 feature map (stride 4 on 96^3 crops) and 48^3.
MAPS = [("C128 24^3 x4", 4, 128, 24), ("C64 48^3 x2", 2, 64, 48)]


# Median of up to 5 runs within 1 s after a warm-up; a first call over 0.5 s is the measurement.
TIMING = dict(min_runs=1, max_runs=5, budget=1.0, first_is_enough=True)


def random_rois(gen, k, batch, size):
    """Cubes-ish rois of side 2..size/2 inside the map (nodule proposals)."""
    side = 2 + torch.rand(k, 3, generator=gen) * (size / 2 - 2)
    lo = torch.rand(k, 3, generator=gen) * (size - side)
    b = torch.randint(0, batch, (k, 1), generator=gen).float()
    return torch.cat([b, lo, lo + side], 1)


def grid_sample_roi_align(x, rois, chunk=64):
    """The reference (aligned=True, fixed SAMPLING), rois in chunks to bound memory."""
    g, P = SAMPLING, OUT[0]
    sizes = torch.tensor(x.shape[2:], dtype=x.dtype, device=x.device)
    steps = (torch.arange(P * g, device=x.device, dtype=x.dtype) + 0.5) / g  # in bins
    outs = []
    for s in range(0, rois.shape[0], chunk):
        r = rois[s : s + chunk]
        start = r[:, 1:4] - 0.5
        binsz = (r[:, 4:7] - r[:, 1:4]) / P
        c = start[:, :, None] + binsz[:, :, None] * steps  # [k, 3, P*g]
        mask = ((c >= -1) & (c <= sizes[:, None])).to(x.dtype)
        c = torch.minimum(c.clamp(min=0), sizes[:, None] - 1)
        n = 2 * c / (sizes[:, None] - 1) - 1
        k = r.shape[0]
        L = P * g
        grid = torch.stack(
            [
                n[:, 2, None, None, :].expand(k, L, L, L),
                n[:, 1, None, :, None].expand(k, L, L, L),
                n[:, 0, :, None, None].expand(k, L, L, L),
            ],
            dim=-1,
        )
        m = mask[:, 0, :, None, None] * mask[:, 1, None, :, None] * mask[:, 2, None, None, :]
        b = r[:, 0].long()
        vals = []
        for bi in b.unique().tolist():
            sel = (b == bi).nonzero()[:, 0]
            v = F.grid_sample(x[bi : bi + 1], grid[sel].reshape(1, -1, L, L, 3), mode="bilinear",
                              padding_mode="border", align_corners=True)
            vals.append((sel, v[0].reshape(x.shape[1], -1, L, L, L).transpose(0, 1)))
        res = torch.cat([v for _, v in vals])[torch.cat([s for s, _ in vals]).argsort()]
        res = res * m[:, None]
        outs.append(res.reshape(k, x.shape[1], P, g, P, g, P, g).mean(dim=(3, 5, 7)))
    return torch.cat(outs)


def bench_deepem(x, rois, device, threads):
    """Forward / backward seconds of deepem's roi_align3d and roi_pool3d."""
    cuda = device.type == "cuda"
    x, rois = x.to(device), rois.to(device)
    grad = torch.randn(rois.shape[0], x.shape[1], *OUT, device=device)
    shape = list(x.shape)
    _, argmax = roi_pool3d_with_argmax(x, rois, OUT)
    fns = [
        ("deepem_fwd", lambda: roi_align3d(x, rois, OUT, 1.0, SAMPLING, True)),
        ("deepem_bwd", lambda: OPS._roi_align3d_backward(grad, rois, shape, 1.0, SAMPLING, True)),
        ("pool_fwd", lambda: roi_pool3d_with_argmax(x, rois, OUT)),
        ("pool_bwd", lambda: OPS._roi_pool3d_backward(grad, rois, argmax, shape)),
    ]
    res = {}
    for name, fn in fns:
        if cuda:
            res[name] = timeit(fn, cuda=True, **TIMING)
        else:
            for n in threads:
                res["%s_%dt" % (name, n)] = with_threads(n, lambda: timeit(fn, **TIMING))
    return res


def bench_reference(x, rois, device, threads):
    """Seconds per roi of the grid_sample reference, forward and backward (its autograd
    backward, less its forward), timed on `rois`; also checks deepem's answer on them."""
    cuda = device.type == "cuda"
    x, rois = x.to(device), rois.to(device)
    grad = torch.randn(rois.shape[0], x.shape[1], *OUT, device=device)
    xr = x.detach().requires_grad_()
    out = {}

    def ref_fwd():
        with torch.no_grad():
            out["ref"] = grid_sample_roi_align(x, rois)

    def ref_fwd_bwd():
        grid_sample_roi_align(xr, rois).backward(grad)
        xr.grad = None

    def run(fn):
        if cuda:
            return timeit(fn, cuda=True, **TIMING)
        return with_threads(max(threads), lambda: timeit(fn, **dict(TIMING, budget=0.5, max_runs=2)))

    fwd = run(ref_fwd)
    bwd = max(run(ref_fwd_bwd) - fwd, 1e-9)
    # Same answer (loose: float32 sums in another order).
    torch.testing.assert_close(roi_align3d(x, rois, OUT, 1.0, SAMPLING, True), out["ref"],
                               rtol=1e-4, atol=1e-4)
    k = rois.shape[0]
    return fwd / k, bwd / k


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rois", default="128,512,2048", help="comma-separated roi counts")
    parser.add_argument("--quick", action="store_true", help="128 and 512 rois, 24^3 map only")
    parser.add_argument("--ref-rois", type=int, default=64,
                        help="rois on which the reference is timed (scaled to each K)")
    parser.add_argument("--no-cuda", action="store_true")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    ks = [int(k) for k in args.rois.split(",")]
    maps = MAPS
    if args.quick:
        ks, maps = [k for k in ks if k <= 512] or ks[:1], MAPS[:1]
    all_threads = torch.get_num_threads()
    threads = sorted({1, all_threads})
    devices = [torch.device("cpu")]
    if torch.cuda.is_available() and not args.no_cuda:
        devices.append(torch.device("cuda"))

    gen = torch.Generator().manual_seed(0)
    records = []
    for name, batch, channels, size in maps:
        x = torch.randn(batch, channels, size, size, size, generator=gen)
        rois_all = random_rois(gen, max(ks), batch, size)
        for dev in devices:
            # The reference costs the same per roi at any K (chunks of 64 rois): timed on
            # the first ref_rois rois and scaled to K, which keeps the run short.
            ref_k = min(args.ref_rois, max(ks))
            ref_fwd, ref_bwd = bench_reference(x, rois_all[:ref_k], dev, threads)
            for k in ks:
                r = bench_deepem(x, rois_all[:k], dev, threads)
                r.update(ref_fwd=ref_fwd * k, ref_bwd=ref_bwd * k, ref_rois_timed=ref_k)
                records.append({"map": name, "rois": k, "device": dev.type, **r})
                print("done %s K=%d %s" % (name, k, dev.type), flush=True)

    print("\nroi_align3d, output 7^3, sampling_ratio %d, float32; times in ms; "
          "ratio x = reference / deepem (all threads); reference timed on %d rois and "
          "scaled to K" % (SAMPLING, records[0]["ref_rois_timed"]))
    t = max(threads)
    headers = ["map", "K", "dev", "fwd 1t", "fwd %dt" % t, "ref fwd", "x fwd",
               "bwd 1t", "bwd %dt" % t, "ref bwd", "x bwd", "pool fwd", "pool bwd"]
    rows = []
    for r in records:
        if r["device"] == "cpu":
            f1, ft = r["deepem_fwd_1t"], r["deepem_fwd_%dt" % t]
            b1, bt = r["deepem_bwd_1t"], r["deepem_bwd_%dt" % t]
            pf, pb = r["pool_fwd_%dt" % t], r["pool_bwd_%dt" % t]
        else:
            f1 = ft = r["deepem_fwd"]
            b1 = bt = r["deepem_bwd"]
            pf, pb = r["pool_fwd"], r["pool_bwd"]
        r["speedup_fwd"] = r["ref_fwd"] / ft
        r["speedup_bwd"] = r["ref_bwd"] / bt
        rows.append([r["map"], r["rois"], r["device"],
                     fmt_ms(f1, 1), fmt_ms(ft, 1), fmt_ms(r["ref_fwd"], 1), "%.1f" % r["speedup_fwd"],
                     fmt_ms(b1, 1), fmt_ms(bt, 1), fmt_ms(r["ref_bwd"], 1), "%.1f" % r["speedup_bwd"],
                     fmt_ms(pf, 1), fmt_ms(pb, 1)])
    print_table(headers, rows)
    if args.json:
        write_json(args.json, {"machine": machine(), "threads": threads, "results": records})


if __name__ == "__main__":
    main()

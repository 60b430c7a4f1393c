"""Reference 3D RoI align / RoI pooling (torchvision's 2D conventions on three axes).

- roi_align3d_grid_sample: built from torch.nn.functional.grid_sample, differentiable (the
  input gradient through autograd is the reference for the backward pass).
- roi_align3d_loops: plain float64 Python loops, sample by sample (tiny inputs only); checks
  the grid_sample reference itself.
- roi_pool3d_reference: numpy loops per bin, with the argmax.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F


def _finite(roi):
    return all(math.isfinite(float(v)) for v in roi[1:])


def _align_axis(lo, hi, scale, pooled, sampling_ratio, aligned):
    off = 0.5 if aligned else 0.0
    start = lo * scale - off
    size = hi * scale - off - start
    if not aligned:
        size = max(size, 1.0)
    bin_ = size / pooled
    grid = sampling_ratio if sampling_ratio > 0 else max(int(math.ceil(bin_)), 0)
    return start, bin_, grid


def _sample_coords(start, bin_, grid, pooled):
    """Sample coordinates of all bins along one axis, [pooled * grid], bin-major."""
    p = torch.arange(pooled, dtype=torch.float64).repeat_interleave(grid)
    i = torch.arange(grid, dtype=torch.float64).repeat(pooled)
    return start + p * bin_ + (i + 0.5) * (bin_ / grid)


def roi_align3d_grid_sample(input, rois, output_size, spatial_scale=1.0, sampling_ratio=-1,
                            aligned=False):
    """[N, C, D, H, W] x [K, 7] -> [K, C, d, h, w] in float64 (differentiable in input)."""
    x = input.double()
    rois = rois.double().cpu()
    K, C = rois.shape[0], x.shape[1]
    sizes = x.shape[2:]
    outs = []
    for k in range(K):
        roi = rois[k].tolist()
        if not _finite(roi):
            outs.append(torch.full((C, *output_size), float("nan"), dtype=torch.float64))
            continue
        axes = [
            _align_axis(roi[1 + a], roi[4 + a], spatial_scale, output_size[a], sampling_ratio, aligned)
            for a in range(3)
        ]
        if any(g == 0 for _, _, g in axes):
            outs.append(x.new_zeros((C, *output_size)))
            continue
        coords, masks, norms = [], [], []
        for a, (start, bin_, grid) in enumerate(axes):
            c = _sample_coords(start, bin_, grid, output_size[a])
            n = sizes[a]
            masks.append(((c >= -1) & (c <= n)).double())
            c = c.clamp(0, max(n - 1, 0))  # torchvision clamps into the volume
            norms.append(2 * c / (n - 1) - 1 if n > 1 else torch.zeros_like(c))
        gz, gy, gx = torch.meshgrid(*norms, indexing="ij")
        grid = torch.stack([gx, gy, gz], dim=-1)[None]  # grid_sample wants (x, y, z)
        b = int(roi[0])
        v = F.grid_sample(x[b : b + 1], grid, mode="bilinear", padding_mode="border",
                          align_corners=True)[0]
        mask = masks[0][:, None, None] * masks[1][None, :, None] * masks[2][None, None, :]
        v = v * mask
        (_, _, g0), (_, _, g1), (_, _, g2) = axes
        d, h, w = output_size
        v = v.reshape(C, d, g0, h, g1, w, g2).sum(dim=(2, 4, 6)) / (g0 * g1 * g2)
        outs.append(v)
    if not outs:
        return x.new_zeros((0, C, *output_size))
    return torch.stack(outs)


def _linear(v, n):
    if v < -1.0 or v > n:
        return None
    v = max(v, 0.0)
    lo = int(v)
    if lo >= n - 1:
        return [(n - 1, 1.0)]
    f = v - lo
    return [(lo, 1.0 - f), (lo + 1, f)]


def roi_align3d_loops(input, rois, output_size, spatial_scale=1.0, sampling_ratio=-1,
                      aligned=False):
    """Sample-by-sample float64 loops (torchvision's bilinear_interpolate on three axes)."""
    x = input.double().numpy()
    rois = rois.double().numpy()
    K, C = rois.shape[0], x.shape[1]
    D, H, W = x.shape[2:]
    out = np.zeros((K, C, *output_size))
    for k in range(K):
        roi = rois[k]
        if not _finite(roi):
            out[k] = np.nan
            continue
        axes = [
            _align_axis(roi[1 + a], roi[4 + a], spatial_scale, output_size[a], sampling_ratio, aligned)
            for a in range(3)
        ]
        count = max(axes[0][2] * axes[1][2] * axes[2][2], 1)
        plane = x[int(roi[0])]
        for pz in range(output_size[0]):
            for py in range(output_size[1]):
                for px in range(output_size[2]):
                    acc = np.zeros(C)
                    for iz in range(axes[0][2]):
                        z = axes[0][0] + pz * axes[0][1] + (iz + 0.5) * axes[0][1] / axes[0][2]
                        for iy in range(axes[1][2]):
                            y = axes[1][0] + py * axes[1][1] + (iy + 0.5) * axes[1][1] / axes[1][2]
                            for ix in range(axes[2][2]):
                                xx = axes[2][0] + px * axes[2][1] + (ix + 0.5) * axes[2][1] / axes[2][2]
                                lz, ly, lx = _linear(z, D), _linear(y, H), _linear(xx, W)
                                if lz is None or ly is None or lx is None:
                                    continue
                                for zi, wz in lz:
                                    for yi, wy in ly:
                                        for xi, wx in lx:
                                            acc += wz * wy * wx * plane[:, zi, yi, xi]
                    out[k, :, pz, py, px] = acc / count
    return torch.from_numpy(out)


def _round_half_away(v):
    return math.copysign(math.floor(abs(v) + 0.5), v)


def roi_pool3d_reference(input, rois, output_size, spatial_scale=1.0):
    """(output, argmax) of RoI max pooling; bin edges computed in the input's dtype (float32
    or float64) as the kernels do, so that edge voxels agree exactly."""
    dt = np.float64 if input.dtype == torch.float64 else np.float32
    x = input.cpu().to(torch.float64 if dt is np.float64 else torch.float32).numpy()
    r = rois.cpu().to(torch.float64 if dt is np.float64 else torch.float32).numpy()
    K, C = r.shape[0], x.shape[1]
    sizes = x.shape[2:]
    out = np.zeros((K, C, *output_size), dtype=x.dtype)
    arg = np.full((K, C, *output_size), -1, dtype=np.int64)
    for k in range(K):
        roi = r[k]
        if not _finite(roi):
            out[k] = np.nan
            continue
        ranges = []
        for a in range(3):
            start = int(_round_half_away(float(dt(roi[1 + a]) * dt(spatial_scale))))
            stop = int(_round_half_away(float(dt(roi[4 + a]) * dt(spatial_scale))))
            bin_ = dt(max(stop - start, 1)) / dt(output_size[a])
            rng = []
            for p in range(output_size[a]):
                b = int(math.floor(dt(p) * bin_)) + start
                e = int(math.ceil(dt(p + 1) * bin_)) + start
                rng.append((min(max(b, 0), sizes[a]), min(max(e, 0), sizes[a])))
            ranges.append(rng)
        plane = x[int(roi[0])]
        for pz, (z0, z1) in enumerate(ranges[0]):
            for py, (y0, y1) in enumerate(ranges[1]):
                for px, (x0, x1) in enumerate(ranges[2]):
                    if z1 <= z0 or y1 <= y0 or x1 <= x0:
                        continue
                    region = plane[:, z0:z1, y0:y1, x0:x1].reshape(C, -1)
                    j = np.argmax(region, axis=1)  # first max; the first NaN if any
                    dz, rem = np.divmod(j, (y1 - y0) * (x1 - x0))
                    dy, dx = np.divmod(rem, x1 - x0)
                    out[k, :, pz, py, px] = region[np.arange(C), j]
                    arg[k, :, pz, py, px] = ((z0 + dz) * sizes[1] + y0 + dy) * sizes[2] + x0 + dx
    return torch.from_numpy(out), torch.from_numpy(arg)


def random_rois(gen, num, batch, size, scale=1.0, outside=0.2, dtype=torch.float64):
    """[num, 7] rois in input coordinates (before spatial_scale) on an [batch, ., *size]
    input: mostly inside, some partly outside, sizes from zero to the whole volume."""
    size_t = torch.tensor(size, dtype=torch.float64) / scale
    lo = (torch.rand(num, 3, generator=gen, dtype=torch.float64) * (1 + 2 * outside) - outside) * size_t
    ext = torch.rand(num, 3, generator=gen, dtype=torch.float64) * size_t * 0.8
    b = torch.randint(0, batch, (num, 1), generator=gen).double()
    return torch.cat([b, lo, lo + ext], dim=1).to(dtype)

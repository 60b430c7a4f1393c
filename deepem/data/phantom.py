"""Synthetic chest CTs in LUNA16 layout: the data that ships with deepem.

Each scan holds a body (fat rim, soft tissue, spine and ribs), two lungs (about -860 HU with a
smooth texture), vessel trees as tapered tubes, bright non-nodule distractors (rods and disks:
the false positives a detector must learn to reject) and nodules as soft spheres 3-30 mm,
rendered with partial volume (supersampled voxels), a small blur and noise. Spacing is
anisotropic (about 0.7 x 0.7 x 1.25-2.5 mm) and origins are non-zero. Every nodule gets a lobe
(0..5, tables.LOBES) from its position in its lung.

Anatomy is built along the array axes: with the identity direction axis 0 runs foot to head
(world z), axis 1 front to back (y) and axis 2 right to left (x), as in LUNA16 (LPS). A scan is
a pure function of (seed, index): the same seed gives the same bytes whatever the worker count.
"""
import json
import os
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from . import io, tables

AIR_HU, FAT_HU, SOFT_HU, BONE_HU, LUNG_HU, VESSEL_HU = -1000.0, -100.0, 40.0, 650.0, -860.0, 30.0
SEG_RIGHT, SEG_LEFT = 3, 4  # LUNA16 seg-lungs values
Z_SPACINGS = (1.25, 1.5, 2.0, 2.5)


@dataclass
class Lung:
    centre: np.ndarray  # array-mm (z, y, x)
    axes: np.ndarray  # semi-axes (z, y, x) mm
    right: bool


def lobe_of(point_mm, lung: Lung) -> int:
    """Lobe from the position in the lung: the oblique fissure runs from high at the back to low
    at the front (behind and below it is the lower lobe); above it the right lung splits at a
    horizontal fissure into upper and middle lobes, the left into upper lobe and lingula."""
    rel = (np.asarray(point_mm, dtype=np.float64) - lung.centre) / lung.axes
    height = (rel[0] + 1) / 2  # 0 at the base, 1 at the apex
    back = (rel[1] + 1) / 2  # 0 at the front, 1 at the back
    if height < 0.25 + 0.55 * back:
        return 2 if lung.right else 5
    if lung.right:
        return 0 if height >= 0.62 else 1
    return 3 if height >= 0.55 else 4


def _axes_mm(shape, spacing_zyx):
    return [np.arange(n, dtype=np.float32) * s for n, s in zip(shape, spacing_zyx)]


def _soft(outside_mm, width=0.6):
    """Occupancy from a signed distance (> 0 outside): a smooth partial-volume edge."""
    return 1.0 / (1.0 + np.exp(np.clip(outside_mm / width, -30, 30)))


def _ellipsoid_outside(axes_mm, centre, semi):
    z, y, x = axes_mm
    q = ((z[:, None, None] - centre[0]) / semi[0]) ** 2 + ((y[None, :, None] - centre[1]) / semi[1]) ** 2
    q = q + ((x[None, None, :] - centre[2]) / semi[2]) ** 2
    return (np.sqrt(q) - 1.0) * float(np.min(semi))


def _box(centre_mm, reach_mm, spacing_zyx, shape):
    lo = np.floor((np.asarray(centre_mm) - reach_mm) / spacing_zyx).astype(int)
    hi = np.ceil((np.asarray(centre_mm) + reach_mm) / spacing_zyx).astype(int) + 1
    lo, hi = np.maximum(lo, 0), np.minimum(hi, shape)
    if np.any(hi <= lo):
        return None
    return tuple(slice(a, b) for a, b in zip(lo, hi))


def render_blob(img, centre_mm, semi_mm, rot, hu, spacing_zyx, supersample=3, edge_mm=0.3):
    """Blends an ellipsoid (semi-axes `semi_mm` along the columns of `rot`) into `img` with its
    true partial volume: each voxel is averaged over supersample^3 points of a soft edge."""
    spacing_zyx = np.asarray(spacing_zyx, dtype=np.float64)
    box = _box(centre_mm, float(np.max(semi_mm)) + 2 * edge_mm + spacing_zyx.max(), spacing_zyx, img.shape)
    if box is None:
        return
    sub = (np.arange(supersample) + 0.5) / supersample - 0.5
    frac = 0.0
    idx = [np.arange(s.start, s.stop, dtype=np.float64) for s in box]
    for dz in sub:
        for dy in sub:
            for dx in sub:
                p = [(idx[0] + dz) * spacing_zyx[0] - centre_mm[0], (idx[1] + dy) * spacing_zyx[1] - centre_mm[1],
                     (idx[2] + dx) * spacing_zyx[2] - centre_mm[2]]
                q = 0.0
                for k in range(3):  # coordinate along the blob's k-th axis, scaled
                    u = rot[0, k] * p[0][:, None, None] + rot[1, k] * p[1][None, :, None] + rot[2, k] * p[2][None, None, :]
                    q = q + (u / semi_mm[k]) ** 2
                frac = frac + _soft((np.sqrt(q) - 1.0) * float(np.min(semi_mm)), edge_mm)
    frac = (frac / supersample**3).astype(np.float32)
    img[box] += frac * (np.float32(hu) - img[box])


def render_tube(img, a, b, r0, r1, hu, spacing_zyx, within=None):
    """Blends a tapered tube from a (radius r0) to b (radius r1), array-mm, into `img`, with
    a linear partial-volume edge one voxel wide; `within` (occupancy) clips it to the lungs."""
    spacing_zyx = np.asarray(spacing_zyx, dtype=np.float64)
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    reach = max(r0, r1) + spacing_zyx.max()
    box = _box((lo + hi) / 2, (hi - lo) / 2 + reach, spacing_zyx, img.shape)
    if box is None:
        return
    p = [np.arange(s.start, s.stop, dtype=np.float64) * sp - ai for s, sp, ai in zip(box, spacing_zyx, a)]
    p = [p[0][:, None, None], p[1][None, :, None], p[2][None, None, :]]
    ab = b - a
    t = np.clip((p[0] * ab[0] + p[1] * ab[1] + p[2] * ab[2]) / max(float(ab @ ab), 1e-9), 0, 1)
    dist = np.sqrt(sum((p[k] - t * ab[k]) ** 2 for k in range(3)))
    occ = np.clip((r0 + t * (r1 - r0) - dist) / spacing_zyx.mean() + 0.5, 0, 1).astype(np.float32)
    if within is not None:
        occ *= within[box]
    img[box] += occ * (np.float32(hu) - img[box])


def _random_rotation(rng):
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


def _point_in_lung(rng, lung: Lung, inset_mm):
    semi = lung.axes - inset_mm
    if np.any(semi <= 1):
        return None
    for _ in range(100):
        u = rng.uniform(-1, 1, 3)
        if u @ u <= 1:
            return lung.centre + u * semi
    return None


def make_scan(seed, index=0, shape=(120, 160, 160), spacing=None, origin=None, direction=io.IDENTITY,
              n_nodules=None, n_distractors=4, n_vessels=8, noise_hu=25.0):
    """One phantom scan. `shape` is (z, y, x); `spacing` and `origin` are (x, y, z) as in
    SimpleITK (random and realistic when None). Returns (Volume int16, seg-lungs uint8, info)
    where info holds 'nodules' [N, 4] world (x, y, z, d), 'lobes' [N], 'excluded' [M, 4] (the
    sub-3 mm findings, for annotations_excluded.csv) and 'distractors' (world centres)."""
    rng = np.random.default_rng([int(seed), int(index)])
    shape = tuple(int(v) for v in shape)
    if spacing is None:
        sxy = float(np.round(rng.uniform(0.62, 0.8), 3))
        spacing = (sxy, sxy, float(rng.choice(Z_SPACINGS)))
    sp = np.asarray(spacing, dtype=np.float64)[::-1]  # (z, y, x)
    extent = np.asarray(shape) * sp
    if origin is None:
        origin = (-extent[2] / 2 + rng.uniform(-20, 20), -extent[1] / 2 + rng.uniform(-20, 20) + 150,
                  -extent[0] - rng.uniform(50, 250))
    axes = _axes_mm(shape, sp)
    c = extent / 2

    # Body: elliptic cylinder with a fat rim, ribs in the rim (every ~25 mm), spine at the back.
    body_semi = np.array([1e9, 0.42 * extent[1], 0.47 * extent[2]])
    body_out = _ellipsoid_outside(axes, [c[0], c[1], c[2]], body_semi)  # infinite along z
    img = AIR_HU + _soft(body_out) * (FAT_HU - AIR_HU)
    inner = _ellipsoid_outside(axes, c, body_semi * [1, 0.9, 0.92])
    img += _soft(inner) * (SOFT_HU - img)
    ring = _ellipsoid_outside(axes, c, body_semi * [1, 0.85, 0.87])
    rib_z = (np.cos(axes[0] * 2 * np.pi / 25.0 + rng.uniform(0, 6.3)) > 0.55)[:, None, None]
    img += (_soft(ring) * _soft(-ring - 3.0) * rib_z) * (BONE_HU - img)
    spine_c = [c[0], c[1] + 0.3 * extent[1], c[2]]
    img += _soft(_ellipsoid_outside(axes, spine_c, [1e9, 0.08 * extent[1], 0.07 * extent[2]])) * (BONE_HU - img)

    # Lungs: right lung at smaller x (LPS), left at larger x; a smooth texture inside.
    lung_semi = np.array([0.36 * extent[0], 0.27 * extent[1], 0.155 * extent[2]])
    lungs, occ = [], []
    for right in (True, False):
        centre = np.array([c[0] + 0.04 * extent[0], c[1] - 0.03 * extent[1],
                           c[2] + (-1 if right else 1) * 0.2 * extent[2]])
        lung = Lung(centre, lung_semi * rng.uniform(0.93, 1.0, 3), right)
        lungs.append(lung)
        occ.append(_soft(_ellipsoid_outside(axes, lung.centre, lung.axes)).astype(np.float32))
    lung_occ = np.maximum(occ[0], occ[1])
    texture = ndimage.gaussian_filter(rng.normal(0, 1, shape).astype(np.float32), 2.0)
    texture *= 15.0 / max(float(texture.std()), 1e-6)
    img = (img + lung_occ * (LUNG_HU + texture - img)).astype(np.float32)
    seg = np.zeros(shape, dtype=np.uint8)
    seg[occ[0] > 0.5] = SEG_RIGHT
    seg[occ[1] > 0.5] = SEG_LEFT

    # Vessel trees from each hilum: tapered primary branches, each with two thinner offshoots.
    scale = float(np.clip(lung_semi[2] / 25.0, 0.5, 1.0))  # thinner vessels in small phantoms
    for lung in lungs:
        hilum = lung.centre + np.array([0.05, 0.0, (0.7 if lung.right else -0.7)]) * lung.axes
        for _ in range(n_vessels):
            end = _point_in_lung(rng, lung, 2.0)
            if end is None:
                continue
            r0 = rng.uniform(1.6, 2.6) * scale
            render_tube(img, hilum, end, r0, 0.6 * scale, VESSEL_HU, sp, lung_occ)
            for _ in range(2):
                t = rng.uniform(0.3, 0.8)
                start = hilum + t * (end - hilum)
                tip = _point_in_lung(rng, lung, 2.0)
                if tip is not None:
                    tip = start + 0.5 * (tip - start)
                    render_tube(img, start, tip, r0 * (1 - t) * 0.8 + 0.4 * scale, 0.4 * scale, VESSEL_HU, sp, lung_occ)

    # Nodules and distractors, kept apart from each other.
    placed = []

    def place(diameter, inset):
        for _ in range(50):
            lung = lungs[rng.integers(2)]
            p = _point_in_lung(rng, lung, inset)
            if p is not None and all(np.linalg.norm(p - q) > (diameter + dq) / 2 + 3 for q, dq in placed):
                placed.append((p, diameter))
                return p, lung
        return None, None

    d_max = float(min(30.0, 1.3 * lung_semi.min()))
    if n_nodules is None:
        n_nodules = int(rng.choice([0, 1, 1, 2, 2, 3, 4]))
    nodules, lobes = [], []
    for _ in range(n_nodules):
        d = float(np.clip(np.exp(rng.normal(np.log(7.0), 0.55)), 3.0, d_max))
        wall = rng.uniform() < 0.2  # juxtapleural: touching the lung wall
        p, lung = place(d, d * 0.3 if wall else d / 2 + 2)
        if p is None:
            continue
        hu = rng.uniform(-550, -350) if (d >= 8 and rng.uniform() < 0.15) else rng.uniform(-40, 80)
        render_blob(img, p, np.full(3, d / 2), np.eye(3), hu, sp)
        nodules.append((p, d))
        lobes.append(lobe_of(p, lung))
    excluded = []
    if rng.uniform() < 0.4:  # a sub-3 mm finding: LUNA16 lists these as excluded
        d = float(rng.uniform(2.0, 2.9))
        p, _ = place(d, d / 2 + 2)
        if p is not None:
            render_blob(img, p, np.full(3, d / 2), np.eye(3), rng.uniform(0, 80), sp)
            excluded.append((p, d))
    distractors = []
    for k in range(n_distractors):
        rod = k % 2 == 0
        short = rng.uniform(1.5, 3.5) * max(scale, 0.7)
        semi = np.array([3.5 * short, short, short]) if rod else np.array([0.4 * short, 2.5 * short, 2.5 * short])
        p, _ = place(2 * semi.max(), semi.max() + 1)
        if p is None:
            continue
        render_blob(img, p, semi, _random_rotation(rng), rng.uniform(60, 250), sp, supersample=2)
        distractors.append(p)

    img = ndimage.gaussian_filter(img, sigma=0.5 * sp.min() / sp)  # scanner blur, ~0.5 px in plane
    img += rng.normal(0, noise_hu, shape).astype(np.float32) * (0.4 + 0.6 * (img > -950))
    hu = np.clip(np.rint(img), -1024, 3071).astype(np.int16)

    def world(points):
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        return io.voxel_to_world(pts / sp, origin, spacing, direction)

    def table(items):
        if not items:
            return np.zeros((0, 4))
        return np.concatenate([world([p for p, _ in items]), np.array([[d] for _, d in items])], 1)

    volume = io.Volume(hu, tuple(float(v) for v in origin), tuple(float(v) for v in spacing),
                       tuple(float(v) for v in np.asarray(direction, dtype=np.float64).reshape(9)))
    info = {"nodules": table(nodules), "lobes": np.array(lobes, dtype=np.int64),
            "excluded": table(excluded), "distractors": world(distractors) if distractors else np.zeros((0, 3))}
    return volume, seg, info


def series_uid(seed, index):
    return "1.2.826.0.1.3680043.10.1042.%d.%d" % (int(seed), int(index))


def _make_and_write(args):
    out_dir, seed, index, subset, kwargs, write_seg = args
    uid = series_uid(seed, index)
    volume, seg, info = make_scan(seed, index, **kwargs)
    folder = os.path.join(out_dir, "subset%d" % subset)
    os.makedirs(folder, exist_ok=True)
    io.write_image(volume, os.path.join(folder, uid + ".mhd"))
    if write_seg:
        seg_dir = os.path.join(out_dir, "seg-lungs-LUNA16")
        os.makedirs(seg_dir, exist_ok=True)
        io.write_image(io.Volume(seg, volume.origin, volume.spacing, volume.direction), os.path.join(seg_dir, uid + ".mhd"))
    return uid, subset, volume, info


def split_names(n_scans, fractions=(0.5, 0.3, 0.2)):
    """'full' / 'weak' / 'test' for n scans, in that order, in proportion to `fractions`
    (rounded; from 3 scans on, every split with a non-zero fraction gets at least one)."""
    f = np.asarray(fractions, dtype=np.float64)
    if f.shape != (3,) or np.any(f < 0) or f.sum() <= 0:
        raise ValueError("split fractions must be three non-negative numbers, got %s" % (fractions,))
    counts = np.floor(f / f.sum() * n_scans).astype(int)
    for k in np.argsort(-f):  # hand out the remainder, largest fraction first
        if counts.sum() < n_scans:
            counts[k] += 1
    if n_scans >= 3:
        for k in range(3):
            if counts[k] == 0 and f[k] > 0:
                counts[k] += 1
                counts[int(np.argmax(counts))] -= 1
    return ["full"] * counts[0] + ["weak"] * counts[1] + ["test"] * counts[2]


def make_dataset(out_dir, n_scans=10, seed=0, shape=(120, 160, 160), n_subsets=10, split=(0.5, 0.3, 0.2),
                 workers=1, write_seg=True, progress=False, **scan_kwargs):
    """Writes a phantom LUNA16 data set into `out_dir`:
      subsetK/<uid>.mhd + .raw, seg-lungs-LUNA16/<uid>.mhd (LUNA16's lung masks: 3 right, 4 left),
      annotations.csv, annotations_excluded.csv, seriesuids.csv, weak_labels.csv (the weak split:
      seriesuid, coordZ, slice, lobe), annotations_lobes.csv (every nodule's lobe), splits.json
      ({'full', 'weak', 'test'}: seriesuid lists) and phantom.json (the generator's settings).
    Returns the splits."""
    os.makedirs(out_dir, exist_ok=True)
    n_subsets = max(1, min(int(n_subsets), int(n_scans)))
    names = split_names(n_scans, split)
    order = np.random.default_rng([int(seed), 1 << 30]).permutation(n_scans)  # which scan goes where
    jobs = [(out_dir, seed, i, i % n_subsets, dict(shape=shape, **scan_kwargs), write_seg) for i in range(n_scans)]
    if workers > 1 and n_scans > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(_progress(pool.map(_make_and_write, jobs), n_scans, progress))
    else:
        results = list(_progress(map(_make_and_write, jobs), n_scans, progress))
    uids = [r[0] for r in results]
    splits = {"full": [], "weak": [], "test": []}
    for rank, i in enumerate(order):
        splits[names[rank]].append(uids[i])
    ann = {u: info["nodules"] for u, _, _, info in results if len(info["nodules"])}
    excl = {u: info["excluded"] for u, _, _, info in results if len(info["excluded"])}
    lobes = {u: info["lobes"] for u, _, _, info in results}
    tables.write_annotations(os.path.join(out_dir, "annotations.csv"), ann, uids)
    tables.write_annotations(os.path.join(out_dir, "annotations_excluded.csv"), excl, uids)
    tables.write_seriesuids(os.path.join(out_dir, "seriesuids.csv"), uids)
    weak = tables.derive_weak_labels({u: ann[u] for u in splits["weak"] if u in ann}, lobes)
    for u, w in weak.items():  # also give the slice index, as EMR data often has it
        vol = next(r[2] for r in results if r[0] == u)
        w[:, 1] = np.round(io.world_to_voxel(ann[u][:, :3], vol.origin, vol.spacing, vol.direction)[:, 0])
    tables.write_weak_labels(os.path.join(out_dir, "weak_labels.csv"), weak, splits["weak"])
    rows = [[u, *map(repr, map(float, a)), str(int(l))] for u in uids if u in ann for a, l in zip(ann[u], lobes[u])]
    tables._write(os.path.join(out_dir, "annotations_lobes.csv"),
                  ("seriesuid",) + tables.ANNOTATION_COLUMNS + ("lobe",), rows)
    with open(os.path.join(out_dir, "splits.json"), "w") as f:
        json.dump(splits, f, indent=1)
    settings = {"seed": int(seed), "n_scans": int(n_scans), "shape": list(shape), "n_subsets": n_subsets,
                "split": list(split), "scan_kwargs": {k: np.asarray(v).tolist() for k, v in scan_kwargs.items()},
                "subsets": {u: s for u, s, _, _ in results}}
    with open(os.path.join(out_dir, "phantom.json"), "w") as f:
        json.dump(settings, f, indent=1)
    return splits


def _progress(iterable, total, enabled):
    if not enabled:
        return iterable
    import sys

    from tqdm import tqdm

    return tqdm(iterable, total=total, desc="phantom", unit="scan", file=sys.stderr)

"""One phantom scan: the plan (anatomy, trees, field of view, nodules, lookalikes; no image)
and its rendering into HU, as a pure function of (seed, index)."""
from dataclasses import dataclass, field

import numpy as np

from .. import io
from . import anatomy, lookalikes, noise, nodules, vessels
from .render import Grid, splat_tubes

SEG_RIGHT, SEG_LEFT = 3, 4  # LUNA16 seg-lungs values
Z_SPACINGS = (1.25, 1.5, 2.0, 2.5)
Z_SPACING_P = (0.45, 0.1, 0.15, 0.3)  # LUNA16 has mostly 1.25 and 2.5 mm slices

PRESETS = {
    # LUNA16-size: the whole chest, 512 x 512 pixels of 0.62-0.8 mm (the body and 25-70 mm of
    # air fit), ~300-350 mm of slices.
    "luna16": dict(window=False, inplane=512, sxy=(0.62, 0.8)),
    # The demo: a 128 x 128 x (64-80 mm) window into the same adult chest, on one lung, at the
    # lung's middle (where its lobes meet), so that position in the scan tells the lobe as it
    # does in a whole-chest scan (DeepEM's lobe model reads nothing else).
    "demo": dict(window=True, inplane=128, sxy=(0.7, 0.8), z_mm=(64.0, 80.0), anchored=True),
}


@dataclass
class Options:
    """Which parts of the anatomy to draw, and how (every default is the realistic one)."""
    vessels: bool = True
    airways: bool = True
    fissures: bool = True
    tree_points: int = 2500  # territory points per tree: leaves of ~0.4 mm radius
    # The reconstruction kernel, drawn per scan from soft to sharp (lung kernels, as most of
    # LIDC): a sharper kernel blurs less and shows more of the low-dose noise.
    noise_hu: object = None  # noise sigma (HU); None: 20-35 (soft kernel) up to 45-75 (sharp), by the kernel
    psf_mm: object = None  # in-plane blur sigma (mm); None: 0.55 (soft) down to 0.35 (sharp), by the kernel
    nodule_stats: nodules.NoduleOptions = field(default_factory=nodules.NoduleOptions)
    lookalike_rates: object = field(default_factory=lookalikes.LookalikeOptions)  # None: no lookalikes


def _rng(seed, index, part):
    return np.random.default_rng([int(seed), int(index), part])


def _window(rng, chest, extent, anchored=False):
    """Centre of a window on one lung: mostly lung, often with the chest wall at its side;
    anywhere on it, or (anchored) around the middle height and depth where the fissures part
    upper, middle/lingula and lower lobe (a random window unties position and lobe: a lobe
    model on position then learns little; measured in the README, phantom presets)."""
    best = None
    for _ in range(30):
        lung = chest.lungs[rng.integers(2)]
        lateral = -1.0 if lung.right else 1.0
        if anchored:
            c = np.array([rng.uniform(0.40, 0.50) * lung.height, lung.cy + rng.uniform(-0.1, 0.1) * lung.ay,
                          lung.cx + lateral * rng.uniform(0.15, 0.35) * lung.ax])
        else:
            c = np.array([rng.uniform(0.12, 0.7) * lung.height, lung.cy + rng.uniform(-0.45, 0.45) * lung.ay,
                          lung.cx + lateral * rng.uniform(0.0, 0.5) * lung.ax])
        p = c + (rng.uniform(size=(400, 3)) - 0.5) * extent
        frac = float(np.mean(anatomy.lung_sdf(chest, lung, p[:, 0], p[:, 1], p[:, 2]) < 0))
        if frac >= 0.55:
            return c
        if best is None or frac > best[0]:
            best = (frac, c)
    return best[1]


def plan_scan(seed, index=0, preset="luna16", shape=None, spacing=None, origin=None, direction=io.IDENTITY,
              n_nodules=None, options=None):
    """Everything about a scan except its pixels (cheap: no volume is made)."""
    if preset not in PRESETS:
        raise ValueError("unknown phantom preset %r; choose one of %s" % (preset, ", ".join(PRESETS)))
    cfg, opt = PRESETS[preset], options or Options()
    rng = _rng(seed, index, 0)
    chest = anatomy.draw_chest(_rng(seed, index, 1))
    if cfg["window"]:
        sxy = float(np.round(rng.uniform(*cfg["sxy"]), 3))
    else:  # the reconstruction field of view is chosen to hold the body, as in LUNA16
        fov = 2 * chest.body_ax + rng.uniform(25, 70)
        sxy = float(np.round(np.clip(fov / cfg["inplane"], *cfg["sxy"]), 3))
    sz = float(rng.choice(Z_SPACINGS, p=Z_SPACING_P))
    z_mm = rng.uniform(*cfg["z_mm"]) if cfg["window"] else None
    if cfg["window"]:
        extent = np.array([z_mm, cfg["inplane"] * sxy, cfg["inplane"] * sxy])
    else:
        z0, z1 = chest.z_range
        z0, z1 = z0 - rng.uniform(10, 40), z1 + rng.uniform(10, 30)
        extent = np.array([z1 - z0, cfg["inplane"] * sxy, cfg["inplane"] * sxy])
    if spacing is None:
        spacing = (sxy, sxy, sz)
    sp = np.asarray(spacing, dtype=np.float64)[::-1]
    shape_given = shape is not None
    if shape is None:  # the preset's field of view at this spacing
        shape = np.maximum(np.rint(extent / sp), 1)
    extent = np.asarray(shape) * sp
    windowed = cfg["window"] or shape_given  # an explicit shape is a window onto a lung
    if windowed:
        centre = _window(rng, chest, extent, anchored=cfg.get("anchored", False))
    else:
        centre = np.array([(z0 + z1) / 2, rng.uniform(-10, 10), rng.uniform(-10, 10)])
    shape = tuple(int(v) for v in shape)
    corner = centre - (np.asarray(shape) - 1) * sp / 2
    sharp, dose = rng.uniform(), rng.uniform()
    psf = opt.psf_mm if opt.psf_mm is not None else 0.55 - 0.2 * sharp
    noise_hu = opt.noise_hu if opt.noise_hu is not None else (20 + 25 * sharp) * (1 + 0.65 * dose)
    grid = Grid(shape, sp, corner, psf)
    if origin is None:
        origin = (rng.uniform(-220, -120), rng.uniform(-250, -100), rng.uniform(-400, -50))

    trng = _rng(seed, index, 2)
    window = (grid.corner_mm, grid.hi_mm) if windowed else None
    trees = [vessels.grow_lung_trees(trng, chest, lung, opt.tree_points, window) for lung in chest.lungs]
    airway = (np.zeros((0, 3)), np.zeros(0), np.zeros(0))
    if opt.airways:
        parts = [vessels.airway_of(trng, t["artery"]) for t in trees]
        airway = tuple(np.concatenate([p[k] for p in parts]) for k in range(3))

    nrng = _rng(seed, index, 3)
    placer = nodules.Placer(nrng, chest, trees if opt.vessels else [{} for _ in chest.lungs], grid.corner_mm,
                            grid.hi_mm)
    count = nodules.draw_count(nrng, opt.nodule_stats) if n_nodules is None else int(n_nodules)
    nods = []
    for _ in range(count):
        nod = nodules.draw_nodule(nrng, opt.nodule_stats)
        got = placer.place(nod["diameter"] / 2, nod["attach"])
        if got is None and nod["attach"] != "isolated":
            got = placer.place(nod["diameter"] / 2, "isolated")
        if got is None:
            continue
        k, c, nod["attach"] = got
        nod["centre"], nod["lung"] = c, k
        nod["lobe"] = anatomy.lobe_of(c, chest.lungs[k])
        nods.append(nod)
    excluded = []
    if nrng.uniform() < 0.4:  # a sub-3 mm nodule: LUNA16 lists these as excluded findings
        d = float(nrng.uniform(2.0, 2.9))
        got = placer.place(d / 2, "isolated", tries=10)
        if got is not None:
            excluded.append(dict(centre=got[1], diameter=d, hu=nrng.uniform(-20, 60)))
    looks = []
    if opt.lookalike_rates is not None:
        p = nrng.uniform(grid.corner_mm, grid.hi_mm, size=(3000, 3))
        inside = np.zeros(len(p), bool)
        for lung in chest.lungs:
            inside |= anatomy.lung_sdf(chest, lung, p[:, 0], p[:, 1], p[:, 2]) < 0
        litres = float(inside.mean() * np.prod(grid.hi_mm - grid.corner_mm) / 1e6)
        looks = lookalikes.plan_lookalikes(nrng, placer, opt.lookalike_rates, litres, airway[:2])
    return dict(seed=seed, index=index, preset=preset, chest=chest, grid=grid, spacing=tuple(float(v) for v in spacing),
                origin=tuple(float(v) for v in origin), direction=direction, trees=trees, airway=airway,
                nodules=nods, excluded=excluded, lookalikes=looks, options=opt, noise_hu=float(noise_hu))


def render_scan(plan):
    """(io.Volume int16 HU, seg-lungs uint8, info) of a plan."""
    chest, grid, opt = plan["chest"], plan["grid"], plan["options"]
    rrng = _rng(plan["seed"], plan["index"], 4)
    img = anatomy.render_body(chest, grid)
    lung_occ = anatomy.render_lungs(chest, grid, img)
    seg = np.zeros(grid.shape, dtype=np.uint8)
    within = np.zeros(grid.shape, dtype=np.float32)  # lung occupancy: vessels stay in the lungs
    for (box, occ), label in zip(lung_occ, (SEG_RIGHT, SEG_LEFT)):
        if box is not None:
            seg[box][occ > 0.5] = label
            within[box] = np.maximum(within[box], occ)
    if opt.fissures:
        anatomy.render_fissures(chest, grid, img, lung_occ)

    tubes = np.zeros(grid.shape, dtype=np.float32)
    if opt.vessels:
        for lung_trees in plan["trees"]:
            for t in lung_trees.values():
                splat_tubes(tubes, grid, t.points, t.radii)
    for nod in plan["nodules"]:
        splat_tubes(tubes, grid, *nodules.spicule_tubes(nod))
    for look in plan["lookalikes"]:
        if look["kind"] == "scar":
            splat_tubes(tubes, grid, look["points"], look["radii"])
    tubes *= within
    img += tubes * (np.float32(vessels.VESSEL_HU) - img)
    del tubes

    pts, lumen, wall = plan["airway"]
    if len(pts):
        outer = np.zeros(grid.shape, dtype=np.float32)
        splat_tubes(outer, grid, pts, lumen + wall)
        outer *= within
        img += outer * (np.float32(-60.0) - img)
        outer[:] = 0
        splat_tubes(outer, grid, pts, lumen)
        outer *= within
        img += outer * (np.float32(anatomy.AIR_HU) - img)
        plugs = [lk for lk in plan["lookalikes"] if lk["kind"] == "mucus plug"]
        if plugs:
            outer[:] = 0
            for lk in plugs:
                splat_tubes(outer, grid, lk["points"], lk["radii"])
            img += outer * (np.float32(20.0) - img)
        del outer

    for nod in plan["nodules"]:
        nodules.render_nodule(img, grid, nod, rrng)
    round_ = dict(rot=np.eye(3), scales=np.ones(3), bumps=np.zeros((0, 3)), bump_amp=np.zeros(0), texture="solid")
    for ex in plan["excluded"]:
        nodules.render_nodule(img, grid, dict(round_, **ex), rrng)
    for lk in plan["lookalikes"]:
        if lk["kind"] == "granuloma":
            nodules.render_nodule(img, grid, dict(round_, centre=lk["centre"], diameter=lk["diameter"], hu=lk["hu"]),
                                  rrng)
        elif lk["kind"] == "scar" and lk["focal"] is not None:
            f = lk["focal"]
            nodules.render_nodule(img, grid, dict(round_, centre=lk["centre"], diameter=f["diameter"], rot=f["rot"],
                                                  scales=f["scales"], hu=lk["hu"]), rrng)

    n = noise.ct_noise(rrng, grid.shape, grid.spacing, plan["noise_hu"])
    n *= np.where(img > -960, np.float32(1.0), np.float32(0.5))  # less noise in the air around the body
    img += n
    hu = np.clip(np.rint(img), -1024, 3071).astype(np.int16)
    return _outputs(plan, hu, seg)


def _outputs(plan, hu, seg):
    grid = plan["grid"]
    origin, spacing, direction = plan["origin"], plan["spacing"], plan["direction"]

    def world(points):
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        return io.voxel_to_world((pts - grid.corner_mm) / grid.spacing, origin, spacing, direction)

    def table(items):
        if not items:
            return np.zeros((0, 4))
        return np.concatenate([world([it["centre"] for it in items]), [[it["diameter"]] for it in items]], 1)

    volume = io.Volume(hu, origin, spacing, tuple(float(v) for v in np.asarray(direction, dtype=np.float64).reshape(9)))
    excluded = plan["excluded"] + [dict(centre=lk["centre"], diameter=lk["diameter"])
                                   for lk in plan["lookalikes"] if lk["kind"] == "granuloma" and lk["listed"]]
    looks = plan["lookalikes"]
    info = {
        "nodules": table(plan["nodules"]),
        "lobes": np.array([n["lobe"] for n in plan["nodules"]], dtype=np.int64),
        "types": [dict(texture=n["texture"], attachment=n["attach"], shape=n["shape"]) for n in plan["nodules"]],
        "excluded": table(excluded),
        "lookalikes": world([lk["centre"] for lk in looks]) if looks else np.zeros((0, 3)),
        "lookalike_kinds": [lk["kind"] for lk in looks],
    }
    return volume, seg, info


def make_scan(seed, index=0, shape=None, spacing=None, origin=None, direction=io.IDENTITY, n_nodules=None,
              preset="luna16", n_vessels=None, n_distractors=None, **options):
    """One phantom scan. `preset` picks the field of view ('luna16': the whole chest at
    512 x 512 pixels; 'demo': a 128 x 128 x 64-80 mm window onto one lung's middle); `shape` (z, y, x)
    overrides its voxel count (a window of that size around the preset's centre) and `spacing`
    (x, y, z mm, as SimpleITK) its random spacing. `options` are Options fields (n_vessels=0 and
    n_distractors=0, the first generator's arguments, mean vessels=False, lookalike_rates=None). Returns
    (Volume int16, seg-lungs uint8, info): info holds 'nodules' [N, 4] world (x, y, z, d),
    'lobes' [N], 'types' [N] (texture, attachment, shape), 'excluded' [M, 4] (sub-3 mm findings,
    for annotations_excluded.csv), 'lookalikes' [K, 3] world and 'lookalike_kinds' [K]."""
    if n_vessels is not None:  # the first generator's arguments: 0 vessels / 0 distractors turn them off
        options.setdefault("vessels", n_vessels > 0)
    if n_distractors is not None and n_distractors == 0:
        options.setdefault("lookalike_rates", None)
    opt = Options(**options)
    plan = plan_scan(seed, index, preset, shape, spacing, origin, direction, n_nodules, opt)
    return render_scan(plan)

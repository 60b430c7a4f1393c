"""Findings that look like nodules and are not: what a detector must learn to reject.

- calcified granulomas: small (1.6-2.9 mm) very dense dots; below LUNA16's 3 mm, half of them
  listed in annotations_excluded.csv (a reader marked them), the rest nowhere;
- scars: beaded bands 1-3 mm thick and 10-30 mm long near the pleura, half of them with a
  flat focal thickening (3-7 mm) that looks like a small nodule on a few slices;
- mucus plugs: a stretch of a 2-6 mm airway filled with mucus: a branching soft-tissue tube.

Counts are per litre of lung inside the field of view (a small window sees few).
"""
from dataclasses import dataclass

import numpy as np

from .nodules import _unit


@dataclass
class LookalikeOptions:
    granulomas_per_l: float = 0.5
    scars_per_l: float = 0.4
    plugs_per_l: float = 0.25


def plan_lookalikes(rng, placer, opt: LookalikeOptions, lung_litres, airway):
    """Lookalikes placed with `placer` (nodules.Placer): a list of dicts with 'kind',
    'centre' and what their rendering needs. `airway` is (points, lumen radii) of the airways."""
    out = []
    for _ in range(rng.poisson(opt.granulomas_per_l * lung_litres)):
        d = rng.uniform(1.6, 2.9)
        got = placer.place(d / 2, "isolated", tries=5)
        if got is not None:
            out.append(dict(kind="granuloma", centre=got[1], diameter=d, hu=rng.uniform(500, 1400),
                            listed=bool(rng.uniform() < 0.5)))
    for _ in range(rng.poisson(opt.scars_per_l * lung_litres)):
        length = rng.uniform(10, 30)
        got = placer.place(length / 2, "pleural", tries=5)
        if got is None:
            continue
        c = got[1]
        axis = _unit(rng, 1)[0]
        t = np.linspace(-0.5, 0.5, max(2, int(length / 0.3)))[:, None]
        bend = np.cross(axis, rng.normal(size=3)) * 0.2 * length
        pts = c + axis * t * length + bend * (1 - 4 * t**2)
        r0 = rng.uniform(0.5, 1.3)
        rad = r0 * (1 + 0.35 * np.sin(2 * np.pi * t[:, 0] * length / rng.uniform(4, 8) + rng.uniform(0, 6.3)))
        focal = None
        if rng.uniform() < 0.5:
            q, r = np.linalg.qr(rng.normal(size=(3, 3)))
            focal = dict(diameter=rng.uniform(3, 7), rot=q * np.sign(np.diag(r)),
                         scales=np.array([1.0, rng.uniform(0.6, 0.9), rng.uniform(0.25, 0.45)]))
        out.append(dict(kind="scar", centre=c, points=pts, radii=rad, focal=focal, hu=rng.uniform(-10, 50)))
    pts, lumen = airway
    big = np.nonzero((lumen >= 1.0) & (lumen <= 3.0) & np.all((pts >= placer.lo) & (pts <= placer.hi), axis=1))[0]
    for _ in range(rng.poisson(opt.plugs_per_l * lung_litres)):
        if len(big) == 0:
            break
        i = int(rng.choice(big))
        length = rng.uniform(8, 20)
        sel = np.nonzero(np.linalg.norm(pts - pts[i], axis=1) < length / 2)[0]
        if placer.is_free(pts[i], length / 2):
            placer.placed.append((pts[i], length / 2))
            out.append(dict(kind="mucus plug", centre=pts[i], points=pts[sel], radii=lumen[sel] * 1.02,
                            hu=rng.uniform(0, 40)))
    return out

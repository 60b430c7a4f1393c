"""Nodules: their statistics (drawn without any image), their placement in the chest and
their rendering.

Defaults follow LUNA16 / LIDC-IDRI: 0 nodules in a quarter of the scans, else 1 + Poisson(1)
(mean 1.5 per scan); diameters log-normal (median 6.6 mm, sigma 0.55) within 3-30 mm, so most
are 4-10 mm and the mean is about 8 mm; 75% solid, 10% part-solid, 15% ground glass (-650 to
-300 HU); 12% touch the chest wall (juxtapleural), 5% a fissure and 10% a vessel
(juxtavascular); half round, 30% lobulated, 20% spiculated.
"""
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .anatomy import fissure_distance, lung_sdf, oblique_z
from .render import Grid, blend, edge

TEXTURES = ("solid", "part-solid", "ggo")
ATTACHMENTS = ("isolated", "pleural", "fissure", "vascular")
SHAPES = ("round", "lobulated", "spiculated")


@dataclass
class NoduleOptions:
    """Nodule statistics (see the module's docstring)."""
    p_none: float = 0.25
    extra_mean: float = 1.0
    median_mm: float = 6.6
    sigma_log: float = 0.55
    d_min: float = 3.0
    d_max: float = 30.0
    textures: tuple = (0.75, 0.10, 0.15)
    attachments: tuple = (0.73, 0.12, 0.05, 0.10)
    shapes: tuple = (0.5, 0.3, 0.2)


def draw_count(rng, opt: NoduleOptions) -> int:
    return 0 if rng.uniform() < opt.p_none else 1 + int(rng.poisson(opt.extra_mean))


def _unit(rng, n):
    v = rng.normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def draw_nodule(rng, opt: NoduleOptions) -> dict:
    """One nodule's parameters, position excluded."""
    while True:
        d = float(np.exp(rng.normal(np.log(opt.median_mm), opt.sigma_log)))
        if opt.d_min <= d <= opt.d_max:
            break
    texture = TEXTURES[rng.choice(3, p=opt.textures)]
    attach = ATTACHMENTS[rng.choice(4, p=opt.attachments)]
    shape = SHAPES[rng.choice(3, p=opt.shapes)]
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    nod = dict(diameter=d, texture=texture, attach=attach, shape=shape, rot=q * np.sign(np.diag(r)),
               scales=np.array([1.0, rng.uniform(0.8, 1.0), rng.uniform(0.7, 1.0)]),
               hu=rng.uniform(-20, 60) if texture == "solid" else rng.uniform(-650, -300),
               core_frac=rng.uniform(0.3, 0.6), core_hu=rng.uniform(-20, 40), core_off=rng.normal(size=3) * 0.15,
               bumps=_unit(rng, 6), bump_amp=np.zeros(6), spicules=np.zeros((0, 3)), spicule_len=np.zeros(0),
               spicule_bend=np.zeros((0, 3)))
    if shape == "lobulated":
        k = rng.integers(3, 7)
        nod["bump_amp"][:k] = rng.uniform(0.12, 0.3, k)
    if shape == "spiculated":
        nod["bump_amp"][:3] = rng.uniform(0.05, 0.15, 3)
        k = int(rng.integers(5, 13))
        nod["spicules"] = _unit(rng, k)
        nod["spicule_len"] = np.minimum(rng.uniform(0.5, 1.5, k) * d / 2 + 1.5, 12.0)
        nod["spicule_bend"] = np.cross(nod["spicules"], rng.normal(size=(k, 3))) * 0.15
    return nod


# ---- placement -----------------------------------------------------------------------------

class Placer:
    """Finds positions for nodules and lookalikes: inside a lung, wholly inside the field of
    view (`lo`, `hi`, body mm), apart from each other, attached as asked."""

    def __init__(self, rng, chest, trees, lo, hi):
        self.rng, self.chest, self.lo, self.hi = rng, chest, np.asarray(lo, float), np.asarray(hi, float)
        self.placed = []  # (centre, radius)
        self.vessels = []  # per lung: (points, radii, direction) of vessels 1-4 mm thick
        for lung_trees in trees:
            pts, rad, dirs = [np.zeros((0, 3))], [np.zeros(0)], [np.zeros((0, 3))]
            for t in lung_trees.values():
                if len(t.points) < 3:
                    continue
                sel = (t.radii >= 1.0) & (t.radii <= 4.0)
                step = np.gradient(t.points, axis=0)
                pts.append(t.points[sel]), rad.append(t.radii[sel]), dirs.append(step[sel])
            self.vessels.append((np.concatenate(pts), np.concatenate(rad), np.concatenate(dirs)))

    def sdf(self, k, p):
        p = np.atleast_2d(p)
        return lung_sdf(self.chest, self.chest.lungs[k], p[:, 0], p[:, 1], p[:, 2])

    def is_free(self, c, radius, gap=2.0):
        return all(np.linalg.norm(c - q) > radius + rq + gap for q, rq in self.placed)

    def _in_fov(self, c, radius):
        return np.all(c - radius - 1.0 >= self.lo) and np.all(c + radius + 1.0 <= self.hi)

    def random_inside(self, radius, depth, n=256):
        """Candidates (lung index, centre) at least `depth` mm inside a lung, in the FOV."""
        lo, hi = self.lo + radius + 1.0, self.hi - radius - 1.0
        if np.any(hi <= lo):
            return []
        p = self.rng.uniform(lo, hi, size=(n, 3))
        out = []
        for k in range(len(self.chest.lungs)):
            ok = np.nonzero(self.sdf(k, p) < -depth)[0]
            out += [(k, p[i]) for i in ok]
        order = self.rng.permutation(len(out))
        return [out[i] for i in order]

    def place(self, radius, attach, tries=60):
        """(lung index, centre, attachment actually made) or None."""
        for _ in range(tries):
            if attach == "isolated":
                for k, c in self.random_inside(radius, radius + 1.5)[:20]:
                    if self.is_free(c, radius) and self._clear_of_vessels(k, c, radius):
                        return self._take(k, c, radius, attach)
            elif attach == "pleural":
                got = self._pleural(radius)
                if got is not None:
                    return self._take(*got, radius, attach)
            elif attach == "fissure":
                got = self._fissure(radius)
                if got is not None:
                    return self._take(*got, radius, attach)
            else:
                got = self._vascular(radius)
                if got is not None:
                    return self._take(*got, radius, attach)
        return None

    def _take(self, k, c, radius, attach):
        self.placed.append((c, radius))
        return k, c, attach

    def _clear_of_vessels(self, k, c, radius):
        pts, rad, _ = self.vessels[k]
        if len(pts) == 0:
            return True
        near = np.linalg.norm(pts - c, axis=1) - rad
        return bool(near.min() > radius + 0.5)

    def _pleural(self, radius):
        for k, q in self.random_inside(radius, 2.0)[:8]:
            u = _unit(self.rng, 1)[0]
            t = np.arange(0.0, 80.0, 1.0)
            d = self.sdf(k, q + t[:, None] * u)
            hit = np.nonzero(d >= 0)[0]
            if len(hit) == 0:
                continue
            b = q + t[hit[0]] * u
            g = np.array([(self.sdf(k, b + e)[0] - self.sdf(k, b - e)[0]) for e in np.eye(3) * 0.5])
            n = g / max(np.linalg.norm(g), 1e-9)
            c = b - n * radius * self.rng.uniform(0.4, 0.8)
            if self._in_fov(c, radius) and self.sdf(k, c)[0] < 0 and self.is_free(c, radius):
                return k, c
        return None

    def _fissure(self, radius):
        for k, q in self.random_inside(radius, radius + 1.0)[:8]:
            lung = self.chest.lungs[k]
            which = "horizontal" if (lung.right and self.rng.uniform() < 0.4 and q[0] > oblique_z(lung, q[1], q[2])) \
                else "oblique"
            d, _ = fissure_distance(lung, *q, which)
            eps = np.eye(3) * 0.5
            g = np.array([(fissure_distance(lung, *(q + e), which)[0] - fissure_distance(lung, *(q - e), which)[0])
                          for e in eps])
            n = g / max(np.linalg.norm(g), 1e-9)
            c = q - n * d + n * np.sign(self.rng.uniform(-1, 1)) * radius * self.rng.uniform(0.4, 0.8)
            if self._in_fov(c, radius) and self.sdf(k, c)[0] < -0.8 * radius and self.is_free(c, radius):
                return k, c
        return None

    def _vascular(self, radius):
        lo, hi = self.lo + radius + 1.0, self.hi - radius - 1.0
        for k in self.rng.permutation(len(self.vessels)):
            pts, rad, dirs = self.vessels[k]
            ok = np.nonzero(np.all((pts >= lo) & (pts <= hi), axis=1))[0]
            if len(ok) == 0:
                continue
            for i in self.rng.choice(ok, size=min(8, len(ok)), replace=False):
                t = dirs[i] / max(np.linalg.norm(dirs[i]), 1e-9)
                u = _unit(self.rng, 1)[0]
                u = u - (u @ t) * t
                u /= max(np.linalg.norm(u), 1e-9)
                c = pts[i] + u * (rad[i] + radius * self.rng.uniform(0.5, 0.85))
                if self._in_fov(c, radius) and self.sdf(k, c)[0] < -(radius + 1.0) and self.is_free(c, radius):
                    return k, c
        return None


# ---- rendering -----------------------------------------------------------------------------

def _body_occupancy(grid: Grid, box, centre, radius, rot, scales, bump_dirs, bump_amp, kappa=6.0, zsub=3):
    """Occupancy of a (lobulated) ellipsoidal body, averaged over `zsub` positions across each
    slice (the slice's partial volume) and blurred in plane by the PSF."""
    Z, Y, X = grid.sub_axes(box)
    occ = 0.0
    mean_bump = float(np.sum(bump_amp)) * (1 - np.exp(-2 * kappa)) / (2 * kappa)
    for dz in (np.arange(zsub) + 0.5) / zsub - 0.5:
        rel = [Z + dz * grid.spacing[0] - centre[0], Y - centre[1], X - centre[2]]
        v = [sum(rot[j, k] * rel[j] for j in range(3)) / scales[k] for k in range(3)]
        dist = np.sqrt(v[0] ** 2 + v[1] ** 2 + v[2] ** 2) + 1e-9
        r = 1.0 - mean_bump
        for w, a in zip(bump_dirs, bump_amp):
            if a > 0:
                cos = sum(w[k] * v[k] for k in range(3)) / dist
                r = r + a * np.exp(kappa * (cos - 1.0))
        occ = occ + edge(dist - radius * r, grid.psf_mm)
    return (occ / zsub).astype(np.float32)


def render_nodule(img, grid: Grid, nod: dict, rng):
    """Draws the nodule's body into img (solid, or ground glass that vessels show through,
    with a solid core when part-solid)."""
    c, R = np.asarray(nod["centre"]), nod["diameter"] / 2
    reach = R * 1.35 + 3 * np.sqrt(grid.sigma2(1.0))
    box = grid.box(c - reach, c + reach)
    if box is None:
        return
    occ = _body_occupancy(grid, box, c, R, nod["rot"], nod["scales"], nod["bumps"], nod["bump_amp"])
    if nod["texture"] == "solid":
        blend(img, box, occ, nod["hu"], keep_denser=True)
        return
    haze = ndimage.gaussian_filter(rng.normal(size=occ.shape).astype(np.float32), 1.5)
    haze *= 40.0 / max(float(haze.std()), 1e-6)
    blend(img, box, occ, np.float32(nod["hu"]) + haze, keep_denser=True)
    if nod["texture"] == "part-solid":
        rc = R * nod["core_frac"]
        cc = c + nod["core_off"] * (R - rc)
        core = _body_occupancy(grid, box, cc, rc, nod["rot"], nod["scales"], nod["bumps"], nod["bump_amp"] * 0.5)
        blend(img, box, core, nod["core_hu"], keep_denser=True)


def spicule_tubes(nod: dict):
    """The spicules as tube samples (points [P, 3] mm, radii [P]): thin strands from the
    surface outwards, tapering, slightly bent."""
    c, R = np.asarray(nod["centre"]), nod["diameter"] / 2
    pts, rad = [], []
    for w, length, bend in zip(nod["spicules"], nod["spicule_len"], nod["spicule_bend"]):
        t = np.linspace(0, 1, max(2, int(length / 0.3)))[:, None]
        pts.append(c + w * (0.85 * R + t * length) + bend * length * np.sin(np.pi * t))
        rad.append(0.55 - 0.4 * t[:, 0])
    if not pts:
        return np.zeros((0, 3)), np.zeros(0)
    return np.concatenate(pts), np.concatenate(rad)

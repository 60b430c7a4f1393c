"""The adult chest of a phantom: body wall, ribs, spine, mediastinum, two lungs with their
fissures and lobes, all as analytic shapes in the body frame (mm).

Body frame: Z up (head), Y front to back, X right to left (LPS, as LUNA16's world axes), Z = 0
at the top of the right diaphragm dome. Each lung is an elliptic column whose cross-section
narrows to the apex, standing on a diaphragm dome that drops into the costophrenic recesses,
hollowed by the heart, the mediastinum and the spine; its signed distance (< 0 inside) is
approximate but smooth. The oblique fissure runs from high at the back to the diaphragm at the
front (behind/below it: the lower lobe); on the right a horizontal fissure parts upper and
middle lobe; on the left the lingula is the upper lobe's part below a level (no fissure).
"""
from dataclasses import dataclass

import numpy as np

from .render import Grid, edge

AIR_HU, FAT_HU, MUSCLE_HU, SOFT_HU, BONE_HU, MARROW_HU = -1000.0, -100.0, 45.0, 35.0, 750.0, 250.0
FISSURE_HU = -50.0  # two pleural layers, far thinner than a voxel: seen through partial volume


@dataclass
class Lung:
    right: bool
    cx: float  # in-plane centre X, Y (mm)
    cy: float
    ax: float  # in-plane semi-axes (mm)
    ay: float
    height: float  # apex Z
    shoulder: float  # Z above which the cross-section narrows to the apex
    dome_top: float  # Z of the dome's top
    dome_drop: float  # how far the base falls at the lung's rim (recesses)
    obl_z: float  # oblique fissure: Z = obl_z + obl_slope (Y - cy) + obl_tilt |X - cx|
    obl_slope: float
    obl_tilt: float
    hor_z: float  # right: horizontal fissure Z = hor_z + hor_slope (Y - cy); left: lingula level
    hor_slope: float


@dataclass
class Chest:
    body_ax: float
    body_ay: float
    wall: float  # chest wall thickness (fat + muscle + ribs), mm
    fat: float
    lungs: list
    heart_c: np.ndarray  # (Z, Y, X)
    heart_semi: np.ndarray
    medi_ax: float  # upper mediastinum half width
    spine_y: float
    spine_r: float
    rib_pitch: float
    rib_phase: float
    rib_drop: float  # ribs descend this much from back to front
    lung_hu: float  # parenchyma at mid depth
    gravity_hu: float  # extra density at the back (dependent lung)

    @property
    def z_range(self):
        """Z from the deepest recess to the apices."""
        return (min(l.dome_top - l.dome_drop - 15 for l in self.lungs), max(l.height for l in self.lungs))


def draw_chest(rng) -> Chest:
    """An adult chest (lungs about 4-6.5 L together)."""
    bx, by = rng.uniform(150, 172), rng.uniform(105, 122)
    wall = rng.uniform(18, 28)
    fat = rng.uniform(0.3, 0.55) * wall
    height = rng.uniform(195, 235)
    gap = rng.uniform(40, 52)  # mediastinum width at the lungs' medial edges
    ax = (bx - wall - gap / 2) / 2
    front, back = -(by - wall), by - wall - rng.uniform(12, 20)
    ay, cy = (back - front) / 2, (back + front) / 2
    lungs = []
    for right in (True, False):
        s = -1.0 if right else 1.0
        top = 0.0 if right else -rng.uniform(8, 18)  # the right dome rides higher on the liver
        h = height * rng.uniform(0.97, 1.0)
        obl_slope = rng.uniform(0.75, 0.95) * (0.72 * h) / (2 * ay)
        lungs.append(Lung(
            right=right, cx=s * (gap / 2 + ax), cy=cy, ax=ax * rng.uniform(0.95, 1.02), ay=ay * rng.uniform(0.97, 1.0),
            height=h, shoulder=rng.uniform(0.5, 0.6) * h, dome_top=top, dome_drop=rng.uniform(40, 55),
            obl_z=rng.uniform(0.36, 0.44) * h, obl_slope=obl_slope, obl_tilt=rng.uniform(-0.1, 0.1),
            hor_z=rng.uniform(0.52, 0.6) * h if right else rng.uniform(0.42, 0.5) * h,
            hor_slope=rng.uniform(-0.1, 0.05)))
    return Chest(
        body_ax=bx, body_ay=by, wall=wall, fat=fat, lungs=lungs,
        heart_c=np.array([rng.uniform(0.12, 0.22) * height, cy - rng.uniform(0.25, 0.4) * ay, rng.uniform(15, 30)]),
        heart_semi=np.array([rng.uniform(55, 70), rng.uniform(50, 60), rng.uniform(55, 68)]),
        medi_ax=gap / 2 + rng.uniform(4, 10), spine_y=back - rng.uniform(8, 16), spine_r=rng.uniform(24, 30),
        rib_pitch=rng.uniform(24, 30), rib_phase=rng.uniform(0, 1), rib_drop=rng.uniform(25, 45),
        lung_hu=rng.uniform(-885, -835), gravity_hu=rng.uniform(20, 60))


def _ellipse_sdf(u, v, au, av):
    """Approximate signed distance to an ellipse (exact on the axes, smooth elsewhere)."""
    q = np.sqrt((u / au) ** 2 + (v / av) ** 2)
    return (q - 1.0) * np.minimum(au, av)


def lung_sdf(chest: Chest, lung: Lung, Z, Y, X):
    """Approximate signed distance (mm, < 0 inside) to the lung surface; Z, Y, X broadcast."""
    zt = np.clip((Z - lung.shoulder) / (lung.height - lung.shoulder), 0.0, 1.0)
    taper = np.sqrt(np.maximum(1.0 - zt**2, 1e-4))  # the cross-section shrinks to the apex
    du, dv = (X - lung.cx) / lung.ax, (Y - lung.cy) / lung.ay
    q = np.sqrt(du**2 + dv**2)
    d = (q - taper) * min(lung.ax, lung.ay)
    base = lung.dome_top - lung.dome_drop * np.minimum(q, 1.2) ** 2 - 12.0 * np.clip(dv, 0, 1)
    d = np.maximum(d, (base - Z) * 0.6)  # the dome is steep at the rim: scale towards a distance
    d = np.maximum(d, Z - lung.height)
    hz, hy, hx = (Z - chest.heart_c[0]) / chest.heart_semi[0], (Y - chest.heart_c[1]) / chest.heart_semi[1], \
        (X - chest.heart_c[2]) / chest.heart_semi[2]
    heart = (np.sqrt(hz**2 + hy**2 + hx**2) - 1.0) * float(chest.heart_semi.min())
    d = np.maximum(d, -heart)
    medi = _ellipse_sdf(X, Y - (lung.cy - 0.3 * lung.ay), chest.medi_ax, 0.75 * lung.ay)
    d = np.maximum(d, -medi)
    spine = np.sqrt(X**2 + (Y - chest.spine_y) ** 2) - chest.spine_r
    d = np.maximum(d, -spine)
    return np.maximum(d, _ellipse_sdf(X, Y, chest.body_ax - chest.wall, chest.body_ay - chest.wall))  # inside the wall


def lung_bounds(lung: Lung, margin=2.0):
    """Body-frame box (lo, hi) (Z, Y, X) that holds the lung."""
    lo = np.array([lung.dome_top - lung.dome_drop * 1.44 - 12, lung.cy - lung.ay, lung.cx - lung.ax]) - margin
    hi = np.array([lung.height, lung.cy + lung.ay, lung.cx + lung.ax]) + margin
    return lo, hi


def oblique_z(lung: Lung, Y, X):
    return lung.obl_z + lung.obl_slope * (Y - lung.cy) + lung.obl_tilt * np.abs(X - lung.cx)


def horizontal_z(lung: Lung, Y):
    return lung.hor_z + lung.hor_slope * (Y - lung.cy)


def lobe_of(point_zyx, lung: Lung) -> int:
    """Lobe (tables.LOBES index) of a body-frame point of `lung`, from the fissures drawn."""
    z, y, x = (float(v) for v in point_zyx)
    if z < oblique_z(lung, y, x):
        return 2 if lung.right else 5
    if z >= horizontal_z(lung, y) if lung.right else z >= lung.hor_z:
        return 0 if lung.right else 3
    return 1 if lung.right else 4


def fissure_distance(lung: Lung, Z, Y, X, which):
    """Signed distance to the oblique or horizontal fissure plane and its normal's z part."""
    if which == "oblique":
        norm = np.sqrt(1 + lung.obl_slope**2 + lung.obl_tilt**2)
        return (Z - oblique_z(lung, Y, X)) / norm, 1 / norm
    norm = np.sqrt(1 + lung.hor_slope**2)
    return (Z - horizontal_z(lung, Y)) / norm, 1 / norm


def render_body(chest: Chest, grid: Grid):
    """Body wall, ribs, spine, sternum, mediastinum and trachea (HU, float32, grid.shape)."""
    Z, Y, X = grid.axes()
    sig = np.sqrt(grid.sigma2(0.0))
    # In-plane structures are columns along Z: compute one slice and repeat it.
    y2, x2 = Y[0], X[0]
    outer = _ellipse_sdf(x2, y2, chest.body_ax, chest.body_ay)
    sl = AIR_HU + edge(outer, sig) * (FAT_HU - AIR_HU)
    muscle = _ellipse_sdf(x2, y2, chest.body_ax - chest.fat, chest.body_ay - chest.fat)
    sl += edge(muscle, sig) * (MUSCLE_HU - sl)
    cavity = _ellipse_sdf(x2, y2, chest.body_ax - chest.wall, chest.body_ay - chest.wall)
    sl += edge(cavity, sig) * (SOFT_HU - sl)
    front_fat = _ellipse_sdf(x2, y2 - (-(chest.body_ay - chest.wall) + 25), 35.0, 22.0)  # anterior mediastinal fat
    sl += edge(front_fat, 2 * sig) * (FAT_HU - sl)
    sternum = _ellipse_sdf(x2, y2 - (-(chest.body_ay - 0.55 * chest.wall)), 16.0, 5.0)
    sl += edge(sternum, sig) * (MARROW_HU + 150 - sl)
    vb = np.sqrt(x2**2 + (y2 - chest.spine_y - 0.3 * chest.spine_r) ** 2) - 0.72 * chest.spine_r
    sl += edge(vb, sig) * (BONE_HU - sl)  # vertebral body: cortex ...
    sl += edge(vb + 2.0, sig) * (MARROW_HU - sl)  # ... and marrow
    img = np.empty(grid.shape, dtype=np.float32)
    img[:] = sl.astype(np.float32)

    # Ribs: bands in the chest wall that run round the body and descend towards the front.
    ring = (cavity > -2) & (cavity < chest.wall - chest.fat) & (y2 > -0.55 * chest.body_ay) & (np.abs(x2) > 25)
    iy, ix = np.nonzero(np.broadcast_to(ring, sl.shape))
    if len(iy):
        depth = cavity[iy, ix]
        radial = np.maximum(2.0 - depth, depth - 9.0)  # the rib's section: 7 mm deep in the wall
        ang = np.arctan2(y2[iy, 0] / chest.body_ay, np.abs(x2[0, ix]) / chest.body_ax)  # -pi/2 front, pi/2 back
        zshift = chest.rib_drop * (0.5 - 0.5 * np.sin(ang))
        u = (Z[:, 0, 0][:, None] + zshift[None]) / chest.rib_pitch - chest.rib_phase
        dz = np.abs(u - np.rint(u)) * chest.rib_pitch - 5.0  # 10 mm tall ribs
        rib = edge(np.maximum(radial[None], dz), sig).astype(np.float32)
        img[:, iy, ix] += rib * (BONE_HU - img[:, iy, ix])
    # Intervertebral discs.
    spine = np.nonzero(np.broadcast_to(vb < 0, sl.shape))
    if len(spine[0]):
        u = Z[:, 0, 0] / 30.0 - chest.rib_phase
        disc = edge(np.abs(u - np.rint(u)) * 30.0 - 3.0, 0.8).astype(np.float32)[:, None]
        img[:, spine[0], spine[1]] += disc * (70.0 - img[:, spine[0], spine[1]])
    # Trachea above the carina.
    carina = 0.62 * max(l.height for l in chest.lungs)
    tz = Z[:, 0, 0] > carina
    if tz.any():
        tr = np.sqrt(x2**2 + (y2 - (chest.spine_y - chest.spine_r - 14)) ** 2)
        img[tz] += (edge(tr - 11.0, sig) * (SOFT_HU - 10 - img[tz]))
        img[tz] += (edge(tr - 9.0, sig) * (AIR_HU - img[tz]))
    return img


def render_lungs(chest: Chest, grid: Grid, img):
    """Draws both lungs into `img` (parenchyma denser at the back) and returns their
    occupancies [(box, occ float32)] per lung."""
    out = []
    sig = np.sqrt(grid.sigma2(0.3))
    for lung in chest.lungs:
        lo, hi = lung_bounds(lung)
        box = grid.box(lo, hi)
        if box is None:
            out.append((None, None))
            continue
        Z, Y, X = (a.astype(np.float32) for a in grid.sub_axes(box))
        occ = edge(lung_sdf(chest, lung, Z, Y, X), sig).astype(np.float32)
        paren = np.float32(chest.lung_hu) + np.float32(chest.gravity_hu) * np.clip((Y - lung.cy) / lung.ay, -1, 1)
        img[box] += occ * (paren - img[box])
        out.append((box, occ))
    return out


def render_fissures(chest: Chest, grid: Grid, img, lung_occ, thickness=0.35):
    """Thin pleural sheets along the fissures, inside each lung ((box, occupancy) of
    lung_occ). A fissure is a height map Z = h(Y, X), so only the few slices around it in
    each column are touched."""
    sz = grid.spacing[0]
    for lung, (box, occ) in zip(chest.lungs, lung_occ):
        if box is None:
            continue
        Z, Y, X = grid.sub_axes(box)
        y2, x2 = Y[0], X[0]
        sheets = [(oblique_z(lung, y2, x2), np.sqrt(1 + lung.obl_slope**2 + lung.obl_tilt**2), False)]
        if lung.right:
            sheets.append((horizontal_z(lung, y2) + 0 * x2, np.sqrt(1 + lung.hor_slope**2), True))
        view = img[box]
        iy, ix = np.indices(y2.shape[:1] + x2.shape[1:])
        for h, norm, front_only in sheets:
            s2 = grid.sigma2(1.0 / norm**2)
            reach = int(np.ceil(3 * np.sqrt(s2) * norm / sz)) + 1
            z0 = np.floor((h - Z[0, 0, 0]) / sz).astype(np.int64)
            for k in range(-reach, reach + 1):
                zi = z0 + k
                ok = (zi >= 0) & (zi < view.shape[0])
                if front_only:  # the horizontal fissure ends at the oblique one
                    ok &= h > oblique_z(lung, y2, x2)
                if not ok.any():
                    continue
                z, y, x = zi[ok], iy[ok], ix[ok]
                d = (Z[0, 0, 0] + z * sz - h[ok]) / norm
                f = (thickness / np.sqrt(2 * np.pi * s2)) * np.exp(-(d**2) / (2 * s2)) * occ[z, y, x]
                view[z, y, x] += f.astype(np.float32) * (np.float32(FISSURE_HU) - view[z, y, x])

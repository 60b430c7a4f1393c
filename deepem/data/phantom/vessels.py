"""Pulmonary vessel and airway trees.

Each lung gets an arterial and a venous tree grown into its volume: the tree owns a cloud of
random points of the lung (its territory); a branch runs from its start towards its
territory's centre, then the territory splits in two across its longest extent and each half
gets a child whose radius follows Murray's law (r^3 = r1^3 + r2^3). Branches are quadratic
Bezier curves that leave in their parent's direction (smooth junctions) and bend towards their
target; the last ones taper to the points themselves, so vessels reach the pleura. Airways run
beside the arteries (bronchovascular bundles) down to about 2 mm, with walls.
"""
import math
from dataclasses import dataclass

import numpy as np

from .anatomy import Chest, Lung, lung_bounds, lung_sdf

VESSEL_HU = 40.0
_AXIS_START = np.array([1.0, 0.7, 0.4])


@dataclass
class Tree:
    points: np.ndarray  # [P, 3] dense centreline samples (Z, Y, X) mm
    radii: np.ndarray  # [P]
    branch: np.ndarray  # [P] branch index of each sample
    starts: np.ndarray  # [B, 3] first point of each branch
    ends: np.ndarray  # [B, 3]
    radius: np.ndarray  # [B] radius of each branch at its start
    depth: np.ndarray  # [B] generation


def lung_points(rng, chest: Chest, lung: Lung, n, inset=3.0):
    """n uniform random points at least `inset` mm inside the lung."""
    lo, hi = lung_bounds(lung)
    out = []
    while sum(len(o) for o in out) < n:
        p = rng.uniform(lo, hi, size=(4 * n, 3))
        d = lung_sdf(chest, lung, p[:, 0], p[:, 1], p[:, 2])
        out.append(p[d < -inset])
    return np.concatenate(out)[:n]


def grow_tree(rng, root, direction, r0, territory, r_tip=0.25, bend=0.25, window=None, margin=10.0):
    """Grows one tree from `root` (mm) heading along `direction` with radius r0 into the
    territory points [N, 3]; returns a Tree. With `window` (lo, hi) mm, subtrees that cannot
    reach the window (their start and territory lie outside it, `margin` mm apart) are not
    grown: a field of view gets the vessels it would show of the whole tree, only faster.

    The 3-vector arithmetic runs on Python floats (numpy's per-call overhead was most of the
    time): the same IEEE operations in the same order as numpy's, so the same tree bit for bit
    (tests/test_data_phantom.py); sums, products and sorts over a territory stay numpy's."""
    P0, P1, P2, R0, R1, depth = [], [], [], [], [], []
    heading0 = np.asarray(direction, float) / np.linalg.norm(direction)
    stack = [(_floats(root), heading0.tolist(), float(r0), np.arange(len(territory)), 0)]
    noise = rng.normal(size=(2 * len(territory) + 2, 3))  # one draw for every branch's bend
    fracs = rng.uniform(size=(2 * len(territory) + 2, 2))
    noise_rows, frac_rows, point_rows = noise.tolist(), fracs.tolist(), np.asarray(territory, float).tolist()
    if window is not None:
        w_lo, w_hi = _floats(window[0]), _floats(window[1])
    while stack:
        start, heading, r, idx, gen = stack.pop()
        b = len(P0)
        leaf = len(idx) == 1
        own = None if leaf else territory[idx]
        if window is not None:
            # own.min(0) and own.max(0); of a single point, the point
            low, high = (point_rows[idx[0]],) * 2 if leaf else (own.min(0).tolist(), own.max(0).tolist())
            if any(max(h, s) + margin + r < w for h, s, w in zip(high, start, w_lo)) or \
                    any(min(l, s) - margin - r > w for l, s, w in zip(low, start, w_hi)):
                continue
        if leaf:  # own.sum(0) / 1 of a single point: the point
            end = centre = point_rows[idx[0]]
        else:
            centre = (own.sum(0) / len(own)).tolist()
            f = 0.3 + 0.2 * frac_rows[b][0]
            end = [s + (c - s) * f for s, c in zip(start, centre)]
        chord = [e - s for e, s in zip(end, start)]
        length = math.sqrt(_dot(chord, chord))
        if length < 1e-6:
            continue
        # Leave along the parent's heading, then bend towards the target: a smooth junction.
        ctrl = [0.5 * (s + h * length * 0.5) + 0.25 * (s + e) + n * length * bend * 0.2
                for s, h, e, n in zip(start, heading, end, noise_rows[b])]
        P0.append(start), P1.append(ctrl), P2.append(end), R0.append(r), R1.append(r_tip if leaf else r)
        depth.append(gen)
        if leaf:
            continue
        tangent = [e - c for e, c in zip(end, ctrl)]
        norm = max(math.sqrt(_dot(tangent, tangent)), 1e-9)
        tangent = [t / norm for t in tangent]
        c = own - np.asarray(centre)
        m = c.T @ c
        axis = m @ (m @ (m @ (_AXIS_START + noise[b] * 0.1)))  # power iteration: longest extent
        order = np.argsort(c @ axis, kind="stable")
        cut = min(max(int(round(len(idx) * (0.35 + 0.3 * frac_rows[b][1]))), 1), len(idx) - 1)
        for half in (order[:cut], order[cut:]):
            stack.append((end, tangent, r * (len(half) / len(idx)) ** (1.0 / 3.0), idx[half], gen + 1))
    P0, P1, P2 = (np.asarray(a, dtype=np.float64).reshape(-1, 3) for a in (P0, P1, P2))
    R0, R1 = np.asarray(R0, dtype=np.float64), np.asarray(R1, dtype=np.float64)
    points, radii, branch = sample_curves(P0, P1, P2, R0, R1)
    return Tree(points, radii, branch, P0, P2, R0, np.asarray(depth))


def _floats(v):
    return [float(x) for x in np.asarray(v, dtype=np.float64).reshape(3)]


def _dot(a, b):
    """(a * b).sum() of two 3-vectors as numpy sums three numbers: (a0 b0 + a1 b1) + a2 b2."""
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def sample_curves(p0, p1, p2, r0, r1, step_of_r=0.6, min_step=0.35, max_step=1.2):
    """Dense samples of quadratic Bezier curves p0 -> p2 (controls p1, all [B, 3]) with radii
    tapering r0 -> r1, spaced about step_of_r * radius: (points [P, 3], radii [P], branch [P])."""
    length = np.linalg.norm(p1 - p0, axis=1) + np.linalg.norm(p2 - p1, axis=1)
    step = np.clip(step_of_r * np.minimum(r0, r1), min_step, max_step)
    n = np.maximum(2, np.ceil(length / step).astype(np.int64) + 1).reshape(-1)
    branch = np.repeat(np.arange(len(n)), n)
    first = np.cumsum(n) - n
    t = ((np.arange(int(n.sum())) - first[branch]) / (n[branch] - 1))[:, None]
    pts = (1 - t) ** 2 * p0[branch] + 2 * (1 - t) * t * p1[branch] + t**2 * p2[branch]
    return pts, r0[branch] + (r1 - r0)[branch] * t[:, 0], branch


def grow_lung_trees(rng, chest: Chest, lung: Lung, n_points=2500, window=None):
    """The artery and the vein tree of one lung (dict name -> Tree); `window`: see grow_tree."""
    s = -1.0 if lung.right else 1.0
    medial = lung.cx - s * lung.ax * 0.78
    trees = {}
    roots = (("artery", 0.55, -0.05, rng.uniform(4.5, 6.0)), ("vein", 0.35, -0.25, rng.uniform(4.0, 5.5)))
    for name, z, y, r0 in roots:
        root = np.array([z * lung.height, lung.cy + y * lung.ay, medial])
        territory = lung_points(rng, chest, lung, n_points)
        heading = territory.mean(0) - root
        trees[name] = grow_tree(rng, root, heading, r0, territory, window=window)
    return trees


def airway_of(rng, artery: Tree, min_radius=1.0):
    """Airway centreline samples beside the artery's branches of radius >= min_radius:
    (points [P, 3], lumen radii [P], wall thickness [P])."""
    keep = artery.radius[artery.branch] >= min_radius
    if not keep.any():
        return np.zeros((0, 3)), np.zeros(0), np.zeros(0)
    # One side offset per branch, perpendicular to the branch's chord.
    chord = artery.ends - artery.starts
    chord /= np.maximum(np.linalg.norm(chord, axis=1, keepdims=True), 1e-9)
    rnd = rng.normal(size=chord.shape)
    perp = rnd - (rnd * chord).sum(1, keepdims=True) * chord
    perp /= np.maximum(np.linalg.norm(perp, axis=1, keepdims=True), 1e-9)
    b = artery.branch[keep]
    r_art = artery.radii[keep]
    lumen = 0.9 * r_art
    wall = 0.2 * lumen + 0.25
    pts = artery.points[keep] + perp[b] * (r_art + lumen + wall + 0.3)[:, None]
    return pts, lumen, wall

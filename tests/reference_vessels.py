"""The phantom's vessel tree grown with numpy on every 3-vector, as deepem.data.phantom.vessels
did before it moved that arithmetic to Python floats: the reference its trees must equal bit
for bit."""
import numpy as np

from deepem.data.phantom import vessels


def grow_tree_numpy(rng, root, direction, r0, territory, r_tip=0.25, bend=0.25, window=None, margin=10.0):
    """Grows one tree from `root` (mm) heading along `direction` with radius r0 into the
    territory points [N, 3]; returns a Tree. With `window` (lo, hi) mm, subtrees that cannot
    reach the window (their start and territory lie outside it, `margin` mm apart) are not
    grown: a field of view gets the vessels it would show of the whole tree, only faster."""
    P0, P1, P2, R0, R1, depth = [], [], [], [], [], []
    heading0 = np.asarray(direction, float) / np.linalg.norm(direction)
    stack = [(np.asarray(root, float), heading0, float(r0), np.arange(len(territory)), 0)]
    noise = rng.normal(size=(2 * len(territory) + 2, 3))  # one draw for every branch's bend
    fracs = rng.uniform(size=(2 * len(territory) + 2, 2))
    while stack:
        start, heading, r, idx, gen = stack.pop()
        b = len(P0)
        own = territory[idx]
        if window is not None:
            lo = np.minimum(own.min(0), start) - margin - r
            hi = np.maximum(own.max(0), start) + margin + r
            if (hi < window[0]).any() or (lo > window[1]).any():
                continue
        leaf = len(idx) == 1
        centre = own.sum(0) / len(own)  # own.mean(0), bit for bit, without its per-call overhead
        span = centre - start
        end = centre if leaf else start + span * (0.3 + 0.2 * fracs[b, 0])
        length = float(np.sqrt(((end - start) ** 2).sum()))
        if length < 1e-6:
            continue
        # Leave along the parent's heading, then bend towards the target: a smooth junction.
        ctrl = 0.5 * (start + heading * length * 0.5) + 0.25 * (start + end) + noise[b] * length * bend * 0.2
        P0.append(start), P1.append(ctrl), P2.append(end), R0.append(r), R1.append(r_tip if leaf else r)
        depth.append(gen)
        if leaf:
            continue
        tangent = end - ctrl
        tangent = tangent / max(float(np.sqrt((tangent**2).sum())), 1e-9)
        c = own - centre
        m = c.T @ c
        axis = m @ (m @ (m @ (np.array([1.0, 0.7, 0.4]) + noise[b] * 0.1)))  # power iteration: longest extent
        order = np.argsort(c @ axis, kind="stable")
        cut = min(max(int(round(len(idx) * (0.35 + 0.3 * fracs[b, 1]))), 1), len(idx) - 1)
        for half in (order[:cut], order[cut:]):
            stack.append((end, tangent, r * (len(half) / len(idx)) ** (1.0 / 3.0), idx[half], gen + 1))
    P0, P1, P2 = (np.asarray(a, dtype=np.float64).reshape(-1, 3) for a in (P0, P1, P2))
    R0, R1 = np.asarray(R0, dtype=np.float64), np.asarray(R1, dtype=np.float64)
    points, radii, branch = vessels.sample_curves(P0, P1, P2, R0, R1)
    return vessels.Tree(points, radii, branch, P0, P2, R0, np.asarray(depth))

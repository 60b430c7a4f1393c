"""The README's phantom figure (docs/phantom.png): an axial slice of a whole-chest (luna16
preset) phantom, and demo-preset close-ups of one nodule of each kind, labelled with the
types in annotations_types.csv. Plans are searched without rendering; a few scans are drawn.

    python scripts/phantom_figure.py [--out docs/phantom.png] [--seed 0]
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from deepem.data import io, phantom  # noqa: E402

WANTED = [("solid", "isolated"), ("part-solid", None), ("ggo", None), (None, "pleural"), (None, "vascular"),
          (None, "fissure")]


def label(t, d):
    attach = {"isolated": "", "pleural": ", juxtapleural", "fissure": ", on a fissure", "vascular": ", juxtavascular"}
    return "%s%s, %s\n%.1f mm" % (t["texture"], attach[t["attachment"]], t["shape"], d)


def find(seed, texture, attach, used, min_d=6.0):
    for index in range(200):
        plan = phantom.plan_scan(seed, index, preset="demo", options=phantom.Options(lookalike_rates=None))
        for k, n in enumerate(plan["nodules"]):
            if (index, k) in used or n["diameter"] < min_d:
                continue
            if (texture is None or n["texture"] == texture) and (attach is None or n["attach"] == attach):
                used.add((index, k))
                return plan, k
    raise RuntimeError("no %s %s nodule found" % (texture, attach))


def main(argv=None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=os.path.join("docs", "phantom.png"))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    fig = plt.figure(figsize=(15, 6.6))
    grid = fig.add_gridspec(2, 5, width_ratios=[2.2, 2.2, 1, 1, 1], wspace=0.04, hspace=0.12)
    # A whole chest, through its first nodule.
    for index in range(50):
        plan = phantom.plan_scan(args.seed, index, preset="luna16")
        if plan["nodules"]:
            break
    vol, _, info = phantom.render_scan(plan)
    ax = fig.add_subplot(grid[:, :2])
    v = io.world_to_voxel(info["nodules"][0, :3], vol.origin, vol.spacing)
    ax.imshow(vol.array[int(round(v[0]))], cmap="gray", vmin=-1200, vmax=400)
    for (x, y, z, d), t in zip(info["nodules"], info["types"]):
        w = io.world_to_voxel([x, y, z], vol.origin, vol.spacing)
        if abs(w[0] - v[0]) * vol.spacing[2] < d / 2:
            ax.add_patch(plt.Circle((w[2], w[1]), d / 2 / vol.spacing[0] + 6, fill=False, color="tab:red", lw=1.5))
            ax.text(w[2] + d / vol.spacing[0] + 8, w[1], label(t, d), color="yellow", fontsize=9, va="center")
    ax.set_title("luna16 preset: %d x %d x %d voxels, %.2f x %.2f x %.2f mm" % (*vol.array.shape[::-1], *vol.spacing),
                 fontsize=10)
    ax.axis("off")
    # Close-ups from demo windows: one nodule of each kind.
    used = set()
    for k, (texture, attach) in enumerate(WANTED):
        plan, i = find(args.seed, texture, attach, used)
        vol, _, info = phantom.render_scan(plan)
        x, y, z, d = info["nodules"][i]
        w = np.rint(io.world_to_voxel([x, y, z], vol.origin, vol.spacing)).astype(int)
        half = int(round(22 / vol.spacing[0]))
        sl = vol.array[w[0]]
        y0, x0 = np.clip(w[1] - half, 0, sl.shape[0] - 2 * half), np.clip(w[2] - half, 0, sl.shape[1] - 2 * half)
        ax = fig.add_subplot(grid[k // 3, 2 + k % 3])
        ax.imshow(sl[y0:y0 + 2 * half, x0:x0 + 2 * half], cmap="gray", vmin=-1200, vmax=400)
        ax.add_patch(plt.Circle((w[2] - x0, w[1] - y0), d / 2 / vol.spacing[0] + 4, fill=False, color="tab:red", lw=1))
        ax.set_title(label(info["types"][i], d), fontsize=8.5)
        ax.axis("off")
    fig.text(0.62, 0.02, "demo preset close-ups (44 mm); window [-1200, 400] HU", fontsize=9)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out, dpi=80, bbox_inches="tight")
    print("wrote", args.out)


if __name__ == "__main__":
    main()

"""One PNG per mark: axial, coronal and sagittal slices of the ORIGINAL scan through the mark's
centre, lung window, the mark's cube drawn and its score written (matplotlib, Agg)."""
import os

import numpy as np

from ..data.atomic import atomic_write
from ..data.uids import check_uid

LUNG_WINDOW = (-1350.0, 150.0)  # HU: level -600, width 1500


def _panel(ax, image, centre, half, aspect, title, flip_rows):
    import matplotlib.patches as patches

    ax.imshow(image, cmap="gray", vmin=LUNG_WINDOW[0], vmax=LUNG_WINDOW[1], aspect=aspect,
              origin="lower" if flip_rows else "upper", interpolation="nearest")
    (r, c), (hr, hc) = centre, half
    ax.add_patch(patches.Rectangle((c - hc, r - hr), 2 * hc, 2 * hr, fill=False, edgecolor="#ff3030", lw=1.2))
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()


def overlay_name(uid, rank, probability):
    check_uid(uid, "the marks to draw")
    return "%s_mark%03d_p%.3f.png" % (uid, rank, probability)


def write_overlays(volume, marks, out_dir, min_probability=0.5):
    """Writes a PNG per mark of `marks` (one scan) with probability >= min_probability;
    `volume` is the original scan (deepem.data.io.Volume, HU). Returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    arr = volume.array
    sp = volume.spacing_zyx  # mm per voxel (z, y, x)
    head_up = np.asarray(volume.direction, dtype=np.float64).reshape(3, 3)[2, 2] > 0
    pick = np.nonzero(marks.probability >= min_probability)[0]
    if len(pick) == 0:
        return []
    centres = volume.world_to_voxel(marks.world_xyz[pick])  # source voxels (z, y, x), vectorised
    paths = []
    for rank, i, v in zip(range(len(pick)), pick, centres):  # one figure per drawn mark
        idx = np.clip(np.round(v).astype(int), 0, np.asarray(arr.shape) - 1)
        half = marks.diameter_mm[i] / 2 / sp  # the cube's half side in voxels per axis
        fig, axes = plt.subplots(1, 3, figsize=(12, 4.6), dpi=80)
        _panel(axes[0], arr[idx[0]], (v[1], v[2]), (half[1], half[2]), sp[1] / sp[2],
               "axial, slice z=%d" % idx[0], False)
        _panel(axes[1], arr[:, idx[1], :], (v[0], v[2]), (half[0], half[2]), sp[0] / sp[2],
               "coronal, row y=%d" % idx[1], head_up)
        _panel(axes[2], arr[:, :, idx[2]], (v[0], v[1]), (half[0], half[1]), sp[0] / sp[1],
               "sagittal, column x=%d" % idx[2], head_up)
        fig.suptitle("%s  mark %d  p=%.3f  d=%.1f mm  at (x, y, z) = (%.1f, %.1f, %.1f) mm, ITK/LPS world"
                     % (marks.seriesuid[i], rank, marks.probability[i], marks.diameter_mm[i],
                        marks.x[i], marks.y[i], marks.z[i]), fontsize=9)
        path = os.path.join(out_dir, overlay_name(marks.seriesuid[i], rank, marks.probability[i]))
        try:
            atomic_write(path, lambda f: fig.savefig(f, format="png"), mode="wb")
        finally:
            plt.close(fig)
        paths.append(path)
    return paths

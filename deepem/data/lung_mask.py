"""Lung masks: LUNA16's seg-lungs masks when present, otherwise a threshold + connected
component segmentation; then DeepLung's per-slice convex-hull refinement and 3D dilation."""
import numpy as np
from scipy import ndimage

# LUNA16 seg-lungs label values.
SEG_RIGHT_LUNG, SEG_LEFT_LUNG = 3, 4


class EmptyLungMask(RuntimeError):
    """No lung was found in a scan."""


def lungs_from_seg(seg: np.ndarray):
    """LUNA16 seg-lungs labels -> (right, left) boolean masks (the trachea, 5, is dropped)."""
    return seg == SEG_RIGHT_LUNG, seg == SEG_LEFT_LUNG


def segment_lungs(hu: np.ndarray, spacing_zyx, threshold: float = -600.0, min_volume_ml: float = 5.0,
                  second_fraction: float = 0.1, outside_hu: float = -950.0):
    """Threshold segmentation: air below `threshold` HU, minus the air outside the body (air
    components touching the in-plane border of any slice whose mean is below `outside_hu`:
    room air is about -1000 HU, lung -900 to -700, so a field of view that cuts through a lung
    keeps it), smoothed per slice; the two largest
    remaining 3D components are the lungs: the largest (at least `min_volume_ml`) and the next
    when it is at least `second_fraction` of it (else the lungs touch and it is gas elsewhere).
    Returns (a, b) boolean masks ordered by centroid x, b empty when there is one component."""
    spacing_zyx = np.asarray(spacing_zyx, dtype=np.float64)
    air = hu < threshold
    # Blur away single-voxel noise first, as DeepLung's reference segmentation does (sigma 1 px).
    air = ndimage.gaussian_filter(air.astype(np.float32), sigma=(0, 1, 1)) > 0.5
    labels, n = ndimage.label(air)
    if n == 0:
        raise EmptyLungMask("no air below %g HU" % threshold)
    border = np.zeros(n + 1, dtype=bool)
    for face in (labels[:, 0, :], labels[:, -1, :], labels[:, :, 0], labels[:, :, -1]):
        border[np.unique(face)] = True
    border[0] = True
    touching = np.nonzero(border[1:])[0] + 1
    if len(touching):  # a lung cut by the field of view touches the border too: keep it
        means = np.asarray(ndimage.mean(hu, labels, touching))
        border[touching[means >= outside_hu]] = False
    sizes = np.bincount(labels.reshape(-1), minlength=n + 1).astype(np.float64)
    sizes[border] = 0
    voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
    order = [i for i in np.argsort(-sizes)[:2] if sizes[i] * voxel_ml >= min_volume_ml]
    order = [i for i in order if sizes[i] >= second_fraction * sizes[order[0]]]
    if not order:
        raise EmptyLungMask("no air component inside the body of at least %g ml" % min_volume_ml)
    masks = [ndimage.binary_fill_holes(labels == i) for i in order]
    masks.sort(key=lambda m: np.nonzero(m)[2].mean())
    if len(masks) == 1:
        masks.append(np.zeros_like(masks[0]))
    return masks[0], masks[1]


def _hull_slice(mask2d: np.ndarray) -> np.ndarray:
    """Pixels whose centres lie in the convex hull of the mask's pixel squares."""
    from scipy.spatial import ConvexHull, QhullError

    ys, xs = np.nonzero(mask2d)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    edge = mask2d & ~ndimage.binary_erosion(mask2d)  # the hull of the edge pixels is the same
    ys, xs = np.nonzero(edge)
    corners = np.array([[-0.5, -0.5], [-0.5, 0.5], [0.5, -0.5], [0.5, 0.5]])
    points = (np.stack([ys, xs], 1)[:, None, :] + corners[None]).reshape(-1, 2)
    try:
        eq = ConvexHull(points).equations  # rows (ny, nx, c): inside where ny*y + nx*x + c <= 0
    except QhullError:
        return mask2d.copy()
    gy, gx = np.mgrid[y0:y1, x0:x1]
    inside = np.ones(gy.shape, dtype=bool)
    for ny, nx, c in eq:  # one facet at a time: the same numbers, no [H, W, facets] temporaries (2.6x)
        inside &= gy * ny + gx * nx + c <= 1e-9
    out = np.zeros_like(mask2d)
    out[y0:y1, x0:x1] = inside
    return out | mask2d


def convex_hull_refine(mask: np.ndarray, max_ratio: float = 1.5) -> np.ndarray:
    """DeepLung's process_mask: each slice becomes its convex hull when the hull is at most
    `max_ratio` times the slice's area (it fills juxtapleural nodules and vessels in the
    lung border) and stays as it is otherwise (a hull that large spans non-lung tissue)."""
    out = mask.copy()
    for z in range(mask.shape[0]):
        area = int(mask[z].sum())
        if area == 0:
            continue
        hull = _hull_slice(mask[z])
        if hull.sum() <= max_ratio * area:
            out[z] = hull
    return out


def dilate(mask: np.ndarray, iterations: int = 10) -> np.ndarray:
    """3D dilation with the 6-connected structure, as DeepLung (10 iterations)."""
    out = np.zeros_like(mask, dtype=bool)
    if not mask.any():
        return out
    # Dilate only the mask's bounding box grown by `iterations`: the same result, far less work.
    idx = np.nonzero(mask)
    box = tuple(slice(max(int(i.min()) - iterations, 0), int(i.max()) + iterations + 1) for i in idx)
    struct = ndimage.generate_binary_structure(3, 1)
    out[box] = ndimage.binary_dilation(mask[box], structure=struct, iterations=iterations)
    return out

"""deepem.data.phantom.render.splat_tubes against a float64 voxel-by-voxel reference written from
its docstring: every voxel within a sample's box (ceil(reach / spacing) voxels per axis, the y
half-width for x too) gets the blurred edge profile of its distance to that sample, max-combined."""
import math

import numpy as np
import pytest

pytest.importorskip("scipy")

from deepem.data.phantom.render import Grid, splat_tubes, thin_peak


def reference_splat(grid, points, radii):
    occ = np.zeros(grid.shape)
    sp, corner, shape = np.asarray(grid.spacing, float), np.asarray(grid.corner_mm, float), grid.shape
    psf2, slice2 = grid.psf_mm ** 2, sp[0] ** 2 / 12.0
    blur = math.sqrt(psf2 + slice2)  # sigma2(1.0): the reach covers the widest edge
    for p, r in zip(np.asarray(points, float), np.asarray(radii, float)):
        reach = r + 2.2 * blur
        if np.any(p + reach < corner) or np.any(p - reach > corner + (np.asarray(shape) - 1) * sp):
            continue
        hz, hy = (int(math.ceil(reach / sp[a])) for a in (0, 1))
        c = np.rint((p - corner) / sp).astype(int)
        peak = thin_peak(r, math.sqrt(psf2 + 0.5 * slice2))
        for iz in range(c[0] - hz, c[0] + hz + 1):
            for iy in range(c[1] - hy, c[1] + hy + 1):
                for ix in range(c[2] - hy, c[2] + hy + 1):
                    if not (0 <= iz < shape[0] and 0 <= iy < shape[1] and 0 <= ix < shape[2]):
                        continue
                    d = np.array([iz, iy, ix]) * sp + corner - p
                    d2 = float((d ** 2).sum())
                    sigma = math.sqrt(psf2 + slice2 * d[0] ** 2 / max(d2, 1e-12))
                    val = peak / (1.0 + math.exp(min(max(1.702 * (math.sqrt(d2) - r) / sigma, -40), 40)))
                    occ[iz, iy, ix] = max(occ[iz, iy, ix], val)
    return occ


@pytest.mark.parametrize("seed", range(3))
def test_splat_tubes_matches_the_voxel_by_voxel_reference(seed):
    # Anisotropic spacing and a non-cubic grid, so that a swapped axis cannot pass; samples
    # inside, at the border and outside the grid, radii thinner and wider than the blur.
    rng = np.random.default_rng(seed)
    grid = Grid(shape=(9, 14, 17), spacing=np.array([1.25, 0.7, 0.85]), corner_mm=np.array([-3.0, 2.0, 1.0]))
    hi = grid.hi_mm
    points = rng.uniform(grid.corner_mm - 3.0, hi + 3.0, size=(25, 3))
    radii = rng.uniform(0.2, 2.5, size=25)
    occ = splat_tubes(np.zeros(grid.shape, np.float32), grid, points, radii)
    ref = reference_splat(grid, points, radii)
    assert ref.max() > 0.5  # the case draws something
    np.testing.assert_allclose(occ, ref, atol=2e-6)


def test_splat_tubes_max_combines_into_what_is_there_and_ignores_far_samples():
    grid = Grid(shape=(6, 8, 8), spacing=np.array([1.0, 1.0, 1.0]), corner_mm=np.zeros(3))
    start = np.full(grid.shape, 0.3, np.float32)
    occ = splat_tubes(start.copy(), grid, [[2.5, 3.5, 3.5]], [1.0])
    ref = np.maximum(reference_splat(grid, [[2.5, 3.5, 3.5]], [1.0]), 0.3)
    np.testing.assert_allclose(occ, ref, atol=2e-6)
    far = splat_tubes(start.copy(), grid, [[50.0, 3.0, 3.0]], [1.0])  # outside the grid's reach
    assert np.array_equal(far, start)
    empty = splat_tubes(start.copy(), grid, np.zeros((0, 3)), np.zeros(0))
    assert np.array_equal(empty, start)

"""deepem.data.preprocess: DeepLung pipeline on phantom scans written as real .mhd files."""
import json
import os

import numpy as np
import pytest

pytest.importorskip("scipy")
pytest.importorskip("SimpleITK")

from deepem.data import io, lung_mask, phantom, preprocess, tables

SHAPE = (56, 88, 88)
FLIP_XY = (-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0)
ROT_Z = (0, -1.0, 0, 1.0, 0, 0, 0, 0, 1.0)


# Round solid nodules clear of vessels, no lookalikes: the blob centroid test needs clean blobs.
CLEAN = dict(vessels=False, lookalike_rates=None,
             nodule_stats=phantom.NoduleOptions(textures=(1, 0, 0), attachments=(1, 0, 0, 0), shapes=(1, 0, 0),
                                                 median_mm=10.0))


def write_scan(root, uid, seed, direction=io.IDENTITY, seg=True, **kw):
    """A 56 x 88 x 88 window onto a lung of a phantom chest."""
    vol, segm, info = phantom.make_scan(seed, 0, shape=SHAPE, direction=direction, **CLEAN, **kw)
    os.makedirs(root / "subset0", exist_ok=True)
    io.write_image(vol, root / "subset0" / (uid + ".mhd"))
    if seg:
        os.makedirs(root / "seg-lungs-LUNA16", exist_ok=True)
        io.write_image(io.Volume(segm, vol.origin, vol.spacing, vol.direction), root / "seg-lungs-LUNA16" / (uid + ".mhd"))
    return vol, info


def blob_centroid(img, centre, d):
    """Intensity-weighted centroid of the bright blob within d/2 + 2 voxels of `centre`."""
    r = d / 2 + 2
    lo = np.maximum(np.floor(centre - r).astype(int), 0)
    hi = np.minimum(np.ceil(centre + r).astype(int) + 1, img.shape)
    region = img[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].astype(np.float64)
    grid = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij"), -1)
    inside = np.linalg.norm(grid - centre, axis=-1) <= r
    w = np.clip(region - 110, 0, None) * inside  # lung ~48, nodule ~170 (u8)
    return (grid * w[..., None]).reshape(-1, 3).sum(0) / w.sum()


@pytest.mark.parametrize("direction, seg", [(io.IDENTITY, True), (FLIP_XY, False), (ROT_Z, True)])
def test_nodule_maps_to_its_voxel_and_back(tmp_path, direction, seg):
    vol, info = write_scan(tmp_path, "scan", 2, direction, seg=seg, n_nodules=2)
    nod = info["nodules"]
    assert len(nod) >= 1
    ann = {"scan": nod}
    weak = tables.derive_weak_labels(ann)
    out = tmp_path / "out"
    os.makedirs(out)
    seg_path = tmp_path / "seg-lungs-LUNA16" / "scan.mhd" if seg else None
    meta = preprocess.preprocess_scan(tmp_path / "subset0" / "scan.mhd", out, "scan", nod, weak["scan"], seg_path)
    img = np.load(out / "scan_clean.npy")
    labels = np.load(out / "scan_label.npy")
    assert img.dtype == np.uint8 and list(img.shape) == meta["shape"]
    assert labels.shape == (len(nod), 4)
    np.testing.assert_allclose(labels[:, 3], nod[:, 3], rtol=1e-6)  # 1 mm grid: d in voxels = mm
    found = 0
    for (x, y, z, d), lab in zip(nod, labels):
        assert np.all(lab[:3] >= 0) and np.all(lab[:3] < img.shape)
        if d < 5:
            continue
        found += 1
        c = blob_centroid(img, lab[:3].astype(np.float64), d)
        # the blob is at the label's voxel (exact resampling: ~0.05 voxel; a half-voxel
        # shift of the grid would show as ~0.9)
        assert np.linalg.norm(c - lab[:3]) < 0.4
        back = preprocess.grid_to_world(c, meta)
        assert np.linalg.norm(back - [x, y, z]) < 1.0  # and maps back to world within 1 mm
    assert found >= 1
    # the label maps back exactly, and world_to_grid inverts grid_to_world
    np.testing.assert_allclose(preprocess.grid_to_world(labels[:, :3].astype(np.float64), meta), nod[:, :3], atol=1e-3)
    np.testing.assert_allclose(preprocess.world_to_grid(nod[:, :3], meta), labels[:, :3], atol=1e-3)
    # weak labels: the nodule's z in the new grid, lobe unknown
    w = np.load(out / "scan_weak.npy")
    np.testing.assert_allclose(w[:, 0], labels[:, 0], atol=1e-3)
    np.testing.assert_array_equal(w[:, 1], -1)
    assert img.max() <= 255
    assert meta["direction"] == [float(v) for v in direction]


def test_pad_value_outside_the_lungs(tmp_path):
    """The whole chest (coarse spacing): the crop holds body around the lungs, set to 170."""
    vol, segm, _ = phantom.make_scan(3, 0, spacing=(2.5, 2.5, 5.0), tree_points=300)
    io.write_image(vol, tmp_path / "scan.mhd")
    meta = preprocess.preprocess_scan(tmp_path / "scan.mhd", tmp_path, "scan")
    img = np.load(tmp_path / "scan_clean.npy")
    assert (img == preprocess.PAD_VALUE).mean() > 0.05 and list(img.shape) == meta["shape"]
    assert img.shape[2] > 0.6 * vol.array.shape[2] * vol.spacing[0]  # both lungs are in the box


def test_weak_label_from_slice_index(tmp_path):
    vol, info = write_scan(tmp_path, "scan", 2, n_nodules=2)
    nod = info["nodules"]
    sl = vol.world_to_voxel(nod[:, :3])[:, 0]
    weak = np.stack([np.full(len(nod), np.nan), sl, np.arange(len(nod))], 1)
    out = tmp_path / "out"
    os.makedirs(out)
    preprocess.preprocess_scan(tmp_path / "subset0" / "scan.mhd", out, "scan", nod, weak)
    w, labels = np.load(out / "scan_weak.npy"), np.load(out / "scan_label.npy")
    np.testing.assert_allclose(w[:, 0], labels[:, 0], atol=1e-3)
    np.testing.assert_array_equal(w[:, 1], np.arange(len(nod)))


def test_lung_segmentation_close_to_seg_lungs():
    # the whole chest (both lungs, air around the body) at a coarse spacing
    vol, seg, _ = phantom.make_scan(7, 0, spacing=(2.5, 2.5, 5.0), tree_points=300)
    a, b = lung_mask.segment_lungs(vol.array, vol.spacing_zyx)
    right, left = lung_mask.lungs_from_seg(seg)
    for ours, ref in ((a, right), (b, left)):  # right lung first (smaller x)
        # the -600 HU edge sits ~0.5 mm inside the lungs' 50% edge: ours is a little smaller
        assert (ours & ref).sum() > 0.99 * ours.sum()
        assert (lung_mask.dilate(ours, 2) & ref).sum() > 0.95 * ref.sum()
    with pytest.raises(lung_mask.EmptyLungMask):
        lung_mask.segment_lungs(np.full(SHAPE, 40, dtype=np.int16), vol.spacing_zyx)


def test_lung_segmentation_of_a_window_through_a_lung():
    """A field of view that cuts through a lung: the lung touches the border and is kept (room
    air, about -1000 HU, touching the border is not)."""
    vol, seg, _ = phantom.make_scan(7, 1, preset="demo")
    a, b = lung_mask.segment_lungs(vol.array, vol.spacing_zyx)
    ref = seg > 0
    assert not b.any() and (a & ref).sum() > 0.99 * a.sum() and (lung_mask.dilate(a, 2) & ref).sum() > 0.95 * ref.sum()


def test_convex_hull_refine_fills_notches_only_when_small():
    m = np.zeros((2, 40, 40), dtype=bool)
    m[0, 5:35, 5:35] = True
    m[0, 15:25, 5:12] = False  # a notch (a juxtapleural nodule): filled
    m[1, 5:35, 5:9] = True
    m[1, 31:35, 5:35] = True  # an L: its hull is far larger, kept as it is
    r = lung_mask.convex_hull_refine(m)
    assert r[0, 5:35, 5:35].all() and r[0].sum() == 900
    np.testing.assert_array_equal(r[1], m[1])
    d = lung_mask.dilate(m[:1], 3)
    assert d.sum() > m[0].sum() and d[0, 2, 20] and not d[0, 1, 20]


def test_hull_slice_is_every_pixel_centre_inside_every_hull_facet():
    """The slice's hull, facet by facet, against all facets tested at once per pixel (the
    plain formula), on random blobs with notches and on a one-pixel-wide line."""
    from scipy.spatial import ConvexHull

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:90, :100]
    for k in range(25):
        cy, cx, ay, ax = *rng.uniform(30, 60, 2), *rng.uniform(3, 35, 2)
        m = ((yy - cy) / ay) ** 2 + ((xx - cx) / ax) ** 2 + 0.4 * np.sin(xx / rng.uniform(2, 9)) < 1
        if k == 0:
            m = np.zeros_like(m)
            m[40, 10:60] = True  # a one-pixel line: its hull is the line itself
        if not m.any():
            continue
        ys, xs = np.nonzero(m)
        edge = np.stack([ys, xs], 1)
        corners = np.array([[-0.5, -0.5], [-0.5, 0.5], [0.5, -0.5], [0.5, 0.5]])
        got = lung_mask._hull_slice(m)
        if k == 0:
            np.testing.assert_array_equal(got, m)
            continue
        eq = ConvexHull((edge[:, None, :] + corners[None]).reshape(-1, 2)).equations
        inside = np.all(yy[..., None] * eq[:, 0] + xx[..., None] * eq[:, 1] + eq[:, 2] <= 1e-9, axis=-1)
        np.testing.assert_array_equal(got, inside | m)


@pytest.fixture
def luna(tmp_path):
    """Four scans: two good, one with a truncated .raw, one with no lungs; plus one listed
    in seriesuids.csv whose file is missing."""
    root = tmp_path / "luna"
    ann = {}
    for k, uid in enumerate(["good1", "good2", "corrupt"]):
        _, info = write_scan(root, uid, 20 + k, seg=False, n_nodules=1)
        ann[uid] = info["nodules"]
    raw = root / "subset0" / "corrupt.raw"
    raw.write_bytes(raw.read_bytes()[:1000])
    flat = io.Volume(np.full(SHAPE, 40, dtype=np.int16), (1.0, 2.0, 3.0), (0.7, 0.7, 2.0))
    io.write_image(flat, root / "subset0" / "nolungs.mhd")
    uids = ["good1", "good2", "corrupt", "nolungs", "missing"]
    tables.write_seriesuids(root / "seriesuids.csv", uids)
    tables.write_annotations(root / "annotations.csv", ann)
    return root


def test_dataset_reports_bad_scans_and_resumes(luna, tmp_path):
    out = tmp_path / "pre"
    report = preprocess.preprocess_dataset(luna, out, luna / "annotations.csv", seriesuids_csv=luna / "seriesuids.csv",
                                           progress=False)
    assert report["done"] == ["good1", "good2"]
    assert sorted(report["failed"]) == ["corrupt", "missing", "nolungs"]
    assert "ScanReadError" in report["failed"]["corrupt"] and "corrupt.mhd" in report["failed"]["corrupt"]
    assert "EmptyLungMask" in report["failed"]["nolungs"]
    assert "FileNotFoundError" in report["failed"]["missing"]
    assert json.loads((out / "preprocess_report.json").read_text()) == report
    assert not (out / "corrupt_meta.json").exists() and not any(p.name.startswith(".tmp") for p in out.iterdir())
    for uid in ("good1", "good2"):
        assert preprocess.is_done(out, uid)
        assert np.load(out / (uid + "_label.npy")).shape == (1, 4)
    stamp = os.stat(out / "good1_clean.npy").st_mtime_ns
    # an interrupted scan (clean written, no metadata) is redone; finished ones are skipped
    os.remove(out / "good2_meta.json")
    again = preprocess.preprocess_dataset(luna, out, luna / "annotations.csv", seriesuids_csv=luna / "seriesuids.csv",
                                          workers=2, progress=False)
    assert again["skipped"] == ["good1"] and again["done"] == ["good2"]
    assert sorted(again["failed"]) == ["corrupt", "missing", "nolungs"]
    assert os.stat(out / "good1_clean.npy").st_mtime_ns == stamp


def test_find_scans(tmp_path):
    write_scan(tmp_path, "a", 1)
    os.makedirs(tmp_path / "dicom" / "b")
    (tmp_path / "dicom" / "b" / "x.dcm").write_bytes(b"")
    io.write_image(io.Volume(np.zeros((2, 2, 2), np.int16)), tmp_path / "c.nii.gz")
    found = preprocess.find_scans(tmp_path)
    assert sorted(found) == ["a", "b", "c"]  # the seg-lungs masks are not scans
    assert found["b"] == str(tmp_path / "dicom" / "b")

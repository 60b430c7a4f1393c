"""deepem.data.phantom: LUNA16 layout, realism checks, determinism by seed."""
import filecmp
import json
import os

import numpy as np
import pytest

pytest.importorskip("scipy")
pytest.importorskip("SimpleITK")

from deepem.data import io, phantom, tables

SHAPE = (48, 80, 80)


def test_scan_is_deterministic_by_seed():
    a, seg_a, info_a = phantom.make_scan(3, 1, shape=SHAPE)
    b, seg_b, info_b = phantom.make_scan(3, 1, shape=SHAPE)
    c, _, _ = phantom.make_scan(4, 1, shape=SHAPE)
    d, _, _ = phantom.make_scan(3, 2, shape=SHAPE)
    assert a.array.tobytes() == b.array.tobytes() and seg_a.tobytes() == seg_b.tobytes()
    assert a.origin == b.origin and a.spacing == b.spacing
    np.testing.assert_array_equal(info_a["nodules"], info_b["nodules"])
    assert not np.array_equal(a.array, c.array) and not np.array_equal(a.array, d.array)


def test_scan_anatomy():
    vol, seg, info = phantom.make_scan(5, 0, shape=SHAPE, n_nodules=3)
    a = vol.array
    assert a.dtype == np.int16 and a.shape == SHAPE
    sx, sy, sz = vol.spacing
    assert sx == sy and 0.6 <= sx <= 0.8 and sz in phantom.Z_SPACINGS
    assert all(abs(o) > 1 for o in vol.origin)
    lungs = seg > 0
    assert set(np.unique(seg)) == {0, phantom.SEG_RIGHT, phantom.SEG_LEFT}
    assert -950 < np.median(a[lungs]) < -750  # lung parenchyma
    assert a[0, 0, 0] < -900  # air outside the body
    assert a.max() > 300  # bone
    # right lung (seg 3) at smaller world x than the left (LPS)
    xr = io.voxel_to_world(np.argwhere(seg == 3).mean(0), vol.origin, vol.spacing)[0]
    xl = io.voxel_to_world(np.argwhere(seg == 4).mean(0), vol.origin, vol.spacing)[0]
    assert xr < xl
    assert len(info["nodules"]) >= 2
    for (x, y, z, d), lobe in zip(info["nodules"], info["lobes"]):
        assert 3 <= d <= 30 and 0 <= lobe <= 5
        v = np.round(vol.world_to_voxel([x, y, z])).astype(int)
        assert a[tuple(v)] > -600  # the nodule is there, denser than the lung around it


def test_lobe_of():
    lung = phantom.Lung(np.zeros(3), np.array([100.0, 50.0, 40.0]), right=True)
    assert phantom.lobe_of([90, 0, 0], lung) == 0  # apex: right upper
    assert phantom.lobe_of([0, -45, 0], lung) == 1  # mid, front: right middle
    assert phantom.lobe_of([-90, 0, 0], lung) == 2  # base: right lower
    assert phantom.lobe_of([40, 45, 0], lung) == 2  # high at the back: lower lobe
    left = phantom.Lung(np.zeros(3), np.array([100.0, 50.0, 40.0]), right=False)
    assert [phantom.lobe_of(p, left) for p in ([90, 0, 0], [0, -45, 0], [-90, 0, 0])] == [3, 4, 5]


def test_split_names():
    assert phantom.split_names(10) == ["full"] * 5 + ["weak"] * 3 + ["test"] * 2
    for n in range(3, 12):
        names = phantom.split_names(n)
        assert len(names) == n and set(names) == {"full", "weak", "test"}
    with pytest.raises(ValueError, match="split"):
        phantom.split_names(4, (1, -1, 1))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantom")
    splits = phantom.make_dataset(out / "a", n_scans=5, seed=11, shape=SHAPE, n_subsets=3)
    return out, splits


def test_dataset_layout(dataset):
    out, splits = dataset
    root = out / "a"
    uids = tables.read_seriesuids(root / "seriesuids.csv")
    assert len(uids) == 5 and sorted(sum(splits.values(), [])) == sorted(uids)
    assert json.loads((root / "splits.json").read_text()) == splits
    for uid in uids:
        hits = [s for s in ("subset0", "subset1", "subset2") if (root / s / (uid + ".mhd")).exists()]
        assert len(hits) == 1 and (root / hits[0] / (uid + ".raw")).exists()
        assert (root / "seg-lungs-LUNA16" / (uid + ".mhd")).exists()
    ann = tables.read_annotations(root / "annotations.csv")
    tables.read_annotations(root / "annotations_excluded.csv", excluded=True)
    weak = tables.read_weak_labels(root / "weak_labels.csv")
    assert set(weak) <= set(splits["weak"])
    for uid, w in weak.items():  # weak labels are the annotations' z and a lobe
        np.testing.assert_allclose(w[:, 0], ann[uid][:, 2])
        assert np.all((w[:, 2] >= 0) & (w[:, 2] <= 5))
        hit = next(s for s in ("subset0", "subset1", "subset2") if (root / s / (uid + ".mhd")).exists())
        vol = io.read_image(root / hit / (uid + ".mhd"))
        np.testing.assert_allclose(w[:, 1], np.round(vol.world_to_voxel(ann[uid][:, :3])[:, 0]))


def test_dataset_is_deterministic_with_workers(dataset):
    out, _ = dataset
    phantom.make_dataset(out / "b", n_scans=5, seed=11, shape=SHAPE, n_subsets=3, workers=2)
    cmp = filecmp.dircmp(out / "a", out / "b")
    for dirpath, _, files in os.walk(out / "a"):
        for f in files:
            rel = os.path.relpath(os.path.join(dirpath, f), out / "a")
            assert filecmp.cmp(out / "a" / rel, out / "b" / rel, shallow=False), rel
    assert not cmp.left_only and not cmp.right_only

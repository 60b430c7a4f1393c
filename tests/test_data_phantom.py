"""deepem.data.phantom: nodule statistics, placement, the image, LUNA16 layout, determinism."""
import csv
import filecmp
import json
import os

import numpy as np
import pytest

pytest.importorskip("scipy")
pytest.importorskip("SimpleITK")

from deepem.data import io, phantom, tables
from deepem.data.phantom import anatomy, vessels
from reference_vessels import grow_tree_numpy

SMALL = (20, 64, 64)  # a small window: fast


def test_scan_is_deterministic_by_seed():
    a, seg_a, info_a = phantom.make_scan(3, 1, preset="demo", shape=SMALL)
    b, seg_b, info_b = phantom.make_scan(3, 1, preset="demo", shape=SMALL)
    c, _, _ = phantom.make_scan(4, 1, preset="demo", shape=SMALL)
    d, _, _ = phantom.make_scan(3, 2, preset="demo", shape=SMALL)
    assert a.array.tobytes() == b.array.tobytes() and seg_a.tobytes() == seg_b.tobytes()
    assert a.origin == b.origin and a.spacing == b.spacing
    np.testing.assert_array_equal(info_a["nodules"], info_b["nodules"])
    assert not np.array_equal(a.array, c.array) and not np.array_equal(a.array, d.array)


@pytest.mark.parametrize("case", range(12))
def test_vessel_tree_equals_the_numpy_reference_bit_for_bit(case):
    """grow_tree's Python-float arithmetic gives numpy's tree exactly: territories of 1 to 2000
    points, with and without a window (subtrees skipped), a lung's real territory too."""
    rng = np.random.default_rng(case)
    if case == 0:
        chest = anatomy.draw_chest(rng)
        territory = vessels.lung_points(rng, chest, chest.lungs[0], 500)
    else:
        n = [1, 2, 3, 17, 2000][case % 5]
        territory = rng.uniform(-80, 80, (n, 3)) * rng.uniform(0.2, 1.5, 3)
    window = None
    if case % 2:
        centre, half = rng.uniform(-50, 50, 3), rng.uniform(5, 60, 3)
        window = (centre - half, centre + half)
    root, direction, seed = rng.uniform(-20, 20, 3), rng.normal(size=3), int(rng.integers(1 << 30))
    got = vessels.grow_tree(np.random.default_rng(seed), root, direction, 5.0, territory, window=window)
    want = grow_tree_numpy(np.random.default_rng(seed), root, direction, 5.0, territory, window=window)
    for field in ("points", "radii", "branch", "starts", "ends", "radius", "depth"):
        a, b = getattr(got, field), getattr(want, field)
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), field


def test_nodule_statistics_like_luna16():
    """Drawn without images: 500 scans' counts, and their nodules' sizes and types."""
    rng = np.random.default_rng(0)
    opt = phantom.NoduleOptions()
    counts = np.array([phantom.draw_count(rng, opt) for _ in range(500)])
    assert 1.3 <= counts.mean() <= 1.8 and 0.15 <= (counts == 0).mean() <= 0.35 and counts.max() >= 4
    nods = [phantom.draw_nodule(rng, opt) for _ in range(counts.sum())]
    d = np.array([n["diameter"] for n in nods])
    assert d.min() >= 3.0 and d.max() <= 30.0 and d.max() > 20
    assert 7.0 <= d.mean() <= 9.0 and 5.5 <= np.median(d) <= 7.5
    assert ((d >= 4) & (d <= 10)).mean() > 0.55  # most are 4-10 mm
    assert 3.5 <= np.quantile(d, 0.1) <= 5.0 and 11.0 <= np.quantile(d, 0.9) <= 16.0
    frac = lambda key, value: np.mean([n[key] == value for n in nods])  # noqa: E731
    assert 0.65 <= frac("texture", "solid") <= 0.85
    assert 0.05 <= frac("texture", "part-solid") <= 0.15 and 0.10 <= frac("texture", "ggo") <= 0.20
    juxta = 1 - frac("attach", "isolated")
    assert 0.2 <= juxta <= 0.33 and min(frac("attach", a) for a in phantom.ATTACHMENTS) > 0.02
    assert min(frac("shape", s) for s in phantom.SHAPES) > 0.1
    ggo = np.array([n["hu"] for n in nods if n["texture"] == "ggo"])
    solid = np.array([n["hu"] for n in nods if n["texture"] == "solid"])
    assert ggo.min() >= -650 and ggo.max() <= -300 and solid.min() >= -20 and solid.max() <= 60
    spic = [n for n in nods if n["shape"] == "spiculated"]
    assert all(len(n["spicules"]) >= 5 for n in spic)


def test_nodules_are_placed_as_drawn():
    """In demo windows (plans only, no image): each nodule wholly in the field of view, and
    where its attachment says: touching the pleura, a fissure or a vessel, or clear of them."""
    seen = set()
    for index in range(4):
        plan = phantom.plan_scan(7, index, preset="demo", n_nodules=4)
        grid, chest = plan["grid"], plan["chest"]
        assert len(plan["nodules"]) >= 3
        for n in plan["nodules"]:
            c, r = n["centre"], n["diameter"] / 2
            assert np.all(c - r >= grid.corner_mm) and np.all(c + r <= grid.hi_mm)
            lung = chest.lungs[n["lung"]]
            inside = -anatomy.lung_sdf(chest, lung, *c)
            assert n["lobe"] == anatomy.lobe_of(c, lung)
            seen.add(n["attach"])
            if n["attach"] == "pleural":
                assert 0 <= inside <= r
            elif n["attach"] == "fissure":
                which = [abs(anatomy.fissure_distance(lung, *c, w)[0]) for w in ("oblique", "horizontal")]
                assert min(which) <= r and inside > 0.8 * r
            elif n["attach"] == "vascular":
                t = plan["trees"][n["lung"]]
                gap = min(np.min(np.linalg.norm(tr.points - c, axis=1) - tr.radii)
                          for tr in t.values() if len(tr.points))
                assert gap <= r and inside > r
            else:
                assert inside > r
    assert len(seen) >= 3


def test_nodule_is_where_its_annotation_says(tmp_path):
    """On the written image: through each nodule's annotated centre the intensity profile
    peaks and falls to half its contrast where the drawn ellipsoid's surface crosses the
    profile (its half extent along that axis: up to 30% short of the radius), in x and y.
    An isolated nodule may still lie within a few mm of a hilar vessel, where its profile does
    not fall to half: such sides are skipped, but at most one in eight."""
    stats = phantom.NoduleOptions(attachments=(1, 0, 0, 0), shapes=(1, 0, 0), median_mm=9.0)
    found, sides, blocked = 0, 0, 0
    for index in range(3):
        plan = phantom.plan_scan(2, index, preset="demo", n_nodules=3, options=phantom.Options(nodule_stats=stats))
        vol, _, info = phantom.render_scan(plan)
        io.write_image(vol, tmp_path / "scan.mhd")
        img = io.read_image(tmp_path / "scan.mhd").array.astype(np.float64)
        for (x, y, z, d), n in zip(info["nodules"], plan["nodules"]):
            if d < 5:
                continue
            v = io.world_to_voxel([x, y, z], vol.origin, vol.spacing)
            k, j, i = np.rint(v).astype(int)
            sxy = vol.spacing[0]
            lung = np.median(img[max(k - 1, 0):k + 2][img[max(k - 1, 0):k + 2] < -700])
            half = lung + 0.5 * (n["hu"] - lung)  # (part-solid: the ground glass around the core)
            reach = int(np.ceil((d / 2 + 4) / sxy))
            for full, at, axis in ((img[k, :, i], j, (0, 1, 0)), (img[k, j, :], i, (0, 0, 1))):  # along y, x
                extent = d / 2 / np.linalg.norm(n["rot"].T @ np.array(axis, float) / n["scales"])
                line = np.take(full, np.arange(-reach, reach + 1) + at, mode="clip")
                line = np.convolve(line, np.ones(3) / 3, mode="same")  # tame the noise
                centre = reach
                assert line[centre - 1:centre + 2].max() > half
                for side in (-1, 1):
                    steps = np.arange(1, reach) * side + centre
                    below = np.nonzero(line[steps] < half)[0]
                    sides += 1
                    if not len(below):  # something dense within reach: nothing to measure
                        blocked += 1
                        continue
                    edge_mm = (below[0] + 0.5) * sxy
                    assert abs(edge_mm - extent) <= 0.6 + sxy, (edge_mm, extent, n["texture"])
            found += 1
    assert found >= 3 and blocked * 8 <= sides, (found, blocked, sides)


def test_lobes_follow_the_fissures():
    rng = np.random.default_rng(3)
    chest = anatomy.draw_chest(rng)
    right, left = chest.lungs
    y, x = right.cy, right.cx
    zo = anatomy.oblique_z(right, y, x)
    assert anatomy.lobe_of([zo - 2, y, x], right) == 2 and anatomy.lobe_of([zo + 2, y, x], right) in (0, 1)
    yf = right.cy - 0.8 * right.ay  # in front: above the oblique fissure, both sides of the horizontal
    zh = anatomy.horizontal_z(right, yf)
    assert anatomy.oblique_z(right, yf, x) < zh - 5
    assert anatomy.lobe_of([zh + 2, yf, x], right) == 0 and anatomy.lobe_of([zh - 2, yf, x], right) == 1
    assert anatomy.lobe_of([0.95 * left.height, left.cy, left.cx], left) == 3
    assert anatomy.lobe_of([anatomy.oblique_z(left, left.cy, left.cx) - 2, left.cy, left.cx], left) == 5
    yf = left.cy - 0.8 * left.ay
    assert anatomy.lobe_of([left.hor_z - 2, yf, left.cx], left) == 4


def test_whole_chest_anatomy():
    """The LUNA16 preset's whole chest, at a coarse spacing to stay fast."""
    vol, seg, info = phantom.make_scan(5, 0, spacing=(2.5, 2.5, 5.0), tree_points=300)
    a = vol.array
    assert a.dtype == np.int16 and a.shape[1] == a.shape[2] and 125 <= a.shape[1] <= 165
    labels = set(np.unique(seg))
    assert labels == {0, phantom.SEG_RIGHT, phantom.SEG_LEFT}
    litres = (seg > 0).sum() * np.prod(vol.spacing) / 1e6
    assert 4.0 <= litres <= 7.5  # adult lungs
    assert -900 < np.median(a[seg > 0]) < -750
    assert a[:, 0, 0].max() < -900 and a.max() > 300  # air around the body; bone
    xr = io.voxel_to_world(np.argwhere(seg == 3).mean(0), vol.origin, vol.spacing)[0]
    xl = io.voxel_to_world(np.argwhere(seg == 4).mean(0), vol.origin, vol.spacing)[0]
    assert xr < xl  # right lung at smaller world x (LPS)
    extent = np.asarray(a.shape) * vol.spacing_zyx
    assert 280 <= extent[0] <= 380 and 300 <= extent[1] <= 420


def test_split_names():
    assert phantom.split_names(10) == ["full"] * 5 + ["weak"] * 3 + ["test"] * 2
    for n in range(3, 12):
        names = phantom.split_names(n)
        assert len(names) == n and set(names) == {"full", "weak", "test"}
    with pytest.raises(ValueError, match="split"):
        phantom.split_names(4, (1, -1, 1))


def test_unknown_preset():
    with pytest.raises(ValueError, match="preset"):
        phantom.make_scan(0, 0, preset="huge")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantom")
    splits = phantom.make_dataset(out / "a", n_scans=5, seed=11, shape=SMALL, n_subsets=3, preset="demo")
    return out, splits


def test_dataset_layout(dataset):
    out, splits = dataset
    root = out / "a"
    uids = tables.read_seriesuids(root / "seriesuids.csv")
    assert len(uids) == 5 and sorted(sum(splits.values(), [])) == sorted(uids)
    assert json.loads((root / "splits.json").read_text()) == splits
    assert json.loads((root / "phantom.json").read_text())["preset"] == "demo"
    for uid in uids:
        hits = [s for s in ("subset0", "subset1", "subset2") if (root / s / (uid + ".mhd")).exists()]
        assert len(hits) == 1 and (root / hits[0] / (uid + ".raw")).exists()
        assert (root / "seg-lungs-LUNA16" / (uid + ".mhd")).exists()
    with open(root / "annotations.csv") as f:
        assert next(csv.reader(f)) == ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]
    ann = tables.read_annotations(root / "annotations.csv")
    tables.read_annotations(root / "annotations_excluded.csv", excluded=True)
    with open(root / "annotations_types.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == sum(len(a) for a in ann.values())
    for r in rows:
        assert r["texture"] in phantom.TEXTURES and r["attachment"] in phantom.ATTACHMENTS
        assert r["shape"] in phantom.SHAPES
        assert float(r["diameter_mm"]) in ann[r["seriesuid"]][:, 3]
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
    phantom.make_dataset(out / "b", n_scans=5, seed=11, shape=SMALL, n_subsets=3, preset="demo", workers=2)
    cmp = filecmp.dircmp(out / "a", out / "b")
    for dirpath, _, files in os.walk(out / "a"):
        for f in files:
            rel = os.path.relpath(os.path.join(dirpath, f), out / "a")
            assert filecmp.cmp(out / "a" / rel, out / "b" / rel, shallow=False), rel
    assert not cmp.left_only and not cmp.right_only


def _lobe_accuracy_from_position(preset, shape=None, scans=12, points=40):
    """Within-lung accuracy of a 3 -> 3 logistic regression of the lobe on a lung point's
    position in its window (normalised by the window's lung box), fit on half the scans,
    scored on the other half: how much position tells the lobe, as DeepEM's lobe model sees it."""
    import torch

    feats, lobes = [], []
    rng = np.random.default_rng(0)
    for index in range(scans):
        plan = phantom.plan_scan(5, index, preset=preset, shape=shape, n_nodules=0)
        chest, grid = plan["chest"], plan["grid"]
        p = rng.uniform(grid.corner_mm, grid.hi_mm, size=(4000, 3))
        inside = [anatomy.lung_sdf(chest, lung, p[:, 0], p[:, 1], p[:, 2]) < -3 for lung in chest.lungs]
        k = int(np.argmax([m.sum() for m in inside]))
        q = p[inside[k]]
        lo, hi = q.min(0), q.max(0)
        for x in q[:points]:
            feats.append((x - lo) / (hi - lo) - 0.5)
            lobes.append(anatomy.lobe_of(x, chest.lungs[k]) % 3)  # upper, middle/lingula, lower
    X, y = torch.tensor(np.array(feats), dtype=torch.float32), torch.tensor(lobes)
    half = len(X) // 2
    W = torch.zeros(3, 3, requires_grad=True)
    b = torch.zeros(3, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], max_iter=300, line_search_fn="strong_wolfe")

    def loss():
        opt.zero_grad()
        value = torch.nn.functional.cross_entropy(X[:half] @ W + b, y[:half])
        value.backward()
        return value

    opt.step(loss)
    with torch.no_grad():
        return float(((X[half:] @ W + b).argmax(1) == y[half:]).float().mean())


def test_demo_window_position_tells_the_lobe():
    """The demo's windows sit where the lobes meet, so position tells the lobe (DeepEM's weak
    label means something); windows at random places on a lung (an explicit shape) hardly do."""
    anchored = _lobe_accuracy_from_position("demo")
    anywhere = _lobe_accuracy_from_position("luna16", shape=(50, 128, 128))
    assert anchored >= 0.75 and anchored >= anywhere + 0.15, (anchored, anywhere)

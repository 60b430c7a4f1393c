"""deepem.data.datasets: sampling, augmentation consistency, coordinate maps, tiling."""
import json
import os

import numpy as np
import pytest

pytest.importorskip("scipy")
pytest.importorskip("SimpleITK")
import torch
from scipy import ndimage

from deepem.data import datasets as D

SCAN_SHAPE = (90, 100, 110)
# (z, y, x, d): a tiny one (not sampled), a small, a medium and a large nodule, one on the edge
BOXES = np.array([[20, 30, 30, 2.0], [45, 50, 40, 6.0], [30, 70, 80, 12.0], [60, 40, 70, 22.0], [85, 95, 5, 8.0]],
                 dtype=np.float32)
BG, FG = 40, 250


def draw(shape, boxes):
    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    img = np.full(shape, BG, dtype=np.uint8)
    for z, y, x, d in boxes:
        img[(zz - z) ** 2 + (yy - y) ** 2 + (xx - x) ** 2 <= (d / 2) ** 2] = FG
    return img


def write_pre(folder, uid, image, labels, weak=None):
    os.makedirs(folder, exist_ok=True)
    np.save(folder / (uid + "_clean.npy"), image)
    np.save(folder / (uid + "_label.npy"), np.asarray(labels, dtype=np.float32).reshape(-1, 4))
    if weak is not None:
        np.save(folder / (uid + "_weak.npy"), np.asarray(weak, dtype=np.float32).reshape(-1, 2))
    (folder / (uid + "_meta.json")).write_text(json.dumps({"shape": list(image.shape)}))


@pytest.fixture(scope="module")
def pre(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pre")
    write_pre(folder, "a", draw(SCAN_SHAPE, BOXES), BOXES, weak=[[45.0, 2], [30.0, 4]])
    b = BOXES[1:2] + np.array([10, 5, 0, 0], dtype=np.float32)
    write_pre(folder, "b", draw((70, 80, 80), b), b)
    return folder


def test_size_oversampling_and_length(pre):
    assert D.repeat_by_size(BOXES) == [1, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 4]
    ds = D.CropDataset(pre, ["a", "b"], crop_size=48)
    assert len(ds.samples) == 13 and len(ds) == int(13 / 0.7)
    val = D.CropDataset(pre, ["a", "b"], crop_size=48, train=False)
    assert len(val) == 6


def check_boxes_match_image(item, crop):
    """Every box is drawn where it says, at its size; every bright voxel belongs to a box."""
    img = item["image"][0].numpy() * 128 + 128
    bright = img > (D.PAD_VALUE + FG) / 2  # above the pad value 170 too
    boxes = item["boxes"].numpy()
    labels, n = ndimage.label(bright)
    explained = np.zeros(n + 1, dtype=bool)
    for z, y, x, d in boxes:
        c = np.array([z, y, x])
        if np.all(c - d / 2 >= 0) and np.all(c + d / 2 <= np.array(crop) - 1) and d >= 5:
            k = labels[tuple(np.round(c).astype(int))]
            assert k > 0, "no bright voxel at the box centre"
            comp = np.argwhere(labels == k)
            assert np.linalg.norm(comp.mean(0) - c) < 1.0
            d_found = (6 * len(comp) / np.pi) ** (1 / 3)
            assert abs(d_found - d) < max(1.5, 0.15 * d)
        # a component touching the box (even cut by the crop edge) is explained by it
        near = np.linalg.norm(np.argwhere(bright) - [z, y, x], axis=1) <= d / 2 + 1.5
        explained[np.unique(labels[tuple(np.argwhere(bright)[near].T)])] = True
    assert explained[1:].all(), "a bright blob in the crop has no box"


def test_augmentation_keeps_boxes_on_the_image(pre):
    crop = 48
    ds = D.CropDataset(pre, ["a", "b"], crop_size=crop, seed=3)
    scales, flips = [], []
    for epoch in range(2):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            item = ds[i]
            assert item["image"].shape == (1, crop, crop, crop) and item["image"].dtype == torch.float32
            assert item["coord"].shape == (3, crop // 4, crop // 4, crop // 4)
            check_boxes_match_image(item, (crop,) * 3)
            if i < len(ds.samples):  # the sampled nodule is in the crop, with its margin if it fits
                uid, j = ds.samples[i]
                target = ds.boxes[uid][j]
                sc, b = item["scale"], item["boxes"].numpy()
                k = np.argmin(np.abs(b[:, 3] - target[3] * sc))
                assert abs(b[k, 3] - target[3] * sc) < 1e-3
                c, r = target[:3], target[3] / 2
                if crop / sc > np.max(np.ceil(c + r) - np.floor(c - r)) + 2 * ds.margin:
                    assert np.all(b[k, :3] - b[k, 3] / 2 >= (ds.margin - 1) * sc - 1 - 1e-3)
                    assert np.all(b[k, :3] + b[k, 3] / 2 <= crop - (ds.margin - 1) * sc + 1e-3)
                scales.append(item["scale"])
                flips.append(item["flip"].numpy())
    assert min(scales) < 0.95 and max(scales) > 1.05  # scale augmentation happened
    flips = np.array(flips)
    assert flips[:, 0].any() and (~flips[:, 0]).any() and flips[:, 1].any() and (~flips[:, 1]).any()


def test_coord_map_points_at_the_scan_position(pre):
    """With flips and scaling, the coordinate map cell holding a box centre gives the box's
    position in the whole scan."""
    ds = D.CropDataset(pre, ["a"], crop_size=48, seed=5, random_fraction=0.0)
    for i in range(len(ds)):
        item = ds[i]
        target = BOXES[ds.samples[i][1]]
        crop_boxes = item["boxes"].numpy()
        k = np.argmin(np.abs(crop_boxes[:, 3] - target[3] * item["scale"]))
        cell = np.clip((crop_boxes[k, :3] // 4).astype(int), 0, 11)
        got = item["coord"][:, cell[0], cell[1], cell[2]].numpy()
        expect = target[:3] / np.array(SCAN_SHAPE) - 0.5
        assert np.all(np.abs(got - expect) <= 4 / item["scale"] / np.array(SCAN_SHAPE) + 1e-6)


def test_coord_map_values():
    c = D.coord_map((0, -8, 4), (8, 8, 8), (16, 32, 64), stride=4)
    assert c.shape == (3, 2, 2, 2)
    np.testing.assert_allclose(c[0, :, 0, 0], np.array([1.5, 5.5]) / 16 - 0.5)
    np.testing.assert_allclose(c[1, 0, :, 0], (np.array([1.5, 5.5]) - 8) / 32 - 0.5)
    np.testing.assert_allclose(c[2, 0, 0, :], (np.array([1.5, 5.5]) + 4) / 64 - 0.5)
    half = D.coord_map((0, 0, 0), (8, 8, 8), (16, 16, 16), stride=4, scale=0.5)
    np.testing.assert_allclose(half[0, :, 0, 0], np.array([3.0, 11.0]) / 16 - 0.5)


def test_crop_scaled_matches_exact_sampling():
    img = np.arange(20 * 20 * 20, dtype=np.uint8).reshape(20, 20, 20) % 7 * 30
    out = D.crop_scaled(img, (3, -2, 5), (6, 6, 6), 1.0)
    np.testing.assert_array_equal(out, D.extract(img, (3, -2, 5), (6, 6, 6)))
    assert np.all(out[:, :2] == D.PAD_VALUE)
    half = D.crop_scaled(img, (2, 2, 2), (5, 5, 5), 0.5)  # crop voxel i = scan voxel 2 + 2 i
    np.testing.assert_allclose(half, img[2:12:2, 2:12:2, 2:12:2], atol=1e-4)


def test_crop_scaled_equals_scipys_linear_resampling_bit_for_bit():
    """The per-axis interpolation gives scipy's affine_transform(order=1) crop exactly, also
    at the scan's border (pad value) and at a scale of 1 with a fractional start."""
    from scipy import ndimage

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (40, 50, 60), dtype=np.uint8)
    for k in range(200):
        scale = 1.0 if k % 7 == 0 else float(rng.uniform(0.5, 2.0))
        shape = np.array([32, 32, 32]) if k % 3 else rng.integers(1, 40, 3)
        start = rng.uniform(-20, 70, 3)
        base = np.floor(start).astype(np.int64)
        need = np.ceil((start - base) + (shape - 1) / scale).astype(np.int64) + 2
        region = D.extract(img, base, need).astype(np.float32)
        want = ndimage.affine_transform(region, np.full(3, 1.0 / scale), offset=start - base,
                                        output_shape=tuple(shape), order=1, mode="nearest")
        got = D.crop_scaled(img, start, shape, scale)
        assert got.dtype == np.float32 and got.shape == tuple(shape)
        np.testing.assert_array_equal(got, want)


def test_validation_crops_are_centred_and_plain(pre):
    ds = D.CropDataset(pre, ["a"], crop_size=48, train=False)
    for i in range(len(ds)):
        item = ds[i]
        assert item["scale"] == 1.0 and not item["flip"].any()
        target = BOXES[ds.samples[i][1]]
        np.testing.assert_allclose(item["start"].numpy(), np.round(target[:3] - 24))
        check_boxes_match_image(item, (48, 48, 48))


def test_seeded_and_worker_safe(pre):
    ds = D.CropDataset(pre, ["a", "b"], crop_size=32, seed=9)
    a, b = ds[3], ds[3]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["boxes"], b["boxes"])
    ds.set_epoch(1)
    assert not torch.equal(ds[3]["image"], a["image"]) or ds[3]["scale"] != a["scale"]
    ds.set_epoch(0)
    kw = dict(batch_size=4, shuffle=False, collate_fn=D.collate)
    serial = list(torch.utils.data.DataLoader(ds, num_workers=0, **kw))
    parallel = list(torch.utils.data.DataLoader(ds, num_workers=2, **kw))
    assert len(serial) == len(parallel) == int(np.ceil(len(ds) / 4))
    for s, p in zip(serial, parallel):
        assert s["image"].shape == (len(s["uid"]), 1, 32, 32, 32)
        assert torch.equal(s["image"], p["image"]) and torch.equal(s["coord"], p["coord"])
        assert all(torch.equal(x, y) for x, y in zip(s["boxes"], p["boxes"]))
        assert s["uid"] == p["uid"]


def check_weak_z(item):
    """The weak slices z = 45 and 30 of scan 'a' in crop voxels; 'b' has no weak labels."""
    weak = np.array([45.0, 30.0]) if item["uid"] == "a" else np.zeros(0)
    assert item["weak_z"].dtype == torch.float32 and item["weak_z"].shape == weak.shape
    np.testing.assert_allclose(item["weak_z"].numpy(), (weak - item["start"][0].item()) * item["scale"],
                               rtol=1e-6, atol=1e-4)


def test_weak_dataset_uses_pseudo_boxes(pre):
    pseudo = {"a": BOXES[2:3]}
    ds = D.WeakCropDataset(pre, ["a", "b"], pseudo, crop_size=48, seed=1)
    assert ds.samples == [("a", 0)] * 3  # d = 12: 1 + 2 repeats; 'b' has no pseudo box
    assert len(ds) == int(3 / 0.7)
    for i in range(len(ds)):
        item = ds[i]
        check_weak_z(item)
        if i < 3:
            b = item["boxes"].numpy()
            # only the pseudo box is a target, though other nodules may show in the crop
            assert np.isclose(b[:, 3], 12 * item["scale"], atol=1e-3).sum() == 1 and len(b) == 1
    ds.set_pseudo_boxes({"a": BOXES[1:3], "b": BOXES[1:2]})
    assert len(ds.samples) == 5
    b_item = ds[[uid for uid, _ in ds.samples].index("b")]
    assert b_item["uid"] == "b"
    check_weak_z(b_item)
    ds.set_pseudo_boxes(None)
    assert ds.samples == [] and len(ds) == 2  # random crops only
    assert ds[0]["boxes"].shape == (0, 4)


@pytest.mark.parametrize("shape", [(50, 37, 20), (16, 16, 16), (1, 40, 9)])
def test_split_combine_round_trip(shape):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, shape).astype(np.uint8)
    sc = D.SplitComb(side_len=16, margin=4, stride=1)
    tiles, grid = sc.split(img)
    assert tiles.shape == (int(np.prod(grid)), 24, 24, 24)
    np.testing.assert_array_equal(sc.combine(tiles, grid, img.shape), img)
    # torch outputs with trailing dims (anchors, values), stride 4: coordinates stitch into
    # the whole scan's coordinate map
    sc4 = D.SplitComb(side_len=16, margin=8, stride=4)
    coords = torch.from_numpy(sc4.coords(shape)).permute(0, 2, 3, 4, 1)[..., None, :]
    whole = sc4.combine(coords, sc4.grid(shape), shape)
    cells = [int(np.ceil(s / 4)) for s in shape]
    expect = D.coord_map((0, 0, 0), [c * 4 for c in cells], shape, stride=4)
    assert tuple(whole.shape) == tuple(cells) + (1, 3)
    np.testing.assert_allclose(whole[..., 0, :].numpy(), np.moveaxis(expect, 0, -1), atol=1e-6)


def test_split_comb_defaults_and_errors(pre):
    sc = D.SplitComb()
    assert (sc.side_len, sc.margin, sc.stride) == (144, 32, 4)
    with pytest.raises(ValueError, match="stride"):
        D.SplitComb(side_len=30, margin=8, stride=4)
    with pytest.raises(ValueError, match="tile outputs"):
        sc.combine(np.zeros((2, 52, 52, 52)), (1, 1, 1))
    with pytest.raises(ValueError, match="crop_size"):
        D.CropDataset(pre, ["a"], crop_size=50)
    ds = D.ScanDataset(pre, ["a"], D.SplitComb(side_len=48, margin=16))
    item = ds[0]
    assert item["grid"] == (2, 3, 3) and item["tiles"].shape == (18, 1, 80, 80, 80)
    assert item["coord"].shape == (18, 3, 20, 20, 20) and item["shape"] == SCAN_SHAPE


def test_split_comb_per_axis_sides():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 255, (30, 17, 41)).astype(np.uint8)
    sc = D.SplitComb(side_len=(16, 8, 24), margin=4, stride=1)
    tiles, grid = sc.split(img)
    assert grid == (2, 3, 2) and sc.tile_shape == (24, 16, 32)
    assert tiles.shape == (12, 24, 16, 32)
    np.testing.assert_array_equal(sc.combine(tiles, grid, img.shape), img)
    assert D.SplitComb(side_len=144).grid((150, 100, 300)) == D.SplitComb(side_len=(144,) * 3).grid((150, 100, 300))

"""anchors3d, encode_boxes3d / decode_boxes3d, label_anchors3d and the sampling helpers,
against the numpy references of tests/reference_anchors.py."""
import importlib.util
import math

import numpy as np
import pytest
import torch

import reference_anchors as ref
from deepem.ops import (
    anchor_grid,
    anchors3d,
    decode_boxes3d,
    encode_boxes3d,
    hard_negatives,
    label_anchors3d,
    pad_boxes,
)
from deepem.ops.boxes import cubes_to_boxes

HAS_CUDA = torch.cuda.is_available()
# Kernel outputs against the float64 references, per dtype: float64 to rounding, float32 to a
# few ulps of the values, float16 / bfloat16 computed in float32 and rounded once (2^-11 and
# 2^-8 relative) plus the float32 error.
TOL = {
    torch.float64: dict(rtol=1e-12, atol=1e-12),
    torch.float32: dict(rtol=2e-6, atol=2e-6),
    torch.float16: dict(rtol=1e-3, atol=2e-5),
    torch.bfloat16: dict(rtol=8e-3, atol=2e-5),
}


def _random_gt(rng, batch, max_gt, extent=96.0, dtype=torch.float64):
    """Padded GT boxes [B, G, 6] of mostly cubic nodules (3 to 30 mm) inside the crop, and
    counts; some rows past the count hold garbage that must be ignored."""
    g = np.full((batch, max_gt, 6), np.nan)
    counts = rng.integers(0, max_gt + 1, size=batch)
    for b in range(batch):
        for j in range(max_gt):
            d = rng.uniform(3, 30)
            c = rng.uniform(0, extent, size=3)
            e = d * rng.uniform(0.8, 1.25, size=3)
            g[b, j] = np.concatenate([c - e / 2, c + e / 2])
    return torch.tensor(g, dtype=dtype), torch.tensor(counts)


def _label(gt, grid, op="label", **kw):
    fn = {"label": torch.ops.deepem.label_anchors3d,
          "emulated": torch.ops.deepem._label_anchors3d_emulated}[op]
    args = dict(num_gt=None, neg_exclude_z=None, pos_threshold=0.5, neg_threshold=0.02,
                num_neg=800, seed=0, cube_targets=True, weights=None)
    args.update(kw)
    return fn(gt, args["num_gt"], args["neg_exclude_z"], list(grid.feature_size),
              list(grid.stride), list(grid.offset), grid.flat_shapes(), args["pos_threshold"],
              args["neg_threshold"], args["num_neg"], args["seed"], args["cube_targets"],
              args["weights"])


def _assert_labels_equal(out, expected, exact_float=True):
    names = ["labels", "matched_iou", "matched_gt", "pos_anchor", "pos_targets"]
    for name, got, want in zip(names, out, expected):
        got = got.cpu().numpy()
        if got.dtype.kind == "f" and not exact_float:
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=name)
        else:
            np.testing.assert_array_equal(got, want, err_msg=name)


# ---- anchors3d ----------------------------------------------------------------------------

def test_anchors_deeplung_defaults():
    a = anchors3d((24, 24, 24))
    assert a.shape == (24, 24, 24, 3, 4) and a.dtype == torch.float32
    centres = 1.5 + 4 * torch.arange(24.0)
    assert torch.equal(a[:, 0, 0, 0, 0], centres)
    assert torch.equal(a[0, :, 0, 1, 1], centres)
    assert torch.equal(a[0, 0, :, 2, 2], centres)
    assert torch.equal(a[3, 5, 7, :, 3], torch.tensor([5.0, 10.0, 20.0]))
    assert torch.equal(a[3, 5, 7, 2, :3], torch.tensor([13.5, 21.5, 29.5]))


@pytest.mark.parametrize("seed", range(6))
def test_anchors_match_reference(seed):
    rng = np.random.default_rng(seed)
    fs = tuple(int(v) for v in rng.integers(1, 9, size=3))
    stride = tuple(float(v) for v in rng.uniform(0.5, 5, size=3))
    offset = tuple(float(v) for v in rng.uniform(-2, 3, size=3))
    shapes = [tuple(float(v) for v in rng.uniform(1, 20, size=3)) for _ in range(rng.integers(1, 5))]
    boxes = anchors3d(fs, stride, shapes, offset, cubes=False, dtype=torch.float64)
    np.testing.assert_array_equal(boxes.numpy(), ref.anchor_boxes(fs, stride, offset, shapes))
    sizes = [float(s[0]) for s in shapes]
    cubes = anchors3d(fs, stride, sizes, offset, dtype=torch.float64)
    np.testing.assert_array_equal(cubes.numpy(), ref.anchor_cubes(fs, stride, offset, [(s,) * 3 for s in sizes]))
    # cube and box forms agree through deepem.ops.boxes
    cube_boxes = anchors3d(fs, stride, sizes, offset, cubes=False, dtype=torch.float64)
    torch.testing.assert_close(cubes_to_boxes(cubes), cube_boxes)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_anchors_dtypes_are_exact(dtype):
    # Centres 0.5 + 2 i and half sizes 1.5, 3.5 are exact in every dtype, so must the anchors be.
    want = ref.anchor_cubes((3, 4, 5), (2.0,) * 3, (0.5,) * 3, [(3.0,) * 3, (7.0,) * 3])
    a = anchors3d((3, 4, 5), 2, (3.0, 7.0), dtype=dtype)
    assert a.dtype == dtype
    np.testing.assert_array_equal(a.double().numpy(), want)
    boxes = anchors3d((3, 4, 5), 2, (3.0, 7.0), cubes=False, dtype=dtype)
    want = ref.anchor_boxes((3, 4, 5), (2.0,) * 3, (0.5,) * 3, [(3.0,) * 3, (7.0,) * 3])
    np.testing.assert_array_equal(boxes.double().numpy(), want)


def test_anchors_bad_arguments():
    with pytest.raises(RuntimeError, match="'cubes'"):
        anchors3d((2, 2, 2), 4, [(5.0, 6.0, 7.0)])
    with pytest.raises(RuntimeError, match="'feature_size'"):
        anchors3d((2, 0, 2))
    with pytest.raises(RuntimeError, match="'stride'"):
        anchors3d((2, 2, 2), stride=-1)
    with pytest.raises(RuntimeError, match="'anchor_shapes'"):
        anchors3d((2, 2, 2), 4, [0.0])
    with pytest.raises(RuntimeError, match="'anchor_shapes'"):
        torch.ops.deepem.anchors3d(torch.ones(2, 2), [2, 2, 2], [4.0] * 3, [1.5] * 3, True)
    with pytest.raises(RuntimeError, match="'offset'"):
        torch.ops.deepem.anchors3d(torch.ones(1, 3), [2, 2, 2], [4.0] * 3, [1.5] * 2, True)


@pytest.mark.skipif(importlib.util.find_spec("monai") is None, reason="monai is not installed")
def test_anchors_match_monai():
    from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape

    # MONAI: shapes (w, h, d) = (x, y, z) extents, half extents rounded (even sizes keep them
    # exact), centres stride * i + stride // 2.
    shapes = ((4.0, 6.0, 8.0), (10.0, 10.0, 12.0))
    gen = AnchorGeneratorWithAnchorShape(feature_map_scales=(1,), base_anchor_shapes=shapes)
    image = torch.zeros(1, 1, 20, 16, 12)  # spatial dims are (x, y, z) for MONAI
    fmap = torch.zeros(1, 1, 5, 4, 3)
    monai_xyzxyz = gen(image, [fmap])[0]
    ours = anchors3d((3, 4, 5), 4, [s[::-1] for s in shapes], offset=2.0, cubes=False)
    # MONAI flattens (x, y, z, A) with x slowest: permute ours (z, y, x, A) and swap x and z.
    ours_xyz = ours[..., [2, 1, 0, 5, 4, 3]].permute(2, 1, 0, 3, 4).reshape(-1, 6)
    torch.testing.assert_close(ours_xyz, monai_xyzxyz.float())


# ---- box coding ---------------------------------------------------------------------------

def _random_cubes(rng, n):
    return np.concatenate([rng.uniform(-50, 150, size=(n, 3)), rng.uniform(2, 40, size=(n, 1))], 1)


def _random_boxes(rng, n):
    lo = rng.uniform(-50, 150, size=(n, 3))
    return np.concatenate([lo, lo + rng.uniform(1, 40, size=(n, 3))], 1)


@pytest.mark.parametrize("width", [4, 6])
@pytest.mark.parametrize("seed", range(4))
def test_encode_decode_reference_and_roundtrip(width, seed):
    rng = np.random.default_rng(seed)
    make = _random_cubes if width == 4 else _random_boxes
    k, reps = int(rng.integers(1, 50)), int(rng.integers(1, 4))
    anchors, boxes = make(rng, k), make(rng, k * reps)
    weights = None if seed % 2 else list(rng.uniform(0.5, 10, size=width))
    a_t, b_t = torch.tensor(anchors), torch.tensor(boxes)
    deltas = encode_boxes3d(b_t, a_t, weights)
    np.testing.assert_allclose(deltas.numpy(), ref.encode(boxes, anchors, weights), rtol=1e-12, atol=1e-12)
    back = decode_boxes3d(deltas, a_t, weights, log_clamp=None)
    np.testing.assert_allclose(back.numpy(), boxes, rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(back.numpy(), ref.decode(deltas.numpy(), anchors, weights), rtol=1e-12, atol=1e-12)
    # float32 round trip
    back32 = decode_boxes3d(encode_boxes3d(b_t.float(), a_t.float(), weights), a_t.float(), weights)
    np.testing.assert_allclose(back32.numpy(), boxes, rtol=1e-4, atol=1e-3)


def test_encode_deeplung_form():
    anchor = torch.tensor([[13.5, 21.5, 29.5, 10.0]])
    box = torch.tensor([[15.5, 20.5, 29.5, 20.0]])
    torch.testing.assert_close(encode_boxes3d(box, anchor),
                               torch.tensor([[0.2, -0.1, 0.0, math.log(2.0)]]))


def test_decode_batched_anchors_and_clamp():
    a = anchors3d((2, 3, 4), 4, (5.0, 10.0))  # (2, 3, 4, 2, 4)
    deltas = torch.zeros((5,) + tuple(a.shape))
    deltas[..., 3] = 100.0  # exp(100) would overflow float32
    out = decode_boxes3d(deltas, a)
    assert out.shape == deltas.shape and torch.isfinite(out).all()
    torch.testing.assert_close(out[..., 3], a[..., 3].expand_as(out[..., 3]) * (1000 / 16))
    torch.testing.assert_close(out[..., :3], a[..., :3].expand_as(out[..., :3]))
    assert torch.isinf(decode_boxes3d(deltas, a, log_clamp=None)[..., 3]).all()


def test_coding_empty():
    assert encode_boxes3d(torch.zeros(0, 6), torch.zeros(0, 6)).shape == (0, 6)
    assert decode_boxes3d(torch.zeros(0, 4), torch.ones(3, 4)).shape == (0, 4)


def _coding_tol(dtype, inputs):
    """The dtype's rounding of the result (rtol), plus the float32 arithmetic's absolute
    error, which follows the inputs (coordinates ~150 differenced, then divided by an anchor
    size >= 2), not the result."""
    return dict(rtol=TOL[dtype]["rtol"], atol=TOL[torch.float32]["rtol"] * float(np.abs(inputs).max()))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("width", [4, 6])
def test_coding_dtypes_match_reference(dtype, width):
    rng = np.random.default_rng(width)
    make = _random_cubes if width == 4 else _random_boxes
    a, b = torch.tensor(make(rng, 16)).to(dtype), torch.tensor(make(rng, 48)).to(dtype)
    # The reference sees the inputs as rounded to the dtype, so only the op's error counts.
    a64, b64 = a.double().numpy(), b.double().numpy()
    deltas = encode_boxes3d(b, a)
    assert deltas.dtype == dtype
    want = ref.encode(b64, a64)
    assert np.abs(want).max() > 5  # deltas as large as the tolerance must resolve
    np.testing.assert_allclose(deltas.double().numpy(), want, **_coding_tol(dtype, np.r_[a64, b64]))
    d64 = deltas.double().numpy()
    back = decode_boxes3d(deltas, a)
    assert back.dtype == dtype
    np.testing.assert_allclose(back.double().numpy(), ref.decode(d64, a64), **_coding_tol(dtype, b64))


def test_coding_bad_arguments():
    with pytest.raises(RuntimeError, match="'boxes'"):
        encode_boxes3d(torch.zeros(3, 5), torch.zeros(3, 5))
    with pytest.raises(RuntimeError, match="'anchors'"):
        encode_boxes3d(torch.zeros(3, 4), torch.zeros(3, 6))
    with pytest.raises(RuntimeError, match="'anchors'"):
        encode_boxes3d(torch.zeros(3, 4), torch.zeros(3, 4, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="multiple"):
        decode_boxes3d(torch.zeros(5, 4), torch.ones(2, 4))
    with pytest.raises(RuntimeError, match="'weights'"):
        decode_boxes3d(torch.zeros(2, 4), torch.ones(2, 4), weights=[1.0, 2.0])
    with pytest.raises(RuntimeError, match="'weights'"):
        encode_boxes3d(torch.ones(2, 6), torch.ones(2, 6), weights=[1.0, 1.0, 1.0, 0.0, 1.0, 1.0])
    with pytest.raises(RuntimeError, match="'boxes'"):
        encode_boxes3d(torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long))


# ---- label_anchors3d ------------------------------------------------------------------------

GRIDS = [
    anchor_grid((8, 8, 8)),
    anchor_grid((6, 7, 5), stride=(4, 3, 2), sizes=(6.0, (4.0, 8.0, 8.0), 16.0), offset=(0, 1, 2)),
    anchor_grid((24, 24, 24)),
]


@pytest.mark.parametrize("grid_id", range(len(GRIDS)))
@pytest.mark.parametrize("seed", range(5))
def test_label_matches_reference(grid_id, seed):
    grid = GRIDS[grid_id]
    rng = np.random.default_rng(100 * grid_id + seed)
    extent = grid.stride[0] * grid.feature_size[0]
    gt, counts = _random_gt(rng, int(rng.integers(1, 5)), int(rng.integers(1, 6)), extent)
    bands = None
    if seed % 2:
        bands = torch.tensor(rng.uniform(0, extent, size=(gt.shape[0], 2, 1)) + [[[-4.0, 4.0]]])
        bands[0, 1] = float("nan")
    kw = dict(num_gt=counts, neg_exclude_z=bands, seed=int(rng.integers(0, 2**62)),
              num_neg=[800, -1, 0, 37, 5][seed], cube_targets=seed != 3,
              weights=[1.0, 2.0, 3.0, 4.0] if seed == 4 else None)
    want = ref.label(gt.numpy(), grid.feature_size, grid.stride, grid.offset, grid.shapes,
                     num_gt=counts.numpy(), bands=None if bands is None else bands.numpy(),
                     num_neg=None if kw["num_neg"] < 0 else kw["num_neg"], seed=kw["seed"],
                     cube_targets=kw["cube_targets"], weights=kw["weights"])
    out = _label(gt, grid, **kw)
    _assert_labels_equal(out[:4], want[:4])
    np.testing.assert_allclose(out[4].numpy(), want[4], rtol=1e-12, atol=1e-12)
    emulated = _label(gt, grid, op="emulated", **kw)
    for got, cpu in zip(emulated, out):
        assert torch.equal(got, cpu)


@pytest.mark.parametrize("seed", range(3))
def test_label_float32_cpu_equals_emulated_grid(seed):
    grid = GRIDS[2]
    rng = np.random.default_rng(seed)
    gt, counts = _random_gt(rng, 4, 5, dtype=torch.float32)
    for kw in (dict(num_neg=800), dict(num_neg=-1, cube_targets=False)):
        out = _label(gt, grid, num_gt=counts, seed=seed, **kw)
        emulated = _label(gt, grid, op="emulated", num_gt=counts, seed=seed, **kw)
        for got, want in zip(emulated, out):
            assert torch.equal(got, want)


def test_label_rules_hold():
    # The documented rules, checked on float32 output with the numpy references only.
    grid = GRIDS[2]
    rng = np.random.default_rng(7)
    gt, counts = _random_gt(rng, 8, 5, dtype=torch.float32)
    res = label_anchors3d(gt, grid, num_gt=counts, seed=3)
    args = (grid.feature_size, grid.stride, grid.offset, grid.shapes)
    boxes, cubes = ref.anchor_boxes(*args).reshape(-1, 6), ref.anchor_cubes(*args).reshape(-1, 4)
    g = gt.double().numpy()
    for b in range(8):
        n = int(counts[b])
        pos = res.pos_anchor[b].numpy()
        assert (pos[:n] >= 0).all() and (pos[n:] == -1).all()
        assert set(torch.nonzero(res.labels[b] == 1).flatten().tolist()) == set(pos[:n].tolist())
        assert int((res.labels[b] == 0).sum()) == 800
        assert (res.matched_iou[b][res.labels[b] == 0] < 0.02).all()
        if not n:
            continue
        ious = np.stack([ref.iou(boxes, g[b, j]) for j in range(n)], axis=1)  # [K, n]
        for j in range(n):
            if ious[:, j].max() >= 0.5:
                assert ious[pos[j], j] >= 0.5
            cube = np.r_[(g[b, j, :3] + g[b, j, 3:]) / 2, (g[b, j, 3:] - g[b, j, :3]).mean()]
            want = ref.encode(cube[None], cubes[pos[j]][None])[0]
            np.testing.assert_allclose(res.pos_targets[b, j].double().numpy(), want, **TOL[torch.float32])
        # matched IoU and GT are the best over the crop's boxes (GT ties to float32
        # rounding excluded: either GT may win there)
        best, arg = ious.max(axis=1), ious.argmax(axis=1)
        np.testing.assert_allclose(res.matched_iou[b].double().numpy(), best, **TOL[torch.float32])
        second = np.sort(ious, axis=1)[:, -2] if n > 1 else np.zeros(len(best))
        clear = best - second > 1e-5
        np.testing.assert_array_equal(res.matched_gt[b].numpy()[clear], np.where(best > 0, arg, -1)[clear])


def test_label_empty_ground_truth_is_all_negative():
    grid = GRIDS[0]
    for gt, counts in ((torch.zeros(3, 0, 6), None),
                       (torch.full((3, 2, 6), float("nan")), None),
                       (torch.rand(3, 2, 6) * 10, torch.zeros(3, dtype=torch.long))):
        res = label_anchors3d(gt, grid, num_gt=counts, num_neg=None)
        assert (res.labels == 0).all() and (res.matched_gt == -1).all()
        assert (res.matched_iou == 0).all() and (res.pos_anchor == -1).all()
        res = label_anchors3d(gt, grid, num_gt=counts, num_neg=100)
        assert ((res.labels == 0).sum(dim=1) == 100).all() and (res.labels != 1).all()
    res = label_anchors3d(torch.zeros(0, 3, 6), grid)
    assert res.labels.shape == (0, grid.num_anchors) and res.pos_targets.shape == (0, 3, 4)


def test_label_ground_truth_outside_the_crop():
    grid = GRIDS[0]  # 8^3 cells of stride 4: the crop spans [0, 32)
    outside = cubes_to_boxes(torch.tensor([[[60.0, 16.0, 16.0, 10.0]]]))
    res = label_anchors3d(outside, grid, num_neg=None)
    assert (res.pos_anchor == -1).all() and (res.labels == 0).all()
    # Overlapping the border: it blocks negatives; its centre rounds to no cell -> no positive.
    border = cubes_to_boxes(torch.tensor([[[36.0, 16.0, 16.0, 10.0]]]))
    res = label_anchors3d(border, grid, num_neg=None)
    assert (res.pos_anchor == -1).all() and (res.labels == -1).any() and (res.labels != 1).all()
    # Centre just inside: a positive in the last z cell.
    inside = cubes_to_boxes(torch.tensor([[[31.0, 16.0, 16.0, 10.0]]]))
    res = label_anchors3d(inside, grid, num_neg=None)
    k = int(res.pos_anchor[0, 0])
    assert k >= 0 and k // (8 * 8 * 3) == 7


def test_label_fallback_nearest_cell_log_closest_size():
    grid = GRIDS[0]
    # A 2.2 mm nodule has IoU < 0.5 with every anchor (smallest is 5 mm).
    gt = cubes_to_boxes(torch.tensor([[[9.4, 14.0, 22.6, 2.2]]], dtype=torch.float64))
    res = label_anchors3d(gt, grid, num_neg=None)
    # cells round((c - 1.5) / 4) = (2, 3, 5), size 5 (log-closest to 2.2)
    assert int(res.pos_anchor[0, 0]) == ((2 * 8 + 3) * 8 + 5) * 3 + 0
    torch.testing.assert_close(res.pos_targets[0, 0],
                               torch.tensor([(9.4 - 9.5) / 5, (14.0 - 13.5) / 5, (22.6 - 21.5) / 5,
                                             math.log(2.2 / 5)], dtype=torch.float64))
    # 14 mm is log-closer to 10 than to 20 (log 1.4 < log(20/14)); 15 mm to 20. Neither
    # reaches IoU 0.5 with an anchor, so both are fallbacks.
    for d, a in ((14.0, 1), (15.0, 2)):
        gt = cubes_to_boxes(torch.tensor([[[9.4, 14.0, 22.6, d]]], dtype=torch.float64))
        res = label_anchors3d(gt, grid, num_neg=None)
        assert float(res.matched_iou.max()) < 0.5
        assert int(res.pos_anchor[0, 0]) == ((2 * 8 + 3) * 8 + 5) * 3 + a


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_label_fallback_cell_rounds_half_to_even(dtype, device):
    # Centres exactly halfway between cells: (c - 1.5) / 4 = 2.5, 3.5, 4.5 round to even
    # cells 2, 4, 4 (numpy.round, as DeepLung), not 3, 4, 5 (half away from zero).
    grid = GRIDS[0]
    gt = torch.tensor([[[10.5, 14.5, 18.5, 12.5, 16.5, 20.5]]], dtype=dtype, device=device)
    res = label_anchors3d(gt, grid, num_neg=None)
    assert float(res.matched_iou.max()) < 0.5  # a 2 mm nodule: the fallback decides
    want = ((2 * 8 + 4) * 8 + 4) * 3 + 0
    assert int(res.pos_anchor[0, 0]) == want
    assert ref.fallback(grid.feature_size, grid.stride, grid.offset, grid.shapes, gt[0, 0].cpu().double().numpy()) == want


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_label_positive_at_exactly_the_threshold(dtype, device):
    # A GT twice the 10 mm anchor at cell (7, 3, 3) along z: inter 1000, union 2000, IoU
    # exactly 0.5, the only anchor to reach it. Its centre z 34.5 rounds to no cell, so
    # without the candidate (IoU >= 0.5) there would be no positive at all.
    grid = GRIDS[0]
    gt = torch.tensor([[[24.5, 8.5, 8.5, 44.5, 18.5, 18.5]]], dtype=dtype, device=device)
    k = ((7 * 8 + 3) * 8 + 3) * 3 + 1
    for op in ("label", "emulated") if device.type == "cpu" else ("label",):
        out = _label(gt, grid, op, num_neg=-1)
        assert int(out[3][0, 0]) == k and float(out[1][0, k]) == 0.5 and int(out[0][0, k]) == 1
        assert int(out[3][0, 0]) == ref.label(gt.cpu().numpy(), grid.feature_size, grid.stride,
                                              grid.offset, grid.shapes, num_neg=None)[3][0, 0]
        assert int(_label(gt, grid, op, num_neg=-1, pos_threshold=0.5 + 1e-6)[3][0, 0]) == -1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_label_negative_only_below_the_threshold(dtype, device):
    # The GT above and the 10 mm anchor at cell (6, 3, 3): inter 600, union 2400, IoU exactly
    # 0.25. Negative means IoU < neg_threshold: ignored at 0.25, negative just above.
    grid = GRIDS[0]
    gt = torch.tensor([[[24.5, 8.5, 8.5, 44.5, 18.5, 18.5]]], dtype=dtype, device=device)
    k = ((6 * 8 + 3) * 8 + 3) * 3 + 1
    for op in ("label", "emulated") if device.type == "cpu" else ("label",):
        out = _label(gt, grid, op, num_neg=-1, neg_threshold=0.25)
        assert float(out[1][0, k]) == 0.25 and int(out[0][0, k]) == -1
        assert int(_label(gt, grid, op, num_neg=-1, neg_threshold=0.25 + 1e-6)[0][0, k]) == 0


def test_label_seeded_determinism_and_uniform_choice():
    grid = GRIDS[0]
    # an 18 mm nodule centred between 8 cells: their 20 mm anchors are the candidates
    gt = cubes_to_boxes(torch.tensor([[[15.5, 15.5, 15.5, 18.0]]]))
    boxes = grid.anchors(cubes=False).reshape(-1, 6)
    candidates = set(torch.nonzero(torch.ops.deepem.box_iou3d(boxes, gt[0])[:, 0] >= 0.5).flatten().tolist())
    assert len(candidates) == 8
    a = label_anchors3d(gt, grid, seed=11)
    b = label_anchors3d(gt, grid, seed=11)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    picks = [int(label_anchors3d(gt, grid, seed=s).pos_anchor[0, 0]) for s in range(400)]
    assert set(picks) == candidates
    counts = np.bincount([sorted(candidates).index(p) for p in picks])
    assert counts.min() > 400 / len(candidates) / 3
    # negatives differ between seeds too, and between crops of one batch
    n1 = label_anchors3d(gt, grid, seed=1, num_neg=50).labels == 0
    n2 = label_anchors3d(gt, grid, seed=2, num_neg=50).labels == 0
    assert not torch.equal(n1, n2)
    two = label_anchors3d(gt.expand(2, 1, 6), grid, seed=1, num_neg=50).labels == 0
    assert not torch.equal(two[0], two[1])


def test_label_z_band_excludes_negatives():
    grid = GRIDS[2]
    gt = cubes_to_boxes(torch.tensor([[[40.0, 40.0, 40.0, 8.0]], [[60.0, 30.0, 50.0, 12.0]]]))
    bands = torch.tensor([[[30.0, 50.0]], [[float("nan"), float("nan")]]])
    res = label_anchors3d(gt, grid, neg_exclude_z=bands, num_neg=None)
    zc = grid.anchors()[..., 0].reshape(-1)
    inside = (zc >= 30) & (zc <= 50)
    assert not (res.labels[0][inside] == 0).any() and (res.labels[0][~inside] != 1).all()
    assert (res.labels[0][~inside & (res.matched_iou[0] < 0.02)] == 0).all()
    assert (res.labels[1][inside & (res.matched_iou[1] < 0.02)] == 0).all()
    assert int((res.labels == 1).sum()) == 2  # positives are never excluded


def test_label_float16_and_python_helpers():
    grid = GRIDS[0]
    boxes = [cubes_to_boxes(torch.tensor([[10.0, 12.0, 14.0, 8.0]])),
             cubes_to_boxes(torch.tensor([[10.0, 12.0, 14.0, 8.0], [20.0, 20.0, 20.0, 6.0]]))]
    gt, counts = pad_boxes(boxes)
    assert gt.shape == (2, 2, 6) and counts.tolist() == [1, 2] and torch.isnan(gt[0, 1]).all()
    for dtype in (torch.float16, torch.bfloat16):
        res = label_anchors3d(gt.to(dtype), grid, num_gt=counts)
        assert res.matched_iou.dtype == dtype and res.pos_targets.dtype == dtype
        want = ref.label(gt.to(dtype).double().numpy(), grid.feature_size, grid.stride, grid.offset,
                         grid.shapes, num_gt=counts.numpy())
        assert (want[3][0, :1] >= 0).all() and (want[3][1] >= 0).all()
        for name, got, w in zip(res._fields, res, want):
            if got.dtype.is_floating_point:
                np.testing.assert_allclose(got.double().numpy(), w, **TOL[dtype], err_msg=name)
            else:
                np.testing.assert_array_equal(got.numpy(), w, err_msg=name)


def test_label_bad_arguments():
    grid = GRIDS[0]
    gt = torch.zeros(2, 3, 6)
    with pytest.raises(RuntimeError, match="'gt_boxes'"):
        label_anchors3d(torch.zeros(2, 6), grid)
    with pytest.raises(RuntimeError, match="'gt_boxes'"):
        label_anchors3d(torch.zeros(2, 3, 6, dtype=torch.long), grid)
    with pytest.raises(RuntimeError, match="'num_gt'"):
        label_anchors3d(gt, grid, num_gt=torch.zeros(3, dtype=torch.long))
    with pytest.raises(RuntimeError, match="'num_gt'"):
        label_anchors3d(gt, grid, num_gt=torch.zeros(2))
    with pytest.raises(RuntimeError, match="'neg_exclude_z'"):
        label_anchors3d(gt, grid, neg_exclude_z=torch.zeros(2, 3))
    with pytest.raises(RuntimeError, match="'neg_exclude_z'"):
        label_anchors3d(gt, grid, neg_exclude_z=torch.zeros(2, 1, 2, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="'pos_threshold'"):
        label_anchors3d(gt, grid, pos_threshold=1.5)
    with pytest.raises(RuntimeError, match="'neg_threshold'"):
        label_anchors3d(gt, grid, neg_threshold=-0.1)
    with pytest.raises(RuntimeError, match="'num_neg'"):
        label_anchors3d(gt, grid, num_neg=-5)
    with pytest.raises(RuntimeError, match="'weights'"):
        label_anchors3d(gt, grid, weights=[1.0] * 6)
    with pytest.raises(RuntimeError, match="'feature_size'"):
        label_anchors3d(gt, grid._replace(feature_size=(0, 2, 2)))
    with pytest.raises(RuntimeError, match="'anchor_shapes'"):
        label_anchors3d(gt, grid._replace(shapes=((5.0, -1.0, 5.0),)))
    with pytest.raises(TypeError, match="grid"):
        label_anchors3d(gt, grid.anchors())
    # A product of sizes that wraps around int64 must not pass as a small grid.
    with pytest.raises(RuntimeError, match="too many anchors"):
        label_anchors3d(gt, grid._replace(feature_size=(3, 6148914691236517206, 1)))


def test_hard_negatives():
    torch.manual_seed(0)
    logits = torch.randn(3, 50)
    labels = torch.randint(-1, 2, (3, 50)).to(torch.int8)
    mask = hard_negatives(logits, labels, 10)
    neg = labels == 0
    want = torch.zeros(150, dtype=torch.bool)
    want[logits.masked_fill(~neg, -math.inf).flatten().argsort(descending=True)[:10]] = True
    assert torch.equal(mask, want.reshape(3, 50) & neg) and int(mask.sum()) == 10
    per = hard_negatives(logits, labels, 4, per_crop=True)
    for b in range(3):
        top = logits[b].masked_fill(~neg[b], -math.inf).argsort(descending=True)[:4]
        assert torch.equal(per[b], torch.zeros(50, dtype=torch.bool).index_fill(0, top, True) & neg[b])
    assert int(hard_negatives(logits, torch.full_like(labels, -1), 5).sum()) == 0
    with pytest.raises(ValueError, match="num"):
        hard_negatives(logits, labels, -1)


# ---- opcheck ------------------------------------------------------------------------------

def test_opcheck_all_ops():
    grid = GRIDS[1]
    shapes = torch.tensor(grid.shapes)
    torch.library.opcheck(torch.ops.deepem.anchors3d.default,
                          (shapes, list(grid.feature_size), list(grid.stride), list(grid.offset), False))
    rng = np.random.default_rng(0)
    a, b = torch.tensor(_random_cubes(rng, 6)), torch.tensor(_random_cubes(rng, 12))
    torch.library.opcheck(torch.ops.deepem.encode_boxes3d.default, (b, a, [1.0, 1.0, 2.0, 2.0]))
    torch.library.opcheck(torch.ops.deepem.decode_boxes3d.default, (b, a, None, 4.0))
    gt, counts = _random_gt(rng, 2, 3, 24.0, dtype=torch.float32)
    for name in ("label_anchors3d", "_label_anchors3d_emulated"):
        op = getattr(torch.ops.deepem, name).default
        torch.library.opcheck(op, (gt, counts, None, list(grid.feature_size), list(grid.stride),
                                   list(grid.offset), grid.flat_shapes(), 0.5, 0.02, 30, 5, True,
                                   None))


# ---- CUDA ---------------------------------------------------------------------------------

@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_cuda_anchors_and_coding_match_cpu():
    for dt in (torch.float32, torch.float64):
        for cubes in (True, False):
            args = ((5, 6, 7), (4, 0.7, 2.3), (5.0, 10.0, 20.0), (1.5, 0.35, -0.1))
            cpu = anchors3d(*args, cubes=cubes, dtype=dt)
            gpu = anchors3d(*args, cubes=cubes, dtype=dt, device="cuda")
            assert torch.equal(gpu.cpu(), cpu)
    rng = np.random.default_rng(0)
    for width, make in ((4, _random_cubes), (6, _random_boxes)):
        a, b = torch.tensor(make(rng, 40)), torch.tensor(make(rng, 120))
        d = encode_boxes3d(b, a)
        torch.testing.assert_close(encode_boxes3d(b.cuda(), a.cuda()).cpu(), d)
        torch.testing.assert_close(decode_boxes3d(d.cuda(), a.cuda()).cpu(), decode_boxes3d(d, a))


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("seed", range(4))
def test_cuda_label_matches_cpu(seed):
    rng = np.random.default_rng(seed)
    for grid in GRIDS:
        gt, counts = _random_gt(rng, 6, 5, grid.stride[0] * grid.feature_size[0])
        bands = torch.tensor(rng.uniform(0, 90, size=(6, 1, 1)) + [[[-5.0, 5.0]]])
        for kw in (dict(num_neg=800), dict(num_neg=-1, cube_targets=False, neg_exclude_z=bands),
                   dict(num_neg=3, weights=[2.0, 2.0, 2.0, 1.0])):
            cpu = _label(gt, grid, num_gt=counts, seed=seed, **kw)
            kw_gpu = dict(kw)
            if "neg_exclude_z" in kw_gpu:
                kw_gpu["neg_exclude_z"] = kw_gpu["neg_exclude_z"].cuda()
            gpu = _label(gt.cuda(), grid, num_gt=counts.cuda(), seed=seed, **kw_gpu)
            for x, y in zip(gpu, cpu):
                if x.dtype.is_floating_point:
                    torch.testing.assert_close(x.cpu(), y)
                else:
                    assert torch.equal(x.cpu(), y)


def test_negative_sampling_is_uniform_over_seeds():
    grid = anchor_grid((4, 4, 4))  # 192 anchors, all negative without GT
    gt = torch.zeros(1, 0, 6)
    picks = torch.stack([label_anchors3d(gt, grid, num_neg=24, seed=s).labels[0] == 0
                         for s in range(400)]).sum(dim=0)
    assert int(picks.sum()) == 400 * 24
    expected = 400 * 24 / 192  # 50
    assert picks.min() > expected / 2 and picks.max() < expected * 1.6


def test_label_degenerate_and_nan_ground_truth_are_skipped():
    grid = GRIDS[0]
    good = cubes_to_boxes(torch.tensor([[12.0, 12.0, 12.0, 8.0]]))[0]
    flat = good.clone()
    flat[3] = flat[0]  # zero extent on z
    nan = good.clone()
    nan[1] = float("nan")
    alone = label_anchors3d(good.reshape(1, 1, 6), grid, num_neg=None)
    mixed = label_anchors3d(torch.stack([flat, nan, good]).unsqueeze(0), grid, num_neg=None)
    assert mixed.pos_anchor.tolist() == [[-1, -1, int(alone.pos_anchor[0, 0])]]
    assert torch.equal(mixed.labels, alone.labels)
    assert torch.equal(mixed.matched_gt, torch.where(alone.matched_gt >= 0, 2, -1))

"""deepem.infer: tiled whole-scan inference, decode + NMS rules, world-mm marks, Detector on real
phantom scans, and `deepem detect`."""
import csv
import json
import math
import os

import numpy as np
import pytest

pytest.importorskip("scipy")
pytest.importorskip("SimpleITK")
import torch
from torch import nn

from deepem import cli
from deepem.data import io, lung_mask, phantom, preprocess
from deepem.data.datasets import PAD_VALUE, coord_map, extract
from deepem.infer import Detector, Marks, anchors_at, decode, load_input, postprocess, split_comb, tile_sides
from deepem.infer import fast
from deepem.infer.tiles import stitched_output
from deepem.model import Res18
from deepem.ops import anchor_grid, anchors3d, encode_boxes3d

WIDTH = 0.125
SHAPE = (56, 88, 88)  # source voxels (z, y, x) of the phantom scans


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine OpenMP's second thread mostly waits
    (measured: a width-0.125 forward pass 0.13 s with 1 thread, 2.3 s with 2 under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def res18(seed=0):
    torch.manual_seed(seed)
    return Res18(WIDTH).eval()


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    """Two phantom scans as .mhd files and the preprocessed folder of the first."""
    root = tmp_path_factory.mktemp("scans")
    paths = []
    for i in range(2):
        vol, _, info = phantom.make_scan(7, i, shape=SHAPE, n_nodules=2, vessels=False, lookalike_rates=None)
        path = root / ("scan%d.mhd" % i)
        io.write_image(vol, path)
        paths.append(path)
    pre = root / "pre"
    os.makedirs(pre)
    preprocess.preprocess_scan(paths[0], pre, "scan0")
    return {"root": root, "paths": paths, "pre": pre}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    torch.save({"model": res18().state_dict(), "config": {"model": {"width": WIDTH, "dropout": 0.5}},
                "epoch": 3}, path)
    return path


# ---- tiles ----

def test_tile_sides_follow_the_scan():
    assert tile_sides((80, 100, 100)) == (80, 112, 112)  # one tile of its own size (+ margin)
    assert tile_sides((300, 250, 350)) == (112, 128, 128)  # balanced: 3, 2, 3 tiles
    assert tile_sides((500, 144, 145), tile=144) == (128, 144, 80)
    assert tile_sides((20, 30, 40), tile=(16, 32, 48)) == (16, 32, 48)
    sc = split_comb((80, 100, 100))
    assert sc.grid((80, 100, 100)) == (1, 1, 1) and sc.tile_shape == (144, 176, 176)
    with pytest.raises(ValueError, match="multiples of 16"):
        tile_sides((10, 10, 10), tile=100)
    with pytest.raises(ValueError, match="margin"):
        split_comb((10, 10, 10), margin=12)


class LocalNet(nn.Module):
    """A detector-shaped network whose receptive field (5 voxels) stays inside a 16-voxel
    margin: the tiled output must then equal the whole volume's exactly."""

    def __init__(self, anchors=3):
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv3d(1, 4, 5, padding=2)
        self.head = nn.Conv3d(4 + 3, anchors * 5, 1)
        self.anchors = anchors

    def forward(self, x, coord):
        y = torch.cat([nn.functional.avg_pool3d(torch.relu(self.conv(x)), 4), coord], 1)
        b, _, d, h, w = y.shape
        return self.head(y).permute(0, 2, 3, 4, 1).reshape(b, d, h, w, self.anchors, 5)


def test_multi_tile_output_equals_the_whole_volume():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (37, 30, 20)).astype(np.uint8)
    model, margin = LocalNet(), 16
    sc = split_comb(image.shape, tile=16, margin=margin)
    assert sc.grid(image.shape) == (3, 2, 2)
    with torch.no_grad():
        tiled = stitched_output(model, image, sc, tile_batch=5)
        cells = [math.ceil(s / 4) for s in image.shape]
        padded = [16 * math.ceil((4 * c + 2 * margin) / 16) for c in cells]
        start = (-margin,) * 3
        x = torch.from_numpy((extract(image, start, padded, PAD_VALUE).astype(np.float32) - 128) / 128)
        whole = model(x[None, None], torch.from_numpy(coord_map(start, padded, image.shape))[None])[0]
    m = margin // 4
    assert tiled.shape == (10, 8, 5, 3, 5)
    torch.testing.assert_close(tiled, whole[m:m + cells[0], m:m + cells[1], m:m + cells[2]], atol=1e-5, rtol=1e-5)


def test_res18_one_tile_equals_direct_call_and_batches_agree():
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (40, 36, 30)).astype(np.uint8)
    model = res18()
    det = Detector(model, tile=144, margin=16)
    with torch.no_grad():
        out = det.network_output(image)
        x = extract(image, (-16,) * 3, (80, 80, 64), PAD_VALUE).astype(np.float32)
        direct = model(torch.from_numpy((x - 128) / 128)[None, None],
                       torch.from_numpy(coord_map((-16,) * 3, (80, 80, 64), image.shape))[None])[0]
    assert out.shape == (10, 9, 8, 3, 5) and out.dtype == torch.float32
    torch.testing.assert_close(out, direct[4:14, 4:13, 4:12])
    # several tiles: one per pass or all in one batch give the same output (BN in eval mode)
    a = Detector(model, tile=32, margin=16, tile_batch=1).network_output(image)
    b = Detector(model, tile=32, margin=16, tile_batch=3).network_output(image)
    assert Detector(model, tile=32).split_comb(image.shape).grid(image.shape) == (2, 2, 1)
    assert a.shape == out.shape
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


# ---- decode and post-processing ----

def test_anchors_at_matches_anchors3d():
    grid = anchor_grid((3, 4, 5), 4, (5.0, 10.0, 20.0))
    full = anchors3d((3, 4, 5)).reshape(-1, 4)
    idx = torch.arange(full.shape[0])
    torch.testing.assert_close(anchors_at(grid, idx), full)


def plant(shape, cubes, logits, sizes=(5.0, 10.0, 20.0), background=-10.0):
    """A network output [D, H, W, 3, 5] whose decode is exactly `cubes` (z, y, x, d) at `logits`."""
    out = torch.zeros(tuple(shape) + (len(sizes), 5))
    out[..., 0] = background
    anchors = anchors3d(shape, sizes=sizes)
    for (z, y, x, d), logit in zip(cubes, logits):
        cell = [min(max(int(round((c - 1.5) / 4)), 0), n - 1) for c, n in zip((z, y, x), shape)]
        a = int(np.argmin([abs(math.log(d / s)) for s in sizes]))
        anchor = anchors[cell[0], cell[1], cell[2], a]
        box = torch.tensor([[z, y, x, d]], dtype=torch.float32)
        out[cell[0], cell[1], cell[2], a, 1:] = encode_boxes3d(box, anchor[None])[0]
        out[cell[0], cell[1], cell[2], a, 0] = logit
    return out


def test_decode_round_trip_to_world_mm(scans):
    meta = preprocess.load_meta(scans["pre"], "scan0")
    shape = [math.ceil(s / 4) for s in meta["shape"]]
    # three nodules given in world mm, far apart, through the real geometry into the grid
    grid_pts = np.array([[10.0, 12.0, 14.0], [30.3, 20.7, 40.2], [50.0, 40.0, 22.5]])
    world = preprocess.grid_to_world(grid_pts, meta)
    grid_back = preprocess.world_to_grid(world, meta)
    diam = np.array([4.0, 8.5, 17.0])
    cubes = np.concatenate([grid_back, diam[:, None]], 1)
    out = plant(shape, cubes.astype(np.float32), [1.0, 3.0, 0.5])
    cand = decode(out, -2.0)
    assert cand.shape == (3, 5)
    kept = postprocess(cand)
    torch.testing.assert_close(kept[:, 0], torch.tensor([3.0, 1.0, 0.5]))  # best first
    marks = Marks.from_grid(kept, meta, "scan0")
    order = [1, 0, 2]
    np.testing.assert_allclose(marks.world_xyz, world[order], atol=1e-3)
    np.testing.assert_allclose(marks.diameter_mm, diam[order], rtol=1e-5)
    np.testing.assert_allclose(marks.probability, 1 / (1 + np.exp(-np.array([3.0, 1.0, 0.5]))), rtol=1e-6)
    assert list(marks.seriesuid) == ["scan0"] * 3 and len(marks.rows()) == 3
    assert marks.rows()[0][0] == "scan0" and marks.rows()[0][4] == pytest.approx(marks.probability[0])


def test_threshold_diameter_nms_and_cap_rules():
    shape = (30, 30, 30)
    # threshold: strictly greater; NaN never passes
    out = plant(shape, [[10, 10, 10, 6.0], [60, 60, 60, 6.0], [100, 100, 100, 6.0]], [-2.0, -1.999, 0.0])
    out[20, 20, 20, 0, 0] = float("nan")
    assert decode(out, -2.0).shape[0] == 2
    # diameter > min_diameter only
    cand = torch.tensor([[1.0, 10, 10, 10, 3.0], [0.5, 50, 50, 50, 3.01], [2.0, 90, 90, 90, float("nan")]])
    torch.testing.assert_close(postprocess(cand)[:, 4], torch.tensor([3.01]))
    # NMS at cube IoU 0.1: IoU 0.2 suppresses the lower score, IoU 0.05 does not (two cubes of
    # side 10 shifted by s along x: IoU = (10 - s) / (10 + s))
    s_hi = 10 * (1 - 0.2) / (1 + 0.2)
    s_lo = 10 * (1 - 0.05) / (1 + 0.05)
    cand = torch.tensor([[3.0, 50, 50, 50, 10], [2.0, 50, 50, 50 + s_hi, 10],
                         [1.0, 80, 80, 80, 10], [0.5, 80, 80, 80 + s_lo, 10]])
    torch.testing.assert_close(postprocess(cand)[:, 0], torch.tensor([3.0, 1.0, 0.5]))
    # at most max_marks, the highest first
    rng = np.random.default_rng(0)
    pts = np.stack(np.meshgrid(*[np.arange(6) * 20.0 + 10] * 3, indexing="ij"), -1).reshape(-1, 3)[:150]
    logits = rng.permutation(150).astype(np.float32) / 10
    cand = torch.from_numpy(np.concatenate([logits[:, None], pts, np.full((150, 1), 8.0)], 1).astype(np.float32))
    kept = postprocess(cand)
    assert kept.shape[0] == 100
    torch.testing.assert_close(kept[:, 0], torch.from_numpy(np.sort(logits)[::-1][:100].copy()))
    assert postprocess(cand, max_marks=None).shape[0] == 150
    assert postprocess(cand[:0]).shape == (0, 5)
    with pytest.raises(ValueError, match=r"\[K, 5\]"):
        postprocess(cand[:, :4])
    with pytest.raises(ValueError, match="output must be"):
        decode(torch.zeros(4, 4, 4, 2, 5))


# ---- Detector on real scans ----

def test_detector_on_a_raw_scan_path_and_its_preprocessed_folder(scans, checkpoint):
    det = Detector(checkpoint, device="cpu", margin=16)
    marks = det.detect(scans["paths"][0])
    meta = preprocess.load_meta(scans["pre"], "scan0")
    assert 0 < len(marks) <= 100 and set(marks.seriesuid) == {"scan0"}
    assert np.all(np.diff(marks.logit) <= 0) and np.all(marks.diameter_mm > 3)
    np.testing.assert_allclose(marks.probability, 1 / (1 + np.exp(-marks.logit)))
    np.testing.assert_allclose(marks.world_xyz, preprocess.grid_to_world(
        np.stack([marks.grid_z, marks.grid_y, marks.grid_x], 1), meta))
    assert set(det.timings) == {"read", "network", "postprocess", "mapping"}
    # the same scan preprocessed on disk, and as a volume + meta, with the model given directly
    same = Detector(res18(), device="cpu", margin=16).detect(scans["pre"], uid="scan0")
    np.testing.assert_allclose(same.world_xyz, marks.world_xyz, atol=1e-4)
    # a volume + meta; the steps one by one (the E-step's path) give the same marks
    image = np.load(scans["pre"] / "scan0_clean.npy")
    assert load_input(image, meta=meta)[2] == "scan0"
    out = det.network_output(image)
    assert out.shape == tuple(math.ceil(s / 4) for s in image.shape) + (3, 5)
    steps = Marks.from_grid(det.postprocess(det.decode(out)), meta)
    np.testing.assert_allclose(steps.logit, marks.logit, atol=1e-5)
    assert det.decode(out, -3.0).shape[0] >= det.decode(out).shape[0]


def test_detector_errors_name_the_file(tmp_path, checkpoint):
    det = Detector(checkpoint, device="cpu")
    with pytest.raises(FileNotFoundError, match="missing.mhd"):
        det.detect(tmp_path / "missing.mhd")
    bad = tmp_path / "broken.mhd"
    bad.write_text("ObjectType = Image\nNDims = 3\nDimSize = 10 10 10\nElementType = MET_SHORT\n"
                   "ElementDataFile = broken.raw\n")
    (tmp_path / "broken.raw").write_bytes(b"\0" * 7)
    with pytest.raises(io.ScanReadError, match="broken.mhd"):
        det.detect(bad)
    flat = io.Volume(np.full((20, 40, 40), 40, dtype=np.int16), spacing=(0.8, 0.8, 2.0))
    io.write_image(flat, tmp_path / "nolungs.mhd")
    with pytest.raises(lung_mask.EmptyLungMask, match="nolungs.mhd"):
        det.detect(tmp_path / "nolungs.mhd")
    with pytest.raises(ValueError, match="meta"):
        det.detect(np.zeros((16, 16, 16), np.uint8))
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        Detector(tmp_path / "none.pt")
    with pytest.raises(ValueError, match="amp"):
        Detector(res18(), amp="fp8")


# ---- deepem detect ----

def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_cli_detect_preprocessed_folder_with_overlay(scans, checkpoint, tmp_path, capsys):
    top = Detector(checkpoint, device="cpu", margin=16).detect(scans["pre"], uid="scan0").probability[0]
    out = tmp_path / "run"
    rc = cli.main(["detect", str(checkpoint), "--data", str(scans["pre"]), "--out", str(out), "--device", "cpu",
                   "--margin", "16", "--overlays", "--overlay-min-prob", repr(float(top)), "--quiet"])
    assert rc == 0
    rows = read_csv(out / "marks.csv")
    assert rows[0] == ["seriesuid", "coordX", "coordY", "coordZ", "probability", "diameter_mm"]
    assert 0 < len(rows) - 1 <= 100 and {r[0] for r in rows[1:]} == {"scan0"}
    doc = json.loads((out / "marks.json").read_text())
    assert doc["box_mode"] == "cccwhd" and "LPS" in doc["coordinates"]
    boxes = np.array(doc["scans"]["scan0"]["boxes"])
    np.testing.assert_allclose(boxes[:, :3], np.array([r[1:4] for r in rows[1:]], dtype=float), atol=1e-6)
    np.testing.assert_allclose(boxes[:, 3], np.array([r[5] for r in rows[1:]], dtype=float), atol=1e-6)
    pngs = sorted(os.listdir(out / "overlays"))
    assert len(pngs) >= 1 and pngs[0].startswith("scan0_mark000_") and pngs[0].endswith(".png")
    with open(out / "overlays" / pngs[0], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    report = json.loads((out / "detect_report.json").read_text())
    assert report["scans_done"] == ["scan0"] and report["failed"] == {}
    assert report["settings"]["network"] == ("fused" if fast.fused.available() else "torchscript")
    assert not [f for f in os.listdir(out) if f.startswith(".tmp")]
    # the first line says how the network runs, the narrow full-resolution layers included
    narrow = fast.fused.available() and fast.fused.narrow_kernels_apply(Detector(checkpoint, device="cpu").model)
    assert ("full-resolution layers in deepem's AVX2 convolution" in capsys.readouterr().err) == narrow


def test_cli_detect_reports_an_unreadable_scan_and_goes_on(scans, checkpoint, tmp_path, capsys):
    bad = tmp_path / "corrupt.mhd"
    bad.write_text("this is not a MetaImage header\n")
    out = tmp_path / "run"
    rc = cli.main(["detect", str(checkpoint), "--scans", str(scans["paths"][1]), str(bad), "--out", str(out),
                   "--device", "cpu", "--margin", "16", "--quiet"])
    assert rc == 1
    assert "corrupt" in capsys.readouterr().err
    rows = read_csv(out / "marks.csv")
    assert {r[0] for r in rows[1:]} == {"scan1"}
    report = json.loads((out / "detect_report.json").read_text())
    assert list(report["failed"]) == ["corrupt"] and "corrupt.mhd" in report["failed"]["corrupt"]
    assert json.loads((out / "marks.json").read_text())["scans"].keys() == {"scan1"}


def test_infer_never_imports_train_or_eval():
    import subprocess
    import sys

    code = ("import sys, deepem.infer, deepem.infer.run; "
            "bad = [m for m in sys.modules if m.startswith(('deepem.train', 'deepem.eval', 'deepem.em'))]; "
            "assert not bad, bad")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


def test_bf16_autocast_gives_a_float32_output():
    image = np.random.default_rng(3).integers(0, 256, (20, 24, 28)).astype(np.uint8)
    model = res18()
    ref = Detector(model, margin=8).network_output(image)
    out = Detector(model, margin=8, amp="bf16").network_output(image)
    assert out.dtype == torch.float32 and out.shape == ref.shape and torch.isfinite(out).all()
    assert (out - ref).abs().max() < 0.5
    # bf16 really ran (a Detector that ignored amp would give ref exactly), and only its rounding
    # separates the two: the network run under torch.autocast itself gives the same output
    assert (out - ref).abs().max() > 0
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the module as it is, plain input: the same output
        direct = Detector(model, margin=8, fast=False).network_output(image)
    torch.testing.assert_close(out, direct.float(), rtol=0, atol=0)


def test_cli_detect_bad_split_or_checkpoint_is_a_usage_error(scans, checkpoint, tmp_path, capsys):
    splits = tmp_path / "splits.json"
    splits.write_text(json.dumps({"test": ["scan0"]}))
    rc = cli.main(["detect", str(checkpoint), "--data", str(scans["pre"]), "--split", "val", "--splits", str(splits),
                   "--out", str(tmp_path / "run"), "--quiet"])
    assert rc == 2 and "split 'val' is not in" in capsys.readouterr().err
    rc = cli.main(["detect", str(tmp_path / "none.pt"), "--data", str(scans["pre"]), "--out", str(tmp_path / "run"),
                   "--quiet"])
    assert rc == 2 and "none.pt" in capsys.readouterr().err

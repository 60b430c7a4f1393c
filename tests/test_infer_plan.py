"""Detection's tile plan (deepem.infer.plan) and its fast network path (deepem.infer.fast)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deepem.data.datasets import PAD_VALUE, coord_map, extract
from deepem.infer import Detector
from deepem.infer import fast, plan
from deepem.infer.tiles import stitched_output
from deepem.model import Res18
from deepem.ops import conv3d_small

from test_infer import LocalNet


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def res18_with_statistics(width=0.125, seed=0):
    """A random Res18 whose BatchNorms have non-trivial running statistics (so that folding
    them into the convolutions is tested)."""
    torch.manual_seed(seed)
    model = Res18(width).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm3d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model


# ---- the plan ----

@pytest.mark.parametrize("shape", [(1, 1, 1), (65, 98, 94), (300, 250, 350), (17, 400, 33)])
@pytest.mark.parametrize("budget_voxels", [4e4, 1e6, 3e7, 1e12])
@pytest.mark.parametrize("border", [0, 8, 16, 32])
def test_plan_covers_the_scan_with_the_fewest_voxels_that_fit(shape, budget_voxels, border):
    counts, sides = plan.tile_counts(shape, border, budget_voxels)
    assert all(s % 16 == 0 and n * s >= a and (n - 1) * s < a for n, s, a in zip(counts, sides, shape))
    tile_voxels = math.prod(s + 2 * border for s in sides)
    # brute force over every per-axis count: nothing that fits computes fewer voxels
    best = None
    for nz in range(1, math.ceil(shape[0] / 16) + 1):
        for ny in range(1, math.ceil(shape[1] / 16) + 1):
            for nx in range(1, math.ceil(shape[2] / 16) + 1):
                ss = [16 * math.ceil(math.ceil(a / n) / 16) for a, n in zip(shape, (nz, ny, nx))]
                nn_ = [math.ceil(a / s) for a, s in zip(shape, ss)]
                tv = math.prod(s + 2 * border for s in ss)
                if tv <= budget_voxels:
                    total = math.prod(nn_) * tv
                    best = total if best is None else min(best, total)
    if best is None:  # nothing fits: the smallest tiles
        assert all(s == 16 for s, a in zip(sides, shape) if a >= 16)
    else:
        assert tile_voxels <= budget_voxels and math.prod(counts) * tile_voxels == best


def test_plan_tiles_one_tile_when_it_fits_and_splits_to_the_budget():
    width = 0.25
    per_voxel = plan.bytes_per_voxel(width)
    sc = plan.plan_tiles((65, 98, 94), width, border=16, max_memory=1e12)
    assert sc.grid((65, 98, 94)) == (1, 1, 1) and sc.tile_shape == (112, 144, 128)
    budget = 2e6 * per_voxel  # a LUNA16-size scan then takes several tiles, each within it
    sc = plan.plan_tiles((300, 250, 350), width, border=16, max_memory=budget, tile_batch=1)
    assert math.prod(sc.grid((300, 250, 350))) > 1 and math.prod(sc.tile_shape) * per_voxel <= budget
    sc2 = plan.plan_tiles((300, 250, 350), width, border=16, max_memory=budget, tile_batch=2)
    assert math.prod(sc2.tile_shape) * per_voxel * 2 <= budget
    with pytest.raises(ValueError, match="max_memory"):
        plan.plan_tiles((10, 10, 10), max_memory=0)
    with pytest.raises(ValueError, match="max_memory"):
        Detector(Res18(0.125), max_memory=-1)
    assert plan.available_memory("cpu") > 0


def test_planned_tiles_equal_one_pass_where_the_receptive_field_fits_the_border():
    """LocalNet's receptive field (5 voxels) fits a 16-voxel border: whatever the budget, the
    planned tiles' stitched output equals one pass over the scan padded by the border."""
    rng = np.random.default_rng(4)
    image = rng.integers(0, 256, (70, 45, 38)).astype(np.uint8)
    model, border = LocalNet(), 16
    cells = [math.ceil(s / 4) for s in image.shape]
    padded = [16 * math.ceil((4 * c + 2 * border) / 16) for c in cells]
    start = (-border,) * 3
    with torch.no_grad():
        x = torch.from_numpy((extract(image, start, padded, PAD_VALUE).astype(np.float32) - 128) / 128)
        whole = model(x[None, None], torch.from_numpy(coord_map(start, padded, image.shape))[None])[0]
    m = border // 4
    whole = whole[m:m + cells[0], m:m + cells[1], m:m + cells[2]]
    grids = set()
    for budget_voxels in (3e4, 2e5, 4.5e5, 6e5, 1e6):
        _, sides = plan.tile_counts(image.shape, border, budget_voxels)
        from deepem.infer.tiles import split_comb

        sc = split_comb(image.shape, sides, border)
        grids.add(sc.grid(image.shape))
        with torch.no_grad():
            tiled = stitched_output(model, image, sc, tile_batch=2)
        torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=1e-5)
    assert len(grids) == 5 and (1, 1, 1) in grids


def test_detector_default_is_one_pass_over_the_scan_padded_by_the_border():
    """With the default plan a scan that fits is one tile: the output is the Res18's one pass
    over the scan with DEFAULT_BORDER voxels of pad value around it (rounded up to 16)."""
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (37, 45, 29)).astype(np.uint8)
    model = res18_with_statistics()
    b = plan.DEFAULT_BORDER
    det = Detector(model)
    sc = det.split_comb(image.shape)
    assert sc.grid(image.shape) == (1, 1, 1) and det.margin == b
    out = det.network_output(image)
    cells = [math.ceil(s / 4) for s in image.shape]
    padded = [16 * math.ceil((4 * c + 2 * b) / 16) for c in cells]
    assert tuple(padded) == sc.tile_shape
    with torch.no_grad():
        x = extract(image, (-b,) * 3, padded, PAD_VALUE).astype(np.float32)
        direct = model(torch.from_numpy((x - 128) / 128)[None, None],
                       torch.from_numpy(coord_map((-b,) * 3, padded, image.shape))[None])[0]
    m = b // 4
    torch.testing.assert_close(out, direct[m:m + cells[0], m:m + cells[1], m:m + cells[2]], atol=1e-4, rtol=1e-4)


# ---- the fast network path ----

def check_runner_equals_the_module_and_follows_weight_changes(model, runner, built):
    """runner(x, c) == model(x, c) for several sizes and batches; after a weight changes in
    place the runner builds its form again (`built()` returns the current one)."""
    for side, batch in (((32, 48, 64), 1), ((64, 32, 32), 2), ((16, 16, 16), 1)):
        x = torch.randn(batch, 1, *side)
        c = torch.randn(batch, 3, *[s // 4 for s in side])
        with torch.no_grad():
            torch.testing.assert_close(runner(x, c), model(x, c), atol=2e-5, rtol=1e-4)
    before = built()
    with torch.no_grad():  # a training step in place: the next call builds again
        model.output[2].bias.add_(1.0)
        model.preBlock[1].running_var.mul_(1.5)
        torch.testing.assert_close(runner(x, c), model(x, c), atol=2e-5, rtol=1e-4)
    assert built() is not before


@pytest.mark.parametrize("width", [0.125, 0.25, 1.0])
def test_fused_runner_equals_the_module_and_follows_weight_changes(width):
    if not fast.fused.available():
        pytest.skip("this torch has no oneDNN fused convolutions")
    model = res18_with_statistics(width)
    runner = fast.InferenceRunner(model, "cpu", "none", fast=True)
    assert runner.mode == "fused"
    check_runner_equals_the_module_and_follows_weight_changes(model, runner, lambda: runner._fused)
    assert runner.mode == "fused"
    # the preBlock in deepem's convolution where it has <= 8 channels (widths 1/8, 1/4) and the CPU has AVX2
    assert runner._fused.narrow_pre == (width < 1 and conv3d_small.avx2_kernels())


@pytest.mark.parametrize("chunk,shape", [(64, (2, 1, 48, 64, 80)), (16, (2, 1, 80, 32, 48)), (64, (1, 1, 144, 16, 32))])
def test_fused_preblock_in_deepems_convolution_equals_onednns(monkeypatch, chunk, shape):
    """The narrow preBlock (NCDHW, conv3d_small with its ReLU, deepem's pooling, in chunks of
    planes along z: one, five, and 64 + 64 + 16) against the same weights through oneDNN's fused
    convolutions (a model built with cpu_kernels=False)."""
    if not (fast.fused.available() and conv3d_small.avx2_kernels()):
        pytest.skip("needs oneDNN's fused convolutions and a CPU with AVX2 + FMA")
    monkeypatch.setattr(fast.fused, "_NARROW_CHUNK", chunk)
    model = res18_with_statistics(0.25)
    plain = Res18(width=0.25, cpu_kernels=False).eval()
    plain.load_state_dict(model.state_dict())
    narrow, onednn = fast.fused.FusedRes18(model), fast.fused.FusedRes18(plain)
    assert narrow.narrow_pre and not onednn.narrow_pre
    x, c = torch.randn(*shape), torch.randn(shape[0], 3, *[s // 4 for s in shape[2:]])
    x[:, :, chunk - 1: chunk + 1] += 2.0  # structure across the first chunk border
    torch.testing.assert_close(narrow(x, c), onednn(x, c), atol=2e-5, rtol=1e-4)
    # the pooled preBlock itself, where a wrong plane at a chunk border would show first
    with torch.no_grad():
        want = F.max_pool3d(model.preBlock(x), 2, 2)
    torch.testing.assert_close(narrow._narrow_pre_pooled(x), want, atol=1e-5, rtol=1e-5)


def test_torchscript_runner_equals_the_module_and_follows_weight_changes(monkeypatch):
    monkeypatch.setattr(fast.fused, "available", lambda: False)  # a torch without the fused ops
    model = res18_with_statistics()
    runner = fast.InferenceRunner(model, "cpu", "none", fast=True)
    assert runner.mode == "torchscript"
    check_runner_equals_the_module_and_follows_weight_changes(model, runner, lambda: runner._traced)
    assert fast.InferenceRunner(model, "cpu", "none", fast=False).mode == "module"
    assert fast.InferenceRunner(model, "cpu", "bf16", fast=True).mode == "channels_last"
    assert fast.InferenceRunner(LocalNet(), "cpu", "none", fast=True).mode == "torchscript"  # not a Res18


def test_fused_runner_falls_back_to_torchscript_with_a_warning(monkeypatch):
    if not fast.fused.available():
        pytest.skip("this torch has no oneDNN fused convolutions")

    def refuse(self, x, coord):
        raise RuntimeError("could not create a primitive")

    monkeypatch.setattr(fast.fused.FusedRes18, "__call__", refuse)
    model = res18_with_statistics()
    runner = fast.InferenceRunner(model, "cpu", "none", fast=True)
    x, c = torch.randn(1, 1, 32, 32, 32), torch.randn(1, 3, 8, 8, 8)
    with pytest.warns(UserWarning, match="fused convolutions failed"):
        out = runner(x, c)
    assert runner.mode == "torchscript"
    with torch.no_grad():
        torch.testing.assert_close(out, model(x, c), atol=2e-5, rtol=1e-4)
    with pytest.raises(TypeError, match="Res18"):
        fast.fused.FusedRes18(LocalNet())


def test_runner_falls_back_to_the_module_with_a_warning():
    model = LocalNet()

    class Broken(nn.Module):
        def forward(self, x, coord):
            raise_if_tracing()
            return model(x, coord)

    def raise_if_tracing():
        if torch.jit.is_tracing():
            raise RuntimeError("cannot be traced")

    runner = fast.InferenceRunner(Broken(), "cpu", "none", fast=True)
    x, c = torch.randn(1, 1, 16, 16, 16), torch.randn(1, 3, 4, 4, 4)
    with pytest.warns(UserWarning, match="TorchScript could not trace"):
        out = runner(x, c)
    assert runner.mode == "module"
    with torch.no_grad():
        torch.testing.assert_close(out, model(x, c))


def test_resolve_amp():
    assert fast.resolve_amp("none", "cpu") == "none" and fast.resolve_amp("bf16", "cpu") == "bf16"
    assert fast.resolve_amp("auto", "cpu") == ("bf16" if fast.cpu_has_native_bf16() else "none")
    with pytest.raises(ValueError, match="amp"):
        fast.resolve_amp("fp8", "cpu")
    det = Detector(Res18(0.125), amp="auto")
    assert det.amp in ("none", "bf16") and det.amp_requested == "auto"


def test_fused_runner_keeps_packed_weights_for_a_few_shapes_only():
    """Every scan has its own shape: the weights packed per input shape must not pile up."""
    if not fast.fused.available():
        pytest.skip("this torch has no oneDNN fused convolutions")
    model = res18_with_statistics()
    runner = fast.InferenceRunner(model, "cpu", "none", fast=True)
    for k in range(8):
        side = (16, 16 + 16 * (k % 4), 16 * (1 + k))
        x, c = torch.randn(1, 1, *side), torch.randn(1, 3, *[s // 4 for s in side])
        out = runner(x, c)
    with torch.no_grad():
        torch.testing.assert_close(out, model(x, c), atol=2e-5, rtol=1e-4)
    convs = [block.conv1 for block in runner._fused.stages["forw1"]] + [runner._fused.head, runner._fused.out]
    sizes = {len(conv.packed) for conv in convs}
    assert sizes == {fast.fused._PACKED_SHAPES}


def test_fused_runner_and_detector_refuse_bad_input():
    """The fused form names the shapes it cannot take as the module does; Detector names a bad
    `fast`."""
    if not fast.fused.available():
        pytest.skip("this torch has no oneDNN fused convolutions")
    runner = fast.InferenceRunner(res18_with_statistics(), "cpu", "none", fast=True)
    with pytest.raises(ValueError, match="multiples of 16"):
        runner(torch.zeros(1, 1, 40, 48, 48), torch.zeros(1, 3, 10, 12, 12))
    with pytest.raises(ValueError, match="coord must be"):
        runner(torch.zeros(1, 1, 48, 48, 48), torch.zeros(1, 3, 10, 12, 12))
    assert runner.mode == "fused"  # a caller's error is not a reason to fall back
    with pytest.raises(ValueError, match="fast must be"):
        Detector(Res18(0.125), fast="yes")


@pytest.mark.parametrize("shape", [(1, 6, 2, 2, 2), (2, 6, 8, 4, 6), (1, 16, 16, 32, 48), (1, 1, 4, 2, 8)])
def test_fused_max_pool_equals_max_pool3d_with_ties_and_nan(shape):
    x = torch.randint(-3, 4, shape).float()  # small integers: many ties
    x.view(-1)[:: 7] = float("nan")
    x.view(-1)[3:: 11] = -float("inf")
    for layout in (torch.channels_last_3d, torch.contiguous_format):
        xl = x.contiguous(memory_format=layout)
        out = fast.fused._max_pool2(xl)
        torch.testing.assert_close(out, torch.nn.functional.max_pool3d(xl, 2, 2), equal_nan=True, rtol=0, atol=0)
    assert fast.fused._max_pool2(x.contiguous(memory_format=torch.channels_last_3d)).is_contiguous(
        memory_format=torch.channels_last_3d)

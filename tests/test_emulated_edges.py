"""The CPU emulations of the CUDA launch grids (the `_..._emulated` ops) on the inputs that
otherwise only the GPU tests feed the CUDA kernels: empty inputs, float32 and half workloads,
ties past a 64-box word or a 32-lane warp, NaN and outside-volume boxes. Each is compared with
the CPU kernel, which the other tests check against the float64 references."""
import numpy as np
import pytest
import torch

from deepem.ops import batched_nms3d, em_map, em_posterior, em_sample, nms3d, roi_align3d, roi_pool3d_with_argmax
from test_estep import PARAMS, make_batch

OPS = torch.ops.deepem


def nms_emulated(boxes, scores, thr, idxs=None, budget_words=64):
    return OPS._nms3d_bitmask_emulated(boxes, scores, idxs, thr, budget_words)


# ---- NMS -------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [0, 1])
def test_nms_emulated_empty_and_single(n):
    boxes, scores = torch.zeros(n, 6), torch.ones(n)
    if n:
        boxes[0] = torch.tensor([0.0, 0, 0, 4, 4, 4])
    got = nms_emulated(boxes, scores, 0.5)
    assert got.dtype == torch.long and got.tolist() == list(range(n))
    assert nms_emulated(boxes, scores, 0.5, torch.zeros(n, dtype=torch.long)).tolist() == list(range(n))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_nms_emulated_reduced_precision_equals_the_cpu_kernel(dtype):
    rng = np.random.default_rng(3)
    c = rng.uniform(0, 40, (300, 3))
    d = rng.uniform(2, 8, (300, 1))
    boxes = torch.tensor(np.concatenate([c - d / 2, c + d / 2], 1)).to(dtype)
    scores = torch.tensor(rng.uniform(size=300)).to(dtype)
    for thr in (0.1, 0.5):
        for budget in (64, 64 * 3, 1 << 25):
            assert torch.equal(nms_emulated(boxes, scores, thr, budget_words=budget), nms3d(boxes, scores, thr))


def test_nms_emulated_ties_past_one_word():
    # 150 identical boxes with one score: the first suppresses the rest (ties by lower index)
    boxes = torch.tensor([[0.0, 0, 0, 5, 5, 5]] * 150)
    assert nms_emulated(boxes, torch.full((150,), 0.5), 0.5).tolist() == [0]
    # 150 disjoint boxes, scores in 3 tied levels: all kept, by score then index
    boxes = torch.stack([torch.tensor([10.0 * i, 0, 0, 10.0 * i + 5, 5, 5]) for i in range(150)])
    scores = torch.tensor([float(i % 3) for i in range(150)])
    want = sorted(range(150), key=lambda i: (-(i % 3), i))
    assert nms_emulated(boxes, scores, 0.5).tolist() == want == nms3d(boxes, scores, 0.5).tolist()
    groups = torch.tensor([i % 2 for i in range(150)])
    assert torch.equal(nms_emulated(boxes, scores, 0.5, groups), batched_nms3d(boxes, scores, groups, 0.5))


def test_nms_emulated_nan_boxes_never_kept_and_never_suppress():
    boxes = torch.tensor([[0.0, 0, 0, 10, 10, 10], [float("nan"), 0, 0, 10, 10, 10], [1.0, 1, 1, 11, 11, 11],
                          [50.0, 50, 50, 60, 60, 60]] * 40)
    scores = torch.linspace(1, 0, 160)
    scores[1] = 2.0  # the NaN box scores highest
    got = nms_emulated(boxes, scores, 0.5)
    assert torch.equal(got, nms3d(boxes, scores, 0.5))
    assert 1 not in got.tolist() and 0 in got.tolist()


# ---- E-step ----------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(0, 5, 2), (3, 0, 2), (3, 5, 0)])
def test_estep_emulated_empty(shape):
    batch = make_batch(*shape, seed=0)
    lp, has = em_posterior(**batch)
    elp, ehas = OPS._em_posterior_emulated(**batch, **PARAMS)
    assert elp.shape == lp.shape == (shape[0], shape[2], shape[1]) and torch.equal(ehas, has)
    assert torch.equal(OPS._em_map_emulated(lp), em_map(lp))
    assert torch.equal(OPS._em_sample_emulated(lp, 2, 0, 0), em_sample(lp, 2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_estep_emulated_reduced_precision(dtype):
    batch = make_batch(5, 70, 3, seed=12, dtype=dtype)
    lp, has = em_posterior(**batch)
    elp, ehas = OPS._em_posterior_emulated(**batch, **PARAMS)
    assert elp.dtype == dtype and torch.equal(ehas, has)
    assert torch.equal(torch.isneginf(elp), torch.isneginf(lp))
    tol = 1e-5 if dtype == torch.float32 else 0  # half: computed in float32, rounded once: equal
    assert torch.allclose(elp[has].float(), lp[has].float(), atol=tol, rtol=0)
    assert torch.equal(OPS._em_map_emulated(lp), em_map(lp))
    assert torch.equal(OPS._em_sample_emulated(lp, 3, 5, 1), em_sample(lp, 3, seed=5, offset=1))


def test_estep_emulated_ties_past_a_warp_and_nan():
    lp = torch.full((2, 3, 200), -2.0)
    lp[0, 0, [40, 72, 104, 199]] = -1.0  # tied maxima on several lanes: the lowest index wins
    lp[0, 1] = float("-inf")  # no candidate
    lp[0, 2, :] = float("nan")
    lp[0, 2, 150] = -3.0  # NaN is never picked
    lp[1] = -1.0  # every entry tied
    assert OPS._em_map_emulated(lp).tolist() == em_map(lp).tolist() == [[40, -1, 150], [0, 0, 0]]
    for k in (1, 2, 70):
        assert torch.equal(OPS._em_sample_emulated(lp, k, 9, 2), em_sample(lp, k, seed=9, offset=2))
    batch = make_batch(2, 150, 2, seed=4, fill_counts=True)
    batch["proposals"][0, 7:60, 1] = float("nan")  # NaN proposals have probability 0
    lp2, has2 = em_posterior(**batch)
    elp2, ehas2 = OPS._em_posterior_emulated(**batch, **PARAMS)
    assert torch.equal(ehas2, has2) and torch.isneginf(elp2[0, :, 7:60]).all()
    assert torch.allclose(elp2[has2], lp2[has2], atol=1e-12, rtol=0)


# ---- RoI align / pool ------------------------------------------------------------------------

def rois_with_edges(dtype):
    return torch.tensor([[0, 1.0, 1, 1, 4, 5, 3],  # inside
                         [1, -6.0, -6, -6, -1, -2, -3],  # wholly outside the volume
                         [0, 4.0, 5, 6, 40, 30, 20],  # reaching past it
                         [1, float("nan"), 1, 1, 3, 3, 3],  # NaN corner
                         [0, 2.0, 2, 2, 2, 2, 2]], dtype=dtype)  # zero extent


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
def test_roi_emulated_edges_equal_the_cpu_kernel(dtype):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 6, 7, 8, generator=gen).to(dtype)
    rois = rois_with_edges(dtype)
    for sr, aligned in ((-1, False), (2, True)):
        g = torch.randn(len(rois), 3, 2, 3, 2, generator=gen).to(dtype)
        out_e, grad_e = OPS._roi_align3d_emulated(x, rois, [2, 3, 2], 1.0, sr, aligned, g)
        xr = x.clone().requires_grad_()
        out = roi_align3d(xr, rois, (2, 3, 2), 1.0, sr, aligned)
        out.backward(g)
        assert torch.equal(torch.isnan(out_e), torch.isnan(out))
        # float32 arithmetic in both (half: computed in float32, rounded once; the emulation's
        # sum order may differ in float32's last bits, which can move a half result by one ulp)
        atol, rtol = {torch.float64: (1e-12, 0), torch.float32: (1e-5, 0), torch.float16: (1e-5, 2 ** -10)}[dtype]
        torch.testing.assert_close(out_e, out.detach(), rtol=rtol, atol=atol, equal_nan=True)
        torch.testing.assert_close(grad_e, xr.grad, rtol=rtol, atol=atol, equal_nan=True)
    pool, arg = roi_pool3d_with_argmax(x, rois, (2, 2, 2))
    pool_e, arg_e = OPS._roi_pool3d_emulated(x, rois, [2, 2, 2], 1.0)
    assert torch.equal(arg_e, arg)
    torch.testing.assert_close(pool_e, pool, rtol=0, atol=0, equal_nan=True)


def test_roi_emulated_without_rois():
    x = torch.randn(1, 2, 4, 4, 4, dtype=torch.float64)
    rois = torch.zeros(0, 7, dtype=torch.float64)
    out, grad = OPS._roi_align3d_emulated(x, rois, [2, 2, 2], 1.0, -1, True, torch.zeros(0, 2, 2, 2, 2,
                                                                                          dtype=torch.float64))
    assert out.shape == (0, 2, 2, 2, 2) and torch.equal(grad, torch.zeros_like(x))
    pool, arg = OPS._roi_pool3d_emulated(x, rois, [2, 2, 2], 1.0)
    assert pool.shape == arg.shape == (0, 2, 2, 2, 2)

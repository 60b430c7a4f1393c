import numpy as np
import pytest
import torch

import reference_boxes as ref
from deepem.ops import box_iou3d


@pytest.mark.parametrize("n,m", [(0, 0), (0, 5), (4, 0), (1, 1), (7, 33), (64, 65), (200, 3)])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_reference(n, m, seed, device):
    rng = np.random.default_rng(seed)
    a, b = ref.random_boxes(rng, n, 64, 30), ref.random_boxes(rng, m, 64, 30)
    got = box_iou3d(torch.tensor(a, device=device), torch.tensor(b, device=device))
    assert got.shape == (n, m) and got.dtype == torch.float64
    np.testing.assert_allclose(got.cpu().numpy(), ref.box_iou3d(a, b), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.float16, 2e-3), (torch.bfloat16, 1e-2)])
def test_reduced_precision_accumulates_in_float32(dtype, tol, device):
    rng = np.random.default_rng(3)
    a = ref.random_boxes(rng, 50, 64, 30, integer=True)
    got = box_iou3d(torch.tensor(a, dtype=dtype, device=device), torch.tensor(a, dtype=dtype, device=device))
    assert got.dtype == dtype
    exact = ref.box_iou3d(a, a)  # integer coordinates < 2048 are exact in every dtype
    np.testing.assert_allclose(got.float().cpu().numpy(), exact, atol=tol)


def test_degenerate_and_nonfinite_boxes():
    boxes = torch.tensor(
        [
            [0, 0, 0, 4, 4, 4],  # solid
            [1, 1, 1, 1, 3, 3],  # flat: zero volume
            [5, 5, 5, 2, 2, 2],  # inverted: zero volume
            [0, 0, 0, float("nan"), 4, 4],
            [0, 0, 0, float("inf"), 4, 4],
        ],
        dtype=torch.float64,
    )
    iou = box_iou3d(boxes, boxes)
    assert iou[0, 0] == 1
    assert iou[0, 1] == 0 and iou[0, 2] == 0
    assert iou[1, 1] == 0 and iou[1, 2] == 0  # empty union: 0, not NaN
    assert torch.isnan(iou[3]).all() and torch.isnan(iou[:, 4]).all()
    np.testing.assert_array_equal(iou.numpy(), ref.box_iou3d(boxes.numpy(), boxes.numpy()))


def test_non_contiguous_inputs():
    rng = np.random.default_rng(5)
    a = torch.tensor(ref.random_boxes(rng, 20, 64, 30))
    wide = torch.zeros(20, 12, dtype=torch.float64)
    wide[:, ::2] = a
    strided = wide[:, ::2]
    assert not strided.is_contiguous()
    torch.testing.assert_close(box_iou3d(strided, a), box_iou3d(a, a))


@pytest.mark.parametrize(
    "a,b,match",
    [
        (torch.zeros(3, 5), torch.zeros(2, 6), "boxes1.*shape \\[N, 6\\]"),
        (torch.zeros(3, 6), torch.zeros(6), "boxes2.*shape"),
        (torch.zeros(3, 6, dtype=torch.int64), torch.zeros(2, 6, dtype=torch.int64), "boxes1.*float"),
        (torch.zeros(3, 6), torch.zeros(2, 6, dtype=torch.float64), "boxes2.*dtype"),
    ],
)
def test_bad_input_names_the_argument(a, b, match):
    with pytest.raises(RuntimeError, match=match):
        box_iou3d(a, b)


def test_opcheck():
    rng = np.random.default_rng(0)
    a, b = torch.tensor(ref.random_boxes(rng, 9)), torch.tensor(ref.random_boxes(rng, 4))
    torch.library.opcheck(torch.ops.deepem.box_iou3d.default, (a, b))
    torch.library.opcheck(torch.ops.deepem.box_iou3d.default, (a[:0], b))


@pytest.mark.cuda
def test_cuda_equals_cpu_large():
    rng = np.random.default_rng(11)
    a = torch.tensor(ref.random_boxes(rng, 1000, 128, 30), dtype=torch.float32)
    b = torch.tensor(ref.random_boxes(rng, 777, 128, 30), dtype=torch.float32)
    torch.testing.assert_close(box_iou3d(a.cuda(), b.cuda()).cpu(), box_iou3d(a, b), rtol=1e-6, atol=1e-7)

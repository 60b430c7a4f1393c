"""deepem.model: the Res18 detector (DeepLung's parameter counts, shapes, compile) and the
detection loss against a reference written here with numpy."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deepem.model import DetectionLoss, Res18, count_parameters
from deepem.ops import anchor_grid, label_anchors3d, pad_boxes
from deepem.ops.boxes import cubes_to_boxes


def test_parameter_counts_match_deeplung():
    # Counted on a faithful rebuild of the public DeepLung detector/res18.py.
    assert count_parameters(Res18()) == 5_383_623
    assert count_parameters(Res18(width=0.5)) == 1_351_099
    assert count_parameters(Res18(width=0.25)) == 340_377


def test_output_shapes_crop_and_tile():
    torch.manual_seed(0)
    net = Res18().eval()
    with torch.no_grad():
        out = net(torch.randn(1, 1, 96, 96, 96), torch.zeros(1, 3, 24, 24, 24))
    assert out.shape == (1, 24, 24, 24, 3, 5) and torch.isfinite(out).all()
    small = Res18(width=0.125).eval()  # same structure; a 208^3 tile at full width is slow on CPU
    with torch.no_grad():
        out = small(torch.randn(1, 1, 208, 208, 208), torch.zeros(1, 3, 52, 52, 52))
    assert out.shape == (1, 52, 52, 52, 3, 5)
    with torch.no_grad():  # any sides divisible by 16
        assert small(torch.randn(2, 1, 32, 48, 64), torch.zeros(2, 3, 8, 12, 16)).shape == (2, 8, 12, 16, 3, 5)


def test_bad_input_shapes_are_named():
    net = Res18(width=0.125)
    with pytest.raises(ValueError, match="multiples of 16"):
        net(torch.zeros(1, 1, 40, 48, 48), torch.zeros(1, 3, 10, 12, 12))
    with pytest.raises(ValueError, match="coord must be"):
        net(torch.zeros(1, 1, 48, 48, 48), torch.zeros(1, 3, 10, 12, 12))
    with pytest.raises(ValueError, match="width"):
        Res18(width=0)


def test_torch_compile_traces_whole_graph():
    net = Res18(width=0.125).eval()
    x, c = torch.randn(1, 1, 32, 32, 32), torch.zeros(1, 3, 8, 8, 8)
    compiled = torch.compile(net, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        assert torch.allclose(compiled(x, c), net(x, c), atol=1e-5)


def reference_loss(output, boxes, labels, num_hard, weights=None):
    """DeepLung's loss written plainly in numpy float64 from the labelling's result."""
    out = output.detach().double().numpy().reshape(len(boxes), -1, 5)
    lab = labels.labels.numpy()
    logits = out[..., 0]
    neg = [(logits[b, k], b, k) for b in range(lab.shape[0]) for k in range(lab.shape[1]) if lab[b, k] == 0]
    neg.sort(key=lambda t: -t[0])
    hard = np.array([t[0] for t in neg[: num_hard * len(boxes)]])
    bce = lambda x, y: np.maximum(x, 0) - x * y + np.log1p(np.exp(-abs(x)))  # noqa: E731
    cls_neg = bce(hard, 0).mean()
    pos, pred, target, w = [], [], [], []
    for b in range(len(boxes)):
        for g in range(len(boxes[b])):
            a = int(labels.pos_anchor[b, g])
            if a >= 0:
                pos.append(logits[b, a])
                pred.append(out[b, a, 1:])
                target.append(labels.pos_targets[b, g].double().numpy())
                w.append(1.0 if weights is None else float(weights[b][g]))
    if not pos:
        return 0.5 * cls_neg
    pos, pred, target, w = map(np.array, (pos, pred, target, w))
    diff = np.abs(pred - target)
    sl1 = np.where(diff < 1, 0.5 * diff**2, diff - 0.5)
    n = len(pos)
    return 0.5 * (w * bce(pos, 1)).sum() / n + 0.5 * cls_neg + (w[:, None] * sl1).sum() / n


@pytest.mark.parametrize("weighted", [False, True])
def test_loss_matches_reference(weighted):
    torch.manual_seed(1)
    output = torch.randn(2, 8, 8, 8, 3, 5)
    boxes = [torch.tensor([[10.0, 12, 14, 6], [20, 20, 20, 12]]), torch.tensor([[16.0, 9, 22, 8]])]
    weights = [torch.tensor([0.3, 1.0]), torch.tensor([0.7])] if weighted else None
    loss = DetectionLoss(num_neg=50, num_hard=2)
    result = loss(output, boxes, weights=weights, seed=5)
    gt, num = pad_boxes([cubes_to_boxes(b) for b in boxes])
    labels = label_anchors3d(gt, anchor_grid((8, 8, 8)), num_gt=num, num_neg=50, seed=5)
    ref = reference_loss(output, boxes, labels, 2, weights)
    assert abs(float(result.total) - ref) < 1e-5 * max(1, abs(ref))
    assert result.parts["num_pos"] == 3 and result.parts["num_neg"] == 4


def test_loss_without_boxes_is_half_negative_bce():
    output = torch.randn(2, 4, 4, 4, 3, 5)
    result = DetectionLoss(num_neg=20, num_hard=3)(output, [torch.zeros(0, 4), torch.zeros(0, 4)], seed=0)
    hard = output[..., 0].reshape(-1).topk(6).values  # no box: every anchor may be negative
    assert result.parts["num_pos"] == 0 and result.parts["num_neg"] == 6
    # The 6 hard negatives are the top logits among the 20 sampled negatives, so their BCE is
    # at most that of the 6 top logits overall; and it is exactly half the negative BCE.
    assert float(result.total) <= 0.5 * float(F.binary_cross_entropy_with_logits(hard, torch.zeros(6))) + 1e-6
    assert float(result.total) == pytest.approx(0.5 * result.parts["cls_neg"])
    # exactly: half the BCE of the hard negatives that the reference picks among the sampled ones
    gt, num = pad_boxes([torch.zeros(0, 6), torch.zeros(0, 6)])
    labels = label_anchors3d(gt, anchor_grid((4, 4, 4)), num_gt=num, num_neg=20, seed=0)
    ref = reference_loss(output, [torch.zeros(0, 4), torch.zeros(0, 4)], labels, 3)
    assert abs(float(result.total) - ref) < 1e-6 * max(1, abs(ref))


def test_negatives_excluded_in_weak_band():
    output = torch.zeros(1, 8, 8, 8, 3, 5)
    output[..., 0] = 5.0  # every anchor scores high: hard negatives come from everywhere allowed
    output[0, 2:6, :, :, :, 0] = 20.0  # ... and highest inside z cells 2-5 (z 9.5-21.5)
    loss = DetectionLoss(num_neg=None, num_hard=100)
    free = loss(output, [torch.zeros(0, 4)], seed=0)
    banded = loss(output, [torch.zeros(0, 4)], neg_exclude_z=[torch.tensor([[8.0, 23.0]])], seed=0)
    assert free.parts["cls_neg"] > 15 and banded.parts["cls_neg"] < 6


def synthetic_batch(seed=0):
    rng = np.random.default_rng(seed)
    from synthetic import sphere_scan

    boxes = [np.array([[16.0, 16, 16, 8]]), np.array([[12.0, 20, 18, 6]])]
    image = np.stack([sphere_scan(rng, (32, 32, 32), b) for b in boxes])
    x = torch.from_numpy((image.astype(np.float32) - 128) / 128)[:, None]
    return x, torch.zeros(2, 3, 8, 8, 8), [torch.tensor(b, dtype=torch.float32) for b in boxes]


def test_one_step_lowers_loss():
    torch.manual_seed(0)
    x, coord, boxes = synthetic_batch()
    net = Res18(width=0.125, dropout=0.0)
    loss = DetectionLoss(num_neg=100)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    before = loss(net(x, coord), boxes, seed=0)
    opt.zero_grad()
    before.total.backward()
    opt.step()
    with torch.no_grad():
        after = loss(net(x, coord), boxes, seed=0)
    assert float(after.total) < float(before.total)


def test_overfits_two_crops():
    torch.manual_seed(0)
    x, coord, boxes = synthetic_batch()
    net = Res18(width=0.125, dropout=0.0)
    loss = DetectionLoss(num_neg=100)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    history = []
    for step in range(30):
        r = loss(net(x, coord), boxes, seed=0)
        opt.zero_grad()
        r.total.backward()
        opt.step()
        history.append((float(r.total.detach()), r.parts["pos_acc"]))
    assert history[-1][0] < 0.6 * history[0][0]
    assert all(acc == 1.0 for _, acc in history[-3:])


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_and_channels_last_on_gpu(dtype):
    torch.manual_seed(0)
    net = Res18(width=0.25).cuda().eval()
    x, c = torch.randn(2, 1, 64, 64, 64, device="cuda"), torch.zeros(2, 3, 16, 16, 16, device="cuda")
    with torch.no_grad():
        ref = net(x, c)
        fast = net.to(memory_format=torch.channels_last_3d)
        with torch.autocast("cuda", dtype=dtype):
            out = fast(x.contiguous(memory_format=torch.channels_last_3d), c)
    assert out.shape == ref.shape
    err = (out.float() - ref).norm() / ref.norm()
    assert err < 3e-2, float(err)

"""deepem.integrations.monai against MONAI's own functions, which are the reference here (the
module promises MONAI's results, not a textbook NMS): random and adversarial inputs, 2,000+
cases in all, sizes 0 to 20,000; indices and containers identical, IoU bit-identical on the CPU
(within 1e-6 on CUDA). Edges built on purpose: IoU exactly at the threshold, unions < 4 where
MONAI's `+ eps` decides, float16 rounding of the IoU, tied scores, zero-volume boxes, thresholds
outside [0, 1), max_proposals, empty inputs, invalid boxes. Then the MONAI objects: the box
selector, a RetinaNetDetector patched or converted, patch_monai's swapped defaults."""
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("monai", reason="monai is not installed (the MONAI integration is optional)")

from monai.data import MetaTensor  # noqa: E402
from monai.data import box_utils  # noqa: E402

import deepem.integrations.monai as dm  # noqa: E402
from deepem.ops import nms3d  # noqa: E402

MONAI_IOU = dm.MONAI_FUNCTIONS["box_iou"]
MONAI_NMS = dm.MONAI_FUNCTIONS["non_max_suppression"]
MONAI_BATCHED = dm.MONAI_FUNCTIONS["batched_nms"]
KINDS = ["random", "grid", "halves", "tiny", "micro", "clusters", "far", "flat"]
THRESHOLDS = [0.0, 0.1, 0.22, 0.25, 1 / 3, 0.5, 0.7, 1.0, 1.5, -0.25]
DTYPES = [torch.float32, torch.float32, torch.float16, torch.float64, torch.bfloat16, torch.int64]


@pytest.fixture(autouse=True)
def _unpatched():
    dm.unpatch_monai()
    yield
    dm.unpatch_monai()


def make_boxes(rng, n, kind, centres=None):
    """[n, 6] float64 boxes (x1, y1, z1, x2, y2, z2) of one family."""
    if kind == "random":
        lo, size = rng.uniform(0, 100, (n, 3)), rng.uniform(0, 30, (n, 3))
    elif kind == "grid":  # small integers: IoUs exactly at 0.5, 1/3, 0.25 ...; size 0 gives empty boxes
        lo, size = rng.integers(0, 6, (n, 3)).astype(float), rng.integers(0, 4, (n, 3)).astype(float)
    elif kind == "halves":
        lo, size = rng.integers(0, 12, (n, 3)) / 2, rng.integers(0, 6, (n, 3)) / 2
    elif kind == "tiny":  # unions below 4: MONAI's + eps changes the float32 IoU
        lo, size = rng.uniform(0, 2, (n, 3)), rng.uniform(0, 1.5, (n, 3))
    elif kind == "micro":  # volumes ~1e-7: the eps dominates
        lo, size = rng.uniform(0, 1e-2, (n, 3)), rng.uniform(0, 1e-2, (n, 3))
    elif kind == "clusters":  # a detector's output: jittered boxes around a few centres
        c = rng.uniform(20, 236, (centres or max(1, n // 40), 3))
        k = rng.integers(0, len(c), n)
        d = rng.uniform(4, 30, len(c))[k, None]
        centre = c[k] + rng.normal(0, 0.2, (n, 3)) * d
        side = d * rng.uniform(0.7, 1.3, (n, 3))
        lo, size = centre - side / 2, side
    elif kind == "far":  # large coordinates, small boxes: float32 rounds the extents
        lo, size = rng.uniform(1e4, 1e4 + 64, (n, 3)), rng.uniform(0.5, 8, (n, 3))
    else:  # "flat": one extent 0 for a third of the boxes
        lo, size = rng.uniform(0, 40, (n, 3)), rng.uniform(0, 12, (n, 3))
        size[rng.uniform(size=n) < 1 / 3, rng.integers(0, 3)] = 0
    return np.concatenate([lo, lo + size], 1)


def make_scores(rng, n):
    r = rng.integers(0, 3)
    if r == 0:
        return rng.uniform(size=n)
    if r == 1:  # ties
        return rng.integers(0, 4, n) / 4
    return np.full(n, 0.5)  # all tied: MONAI's stable order is the index order


def container(a, kind, dtype, device="cpu"):
    t = torch.as_tensor(a).to(dtype)
    if kind == "numpy":
        return t.numpy() if dtype != torch.bfloat16 else t.float().numpy()
    t = t.to(device)
    return MetaTensor(t) if kind == "meta" else t


def assert_same(got, want, exact=True, atol=0.0):
    """Same container, dtype and values."""
    assert type(got) is type(want), (type(got), type(want))
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    g = torch.as_tensor(np.asarray(got)) if isinstance(got, np.ndarray) else got.as_subclass(torch.Tensor).cpu()
    w = torch.as_tensor(np.asarray(want)) if isinstance(want, np.ndarray) else want.as_subclass(torch.Tensor).cpu()
    assert g.shape == w.shape, (g.shape, w.shape)
    if exact:
        assert torch.equal(g, w), (g[:20], w[:20])
    else:
        assert float((g.double() - w.double()).abs().max()) <= atol if g.numel() else True


def one_nms_case(rng, n, device="cpu"):
    kind = KINDS[rng.integers(len(KINDS))]
    dtype = DTYPES[rng.integers(len(DTYPES))]
    wrap = ["tensor", "tensor", "numpy", "meta"][rng.integers(4)]
    if dtype == torch.int64 and kind in ("tiny", "micro", "random", "clusters", "far", "flat"):
        kind = "grid"
    boxes = container(make_boxes(rng, n, kind), wrap, dtype, device)
    scores = container(make_scores(rng, n), wrap, torch.float32, device)
    thr = THRESHOLDS[rng.integers(len(THRESHOLDS))] if rng.uniform() < 0.7 else float(rng.uniform())
    max_proposals = [-1, -1, -1, 1, 2, 5, 0][rng.integers(7)]
    if rng.uniform() < 0.5:
        got = dm.non_max_suppression(boxes, scores, thr, max_proposals)
        want = MONAI_NMS(boxes, scores, thr, max_proposals)
    else:
        labels = container(rng.integers(0, 3, n), wrap, torch.int64, device)
        got = dm.batched_nms(boxes, scores, labels, thr, max_proposals)
        want = MONAI_BATCHED(boxes, scores, labels, thr, max_proposals)
    assert_same(got, want)
    return kind


# --------------------------------------------------------------------- random and adversarial

@pytest.mark.parametrize("seed", range(24))
def test_nms_equals_monai_on_random_and_adversarial_cases(seed):
    """60 small cases per seed (1,440 in all): every box family, dtype, container, threshold."""
    rng = np.random.default_rng(seed)
    dm.CALLS.clear()
    kinds = set()
    for _ in range(60):
        n = int(rng.integers(0, 9)) if rng.uniform() < 0.3 else int(rng.integers(9, 90))
        kinds.add(one_nms_case(rng, n))
    assert dm.CALLS["fallback"] == 0 and dm.CALLS["non_max_suppression"] > 0
    assert len(kinds) >= 5


@pytest.mark.parametrize("seed", range(12))
def test_box_iou_equals_monai_bit_for_bit(seed):
    """50 cases per seed (600 in all)."""
    rng = np.random.default_rng(100 + seed)
    for _ in range(50):
        n, m = int(rng.integers(0, 60)), int(rng.integers(0, 60))
        kind = KINDS[rng.integers(len(KINDS))]
        dtype = DTYPES[rng.integers(len(DTYPES))]
        if dtype == torch.int64:
            kind = "grid"
        wrap1, wrap2 = (["tensor", "numpy", "meta"][i] for i in rng.integers(0, 3, 2))
        if rng.uniform() < 0.8:
            wrap2 = wrap1
        b1 = container(make_boxes(rng, n, kind), wrap1, dtype)
        b2 = container(make_boxes(rng, m, kind), wrap2, dtype)
        with pytest.warns(UserWarning) if not isinstance(b1, type(b2)) else _no_warning_check():
            got = dm.box_iou(b1, b2)
        want = MONAI_IOU(b1, b2)
        assert_same(got, want)


class _no_warning_check:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("n", [2049, 5000, 20000])
def test_large_inputs_equal_monai(n):
    """Large N where MONAI's loop is affordable: clustered boxes (few kept), and random boxes
    with max_proposals (MONAI stops there; deepem grows a prefix until it keeps as many)."""
    rng = np.random.default_rng(n)
    boxes = torch.tensor(make_boxes(rng, n, "clusters", centres=40), dtype=torch.float32)
    scores = torch.tensor(make_scores(rng, n), dtype=torch.float32)
    labels = torch.tensor(rng.integers(0, 2, n))
    assert_same(dm.batched_nms(boxes, scores, labels, 0.22), MONAI_BATCHED(boxes, scores, labels, 0.22))
    rand = torch.tensor(make_boxes(rng, n, "random"), dtype=torch.float32)
    for limit in (3, 40):
        assert_same(dm.non_max_suppression(rand, scores, 0.1, limit), MONAI_NMS(rand, scores, 0.1, limit))
    anchors = torch.tensor(make_boxes(rng, n, "far"))
    gt = anchors[:7] + 0.5
    assert_same(dm.box_iou(gt, anchors), MONAI_IOU(gt, anchors))


def test_case_count_is_over_2000():
    # 24 x 60 NMS + 12 x 50 IoU + the large and literal cases below
    assert 24 * 60 + 12 * 50 + 3 * 4 >= 2000


# --------------------------------------------------------------------- edges, literal values

def test_iou_exactly_at_threshold_is_kept():
    # IoU 4 / 8 = 0.5 exactly, union 8 (>= 4, so MONAI's + eps does not change it)
    boxes = torch.tensor([[0.0, 0, 0, 2, 2, 2], [0, 0, 0, 2, 2, 1]])
    scores = torch.tensor([0.9, 0.8])
    assert dm.box_iou(boxes, boxes)[0, 1].item() == 0.5
    assert dm.non_max_suppression(boxes, scores, 0.5).tolist() == [0, 1]
    below = float(np.nextafter(np.float32(0.5), np.float32(0)))
    assert dm.non_max_suppression(boxes, scores, below).tolist() == [0]
    assert MONAI_NMS(boxes, scores, below).tolist() == [0]


def test_monai_eps_keeps_a_small_pair_that_plain_nms_suppresses():
    # inter 0.5, union 1: MONAI's IoU is 0.5 / (1 + eps) < 0.5, kept at the largest float32 below
    # 0.5; deepem's own nms3d (inter > t * union, no eps) suppresses it.
    boxes = torch.tensor([[0.0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 0.5]])
    scores = torch.tensor([0.9, 0.8])
    t = float(np.nextafter(np.float32(0.5), np.float32(0)))
    assert MONAI_NMS(boxes, scores, t).tolist() == [0, 1]
    assert dm.non_max_suppression(boxes, scores, t).tolist() == [0, 1]
    assert nms3d(boxes, scores, t).tolist() == [0]
    assert dm.box_iou(boxes, boxes)[0, 1].item() == MONAI_IOU(boxes, boxes)[0, 1].item() < 0.5


def test_float16_iou_is_rounded_before_the_comparison():
    # IoU = (1 + 2^-10)(2 - 2^-10) / 4 = 0.5 + 2^-12 - 2^-22: above 0.5, but float16 rounds it to
    # 0.5, so MONAI keeps the pair for float16 boxes and suppresses it for float32 ones.
    y, z = 1 + 2**-10, 2 - 2**-10
    boxes = torch.tensor([[0.0, 0, 0, 2, 2, 2], [0, 0, 0, 2, y, z]])
    scores = torch.tensor([0.9, 0.8])
    assert dm.non_max_suppression(boxes.half(), scores, 0.5).tolist() == [0, 1]
    assert MONAI_NMS(boxes.half(), scores, 0.5).tolist() == [0, 1]
    assert dm.non_max_suppression(boxes, scores, 0.5).tolist() == [0]
    assert dm._decision_threshold(torch.float16, 0.5) == 0.5 + 2**-12  # the tie rounds to even, 0.5
    assert dm._decision_threshold(torch.float32, 0.5) == 0.5
    assert dm._decision_threshold(torch.float32, 1.0) == math.inf
    assert dm._decision_threshold(torch.float32, -0.25) is None


def test_tied_scores_keep_monai_stable_order():
    boxes = torch.tensor([[0.0, 0, 0, 1, 1, 1], [5, 5, 5, 6, 6, 6], [0, 0, 0, 1, 1, 1], [9, 9, 9, 10, 10, 10]])
    scores = torch.tensor([0.5, 0.5, 0.5, 0.7])
    assert dm.non_max_suppression(boxes, scores, 0.5).tolist() == [3, 0, 1]
    assert MONAI_NMS(boxes, scores, 0.5).tolist() == [3, 0, 1]
    # float16 boxes: MONAI casts the scores to float16, which ties 0.50001 with 0.5
    s = torch.tensor([0.5, 0.50001, 0.5, 0.7])
    assert dm.non_max_suppression(boxes.half(), s, 0.5).tolist() == [3, 0, 1]
    assert dm.non_max_suppression(boxes, s, 0.5).tolist() == [3, 1, 0]


def test_thresholds_outside_unit_interval_and_zero_volume_boxes():
    boxes = torch.tensor([[0.0, 0, 0, 2, 2, 2], [0, 0, 0, 2, 2, 2], [9, 9, 9, 9, 12, 12], [20, 20, 20, 21, 21, 21]])
    scores = torch.tensor([0.1, 0.4, 0.3, 0.2])
    assert dm.non_max_suppression(boxes, scores, 1.0).tolist() == [1, 2, 3, 0]  # IoU 1 <= 1: kept
    assert dm.non_max_suppression(boxes, scores, 0.0).tolist() == [1, 2, 3]  # the empty box never suppresses
    assert dm.non_max_suppression(boxes, scores, -0.25).tolist() == [1]  # IoU 0 > -0.25: all suppressed
    for t in (1.0, 0.0, -0.25, float("nan")):
        assert_same(dm.non_max_suppression(boxes, scores, t), MONAI_NMS(boxes, scores, t))


def test_empty_inputs_keep_container_and_dtype():
    for wrap in ("tensor", "numpy", "meta"):
        b = container(np.zeros((0, 6)), wrap, torch.float32)
        s = container(np.zeros(0), wrap, torch.float32)
        assert_same(dm.non_max_suppression(b, s, 0.5), MONAI_NMS(b, s, 0.5))
        assert_same(dm.batched_nms(b, s, s, 0.5), MONAI_BATCHED(b, s, s, 0.5))
        assert_same(dm.box_iou(b, b), MONAI_IOU(b, b))


def test_invalid_boxes_raise_monai_errors():
    good = torch.tensor([[0.0, 0, 0, 1, 1, 1], [0, 0, 0, 2, 2, 2]])
    scores = torch.tensor([0.9, 0.8])
    for bad_row, message in [([0.0, 0, 0, -1, 1, 1], "invalid values"), ([0.0, 0, 0, float("nan"), 1, 1], "NaN or Inf"),
                             ([0.0, 0, 0, float("inf"), 1, 1], "NaN or Inf")]:
        boxes = torch.cat([good, torch.tensor([bad_row])])
        s = torch.tensor([0.9, 0.8, 0.1])
        for fn in (dm.non_max_suppression, MONAI_NMS):
            with pytest.raises(ValueError, match=message):
                fn(boxes, s, 0.5)
        for fn in (dm.box_iou, MONAI_IOU):
            with pytest.raises(ValueError, match=message):
                fn(boxes, good)
        # max_proposals=1: MONAI picks the best box without computing any IoU, so no error
        assert_same(dm.non_max_suppression(boxes, s, 0.5, 1), MONAI_NMS(boxes, s, 0.5, 1))
    with pytest.raises(ValueError, match="same length"):
        dm.non_max_suppression(good, scores[:1], 0.5)


def test_exactness_machinery_is_exercised():
    """The grid family puts pairs exactly on the threshold, where the two kernel runs disagree
    and MONAI's arithmetic decides (restarts); micro boxes make the margin so wide that the
    exact greedy loop finishes the job. Both paths must still equal MONAI."""
    rng = np.random.default_rng(5)
    dm.CALLS.clear()
    for kind, n in [("grid", 150), ("micro", 200)]:
        for _ in range(3):
            b = torch.tensor(make_boxes(rng, n, kind), dtype=torch.float32)
            s = torch.tensor(rng.uniform(size=n), dtype=torch.float32)
            for t in (0.25, 0.5):
                assert_same(dm.non_max_suppression(b, s, t), MONAI_NMS(b, s, t))
    assert dm.CALLS["restarts"] > 0 and dm.CALLS["greedy_finish"] > 0


def test_unsupported_inputs_fall_back_to_monai():
    rng = np.random.default_rng(3)
    b2d = torch.tensor(make_boxes(rng, 40, "random")[:, [0, 1, 3, 4]], dtype=torch.float32)
    s = torch.tensor(rng.uniform(size=40), dtype=torch.float32)
    dm.CALLS.clear()
    assert_same(dm.non_max_suppression(b2d, s, 0.3), MONAI_NMS(b2d, s, 0.3))
    assert_same(dm.box_iou(b2d, b2d), MONAI_IOU(b2d, b2d))
    b3d = torch.tensor(make_boxes(rng, 40, "random"), dtype=torch.float32)
    giou = box_utils.box_giou
    assert_same(dm.non_max_suppression(b3d, s, 0.3, -1, giou), MONAI_NMS(b3d, s, 0.3, -1, giou))
    assert dm.CALLS["fallback"] == 3 and dm.CALLS["kernel"] == 0
    assert dm.CALLS["fallback non_max_suppression (not [N, 6])"] == 1
    assert dm.CALLS["fallback non_max_suppression (metric)"] == 1
    assert dm.CALLS["fallback box_iou (not [N, 6])"] == 1


# --------------------------------------------------------------------- MONAI objects

def small_detector():
    from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
    from monai.apps.detection.networks.retinanet_network import RetinaNet, resnet_fpn_feature_extractor
    from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape
    from monai.networks.nets import resnet10

    torch.manual_seed(0)
    backbone = resnet10(spatial_dims=3, n_input_channels=1, conv1_t_stride=(2, 2, 1), conv1_t_size=(7, 7, 7))
    extractor = resnet_fpn_feature_extractor(backbone, 3, False, [1, 2], None)
    net = RetinaNet(spatial_dims=3, num_classes=1, num_anchors=3, feature_extractor=extractor, size_divisible=(16, 16, 8))
    anchors = AnchorGeneratorWithAnchorShape(feature_map_scales=(1, 2, 4),
                                             base_anchor_shapes=((6, 8, 4), (8, 6, 5), (10, 10, 6)))
    det = RetinaNetDetector(net, anchors)
    det.set_atss_matcher(num_candidates=4, center_in_gt=False)
    det.set_hard_negative_sampler(batch_size_per_image=64, positive_fraction=0.3, pool_size=20, min_neg=16)
    det.set_target_keys(box_key="box", label_key="label")
    # the lung nodule bundle's selector, with a low score threshold so that NMS has work
    det.set_box_selector_parameters(score_thresh=0.0, topk_candidates_per_level=1000, nms_thresh=0.22,
                                    detections_per_img=300)
    return det


def run_detector(det):
    torch.manual_seed(1)
    image = torch.rand(1, 1, 32, 32, 16)
    det.eval()
    with torch.no_grad():
        out = det(image)
    det.train()
    targets = [{"box": torch.tensor([[4.0, 5, 2, 14, 13, 9]]), "label": torch.tensor([0])}]
    losses = det(image, targets)
    return out[0], losses


@pytest.fixture(scope="module")
def monai_detector_result():
    """MONAI's own detections and training losses on the small detector, computed once."""
    dm.unpatch_monai()
    return run_detector(small_detector())


def test_patch_monai_routes_a_fresh_detector_through_deepem(monai_detector_result):
    import monai.apps.detection.utils.box_selector as bs
    from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
    from monai.apps.detection.utils.ATSS_matcher import ATSSMatcher
    from monai.apps.detection.utils.box_selector import BoxSelector

    want_out, want_losses = monai_detector_result
    dm.CALLS.clear()
    with dm.patch_monai():
        assert box_utils.box_iou is dm.box_iou and bs.batched_nms is dm.batched_nms
        assert BoxSelector.__init__.__defaults__[0] is dm.box_iou
        assert ATSSMatcher.__init__.__defaults__[1] is dm.box_iou
        det = small_detector()
        assert det.box_overlap_metric is dm.box_iou and det.proposal_matcher.similarity_fn is dm.box_iou
        assert RetinaNetDetector.postprocess_detections is dm.postprocess_detections
        got_out, got_losses = run_detector(det)
    assert RetinaNetDetector.postprocess_detections is dm.MONAI_POSTPROCESS
    assert dm.CALLS["postprocess_detections"] == 1
    assert dm.CALLS["batched_nms"] >= 1 and dm.CALLS["non_max_suppression"] >= 1
    assert dm.CALLS["box_iou"] >= 1 and dm.CALLS["fallback"] == 0
    assert box_utils.box_iou is MONAI_IOU and bs.batched_nms is MONAI_BATCHED
    assert BoxSelector.__init__.__defaults__[0] is MONAI_IOU
    assert ATSSMatcher.__init__.__defaults__[1] is MONAI_IOU
    assert want_out["box"].shape[0] > 1
    for k in want_out:
        assert torch.equal(got_out[k], want_out[k]), k
    for k in want_losses:
        assert torch.equal(got_losses[k], want_losses[k]), k


def test_patch_and_unpatch_without_context_manager_is_idempotent():
    dm.patch_monai()
    dm.patch_monai()
    assert box_utils.non_max_suppression is dm.non_max_suppression
    dm.unpatch_monai()
    assert box_utils.non_max_suppression is MONAI_NMS
    dm.unpatch_monai()
    assert box_utils.non_max_suppression is MONAI_NMS


def test_use_deepem_converts_an_existing_detector(monai_detector_result):
    want_out, want_losses = monai_detector_result
    det = small_detector()  # the same weights (run_detector's training step moves BatchNorm's statistics)
    assert dm.use_deepem(det) is det
    assert isinstance(det.box_selector, dm.DeepEMBoxSelector)
    assert det.box_selector.nms_thresh == 0.22 and det.box_selector.detections_per_img == 300
    assert det.proposal_matcher.similarity_fn is dm.box_iou
    dm.CALLS.clear()
    got_out, got_losses = run_detector(det)
    assert dm.CALLS["postprocess_detections"] == 1
    assert dm.CALLS["batched_nms"] == 1 and dm.CALLS["box_iou"] >= 1 and dm.CALLS["fallback"] == 0
    for k in want_out:
        assert torch.equal(got_out[k], want_out[k]), k
    for k in want_losses:
        assert torch.equal(got_losses[k], want_losses[k]), k
    with pytest.raises(TypeError):
        dm.use_deepem(object())


@pytest.mark.parametrize("seed", range(4))
def test_box_selector_equals_monai(seed):
    from monai.apps.detection.utils.box_selector import BoxSelector

    rng = np.random.default_rng(seed)
    kw = dict(score_thresh=0.02, topk_candidates_per_level=300, nms_thresh=0.22, detections_per_img=50)
    levels = [(800, "clusters"), (500, "random"), (100, "grid")]
    boxes = [torch.tensor(make_boxes(rng, n, kind), dtype=torch.float32) for n, kind in levels]
    logits = [torch.tensor(rng.normal(size=(n, 2)), dtype=torch.float32) for n, _ in levels]
    want = BoxSelector(**kw).select_boxes_per_image(boxes, logits, (240, 240, 240))
    got = dm.DeepEMBoxSelector(**kw).select_boxes_per_image(boxes, logits, (240, 240, 240))
    converted = dm.use_deepem(BoxSelector(**kw))
    assert isinstance(converted, dm.DeepEMBoxSelector) and converted.box_overlap_metric is dm.box_iou
    again = converted.select_boxes_per_image(boxes, logits, (240, 240, 240))
    assert want[0].shape[0] == 50
    for w, g, a in zip(want, got, again):
        assert torch.equal(g, w) and torch.equal(a, w)


def head_outputs(det, rng, locs, batch, dtype, kind):
    """Synthetic head outputs for `det` (its keys and anchor count per location): anchors are
    random boxes, logits 'dense' (most above the threshold), 'sparse', 'none' above it, or
    'ties' (rounded, so many scores are equal)."""
    n = sum(locs) * det.num_anchors_per_loc
    classes = det.num_classes
    anchors = [torch.tensor(make_boxes(rng, n, "random"), dtype=torch.float32) for _ in range(batch)]
    reg = torch.tensor(rng.normal(0, 0.3, (batch, n, 6)), dtype=torch.float32)
    logits = rng.normal(0, 1.5, (batch, n, classes))
    if kind == "sparse":
        logits = np.where(rng.random(logits.shape) < 0.02, logits + 2, -8.0)
    elif kind == "none":
        logits = logits - 20
    elif kind == "ties":
        logits = np.round(logits * 2) / 2
    heads = {det.cls_key: torch.tensor(logits, dtype=dtype), det.box_reg_key: reg.to(dtype)}
    return heads, anchors


@pytest.mark.parametrize("seed", range(8))
def test_postprocess_detections_equals_monai(seed):
    """deepem's RetinaNetDetector.postprocess_detections decodes the selected anchors only: the
    detections equal MONAI's, bit for bit, on dense / sparse / empty / tied scores, float16,
    one or two classes, one or two images of different sizes."""
    from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector

    rng = np.random.default_rng(300 + seed)
    det = small_detector()
    if seed % 2:
        det.num_classes = 2  # the selector reads the class from the flattened index
    det.set_box_selector_parameters(score_thresh=0.05, topk_candidates_per_level=int(rng.integers(5, 400)),
                                    nms_thresh=0.22, detections_per_img=int(rng.integers(1, 100)))
    locs = [int(rng.integers(1, 400)), int(rng.integers(1, 120)), int(rng.integers(1, 30))]
    batch = 1 + seed % 2
    sizes = [[240, 240, 240], [120, 200, 90]][:batch]
    for kind in ("dense", "sparse", "none", "ties"):
        for dtype in (torch.float32, torch.float16):
            heads, anchors = head_outputs(det, rng, locs, batch, dtype, kind)
            want = RetinaNetDetector.postprocess_detections(det, heads, anchors, sizes, locs)
            dm.CALLS.clear()
            got = dm.postprocess_detections(det, heads, anchors, sizes, locs)
            assert dm.CALLS["postprocess_detections"] == 1
            for w, g in zip(want, got):
                assert w.keys() == g.keys()
                for k in w:
                    assert g[k].dtype == w[k].dtype and torch.equal(g[k], w[k]), (kind, dtype, k)
            if kind == "none":
                assert all(g[det.target_box_key].shape[0] == 0 for g in got)


def test_postprocess_detections_nan_regression():
    """A NaN size regression raises MONAI's ValueError where the anchor is selected; MONAI also
    raises for an anchor it does not select, deepem does not (its detections are the same)."""
    from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector

    det = small_detector()
    det.set_box_selector_parameters(score_thresh=0.05, topk_candidates_per_level=1000, nms_thresh=0.22,
                                    detections_per_img=300)
    rng = np.random.default_rng(5)
    locs = [50, 20, 5]
    heads, anchors = head_outputs(det, rng, locs, 1, torch.float32, "sparse")
    logits = heads[det.cls_key]
    best, worst = int(logits[0, :, 0].argmax()), int(logits[0, :, 0].argmin())
    heads[det.box_reg_key][0, worst, 4] = float("nan")
    with pytest.raises(ValueError):
        RetinaNetDetector.postprocess_detections(det, heads, anchors, [[240, 240, 240]], locs)
    dm.postprocess_detections(det, heads, anchors, [[240, 240, 240]], locs)  # not selected: no error
    heads[det.box_reg_key][0, best, 4] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        dm.postprocess_detections(det, heads, anchors, [[240, 240, 240]], locs)


def test_postprocess_detections_leaves_custom_selectors_to_monai():
    """A BoxSelector subclass may select by the boxes: MONAI's own post-processing runs it."""
    from monai.apps.detection.utils.box_selector import BoxSelector

    class ByVolume(BoxSelector):
        pass

    det = small_detector()
    det.box_selector = ByVolume(score_thresh=0.05)
    heads, anchors = head_outputs(det, np.random.default_rng(6), [40, 10, 3], 1, torch.float32, "dense")
    dm.CALLS.clear()
    out = dm.postprocess_detections(det, heads, anchors, [[240, 240, 240]], [40, 10, 3])
    assert dm.CALLS["postprocess_detections"] == 0 and out[0][det.target_box_key].shape[0] > 0


def test_import_deepem_never_imports_monai():
    code = ("import sys, deepem, deepem.ops; deepem.ops.nms3d; "
            "assert 'monai' not in sys.modules and 'deepem.integrations' not in sys.modules, "
            "[m for m in sys.modules if 'monai' in m]")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr


# --------------------------------------------------------------------- CUDA

@pytest.mark.cuda
@pytest.mark.parametrize("seed", range(6))
def test_cuda_equals_monai_on_cuda(seed):
    rng = np.random.default_rng(1000 + seed)
    for _ in range(40):
        one_nms_case(rng, int(rng.integers(0, 200)), device="cuda")
    for _ in range(20):
        n, m = int(rng.integers(0, 80)), int(rng.integers(0, 80))
        kind = KINDS[rng.integers(len(KINDS))]
        b1 = torch.tensor(make_boxes(rng, n, kind), dtype=torch.float32, device="cuda")
        b2 = torch.tensor(make_boxes(rng, m, kind), dtype=torch.float32, device="cuda")
        got, want = dm.box_iou(b1, b2), MONAI_IOU(b1, b2)
        assert got.device == want.device
        assert_same(got, want, exact=False, atol=1e-6)


@pytest.mark.cuda
def test_cuda_large_and_detector():
    rng = np.random.default_rng(7)
    n = 20000
    boxes = torch.tensor(make_boxes(rng, n, "clusters", centres=40), dtype=torch.float32, device="cuda")
    scores = torch.rand(n, device="cuda")
    labels = torch.tensor(rng.integers(0, 2, n), device="cuda")
    got = dm.batched_nms(boxes, scores, labels, 0.22)
    assert got.device.type == "cuda"
    assert_same(got, MONAI_BATCHED(boxes, scores, labels, 0.22))
    assert_same(got.cpu(), dm.batched_nms(boxes.cpu(), scores.cpu(), labels.cpu(), 0.22))
    assert_same(dm.non_max_suppression(boxes, scores, 0.1, 40), MONAI_NMS(boxes, scores, 0.1, 40))

import numpy as np
import pytest
import torch

import reference_boxes as ref
from deepem.ops import batched_nms3d, boxes as box_formats, nms3d

NAN, INF = float("nan"), float("inf")
# Thresholds exact in binary, so float32 and float64 compare the same products.
EXACT_THRESHOLDS = [0.0, 0.125, 0.25, 0.5, 0.75, 1.0]
SIZES = [0, 1, 2, 63, 64, 65, 300, 1500]
# The CPU kernel decides candidates in chunks of 2,048 (kNmsCpuChunk in csrc/ops/nms3d.h):
# just past one chunk, a few chunks, ten chunks.
CHUNK_SIZES = [2049, 5000, 20011]


def emulated(boxes, scores, thr, idxs=None, budget_words=1 << 25):
    return torch.ops.deepem._nms3d_bitmask_emulated(boxes, scores, idxs, thr, budget_words)


def chunked(boxes, scores, thr, chunk, idxs=None):
    return torch.ops.deepem._nms3d_cpu_chunked(boxes, scores, idxs, thr, chunk)


def tied_scores(rng, n):
    """Scores with many ties (64 levels), exact in every dtype: ties go by lower index."""
    return rng.integers(0, 64, size=n) / 8


def workload(kind, rng, n, integer):
    if kind == "random":
        return ref.random_boxes(rng, n, 128.0, 30.0, integer=integer)
    return ref.clustered_boxes(rng, n, centres=max(1, n // 50), volume_size=128.0, integer=integer)


@pytest.mark.parametrize("kind", ["random", "clustered"])
@pytest.mark.parametrize("n", SIZES)
def test_float64_matches_greedy_reference(kind, n, device):
    rng = np.random.default_rng(n)
    boxes = workload(kind, rng, n, integer=False)
    scores = rng.uniform(size=n)
    for thr in [0.1, 0.3, 0.7]:
        want = ref.nms3d(boxes, scores, thr)
        got = nms3d(torch.tensor(boxes, device=device), torch.tensor(scores, device=device), thr)
        assert got.dtype == torch.int64
        np.testing.assert_array_equal(got.cpu().numpy(), want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", ["random", "clustered"])
def test_reduced_precision_matches_reference(dtype, kind, device):
    # Integer coordinates and binary thresholds: every dtype represents the input exactly and
    # float32 computes inter and thr * union exactly, so the result must equal the reference.
    rng = np.random.default_rng(7)
    for n in [5, 130, 700]:
        boxes = workload(kind, rng, n, integer=True)
        scores = rng.permutation(n).astype(np.float64) / 4  # distinct, exact in bfloat16 only for small n
        b = torch.tensor(boxes, dtype=dtype, device=device)
        s = torch.tensor(scores, dtype=dtype, device=device)
        for thr in EXACT_THRESHOLDS:
            want = ref.nms3d(b.double().cpu().numpy(), s.double().cpu().numpy(), thr)
            np.testing.assert_array_equal(nms3d(b, s, thr).cpu().numpy(), want)


@pytest.mark.parametrize("kind", ["random", "clustered"])
@pytest.mark.parametrize("n", CHUNK_SIZES)
def test_past_the_cpu_chunk_matches_reference(kind, n, device):
    # Boxes kept in earlier chunks must suppress later candidates: a kernel that skipped that
    # check kept 954 of 5,000 clustered boxes instead of 495.
    rng = np.random.default_rng(n + (kind == "clustered"))
    boxes = workload(kind, rng, n, integer=False)
    scores = tied_scores(rng, n)
    b, s = torch.tensor(boxes, device=device), torch.tensor(scores, device=device)
    for thr in [0.1, 0.3]:  # not higher: random boxes would nearly all be kept, a slow reference
        want = ref.nms3d_fast(boxes, scores, thr)
        np.testing.assert_array_equal(nms3d(b, s, thr).cpu().numpy(), want)


def test_batched_groups_past_the_cpu_chunk(device):
    # Two groups of ~3,000 boxes: each group's NMS crosses a chunk boundary.
    rng = np.random.default_rng(11)
    boxes = workload("clustered", rng, 6000, integer=False)
    scores = tied_scores(rng, 6000)
    idxs = rng.integers(0, 2, size=6000)
    want = ref.batched_nms3d(boxes, scores, idxs, 0.3, nms=ref.nms3d_fast)
    got = batched_nms3d(*(torch.tensor(v, device=device) for v in (boxes, scores, idxs)), 0.3)
    np.testing.assert_array_equal(got.cpu().numpy(), want)


@pytest.mark.parametrize("chunk", [1, 3, 64, 100, 1 << 40])
def test_cpu_chunk_size_never_changes_the_result(chunk):
    # Tiny chunks put most candidates behind a boundary (the parallel check against earlier
    # chunks decides them); a chunk larger than N is one sequential round.
    rng = np.random.default_rng(chunk % 1000)
    for kind in ["random", "clustered"]:
        boxes = workload(kind, rng, 700, integer=False)
        scores = tied_scores(rng, 700)
        idxs = rng.integers(0, 3, size=700)
        b, s = torch.tensor(boxes), torch.tensor(scores)
        for thr in [0.0, 0.3]:
            want = ref.nms3d_fast(boxes, scores, thr)
            np.testing.assert_array_equal(chunked(b, s, thr, chunk).numpy(), want)
        want = ref.batched_nms3d(boxes, scores, idxs, 0.3, nms=ref.nms3d_fast)
        np.testing.assert_array_equal(chunked(b, s, 0.3, chunk, torch.tensor(idxs)).numpy(), want)
    with pytest.raises(RuntimeError, match="'chunk'"):
        chunked(b, s, 0.3, 0)


def test_fast_reference_equals_the_plain_one():
    # nms3d_fast stands in for nms3d at sizes where the plain loop is too slow.
    rng = np.random.default_rng(3)
    for kind in ["random", "clustered"]:
        boxes = workload(kind, rng, 1500, integer=False)
        boxes[::97, 3] = boxes[::97, 0]  # some zero-volume boxes
        scores = tied_scores(rng, 1500)
        for thr in [0.0, 0.3, 1.0]:
            np.testing.assert_array_equal(ref.nms3d_fast(boxes, scores, thr), ref.nms3d(boxes, scores, thr))


@pytest.mark.parametrize("n", SIZES + [3000])
@pytest.mark.parametrize("budget_words", [64, 64 * 5, 1 << 25])
def test_cuda_algorithm_emulated_on_cpu(n, budget_words):
    """The CUDA kernels' per-thread code, tiling and block resolution, run on the CPU."""
    rng = np.random.default_rng(100 + n)
    for kind in ["random", "clustered"]:
        boxes = workload(kind, rng, n, integer=False)
        scores = rng.uniform(size=n)
        for thr in [0.0, 0.2, 0.5]:
            want = ref.nms3d(boxes, scores, thr)
            got = emulated(torch.tensor(boxes), torch.tensor(scores), thr, budget_words=budget_words)
            np.testing.assert_array_equal(got.numpy(), want)


@pytest.mark.parametrize("groups", [1, 3, 40, 1000])
@pytest.mark.parametrize("n", [0, 1, 64, 500, 2000])
def test_batched_matches_reference(groups, n, device):
    rng = np.random.default_rng(groups * 7 + n)
    boxes = ref.clustered_boxes(rng, n, centres=10, volume_size=64.0)
    scores = rng.uniform(size=n)
    idxs = rng.integers(-5, groups - 5, size=n)  # negative and sparse group ids are fine
    want = ref.batched_nms3d(boxes, scores, idxs, 0.3)
    args = (torch.tensor(boxes, device=device), torch.tensor(scores, device=device))
    got = batched_nms3d(*args, torch.tensor(idxs, device=device), 0.3)
    np.testing.assert_array_equal(got.cpu().numpy(), want)
    got32 = batched_nms3d(*args, torch.tensor(idxs, device=device, dtype=torch.int32), 0.3)
    np.testing.assert_array_equal(got32.cpu().numpy(), want)
    if device.type == "cpu":
        for budget in [64, 1 << 25]:
            got_emulated = emulated(*args, 0.3, torch.tensor(idxs), budget)
            np.testing.assert_array_equal(got_emulated.numpy(), want)


def test_batched_groups_never_suppress_each_other():
    box = [0.0, 0, 0, 10, 10, 10]
    boxes = torch.tensor([box] * 4)
    scores = torch.tensor([0.1, 0.4, 0.3, 0.2])
    idxs = torch.tensor([0, 0, 1, 2])
    assert batched_nms3d(boxes, scores, idxs, 0.5).tolist() == [1, 2, 3]
    assert nms3d(boxes, scores, 0.5).tolist() == [1]


def test_ties_are_broken_by_lower_index():
    boxes = torch.tensor([[0.0, 0, 0, 10, 10, 10]] * 5 + [[50.0, 50, 50, 60, 60, 60]] * 2)
    scores = torch.tensor([0.5, 0.9, 0.9, 0.5, 0.9, 0.9, 0.9])
    assert nms3d(boxes, scores, 0.5).tolist() == [1, 5]
    assert emulated(boxes, scores, 0.5).tolist() == [1, 5]
    # All distinct boxes, all equal scores: every box kept, in index order.
    spread = torch.tensor([[20.0 * i, 0, 0, 20 * i + 10, 10, 10] for i in range(70)])
    assert nms3d(spread, torch.ones(70), 0.5).tolist() == list(range(70))


def test_iou_exactly_at_threshold_is_not_suppressed():
    # Two boxes overlapping by two thirds of their length: inter 2000, union 4000, IoU exactly
    # 0.5, so that threshold 0.5 keeps both (the test is IoU > t) and 0.375 suppresses.
    boxes = torch.tensor([[0.0, 0, 0, 10, 10, 30], [0.0, 0, 10, 10, 10, 40]])
    scores = torch.tensor([1.0, 0.5])
    assert nms3d(boxes, scores, 0.5).tolist() == [0, 1]  # IoU 0.5 is not > 0.5
    assert nms3d(boxes, scores, 0.375).tolist() == [0]
    assert emulated(boxes, scores, 0.5).tolist() == [0, 1]


def test_nan_and_inf_are_never_kept_and_never_suppress(device):
    boxes = torch.tensor(
        [
            [0, 0, 0, NAN, 10, 10],  # best score, NaN coordinate
            [0, 0, 0, 10, INF, 10],  # Inf coordinate
            [0, 0, 0, 10, 10, 10],  # would be suppressed by the first two if they counted
            [1, 1, 1, 10, 10, 10],  # NaN score, overlaps box 2 and box 4
            [1, 1, 1, 11, 11, 11],  # -inf score: ranks last but is a normal box
            [40, 40, 40, 50, 50, 50],  # +inf score: ranks first
        ],
        dtype=torch.float64,
        device=device,
    )
    scores = torch.tensor([9.0, 8.0, 1.0, NAN, -INF, INF], dtype=torch.float64, device=device)
    assert nms3d(boxes, scores, 0.3).tolist() == [5, 2]
    assert nms3d(boxes, scores, 0.9).tolist() == [5, 2, 4]
    if device.type == "cpu":
        assert emulated(boxes, scores, 0.9).tolist() == [5, 2, 4]
    np.testing.assert_array_equal(nms3d(boxes, scores, 0.9).cpu().numpy(), ref.nms3d(boxes.cpu(), scores.cpu(), 0.9))


def test_degenerate_boxes_are_kept_and_never_suppress():
    boxes = torch.tensor(
        [
            [0.0, 0, 0, 10, 10, 10],
            [5.0, 5, 5, 5, 8, 8],  # flat inside box 0
            [8.0, 8, 8, 2, 2, 2],  # inverted
            [5.0, 5, 5, 5, 8, 8],  # same flat box again
        ]
    )
    scores = torch.tensor([0.1, 0.9, 0.8, 0.7])
    assert nms3d(boxes, scores, 0.0).tolist() == [1, 2, 3, 0]
    assert emulated(boxes, scores, 0.0).tolist() == [1, 2, 3, 0]


def test_threshold_zero_and_one():
    rng = np.random.default_rng(9)
    boxes = torch.tensor(ref.clustered_boxes(rng, 400, centres=8, volume_size=64.0))
    scores = torch.tensor(rng.uniform(size=400))
    assert len(nms3d(boxes, scores, 1.0)) == 400  # IoU never exceeds 1
    kept = nms3d(boxes, scores, 0.0)  # no two kept boxes overlap at all
    iou = ref.box_iou3d(boxes[kept].numpy(), boxes[kept].numpy())
    assert (iou[~np.eye(len(kept), dtype=bool)] == 0).all()


def test_non_contiguous_inputs_accepted():
    rng = np.random.default_rng(2)
    boxes = torch.tensor(ref.random_boxes(rng, 300, 64, 20))
    scores = torch.tensor(rng.uniform(size=600))[::2]
    fortran = boxes.t().contiguous().t()
    assert not fortran.is_contiguous() and not scores.is_contiguous()
    assert nms3d(fortran, scores, 0.2).tolist() == nms3d(boxes, scores.contiguous(), 0.2).tolist()


def test_million_boxes_run_in_linear_memory():
    # 10^6 boxes: a dense N x N structure would need 125 GB as bits; this must just run.
    # Integer coordinates and a binary threshold: float32 decides every pair exactly.
    rng = np.random.default_rng(1)
    n = 1_000_000
    boxes = ref.random_boxes(rng, n, 1024.0, 12.0, integer=True)
    scores = torch.rand(n, generator=torch.Generator().manual_seed(0))
    kept = nms3d(torch.tensor(boxes, dtype=torch.float32), scores, 0.25).numpy()
    assert 0 < len(kept) < n
    assert np.all(scores.numpy()[kept][1:] <= scores.numpy()[kept][:-1])
    # Greedy NMS keeps a box exactly when no box kept before it (in NMS order) suppresses it:
    # check that on samples of kept and of dropped boxes, against every kept box that can
    # overlap them.
    rank = np.empty(n, np.int64)
    rank[np.argsort(-scores.numpy(), kind="stable")] = np.arange(n)
    is_kept = np.zeros(n, bool)
    is_kept[kept] = True
    by_z = kept[np.argsort(boxes[kept, 0], kind="stable")]
    z1 = boxes[by_z, 0]
    pick = np.random.default_rng(2)
    sample = np.r_[pick.choice(kept, 200), pick.choice(np.flatnonzero(~is_kept), 200)]
    for j in sample:
        lo, hi = np.searchsorted(z1, [boxes[j, 0] - 12.0, boxes[j, 3]])  # sides are <= 12
        before = by_z[lo:hi][rank[by_z[lo:hi]] < rank[j]]
        inter = ref.intersection(boxes[before], boxes[j : j + 1])[:, 0]
        union = ref.volume(boxes[before]) + ref.volume(boxes[j]) - inter
        assert np.any((inter > 0) & (inter > 0.25 * union)) != is_kept[j], j


@pytest.mark.parametrize(
    "boxes,scores,thr,match",
    [
        (torch.zeros(3, 4), torch.zeros(3), 0.5, "'boxes'.*\\[N, 6\\]"),
        (torch.zeros(3, 6), torch.zeros(4), 0.5, "'scores'.*shape \\[3\\]"),
        (torch.zeros(3, 6), torch.zeros(3, dtype=torch.float64), 0.5, "'scores'.*dtype"),
        (torch.zeros(3, 6, dtype=torch.int32), torch.zeros(3), 0.5, "'boxes'.*float"),
        (torch.zeros(3, 6), torch.zeros(3), -0.1, "'iou_threshold'.*\\[0, 1\\]"),
        (torch.zeros(3, 6), torch.zeros(3), 1.5, "'iou_threshold'"),
        (torch.zeros(3, 6), torch.zeros(3), NAN, "'iou_threshold'"),
    ],
)
def test_bad_input_names_the_argument(boxes, scores, thr, match):
    with pytest.raises(RuntimeError, match=match):
        nms3d(boxes, scores, thr)


def test_batched_bad_idxs():
    b, s = torch.zeros(3, 6), torch.zeros(3)
    with pytest.raises(RuntimeError, match="'idxs'.*integer"):
        batched_nms3d(b, s, torch.zeros(3), 0.5)
    with pytest.raises(RuntimeError, match="'idxs'.*shape \\[3\\]"):
        batched_nms3d(b, s, torch.zeros(2, dtype=torch.long), 0.5)


def test_opcheck():
    rng = np.random.default_rng(4)
    boxes = torch.tensor(ref.clustered_boxes(rng, 80, centres=4, volume_size=64.0), dtype=torch.float32)
    scores = torch.rand(80, generator=torch.Generator().manual_seed(0))
    idxs = torch.tensor(rng.integers(0, 3, 80))
    torch.library.opcheck(torch.ops.deepem.nms3d.default, (boxes, scores, 0.3))
    torch.library.opcheck(torch.ops.deepem.nms3d.default, (boxes[:0], scores[:0], 0.3))
    torch.library.opcheck(torch.ops.deepem.batched_nms3d.default, (boxes, scores, idxs, 0.3))


def test_torch_compile_with_data_dependent_output():
    def detect(boxes, scores):
        keep = nms3d(boxes, scores, 0.3)
        return boxes[keep], scores[keep] * 2

    rng = np.random.default_rng(6)
    boxes = torch.tensor(ref.clustered_boxes(rng, 200, centres=5, volume_size=64.0), dtype=torch.float32)
    scores = torch.rand(200, generator=torch.Generator().manual_seed(0))
    compiled = torch.compile(detect, backend="aot_eager", fullgraph=True)
    got_boxes, got_scores = compiled(boxes, scores)
    want_boxes, want_scores = detect(boxes, scores)
    torch.testing.assert_close(got_boxes, want_boxes)
    torch.testing.assert_close(got_scores, want_scores)


def test_every_op_has_a_cuda_kernel_registered():
    # In a build without CUDA kernels the CUDA key holds a kernel that explains how to rebuild,
    # so a CUDA tensor never meets a bare dispatcher error or an undefined symbol.
    for op in ["box_iou3d", "nms3d", "batched_nms3d"]:
        assert torch._C._dispatch_has_kernel_for_dispatch_key("deepem::" + op, "CUDA")


@pytest.mark.cuda
@pytest.mark.parametrize("n", [0, 1, 64, 10_000, 70_000])
def test_cuda_equals_cpu(n):
    rng = np.random.default_rng(n)
    for kind in ["random", "clustered"]:
        boxes = torch.tensor(workload(kind, rng, n, integer=True), dtype=torch.float32)
        scores = torch.tensor(rng.uniform(size=n), dtype=torch.float32)
        idxs = torch.tensor(rng.integers(0, 7, size=n))
        for thr in EXACT_THRESHOLDS:
            assert torch.equal(nms3d(boxes.cuda(), scores.cuda(), thr).cpu(), nms3d(boxes, scores, thr))
            got = batched_nms3d(boxes.cuda(), scores.cuda(), idxs.cuda(), thr).cpu()
            assert torch.equal(got, batched_nms3d(boxes, scores, idxs, thr))


@pytest.mark.cuda
def test_cuda_tiles_large_inputs():
    # 300k boxes need a 11 GB bitmask: the kernel must tile it, not fail.
    rng = np.random.default_rng(0)
    boxes = torch.tensor(ref.random_boxes(rng, 300_000, 1024.0, 12.0), dtype=torch.float32)
    scores = torch.rand(300_000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(nms3d(boxes.cuda(), scores.cuda(), 0.2).cpu(), nms3d(boxes, scores, 0.2))


def test_nms_cubes_matches_reference():
    rng = np.random.default_rng(8)
    cubes = np.c_[rng.uniform(0, 64, (300, 3)), rng.uniform(3, 20, 300)]
    scores = rng.uniform(size=300)
    # Cube (z, y, x, d) -> box (centre -+ d / 2), written out here rather than taken from
    # deepem.ops.boxes, whose conversion nms_cubes itself uses.
    boxes = np.c_[cubes[:, :3] - cubes[:, 3:] / 2, cubes[:, :3] + cubes[:, 3:] / 2]
    want = ref.nms3d(boxes, scores, 0.1)
    got = box_formats.nms_cubes(torch.tensor(cubes), torch.tensor(scores), 0.1)
    np.testing.assert_array_equal(got.numpy(), want)
    assert 0 < len(want) < 300

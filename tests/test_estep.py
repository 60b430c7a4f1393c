"""E-step kernels (em_posterior, em_map, em_sample, pseudo_boxes) against the float64
references of tests/reference_estep.py."""

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from deepem.ops import em_map, em_posterior, em_sample, pseudo_boxes
from deepem.ops.estep import DEFAULT_MU, DEFAULT_SIGMA, DEFAULT_Z_WINDOW
from reference_estep import (
    em_map_ref,
    em_posterior_ref,
    em_sample_ref,
    posterior_direct,
)

PARAMS = dict(mu=DEFAULT_MU, sigma=DEFAULT_SIGMA, z_window=DEFAULT_Z_WINDOW)


def make_batch(B, P, M, seed, lobes=6, with_lobe=True, depth=60.0, dtype=torch.float64,
               fill_counts=False):
    """Random weak scans: proposals spread over `depth` mm of z, labels near some of them,
    random counts (padding filled with garbage, which must never matter)."""
    g = torch.Generator().manual_seed(seed)
    proposals = torch.empty(B, P, 5, dtype=torch.float64)
    proposals[..., 0] = torch.randn(B, P, generator=g, dtype=torch.float64) * 3
    proposals[..., 1:4] = torch.rand(B, P, 3, generator=g, dtype=torch.float64) * depth
    proposals[..., 4] = 3 + torch.rand(B, P, generator=g, dtype=torch.float64) * 20
    num_proposals = torch.full((B,), P) if fill_counts else torch.randint(0, P + 1, (B,), generator=g)
    num_weak = torch.full((B,), M) if fill_counts else torch.randint(0, M + 1, (B,), generator=g)
    weak_z = torch.rand(B, M, generator=g, dtype=torch.float64) * depth
    weak_lobe = torch.randint(0, lobes, (B, M), generator=g)
    lobe_log_probs = None
    if with_lobe:
        lobe_log_probs = torch.log_softmax(torch.randn(B, P, lobes, generator=g, dtype=torch.float64) * 2, -1)
    # Garbage in every padded slot.
    for b in range(B):
        proposals[b, num_proposals[b]:] = float("nan")
        weak_z[b, num_weak[b]:] = float("nan")
        weak_lobe[b, num_weak[b]:] = 1000
        if lobe_log_probs is not None:
            lobe_log_probs[b, num_proposals[b]:] = float("inf")
    cast = lambda t: None if t is None else t.to(dtype)  # noqa: E731
    return dict(proposals=cast(proposals), num_proposals=num_proposals, weak_z=cast(weak_z),
                weak_lobe=weak_lobe, num_weak=num_weak, lobe_log_probs=cast(lobe_log_probs))


def posterior_ref(batch, **params):
    p = dict(PARAMS, **params)
    n = lambda t: None if t is None else t.double().numpy()  # noqa: E731
    return em_posterior_ref(n(batch["proposals"]), batch["num_proposals"].numpy(), n(batch["weak_z"]),
                            batch["weak_lobe"].numpy(), batch["num_weak"].numpy(),
                            n(batch["lobe_log_probs"]), p["mu"], p["sigma"], p["z_window"])


def assert_log_close(actual, expected, atol):
    actual = actual.double().numpy()
    assert np.array_equal(np.isneginf(actual), np.isneginf(expected))
    assert not np.isnan(actual).any()
    finite = np.isfinite(expected)
    np.testing.assert_allclose(actual[finite], expected[finite], rtol=0, atol=atol)


# ------------------------------------------------------------------ posterior

@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("with_lobe", [True, False])
@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-10), (torch.float32, 2e-4)])
def test_posterior_matches_reference(seed, with_lobe, dtype, atol):
    B, P, M = [(1, 1, 1), (3, 7, 2), (5, 40, 4), (8, 130, 3), (2, 300, 5), (4, 65, 1)][seed]
    batch = make_batch(B, P, M, seed, with_lobe=with_lobe, dtype=dtype)
    lp, has = em_posterior(**batch)
    ref, ref_has = posterior_ref(batch)
    assert lp.dtype == dtype and lp.shape == (B, M, P)
    assert has.dtype == torch.bool and torch.equal(has, torch.from_numpy(ref_has))
    assert_log_close(lp, ref, atol)


def test_posterior_is_the_papers_formula():
    g = torch.Generator().manual_seed(3)
    P = 50
    logit = torch.randn(P, generator=g, dtype=torch.float64) * 2
    z = torch.rand(P, generator=g, dtype=torch.float64) * 40
    lobe_prob = torch.softmax(torch.randn(P, 6, generator=g, dtype=torch.float64), -1)
    proposals = torch.zeros(1, P, 5, dtype=torch.float64)
    proposals[0, :, 0], proposals[0, :, 1] = logit, z
    lp, has = em_posterior(proposals, torch.tensor([P]), torch.tensor([[20.0]], dtype=torch.float64),
                           torch.tensor([[4]]), torch.tensor([1]), lobe_prob.log()[None], mu=1.5,
                           sigma=2.5, z_window=9.0)
    expected = posterior_direct(logit.numpy(), z.numpy(), 20.0, lobe_prob[:, 4].numpy(), 1.5, 2.5, 9.0)
    np.testing.assert_allclose(lp[0, 0].exp().numpy(), expected, rtol=1e-12, atol=1e-300)
    assert has.item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_normalisation_sums_to_one(dtype):
    batch = make_batch(16, 200, 4, seed=11, dtype=dtype)
    lp, has = em_posterior(**batch)
    sums = lp.double().exp().sum(-1)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert torch.allclose(sums[has], torch.ones_like(sums[has]), atol=tol, rtol=0)
    assert (sums[~has] == 0).all()
    assert has.any() and (~has).any()


def test_tiny_probabilities_never_nan():
    # Linear-space products underflow to 0 here (0/0 = NaN); log space keeps the ratios.
    P = 5
    proposals = torch.zeros(1, P, 5)
    proposals[0, :, 0] = torch.tensor([-200.0, -210.0, -220.0, -90.0, -95.0])
    proposals[0, :, 1] = torch.tensor([0.0, 0.0, 0.0, 60.0, 70.0])
    lp, has = em_posterior(proposals, torch.tensor([P]), torch.tensor([[0.0]]), torch.tensor([[0]]),
                           torch.tensor([1]), None, z_window=float("inf"))
    assert has.item() and not lp.isnan().any()
    assert abs(lp.double().exp().sum().item() - 1) < 1e-5
    assert lp[0, 0].argmax().item() == 0  # -200 and no distance beats -90 at 60 mm
    np.testing.assert_allclose(lp[0, 0, 1].item() - lp[0, 0, 0].item(), -10.0, atol=1e-3)


def test_window_and_invalid_proposals_get_probability_zero():
    nan, inf = float("nan"), float("inf")
    proposals = torch.tensor([[[0.0, 10.0, 1, 1, 5],     # admissible
                               [0.0, 23.0, 1, 1, 5],     # |dz| = 13: on the window edge, admissible
                               [0.0, 23.5, 1, 1, 5],     # outside the window
                               [nan, 10.0, 1, 1, 5],     # NaN logit
                               [0.0, nan, 1, 1, 5],      # NaN z
                               [-inf, 10.0, 1, 1, 5],    # logit -inf: probability 0
                               [inf, 12.0, 1, 1, 5]]],   # logit +inf: sigmoid 1, fine
                             dtype=torch.float64)
    lobe = torch.zeros(1, 7, 2, dtype=torch.float64)
    lobe[0, 0, 1] = -inf  # lobe probability 0
    lp, has = em_posterior(proposals, torch.tensor([7]), torch.tensor([[10.0]], dtype=torch.float64),
                           torch.tensor([[1]]), torch.tensor([1]), lobe)
    finite = torch.isfinite(lp[0, 0]).tolist()
    assert finite == [False, True, False, False, False, False, True]
    assert has.item()


def test_label_without_candidates_is_flagged():
    proposals = torch.tensor([[[1.0, 100.0, 1, 1, 5]]])
    lp, has = em_posterior(proposals, torch.tensor([1]), torch.tensor([[10.0, 99.0]]),
                           torch.tensor([[0, 0]]), torch.tensor([2]), None)
    assert has.tolist() == [[False, True]]
    assert torch.isneginf(lp[0, 0]).all() and lp[0, 1, 0].item() == 0.0
    assert em_map(lp).tolist() == [[-1, 0]]
    assert em_sample(lp, 3, seed=1).tolist() == [[[-1, -1, -1], [0, -1, -1]]]


@pytest.mark.parametrize("B,P,M", [(0, 5, 2), (3, 0, 2), (3, 5, 0), (0, 0, 0)])
def test_empty_shapes(B, P, M):
    batch = make_batch(B, P, M, seed=0)
    lp, has = em_posterior(**batch)
    assert lp.shape == (B, M, P) and has.shape == (B, M) and not has.any()
    assert em_map(lp).shape == (B, M) and (em_map(lp) == -1).all()
    assert em_sample(lp, 2).shape == (B, M, 2) and (em_sample(lp, 2) == -1).all()
    assert em_sample(lp, 0).shape == (B, M, 0)


def test_scans_without_proposals_or_labels():
    batch = make_batch(4, 10, 3, seed=5, fill_counts=True)
    batch["num_proposals"] = torch.tensor([0, 10, 1, 10])
    batch["num_weak"] = torch.tensor([3, 0, 3, 2])
    batch["weak_z"][2] = batch["proposals"][2, 0, 1]  # the one proposal of scan 2 is in range
    lp, has = em_posterior(**batch)
    ref, ref_has = posterior_ref(batch)
    assert_log_close(lp, ref, 1e-10)
    assert not has[0].any() and not has[1].any() and has[2].all() and not has[3, 2]
    # One proposal: probability 1 for every label that admits it.
    assert (lp[2, :, 0] == 0).all() and torch.isneginf(lp[2, :, 1:]).all()
    assert em_map(lp)[2].tolist() == [0, 0, 0]


# ------------------------------------------------------------------ padding

def test_padding_never_leaks():
    batch = make_batch(6, 50, 4, seed=21)
    B, P, M = 6, 50, 4
    lp, has = em_posterior(**batch)
    # Different garbage in the padded slots.
    other = {k: (v.clone() if v is not None else None) for k, v in batch.items()}
    for b in range(B):
        n, w = batch["num_proposals"][b], batch["num_weak"][b]
        other["proposals"][b, n:] = 1e30
        other["proposals"][b, n:, 0] = float("inf")
        other["weak_z"][b, w:] = -7.0
        other["weak_lobe"][b, w:] = -5
        other["lobe_log_probs"][b, n:] = float("nan")
    lp2, has2 = em_posterior(**other)
    assert torch.equal(lp, lp2) and torch.equal(has, has2)
    # A larger padding gives the same values on the real slots and -inf elsewhere.
    wide = dict(batch)
    wide["proposals"] = torch.cat([batch["proposals"], torch.full((B, 7, 5), 3.0, dtype=torch.float64)], 1)
    wide["lobe_log_probs"] = torch.cat([batch["lobe_log_probs"], torch.zeros(B, 7, 6, dtype=torch.float64)], 1)
    wide["weak_z"] = torch.cat([batch["weak_z"], torch.zeros(B, 2, dtype=torch.float64)], 1)
    wide["weak_lobe"] = torch.cat([batch["weak_lobe"], torch.zeros(B, 2, dtype=torch.long)], 1)
    lp3, has3 = em_posterior(**wide)
    assert torch.equal(lp3[:, :M, :P], lp) and torch.isneginf(lp3[:, :, P:]).all()
    assert torch.isneginf(lp3[:, M:]).all() and not has3[:, M:].any()
    assert torch.equal(em_map(lp3)[:, :M], em_map(lp))
    # Draws are keyed by (scan, label, proposal), not by the padded sizes.
    assert torch.equal(em_sample(lp3, 3, seed=9)[:, :M], em_sample(lp, 3, seed=9))


# ------------------------------------------------------------------ MAP

@pytest.mark.parametrize("seed", range(4))
def test_map_is_argmax_of_reference(seed):
    batch = make_batch(10, 80, 4, seed=100 + seed, dtype=torch.float32)
    lp, _ = em_posterior(**batch)
    ref, _ = posterior_ref(batch)
    picks = em_map(lp).numpy()
    ref_picks = em_map_ref(ref)
    assert np.array_equal(picks < 0, ref_picks < 0)
    differ = picks != ref_picks
    # Only where the reference's top two are within float32 rounding may they differ.
    for b, m in zip(*np.nonzero(differ)):
        assert ref[b, m, ref_picks[b, m]] - ref[b, m, picks[b, m]] < 1e-5
    assert differ.sum() <= 1
    assert np.array_equal(picks, em_map_ref(lp.numpy()))


def test_map_ties_nan_and_inf():
    inf, nan = float("inf"), float("nan")
    lp = torch.tensor([[[-1.0, -0.5, -0.5, -2.0],
                        [nan, -inf, -inf, nan],
                        [nan, -3.0, nan, -inf],
                        [-inf, inf, inf, 0.0]]])
    assert em_map(lp).tolist() == [[1, -1, 1, 1]]


# ------------------------------------------------------------------ sampling

def test_sample_matches_gumbel_reference():
    batch = make_batch(12, 90, 4, seed=7)
    lp, _ = em_posterior(**batch)
    for seed, offset, k in [(0, 0, 1), (1, 5, 2), (2**63 - 1, -3, 4), (3, 1, 9), (4, 0, 30),
                            (-17, 2**40, 200)]:
        got = em_sample(lp, k, seed=seed, offset=offset)
        assert torch.equal(got, torch.from_numpy(em_sample_ref(lp.numpy(), k, seed, offset)))


def test_sample_frequencies_match_posterior():
    # One label, many scans: each scan is an independent draw (fixed seed: not flaky).
    probs = np.array([0.4, 0.25, 0.15, 0.1, 0.06, 0.04])
    n = 20000
    lp = torch.from_numpy(np.log(probs)).float().expand(n, 1, -1).contiguous()
    picks = em_sample(lp, 2, seed=1234).numpy()
    first = np.bincount(picks[:, 0, 0], minlength=6)
    assert chisquare(first, probs * n).pvalue > 1e-3
    # Second draw without replacement: P(second = j) = sum_i p_i p_j / (1 - p_i).
    second_p = np.array([sum(probs[i] * probs[j] / (1 - probs[i]) for i in range(6) if i != j)
                         for j in range(6)])
    second = np.bincount(picks[:, 0, 1], minlength=6)
    assert chisquare(second, second_p * n).pvalue > 1e-3
    assert (picks[:, 0, 0] != picks[:, 0, 1]).all()
    # A wrong distribution is rejected by the same test (the test can fail).
    assert chisquare(first, np.full(6, n / 6)).pvalue < 1e-6


def test_sample_k_exceeds_admissible_pads_with_minus_one():
    lp = torch.log(torch.tensor([[[0.5, 0.0, 0.3, 0.2, 0.0]]]))
    picks = em_sample(lp, 5, seed=3)[0, 0].tolist()
    assert sorted(picks[:3]) == [0, 2, 3] and picks[3:] == [-1, -1]


def test_sample_reproducible_and_offset_changes_draws():
    batch = make_batch(50, 40, 3, seed=2, fill_counts=True)
    lp, _ = em_posterior(**batch)
    a = em_sample(lp, 2, seed=5, offset=0)
    assert torch.equal(a, em_sample(lp, 2, seed=5, offset=0))
    assert not torch.equal(a, em_sample(lp, 2, seed=5, offset=1))
    assert not torch.equal(a, em_sample(lp, 2, seed=6, offset=0))
    assert torch.equal(em_sample(lp.float(), 2, seed=5), em_sample(lp.float(), 2, seed=5))


def test_every_weak_label_gets_its_own_pick():
    # Three nodules at z = 10, 30, 50 and three weak labels on those slices: the public code
    # only produced a box for the first label; here each label picks its own nodule.
    proposals = torch.tensor([[[2.0, 10.0, 40, 40, 6],
                               [2.0, 30.0, 60, 50, 8],
                               [2.0, 50.0, 20, 70, 5],
                               [-1.0, 31.0, 90, 90, 4]]])
    args = (torch.tensor([4]), torch.tensor([[50.0, 10.0, 30.0]]), torch.tensor([[0, 0, 0]]),
            torch.tensor([3]), None)
    lp, has = em_posterior(proposals, *args, z_window=5.0)
    assert has.all()
    assert em_map(lp).tolist() == [[2, 0, 1]]
    pb = pseudo_boxes(proposals, em_map(lp), lp)
    assert pb.boxes.tolist() == proposals[0, [0, 1, 2], 1:5].tolist()
    assert pb.label.tolist() == [1, 2, 0] and pb.scan.tolist() == [0, 0, 0]
    draws = em_sample(lp, 2, seed=0)
    assert draws[0, 0, 1] == -1 and draws[0, 1, 1] == -1  # labels with one admissible proposal
    assert set(pseudo_boxes(proposals, draws).boxes[:, 0].tolist()) >= {10.0, 30.0, 50.0}


# ------------------------------------------------------------------ pseudo boxes

def test_pseudo_boxes_weights_merge_and_split():
    proposals = torch.arange(2 * 4 * 5, dtype=torch.float64).reshape(2, 4, 5)
    picks = torch.tensor([[[1, 3], [1, -1]], [[-1, -1], [0, 2]]])
    lp = torch.full((2, 2, 4), -1.0, dtype=torch.float64)
    lp[0, 1, 1] = -0.1
    merged = pseudo_boxes(proposals, picks, lp)
    assert merged.scan.tolist() == [0, 0, 1, 1]
    assert merged.label.tolist() == [0, 0, 1, 1]
    assert merged.boxes.tolist() == proposals[[0, 0, 1, 1], [1, 3, 0, 2], 1:5].tolist()
    np.testing.assert_allclose(merged.weight.numpy(), np.exp([-0.1, -1, -1, -1]))
    raw = pseudo_boxes(proposals, picks, merge_duplicates=False)
    assert raw.scan.tolist() == [0, 0, 0, 1, 1] and raw.label.tolist() == [0, 0, 1, 1, 1]
    assert (raw.weight == 1).all()
    per_scan = merged.per_scan(3)
    assert [len(b) for b, _ in per_scan] == [2, 2, 0]
    with pytest.raises(ValueError, match="picks"):
        pseudo_boxes(proposals, picks.float())


def test_pseudo_boxes_without_picks():
    proposals = torch.rand(3, 4, 5)
    for picks in (torch.full((3, 2), -1), torch.empty(3, 2, 0, dtype=torch.long)):
        pb = pseudo_boxes(proposals, picks, torch.zeros(3, 2, 4))
        assert pb.boxes.shape == (0, 4) and pb.scan.numel() == pb.label.numel() == pb.weight.numel() == 0
        assert [len(b) for b, _ in pb.per_scan(3)] == [0, 0, 0]
    with pytest.raises(ValueError, match="picks"):
        pseudo_boxes(proposals, torch.full((3, 2), 4))
    with pytest.raises(ValueError, match="log_posterior"):
        pseudo_boxes(proposals, torch.zeros(3, 2, dtype=torch.long), torch.zeros(3, 2, 5))


# ------------------------------------------------------------------ bad input

def good_args():
    return make_batch(2, 6, 3, seed=1, fill_counts=True)


@pytest.mark.parametrize("change,match", [
    (dict(proposals=torch.zeros(2, 6, 4)), "proposals"),
    (dict(proposals=torch.zeros(2, 6, 5, dtype=torch.long)), "proposals"),
    (dict(num_proposals=torch.tensor([6])), "num_proposals"),
    (dict(num_proposals=torch.tensor([6.0, 1.0])), "num_proposals"),
    (dict(num_proposals=torch.tensor([7, 1])), "num_proposals"),
    (dict(num_proposals=torch.tensor([-1, 1])), "num_proposals"),
    (dict(weak_z=torch.zeros(3, 3)), "weak_z"),
    (dict(weak_z=torch.zeros(2, 3, dtype=torch.long)), "weak_z"),
    (dict(weak_lobe=torch.zeros(2, 2, dtype=torch.long)), "weak_lobe"),
    (dict(weak_lobe=torch.zeros(2, 3)), "weak_lobe"),
    (dict(weak_lobe=torch.full((2, 3), 6)), "weak_lobe"),
    (dict(num_weak=torch.tensor([4, 0])), "num_weak"),
    (dict(num_weak=torch.tensor([[1, 0]])), "num_weak"),
    (dict(lobe_log_probs=torch.zeros(2, 5, 6)), "lobe_log_probs"),
    (dict(lobe_log_probs=torch.zeros(2, 6, 6, dtype=torch.long)), "lobe_log_probs"),
    (dict(mu=-1.0), "mu"),
    (dict(mu=float("nan")), "mu"),
    (dict(sigma=0.0), "sigma"),
    (dict(sigma=float("inf")), "sigma"),
    (dict(z_window=-1.0), "z_window"),
    (dict(z_window=float("nan")), "z_window"),
])
def test_posterior_bad_input_names_the_argument(change, match):
    args = dict(good_args(), **PARAMS)
    args.update(change)
    with pytest.raises(RuntimeError, match=f"em_posterior: argument '{match}'"):
        em_posterior(**args)


def test_lobe_ids_of_padded_labels_are_not_checked():
    args = good_args()
    args["num_weak"] = torch.tensor([1, 0])
    args["weak_lobe"] = torch.tensor([[0, 99, -4], [77, 77, 77]])
    lp, has = em_posterior(**args)  # no error, and the real label's posterior is right
    ref, ref_has = posterior_ref(args)
    assert torch.equal(has, torch.from_numpy(ref_has)) and has[0, 0]
    assert_log_close(lp, ref, 1e-10)
    assert torch.isneginf(lp[0, 1:]).all() and torch.isneginf(lp[1]).all()


def test_pick_ops_bad_input():
    with pytest.raises(RuntimeError, match="em_map: argument 'log_posterior'"):
        em_map(torch.zeros(3, 4))
    with pytest.raises(RuntimeError, match="em_map: argument 'log_posterior'"):
        em_map(torch.zeros(1, 3, 4, dtype=torch.long))
    with pytest.raises(RuntimeError, match="em_sample: argument 'log_posterior'"):
        em_sample(torch.zeros(3, 4), 1)
    with pytest.raises(RuntimeError, match="em_sample: argument 'k'"):
        em_sample(torch.zeros(1, 3, 4), -1)


# ------------------------------------------------------------------ dtypes, layout

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_compute_in_float32(dtype):
    batch = make_batch(3, 20, 2, seed=4, fill_counts=True, dtype=dtype)
    lp, has = em_posterior(**batch)
    assert lp.dtype == dtype
    as32 = {k: (v.float() if v is not None and v.is_floating_point() else v) for k, v in batch.items()}
    lp32, has32 = em_posterior(**as32)
    assert torch.equal(has, has32) and torch.equal(lp, lp32.to(dtype))
    # ... and against the float64 reference on the rounded inputs: only the output's one
    # rounding to the dtype (2^-11 / 2^-8 relative) and the float32 arithmetic separate them
    ref, ref_has = posterior_ref(batch)
    got, finite = lp.double().numpy(), np.isfinite(ref)
    assert np.array_equal(has.numpy(), ref_has) and np.array_equal(np.isneginf(got), ~finite) and finite.any()
    eps = {torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8}[dtype]
    np.testing.assert_allclose(got[finite], ref[finite], rtol=eps, atol=2e-4)
    assert torch.equal(em_map(lp), em_map(lp.float()))
    assert torch.equal(em_sample(lp, 2, seed=1), em_sample(lp.float(), 2, seed=1))


def test_non_contiguous_and_mixed_dtypes():
    batch = make_batch(4, 30, 3, seed=8)
    lp, has = em_posterior(**batch)
    nc = dict(batch)
    nc["proposals"] = batch["proposals"].transpose(0, 1).contiguous().transpose(0, 1)
    nc["weak_z"] = batch["weak_z"].float()  # converted to the proposals' dtype
    nc["num_proposals"] = batch["num_proposals"].int()
    nc["num_weak"] = batch["num_weak"].to(torch.int16)
    lp2, has2 = em_posterior(**nc)
    assert not nc["proposals"].is_contiguous()
    assert torch.equal(has, has2)
    assert torch.allclose(lp2, lp, atol=1e-4)
    lpt = lp.transpose(1, 2).contiguous().transpose(1, 2)
    assert torch.equal(em_map(lpt), em_map(lp)) and torch.equal(em_sample(lpt, 2), em_sample(lp, 2))


# ------------------------------------------------------------------ CUDA grid emulation

@pytest.mark.parametrize("seed", range(3))
def test_emulated_cuda_grid_matches_cpu(seed):
    B, P, M = [(3, 5, 2), (7, 100, 4), (2, 333, 3)][seed]
    for dtype in (torch.float64, torch.float32):
        batch = make_batch(B, P, M, seed=50 + seed, dtype=dtype)
        lp, has = em_posterior(**batch)
        elp, ehas = torch.ops.deepem._em_posterior_emulated(**batch, **PARAMS)
        assert torch.equal(has, ehas)
        assert torch.equal(torch.isneginf(lp), torch.isneginf(elp))
        tol = 1e-12 if dtype == torch.float64 else 1e-5
        assert torch.allclose(elp[has], lp[has], atol=tol, rtol=0)
        assert torch.equal(torch.ops.deepem._em_map_emulated(lp), em_map(lp))
        for k in (1, 2, 7, 9, 20, P + 3):  # streamed bounds (k <= 8), partitioned, all
            assert torch.equal(torch.ops.deepem._em_sample_emulated(lp, k, seed, 4),
                               em_sample(lp, k, seed=seed, offset=4))


def test_emulated_map_ties_across_lanes():
    lp = torch.full((1, 1, 100), -5.0)
    lp[0, 0, [33, 65, 97]] = -1.0  # lanes 1, 1, 1 and strides; lowest index must win
    lp[0, 0, 2] = float("nan")
    assert torch.ops.deepem._em_map_emulated(lp).item() == 33 == em_map(lp).item()


# ------------------------------------------------------------------ opcheck

def test_opcheck():
    batch = make_batch(3, 12, 2, seed=9)
    args = (batch["proposals"], batch["num_proposals"], batch["weak_z"], batch["weak_lobe"],
            batch["num_weak"], batch["lobe_log_probs"], DEFAULT_MU, DEFAULT_SIGMA, DEFAULT_Z_WINDOW)
    torch.library.opcheck(torch.ops.deepem.em_posterior.default, args)
    torch.library.opcheck(torch.ops.deepem._em_posterior_emulated.default, args)
    torch.library.opcheck(torch.ops.deepem.em_posterior.default, args[:5] + (None,) + args[6:])
    lp, _ = em_posterior(*args)
    torch.library.opcheck(torch.ops.deepem.em_map.default, (lp,))
    torch.library.opcheck(torch.ops.deepem._em_map_emulated.default, (lp,))
    torch.library.opcheck(torch.ops.deepem.em_sample.default, (lp, 2, 7, 1))
    torch.library.opcheck(torch.ops.deepem._em_sample_emulated.default, (lp, 2, 7, 1))


# ------------------------------------------------------------------ CUDA

def _to(batch, device):
    return {k: (v.to(device) if v is not None else None) for k, v in batch.items()}


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_cpu(dtype):
    batch = make_batch(40, 300, 4, seed=31, dtype=dtype)
    lp, has = em_posterior(**batch)
    glp, ghas = em_posterior(**_to(batch, "cuda"))
    assert torch.equal(ghas.cpu(), has)
    assert torch.equal(torch.isneginf(glp.cpu()), torch.isneginf(lp))
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    assert torch.allclose(glp.cpu()[has], lp[has], atol=tol, rtol=0)
    # The same log posterior gives the same picks on both devices, bit for bit.
    assert torch.equal(em_map(lp.cuda()).cpu(), em_map(lp))
    for k in (1, 2, 5, 400):
        assert torch.equal(em_sample(lp.cuda(), k, seed=3, offset=2).cpu(),
                           em_sample(lp, k, seed=3, offset=2))
    # And the CUDA kernels match the CPU emulation of their grid.
    elp, _ = torch.ops.deepem._em_posterior_emulated(**batch, **PARAMS)
    assert torch.allclose(glp.cpu()[has], elp[has], atol=tol, rtol=0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_edge_cases_and_errors():
    for B, P, M in [(0, 5, 2), (3, 0, 2), (3, 5, 0)]:
        batch = _to(make_batch(B, P, M, seed=0), "cuda")
        lp, has = em_posterior(**batch)
        assert lp.shape == (B, M, P) and (em_map(lp) == -1).all() and (em_sample(lp, 2) == -1).all()
    args = _to(good_args(), "cuda")
    args["num_proposals"] = torch.tensor([7, 1], device="cuda")
    with pytest.raises(RuntimeError, match="num_proposals"):
        em_posterior(**args)
    args = _to(good_args(), "cuda")
    args["weak_z"] = args["weak_z"].cpu()
    with pytest.raises(RuntimeError, match="weak_z"):
        em_posterior(**args)

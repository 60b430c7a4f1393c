"""em_posterior's record terms (a label's recorded diameter and texture) against a float64
reference written from the formula, the CUDA grid's emulation, and bad input."""
import numpy as np
import pytest
import torch
from scipy.special import logsumexp

from deepem.ops import em_posterior
from reference_estep import log_weights
from test_estep import PARAMS, assert_log_close, make_batch


def add_record(batch, seed, textures=3, p_size=0.6, p_texture=0.6):
    """Each real label gets a diameter (else NaN) and a texture id (else -1) at random, and
    every proposal log p(texture | proposal); padded slots hold garbage."""
    g = torch.Generator().manual_seed(1000 + seed)
    B, M = batch["weak_z"].shape
    P = batch["proposals"].shape[1]
    dtype = batch["proposals"].dtype
    diameter = (3 + 20 * torch.rand(B, M, generator=g, dtype=torch.float64)).to(dtype)
    diameter[torch.rand(B, M, generator=g) > p_size] = float("nan")
    texture = torch.randint(0, textures, (B, M), generator=g)
    texture[torch.rand(B, M, generator=g) > p_texture] = -1
    tex_lp = torch.log_softmax(torch.randn(B, P, textures, generator=g, dtype=torch.float64) * 2, -1).to(dtype)
    for b in range(B):
        diameter[b, batch["num_weak"][b]:] = -5.0  # padding: never checked, never read
        texture[b, batch["num_weak"][b]:] = 99
        tex_lp[b, batch["num_proposals"][b]:] = float("nan")
    return dict(batch, weak_diameter=diameter, weak_texture=texture, texture_log_probs=tex_lp)


def record_ref(batch, size_sigma, texture_weight):
    """The paper's log weight + the record terms, normalised per label (float64 numpy)."""
    f = lambda t: None if t is None else t.double().numpy()  # noqa: E731
    props, lobe_lp = f(batch["proposals"]), f(batch["lobe_log_probs"])
    diam, tex_lp = f(batch.get("weak_diameter")), f(batch.get("texture_log_probs"))
    texture = batch.get("weak_texture")
    B, P, _ = props.shape
    M = batch["weak_z"].shape[1]
    out, has = np.full((B, M, P), -np.inf), np.zeros((B, M), bool)
    for b in range(B):
        n = int(batch["num_proposals"][b])
        for m in range(int(batch["num_weak"][b])):
            lobe = 0.0 if lobe_lp is None else lobe_lp[b, :n, int(batch["weak_lobe"][b, m])]
            w = log_weights(props[b, :n, 0], props[b, :n, 1], float(batch["weak_z"][b, m]), lobe, PARAMS["mu"],
                            PARAMS["sigma"], PARAMS["z_window"])
            with np.errstate(invalid="ignore", divide="ignore"):
                if diam is not None and not np.isnan(diam[b, m]):
                    w = w - (np.log(props[b, :n, 4]) - np.log(diam[b, m])) ** 2 / (2 * size_sigma ** 2)
                if texture is not None and int(texture[b, m]) >= 0:
                    w = w + texture_weight * tex_lp[b, :n, int(texture[b, m])]
            w = np.where(np.isfinite(w), w, -np.inf)
            ok = np.isfinite(w)
            if ok.any():
                out[b, m, :n] = np.where(ok, w - logsumexp(w[ok]), -np.inf)
                has[b, m] = True
    return out, has


CASES = [(1, 1, 1), (3, 7, 2), (5, 40, 4), (8, 130, 3), (2, 300, 5)]


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("with_lobe", [True, False])
@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-10), (torch.float32, 2e-4)])
def test_record_terms_match_reference(case, with_lobe, dtype, atol):
    B, P, M = CASES[case]
    batch = add_record(make_batch(B, P, M, seed=case, with_lobe=with_lobe, dtype=dtype), case)
    for size_sigma, texture_weight in ((0.5, 1.0), (0.25, 0.1)):
        lp, has = em_posterior(**batch, size_sigma=size_sigma, texture_weight=texture_weight)
        ref, ref_has = record_ref(batch, size_sigma, texture_weight)
        assert torch.equal(has, torch.from_numpy(ref_has))
        assert_log_close(lp, ref, atol)


def test_only_the_size_or_only_the_texture():
    batch = add_record(make_batch(4, 50, 3, seed=3), 3)
    size_only = {k: v for k, v in batch.items() if k not in ("weak_texture", "texture_log_probs")}
    lp, _ = em_posterior(**size_only, size_sigma=0.6)
    assert_log_close(lp, record_ref(size_only, 0.6, 1.0)[0], 1e-10)
    tex_only = {k: v for k, v in batch.items() if k != "weak_diameter"}
    lp, _ = em_posterior(**tex_only, texture_weight=0.3)
    assert_log_close(lp, record_ref(tex_only, 1.0, 0.3)[0], 1e-10)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_labels_without_a_record_keep_the_papers_posterior_bit_for_bit(dtype):
    base = make_batch(6, 80, 4, seed=11, dtype=dtype, fill_counts=True)
    batch = add_record(base, 11, p_size=0.4, p_texture=0.4)
    paper, paper_has = em_posterior(**base)
    lp, has = em_posterior(**batch, size_sigma=0.4, texture_weight=0.5)
    without = torch.isnan(batch["weak_diameter"]) & (batch["weak_texture"] < 0)
    with_any = ~without
    assert without.sum() > 2 and with_any.sum() > 2  # both kinds in the same batch
    assert torch.equal(lp[without], paper[without]) and torch.equal(has[without], paper_has[without])
    assert not torch.equal(lp[with_any], paper[with_any])
    # a batch where no label has a field gives the paper's output exactly
    none = dict(batch, weak_diameter=torch.full_like(batch["weak_diameter"], float("nan")),
                weak_texture=torch.full_like(batch["weak_texture"], -1))
    lp0, has0 = em_posterior(**none)
    assert torch.equal(lp0, paper) and torch.equal(has0, paper_has)


def test_size_term_literal_values():
    # Three proposals alike but for their diameter (4, 8, 16 mm); the label records 8 mm.
    props = torch.tensor([[[0.0, 10.0, 5.0, 5.0, 4.0], [0.0, 10.0, 6.0, 6.0, 8.0], [0.0, 10.0, 7.0, 7.0, 16.0]]],
                         dtype=torch.float64)
    args = dict(proposals=props, num_proposals=torch.tensor([3]), weak_z=torch.tensor([[10.0]], dtype=torch.float64),
                weak_lobe=torch.zeros(1, 1, dtype=torch.long), num_weak=torch.tensor([1]))
    lp, _ = em_posterior(**args, weak_diameter=torch.tensor([[8.0]], dtype=torch.float64), size_sigma=0.5)
    # weights exp(-(ln 2)^2 / 0.5) : 1 : exp(-(ln 2)^2 / 0.5)
    e = np.exp(-np.log(2.0) ** 2 / 0.5)
    np.testing.assert_allclose(lp[0, 0].exp().numpy(), [e / (1 + 2 * e), 1 / (1 + 2 * e), e / (1 + 2 * e)], rtol=1e-12)
    # texture: log p(t | H) = log [0.5, 0.25, 0.25] at weight 2 -> weights 0.25 : 0.0625 : 0.0625
    tex = torch.log(torch.tensor([[[0.5, 0.5], [0.25, 0.75], [0.25, 0.75]]], dtype=torch.float64))
    lp, _ = em_posterior(**args, weak_texture=torch.tensor([[0]]), texture_log_probs=tex, texture_weight=2.0)
    np.testing.assert_allclose(lp[0, 0].exp().numpy(), [2 / 3, 1 / 6, 1 / 6], rtol=1e-12)


def test_a_proposal_without_a_diameter_is_no_candidate_for_a_sized_label():
    props = torch.tensor([[[1.0, 10.0, 5.0, 5.0, 0.0], [1.0, 10.0, 6.0, 6.0, float("nan")],
                           [1.0, 10.0, 7.0, 7.0, 6.0]]], dtype=torch.float64)
    args = dict(proposals=props, num_proposals=torch.tensor([3]),
                weak_z=torch.tensor([[10.0, 10.0]], dtype=torch.float64), weak_lobe=torch.zeros(1, 2, dtype=torch.long),
                num_weak=torch.tensor([2]), weak_diameter=torch.tensor([[6.0, float("nan")]], dtype=torch.float64))
    lp, has = em_posterior(**args)
    assert has.all()
    assert torch.isneginf(lp[0, 0, :2]).all() and lp[0, 0, 2] == 0.0  # the sized label: only d = 6
    assert torch.isfinite(lp[0, 1]).all()  # the unsized label: all three, as the paper


def test_size_term_over_the_whole_float_range():
    # The CPU kernel takes float32 logs of the proposals' diameters with its own vectorised
    # log; every kind of float goes through it: normal values of all magnitudes, subnormals,
    # 0, negative, inf, NaN (the spread is wide so that extreme sizes keep finite weights).
    g = torch.Generator().manual_seed(5)
    normal = torch.exp(torch.empty(400, dtype=torch.float64).uniform_(-87.0, 88.0, generator=g))
    near_one = 1.0 + torch.empty(200, dtype=torch.float64).uniform_(-0.3, 0.45, generator=g)
    edge = torch.tensor([1e-45, 1e-40, 1.17549435e-38, 1.0, 2.0 ** 0.5, 0.70710677, 3.4028235e38,
                         0.0, -0.0, -3.0, float("inf"), float("-inf"), float("nan")], dtype=torch.float64)
    d = torch.cat([normal, near_one, edge]).float()
    P = d.numel()
    props = torch.zeros(1, P, 5)
    props[0, :, 1] = 10.0
    props[0, :, 4] = d
    batch = dict(proposals=props, num_proposals=torch.tensor([P]), weak_z=torch.tensor([[10.0]]),
                 weak_lobe=torch.zeros(1, 1, dtype=torch.long), num_weak=torch.tensor([1]), lobe_log_probs=None,
                 weak_diameter=torch.tensor([[8.0]]))
    lp, has = em_posterior(**batch, size_sigma=40.0)
    ref, _ = record_ref(batch, 40.0, 1.0)
    assert has.all()
    assert_log_close(lp, ref, 1e-4)
    finite = torch.isfinite(d) & (d > 0)
    assert torch.equal(torch.isfinite(lp[0, 0]), finite)  # 0, negative, inf, NaN: no candidate


@pytest.mark.parametrize("case", range(3))
def test_emulated_cuda_grid_matches_cpu_with_records(case):
    B, P, M = [(3, 5, 2), (7, 100, 4), (2, 333, 3)][case]
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        batch = add_record(make_batch(B, P, M, seed=70 + case, dtype=dtype), 70 + case)
        lp, has = em_posterior(**batch, size_sigma=0.5, texture_weight=0.7)
        elp, ehas = torch.ops.deepem._em_posterior_emulated(**batch, **PARAMS, size_sigma=0.5, texture_weight=0.7)
        assert torch.equal(has, ehas) and torch.equal(torch.isneginf(lp), torch.isneginf(elp))
        assert torch.allclose(elp[has], lp[has], atol=tol, rtol=0)


def test_half_inputs_compute_in_float32_with_records():
    batch = add_record(make_batch(3, 20, 2, seed=4, fill_counts=True, dtype=torch.float16), 4)
    lp, has = em_posterior(**batch, size_sigma=0.5)
    as32 = {k: (v.float() if v is not None and v.is_floating_point() else v) for k, v in batch.items()}
    lp32, has32 = em_posterior(**as32, size_sigma=0.5)
    assert lp.dtype == torch.float16 and torch.equal(has, has32) and torch.equal(lp, lp32.half())


def good_record_args():
    return add_record(make_batch(2, 6, 3, seed=1, fill_counts=True), 1)


@pytest.mark.parametrize("change,match", [
    (dict(weak_diameter=torch.ones(2, 2)), "weak_diameter"),
    (dict(weak_diameter=torch.ones(2, 3, dtype=torch.long)), "weak_diameter"),
    (dict(weak_diameter=torch.tensor([[5.0, -1.0, 5.0], [5.0, 5.0, 5.0]])), "weak_diameter"),
    (dict(weak_diameter=torch.tensor([[5.0, 0.0, 5.0], [5.0, 5.0, 5.0]])), "weak_diameter"),
    (dict(weak_diameter=torch.tensor([[5.0, float("inf"), 5.0], [5.0, 5.0, 5.0]])), "weak_diameter"),
    (dict(size_sigma=0.0), "size_sigma"),
    (dict(size_sigma=float("nan")), "size_sigma"),
    (dict(weak_texture=torch.zeros(2, 2, dtype=torch.long)), "weak_texture"),
    (dict(weak_texture=torch.zeros(2, 3)), "weak_texture"),
    (dict(weak_texture=torch.full((2, 3), 3)), "weak_texture"),
    (dict(weak_texture=torch.full((2, 3), -2)), "weak_texture"),
    (dict(texture_log_probs=torch.zeros(2, 5, 3)), "texture_log_probs"),
    (dict(texture_weight=0.0), "texture_weight"),
    (dict(texture_weight=float("inf")), "texture_weight"),
])
def test_record_bad_input_names_the_argument(change, match):
    args = dict(good_record_args(), **PARAMS)
    args.update(change)
    with pytest.raises(RuntimeError, match=f"em_posterior: argument '{match}'"):
        em_posterior(**args)


def test_texture_needs_its_log_probs_and_padding_is_not_checked():
    args = good_record_args()
    with pytest.raises(RuntimeError, match="'weak_texture' and 'texture_log_probs' go together"):
        em_posterior(**{k: v for k, v in args.items() if k != "texture_log_probs"})
    args["num_weak"] = torch.tensor([1, 0])
    args["weak_diameter"] = torch.tensor([[6.0, -3.0, 0.0], [-1.0, -1.0, -1.0]])
    args["weak_texture"] = torch.tensor([[1, 50, -9], [77, 77, 77]])
    lp, has = em_posterior(**args)
    assert_log_close(lp, record_ref(args, 1.0, 1.0)[0], 1e-10)


def test_opcheck_with_records():
    b = add_record(make_batch(3, 12, 2, seed=9), 9)
    args = (b["proposals"], b["num_proposals"], b["weak_z"], b["weak_lobe"], b["num_weak"], b["lobe_log_probs"],
            PARAMS["mu"], PARAMS["sigma"], PARAMS["z_window"], b["weak_diameter"], 0.5, b["weak_texture"],
            b["texture_log_probs"], 0.7)
    torch.library.opcheck(torch.ops.deepem.em_posterior.default, args)
    torch.library.opcheck(torch.ops.deepem._em_posterior_emulated.default, args)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_cpu_with_records(dtype):
    batch = add_record(make_batch(40, 300, 4, seed=31, dtype=dtype), 31)
    lp, has = em_posterior(**batch, size_sigma=0.5, texture_weight=0.3)
    cuda = {k: (v.cuda() if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
    glp, ghas = em_posterior(**cuda, size_sigma=0.5, texture_weight=0.3)
    assert torch.equal(ghas.cpu(), has) and torch.equal(torch.isneginf(glp.cpu()), torch.isneginf(lp))
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    assert torch.allclose(glp.cpu()[has], lp[has], atol=tol, rtol=0)
    elp, _ = torch.ops.deepem._em_posterior_emulated(**batch, **PARAMS, size_sigma=0.5, texture_weight=0.3)
    assert torch.allclose(glp.cpu()[has], elp[has], atol=tol, rtol=0)

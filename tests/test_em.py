"""deepem.em: the E-step's picks on planted proposals (every weak label its own, MAP and
sampling), the lobe term, labels and scans without candidates, and EM runs on tiny data end to
end: the CSV, the E-step profile line, the checkpoint's EM state, exact resume mid-EM, a
2-process gloo run against 1 process, and that the weak scans' true boxes are never read."""
import csv
import json
import math
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from deepem.em import LobeModel, em_fit, run_estep
from deepem.em.estep import CSV_COLUMNS, posterior_and_picks
from deepem.em.loop import sample_scans
from deepem.model import Res18
from deepem.train import checkpoint, distributed, fit, load_config
from synthetic import make_preprocessed, write_weak

TINY = ["model.width=0.125", "data.crop_size=32", "optim.batch_size=2", "optim.steps_per_epoch=2",
        "data.workers=0", "loss.num_neg=50", "run.progress=false", "run.log_every=1", "optim.lr=0.01",
        "run.threads=1", "detect.tile=48", "detect.margin=8"]
# 3 weak scans, 2 of them re-estimated per epoch (ceil(0.5 * 3)): scans not sampled keep their
# pseudo boxes, and 2 ranks each detect one scan.
EM = ["em.fraction=0.5", "em.weak_steps=2", "em.lobe_steps=5"]
EPOCHS = 2
SHAPE = (64, 48, 48)  # planted scans: (z, y, x) voxels, identity geometry (voxel = mm)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def expected_posterior(props, weak_z, lobe_prob=None, mu=1.63, sigma=2.38, z_window=13.0):
    """The paper's posterior of one weak label over proposals [P, 5] (logit, z, y, x, d), in
    numpy: sigmoid(logit) x half-Gaussian of max(|dz| - mu, 0) x p(lobe), zero outside the
    window, normalised."""
    props = np.asarray(props, dtype=np.float64)
    dz = np.abs(props[:, 1] - weak_z)
    t = np.maximum(dz - mu, 0.0)
    w = sigmoid(props[:, 0]) * np.exp(-t ** 2 / (2 * sigma ** 2))
    if lobe_prob is not None:
        w = w * lobe_prob
    w = np.where(dz <= z_window, w, 0.0)
    return w / w.sum() if w.sum() > 0 else w


def em_config(root, more=()):
    return load_config(overrides=TINY + EM + ["data.root=" + str(root)] + list(more))


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ---- the E-step on planted proposals (no network) ------------------------------------------

@pytest.fixture
def planted(tmp_path):
    """Scan 'two': weak labels at z 10 and z 40 (lobe 0); each label has one dominant proposal
    (z on the label, high logit: posterior > 0.999) and one weak one in its window; a decoy with
    the highest logit lies outside both windows. Scan 'one': one label at z 30, two proposals."""
    write_weak(tmp_path, "two", [[10, 0], [40, 0]], SHAPE)
    write_weak(tmp_path, "one", [[30, 0]], SHAPE)
    two = torch.tensor([[1.0, 21.0, 20, 20, 6],  # label 0, second (|dz| 11)
                        [4.0, 39.5, 30, 12, 8],  # label 1, dominant
                        [6.0, 25.0, 24, 24, 5],  # decoy: |dz| 15 from both labels
                        [4.0, 10.0, 12, 30, 7],  # label 0, dominant
                        [1.0, 29.0, 36, 36, 6]])  # label 1, second
    one = torch.tensor([[-6.0, 30.0, 10, 10, 5],
                        [3.0, 31.0, 40, 40, 9]])
    return str(tmp_path), {"two": two, "one": one}


@pytest.mark.parametrize("method", ["map", "sample"])
def test_every_weak_label_gets_its_own_pick(planted, method):
    """The public code's defect: only the first weak label of a scan produced a box (MAP), or
    the second label got the first one's next-ranked box (sampling). Here each label's picks
    are its own: MAP its dominant proposal, sampling k draws (dominant, then the other one in
    its window), with the posterior of the paper's formula."""
    root, proposals = planted
    k = 2
    config = em_config(root, ["em.method=" + method, "em.k=%d" % k, "em.use_lobe=false"])
    result = posterior_and_picks(root, ["two", "one"], proposals, LobeModel(), config, epoch=0)
    weak = {"two": [10.0, 40.0], "one": [30.0]}
    dominant = {("two", 0): 3, ("two", 1): 1, ("one", 0): 1}
    second = {("two", 0): 0, ("two", 1): 4, ("one", 0): 0}
    draws = 1 if method == "map" else k
    assert [c for c in CSV_COLUMNS] == ["seriesuid", "weak_index", "draw", "coordX", "coordY", "coordZ",
                                        "diameter_mm", "posterior", "weak_coordZ", "lobe"]
    assert len(result.rows) == 3 * draws and result.profile["labels_without_candidates"] == 0
    for uid, m, d, x, y, z, diam, post, weak_z, lobe in result.rows:
        props = proposals[uid].numpy()
        j = dominant[uid, m] if d == 0 else second[uid, m]  # each label has 2 admissible proposals
        assert (z, y, x, diam) == pytest.approx(tuple(props[j, 1:5].astype(float)), abs=1e-4), (uid, m, d)
        assert post == pytest.approx(expected_posterior(props, weak[uid][m])[j], rel=1e-4)
        assert weak_z == pytest.approx(weak[uid][m]) and lobe == 0
    keys = sorted((r[0], r[1], r[2]) for r in result.rows)
    assert keys == sorted((u, m, d) for u, m in dominant for d in range(draws))
    # two labels on one scan give two different boxes (merged pseudo boxes: one per proposal)
    boxes = {tuple(b) for b in result.boxes["two"].tolist()}
    assert {tuple(proposals["two"][j, 1:5].tolist()) for j in (3, 1)} <= boxes
    assert len(boxes) == 2 * draws
    assert len(result.lobe_feats) == len(result.lobe_labels) == len(result.rows)


def test_sampling_draws_follow_the_posterior_per_label(tmp_path):
    """With flat posteriors the draws vary with the epoch, but each label only ever draws from
    its own window, k distinct proposals per label."""
    write_weak(tmp_path, "flat", [[10, 0], [45, 0]], SHAPE)
    zs = [8, 9, 10, 11, 12, 43, 44, 45, 46, 47]
    props = torch.tensor([[0.0, z, 20, 20, 5] for z in zs])
    config = em_config(tmp_path, ["em.method=sample", "em.k=3", "em.use_lobe=false"])
    seen = set()
    for epoch in range(6):
        result = posterior_and_picks(str(tmp_path), ["flat"], {"flat": props}, LobeModel(), config, epoch)
        assert len(result.rows) == 6
        for m in (0, 1):
            picked = [r[5] for r in result.rows if r[1] == m]
            assert len(set(picked)) == 3
            assert all(abs(z - (10, 45)[m]) <= 2 for z in picked)
            seen.add((m, tuple(picked)))
    assert len(seen) > 2  # not the same draws every epoch


# ---- the lobe term ---------------------------------------------------------------------------

def test_lobe_term_changes_the_pick_when_z_is_ambiguous(tmp_path):
    """Two proposals on the weak slice, one in each x half (toy lobes 0 | 1); the left one has
    the slightly higher logit. z alone picks it; a lobe model trained on 'x half = lobe' moves
    the pick of a lobe-1 label to the right one, and leaves a lobe-0 label's pick alone."""
    write_weak(tmp_path, "amb", [[30, 1], [30, 0]], SHAPE)
    props = torch.tensor([[2.0, 30.0, 24, 12, 6],  # x half 0
                          [1.9, 30.0, 24, 36, 6]])  # x half 1
    torch.manual_seed(0)
    lobe = LobeModel()
    feats = torch.rand(200, 3)
    assert lobe.fit(feats, (feats[:, 2] >= 0.5).long(), lr=1.0, steps=50) < 0.3
    p_lobe = lobe.log_probs(props[:, 1:4] / torch.tensor(SHAPE, dtype=torch.float32)).exp().detach().numpy()
    assert p_lobe[1, 1] > 2 * p_lobe[0, 1]  # the trained model prefers the right half for lobe 1

    def picks(use_lobe):
        config = em_config(tmp_path, ["em.method=map", "em.use_lobe=%s" % str(use_lobe).lower()])
        rows = posterior_and_picks(str(tmp_path), ["amb"], {"amb": props}, lobe, config, 0).rows
        return {r[1]: (r[3], r[7]) for r in rows}  # weak index -> (coordX, posterior)

    assert picks(False) == {0: (12.0, pytest.approx(expected_posterior(props, 30)[0], rel=1e-4)),
                            1: (12.0, pytest.approx(expected_posterior(props, 30)[0], rel=1e-4))}
    with_lobe = picks(True)
    assert with_lobe[0] == (36.0, pytest.approx(expected_posterior(props, 30, p_lobe[:, 1])[1], rel=1e-4))
    assert with_lobe[1] == (12.0, pytest.approx(expected_posterior(props, 30, p_lobe[:, 0])[0], rel=1e-4))


def test_an_untrained_lobe_model_leaves_the_posterior_alone(planted):
    """Before any pick has trained it, the lobe model is uniform: the first E-step's posterior
    and picks are those without a lobe term (a random start would reweight them by noise)."""
    root, proposals = planted
    lobe = LobeModel()
    feats = torch.rand(7, 3)
    assert torch.allclose(lobe.log_probs(feats).exp(), torch.full((7, 6), 1 / 6))
    rows = {}
    for use_lobe in (True, False):
        config = em_config(root, ["em.method=map", "em.use_lobe=%s" % str(use_lobe).lower()])
        rows[use_lobe] = posterior_and_picks(root, ["two", "one"], proposals, lobe, config, epoch=0).rows
    assert [r[:7] for r in rows[True]] == [r[:7] for r in rows[False]]
    assert [r[7] for r in rows[True]] == pytest.approx([r[7] for r in rows[False]], rel=1e-6)


# ---- no candidates -------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["map", "sample"])
def test_labels_and_scans_without_candidates(tmp_path, method):
    write_weak(tmp_path, "half", [[10, 0], [50, 0]], SHAPE)  # proposals near z 10 only
    write_weak(tmp_path, "empty", [[20, 0], [30, 1]], SHAPE)  # no proposals at all
    write_weak(tmp_path, "nolabel", np.zeros((0, 2)), SHAPE)  # proposals, no weak label
    proposals = {"half": torch.tensor([[2.0, 11.0, 20, 20, 6], [1.0, 30.0, 20, 20, 6]]),
                 "empty": torch.zeros(0, 5),
                 "nolabel": torch.tensor([[3.0, 20.0, 20, 20, 6]])}
    config = em_config(tmp_path, ["em.method=" + method, "em.k=2"])
    result = posterior_and_picks(str(tmp_path), ["half", "empty", "nolabel"], proposals, LobeModel(), config, 3)
    assert result.profile == {"labels": 4, "labels_without_candidates": 3, "labels_not_confident": 0}
    assert [(r[0], r[1], r[2], r[5]) for r in result.rows] == [("half", 0, 0, 11.0)]  # one admissible
    assert result.boxes["half"].tolist() == [[11.0, 20.0, 20.0, 6.0]]
    assert result.boxes["empty"].shape == (0, 4) and result.boxes["nolabel"].shape == (0, 4)
    # a batch in which no scan has a proposal
    result = posterior_and_picks(str(tmp_path), ["empty"], proposals, LobeModel(), config, 0)
    assert result.rows == [] and result.profile["labels_without_candidates"] == 2
    assert result.lobe_feats.shape == (0, 3) and result.lobe_labels.shape == (0,)
    assert math.isnan(LobeModel().fit(result.lobe_feats, result.lobe_labels, lr=0.1, steps=3))  # nothing to fit


# ---- tiny EM runs ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """6 scans of 48^3: 2 fully labelled, 1 for validation, 3 weak (toy lobes)."""
    folder = tmp_path_factory.mktemp("em-data")
    uids = make_preprocessed(str(folder), n_scans=6, shape=(48, 48, 48), lobes=True,
                             splits=lambda u: {"full": u[:2], "val": u[2:3], "weak": u[3:]})
    return str(folder), uids[3:]


@pytest.fixture(scope="module")
def init(data, tmp_path_factory):
    """A tiny supervised checkpoint (1 epoch of 2 steps) to start EM from."""
    out = tmp_path_factory.mktemp("sup")
    fit(load_config(overrides=TINY + ["data.root=" + data[0], "run.out=" + str(out), "optim.epochs=1"]))
    return str(out / "last.pt")


def run_em(root, out, init, stop_at=None, resume=None):
    config = em_config(root, ["run.out=" + str(out), "optim.epochs=%d" % EPOCHS])
    return em_fit(config, init=init, resume=resume, stop_at=stop_at)


@pytest.fixture(scope="module")
def whole(data, init, tmp_path_factory):
    """The reference EM run: 2 epochs in one go."""
    out = tmp_path_factory.mktemp("em-whole")
    run_em(data[0], out, init)
    return out


def assert_same_run(a, b):
    wa, wb = checkpoint.load(a / "last.pt"), checkpoint.load(b / "last.pt")
    assert wa["model"].keys() == wb["model"].keys()
    for key in wa["model"]:
        assert torch.equal(wa["model"][key], wb["model"][key]), key
    for key in wa["em"]["lobe"]:
        assert torch.equal(wa["em"]["lobe"][key], wb["em"]["lobe"][key]), key
    assert wa["em"]["boxes"].keys() == wb["em"]["boxes"].keys()
    for uid in wa["em"]["boxes"]:
        assert np.array_equal(wa["em"]["boxes"][uid], wb["em"]["boxes"][uid]), uid
    for epoch in range(EPOCHS):
        name = "pseudo_boxes/epoch_%03d.csv" % epoch
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_em_epochs_write_pseudo_boxes_profile_and_state(data, whole):
    root, weak_uids = data
    weak = {u: np.load(os.path.join(root, u + "_weak.npy")) for u in weak_uids}
    lines = [json.loads(line) for line in open(whole / "metrics.jsonl")]
    esteps = [line for line in lines if line["kind"] == "estep"]
    assert [e["epoch"] for e in esteps] == list(range(EPOCHS))
    latest = {}  # uid -> the last epoch that re-estimated it
    for epoch, e in enumerate(esteps):
        chosen = sample_scans(weak_uids, 0.5, 0, epoch)
        assert len(chosen) == 2
        latest.update({u: epoch for u in chosen})
        for key in ("seconds_detection", "seconds_postprocess", "seconds_posterior_pick"):
            assert e[key] >= 0, key
        assert e["proposals_per_scan"] > 0
        assert e["scans"] == 2 and e["labels"] == sum(len(weak[u]) for u in chosen)
        path = whole / "pseudo_boxes" / ("epoch_%03d.csv" % epoch)
        assert path.read_text().splitlines()[0] == \
            "seriesuid,weak_index,draw,coordX,coordY,coordZ,diameter_mm,posterior,weak_coordZ,lobe"
        rows = read_rows(path)
        assert e["picks"] == len(rows)
        # every label with candidates gets k = 2 draws of its own (untrained: many proposals)
        assert e["labels_without_candidates"] == 0 and len(rows) == 2 * e["labels"]
        assert sorted((r["seriesuid"], int(r["weak_index"]), int(r["draw"])) for r in rows) == \
            sorted((u, m, d) for u in chosen for m in range(len(weak[u])) for d in range(2))
        for r in rows:
            z_m, lobe = weak[r["seriesuid"]][int(r["weak_index"])]
            assert float(r["weak_coordZ"]) == pytest.approx(z_m, abs=1e-3) and int(r["lobe"]) == lobe
            assert abs(float(r["coordZ"]) - z_m) <= 13.0 + 1e-3 and 0 < float(r["posterior"]) <= 1
            assert float(r["diameter_mm"]) > 0
    # the checkpoint's EM state: the lobe model and, per weak scan, the pseudo boxes of its last
    # E-step (identity geometry: (coordZ, coordY, coordX) are grid voxels)
    state = checkpoint.load(whole / "last.pt")
    assert state["epoch"] == EPOCHS
    LobeModel().load_state_dict(state["em"]["lobe"])
    assert set(state["em"]["boxes"]) == set(latest) == set(state["em"]["weights"])
    for uid, epoch in latest.items():
        rows = [r for r in read_rows(whole / "pseudo_boxes" / ("epoch_%03d.csv" % epoch)) if r["seriesuid"] == uid]
        merged = {}  # picks of one proposal (same text) merge into one box with the largest posterior
        for r in rows:
            key = tuple(r[c] for c in ("coordZ", "coordY", "coordX", "diameter_mm"))
            merged[key] = max(merged.get(key, 0.0), float(r["posterior"]))
        expected = sorted([*map(float, key), w] for key, w in merged.items())
        got = sorted([*map(float, b), float(w)] for b, w in zip(state["em"]["boxes"][uid], state["em"]["weights"][uid]))
        assert len(got) == len(expected), uid
        for g, e in zip(got, expected):
            assert g == pytest.approx(e, rel=1e-4, abs=1e-3), uid
    for name in ("config.yaml", "loss.png", "best.pt"):
        assert (whole / name).exists(), name


def test_resume_mid_em_reproduces_the_uninterrupted_run(data, init, whole, tmp_path):
    t = run_em(data[0], tmp_path, init, stop_at=1)
    assert t.epoch == 1 and not (tmp_path / "pseudo_boxes" / "epoch_001.csv").exists()
    t = run_em(data[0], tmp_path, init=None, resume="auto")
    assert t.epoch == EPOCHS
    assert_same_run(whole, tmp_path)


def test_em_without_a_start_is_refused(data, tmp_path):
    """--resume auto on a fresh folder without --init would run EM from random weights."""
    with pytest.raises(FileNotFoundError, match="no init"):
        run_em(data[0], tmp_path, init=None, resume="auto")


def test_resuming_em_from_a_supervised_checkpoint_is_refused_clearly(data, init, tmp_path):
    """A supervised checkpoint has no EM state (lobe model, pseudo boxes): resuming it as EM
    must say so, not fail with a KeyError, and leave the supervised run's folder untouched."""
    sup = tmp_path / "sup"
    shutil.copytree(os.path.dirname(init), sup)
    before = {p: p.read_bytes() for p in sup.rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match="supervised checkpoint.*--init"):
        run_em(data[0], sup, init=None, resume=str(sup / "last.pt"))
    with pytest.raises(ValueError, match="newest checkpoint in .*supervised checkpoint"):
        run_em(data[0], sup, init=None, resume="auto")
    assert {p: p.read_bytes() for p in sup.rglob("*") if p.is_file()} == before


def test_weak_scans_true_boxes_are_never_read(data, init, whole, tmp_path, monkeypatch):
    """The weak scans' <uid>_label.npy moved (shifted and enlarged) on disk: the EM run is the
    same, and no E-step or M-step opens them."""
    root, weak_uids = data
    changed = tmp_path / "data"
    shutil.copytree(root, changed)
    for uid in weak_uids:
        path = changed / (uid + "_label.npy")
        boxes = np.load(path)
        np.save(path, (boxes + np.array([6.0, -5.0, 7.0, 3.0], dtype=np.float32)))
    forbidden = {os.path.realpath(changed / (u + "_label.npy")) for u in weak_uids}
    opened = []
    real_load = np.load

    def spy(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and os.path.realpath(file) in forbidden:
            opened.append(str(file))
        return real_load(file, *args, **kwargs)

    monkeypatch.setattr(np, "load", spy)
    run_em(changed, tmp_path / "run", init)
    assert opened == []
    assert_same_run(whole, tmp_path / "run")


def test_estep_with_no_proposal_above_threshold(data):
    """run_estep through the detector: with an unreachable threshold nothing is proposed."""
    root, weak_uids = data
    torch.manual_seed(0)
    model = Res18(0.125)
    config = em_config(root, ["em.threshold=1e9"])
    result = run_estep(model, root, weak_uids[:2], config, LobeModel(), 0, distributed.Context())
    labels = sum(len(np.load(os.path.join(root, u + "_weak.npy"))) for u in weak_uids[:2])
    assert result.rows == [] and result.profile["proposals_per_scan"] == 0.0
    assert result.profile["labels"] == result.profile["labels_without_candidates"] == labels
    assert all(result.boxes[u].shape == (0, 4) for u in weak_uids[:2])
    assert model.training  # handed back in training mode


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_run_gives_the_pseudo_boxes_of_one(data, init, whole, tmp_path):
    """2 gloo ranks each detect their share of the sampled weak scans; the gathered proposals
    give exactly the 1-process pseudo boxes. Only epoch 0's E-step runs on the same weights in
    both (the init checkpoint): the M-step that follows differs with the world size (the loss of
    a per-rank batch of 1 crop averaged over ranks is not the loss of one batch of 2 crops, and
    the negatives' labelling seed is per rank), so later E-steps see other weights."""
    out = tmp_path / "ddp"
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
            "--master_port", str(free_port()), "-m", "deepem", "em", "--init", init, "--data", data[0],
            "--out", str(out)]
    for item in TINY + EM + ["optim.epochs=%d" % EPOCHS]:
        args += ["--set", item]
    r = subprocess.run(args, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("EM trained %d epochs" % EPOCHS) == 1  # rank 0 alone reports and writes
    name = "pseudo_boxes/epoch_000.csv"
    assert len(read_rows(whole / name)) > 0
    assert (out / name).read_bytes() == (whole / name).read_bytes()
    assert (out / "pseudo_boxes/epoch_001.csv").read_text().startswith(",".join(CSV_COLUMNS) + "\n")
    state, reference = checkpoint.load(out / "last.pt"), checkpoint.load(whole / "last.pt")
    assert state["epoch"] == EPOCHS and set(state["em"]["boxes"]) == set(reference["em"]["boxes"])


@pytest.mark.cuda
def test_posterior_with_the_lobe_model_on_the_gpu(planted):
    """em_fit keeps the lobe model on the run's device while proposals are gathered on the CPU."""
    root, proposals = planted
    config = em_config(root, ["em.method=map"])
    lobe = LobeModel()
    feats = torch.rand(50, 3)
    lobe.fit(feats, (feats[:, 2] * 6).long().clamp(max=5), lr=1.0, steps=20)  # not uniform
    on_cpu = posterior_and_picks(root, ["two", "one"], proposals, lobe, config, epoch=0)
    on_gpu = posterior_and_picks(root, ["two", "one"], proposals, lobe.to("cuda"), config, epoch=0)
    assert [r[:3] for r in on_gpu.rows] == [r[:3] for r in on_cpu.rows]
    assert [r[7] for r in on_gpu.rows] == pytest.approx([r[7] for r in on_cpu.rows], rel=1e-5)

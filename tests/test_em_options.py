"""The EM options beyond the paper (deepem.em, config em.*), each against a reference written
here: the Platt-scaled detector term, the confidence rule, pseudo-box geometry, the teachers,
the calibration's threshold and pick rules, mixed batches, classification-only pseudo boxes,
and tiny EM runs with each option (they run, and the defaults stay the paper's method)."""
import dataclasses
import os

import numpy as np
import pytest
import torch

from deepem.data import datasets
from deepem.em import LobeModel, em_fit
from deepem.em.calibrate import Calibration, best_min_posterior, calibrate, right_picks
from deepem.em.estep import box_geometry, confident_labels, label_posterior, posterior_and_picks
from deepem.em.teacher import Teacher
from deepem.model import DetectionLoss, Res18
from deepem.ops import pseudo_boxes
from deepem.train import checkpoint, distributed, fit, load_config
from synthetic import make_preprocessed, write_weak
from test_em import EM, SHAPE, TINY, em_config, expected_posterior


def test_default_em_settings_are_the_papers():
    em = load_config().em
    assert (em.temperature, em.logit_shift, em.lobe_weight, em.min_posterior, em.min_margin) == (1.0, 0.0, 1.0, 0, 0)
    assert (em.teacher, em.mix, em.pseudo_regression, em.calibrate) == ("student", False, True, "")
    assert (em.box_z_from_label, em.pseudo_scale) == (False, 1.0)


# ---- the posterior's free parts ------------------------------------------------------------

def test_shifted_and_tempered_logits_enter_the_posterior_as_platt_scaling(tmp_path):
    """sigmoid((logit - shift) / T) in place of sigmoid(logit): against the numpy posterior on
    the transformed logits; with saturated logits (5 and 9) the paper's posterior is nearly flat
    and the shifted one is not."""
    props = torch.tensor([[[5.0, 10.0, 20, 20, 6], [9.0, 11.0, 30, 30, 6], [-1.0, 10.5, 12, 12, 5]]])
    num_p, weak_z, weak_lobe, num_w = torch.tensor([3]), torch.tensor([[10.0]]), torch.tensor([[0]]), torch.tensor([1])
    em = load_config(overrides=["em.logit_shift=7", "em.temperature=0.5", "em.use_lobe=false"]).em
    lp, _ = label_posterior(props, num_p, weak_z, weak_lobe, num_w, torch.zeros(1, 3, 6), em)
    p = props[0].numpy().astype(np.float64).copy()
    p[:, 0] = (p[:, 0] - 7) / 0.5
    np.testing.assert_allclose(lp[0, 0].exp().numpy(), expected_posterior(p, 10.0), rtol=1e-5, atol=1e-7)
    paper, _ = label_posterior(props, num_p, weak_z, weak_lobe, num_w, None, load_config().em)
    assert float(paper[0, 0].exp().max()) < 0.6 < float(lp[0, 0].exp().max())
    np.testing.assert_allclose(paper[0, 0].exp().numpy(), expected_posterior(props[0].numpy().astype(np.float64), 10.0),
                               rtol=1e-5, atol=1e-7)
    assert props[0, 0, 0] == 5.0  # the caller's proposals are left alone


def test_lobe_weight_zero_is_no_lobe_term():
    props = torch.tensor([[[2.0, 10.0, 20, 20, 6], [2.0, 10.0, 30, 30, 6]]])
    args = (props, torch.tensor([2]), torch.tensor([[10.0]]), torch.tensor([[1]]), torch.tensor([1]))
    lobe = torch.log(torch.tensor([[[0.9, 0.1], [0.1, 0.9]]]))
    off, _ = label_posterior(*args, lobe, load_config(overrides=["em.lobe_weight=0"]).em)
    none, _ = label_posterior(*args, None, load_config(overrides=["em.use_lobe=false"]).em)
    half, _ = label_posterior(*args, lobe, load_config(overrides=["em.lobe_weight=0.5"]).em)
    assert torch.allclose(off, none)
    np.testing.assert_allclose(half[0, 0].exp().numpy(), [0.25, 0.75], rtol=1e-5)  # sqrt(0.1) : sqrt(0.9)


def test_confidence_rule_by_best_posterior_and_margin():
    lp = torch.log(torch.tensor([[[0.6, 0.3, 0.1], [0.4, 0.35, 0.25]], [[1.0, 0.0, 0.0], [0.34, 0.33, 0.33]]]))
    cfg = lambda **kv: dataclasses.replace(load_config().em, **kv)  # noqa: E731
    assert confident_labels(lp, cfg()).all()
    assert confident_labels(lp, cfg(min_posterior=0.5)).tolist() == [[True, False], [True, False]]
    assert confident_labels(lp, cfg(min_margin=0.2)).tolist() == [[True, False], [True, False]]
    assert confident_labels(lp, cfg(min_margin=0.04)).tolist() == [[True, True], [True, False]]


def test_unconfident_labels_give_no_pseudo_box_but_keep_their_scan(tmp_path):
    write_weak(tmp_path, "s", [[10, 0], [40, 0]], SHAPE)
    props = torch.tensor([[4.0, 10.0, 12, 30, 7], [-2.0, 41.0, 30, 12, 8], [-2.0, 39.0, 12, 12, 8]])
    config = em_config(tmp_path, ["em.method=map", "em.use_lobe=false", "em.min_margin=0.5"])
    r = posterior_and_picks(str(tmp_path), ["s"], {"s": props}, LobeModel(), config, epoch=0)
    assert r.boxes["s"].tolist() == [[10.0, 12.0, 30.0, 7.0]]  # label 1's two proposals tie: no box
    assert r.profile["labels_not_confident"] == 1 and [row[1] for row in r.rows] == [0]


def test_box_geometry_takes_the_labels_slice_and_scales_the_diameter():
    props = torch.tensor([[[1.0, 12.0, 20, 20, 10], [1.0, 33.0, 30, 30, 6]]])
    picks = torch.tensor([[[0], [1]]])
    merged = pseudo_boxes(props, picks)
    weak_z = torch.tensor([[10.0, 35.0]])
    em = dataclasses.replace(load_config().em, box_z_from_label=True, pseudo_scale=0.5)
    got = box_geometry(merged, weak_z, em).boxes.tolist()
    assert sorted(got) == [[10.0, 20.0, 20.0, 5.0], [35.0, 30.0, 30.0, 3.0]]
    assert box_geometry(merged, weak_z, load_config().em) is merged


# ---- teachers ------------------------------------------------------------------------------

def test_teachers_student_frozen_and_ema():
    torch.manual_seed(0)
    student = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    same = Teacher("student", student)
    frozen, ema = Teacher("init", student), Teacher("ema", student, decay=0.75)
    start = [p.detach().clone() for p in student.parameters()]
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
        student[1].running_mean.fill_(3.0)
    for t in (same, frozen, ema):
        t.update()
    assert same.model is student and same.state_dict() == {}
    for a, b in zip(frozen.model.parameters(), start):
        assert torch.equal(a, b)
    for a, b in zip(ema.model.parameters(), start):
        assert torch.allclose(a, 0.75 * b + 0.25 * (b + 1.0))
    assert torch.equal(ema.model[1].running_mean, student[1].running_mean)
    assert not any(p.requires_grad for p in ema.model.parameters())
    again = Teacher("ema", student, decay=0.75)
    again.load_state_dict(ema.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(again.model.parameters(), ema.model.parameters()))
    with pytest.raises(ValueError, match="teacher"):
        Teacher("peer", student)


def test_a_frozen_teacher_detects_each_scan_once(data, monkeypatch):
    """teacher = init keeps its proposals: a second E-step over the same scans and slices gives
    the same proposals without running the network; other slices detect again."""
    from deepem.em import estep
    from deepem.em.estep import detect_proposals

    root, init = data
    student = Res18(0.125)
    student.load_state_dict(checkpoint.load(init)["model"])
    teacher = Teacher("init", student)
    config = em_config(root, ["em.threshold=-20"])
    uids = ["scan03", "scan04"]
    weak_z = {u: datasets.load_weak(root, u)[:, 0] for u in uids}
    detected = []  # one entry per scan whose network output was computed (whatever runs the network)
    scan_proposals = estep.scan_proposals
    monkeypatch.setattr(estep, "scan_proposals", lambda det, image, *a: detected.append(image.shape)
                        or scan_proposals(det, image, *a))
    first, _ = detect_proposals(teacher.model, root, uids, weak_z, config, distributed.Context())
    assert len(detected) == len(uids)
    again, _ = detect_proposals(teacher.model, root, uids, weak_z, config, distributed.Context())
    assert len(detected) == len(uids)
    plain = Teacher("student", student).model
    assert not hasattr(plain, "proposal_cache")
    uncached, _ = detect_proposals(plain, root, uids, weak_z, config, distributed.Context())
    assert len(detected) == 2 * len(uids)
    for u in uids:
        assert len(first[u]) > 0 and torch.equal(first[u], again[u]) and torch.equal(first[u], uncached[u])
    moved = {**weak_z, uids[0]: weak_z[uids[0]] + 1.0}  # other label slices: that scan again
    detect_proposals(teacher.model, root, uids, moved, config, distributed.Context())
    assert len(detected) == 2 * len(uids) + 1


def test_a_frozen_teachers_proposals_on_disk_serve_another_run(data, monkeypatch, tmp_path):
    """em.proposal_cache: a second run's frozen teacher with the same weights reads the first's
    proposals from the folder (no detection, the same tensors); other weights, other slices or a
    changed scan file detect again."""
    from deepem.em import estep
    from deepem.em.estep import detect_proposals

    root, init = data
    student = Res18(0.125)
    student.load_state_dict(checkpoint.load(init)["model"])
    config = em_config(root, ["em.threshold=-20"])
    uids = ["scan03", "scan04"]
    weak_z = {u: datasets.load_weak(root, u)[:, 0] for u in uids}
    detected = []
    scan_proposals = estep.scan_proposals
    monkeypatch.setattr(estep, "scan_proposals", lambda det, image, *a: detected.append(image.shape)
                        or scan_proposals(det, image, *a))
    folder = str(tmp_path / "cache")

    def run(model, z=weak_z):
        return detect_proposals(Teacher("init", model, proposal_cache=folder).model, root, uids, z, config,
                                distributed.Context())[0]

    first = run(student)
    assert len(detected) == 2 and len(os.listdir(folder)) == 2
    again = run(student)  # another run: a new teacher, the same weights
    assert len(detected) == 2 and all(torch.equal(first[u], again[u]) for u in uids)
    assert not [f for f in os.listdir(folder) if f.startswith(".tmp")]
    run(student, {**weak_z, uids[0]: weak_z[uids[0]] + 1.0})
    assert len(detected) == 3
    other = Res18(0.125)
    other.load_state_dict(student.state_dict())
    with torch.no_grad():
        other.output[2].bias.add_(0.5)
    run(other)
    assert len(detected) == 5
    clean = os.path.join(root, uids[1] + "_clean.npy")
    os.utime(clean, ns=(os.stat(clean).st_atime_ns, os.stat(clean).st_mtime_ns + 10**9))
    run(student)
    assert len(detected) == 6


def test_a_frozen_teacher_proposes_what_the_initial_model_proposes_at_every_epoch(data, tmp_path):
    """em.teacher=init through em_fit: at every epoch's E-step the proposals equal those of the
    initial checkpoint's model, loaded here on its own, while the student trains away from it."""
    from deepem.em import run_estep
    from deepem.em.estep import detect_proposals

    root, init = data
    start = Res18(0.125)
    start.load_state_dict(checkpoint.load(init)["model"])
    seen = []

    def estep(model, data_dir, uids, config, lobe, epoch, ctx):
        weak_z = {u: datasets.load_weak(data_dir, u)[:, 0] for u in uids}
        got, _ = detect_proposals(model, data_dir, uids, weak_z, config, ctx)
        ref, _ = detect_proposals(start, data_dir, uids, weak_z, config, ctx)
        seen.append((epoch, sum(len(ref[u]) for u in uids)))
        assert all(torch.equal(got[u], ref[u]) for u in uids), epoch
        return run_estep(model, data_dir, uids, config, lobe, epoch, ctx)

    t = em_fit(em_config(root, ["run.out=" + str(tmp_path / "em"), "optim.epochs=2", "em.method=map",
                                "em.teacher=init", "em.threshold=-20"]), init=init, estep=estep)
    assert [e for e, _ in seen] == [0, 1] and all(n > 0 for _, n in seen)
    assert any(not torch.equal(v, start.state_dict()[k]) for k, v in t.model.state_dict().items()
               if v.is_floating_point())


# ---- calibration rules ---------------------------------------------------------------------

def test_best_min_posterior_maximises_right_minus_wrong():
    post = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    right = np.array([True, True, False, True, False, False])
    assert best_min_posterior(post, right) == (0.6, 2)  # keep the first four: 3 right, 1 wrong
    assert best_min_posterior(post, np.ones(6, bool)) == (0.0, 6)  # keep all
    assert best_min_posterior(post, np.zeros(6, bool)) == (float("inf"), 0)  # keep none
    assert best_min_posterior(np.zeros(0), np.zeros(0, bool)) == (0.0, 0)


def test_right_picks_is_within_the_own_nodules_radius():
    props = torch.tensor([[[0.0, 10.0, 10, 10, 5], [0.0, 10.0, 13.9, 10, 5], [0.0, 30.0, 30, 30, 5]]])
    truth = [np.array([[10.0, 10, 10, 8.0], [30.0, 30, 30, 4.0]])]
    assert right_picks(props, torch.tensor([[1, 2]]), truth).tolist() == [[True, True]]
    assert right_picks(props, torch.tensor([[2, 0]]), truth).tolist() == [[False, False]]  # each other's
    assert right_picks(props, torch.tensor([[-1, 2]]), truth).tolist() == [[False, True]]


# ---- M-step options ------------------------------------------------------------------------

def test_mixed_dataset_holds_both_and_marks_the_weak_crops(tmp_path):
    uids = make_preprocessed(str(tmp_path), n_scans=4, shape=(48, 48, 48))
    full = datasets.CropDataset(str(tmp_path), uids[:2], crop_size=32)
    weak = datasets.WeakCropDataset(str(tmp_path), uids[2:], crop_size=32)
    weak.set_pseudo_boxes({u: np.load(tmp_path / (u + "_label.npy")) for u in uids[2:]})
    mixed = datasets.MixedCropDataset(full, weak)
    assert len(mixed) == len(full) + len(weak)
    first, last = mixed[0], mixed[len(mixed) - 1]
    assert first["weak"] is False and first["weak_z"].numel() == 0 and first["uid"] in uids[:2]
    assert last["weak"] is True and last["uid"] in uids[2:]
    batch = datasets.collate([first, last])
    assert batch["weak"] == [False, True]


def test_zero_regression_weights_drop_only_the_regression_terms():
    torch.manual_seed(0)
    out = torch.randn(2, 8, 8, 8, 3, 5)
    boxes = [torch.tensor([[14.0, 14, 14, 8]]), torch.tensor([[18.0, 12, 16, 6]])]
    loss = DetectionLoss(num_neg=50)
    full = loss(out, boxes, seed=3)
    half = loss(out, boxes, seed=3, reg_weights=[torch.ones(1), torch.zeros(1)])
    other = loss(out, boxes, seed=3, reg_weights=[torch.zeros(1), torch.ones(1)])
    none = loss(out, boxes, seed=3, reg_weights=[torch.zeros(1), torch.zeros(1)])
    assert half.parts["cls_pos"] == full.parts["cls_pos"] and half.parts["cls_neg"] == full.parts["cls_neg"]
    assert all(none.parts[k] == 0.0 for k in ("reg_z", "reg_y", "reg_x", "reg_d"))
    for k in ("reg_z", "reg_y", "reg_x", "reg_d"):  # each box's regression term, exactly its own share
        assert half.parts[k] + other.parts[k] == pytest.approx(full.parts[k], rel=1e-6, abs=1e-9), k
    assert 0 < half.parts["reg_d"] < full.parts["reg_d"]
    assert float(none.total) == pytest.approx(0.5 * full.parts["cls_pos"] + 0.5 * full.parts["cls_neg"], rel=1e-5)


# ---- tiny EM runs with the options -----------------------------------------------------------

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("em-options")
    make_preprocessed(str(folder), n_scans=6, shape=(48, 48, 48), lobes=True,
                      splits=lambda u: {"full": u[:2], "val": u[2:3], "weak": u[3:]})
    init = tmp_path_factory.mktemp("init")
    fit(load_config(overrides=TINY + ["data.root=" + str(folder), "run.out=" + str(init), "optim.epochs=1"]))
    return str(folder), str(init / "last.pt")


@pytest.mark.parametrize("options", [
    ["em.teacher=init"], ["em.teacher=ema", "em.ema_decay=0.5"], ["em.mix=true"], ["em.pseudo_regression=false"],
    ["em.calibrate=val", "em.box_z_from_label=true"], ["em.min_margin=0.9", "em.weighted=true"],
])
def test_em_runs_with_each_option_and_resumes_exactly(data, tmp_path, options):
    root, init = data
    config = lambda out: em_config(root, ["run.out=" + str(out), "optim.epochs=2", "em.method=map"] + options)  # noqa
    em_fit(config(tmp_path / "whole"), init=init)
    em_fit(config(tmp_path / "split"), init=init, stop_at=1)
    em_fit(config(tmp_path / "split"), resume="auto")
    a, b = (checkpoint.load(tmp_path / n / "last.pt") for n in ("whole", "split"))
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), (options, key)
    for key in a["em"]["teacher"]:
        assert torch.equal(a["em"]["teacher"][key], b["em"]["teacher"][key]), (options, key)
    records = [line for line in open(tmp_path / "whole" / "metrics.jsonl")]
    if "em.calibrate=val" in options:
        assert sum('"kind": "calibration"' in r for r in records) == 2
    if "em.mix=true" in options:
        assert all('"weak"' not in r for r in records if '"kind": "epoch"' in r)
    torch.load(tmp_path / "whole" / "last.pt", weights_only=True)


def test_calibration_fits_the_grid_on_a_labelled_split(data):
    root, init = data
    model = Res18(0.125)
    model.load_state_dict(checkpoint.load(init)["model"])
    config = em_config(root, ["em.calibrate=val"])
    c = calibrate(model, root, ["scan02"], config, distributed.Context())
    assert isinstance(c, Calibration) and c.labels == 1 and 0 <= c.right <= 1 and c.kept_right <= c.kept
    applied = c.apply(config).em
    assert (applied.logit_shift, applied.temperature, applied.sigma) == (c.logit_shift, c.temperature, c.sigma)
    assert applied.min_posterior == c.min_posterior and applied.pseudo_scale == c.pseudo_scale > 0


def test_calibration_picks_the_first_setting_that_makes_the_pick_right(tmp_path, monkeypatch):
    """The grid search on planted proposals (the detector replaced): one nodule (z, y, x, d) =
    (24, 24, 24, 10), its weak label at z 24; a right proposal at its centre (logit 2, d 8) and a
    wrong one 2 slices off, far in y and x (logit 5). With sigmoid((l - shift) / T) x
    exp(-max(|dz| - mu, 0)^2 / (2 sigma^2)), the wrong one wins at the paper's setting (0, 1,
    1.63, 2.38: 0.993 x 0.976 against 0.881 x 1) and at mu 1.63 with sigma 1 or 4 (z terms 0.934,
    0.996), the right one first at (shift 0, T 1, mu 0.5, sigma 2.38: 0.993 x 0.820 = 0.814
    against 0.881). Every setting that picks right has the same excess (1 right, 0 wrong), so
    the tie rule (the earliest in the grid) decides: that setting, not a later one. The
    threshold keeps the one right pick (0), the box scale is 10 / 8."""
    from deepem.em import calibrate as calibration
    from synthetic import identity_meta

    shape = (48, 48, 48)
    np.save(tmp_path / "s_clean.npy", np.zeros(shape, np.uint8))
    np.save(tmp_path / "s_label.npy", np.array([[24.0, 24.0, 24.0, 10.0]], np.float32))
    (tmp_path / "s_meta.json").write_text(__import__("json").dumps(identity_meta("s", shape)))
    planted = torch.tensor([[5.0, 26.0, 40.0, 40.0, 8.0], [2.0, 24.0, 24.0, 24.0, 8.0]])
    seen = []

    def detect(model, data_dir, uids, weak_z, config, ctx):
        seen.append({u: list(map(float, z)) for u, z in weak_z.items()})
        return {"s": planted.clone()}, {}

    monkeypatch.setattr(calibration, "detect_proposals", detect)
    c = calibrate(None, str(tmp_path), ["s"], em_config(str(tmp_path), ["em.calibrate=val"]), distributed.Context())
    assert seen == [{"s": [24.0]}]  # the weak label derived from the truth: the nodule's central slice
    assert (c.logit_shift, c.temperature, c.mu, c.sigma) == (0.0, 1.0, 0.5, 2.38)
    assert (c.min_posterior, c.pseudo_scale) == (0.0, 1.25)
    assert (c.labels, c.right, c.kept, c.kept_right, c.paper_right, c.paper_net) == (1, 1, 1, 1, 0, 0)

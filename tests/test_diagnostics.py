"""deepem.diagnostics and deepem.study: pick statistics against the truth, the nodules an
initial detector misses at 1 FP per scan, the truth / negatives-only E-steps, that diagnostics
leave an EM run bit-identical, and the study's settings, tables and figure."""
import dataclasses
import json
import os
from dataclasses import replace

import numpy as np
import pytest
import torch

from deepem import demo, diagnostics, study
from deepem.em import EStepResult, em_fit
from deepem.train import checkpoint
from test_em_options import data  # noqa: F401  (the tiny data set and init checkpoint)
from test_em import em_config


def test_missed_at_one_fp_uses_the_operating_point_over_all_scans():
    truth = {"a": np.array([[0.0, 0, 0, 10], [50.0, 0, 0, 10]]), "b": np.array([[0.0, 0, 0, 10]])}
    marks = {"a": np.array([[0.0, 0, 1, 0.9], [30.0, 0, 0, 0.8], [50.0, 0, 0, 0.3]]),  # hit, FP, hit
             "b": np.array([[80.0, 0, 0, 0.7], [0.0, 1, 0, 0.2], [90.0, 0, 0, 0.1]])}  # FP, hit, FP
    # false positives by score 0.8, 0.7, 0.1: the 2nd (2 scans) sets the cut at 0.7
    got = diagnostics.missed_at_one_fp(marks, truth)
    assert got["a"].tolist() == [False, True] and got["b"].tolist() == [True]
    assert diagnostics.missed_at_one_fp({}, truth)["a"].tolist() == [True, True]


def test_pick_diagnostics_count_right_picks_against_the_truth(data):  # noqa: F811
    root, _ = data
    weak = ["scan03", "scan04", "scan05"]
    truth = {u: diagnostics.true_boxes(root, u)[1] for u in weak}  # identity geometry: world = grid
    t = truth["scan03"]  # two nodules
    rows = [["scan03", 0, 0, *t[0, :3], 5.0, 0.5, t[0, 2], 0],            # on its own nodule
            ["scan03", 1, 0, *(t[0, :3] + 0.1), 5.0, 0.5, t[1, 2], 0],    # on the other nodule
            ["scan04", 0, 0, *(truth["scan04"][0, :3] + 100), 5.0, 0.5, 0, 0]]  # on nothing
    est = EStepResult({u: np.zeros((0, 4)) for u in ("scan03", "scan04")}, {}, rows, torch.zeros(0, 3),
                      torch.zeros(0, dtype=torch.long))
    missed = {"scan03": np.array([False, True]), "scan04": np.array([True]), "scan05": np.array([True, True])}
    out = diagnostics.PickDiagnostics(root, weak, missed)(0, est)
    assert out["picks"] == 3 and out["labels"] == 3
    assert out["pick_precision"] == pytest.approx(2 / 3) and out["label_recall"] == pytest.approx(1 / 3)
    assert out["missed_by_init"] == 2 and out["missed_picked_right"] == 0.0


def test_truth_and_negatives_estep_and_diagnostics_change_nothing(data, tmp_path):  # noqa: F811
    root, init = data
    weak = ["scan03", "scan04", "scan05"]
    config = lambda out: em_config(root, ["run.out=" + str(out), "optim.epochs=2", "em.method=map"])  # noqa
    em_fit(config(tmp_path / "plain"), init=init)
    observer = diagnostics.PickDiagnostics(root, weak)
    em_fit(config(tmp_path / "observed"), init=init, observer=observer)
    a, b = (checkpoint.load(tmp_path / n / "last.pt") for n in ("plain", "observed"))
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for epoch in range(2):
        name = "pseudo_boxes/epoch_%03d.csv" % epoch
        assert (tmp_path / "plain" / name).read_bytes() == (tmp_path / "observed" / name).read_bytes()
    diag = [json.loads(line) for line in open(tmp_path / "observed" / "metrics.jsonl") if '"diagnostics"' in line]
    assert [d["epoch"] for d in diag] == [0, 1] and all(0 <= d["pick_precision"] <= 1 for d in diag)
    assert os.path.isfile(diagnostics.picks_plot(str(tmp_path / "observed")))

    em_fit(config(tmp_path / "truth"), init=init, estep=diagnostics.truth_estep)
    state = checkpoint.load(tmp_path / "truth" / "last.pt")
    for uid in state["em"]["boxes"]:  # sampled scans got their true boxes as pseudo boxes
        assert np.array_equal(state["em"]["boxes"][uid].numpy(), np.load(os.path.join(root, uid + "_label.npy")))
    em_fit(config(tmp_path / "negatives"), init=init, estep=diagnostics.negatives_estep)
    records = [json.loads(line) for line in open(tmp_path / "negatives" / "metrics.jsonl")]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert all("weak" in e and e["weak"]["num_pos"] == 0 for e in epochs)  # weak crops, negatives only


def test_perturbed_truth_moves_each_box_by_the_given_geometry(data):  # noqa: F811
    root, _ = data
    config = em_config(root, ["run.seed=3"])
    est = diagnostics.perturbed_truth_estep(scale=1.5, offset=0.5)(None, root, ["scan04"], config, None, 0, None)
    true = np.load(os.path.join(root, "scan04_label.npy"))
    got = est.boxes["scan04"]
    np.testing.assert_allclose(got[:, 3], 1.5 * true[:, 3], rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got[:, :3] - true[:, :3], axis=1), 0.25 * true[:, 3], rtol=1e-4)


def test_truth_subset_keeps_only_the_chosen_nodules(data):  # noqa: F811
    root, _ = data
    config = em_config(root, [])
    true = np.load(os.path.join(root, "scan04_label.npy")).reshape(-1, 4)
    assert len(true) >= 1
    keep = {"scan04": np.arange(len(true)) % 2 == 0}
    est = diagnostics.truth_subset_estep(keep)(None, root, ["scan04"], config, None, 0, None)
    np.testing.assert_array_equal(est.boxes["scan04"], true[keep["scan04"]])
    assert len(est.weights["scan04"]) == int(keep["scan04"].sum())
    assert [int(r[1]) for r in est.rows] == [int(i) for i in np.flatnonzero(keep["scan04"])]
    none = diagnostics.truth_subset_estep({"scan04": np.zeros(len(true), bool)})(None, root, ["scan04"], config, None,
                                                                                 0, None)
    assert none.boxes["scan04"].shape == (0, 4) and none.rows == []


def test_study_settings_and_point_settings():
    base = study.parse_settings(["n_val=24", "nodule_extra_mean=2", "lr_milestones=[0.5]"], demo.DEFAULT)
    assert base.n_val == 24 and base.nodule_extra_mean == 2.0 and base.lr_milestones == (0.5,)
    for bad in (["nosuch=1"], ["n_val=two"], ["n_val"]):
        with pytest.raises(ValueError):
            study.parse_settings(bad, demo.DEFAULT)
    s = study.point_settings(64, base)
    assert (s.n_full, s.n_weak, s.em_fraction) == (64, 192, pytest.approx(1 / 3))
    assert study.point_settings(16, base).em_fraction == 1.0


def test_summary_tables_and_figure_from_points(tmp_path):
    def point(n_full, seed, gains, threads=1):
        machine = {"cpu": "Test CPU", "cores": 2, "torch": "2.x", "torch_threads": threads}
        rows = {"baseline": {"test_cpm": 0.5, "val_cpm_best": 0.5, "diagnostics": []}}
        for name, g in gains.items():
            diag = [{"pick_precision": 0.4, "missed_picked_right": 0.1}, {"pick_precision": 0.6}]
            rows[name] = {"test_cpm": 0.5 + g, "gain": g, "val_cpm_best": 0.5, "diagnostics": diag}
        folder = tmp_path / ("n%03d_s%d" % (n_full, seed))
        folder.mkdir()
        (folder / "point.json").write_text(json.dumps({"n_full": n_full, "seed": seed, "init_val_cpm": 0.3,
                                                       "seconds_total": 600.0, "rows": rows,
                                                       "machine": machine}))
    point(16, 0, {"baseline_rerun": 0.01, "map": 0.05, "em_truth": 0.02})
    point(16, 1, {"baseline_rerun": -0.03, "map": 0.07, "em_truth": 0.03})
    point(32, 0, {"baseline_rerun": 0.02, "map": 0.01}, threads=2)
    summary = study.summarize(str(tmp_path))
    row = summary["table"][16]["rows"]["map"]
    assert row["gain"] == [0.05, 0.07] and row["gain_mean"] == pytest.approx(0.06)
    assert row["gain_sd"] == pytest.approx(np.std([0.05, 0.07], ddof=1))
    assert row["pick_precision_first"] == [0.4, 0.4] and row["pick_precision_last"] == [0.6, 0.6]
    text = (tmp_path / "study.md").read_text()
    assert "+0.060 +- 0.014" in text and "| 0.40 -> 0.60 / 0.40 -> 0.60 |" in text
    # 'missed picked right' for rows that pick per label; em_truth's picks are numbered by nodule
    lines = {line.split(" | ")[0][2:]: line for line in text.split("## 32")[0].splitlines() if line.startswith("| ")}
    assert lines[study.VARIANTS["map"].label].endswith("| 0.10 / 0.10 |")
    assert lines[study.VARIANTS["em_truth"].label].endswith("| 0.40 -> 0.60 / 0.40 -> 0.60 |  |")
    # the machines the points ran on, each once, not the machine that summarized them
    assert "Points run on: Test CPU, 2 cores, torch 2.x (1 threads); Test CPU, 2 cores, torch 2.x (2 threads)." in text
    assert (tmp_path / "study.png").stat().st_size > 10000


def test_every_study_variant_makes_a_valid_training_config(tmp_path):
    """A misspelt em.* key or a value out of range in a variant fails here, not an hour into a study."""
    s = study.point_settings(16)
    for name, v in study.VARIANTS.items():
        cfg = demo.train_config(str(tmp_path / name), str(tmp_path), s, 0, em=v.method if v.kind == "em" else None,
                                extra={"em": dict(v.em)} if v.kind == "em" else None)
        for key, value in v.em.items():
            assert getattr(cfg.em, key) == value, (name, key)


def test_point_settings_take_no_em_option_from_the_demo():
    base = demo.Settings(**{**demo.DEFAULT.__dict__, "em_options": (("teacher", "init"),)})
    assert study.point_settings(16, base).em_options == ()


def test_a_point_run_again_with_other_variants_keeps_the_finished_ones(tmp_path):
    """Stages resume, and point.json reports every finished variant, not only this call's."""
    out = str(tmp_path / "n002_s0")
    first = study.run_point(out, 2, 0, variants=("baseline",), base=demo.QUICK)
    assert set(first["rows"]) == {"baseline"}
    second = study.run_point(out, 2, 0, variants=("baseline_rerun",), base=demo.QUICK)
    assert set(second["rows"]) == {"baseline", "baseline_rerun"}
    assert second["rows"]["baseline"]["test_cpm"] == first["rows"]["baseline"]["test_cpm"]
    assert "gain" in second["rows"]["baseline_rerun"]
    # the stored numbers, recomputed from the stored marks with deepem.eval.froc
    from deepem.data import tables
    from deepem.eval import froc
    from deepem.eval.marks import read_marks

    test = json.load(open(os.path.join(out, "preprocessed", "splits.json")))["test"]
    annotations = tables.read_annotations(os.path.join(out, "raw", "annotations.csv"))
    excluded = tables.read_annotations(os.path.join(out, "raw", "annotations_excluded.csv"), excluded=True)
    marks = {n: read_marks(os.path.join(out, n, "test_marks.csv")) for n in ("baseline", "baseline_rerun")}
    for n, row in second["rows"].items():
        assert set(marks[n]) <= set(test) and row["validation_selected"] is True
        r = froc.evaluate(marks[n], annotations, test, excluded=excluded, bootstrap=0)
        assert (row["test_cpm"], row["test_sensitivity"]) == (r.cpm, [float(v) for v in r.sensitivity])
    c = froc.compare(marks["baseline_rerun"], marks["baseline"], annotations, test, excluded=excluded)
    assert second["rows"]["baseline_rerun"]["gain"] == c["diff"] == c["cpm_a"] - c["cpm_b"]
    # finished stages are reused: the folder refuses other settings before touching anything
    before = sorted(os.listdir(out))
    with pytest.raises(ValueError, match="other settings .*lr differ"):
        study.run_point(out, 2, 0, variants=("baseline",), base=replace(demo.QUICK, lr=0.02))
    with pytest.raises(ValueError, match="n002_s0: lr differ"):  # the study refuses it up front
        study.check_study_settings(str(tmp_path), replace(demo.QUICK, lr=0.02))
    study.check_study_settings(str(tmp_path), demo.QUICK)
    assert sorted(os.listdir(out)) == before


def test_a_study_summary_never_groups_points_made_with_other_settings(tmp_path):
    for n_full, seed, lr in ((16, 0, 0.001), (16, 1, 0.002), (32, 0, 0.001)):
        folder = tmp_path / ("n%03d_s%d" % (n_full, seed))
        folder.mkdir()
        settings = dataclasses.asdict(replace(study.point_settings(n_full), lr=lr))
        (folder / "point.json").write_text(json.dumps({
            "n_full": n_full, "seed": seed, "init_val_cpm": 0.3, "seconds_total": 60.0, "settings": settings,
            "rows": {"baseline": {"test_cpm": 0.5, "val_cpm_best": 0.5, "diagnostics": []}}}))
    with pytest.raises(ValueError, match=r"other settings \(lr differ: n016_s0, n032_s0; n016_s1\)"):
        study.summarize(str(tmp_path))
    assert not (tmp_path / "study.json").exists()
    (tmp_path / "n016_s1" / "point.json").unlink()  # one setting left: n_full's own settings differ, as they must
    assert sorted(study.summarize(str(tmp_path))["table"]) == [16, 32]

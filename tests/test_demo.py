"""`deepem demo --quick`: the one end-to-end run in CI (phantom data -> baseline, DeepEM MAP and
sampling, oracle -> test FROC). Checks the outputs' contract and the splits' integrity; the
quick setting makes no claim about which method wins."""
import json
import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import yaml

from deepem import demo as demo_module  # `demo` is the quick run's fixture

pytest.importorskip("SimpleITK")
METHODS = ("baseline", "baseline_rerun", "deepem_map", "deepem_sampling", "oracle")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The quick demo, run as `deepem demo --quick` under tests/read_spy.py, which logs every
    file the run opens for reading and every stage, in order, to reads.jsonl beside OUT."""
    out = tmp_path_factory.mktemp("demo")
    spy = os.path.join(os.path.dirname(os.path.abspath(__file__)), "read_spy.py")
    r = subprocess.run([sys.executable, spy, str(out.parent / (out.name + "_reads.jsonl")), "demo", "--quick",
                        "--out", str(out)],
                       capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    return out, r


def test_results_contract(demo):
    out, r = demo
    results = json.loads((out / "results.json").read_text())
    assert set(results["methods"]) == set(METHODS)
    for m in METHODS:
        row = results["methods"][m]
        assert 0 <= row["cpm"] <= 1 and len(row["sensitivity"]) == 7
    assert "gain_cpm" not in results["methods"]["baseline"]
    for m in ("baseline_rerun", "deepem_map", "deepem_sampling", "oracle"):  # the noise control and oracle too
        row = results["methods"][m]
        assert len(row["gain_ci95"]) == 2 and 0 <= row["p_gain_positive"] <= 1
        assert row["gain_ci95"][0] <= row["gain_cpm"] + 1e-12 <= row["gain_ci95"][1] + 2e-12
    for m in METHODS:  # every quick run validates each epoch: each row is validation-selected
        assert results["methods"][m]["validation_selected"] is (out / m / "best.pt").is_file() is True
    assert results["seconds_total"] > 0
    for name in ("results.md", "froc.png"):
        assert (out / name).stat().st_size > 0
    assert "**Quick setting**" in (out / "results.md").read_text()  # its CPMs mean nothing: it says so
    assert "DeepEM sampling" in r.stdout
    assert len(list((out / "deepem_map" / "pseudo_boxes").glob("epoch_*.csv"))) == 1


def test_splits_are_disjoint_and_test_is_never_trained_or_selected_on(demo):
    out, _ = demo
    splits = json.loads((out / "preprocessed" / "splits.json").read_text())
    names = [set(splits[k]) for k in ("full", "weak", "val", "test")]
    assert sum(len(s) for s in names) == len(set().union(*names))
    test = set(splits["test"])
    for m in ("init",) + METHODS:
        c = yaml.safe_load((out / m / "config.yaml").read_text())
        assert c["data"]["val_split"] == "val"
        train = c["data"]["train_split"]
        uids = open(train).read().split() if os.path.isfile(train) else splits[train]
        assert not test & set(uids)
        if m.startswith("deepem"):
            assert c["em"]["weak_split"] == "weak"
            # the E-step's calibration reads its split's true boxes: never the test or the weak scans
            assert c["em"]["calibrate"] == "val" and not (test | set(splits["weak"])) & set(splits["val"])


def test_no_test_label_is_read_before_the_final_scoring_stage(demo):
    """The run's reads in order (tests/read_spy.py): the test scans' <uid>_label.npy and the raw
    annotation tables (they hold the test scans' boxes) are opened only by the data stage, which
    makes them, and the final test stage, which scores; never by a training stage."""
    out, _ = demo
    splits = json.loads((out / "preprocessed" / "splits.json").read_text())
    pre, raw = out / "preprocessed", out / "raw"
    label = {os.path.realpath(pre / (u + "_label.npy")): u for u in splits["test"] + splits["val"]}
    tables_ = {os.path.realpath(raw / n) for n in ("annotations.csv", "annotations_excluded.csv")}
    stage, reads = None, []
    for line in (out.parent / (out.name + "_reads.jsonl")).read_text().splitlines():
        entry = json.loads(line)
        if "stage" in entry:
            stage = entry["stage"]
        elif "stage_end" in entry:
            stage = None
        elif entry["read"] in label or entry["read"] in tables_:
            reads.append((stage, label.get(entry["read"], os.path.basename(entry["read"]))))
    test = set(splits["test"])
    early = [(st, what) for st, what in reads if (what in test or what.endswith(".csv")) and st not in ("data", "test")]
    assert early == []
    # the spy sees what it must: the validation labels read by model selection, the tables by the scoring
    assert ("baseline", splits["val"][0]) in reads and ("test", "annotations.csv") in reads


def test_second_run_reuses_finished_stages(demo):
    out, _ = demo
    r = subprocess.run([sys.executable, "-m", "deepem", "demo", "--quick", "--out", str(out)],
                       capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=600)
    assert r.returncode == 0
    assert r.stdout.count("reused") == 8  # data, init, baseline, baseline_rerun, map, sampling, oracle, test


@pytest.mark.parametrize("name", ["QUICK", "DEFAULT", "FULL"])
def test_every_method_gets_the_same_steps_and_schedule(name, tmp_path):
    """The baseline trains as many steps as DeepEM's init + EM epochs, on the same lr schedule,
    so that a gain cannot come from training longer."""
    from deepem import demo

    s = getattr(demo, name)
    runs = {"baseline": demo.train_config(str(tmp_path), str(tmp_path), s, 0),
            "baseline_rerun": demo.train_config(str(tmp_path), str(tmp_path), s, demo.RERUN_SEED_OFFSET),
            "oracle": demo.train_config(str(tmp_path), str(tmp_path), s, 0, train_split="full_and_weak.txt"),
            "map": demo.train_config(str(tmp_path), str(tmp_path), s, 0, em="map"),
            "sample": demo.train_config(str(tmp_path), str(tmp_path), s, 0, em="sample")}
    init = demo.train_config(str(tmp_path), str(tmp_path), s, 0, init=True)
    assert init.optim.epochs == s.init_epochs and init.optim.lr_milestones == []
    for c in runs.values():
        o = c.optim
        assert (o.epochs, o.steps_per_epoch, o.lr, o.lr_milestones, o.lr_factors, o.name) == \
            (s.em_epochs, s.steps, s.lr, list(s.lr_milestones), list(s.lr_factors), s.optimizer)
        assert c.run.select == s.select and c.data.val_split == "val"
    for method in ("map", "sample"):
        em = runs[method].em
        assert em.method == method and em.weak_split == "weak"
        assert em.weak_steps + em.full_steps == s.steps > em.weak_steps > 0  # EM's weak + supervised steps


def test_noise_control_differs_from_the_baseline_only_in_its_training_seed(tmp_path):
    from dataclasses import asdict

    from deepem import demo

    assert demo.RERUN_SEED_OFFSET != 0  # else the control would repeat the baseline exactly
    base, rerun = (asdict(demo.train_config(str(tmp_path), str(tmp_path), demo.DEFAULT, seed))
                   for seed in (0, demo.RERUN_SEED_OFFSET))
    assert (base["run"].pop("seed"), rerun["run"].pop("seed")) == (0, demo.RERUN_SEED_OFFSET)
    assert base == rerun


def test_a_folder_refuses_a_demo_run_with_other_settings(tmp_path):
    demo_module.check_same_settings(str(tmp_path), demo_module.QUICK, 0)
    demo_module.check_same_settings(str(tmp_path), demo_module.QUICK, 0)  # the same settings: resumes
    with pytest.raises(ValueError, match="em_options"):
        demo_module.check_same_settings(str(tmp_path), replace(demo_module.QUICK, em_options=()), 0)
    with pytest.raises(ValueError, match="seed"):
        demo_module.check_same_settings(str(tmp_path), demo_module.QUICK, 1)


def test_verdict_applies_the_three_conditions_over_seeds():
    def methods(map_gains, sampling_gains, noise):
        return {"baseline_rerun": {"gain_per_seed": noise}, "deepem_map": {"gain_per_seed": map_gains},
                "deepem_sampling": {"gain_per_seed": sampling_gains}}

    noise = [0.01, -0.01, 0.02, -0.02]  # mean |gain| 0.015
    lines = demo_module.verdict(methods([0.03, 0.04, 0.02, -0.001], [0.03, 0.04, 0.02, 0.03], noise))
    assert lines[0].endswith("an effect.") and "positive on 3 of 4" in lines[0]
    assert lines[1].endswith("an effect.")
    # two negative seeds; a mean below the noise's; a mean inside twice its standard error
    for gains in ([0.05, 0.05, -0.01, -0.01], [0.012, 0.012, 0.012, 0.013], [0.10, 0.001, 0.001, -0.001]):
        assert demo_module.verdict(methods(gains, gains, noise))[0].endswith("no effect shown.")


def test_rows_say_whether_they_run_the_paper_or_the_remedies():
    assert demo_module.label("deepem_map", {"em_options": []}) == "DeepEM MAP (paper)"
    assert demo_module.label("deepem_map", {"em_options": [["teacher", "init"]]}) == "DeepEM MAP + remedies"
    assert demo_module.label("oracle", {"em_options": [["teacher", "init"]]}) == demo_module.LABELS["oracle"]


def test_each_row_is_recomputed_from_its_marks(demo):
    """Each row's CPM, sensitivities, gain, interval and P again from its marks CSV, the raw
    annotations and the test uids with deepem.eval.froc: equal, not merely in range; the gain is
    the CPM difference; the marks name only test scans; "gap closed" follows gap_note."""
    from deepem.data import tables
    from deepem.eval import froc
    from deepem.eval.marks import read_marks

    out, _ = demo
    rows = json.loads((out / "results.json").read_text())["methods"]
    test = json.loads((out / "preprocessed" / "splits.json").read_text())["test"]
    annotations = tables.read_annotations(str(out / "raw" / "annotations.csv"))
    excluded = tables.read_annotations(str(out / "raw" / "annotations_excluded.csv"), excluded=True)
    marks = {m: read_marks(str(out / "test" / (m + ".csv"))) for m in METHODS}
    assert any(marks.values())  # (a quick run's row may mark nothing)
    for m in METHODS:
        assert set(marks[m]) <= set(test), m
        r = froc.evaluate(marks[m], annotations, test, excluded=excluded, bootstrap=0)
        assert rows[m]["cpm"] == r.cpm and rows[m]["sensitivity"] == [float(v) for v in r.sensitivity], m
    for m in demo_module.GAIN_ROWS:
        assert rows[m]["gain_cpm"] == rows[m]["cpm"] - rows["baseline"]["cpm"], m
        c = froc.compare(marks[m], marks["baseline"], annotations, test, excluded=excluded)
        assert (rows[m]["gain_ci95"], rows[m]["p_gain_positive"]) == (c["ci95"], c["p_positive"]), m
    oracle = rows["oracle"]
    note = demo_module.gap_note(oracle["gain_cpm"], oracle["gain_ci95"], rows["baseline_rerun"]["gain_cpm"])
    for m in demo_module.COMPARED:
        assert rows[m]["gap_closed"] == (None if note else rows[m]["gain_cpm"] / oracle["gain_cpm"])
        assert rows[m].get("gap_closed_note") == note


def gap_table(oracle, noise, others=(0.01, [-0.01, 0.03], 0.8)):
    """add_gains on made-up comparisons: oracle and noise are (gain, ci95, p)."""
    table = {m: {"cpm": 0.5, "sensitivity": [0.5] * 7} for m in METHODS}
    given = {"oracle": oracle, "baseline_rerun": noise}
    gains = {m: dict(zip(("diff", "ci95", "p_positive"), given.get(m, others))) for m in demo_module.GAIN_ROWS}
    return demo_module.add_gains(table, gains)


def results_md(table):
    results = {"methods": table, "settings": {"em_options": [["teacher", "init"]]}, "stage_seconds": {"test": 1.0},
               "seconds_total": 1.0, "machine": {"cpu": "x", "cores": 2, "torch": "2", "torch_threads": 1}}
    return demo_module.markdown(results, "t")


@pytest.mark.parametrize("oracle,noise,why", [
    # inside the noise: clear of zero, but the noise control moved the CPM as far (either way)
    ((0.03, [0.01, 0.05], 0.99), (0.04, [0.0, 0.08], 0.97), "is not larger than the noise control's +0.040"),
    ((0.03, [0.01, 0.05], 0.99), (-0.04, [-0.08, 0.0], 0.02), "is not larger than the noise control's -0.040"),
    # the example: +0.003, its interval straddling zero
    ((0.003, [-0.039, 0.040], 0.503), (0.028, [-0.015, 0.059], 0.883), "+0.003 [-0.039, +0.040], is not clear of zero"),
    # negative, with and without its interval clear of zero
    ((-0.02, [-0.05, 0.01], 0.1), (0.0, [-0.01, 0.01], 0.5), "-0.020 [-0.050, +0.010], is not clear of zero"),
    ((-0.03, [-0.05, -0.01], 0.0), (0.0, [-0.01, 0.01], 0.5), "-0.030 [-0.050, -0.010], is not clear of zero"),
])
def test_gap_closed_is_na_where_the_oracle_gap_is_not_real(oracle, noise, why):
    table = gap_table(oracle, noise)
    assert table["oracle"]["gain_cpm"] == oracle[0] and table["oracle"]["gain_ci95"] == oracle[1]
    assert table["oracle"]["p_gain_positive"] == oracle[2] and "gap_closed" not in table["oracle"]
    for m in demo_module.COMPARED:
        assert table[m]["gap_closed"] is None and why in table[m]["gap_closed_note"]
    assert json.loads(json.dumps(table))["deepem_map"]["gap_closed"] is None  # null in results.json
    text = results_md(table)
    assert text.count("| n/a [1] |") == 3 and "\n[1] Gap closed is not reported: the oracle's gain" in text
    assert why + "." in text
    oracle_line = [l for l in text.splitlines() if l.startswith("| Oracle")][0]
    assert oracle_line.endswith("| %+.3f [%+.3f, %+.3f] | %.3f |  |" % (oracle[0], *oracle[1], oracle[2]))


def test_gap_closed_is_reported_where_the_oracle_gap_is_real():
    table = gap_table((0.05, [0.02, 0.08], 0.999), (0.01, [-0.01, 0.03], 0.8), others=(0.02, [0.0, 0.04], 0.9))
    assert demo_module.gap_note(0.05, [0.02, 0.08], 0.01) is None
    for m in ("deepem_map", "deepem_sampling"):
        assert table[m]["gap_closed"] == 0.02 / 0.05 and "gap_closed_note" not in table[m]
    assert table["baseline_rerun"]["gap_closed"] == 0.01 / 0.05
    text = results_md(table)
    assert text.count("| 40% |") == 2 and "| 20% |" in text and "n/a" not in text and "[1]" not in text
    # on the rule's edges: an interval touching zero, a gain equal to the noise control's
    assert demo_module.gap_note(0.05, [0.0, 0.08], 0.01) is not None
    assert demo_module.gap_note(0.05, [0.02, 0.08], -0.05) is not None


def test_a_row_not_selected_on_validation_says_so(tmp_path):
    table = gap_table((0.05, [0.02, 0.08], 0.999), (0.01, [-0.01, 0.03], 0.8))
    table["oracle"]["validation_selected"] = False
    text = results_md(table)
    assert "| Oracle (weak scans' true boxes) [1] |" in text and "[1] Not validation-selected" in text
    (tmp_path / "run").mkdir()
    assert demo_module.best_checkpoint(str(tmp_path / "run")) == (str(tmp_path / "run" / "last.pt"), False)
    (tmp_path / "run" / "best.pt").write_bytes(b"")
    assert demo_module.best_checkpoint(str(tmp_path / "run")) == (str(tmp_path / "run" / "best.pt"), True)


def test_the_seeds_summary_gives_the_oracle_its_gain_and_each_seed_its_gap():
    runs = [{"methods": gap_table(oracle, (0.01, [-0.01, 0.03], 0.8)), "seed": seed}
            for seed, oracle in ((3, (0.05, [0.02, 0.08], 0.99)), (4, (0.005, [-0.02, 0.03], 0.6)))]
    for r in runs:
        r["methods"]["oracle"]["cpm"] = 0.5 + r["methods"]["oracle"]["gain_cpm"]
    runs[1]["methods"]["deepem_map"]["validation_selected"] = False
    agg = demo_module.aggregate(runs)
    assert agg["oracle"]["gain_per_seed"] == [0.05, 0.005] and agg["oracle"]["gain_mean"] == pytest.approx(0.0275)
    assert agg["deepem_map"]["gap_closed_per_seed"] == [0.01 / 0.05, None]
    assert "gap_closed_per_seed" not in agg["oracle"] and "gain_mean" not in agg["baseline"]
    assert agg["deepem_map"]["not_validation_selected_seeds"] == [4]
    assert "not_validation_selected_seeds" not in agg["deepem_sampling"]


def test_the_table_is_wired_to_each_rows_marks(demo, tmp_path, monkeypatch):
    """evaluate_methods on planted detections of the quick run's test scans (the quick models
    score 0 everywhere, which equality cannot tell from a wiring error): no marks for the
    baseline and the noise control, every true nodule for the oracle and DeepEM sampling,
    every other one for DeepEM MAP. Each row's CPM, gain and gap closed are then known exactly,
    and DeepEM MAP, whose folder has no best.pt, is marked as not validation-selected."""
    from deepem.data import tables

    out, _ = demo
    test = json.loads((out / "preprocessed" / "splits.json").read_text())["test"]
    truth = tables.read_annotations(str(out / "raw" / "annotations.csv"))
    nodules = [(u, i) for u in test for i in range(len(truth.get(u, ())))]
    assert len(nodules) >= 2
    every_other = set(nodules[::2])
    planted = {"baseline": set(), "baseline_rerun": set(), "deepem_map": every_other,
               "deepem_sampling": set(nodules), "oracle": set(nodules)}

    class Found:  # what detect_split hands back per scan: the marks' diameters (and overlays' rows)
        def __init__(self, n):
            self.diameter_mm = np.full(n, 5.0)

        def __getitem__(self, rows):
            return self

    def detect_split(path, data_dir, uids, s):
        method = os.path.basename(os.path.dirname(path))
        found = {}
        for u in uids:
            rows = [list(truth[u][i, :3]) + [0.9] for i in range(len(truth.get(u, ()))) if (u, i) in planted[method]]
            found[u] = (Found(len(rows)), np.asarray(rows, dtype=np.float64).reshape(-1, 4))
        return found

    monkeypatch.setattr(demo_module, "detect_split", detect_split)
    monkeypatch.setattr("deepem.infer.overlays.write_overlays", lambda *a, **k: None)
    for m in METHODS:
        (tmp_path / m).mkdir()
        if m != "deepem_map":
            (tmp_path / m / "best.pt").write_bytes(b"")
    table = demo_module.evaluate_methods(str(tmp_path), demo_module.QUICK, str(out / "raw"),
                                         str(out / "preprocessed"), test)
    share = len(every_other) / len(nodules)
    expected = {"baseline": 0.0, "baseline_rerun": 0.0, "deepem_map": share, "deepem_sampling": 1.0, "oracle": 1.0}
    for m in METHODS:
        assert table[m]["cpm"] == pytest.approx(expected[m], abs=1e-12), m
        assert table[m]["validation_selected"] is (m != "deepem_map")
    for m in demo_module.GAIN_ROWS:
        assert table[m]["gain_cpm"] == pytest.approx(expected[m], abs=1e-12), m
    assert table["oracle"]["gain_ci95"][0] > 0 and table["oracle"]["p_gain_positive"] == 1.0
    assert table["deepem_map"]["gap_closed"] == pytest.approx(share, abs=1e-12)
    assert table["deepem_sampling"]["gap_closed"] == pytest.approx(1.0, abs=1e-12)
    assert table["baseline_rerun"]["gap_closed"] == 0.0
    text = results_md(table)
    assert "| DeepEM MAP + remedies [1] |" in text and "[1] Not validation-selected" in text


def test_only_the_quick_setting_is_called_quick():
    from dataclasses import asdict, replace

    assert demo_module.is_quick(asdict(demo_module.QUICK))
    assert demo_module.is_quick(asdict(replace(demo_module.QUICK, em_options=())))  # --paper --quick too
    assert not demo_module.is_quick(asdict(demo_module.DEFAULT))
    assert "Quick setting" not in results_md({m: {"cpm": 0.5, "sensitivity": [0.5] * 7} for m in demo_module.METHODS})

"""`deepem demo --quick`: the one end-to-end run in CI (phantom data -> baseline, DeepEM MAP and
sampling, oracle -> test FROC). Checks the outputs' contract and the splits' integrity; the
quick setting makes no claim about which method wins."""
import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest
import yaml

from deepem import demo as demo_module  # `demo` is the quick run's fixture

pytest.importorskip("SimpleITK")
METHODS = ("baseline", "baseline_rerun", "deepem_map", "deepem_sampling", "oracle")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    r = subprocess.run([sys.executable, "-m", "deepem", "demo", "--quick", "--out", str(out)],
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
    for m in ("baseline_rerun", "deepem_map", "deepem_sampling"):  # the noise control gets a gain too
        row = results["methods"][m]
        assert len(row["gain_ci95"]) == 2 and 0 <= row["p_gain_positive"] <= 1
        assert row["gain_ci95"][0] <= row["gain_cpm"] + 1e-12 <= row["gain_ci95"][1] + 2e-12
    assert results["seconds_total"] > 0
    for name in ("results.md", "froc.png"):
        assert (out / name).stat().st_size > 0
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

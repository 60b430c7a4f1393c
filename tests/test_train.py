"""deepem.train: exact resume, the NaN guard, configuration errors, the CLI, and a 2-process
gloo (DDP) run. Tiny model and data: seconds per run."""
import glob
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from deepem.train import ConfigError, NonFiniteLoss, Trainer, fit, load_config
from deepem.train import checkpoint
from synthetic import make_preprocessed

TINY = ["model.width=0.125", "data.crop_size=32", "optim.batch_size=2", "optim.steps_per_epoch=2",
        "data.workers=0", "loss.num_neg=50", "run.progress=false", "run.log_every=1", "optim.lr=0.01",
        "run.select=loss", "detect.tile=48", "detect.margin=8"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pre")
    make_preprocessed(str(folder), n_scans=4, shape=(48, 48, 48))
    return str(folder)


def config(data, out, epochs=3, more=()):
    return load_config(overrides=TINY + ["data.root=" + data, "run.out=" + str(out),
                                         "optim.epochs=%d" % epochs] + list(more))


def weights(path):
    return checkpoint.load(path)["model"]


@pytest.mark.parametrize("optimizer,ema,warmup", [("sgd", 0.0, 0), ("adamw", 0.0, 0), ("adamw", 0.9, 3)])
def test_resume_is_bit_identical(data, tmp_path, optimizer, ema, warmup):
    more = ["optim.name=" + optimizer, "optim.ema_decay=%g" % ema, "optim.warmup_steps=%d" % warmup]
    fit(config(data, tmp_path / "whole", epochs=3, more=more))
    fit(config(data, tmp_path / "split", epochs=3, more=more), stop_at=2)
    fit(config(data, tmp_path / "split", epochs=3, more=more), resume="auto")
    for key in ("model", "student") if ema else ("model",):
        a, b = (checkpoint.load(tmp_path / run / "last.pt")[key] for run in ("whole", "split"))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (key, k)
    lines = [json.loads(l) for l in open(tmp_path / "split" / "metrics.jsonl")]
    assert [l["epoch"] for l in lines if l["kind"] == "epoch"] == [0, 1, 2]
    for name in ("config.yaml", "loss.png", "best.pt"):
        assert (tmp_path / "whole" / name).exists()
    state = checkpoint.load(tmp_path / "whole" / "last.pt")
    assert type(Trainer(config(data, tmp_path / "t", more=more)).optimizer).__name__.lower() == optimizer
    assert state["epoch"] == 3 and "optimizer" in state and "rng" in state and state["config"]["model"]["width"] == 0.125


def test_resume_auto_without_checkpoint_starts_fresh_and_selects_by_cpm(data, tmp_path):
    t = fit(config(data, tmp_path / "fresh", epochs=1, more=["run.select=cpm"]), resume="auto")
    assert t.epoch == 1
    record = t.history[-1]
    assert 0.0 <= record["val_cpm"] <= 1.0 and record["selection"] == -record["val_cpm"]
    assert (tmp_path / "fresh" / "best.pt").exists()


def test_nan_loss_stops_and_keeps_last_good_checkpoint(data, tmp_path):
    cfg = config(data, tmp_path / "nan", epochs=3)
    t = Trainer(cfg)
    calls = {"n": 0}

    def poison(module, inputs, output):
        calls["n"] += 1
        return output * float("nan") if calls["n"] > 2 else output  # from epoch 1's first step

    t.model.register_forward_hook(poison)
    with pytest.raises(NonFiniteLoss, match=r"epoch 1, step 0"):
        fit(cfg, trainer=t)
    good = checkpoint.load(tmp_path / "nan" / "last.pt")
    assert good["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in good["model"].values() if v.is_floating_point())


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "deepem", *args], capture_output=True, text=True, encoding="utf-8",
                          errors="replace",
                          env={**os.environ, **(env or {})}, timeout=600)


def test_config_errors_are_one_clear_line(data, tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'optim.lrr'"):
        load_config(overrides=["optim.lrr=0.1"])
    with pytest.raises(ConfigError, match="'optim.batch_size' must be int"):
        load_config(overrides=["optim.batch_size=two"])
    with pytest.raises(ConfigError, match="'optim.name' must be sgd or adamw, got 'adam'"):
        load_config(overrides=["optim.name=adam"])
    with pytest.raises(ConfigError, match=r"'optim.ema_decay' must be in \[0, 1\), got 1.0"):
        load_config(overrides=["optim.ema_decay=1"])
    with pytest.raises(ConfigError, match="'optim.ema_decay' must be in"):
        load_config(overrides=["optim.ema_decay=-0.1"])
    with pytest.raises(ConfigError, match="'optim.warmup_steps' must be >= 0, got -1"):
        load_config(overrides=["optim.warmup_steps=-1"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  depth: 3\n")
    r = run_cli("train", "--config", str(bad), "--out", str(tmp_path / "r"))
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "model.depth" in r.stderr
    r = run_cli("train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r"))
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "missing" in r.stderr
    r = run_cli("train", "--data", data, "--out", str(tmp_path / "r"), "--set", "data.train_split=nosuch")
    assert r.returncode == 2 and "nosuch" in r.stderr


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_logs(folder, tail=1500):
    """The end of every rank's own output that torchrun --log-dir kept (its summary alone does
    not say why a rank died)."""
    parts = []
    for path in sorted(glob.glob(os.path.join(str(folder), "**", "*.log"), recursive=True)):
        with open(path, errors="replace") as f:
            text = f.read()
        if text.strip():
            parts.append("--- %s\n%s" % (os.path.relpath(path, str(folder)), text[-tail:]))
    return "\n".join(parts) or "(no rank output kept)"


def test_two_process_gloo_run(data, tmp_path):
    out, logs = tmp_path / "ddp", tmp_path / "rank_logs"
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
            "--master_port", str(free_port()), "--log-dir", str(logs), "--tee", "3",
            "-m", "deepem", "train", "--data", data, "--out", str(out)]
    for item in TINY + ["optim.epochs=2", "run.threads=1"]:
        args += ["--set", item]
    # should a rank abort again: its Python stack (faulthandler) and the C++ one reach its log
    env = dict(os.environ, PYTHONFAULTHANDLER="1", TORCH_SHOW_CPP_STACKTRACES="1")
    r = subprocess.run(args, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=600,
                       env=env)
    assert r.returncode == 0, "%s\nranks' own output:\n%s" % (r.stderr[-2000:], rank_logs(logs))
    assert r.stdout.count("trained 2 epochs") == 1  # rank 0 alone reports and writes
    lines = [json.loads(l) for l in open(out / "metrics.jsonl")]
    assert [l["step"] for l in lines if l["kind"] == "step"] == [1, 2, 1, 2]
    state = checkpoint.load(out / "last.pt")
    assert state["epoch"] == 2 and not any(k.startswith("module.") for k in state["model"])


def test_weak_z_band_scales_with_the_crop(data, tmp_path):
    """em.exclude_band is in scan voxels: in a crop scaled by s (scale augmentation) the band
    around each weak slice is s times as wide, centred where the slice lands in the crop."""
    t = Trainer(config(data, tmp_path / "band", more=["em.exclude_band=5"]))
    seen = []

    def capture(output, boxes, neg_exclude_z=None, **kw):
        seen.append([b.clone() for b in neg_exclude_z])
        raise StopIteration

    t.loss = capture
    batch = {"image": torch.zeros(2, 1, 32, 32, 32), "coord": torch.zeros(2, 3, 8, 8, 8),
             "boxes": [torch.zeros(0, 4), torch.zeros(0, 4)],
             "weak_z": [torch.tensor([10.0]), torch.tensor([4.0, 20.0])], "scale": [1.0, 1.25]}
    with pytest.raises(StopIteration):
        t.train_step(batch, 0, 0)
    torch.testing.assert_close(seen[0][0], torch.tensor([[5.0, 15.0]]))
    torch.testing.assert_close(seen[0][1], torch.tensor([[-2.25, 10.25], [13.75, 26.25]]))


def test_weight_average_is_validated_and_saved_and_follows_the_ema_rule(data, tmp_path):
    """optim.ema_decay: every step moves the average by the EMA rule (a float64 reference
    here), with a warm-up from random weights and the plain decay from an init; the
    checkpoint's model is the average, its student the trained weights."""
    from deepem.train.ema import WeightAverage
    from deepem.train.trainer import load_init

    def run(name, decay, init=None):
        cfg = config(data, tmp_path / name, epochs=1, more=["optim.ema_decay=%g" % decay])
        t = Trainer(cfg)
        if init:
            load_init(t, init)
            assert t.average.state() == {"updates": 0, "warmup": False}
        seen = []
        t.after_step.insert(0, lambda: seen.append({k: v.double().clone() for k, v in t.model.state_dict().items()}))
        ref = {k: v.double().clone() for k, v in t.model.state_dict().items()}
        fit(cfg, trainer=t)
        counters = {n for n, v in t.model.state_dict().items() if not v.is_floating_point()}  # copied
        for k, student in enumerate(seen):
            d = decay if init else min(decay, (1.0 + k) / (10.0 + k))
            ref = {n: (student[n] if n in counters else d * v + (1 - d) * student[n]) for n, v in ref.items()}
        state = checkpoint.load(tmp_path / name / "last.pt")
        assert state["ema"] == {"updates": len(seen), "warmup": not init} and len(seen) == 2
        for n, v in state["model"].items():
            assert torch.allclose(v.double(), ref[n], rtol=1e-5, atol=1e-6), n
            assert torch.equal(state["student"][n], t.model.state_dict()[n]), n
        assert any(not torch.equal(state["model"][n], state["student"][n]) for n in state["model"])
        return state

    first = run("scratch", 0.8)
    t = Trainer(config(data, tmp_path / "t", more=["optim.ema_decay=0.5"]))
    load_init(t, str(tmp_path / "scratch" / "last.pt"))  # both start from the init's (averaged) weights
    for n, v in t.average.model.state_dict().items():
        assert torch.equal(v, first["model"][n]) and torch.equal(t.model.state_dict()[n], first["model"][n]), n
    run("from_init", 0.5, init=str(tmp_path / "scratch" / "last.pt"))
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(t.model, 1.0)


def test_weight_average_refuses_a_decay_outside_0_1():
    from deepem.train.ema import WeightAverage

    for decay in (0.0, 1.0, -0.5, float("nan")):
        with pytest.raises(ValueError, match="weight average decay must be in"):
            WeightAverage(torch.nn.Linear(2, 2), decay)


def test_lr_warms_up_linearly_over_the_first_steps_then_follows_the_schedule(data, tmp_path):
    cfg = config(data, tmp_path / "warm", epochs=3, more=["optim.warmup_steps=3", "optim.lr_milestones=[0.6]",
                                                          "optim.lr_factors=[0.1]"])
    fit(cfg)
    lrs = [json.loads(l)["lr"] for l in open(tmp_path / "warm" / "metrics.jsonl") if '"kind": "step"' in l]
    assert lrs == pytest.approx([0.01 / 3, 0.02 / 3, 0.01, 0.01, 0.001, 0.001])


# ---- the test split never reaches a choice ----------------------------------------------------

@pytest.mark.parametrize("overrides,message", [
    (["data.val_split=test"], "'data.val_split' must not be the held-out 'test' split"),
    (["em.calibrate=test"], "'em.calibrate' must not be the held-out 'test' split"),
    (["em.calibrate=weak"], r"'em.calibrate' must not be the weak split \('weak', em.weak_split\)"),
    (["em.weak_split=unlabelled", "em.calibrate=unlabelled"], "'em.calibrate' must not be the weak split"),
])
def test_selection_and_calibration_refuse_the_test_and_weak_splits(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=overrides)
    load_config(overrides=["data.val_split=val", "em.calibrate=val"])  # what the demo does


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    """A splits file with a held-out 'test' split, and uid files that smuggle its scans (or a
    weak scan) into another role under another name."""
    folder = tmp_path_factory.mktemp("held")
    uids = make_preprocessed(str(folder), n_scans=6, shape=(48, 48, 48),
                             splits=lambda u: {"full": u[:2], "val": u[2:3], "weak": u[3:4], "test": u[4:]})
    (folder / "val_and_test.txt").write_text("%s\n%s\n" % (uids[2], uids[5]))
    (folder / "val_and_weak.txt").write_text("%s\n%s\n" % (uids[2], uids[3]))
    (folder / "full_and_val.txt").write_text("\n".join(uids[:3]) + "\n")
    return str(folder)


def test_a_split_file_holding_test_scans_is_refused_for_selection_and_calibration(held_out, tmp_path):
    from deepem.em import em_fit

    renamed = os.path.join(held_out, "val_and_test.txt")
    with pytest.raises(ConfigError, match=r"'data.val_split' .* holds 1 scan\(s\) of the held-out 'test' split"):
        fit(config(held_out, tmp_path / "a", epochs=1, more=["data.val_split=" + renamed]))
    assert not (tmp_path / "a").exists()  # refused before anything was written
    with pytest.raises(ConfigError, match="'data.val_split' .* held-out 'test' split"):
        em_fit(config(held_out, tmp_path / "b", epochs=1, more=["data.val_split=" + renamed]))
    with pytest.raises(ConfigError, match="'em.calibrate' .* held-out 'test' split"):
        em_fit(config(held_out, tmp_path / "c", epochs=1, more=["em.calibrate=" + renamed]))
    with pytest.raises(ConfigError, match=r"'em.calibrate' .* holds 1 weak scan\(s\) of em.weak_split"):
        em_fit(config(held_out, tmp_path / "d", epochs=1, more=["em.calibrate=" + os.path.join(held_out,
                                                                                              "val_and_weak.txt")]))


def test_an_unvalidated_epoch_is_never_selected(held_out, tmp_path):
    """run.val_every=2 over 3 epochs validates epochs 1 and 2 only: after epoch 0 there is no
    best.pt (its training loss competes with nothing), and best.pt is then the validated epoch
    with the lowest validation loss."""
    cfg = config(held_out, tmp_path / "run", epochs=3, more=["run.val_every=2"])
    t = fit(cfg, stop_at=1)
    assert t.best is None and not (tmp_path / "run" / "best.pt").exists()
    assert (tmp_path / "run" / "last.pt").exists()
    t = fit(cfg, resume="auto")
    validated = [h for h in t.history if "selection" in h]
    assert [h["epoch"] for h in validated] == [1, 2] and "val_loss" not in t.history[0]
    best = min(validated, key=lambda h: (h["val_loss"], h["epoch"]))
    state = checkpoint.load(tmp_path / "run" / "best.pt")
    assert t.best == (best["val_loss"], best["epoch"]) and state["epoch"] == best["epoch"] + 1
    assert tuple(state["best"]) == t.best


def test_best_checkpoint_is_the_best_validated_epoch_and_its_cpm_is_recomputed(held_out, tmp_path):
    """Selection by validation CPM over 3 validated epochs: best.pt holds the epoch with the
    highest CPM (the first of equal ones), and detecting the validation scans with best.pt
    and scoring them with deepem.eval.froc (annotations written out here from the synthetic
    scans' identity geometry) gives that epoch's recorded CPM exactly. (Validated on the
    training scans, every mark kept, one thread. Width 0.25 at lr 0.005, so that 96 steps
    learn: CPMs 0.1 / 0.5 / 0.8 with deepem's CPU kernels, 0 / 0.36 / 0.68 with torch's layers,
    on 1 or 2 threads; width 0.125 at lr 0.02 had scored 0 or 0.01 by the rounding of the layers
    it ran.)"""
    from deepem.eval import froc
    from deepem.infer import Detector

    val_file = os.path.join(held_out, "full_and_val.txt")
    cfg = config(held_out, tmp_path / "run", epochs=3, more=[
        "run.select=cpm", "data.val_split=" + val_file, "optim.name=adamw", "optim.lr=0.005",
        "model.width=0.25", "optim.steps_per_epoch=32", "data.random_fraction=0", "detect.threshold=-1000", "run.threads=1"])
    t = fit(cfg)
    cpms = [h["val_cpm"] for h in t.history]
    assert len(cpms) == 3 and all(0 <= c <= 1 for c in cpms) and max(cpms) > 0
    best_epoch = cpms.index(max(cpms))
    state = checkpoint.load(tmp_path / "run" / "best.pt")
    assert state["epoch"] == best_epoch + 1 and t.best == (-cpms[best_epoch], best_epoch)
    val = open(val_file).read().split()
    det = Detector(str(tmp_path / "run" / "best.pt"), tile=48, margin=8, threshold=-1000)
    marks, annotations = {}, {}
    for uid in val:
        m = det.detect((held_out, uid))
        marks[uid] = np.stack([m.x, m.y, m.z, m.probability], 1)
        zyxd = np.load(os.path.join(held_out, uid + "_label.npy"))  # voxel (z, y, x) is world (x, y, z) mm
        annotations[uid] = np.stack([zyxd[:, 2], zyxd[:, 1], zyxd[:, 0], zyxd[:, 3]], 1).astype(np.float64)
    assert froc.evaluate(marks, annotations, val, bootstrap=0).cpm == cpms[best_epoch]


def test_em_selects_only_among_validated_epochs(held_out, tmp_path):
    """The EM loop's model selection follows the same rule as fit's: with run.val_every=2 over 3
    epochs no best.pt after the unvalidated epoch 0, then the validated epoch of lowest loss."""
    from deepem.em import em_fit

    fit(config(held_out, tmp_path / "init", epochs=1))
    cfg = config(held_out, tmp_path / "em", epochs=3, more=["run.val_every=2", "em.weak_steps=1", "em.lobe_steps=2",
                                                            "em.fraction=1", "run.threads=1"])
    t = em_fit(cfg, init=str(tmp_path / "init" / "last.pt"), stop_at=1)
    assert t.best is None and not (tmp_path / "em" / "best.pt").exists()
    t = em_fit(cfg, resume="auto")
    validated = [h for h in t.history if "selection" in h]
    assert [h["epoch"] for h in validated] == [1, 2]
    best = min(validated, key=lambda h: (h["val_loss"], h["epoch"]))
    assert t.best == (best["val_loss"], best["epoch"])
    assert checkpoint.load(tmp_path / "em" / "best.pt")["epoch"] == best["epoch"] + 1

"""The main job: the DeepEM phantom benchmark end to end (`deepem demo`).

Stages, each reused when a second run finds it finished (a stage.json marker in its folder):
  data      phantom CTs (demo field of view) and the weak split's medical records (DICOM series,
            an NLST-style abnormality table, reports) -> weak labels mined from the records, as
            `deepem weak-labels` does, scored against the truth -> preprocess; splits full /
            weak / val / test
  init      supervised training on the full split at a constant lr: the shared start
  baseline  from init, on the full split, for as many steps (and the same decaying lr) as EM
  baseline_rerun   the baseline again with another training seed (crops, negatives): the
            noise control, whose "gain" shows how far training randomness alone moves the CPM
  em_map, em_sampling   DeepEM from init with the weak split's weak labels only
  oracle    from init on full + weak with the weak scans' TRUE boxes: the ceiling
  test      each method's validation-selected model detects the test split; LUNA16 FROC,
            paired bootstrap of each method against the baseline
Every stage calls the same functions as the subcommands (phantom, preprocess, train, em,
detect, evaluate). The test split is read only by the final detection; model selection uses
the validation split; the EM path never reads the weak scans' true boxes.
"""
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, replace

import numpy as np

from .data import io, phantom, preprocess, tables
from .data.atomic import atomic_write, remove_stale_temps
from .machine import describe
from .train import config as cfg

METHODS = ("baseline", "baseline_rerun", "deepem_map", "deepem_sampling", "oracle")
COMPARED = ("baseline_rerun", "deepem_map", "deepem_sampling")  # rows with a share of the baseline -> oracle gap
GAIN_ROWS = COMPARED + ("oracle",)  # rows with a paired gain over the baseline
LABELS = {"baseline": "Baseline (full only)", "baseline_rerun": "Baseline, 2nd training seed (noise control)",
          "deepem_map": "DeepEM MAP", "deepem_sampling": "DeepEM sampling (k=2)",
          "oracle": "Oracle (weak scans' true boxes)"}
DEEPEM_ROWS = ("deepem_map", "deepem_sampling")
RERUN_SEED_OFFSET = 100  # the noise control's training seed: seed + this
# The DeepEM rows' options beyond the paper (deepem.em; docs/deepem-study.md says how validation
# chose them): the E-step calibrated on the validation scans, a frozen initial teacher, the weak
# loss x the pick's posterior, full and weak crops in every batch, pseudo boxes for
# classification only, the box's z from the labelled slice, and no lobe term (the calibration
# fits the posterior without one, its scans having no lobes, so a lobe factor on top would move
# the posteriors that its minimum was fitted on). `deepem demo --paper` drops them all.
REMEDIES = (("calibrate", "val"), ("teacher", "init"), ("weighted", True), ("mix", True),
            ("pseudo_regression", False), ("box_z_from_label", True), ("use_lobe", False))


@dataclass
class Settings:
    n_full: int  # fully labelled scans
    n_weak: int  # weakly labelled scans (central slice + lobe only)
    n_val: int  # model selection
    n_test: int  # final evaluation only
    width: float  # Res18 channel multiplier
    crop: int  # training crop side
    batch: int
    optimizer: str  # sgd | adamw
    lr: float  # constant through init; after it, x lr_factors from each milestone (a share of em_epochs)
    lr_milestones: tuple
    lr_factors: tuple
    dropout: float  # before the head (DeepLung: 0.5; it stalls a narrow model's first hundreds of steps)
    random_fraction: float  # share of random (mostly negative) training crops
    init_epochs: int  # supervised epochs before EM
    em_epochs: int  # EM epochs (= the baseline's and oracle's epochs after init)
    steps: int  # gradient steps per epoch (every method; fixed so that all get the same number)
    weak_steps: int  # of those, EM's steps over weak crops
    em_fraction: float  # share of weak scans re-estimated per E-step
    lobe_lr_factor: float  # lobe model's SGD lr = this x the detector's (paper, with SGD: 10)
    weight_draws: bool  # sampling: scale each drawn pseudo box's loss by its posterior
    select: str  # validation metric: cpm | loss
    tile: int  # detection tile side; 0: the fewest tiles that fit memory (deepem.infer.plan)
    margin: int
    num_neg: int
    nodule_p_none: float = 0.25  # phantom: share of scans without a nodule (LUNA16-like) ...
    nodule_extra_mean: float = 1.0  # ... else 1 + Poisson(this) nodules
    em_options: tuple = ()  # (key, value) pairs of em.* settings beyond the paper for the DeepEM rows
    ema_decay: float = 0.0  # > 0: every run validates, selects and saves an EMA of its weights (optim.ema_decay)
    warmup_steps: int = 0  # every run's lr rises linearly over its first this many steps (optim.warmup_steps)
    weak_from: str = "nlst"  # the weak split's labels are mined from its records: 'nlst' (abnormality table) or 'reports'


QUICK = Settings(n_full=3, n_weak=3, n_val=2, n_test=4, width=0.125, crop=32, batch=4, optimizer="adamw", lr=0.01,
                 lr_milestones=(), lr_factors=(), dropout=0.0, random_fraction=0.1, init_epochs=1, em_epochs=1, steps=3,
                 weak_steps=1, em_fraction=1.0, lobe_lr_factor=300.0, weight_draws=True, select="loss", tile=0,
                 margin=8, num_neg=100, em_options=REMEDIES, ema_decay=0.5, warmup_steps=2)
# Every run averages its weights (EMA 0.99) and warms its lr up over 50 steps: without them two
# baselines that differed only in their training seed ended 0.08 validation CPM apart (32 full
# scans, seed 10), with them 0.007 (docs/deepem-study.md, section 5).
DEFAULT = Settings(n_full=32, n_weak=96, n_val=24, n_test=100, width=0.25, crop=32, batch=8, optimizer="adamw",
                   lr=1e-3, lr_milestones=(1 / 3, 2 / 3), lr_factors=(0.3, 0.1), dropout=0.0, random_fraction=0.1,
                   init_epochs=6, em_epochs=3, steps=125, weak_steps=62, em_fraction=1.0, lobe_lr_factor=300.0,
                   weight_draws=True, select="cpm", tile=0, margin=8, num_neg=200, nodule_p_none=0.0,
                   nodule_extra_mean=2.0, em_options=REMEDIES, ema_decay=0.99, warmup_steps=50)
FULL = Settings(n_full=60, n_weak=240, n_val=40, n_test=100, width=1.0, crop=96, batch=32, optimizer="sgd", lr=1e-3,
                lr_milestones=(0.5, 0.75), lr_factors=(0.5, 0.1), dropout=0.5, random_fraction=0.3, init_epochs=40,
                em_epochs=40, steps=100, weak_steps=50, em_fraction=1 / 16, lobe_lr_factor=10.0, weight_draws=False,
                select="cpm", tile=144, margin=32, num_neg=800)

def log(msg):
    print("[demo %s] %s" % (time.strftime("%H:%M:%S"), msg), flush=True)


class Stage:
    """A stage folder with a completion marker holding the stage's seconds and results."""

    def __init__(self, root, name):
        self.dir, self.name = os.path.join(root, name), name
        self.marker = os.path.join(self.dir, "stage.json")

    def done(self):
        if os.path.isfile(self.marker):
            with open(self.marker) as f:
                return json.load(f)
        return None

    def finish(self, seconds, **info):
        record = {"seconds": seconds, **info}
        atomic_write(self.marker, lambda f: f.write(json.dumps(record, indent=1).encode()))
        return record


def run_stage(root, name, work, times):
    stage = Stage(root, name)
    record = stage.done()
    if record is not None:
        log("%s: finished earlier (%.0f s), reused" % (name, record["seconds"]))
    else:
        log("%s ..." % name)
        t0 = time.perf_counter()
        info = work(stage.dir)
        record = stage.finish(time.perf_counter() - t0, **(info if isinstance(info, dict) else {}))
        log("%s: done in %.0f s" % (name, record["seconds"]))
    times[name] = record["seconds"]
    return record


def make_data(out, s: Settings, seed, workers):
    raw, pre = os.path.join(out, "raw"), os.path.join(out, "preprocessed")
    n = s.n_full + s.n_weak + s.n_val + s.n_test
    # The generator's test share becomes val + test here; weak labels exist for the weak split only.
    stats = phantom.NoduleOptions(p_none=s.nodule_p_none, extra_mean=s.nodule_extra_mean)
    splits = phantom.make_dataset(raw, n_scans=n, seed=seed, preset="demo", workers=workers,
                                  split=(s.n_full, s.n_weak, s.n_val + s.n_test), progress=True, nodule_stats=stats,
                                  records=True)
    weak_csv, mined = mine_weak_labels(raw, os.path.join(out, "mined"), s.weak_from, splits["weak"], workers)
    report = preprocess.preprocess_dataset(raw, pre, annotations_csv=os.path.join(raw, "annotations.csv"),
                                           weak_csv=weak_csv, seriesuids_csv=os.path.join(raw, "seriesuids.csv"),
                                           workers=workers)
    if report["failed"]:
        raise RuntimeError("preprocessing failed for %s" % ", ".join(sorted(report["failed"])))
    held = list(splits["test"])
    rng = np.random.default_rng([seed, 5])
    order = rng.permutation(len(held))
    ours = {"full": splits["full"], "weak": splits["weak"], "val": [held[i] for i in order[: s.n_val]],
            "test": [held[i] for i in order[s.n_val:]]}
    with open(os.path.join(pre, "splits.json"), "w") as f:
        json.dump(ours, f, indent=1)
    # The oracle trains on full + weak with true boxes: a uid list file as its train split.
    with open(os.path.join(pre, "full_and_weak.txt"), "w") as f:
        f.write("\n".join(ours["full"] + ours["weak"]) + "\n")
    return {"scans": n, "splits": {k: len(v) for k, v in ours.items()}, "weak_labels": mined}


def mine_weak_labels(raw, out_dir, source, weak_uids, workers):
    """The weak split's labels, mined from its records (the NLST-style table or the reports) as
    `deepem weak-labels` does, and scored against the phantom's truth (central slice within one
    slice, lobe exact). -> (weak_labels.csv path, the mining's numbers)"""
    from .data.phantom.records import read_truth
    from .emr import score, weak_labels

    records = os.path.join(raw, "records")
    if source == "nlst":
        mining = weak_labels.mine_nlst(os.path.join(records, "nlst_ctab.csv"), os.path.join(records, "dicom"),
                                       out_dir, image_info=os.path.join(records, "image_info.csv"), workers=workers,
                                       progress=False)
    elif source == "reports":
        mining = weak_labels.mine_reports(os.path.join(records, "reports.csv"), os.path.join(records, "dicom"),
                                          out_dir, workers=workers, progress=False)
    else:
        raise ValueError("weak labels come from 'nlst' or 'reports', not %r" % source)
    path = os.path.join(out_dir, "weak_labels.csv")
    truth, spacing = read_truth(raw, weak_uids)
    scored = score.score_labels(tables.read_weak_labels(path), truth, spacing)
    return path, {"source": source, **scored, "rejected": dict(sorted(mining.counts().items()))}


def train_config(out_dir, data_dir, s: Settings, seed, em=None, train_split="full", init=False, extra=None):
    """A run's config: init (constant lr, init_epochs) or a method after it (em_epochs, decaying lr)."""
    epochs, milestones, factors = (s.init_epochs, [], []) if init else (s.em_epochs, list(s.lr_milestones),
                                                                        list(s.lr_factors))
    values = {
        "data": {"root": data_dir, "train_split": train_split, "val_split": "val", "crop_size": s.crop,
                 "random_fraction": s.random_fraction,
                 "workers": 0},  # crops are cheap; worker start-up per epoch is not, on 2 cores
        "model": {"width": s.width, "dropout": s.dropout},
        "loss": {"num_neg": s.num_neg},
        "optim": {"name": s.optimizer, "lr": s.lr, "batch_size": s.batch, "epochs": epochs,
                  "steps_per_epoch": s.steps, "lr_milestones": milestones, "lr_factors": factors,
                  "ema_decay": s.ema_decay, "warmup_steps": s.warmup_steps},
        # init selects nothing (its last weights are the start); the methods validate every epoch
        "run": {"out": out_dir, "seed": seed, "select": s.select, "progress": True, "log_every": 5,
                "val_every": epochs if init else 1},
        "detect": {"tile": s.tile, "margin": s.margin},
    }
    if em is not None:
        values["em"] = {"method": em, "k": 2, "fraction": s.em_fraction, "weak_steps": s.weak_steps,
                        "full_steps": s.steps - s.weak_steps,
                        "lobe_lr_factor": s.lobe_lr_factor, "weighted": em == "sample" and s.weight_draws,
                        **dict(s.em_options)}
    return cfg.load_config(extra=cfg.merge(values, extra or {}))


def best_checkpoint(run_dir):
    """(path, validation_selected): best.pt, the epoch that validation selected; else last.pt
    (no epoch had a finite validation metric), which the results must then say."""
    best = os.path.join(run_dir, "best.pt")
    if os.path.isfile(best):
        return best, True
    return os.path.join(run_dir, "last.pt"), False


def gap_note(oracle_gain, oracle_ci95, noise_gain):
    """None where the baseline -> oracle gap is real, else the reason it is not. Real: the
    oracle's paired gain over the baseline is clear of zero by its 95% interval and larger
    than the noise control's gain in size (training randomness alone moved the CPM that far,
    either way). Only a real gap is a yardstick for "gap closed"."""
    if not (oracle_gain > 0 and oracle_ci95[0] > 0):
        return ("the oracle's gain over the baseline, %+.3f [%+.3f, %+.3f], is not clear of zero"
                % (oracle_gain, oracle_ci95[0], oracle_ci95[1]))
    if not oracle_gain > abs(noise_gain):
        return ("the oracle's gain over the baseline, %+.3f, is not larger than the noise control's %+.3f"
                % (oracle_gain, noise_gain))
    return None


def add_gains(table, gains):
    """Adds to `table`'s rows (cpm, ...) each GAIN_ROWS row's paired gain over the baseline
    (gains: froc.compare results) and each COMPARED row's share of the baseline -> oracle gap:
    gain / the oracle's gain where gap_note finds the gap real, else None with the reason in
    gap_closed_note. Returns the table."""
    for m in GAIN_ROWS:
        table[m].update(gain_cpm=float(gains[m]["diff"]), gain_ci95=[float(v) for v in gains[m]["ci95"]],
                        p_gain_positive=float(gains[m]["p_positive"]))
    oracle = table["oracle"]
    note = gap_note(oracle["gain_cpm"], oracle["gain_ci95"], table["baseline_rerun"]["gain_cpm"])
    for m in COMPARED:
        table[m]["gap_closed"] = None if note else table[m]["gain_cpm"] / oracle["gain_cpm"]
        if note:
            table[m]["gap_closed_note"] = note
    return table


def detect_split(checkpoint_path, data_dir, uids, s: Settings):
    from .infer import Detector

    det = Detector(checkpoint_path, tile=s.tile or None, margin=s.margin)
    marks = {}
    for uid in uids:
        m = det.detect((data_dir, uid))
        marks[uid] = (m, np.concatenate([m.world_xyz, m.probability[:, None]], 1))
    return marks


def evaluate_methods(out, s: Settings, raw, pre, test_uids):
    from .eval import froc, plots
    from .infer.overlays import write_overlays

    annotations = tables.read_annotations(os.path.join(raw, "annotations.csv"))
    excluded = tables.read_annotations(os.path.join(raw, "annotations_excluded.csv"), excluded=True)
    marks, results, selected = {}, {}, {}
    os.makedirs(os.path.join(out, "test"), exist_ok=True)
    for method in METHODS:
        path, selected[method] = best_checkpoint(os.path.join(out, method))
        found = detect_split(path, pre, test_uids, s)
        marks[method] = {u: m[1] for u, m in found.items()}
        froc.write_marks(os.path.join(out, "test", method + ".csv"), marks[method],
                         {u: m[0].diameter_mm for u, m in found.items()})
        results[method] = froc.evaluate(marks[method], annotations, test_uids, excluded=excluded, bootstrap=1000)
        if method == "deepem_sampling":  # a few pictures of what DeepEM finds on the test split
            for uid in test_uids[:3]:
                vol = io.read_image(preprocess.load_meta(pre, uid)["source"])
                write_overlays(vol, found[uid][0][:2], os.path.join(out, "overlays"), min_probability=0.5)
    table = {}
    for method in METHODS:
        r = results[method]
        table[method] = {"cpm": float(r.cpm), "sensitivity": [float(v) for v in r.sensitivity],
                         "cpm_ci95": r.ci95["cpm"], "validation_selected": selected[method]}
    gains = {m: froc.compare(marks[m], marks["baseline"], annotations, test_uids, excluded=excluded)
             for m in GAIN_ROWS}
    add_gains(table, gains)
    plots.froc_plot(os.path.join(out, "froc.png"), {label(m, asdict(s)): results[m] for m in METHODS},
                    title="DeepEM phantom benchmark, %d test scans" % len(test_uids))
    return table


def label(method, settings):
    """A row's name; the DeepEM rows say when they run options beyond the paper."""
    remedies = method in DEEPEM_ROWS and settings.get("em_options")
    return LABELS[method] + (" + remedies" if remedies else " (paper)" if method in DEEPEM_ROWS else "")


def check_same_settings(out, s: Settings, seed):
    """Finished stages are reused, so a folder must hold one setting: refuse another one."""
    path = os.path.join(out, "settings.json")
    ours = json.loads(json.dumps({"seed": seed, **asdict(s)}))  # tuples as lists, as read back
    if os.path.isfile(path):
        with open(path) as f:
            theirs = json.load(f)
        if theirs != ours:
            changed = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
            raise ValueError("%s holds a demo run with other settings (%s differ); give another --out or remove it"
                             % (out, ", ".join(changed)))
    else:
        atomic_write(path, lambda f: f.write(json.dumps(ours, indent=1).encode()))


def run_once(out, s: Settings, seed, workers):
    """One seed of the benchmark; returns results.json's content."""
    from .em import em_fit
    from .train.trainer import fit

    os.makedirs(out, exist_ok=True)
    check_same_settings(out, s, seed)
    remove_stale_temps(out, recursive=True)
    times = {}
    pre, raw = os.path.join(out, "preprocessed"), os.path.join(out, "raw")
    data = run_stage(out, "data", lambda d: make_data(out, s, seed, workers), times)
    init_ckpt = os.path.join(out, "init", "last.pt")
    run_stage(out, "init", lambda d: fit(train_config(d, pre, s, seed, init=True), resume="auto"), times)
    run_stage(out, "baseline", lambda d: fit(train_config(d, pre, s, seed), init=init_ckpt, resume="auto"), times)
    run_stage(out, "baseline_rerun", lambda d: fit(train_config(d, pre, s, seed + RERUN_SEED_OFFSET), init=init_ckpt,
                                                   resume="auto"), times)
    # a frozen initial teacher proposes the same in both DeepEM rows: the second reads the first's
    shared = {"em": {"proposal_cache": os.path.join(out, "teacher_proposals")}}
    for method, em in (("deepem_map", "map"), ("deepem_sampling", "sample")):
        run_stage(out, method, lambda d, em=em: em_fit(train_config(d, pre, s, seed, em=em, extra=shared),
                                                       init=init_ckpt, resume="auto"), times)
    both = os.path.join(pre, "full_and_weak.txt")
    run_stage(out, "oracle", lambda d: fit(train_config(d, pre, s, seed, train_split=both), init=init_ckpt,
                                           resume="auto"), times)
    with open(os.path.join(pre, "splits.json")) as f:
        test_uids = json.load(f)["test"]
    record = run_stage(out, "test", lambda d: {"methods": evaluate_methods(out, s, raw, pre, test_uids)}, times)
    # Stages reused from an earlier run count with the seconds they took then.
    results = {"methods": record["methods"], "seconds_total": float(sum(times.values())), "stage_seconds": times,
               "seed": seed, "settings": asdict(s), "data": data, "machine": describe()}
    write_results(out, results)
    return results


def is_quick(settings):
    """Whether a run's settings are the quick ones (data and training budget; options aside)."""
    return all(settings.get(k) == getattr(QUICK, k) for k in ("n_full", "n_weak", "n_test", "width", "steps",
                                                                "init_epochs", "em_epochs"))


def markdown(results, title):
    mc = results["machine"]
    rates = ["1/8", "1/4", "1/2", "1", "2", "4", "8"]
    lines = ["# %s" % title, ""]
    if is_quick(results["settings"]):
        lines += ["**Quick setting**: a check that the whole pipeline runs (tiny data, a few training steps; CI runs "
                  "it). Its CPMs mean nothing; the default setting is the benchmark.", ""]
    lines += ["| method | " + " | ".join(rates) + " | CPM | gain vs baseline [95% CI] | P(gain > 0) "
              "| gap closed |", "|---" * 12 + "|"]
    notes = []  # footnotes, numbered in order of first use

    def note(text):
        if text not in notes:
            notes.append(text)
        return "[%d]" % (notes.index(text) + 1)

    for m in METHODS:
        r = results["methods"][m]
        gain = p = gap = ""
        if "gain_cpm" in r:
            gain = "%+.3f [%+.3f, %+.3f]" % (r["gain_cpm"], *r["gain_ci95"])
            p = "%.3f" % r["p_gain_positive"]
        if "gap_closed" in r:
            gap = "%.0f%%" % (100 * r["gap_closed"]) if r["gap_closed"] is not None else "n/a " + note(
                "Gap closed is not reported: %s." % r.get("gap_closed_note", "the oracle's CPM is not above the "
                                                                            "baseline's"))
        name = label(m, results["settings"])
        if not r.get("validation_selected", True):
            name += " " + note("Not validation-selected: no epoch of this run had a finite validation metric, "
                               "so its last epoch's weights were tested.")
        lines.append("| %s | %s | %.3f | %s | %s | %s |" % (name, " | ".join("%.3f" % v for v in r["sensitivity"]),
                                                          r["cpm"], gain, p, gap))
    lines += [""] + ["[%d] %s" % (k + 1, n) for k, n in enumerate(notes)] + ([""] if notes else [])
    lines += ["The noise control is the baseline trained again with only its training seed changed: a DeepEM "
              "gain means something only where it clearly exceeds that row's. Gap closed = a row's gain / the "
              "oracle's, reported only where the oracle's gain is clear of zero by its 95% interval and larger "
              "than the noise control's gain in size.",
              ""] + weak_label_lines(results.get("data", {}).get("weak_labels")) + [
              "Stage seconds: " + ", ".join("%s %.0f" % kv for kv in results["stage_seconds"].items())
              + "; total %.0f s (%.1f min)." % (results["seconds_total"], results["seconds_total"] / 60),
              "Machine: %s, %d cores, torch %s (%d threads)." % (mc["cpu"], mc["cores"], mc["torch"],
                                                                 mc["torch_threads"])]
    return "\n".join(lines) + "\n"


def weak_label_lines(mined):
    """What the mining of the weak split's records gave, against the phantom's truth."""
    if not mined:
        return []
    source = {"nlst": "its NLST-style abnormality table", "reports": "its free-text reports"}[mined["source"]]
    rejected = ", ".join("%s %d" % kv for kv in mined["rejected"].items()) or "none"
    return ["Weak labels: mined from %s (`deepem weak-labels %s`): %d labels, %d right (central slice within one "
            "slice, lobe exact: precision %.3f); %d of the weak scans' %d nodules labelled (recall %.3f). "
            "Rows rejected, by reason: %s." % (source, mined["source"], mined["labels"], mined["right"],
                                               mined["precision"], mined["found"], mined["nodules"], mined["recall"],
                                               rejected), ""]


def write_results(out, results):
    atomic_write(os.path.join(out, "results.json"), lambda f: f.write(json.dumps(results, indent=1).encode()))
    text = markdown(results, "DeepEM phantom benchmark (seed %d)" % results["seed"])
    atomic_write(os.path.join(out, "results.md"), lambda f: f.write(text.encode()))
    print(text)


def aggregate(runs):
    """mean and sd over seeds of every row's CPM, sensitivities and gains."""
    out = {}
    for m in METHODS:
        rows = [r["methods"][m] for r in runs]
        agg = {"cpm_mean": float(np.mean([r["cpm"] for r in rows])), "cpm_sd": float(np.std([r["cpm"] for r in rows], ddof=1)),
               "cpm_per_seed": [float(r["cpm"]) for r in rows],
               "sensitivity_mean": np.mean([r["sensitivity"] for r in rows], 0).tolist()}
        if all("gain_cpm" in r for r in rows):
            agg["gain_mean"] = float(np.mean([r["gain_cpm"] for r in rows]))
            agg["gain_sd"] = float(np.std([r["gain_cpm"] for r in rows], ddof=1))
            agg["gain_per_seed"] = [float(r["gain_cpm"]) for r in rows]
        if all("gap_closed" in r for r in rows):  # None on a seed whose oracle gap was not real
            agg["gap_closed_per_seed"] = [r["gap_closed"] for r in rows]
        unselected = [run.get("seed") for run, r in zip(runs, rows) if not r.get("validation_selected", True)]
        if unselected:  # seeds whose run had no finite validation metric: its last weights were tested
            agg["not_validation_selected_seeds"] = unselected
        out[m] = agg
    return out


def verdict(methods):
    """The issue's test of an effect over seeds, per DeepEM row: positive on most seeds, mean
    above twice its standard error, and above the noise control's mean absolute gain."""
    noise = float(np.mean(np.abs(methods["baseline_rerun"]["gain_per_seed"])))
    lines = []
    for m in DEEPEM_ROWS:
        gains = np.asarray(methods[m]["gain_per_seed"])
        se = float(np.std(gains, ddof=1) / np.sqrt(len(gains)))
        positive, mean = int((gains > 0).sum()), float(gains.mean())
        holds = positive >= len(gains) - 1 and mean > 2 * se and mean > noise
        lines.append("%s: gain %+.3f (standard error %.3f), positive on %d of %d seeds, noise control's mean "
                     "|gain| %.3f: %s." % (LABELS[m], mean, se, positive, len(gains), noise,
                                           "an effect" if holds else "no effect shown"))
    return lines


def main(out, seed=0, seeds=1, quick=False, full=False, workers=2, paper=False, weak_from="nlst"):
    if full:
        import torch

        if not torch.cuda.is_available():
            print("deepem demo --full: the paper's setting (full width, 96^3 crops, batch 32) needs a CUDA GPU; "
                  "none is available here. Run the default (2-CPU) demo instead.", file=sys.stderr)
            return 2
    s = QUICK if quick else FULL if full else DEFAULT
    if paper:  # the paper's E- and M-step: no option beyond it
        s = replace(s, em_options=())
    s = replace(s, weak_from=weak_from)
    runs = []
    for k in range(seeds):
        folder = out if seeds == 1 else os.path.join(out, "seed_%d" % (seed + k))
        runs.append(run_once(folder, s, seed + k, workers))
    if seeds > 1:
        summary = {"seeds": [seed + k for k in range(seeds)], "methods": aggregate(runs),
                   "seconds_total": float(sum(r["seconds_total"] for r in runs)), "machine": describe()}
        atomic_write(os.path.join(out, "results.json"), lambda f: f.write(json.dumps(summary, indent=1).encode()))
        lines = ["| method | CPM mean +- sd | gain mean +- sd | CPM per seed | gain per seed | gap closed per seed |",
                 "|---|---|---|---|---|---|"]
        for m in METHODS:
            a = summary["methods"][m]
            gain = "%+.3f +- %.3f" % (a["gain_mean"], a["gain_sd"]) if "gain_mean" in a else ""
            per_gain = " / ".join("%+.3f" % g for g in a.get("gain_per_seed", []))
            per_gap = " / ".join("n/a" if g is None else "%.0f%%" % (100 * g) for g in a.get("gap_closed_per_seed", []))
            name = label(m, runs[0]["settings"])
            if a.get("not_validation_selected_seeds"):
                name += " (not validation-selected on seed(s) %s)" % ", ".join(
                    map(str, a["not_validation_selected_seeds"]))
            lines.append("| %s | %.3f +- %.3f | %s | %s | %s | %s |" % (
                name, a["cpm_mean"], a["cpm_sd"], gain,
                " / ".join("%.3f" % c for c in a["cpm_per_seed"]), per_gain, per_gap))
        lines += ["", "Gap closed (a row's gain / the oracle's) is n/a on a seed where the oracle's gain was not clear "
                  "of zero by its 95% interval or not larger than the noise control's gain in size (that seed's "
                  "results.md says which)."]
        lines += [""] + verdict(summary["methods"])
        m = describe()
        lines += ["", "Seeds %s; total %.0f s (%.1f min). Machine: %s, %d cores, torch %s (%d threads)."
                  % (summary["seeds"], summary["seconds_total"], summary["seconds_total"] / 60, m["cpu"], m["cores"],
                     m["torch"], m["torch_threads"])]
        text = "# DeepEM phantom benchmark, %d seeds\n\n" % seeds + "\n".join(lines) + "\n"
        atomic_write(os.path.join(out, "results.md"), lambda f: f.write(text.encode()))
        print(text)
    return 0

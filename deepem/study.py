"""`deepem study`: where DeepEM's gain appears. The EM gain over the supervised baseline as a
function of the initial detector's strength, varied by the number of fully labelled scans
(weak = 3 x full), beside the noise control (the baseline retrained with another seed), the
oracle (the weak scans' true boxes, supervised) and em_truth (the EM path fed the true boxes:
the M-step's ceiling), with remedies beyond the paper as ablation rows.

One point = (n_full, seed), in OUT/n<NNN>_s<seed>/, with the demo's stages (deepem.demo): data,
init, then one stage per variant (train, then detect the validation and test splits), each
resumed when found finished. Settings are chosen on the validation split: its CPM and the EM
logs (pick precision) are in every row; the test split is only detected, for the table.
OUT/study.json, study.md and study.png gather every finished point.
"""
import json
import os
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from . import demo
from .data import tables
from .machine import describe

RERUN_SEED_OFFSET = demo.RERUN_SEED_OFFSET


@dataclass(frozen=True)
class Variant:
    kind: str  # sup (supervised from init) | em
    label: str
    method: str = "map"  # em: map | sample
    em: dict = field(default_factory=dict)  # em.* overrides (the remedies)
    train_split: str = "full"  # sup: full | full_and_weak (the oracle)
    seed_offset: int = 0  # the noise control trains with seed + this
    truth: bool = False  # em: the E-step hands over the weak scans' true boxes (em_truth)
    negatives_only: bool = False  # em: the E-step picks nothing (the weak scans give negatives only)
    diagnostic: str = ""  # em: right_only | perturbed_truth | found_truth | missed_truth (deepem.diagnostics E-steps
    #                       reading the truth)


# Every remedy at once (deepem.em options): what the demo's DeepEM rows use.
REMEDIES = dict(demo.REMEDIES)

# The paper's method is `map` / `sample`; every other EM row switches on remedies (deepem.em).
VARIANTS = {
    "baseline": Variant("sup", "Baseline (full only)"),
    "baseline_rerun": Variant("sup", "Noise control (baseline, 2nd training seed)", seed_offset=RERUN_SEED_OFFSET),
    "oracle": Variant("sup", "Oracle (weak scans' true boxes, supervised)", train_split="full_and_weak"),
    "em_truth": Variant("em", "em_truth (EM path fed the true boxes)", truth=True),
    "em_truth_mix": Variant("em", "em_truth, mixed batches", truth=True, em={"mix": True}),
    "em_negatives": Variant("em", "weak scans as negatives only (no pseudo box)", negatives_only=True),
    "em_truth_perturbed": Variant("em", "em_truth with the proposals' geometry errors (d x1.38, centre 0.5 r)",
                                  diagnostic="perturbed_truth"),
    "em_truth_found": Variant("em", "em_truth, only the nodules the initial detector finds at 1 FP/scan",
                              diagnostic="found_truth"),
    "em_truth_missed": Variant("em", "em_truth, only the nodules the initial detector misses at 1 FP/scan",
                               diagnostic="missed_truth"),
    "right_only_cal_init": Variant("em", "calibrated MAP, init teacher, wrong picks dropped (diagnostic)",
                                   diagnostic="right_only", em={"calibrate": "val", "teacher": "init"}),
    "map": Variant("em", "DeepEM MAP (paper)"),
    "sample": Variant("em", "DeepEM sampling (paper)", method="sample"),
    "map_weighted": Variant("em", "MAP, loss x posterior", em={"weighted": True}),
    "map_mix": Variant("em", "MAP, mixed batches", em={"mix": True}),
    "map_init_teacher": Variant("em", "MAP, frozen initial detector as teacher", em={"teacher": "init"}),
    "map_ema_teacher": Variant("em", "MAP, EMA teacher", em={"teacher": "ema", "ema_decay": 0.99}),
    "map_margin": Variant("em", "MAP, confidence margin 0.3", em={"min_margin": 0.3}),
    "map_cls_only": Variant("em", "MAP, pseudo boxes classification only", em={"pseudo_regression": False}),
    "map_calibrated": Variant("em", "MAP, E-step calibrated on the validation scans", em={"calibrate": "val"}),
    "map_cal_init": Variant("em", "MAP, calibrated, frozen initial teacher", em={"calibrate": "val", "teacher": "init"}),
    "map_cal_ema": Variant("em", "MAP, calibrated, EMA teacher",
                           em={"calibrate": "val", "teacher": "ema", "ema_decay": 0.99}),
    "map_cal_init_w": Variant("em", "MAP, calibrated, frozen initial teacher, loss x posterior",
                              em={"calibrate": "val", "teacher": "init", "weighted": True}),
    "map_cal_init_cls": Variant("em", "MAP, calibrated, frozen initial teacher, classification only",
                                em={"calibrate": "val", "teacher": "init", "pseudo_regression": False}),
    "map_cal_init_z": Variant("em", "MAP, calibrated (with box scale), init teacher, box z from the label",
                              em={"calibrate": "val", "teacher": "init", "box_z_from_label": True}),
    "map_cal_init_z_cls": Variant("em", "MAP, calibrated (with box scale), init teacher, box z from the label, "
                                  "classification only", em={"calibrate": "val", "teacher": "init",
                                                             "box_z_from_label": True, "pseudo_regression": False}),
    "em_negatives_mix": Variant("em", "weak scans as negatives only, mixed batches", negatives_only=True,
                                em={"mix": True}),
    "em_truth_perturbed_cls": Variant("em", "em_truth with the proposals' geometry errors, classification only",
                                      diagnostic="perturbed_truth", em={"pseudo_regression": False}),
    "map_all": Variant("em", "MAP + calibrated E-step without the lobe term, init teacher, loss x posterior, mixed, "
                       "cls only, z from label",
                       em=dict(REMEDIES)),
    "sample_all": Variant("em", "sampling + the same remedies", method="sample", em=dict(REMEDIES)),
    "map_all_ema": Variant("em", "MAP + the same remedies, EMA teacher",
                           em={**REMEDIES, "teacher": "ema", "ema_decay": 0.99}),
    "map_cal_init_w_mix": Variant("em", "MAP, calibrated, init teacher, loss x posterior, mixed batches",
                                  em={"calibrate": "val", "teacher": "init", "weighted": True, "mix": True}),
    "sample_cal_init": Variant("em", "sampling, calibrated, frozen initial teacher", method="sample",
                               em={"calibrate": "val", "teacher": "init"}),
    # the ablations of docs/deepem-study.md, sections 6-7
    "baseline_rerun2": Variant("sup", "Noise control 2 (baseline, 3rd training seed)", seed_offset=200),
    "map_all_lobe": Variant("em", "MAP + the same remedies, with the lobe term", em={**REMEDIES, "use_lobe": True}),
    "sample_all_lobe": Variant("em", "sampling + the same remedies, with the lobe term", method="sample",
                               em={**REMEDIES, "use_lobe": True}),
    "map_all_student": Variant("em", "MAP + the same remedies, the trained model as teacher",
                               em={**REMEDIES, "teacher": "student"}),
    "map_all_band15": Variant("em", "MAP + the same remedies, no negatives within 15 voxels of a weak slice",
                              em={**REMEDIES, "exclude_band": 15.0}),
    "map_all_nn": Variant("em", "MAP + the same remedies, no negatives from weak scans",
                          em={**REMEDIES, "exclude_band": 1000.0}),
    "em_truth_found_nn": Variant("em", "em_truth, only the nodules the initial detector finds, no weak negatives",
                                 diagnostic="found_truth", em={"exclude_band": 1000.0}),
    "map_all_nomix": Variant("em", "MAP + the same remedies, separate weak and full passes",
                             em={**REMEDIES, "mix": False}),
    "map_cal_init_nolobe": Variant("em", "MAP, calibrated without the lobe term, frozen initial teacher",
                                   em={"calibrate": "val", "teacher": "init", "use_lobe": False}),
    # issue 31: the record terms on top of the demo's E-step (docs/deepem-study.md, section 11 chose size on validation)
    "map_all_size": Variant("em", "MAP + the same remedies + the record's size term (sigma calibrated)",
                            em={**REMEDIES, "size_term": True}),
    "map_all_records": Variant("em", "MAP + the same remedies + size term + texture term (weight 0.1)",
                               em={**REMEDIES, "size_term": True, "texture_term": True, "texture_weight": 0.1}),
    "em_negatives_mix_band15": Variant("em", "weak scans as negatives only, mixed batches, band 15",
                                       negatives_only=True, em={"mix": True, "exclude_band": 15.0}),
}
SUPERVISED = ("baseline", "baseline_rerun", "oracle")
DEFAULT_VARIANTS = ("baseline", "baseline_rerun", "oracle", "em_truth", "map", "sample")


def point_settings(n_full: int, base: demo.Settings = demo.DEFAULT) -> demo.Settings:
    """The demo's default with n_full fully labelled and 3 n_full weak scans; the E-step sees
    at most 64 weak scans an epoch (a seeded share), so that a point fits in 45 minutes. Every
    EM option comes from the variant (none from the demo's own em_options)."""
    n_weak = 3 * n_full
    return replace(base, n_full=n_full, n_weak=n_weak, em_fraction=min(1.0, 64.0 / n_weak), em_options=())


def point_dir(out, n_full, seed):
    return os.path.join(out, "n%03d_s%d" % (n_full, seed))


POINT_FIELDS = ("n_full", "n_weak", "em_fraction")  # the settings point_settings sets per point


def shared_settings(settings):
    """A point's settings (point.json's, or asdict) less those set per point: one study's
    points all share them. JSON form (tuples as lists), as point.json reads back."""
    return {k: v for k, v in json.loads(json.dumps(settings or {})).items() if k not in POINT_FIELDS}


def check_study_settings(out, base: demo.Settings = demo.DEFAULT):
    """A study folder holds one setting: refuse to add points made with `base` to points made
    with another (their summary would mix them)."""
    ours = shared_settings(asdict(point_settings(1, base)))
    for name in sorted(os.listdir(out)) if os.path.isdir(out) else []:
        path = os.path.join(out, name, "point.json")
        if name.startswith("n") and os.path.isfile(path):
            with open(path) as f:
                theirs = shared_settings(json.load(f).get("settings"))
            if theirs != ours:
                changed = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
                raise ValueError("%s holds study points made with other settings (%s: %s differ); give another "
                                 "--out or remove them" % (out, name, ", ".join(changed)))


def run_variant(out, s: demo.Settings, seed, name, variant: Variant, init_ckpt, diagnostics_ready):
    """Trains one variant from init_ckpt in out/name; returns its record (val CPM, EM logs)."""
    from .diagnostics import (PickDiagnostics, negatives_estep, perturbed_truth_estep, picks_plot, read_metrics,
                              right_only_estep, truth_estep, truth_subset_estep)
    from .em import em_fit
    from .train.trainer import fit

    pre = os.path.join(out, "preprocessed")
    run_dir = os.path.join(out, name)
    seed_run = seed + variant.seed_offset
    if variant.kind == "sup":
        split = os.path.join(pre, "full_and_weak.txt") if variant.train_split == "full_and_weak" else "full"
        t = fit(demo.train_config(run_dir, pre, s, seed_run, train_split=split), init=init_ckpt, resume="auto")
    else:
        # the variants with the frozen initial teacher share its proposals (out/teacher_proposals)
        em = {**dict(variant.em), "proposal_cache": os.path.join(out, "teacher_proposals")}
        config = demo.train_config(run_dir, pre, s, seed_run, em=variant.method, extra={"em": em})
        missed, weak_uids = diagnostics_ready()
        observer = PickDiagnostics(pre, weak_uids, missed)
        estep = truth_estep if variant.truth else negatives_estep if variant.negatives_only else None
        if variant.diagnostic in ("found_truth", "missed_truth"):
            estep = truth_subset_estep({u: m == (variant.diagnostic == "missed_truth") for u, m in missed.items()})
        elif variant.diagnostic:
            estep = right_only_estep if variant.diagnostic == "right_only" else perturbed_truth_estep()
        t = em_fit(config, init=init_ckpt, resume="auto", estep=estep, observer=observer)
        picks_plot(run_dir)
    records = read_metrics(run_dir)
    diag = [r for r in records if r.get("kind") == "diagnostics"]
    val = [h.get("val_cpm") for h in t.history if h.get("val_cpm") is not None]
    return {"val_cpm_best": float(max(val)) if val else None, "val_cpm_last": float(val[-1]) if val else None,
            "epochs": len(t.history), "diagnostics": diag,
            "proposals_per_scan": [r.get("proposals_per_scan") for r in records if r.get("kind") == "estep"]}


def weak_missed(out, s: demo.Settings, init_ckpt):
    """The weak scans' nodules that the initial detector misses at 1 FP per scan (cached)."""
    from .diagnostics import missed_at_one_fp, true_boxes

    pre = os.path.join(out, "preprocessed")
    path = os.path.join(out, "init", "weak_missed.json")
    with open(os.path.join(pre, "splits.json")) as f:
        weak_uids = json.load(f)["weak"]
    if not os.path.isfile(path):
        found = demo.detect_split(init_ckpt, pre, weak_uids, s)
        missed = missed_at_one_fp({u: m[1] for u, m in found.items()}, {u: true_boxes(pre, u)[1] for u in weak_uids})
        from .data.atomic import atomic_write

        atomic_write(path, lambda f: f.write(json.dumps({u: v.tolist() for u, v in missed.items()}).encode()))
    with open(path) as f:
        return {u: np.asarray(v, bool) for u, v in json.load(f).items()}, weak_uids


def test_marks(out, s, name, test_uids):
    """Detect the test split with a variant's validation-selected model; marks CSV in its folder."""
    from .eval import froc

    path = os.path.join(out, name, "test_marks.csv")
    if not os.path.isfile(path):
        found = demo.detect_split(demo.best_checkpoint(os.path.join(out, name))[0], os.path.join(out, "preprocessed"),
                                  test_uids, s)
        froc.write_marks(path, {u: m[1] for u, m in found.items()}, {u: m[0].diameter_mm for u, m in found.items()})
    return path


def run_point(out, n_full, seed, variants=DEFAULT_VARIANTS, workers=2, base=demo.DEFAULT):
    """One (n_full, seed) point: data, init, each variant; returns point.json's content."""
    from .eval import froc
    from .eval.marks import read_marks
    from .train.trainer import fit

    s = point_settings(n_full, base)
    os.makedirs(out, exist_ok=True)
    demo.check_same_settings(out, s, seed)  # finished stages are reused: never under other settings
    times = {}
    pre, raw = os.path.join(out, "preprocessed"), os.path.join(out, "raw")
    demo.run_stage(out, "data", lambda d: demo.make_data(out, s, seed, workers), times)
    init_ckpt = os.path.join(out, "init", "last.pt")
    demo.run_stage(out, "init", lambda d: fit(demo.train_config(d, pre, s, seed, init=True), resume="auto"), times)
    with open(os.path.join(pre, "splits.json")) as f:
        test_uids = json.load(f)["test"]
    for name in variants:
        v = VARIANTS[name]
        demo.run_stage(out, name, lambda d, name=name, v=v: run_variant(
            out, s, seed, name, v, init_ckpt, lambda: weak_missed(out, s, init_ckpt)), times)
        t0 = time.perf_counter()
        test_marks(out, s, name, test_uids)
        times[name] += time.perf_counter() - t0
    # every variant finished in this folder, by this run or an earlier one with other variants
    rows, done = {}, [n for n in VARIANTS if demo.Stage(out, n).done() and
                      os.path.isfile(os.path.join(out, n, "test_marks.csv"))]
    for name in done:
        record = demo.Stage(out, name).done()
        rows[name] = {k: v for k, v in record.items() if k != "seconds"}
        times.setdefault(name, record["seconds"])
    annotations = tables.read_annotations(os.path.join(raw, "annotations.csv"))
    excluded = tables.read_annotations(os.path.join(raw, "annotations_excluded.csv"), excluded=True)
    marks = {n: read_marks(os.path.join(out, n, "test_marks.csv")) for n in done}
    for name in done:
        r = froc.evaluate(marks[name], annotations, test_uids, excluded=excluded, bootstrap=0)
        rows[name].update(test_cpm=float(r.cpm), test_sensitivity=[float(v) for v in r.sensitivity],
                          validation_selected=demo.best_checkpoint(os.path.join(out, name))[1])
        if name != "baseline" and "baseline" in marks:
            c = froc.compare(marks[name], marks["baseline"], annotations, test_uids, excluded=excluded)
            rows[name].update(gain=float(c["diff"]), gain_ci95=[float(v) for v in c["ci95"]],
                              p_gain_positive=float(c["p_positive"]))
    init_val = json.load(open(os.path.join(out, "init", "stage.json")))
    result = {"n_full": n_full, "n_weak": s.n_weak, "seed": seed, "settings": asdict(s), "rows": rows,
              "init_val_cpm": _init_val_cpm(out), "stage_seconds": times, "seconds_total": float(sum(times.values())),
              "machine": describe(), "init_seconds": init_val["seconds"]}
    from .data.atomic import atomic_write

    atomic_write(os.path.join(out, "point.json"), lambda f: f.write(json.dumps(result, indent=1).encode()))
    return result


def _init_val_cpm(out):
    from .diagnostics import read_metrics

    vals = [r.get("val_cpm") for r in read_metrics(os.path.join(out, "init")) if r.get("kind") == "epoch"]
    vals = [v for v in vals if v is not None]
    return float(vals[-1]) if vals else None


def first_last(diag, key):
    values = [d.get(key) for d in diag if d.get(key) is not None]
    return (values[0], values[-1]) if values else (None, None)


def summarize(out):
    """study.json / study.md / study.png from every OUT/n*_s*/point.json."""
    points = []
    for name in sorted(os.listdir(out)):
        path = os.path.join(out, name, "point.json")
        if name.startswith("n") and os.path.isfile(path):
            with open(path) as f:
                points.append(json.load(f))
    if not points:
        return None
    kinds = {}  # points by their shared settings: one kind only, else the table would mix settings
    for p in points:
        kinds.setdefault(json.dumps(shared_settings(p.get("settings")), sort_keys=True), []).append(p)
    if len(kinds) > 1:
        sets = [json.loads(k) for k in kinds]
        changed = sorted(k for k in set().union(*sets) if len({json.dumps(s.get(k)) for s in sets}) > 1)
        raise ValueError("%s holds study points made with other settings (%s differ: %s); summarize each setting "
                         "in its own folder" % (out, ", ".join(changed), "; ".join(
                             ", ".join("n%03d_s%d" % (p["n_full"], p["seed"]) for p in group)
                             for group in kinds.values())))
    names = [n for n in VARIANTS if any(n in p["rows"] for p in points)]
    table = {}
    for n_full in sorted({p["n_full"] for p in points}):
        group = [p for p in points if p["n_full"] == n_full]
        entry = {"seeds": [p["seed"] for p in group], "init_val_cpm": [p["init_val_cpm"] for p in group],
                 "minutes": [p["seconds_total"] / 60 for p in group], "rows": {}}
        for n in names:
            rows = [p["rows"][n] for p in group if n in p["rows"]]
            if not rows:
                continue
            gains = [r["gain"] for r in rows if "gain" in r]
            agg = {"test_cpm": [r["test_cpm"] for r in rows], "val_cpm": [r["val_cpm_best"] for r in rows],
                   "gain": gains, "gain_mean": float(np.mean(gains)) if gains else None,
                   "gain_sd": float(np.std(gains, ddof=1)) if len(gains) > 1 else None}
            precision = [first_last(r["diagnostics"], "pick_precision") for r in rows]
            agg["pick_precision_first"] = [a for a, _ in precision]
            agg["pick_precision_last"] = [b for _, b in precision]
            agg["missed_picked_right_first"] = [first_last(r["diagnostics"], "missed_picked_right")[0] for r in rows]
            agg["validation_selected"] = [r.get("validation_selected", True) for r in rows]
            entry["rows"][n] = agg
        table[n_full] = entry
    # the machines the points ran on (not the one summarizing them), each once
    machines = [machine_line(p["machine"]) for p in points if p.get("machine")]
    summary = {"points": len(points), "table": table, "machines": list(dict.fromkeys(machines))}
    from .data.atomic import atomic_write

    atomic_write(os.path.join(out, "study.json"), lambda f: f.write(json.dumps(summary, indent=1).encode()))
    text = markdown(summary)
    atomic_write(os.path.join(out, "study.md"), lambda f: f.write(text.encode()))
    figure(summary, points, os.path.join(out, "study.png"))
    return summary


def _fmt_list(values, fmt="%.3f"):
    return " / ".join("-" if v is None else fmt % v for v in values)


def machine_line(m):
    return "%s, %d cores, torch %s (%d threads)" % (m["cpu"], m["cores"], m["torch"], m["torch_threads"])


def picks_own_labels(v: Variant) -> bool:
    """An EM row whose E-step picks per weak label from the posterior: its 'missed picked right'
    means something (em_truth's picks are the true nodules, numbered by nodule, not by label)."""
    return v.kind == "em" and not (v.truth or v.negatives_only or v.diagnostic)


def markdown(summary):
    lines = ["# DeepEM regime study", "",
             "Gain = test CPM minus the baseline's (paired, same scans), per seed; val = validation CPM of the "
             "selected model (what settings were chosen on); pick precision = share of the E-step's picks within "
             "a true nodule's radius at the first / last E-step; missed = share of the nodules the initial "
             "detector misses at 1 FP/scan whose label got a right pick at the first E-step.", ""]
    for n_full, entry in sorted(summary["table"].items(), key=lambda kv: int(kv[0])):
        lines += ["## %s fully labelled scans (weak %d), seeds %s" % (n_full, 3 * int(n_full),
                                                                    _fmt_list(entry["seeds"], "%d")),
                  "", "Initial detector's validation CPM: %s; minutes per point: %s" % (
                      _fmt_list(entry["init_val_cpm"]), _fmt_list(entry["minutes"], "%.1f")), "",
                  "| variant | test CPM | gain mean +- sd | gain per seed | val CPM | pick precision first -> last "
                  "| missed picked right |", "|---|---|---|---|---|---|---|"]
        for n, a in entry["rows"].items():
            gain = "" if a["gain_mean"] is None else "%+.3f +- %s" % (
                a["gain_mean"], "-" if a["gain_sd"] is None else "%.3f" % a["gain_sd"])
            pp = " / ".join("%s -> %s" % ("-" if f is None else "%.2f" % f, "-" if l is None else "%.2f" % l)
                            for f, l in zip(a["pick_precision_first"], a["pick_precision_last"]))
            unselected = a.get("validation_selected", []).count(False)
            name = VARIANTS[n].label + (" (on %d seed(s) no validated epoch: its last epoch was tested)" % unselected
                                        if unselected else "")
            lines.append("| %s | %s | %s | %s | %s | %s | %s |" % (
                name, _fmt_list(a["test_cpm"]), gain, _fmt_list(a["gain"], "%+.3f"),
                _fmt_list(a["val_cpm"]), pp if VARIANTS[n].kind == "em" else "",
                _fmt_list(a["missed_picked_right_first"], "%.2f") if picks_own_labels(VARIANTS[n]) else ""))
        lines.append("")
    lines.append("Points run on: %s." % "; ".join(summary["machines"]))
    return "\n".join(lines) + "\n"


def figure(summary, points, path):
    """Left: gain +- sd over seeds against n_full, one line per variant measured at more than one
    n_full (single-point ablations stay in the table). Right: first E-step pick precision against
    the initial detector's validation CPM, one dot per EM run. A variant keeps its colour in both."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .data.atomic import atomic_write

    table = {int(n): e for n, e in summary["table"].items()}
    ns = sorted(table)
    names = [n for n in VARIANTS if n != "baseline" and sum(n in e["rows"] for e in table.values()) > 1] or \
        [n for n in VARIANTS if n != "baseline" and any(n in e["rows"] for e in table.values())]
    colours = dict(zip(names, plt.get_cmap("tab10" if len(names) <= 10 else "tab20").colors))
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 4.8))
    for k, n in enumerate(names):
        points_n = [(n_full, table[n_full]["rows"][n]) for n_full in ns if n in table[n_full]["rows"]]
        points_n = [(n_full, a) for n_full, a in points_n if a["gain_mean"] is not None]
        xs = [n_full * (1 + 0.025 * (k - len(names) / 2)) for n_full, _ in points_n]
        ax.errorbar(xs, [a["gain_mean"] for _, a in points_n], yerr=[a["gain_sd"] or 0.0 for _, a in points_n],
                    marker="o", capsize=3, color=colours[n], label=VARIANTS[n].label)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(ns)
    ax.set_xticklabels([str(n) for n in ns])
    ax.set_xlabel("fully labelled scans (weak = 3x)")
    ax.set_ylabel("test CPM gain over the baseline")
    for p in points:
        for n, r in p["rows"].items():
            v = VARIANTS[n]
            if n in colours and picks_own_labels(v) and r["diagnostics"]:
                bx.scatter(p["init_val_cpm"], r["diagnostics"][0].get("pick_precision"), s=18, color=colours[n])
    bx.set_xlabel("initial detector's validation CPM")
    bx.set_ylabel("first E-step pick precision")
    bx.set_ylim(0, 1)
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.02 + 0.03 * ((len(labels) + 1) // 2), 1, 1))
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)


def main(out, n_full=(16, 32, 64), seeds=(0, 1), variants=DEFAULT_VARIANTS, workers=2, base=demo.DEFAULT):
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError("unknown variant(s) %s (known: %s)" % (", ".join(unknown), ", ".join(VARIANTS)))
    check_study_settings(out, base)
    if "baseline" not in variants:
        variants = ("baseline",) + tuple(variants)
    for n in n_full:
        for seed in seeds:
            run_point(point_dir(out, n, seed), n, seed, variants, workers, base)
            summarize(out)
    summary = summarize(out)
    print(markdown(summary))
    return 0


def parse_settings(items, base: demo.Settings) -> demo.Settings:
    """['n_val=24', 'nodule_extra_mean=2'] -> base with those Settings fields replaced."""
    import dataclasses

    import yaml

    kinds = {f.name: f.type for f in dataclasses.fields(base)}
    changes = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError("--setting expects name=value, got '%s'" % item)
        name, text = item.split("=", 1)
        if name not in kinds:
            raise ValueError("unknown demo setting '%s' (known: %s)" % (name, ", ".join(kinds)))
        value = yaml.safe_load(text)
        current = getattr(base, name)
        if isinstance(current, tuple):
            value = tuple(value)
        elif isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, type(current)):
            raise ValueError("demo setting '%s' must be %s, got %r" % (name, type(current).__name__, value))
        changes[name] = value
    return replace(base, **changes)

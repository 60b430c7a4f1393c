"""How right the E-step's picks are with the record terms (size, texture) beside slice and lobe.

A research measurement (issue 31), not part of CI: on a demo run's data and initial detector
(the frozen teacher of the demo's DeepEM rows), the initial detector's proposals of every weak
scan are computed once, then the E-step (MAP) runs under each variant and its picks are scored
against the weak scans' true boxes with deepem.diagnostics: pick precision, label recall, and
the share of the nodules that the initial detector misses at 1 FP per scan whose label is
picked right. Settings are chosen on the validation scans (their weak labels derived from the
truth as a record gives them: slice, lobe, a reader's diameter, texture), never on the weak
or test scans; both tables are written.

    python scripts/estep_records.py RUN_DIR [--out docs/estep-records]

RUN_DIR holds a demo run's `raw/`, `preprocessed/` and `init/last.pt` (deepem demo's data and
init stages).
"""
import argparse
import csv
import dataclasses
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a checkout

from deepem import demo  # noqa: E402
from deepem.data import datasets, tables  # noqa: E402
from deepem.diagnostics import PickDiagnostics, missed_at_one_fp, true_boxes  # noqa: E402
from deepem.em import LobeModel  # noqa: E402
from deepem.em.calibrate import calibrate  # noqa: E402
from deepem.em.estep import detect_proposals, posterior_and_picks  # noqa: E402
from deepem.infer.detector import load_model  # noqa: E402
from deepem.machine import describe  # noqa: E402
from deepem.train import distributed  # noqa: E402

TEXTURE_IDS = {"solid": 0, "part-solid": 1, "ggo": 2}
BASE = {"method": "map", "use_lobe": False, "teacher": "init", "calibrate": ""}  # the demo's config calibrates
VARIANTS = [  # name, em.* settings beyond BASE
    ("paper (slice; no lobe term)", {}),
    ("+ size, sigma 0.35", {"size_term": True, "size_sigma": 0.35}),
    ("+ size, sigma 0.5", {"size_term": True, "size_sigma": 0.5}),
    ("+ size, sigma 0.7", {"size_term": True, "size_sigma": 0.7}),
    ("+ texture, weight 0.1", {"texture_term": True, "texture_weight": 0.1}),
    ("+ texture, weight 0.3", {"texture_term": True, "texture_weight": 0.3}),
    ("+ texture, weight 1", {"texture_term": True, "texture_weight": 1.0}),
    ("+ size 0.5 + texture 0.1", {"size_term": True, "size_sigma": 0.5, "texture_term": True, "texture_weight": 0.1}),
    ("+ size 0.5 + texture 0.3", {"size_term": True, "size_sigma": 0.5, "texture_term": True, "texture_weight": 0.3}),
    ("calibrated (the demo's E-step)", {"calibrate": "val"}),
    ("calibrated + size", {"calibrate": "val", "size_term": True}),
    ("calibrated + size + texture 0.1", {"calibrate": "val", "size_term": True, "texture_term": True,
                                         "texture_weight": 0.1}),
]


def val_weak_folder(run, val_uids, scratch):
    """A data folder whose val scans carry weak labels as a record would give them: each
    nodule's slice, lobe, texture and a reader's diameter (tables.derive_weak_labels)."""
    raw, pre = os.path.join(run, "raw"), os.path.join(run, "preprocessed")
    os.makedirs(scratch, exist_ok=True)
    lobes, textures = {}, {}
    with open(os.path.join(raw, "annotations_lobes.csv"), newline="") as f:
        for r in csv.DictReader(f):
            lobes.setdefault(r["seriesuid"], []).append(int(r["lobe"]))
    with open(os.path.join(raw, "annotations_types.csv"), newline="") as f:
        for r in csv.DictReader(f):
            textures.setdefault(r["seriesuid"], []).append(TEXTURE_IDS[r["texture"]])
    rng = np.random.default_rng(31)
    for u in val_uids:
        labels, world = true_boxes(pre, u)
        w = tables.derive_weak_labels({u: world}, {u: np.array(lobes.get(u, []))}, {u: np.array(textures.get(u, []))},
                                      diameter_noise=(0.3, 0.05), rng=rng)[u]
        weak = np.stack([labels[:, 0], w[:, 2], w[:, 3] / 1.0, w[:, 4]], 1).astype(np.float32)
        for name in ("clean.npy", "label.npy", "meta.json"):
            dst = os.path.join(scratch, "%s_%s" % (u, name))
            if not os.path.exists(dst):
                os.symlink(os.path.join(pre, "%s_%s" % (u, name)), dst)
        np.save(os.path.join(scratch, u + "_weak.npy"), weak)
    with open(os.path.join(pre, "splits.json")) as f:
        splits = json.load(f)
    with open(os.path.join(scratch, "splits.json"), "w") as f:
        json.dump(splits, f)
    return scratch


def evaluate(data_dir, uids, model, config, ctx, missed, cal_dir=None, cal_uids=None):
    """Pick diagnostics of each variant's first E-step (MAP) on `uids`."""
    weak_z = {u: datasets.load_weak(data_dir, u)[:, 0] for u in uids}
    proposals, _ = detect_proposals(model, data_dir, uids, weak_z, config, ctx)
    diag = PickDiagnostics(data_dir, uids, missed)
    rows = []
    for name, extra in VARIANTS:
        em = dataclasses.replace(config.em, **{**BASE, **extra})
        run_config = dataclasses.replace(config, em=em)
        if em.calibrate:
            fitted = calibrate(model, cal_dir, cal_uids, run_config, ctx)
            run_config = fitted.apply(run_config)
        t0 = time.perf_counter()
        est = posterior_and_picks(data_dir, uids, proposals, LobeModel(), run_config, epoch=0)
        d = diag(0, est)
        d.update(name=name, proposals_per_scan=float(np.mean([len(proposals[u]) for u in uids])),
                 seconds=time.perf_counter() - t0)
        if em.calibrate:
            d["calibration"] = {k: getattr(fitted, k) for k in ("logit_shift", "temperature", "mu", "sigma",
                                                                "min_posterior", "size_sigma")}
        rows.append(d)
        print("%-34s precision %.3f recall %.3f missed right %s" % (name, d["pick_precision"], d["label_recall"],
                                                                    d.get("missed_picked_right", "-")), flush=True)
    return rows


def table(rows, title):
    lines = ["### " + title, "", "| E-step (MAP, frozen initial detector) | picks | pick precision | label recall "
             "| missed nodules picked right |", "|---|---|---|---|---|"]
    for r in rows:
        missed = r.get("missed_picked_right")
        lines.append("| %s | %d | %.3f | %.3f | %s |" % (r["name"], r["picks"], r["pick_precision"], r["label_recall"],
                                                         "-" if missed is None else "%.3f of %d" % (
                                                             missed, r.get("missed_by_init", 0))))
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="a demo run folder (raw/, preprocessed/, init/last.pt)")
    ap.add_argument("--out", default="docs/estep-records")
    args = ap.parse_args()
    t0 = time.time()
    s = demo.DEFAULT
    pre = os.path.join(args.run, "preprocessed")
    with open(os.path.join(pre, "splits.json")) as f:
        splits = json.load(f)
    init = os.path.join(args.run, "init", "last.pt")
    config = demo.train_config(os.path.join(args.run, "estep_records"), pre, s, 0, em="map")
    model, _ = load_model(init)
    ctx = distributed.Context()
    # validation: where the settings are chosen (its true boxes are known and allowed)
    val_dir = val_weak_folder(args.run, splits["val"], os.path.join(args.run, "val_weak"))
    val_found = demo.detect_split(init, val_dir, splits["val"], s)
    val_missed = missed_at_one_fp({u: m[1] for u, m in val_found.items()},
                                  {u: true_boxes(val_dir, u)[1] for u in splits["val"]})
    print("validation scans", flush=True)
    val_rows = evaluate(val_dir, splits["val"], model, config, ctx, val_missed, pre, splits["val"])
    print("weak scans", flush=True)
    from deepem.study import weak_missed

    missed, _ = weak_missed(args.run, s, init)
    weak_rows = evaluate(pre, splits["weak"], model, config, ctx, missed, pre, splits["val"])
    os.makedirs(args.out, exist_ok=True)
    m = describe()
    payload = {"validation": val_rows, "weak": weak_rows, "run": os.path.basename(os.path.abspath(args.run)), "machine": m,
               "seconds": time.time() - t0}
    with open(os.path.join(args.out, "estep_records.json"), "w") as f:
        json.dump(payload, f, indent=1)
    lines = ["# The E-step with the record terms: how right the picks are", "",
             "Demo default setting, seed 0: %d weak scans, %d validation scans; the initial detector's proposals; "
             "MAP picks; no lobe term. Machine: %s, %d cores, torch %s; %.0f s." % (
                 len(splits["weak"]), len(splits["val"]), m["cpu"], m["cores"], m["torch"], time.time() - t0), ""]
    lines += table(val_rows, "Validation scans (where settings are chosen)") + [""]
    lines += table(weak_rows, "Weak scans (reported, never chosen on)") + [""]
    with open(os.path.join(args.out, "estep_records.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

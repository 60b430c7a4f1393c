"""What `deepem evaluate` does: read the tables, evaluate (and compare), write froc.json,
froc.png and froc.csv to a folder, and return a one-screen summary."""
import json
import os

import numpy as np

from ..data.atomic import atomic_write, remove_stale_temps
from ..data.tables import _fmt, _write, read_annotations, read_seriesuids
from .froc import BAND_AT, compare, evaluate
from .marks import read_marks

_RATE_NAMES = ("1/8", "1/4", "1/2", "1", "2", "4", "8")


def _write_json(path, obj):
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2) + "\n"), "w")


def _write_curve(path, r):
    """The curve on the band's grid (FP per scan 1/8..8): fps, sensitivity, 95% band (empty without bootstrap)."""
    sens = np.interp(BAND_AT, r.curve_fps, r.curve_sensitivity)
    band = r.curve_band if r.curve_band is not None else np.full((2, len(BAND_AT)), np.nan)
    rows = [[_fmt(x), _fmt(y), _fmt(lo), _fmt(hi)] for x, y, lo, hi in zip(BAND_AT, sens, band[0], band[1])]
    _write(path, ("fps", "sensitivity", "sensitivity_lo", "sensitivity_hi"), rows)


def _name(path):
    return os.path.splitext(os.path.basename(os.fspath(path)))[0]


def run(results, annotations, out_dir, excluded=None, seriesuids=None, other=None, bootstrap=1000, seed=0):
    """Evaluates the LUNA16 submission CSV `results` (and, paired, `other`); writes
    out_dir/froc.json, froc.png, froc.csv. Returns (froc.json's content, summary lines)."""
    marks = read_marks(results)
    marks_b = read_marks(other) if other is not None else None
    ann = read_annotations(annotations)
    exc = read_annotations(excluded, excluded=True) if excluded is not None else None
    lines = []
    if seriesuids is not None:
        uids = read_seriesuids(seriesuids)
        listed = set(uids)
        for name, table in ((results, marks), (other, marks_b)):
            outside = [u for u in (table or {}) if u not in listed]
            if outside:
                lines.append("warning: %s has %d marks on %d scans that %s does not list (e.g. %s); they are left out"
                             % (os.path.basename(os.fspath(name)), sum(len(table[u]) for u in outside), len(outside),
                                os.path.basename(os.fspath(seriesuids)), outside[0]))
    else:
        uids = sorted(set(ann) | set(marks) | set(marks_b or ()))
        lines.append("no --seriesuids: counting the %d scans named in %s or the results; a scan with neither a "
                     "nodule nor a mark is left out (pass LUNA16's seriesuids.csv for comparable numbers)"
                     % (len(uids), os.path.basename(os.fspath(annotations))))
    r = evaluate(marks, ann, uids, exc, bootstrap=bootstrap, seed=seed)
    doc = r.to_json()
    curves = {_name(results): r}
    if marks_b is not None:
        rb = evaluate(marks_b, ann, uids, exc, bootstrap=bootstrap, seed=seed)
        curves[_name(other) if _name(other) != _name(results) else _name(other) + " (compare)"] = rb
        doc["compare"] = dict(a=os.fspath(results), b=os.fspath(other),
                              **compare(marks, marks_b, ann, uids, exc, bootstrap=bootstrap, seed=seed))

    os.makedirs(out_dir, exist_ok=True)
    remove_stale_temps(out_dir)
    _write_json(os.path.join(out_dir, "froc.json"), doc)
    _write_curve(os.path.join(out_dir, "froc.csv"), r)
    from .plots import froc_plot

    froc_plot(os.path.join(out_dir, "froc.png"), curves, title="FROC (LUNA16), %d scans" % r.num_scans)

    lines.append("%s: %d scans, %d nodules, %d marks%s" % (
        os.path.basename(os.fspath(results)), r.num_scans, r.num_nodules, r.num_marks,
        " (95%% intervals: %d bootstrap resamples of the scans, seed %d)" % (bootstrap, seed) if bootstrap else ""))
    ci = r.ci95
    fmt_ci = lambda lo_hi: "  [%.3f, %.3f]" % tuple(lo_hi) if lo_hi is not None else ""  # noqa: E731
    lines.append("  FP/scan  sensitivity")
    for i, name in enumerate(_RATE_NAMES):
        lines.append("  %-7s  %.3f%s" % (name, r.sensitivity[i], fmt_ci(ci["sensitivity"][i] if ci else None)))
    lines.append("  CPM      %.3f%s" % (r.cpm, fmt_ci(ci["cpm"] if ci else None)))
    if marks_b is not None:
        c = doc["compare"]
        lines.append("compare %s - %s: CPM %.3f - %.3f = %+.3f%s%s" % (
            _name(results), _name(other), c["cpm_a"], c["cpm_b"], c["diff"], fmt_ci(c["ci95"]),
            ", P(diff > 0) = %.3f (paired bootstrap)" % c["p_positive"] if c["p_positive"] is not None else ""))
    lines.append("wrote %s (froc.json, froc.png, froc.csv)" % out_dir)
    return doc, lines

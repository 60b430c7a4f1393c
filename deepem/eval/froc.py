"""LUNA16 FROC and CPM, computed as the challenge's noduleCADEvaluationLUNA16.py does, with
bootstrap intervals over scans and a paired comparison of two mark sets.

marks: {uid: [K, 4] (x, y, z, probability)}; annotations / excluded: {uid: [N, 4] (x, y, z,
diameter_mm)} (deepem.data.tables.read_annotations); seriesuids: the scans that count.
The matching rules are in deepem.eval.matching, the curve arithmetic in deepem.eval.curve.
"""
from __future__ import annotations  # `dict | None` fields on Python 3.9

from dataclasses import dataclass

import numpy as np

from .curve import Curve
from .marks import read_marks, write_marks
from .matching import match

FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
# The script's read-off: the curve interpolated on 10,001 points over [1/8, 8], each rate read
# at the nearest of them (1 FP/scan is read at 0.9999125, 2 at 2.0000375, ...).
_GRID = np.linspace(0.125, 8.0, 10001)
READ_AT = _GRID[[int(np.argmin(np.abs(_GRID - r))) for r in FP_RATES]]
# where the bootstrap band of the plotted curve is evaluated: 40 points an octave, 1/8..8
BAND_AT = np.geomspace(0.125, 8.0, 241)
CONFIDENCE = 0.95

__all__ = ["FP_RATES", "FrocResult", "evaluate", "compare", "read_marks", "write_marks"]


@dataclass
class FrocResult:
    fp_rates: tuple
    sensitivity: np.ndarray   # [7] at FP_RATES
    cpm: float                # mean of the 7
    ci95: dict | None         # {"cpm": [lo, hi], "sensitivity": [[lo, hi]] * 7}; None without bootstrap
    num_scans: int
    num_nodules: int
    num_marks: int            # marks counted: listed scans, after the 100-per-scan cap
    curve_fps: np.ndarray     # the curve's points (FP per scan, sensitivity), (0, 0) first
    curve_sensitivity: np.ndarray
    band_fps: np.ndarray | None = None    # [M] FP rates of the bootstrap band
    curve_band: np.ndarray | None = None  # [2, M] lower and upper 95% bound there

    def to_json(self) -> dict:
        return {
            "fp_rates": [float(r) for r in self.fp_rates],
            "sensitivity": [float(s) for s in self.sensitivity],
            "cpm": float(self.cpm),
            "ci95": self.ci95,
            "num_scans": int(self.num_scans),
            "num_nodules": int(self.num_nodules),
            "num_marks": int(self.num_marks),
        }


def percentile_interval(values, confidence=CONFIDENCE):
    """[lo, hi] per column of [B, ...] values, the script's way (compute_mean_ci): sort, take
    the elements at floor(0.025 B) and floor(0.975 B). Resamples without a value (NaN) are left out."""
    values = np.sort(np.asarray(values, np.float64), axis=0)  # NaN sorts last
    n = np.isfinite(values).sum(axis=0)
    tail = (1.0 - confidence) / 2.0
    lo = np.floor(tail * n).astype(np.int64)
    hi = np.minimum(np.floor((1.0 - tail) * n).astype(np.int64), np.maximum(n - 1, 0))
    pick = lambda i: np.where(n > 0, np.take_along_axis(values, i[None], axis=0)[0], np.nan)  # noqa: E731
    return pick(lo), pick(hi)


def resample_counts(n_scans, bootstrap, seed):
    """[B, S] int64: how often each scan is drawn in each of B resamples (with replacement)."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_scans, size=(bootstrap, n_scans))
    flat = draws + np.arange(bootstrap)[:, None] * n_scans
    return np.bincount(flat.ravel(), minlength=bootstrap * n_scans).reshape(bootstrap, n_scans).astype(np.int64)


def _uids(seriesuids):
    # a uid listed twice counts once (deepem.data.tables.read_seriesuids drops repeats too)
    uids = list(dict.fromkeys(str(u) for u in seriesuids))
    if not uids:
        raise ValueError("no scans to evaluate: the seriesuid list is empty")
    return uids


def _curve(marks, annotations, uids, excluded):
    entries = match(marks, annotations, uids, excluded)
    if entries.nodules.sum() == 0:
        raise ValueError("the %d listed scans hold no nodule: sensitivity is undefined" % len(uids))
    return entries, Curve(entries, len(uids))


def evaluate(marks, annotations, seriesuids, excluded=None, bootstrap=1000, seed=0) -> FrocResult:
    """FROC of `marks` on the listed scans; with bootstrap > 0, 95% intervals from that many
    resamples of the scans (deterministic by seed)."""
    uids = _uids(seriesuids)
    entries, curve = _curve(marks, annotations, uids, excluded)
    sens = curve.read(np.ones((1, len(uids)), np.int64), READ_AT)[0]
    fps, ys = curve.points()
    result = FrocResult(FP_RATES, sens, float(sens.mean()), None, len(uids), int(entries.nodules.sum()),
                        entries.num_marks, fps, ys)
    if bootstrap > 0:
        vals = curve.read(resample_counts(len(uids), bootstrap, seed), np.r_[READ_AT, BAND_AT])
        s = vals[:, :len(FP_RATES)]
        cpm_lo, cpm_hi = percentile_interval(s.mean(axis=1))
        s_lo, s_hi = percentile_interval(s)
        result.ci95 = {"cpm": [float(cpm_lo), float(cpm_hi)],
                       "sensitivity": [[float(a), float(b)] for a, b in zip(s_lo, s_hi)]}
        result.band_fps = BAND_AT.copy()
        result.curve_band = np.stack(percentile_interval(vals[:, len(FP_RATES):]))
    return result


def compare(marks_a, marks_b, annotations, seriesuids, excluded=None, bootstrap=1000, seed=0) -> dict:
    """Paired comparison of two mark sets on the same scans: CPM difference a - b, its 95%
    interval from resamples that draw the same scans for both, and the share of resamples
    in which a beats b (p_positive)."""
    uids = _uids(seriesuids)
    ones = np.ones((1, len(uids)), np.int64)
    curves = [_curve(m, annotations, uids, excluded)[1] for m in (marks_a, marks_b)]
    cpm_a, cpm_b = (float(c.read(ones, READ_AT)[0].mean()) for c in curves)
    out = {"cpm_a": cpm_a, "cpm_b": cpm_b, "diff": cpm_a - cpm_b, "ci95": None, "p_positive": None}
    if bootstrap > 0:
        counts = resample_counts(len(uids), bootstrap, seed)
        diff = curves[0].read(counts, READ_AT).mean(axis=1) - curves[1].read(counts, READ_AT).mean(axis=1)
        lo, hi = percentile_interval(diff)
        ok = np.isfinite(diff)
        out["ci95"] = [float(lo), float(hi)]
        out["p_positive"] = float((diff[ok] > 0).mean()) if ok.any() else float("nan")
    return out

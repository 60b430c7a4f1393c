"""Marks against nodules, scan by scan, with the rules of the LUNA16 evaluation script
(noduleCADEvaluationLUNA16.py, evaluateCAD):

- a scan keeps at most `max_marks` marks; with more, only those scoring strictly above the
  (max_marks + 1)-th highest score stay, so marks tied at the cut all go;
- a mark hits a finding when its squared distance to the centre is < (diameter / 2)^2
  (world mm; an excluded finding with a negative diameter counts as 10 mm);
- each nodule hit by one or more marks is one true positive scored by its best mark; an
  undetected nodule still counts in the sensitivity's denominator;
- a mark that hits several nodules is a hit for each of them (the script matches every
  nodule against all the scan's marks, not against the marks still unclaimed);
- a mark that hits any nodule or excluded finding is never a false positive; every other
  kept mark is one.
The result is the list of FROC entries (score, TP or FP, scan) the curve is built from.
"""
from dataclasses import dataclass

import numpy as np


@dataclass
class Entries:
    scan: np.ndarray       # int64 [E] index into the scan list
    score: np.ndarray      # float64 [E]
    tp: np.ndarray         # bool [E]: a detected nodule (its best mark's score) or a false positive
    nodules: np.ndarray    # int64 [S] included nodules per scan
    detected: np.ndarray   # int64 [S] detected nodules per scan
    false_pos: np.ndarray  # int64 [S] false positives per scan
    num_marks: int         # marks kept in the listed scans (after the cap)


def _table(table, uid, name, cols=4):
    a = table.get(uid) if table is not None else None
    if a is None:
        return np.zeros((0, cols))
    a = np.asarray(a, dtype=np.float64)
    if a.size == 0:
        return a.reshape(0, cols)
    if a.ndim != 2 or a.shape[1] != cols:
        raise ValueError("%s[%s]: expected an array [N, %d], got shape %s" % (name, uid, cols, a.shape))
    if not np.isfinite(a).all():
        raise ValueError("%s[%s]: non-finite value (NaN or inf)" % (name, uid))
    return a


def cap_marks(m, max_marks=100):
    """The script's cap: with more than max_marks marks keep those scoring > the
    (max_marks + 1)-th highest score."""
    if max_marks <= 0 or len(m) <= max_marks:
        return m
    cut = -np.partition(-m[:, 3], max_marks)[max_marks]
    return m[m[:, 3] > cut]


def _hits(m, findings, negative_as=None):
    """bool [K, N]: mark k within the radius of finding n (squared distance < r^2, summed in
    the script's order x, y, z)."""
    d = findings[:, 3]
    if negative_as is not None:
        d = np.where(d < 0, negative_as, d)
    r2 = (d / 2.0) ** 2
    d2 = (findings[None, :, 0] - m[:, None, 0]) ** 2 + (findings[None, :, 1] - m[:, None, 1]) ** 2
    d2 = d2 + (findings[None, :, 2] - m[:, None, 2]) ** 2
    return d2 < r2[None, :]


def match(marks, annotations, seriesuids, excluded=None, max_marks=100):
    """FROC entries of `marks` on the listed scans; marks of other scans are ignored."""
    scans, scores, tps = [], [], []
    S = len(seriesuids)
    nodules = np.zeros(S, np.int64)
    detected = np.zeros(S, np.int64)
    false_pos = np.zeros(S, np.int64)
    num_marks = 0
    for s, uid in enumerate(seriesuids):
        m = cap_marks(_table(marks, uid, "marks"), max_marks)
        ann = _table(annotations, uid, "annotations")
        exc = _table(excluded, uid, "excluded")
        num_marks += len(m)
        nodules[s] = len(ann)
        hit = _hits(m, ann)
        found = hit.any(axis=0)
        best = np.where(hit, m[:, 3:4], -np.inf).max(axis=0, initial=-np.inf)[found]
        fp = ~(hit.any(axis=1) | _hits(m, exc, negative_as=10.0).any(axis=1))
        detected[s] = found.sum()
        false_pos[s] = fp.sum()
        scores += [best, m[fp, 3]]
        tps += [np.ones(len(best), bool), np.zeros(int(fp.sum()), bool)]
        scans.append(np.full(len(best) + int(fp.sum()), s, np.int64))
    cat = lambda parts, dt: np.concatenate(parts).astype(dt) if parts else np.zeros(0, dt)  # noqa: E731
    return Entries(cat(scans, np.int64), cat(scores, np.float64), cat(tps, bool), nodules, detected, false_pos,
                   num_marks)

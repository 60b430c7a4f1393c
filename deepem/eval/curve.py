"""The FROC curve of scan-weighted entries and its read-off, vectorised over resamples.

A bootstrap resample of scans is a vector of counts (how often each scan was drawn), so its
FROC entries are the original entries weighted by their scan's count. The entries are sorted
by score once; for a block of resamples one cumulative sum of the weighted false positives
(and one of the few true positives) gives every resample's curve, and one searchsorted over
all rows finds where each rate is read. No Python loop over resamples or marks.

The arithmetic follows the script (computeFROC: sklearn's roc_curve, then fps = fpr * FP / scans
and sens = tpr * detected / nodules; np.interp for the read-off), so that with unit weights the
values are the script's to the last bit (to rounding where sklearn drops collinear points),
jumps at a rate included:
- the curve starts at (0, 0) and has one point per distinct score;
- np.interp at q takes the last curve point j with x_j <= q: at a vertical jump it takes the
  top of the jump, and past the curve's end (fewer than q false positives per scan in all)
  it keeps the last sensitivity, the share of nodules that any mark hits;
- no false positives at all: every x is 0, so every rate reads that same last sensitivity.
Where the script divides 0 by 0 (no detected nodule) we return sensitivity 0; a resample with
no nodule at all has no sensitivity (NaN).
"""
import numpy as np

_CHUNK = 1 << 22  # resamples x false positives handled at once (32 MB of int64)


def _fp_per_scan(c, total_fp, n):
    """x of a curve point with c false positives, in the script's order of operations."""
    t = np.maximum(total_fp, 1)
    return np.where(total_fp > 0, (c / t) * t / n, 0.0)


def _sensitivity(c, detected, nodules):
    d = np.maximum(detected, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        y = np.where(detected > 0, (c / d) * d / nodules, 0.0)
    return np.where(nodules > 0, y, np.nan)


def _cumulative(counts, scan):
    """int64 [B, 1 + len(scan)]: weighted count of the first i entries (column 0 is 0)."""
    out = np.zeros((len(counts), len(scan) + 1), np.int64)
    np.take(counts, scan, axis=1, out=out[:, 1:], mode="clip")
    np.cumsum(out[:, 1:], axis=1, out=out[:, 1:])
    return out


class Curve:
    """The entries of one mark set, sorted once; `read` evaluates weighted curves.

    A curve point is the end of a run of equal scores. The reading at q is set by the first
    false positive (in score order) whose weighted count passes q: its run is point e, the run
    before it point j, so the curve is needed only at the false positives, each with the
    span of its run (first and last false positive) and the true positives before / through it.
    """

    def __init__(self, entries, n_scans):
        order = np.argsort(-entries.score, kind="stable")
        score, fp, scan = entries.score[order], ~entries.tp[order], entries.scan[order]
        run = np.cumsum(np.r_[False, score[1:] != score[:-1]]) if len(score) else np.zeros(0, np.int64)
        self.n = n_scans
        self.nodules, self.detected, self.false_pos = entries.nodules, entries.detected, entries.false_pos
        self.fp_scan, self.tp_scan = scan[fp], scan[~fp]
        run_fp, run_tp = run[fp], run[~fp]
        self.fp_first = np.searchsorted(run_fp, run_fp, "left")         # FPs before its run
        self.fp_last = np.searchsorted(run_fp, run_fp, "right")         # FPs through its run
        self.tp_before = np.searchsorted(run_tp, run_fp, "left")        # TPs before its run
        self.tp_through = np.searchsorted(run_tp, run_fp, "right")      # TPs through its run
        self.score, self.is_fp = score, fp

    def points(self):
        """The unweighted curve (x FP per scan, y sensitivity), (0, 0) first: the script's fps, sens."""
        last = np.flatnonzero(np.r_[self.score[1:] != self.score[:-1], True]) if len(self.score) else []
        cf = np.r_[0, np.cumsum(self.is_fp)[last]]
        ct = np.r_[0, np.cumsum(~self.is_fp)[last]]
        return (_fp_per_scan(cf, self.false_pos.sum(), self.n),
                _sensitivity(ct, self.detected.sum(), self.nodules.sum()))

    def read(self, counts, q):
        """Sensitivity [B, Q] of each weighted curve at the FP rates q, as np.interp reads it."""
        counts = np.asarray(counts, np.int64)
        q = np.asarray(q, np.float64)
        out = np.empty((len(counts), len(q)))
        nfp = len(self.fp_scan)
        # false positives far past the largest rate are rarely needed: read with a prefix
        # first and redo with all of them only the resamples whose reading falls past it
        prefix = min(nfp, int(1.5 * q.max() * self.n) + 64)
        prefix = int(self.fp_last[prefix - 1]) if prefix else 0
        step = max(1, _CHUNK // max(prefix, 1))
        for a in range(0, len(counts), step):
            c = counts[a:a + step]
            val, short = self._read(c, q, prefix)
            if short.any():
                redo = np.flatnonzero(short.any(axis=1))
                val[redo] = self._read(c[redo], q, nfp)[0]
            out[a:a + step] = val
        return out

    def _read(self, counts, q, prefix):
        """np.interp(q, x, y) of each row's curve, using its first `prefix` false positives;
        also where that was not enough."""
        B = len(counts)
        # totals of the resample: false positives, detected nodules, nodules
        T, D, L = ((counts @ a)[:, None] for a in (self.false_pos, self.detected, self.nodules))
        x = lambda c: _fp_per_scan(c, T, self.n)  # noqa: E731
        # k = the most false positives whose x is still <= q (x is monotone in the count; the
        # float rounding of the script's x moves k by at most one from floor(q n))
        k = np.clip(np.floor(q[None, :] * self.n).astype(np.int64), 0, T)
        for _ in range(2):
            k += (k < T) & (x(k + 1) <= q)
        for _ in range(2):
            k -= (k > 0) & (x(k) > q)
        cf = _cumulative(counts, self.fp_scan[:prefix])
        ct = _cumulative(counts, self.tp_scan)
        # i = 1 + the first false positive whose count passes k, by one searchsorted over all
        # rows at once: the rows are shifted apart so that the flat array stays sorted
        width = prefix + 1
        base = int(max(cf[:, -1].max(initial=0), k.max(initial=0))) + 2
        shift = np.arange(B, dtype=np.int64)[:, None] * base
        cf += shift
        i = np.searchsorted(cf.ravel(), (k + shift).ravel(), side="right").reshape(B, -1)
        cf -= shift
        i -= np.arange(B, dtype=np.int64)[:, None] * width
        past = i >= width
        m = np.where(past, 0, i - 1) if prefix else np.zeros_like(i)
        take = lambda a, idx: np.take_along_axis(a, idx, axis=1)  # noqa: E731
        if prefix:
            xj, xe = x(take(cf, self.fp_first[m])), x(take(cf, self.fp_last[m]))
            yj = _sensitivity(take(ct, self.tp_before[m]), D, L)
            ye = _sensitivity(take(ct, self.tp_through[m]), D, L)
            with np.errstate(invalid="ignore", divide="ignore"):
                inside = np.where(xj == q, yj, (ye - yj) / (xe - xj) * (q - xj) + yj)
        else:
            inside = np.zeros(past.shape)
        last = np.broadcast_to(_sensitivity(D, D, L), past.shape)
        return np.where(past, last, inside), past & (prefix < len(self.fp_scan))

"""Where DeepEM's E-step and M-step succeed or fail, measured against the weak scans' TRUE boxes.

Only the demo and the study call this module; the EM path (deepem.em) never imports it and
never reads a weak scan's true boxes. Two pieces:

- `PickDiagnostics`: an observer for em_fit. Per E-step epoch: pick precision (picks within a
  true nodule's radius), label recall (weak labels with a pick on their own nodule), and, of
  the weak scans' nodules that the initial detector misses at 1 false positive per scan, the
  share whose label gets a right pick: the picks that can teach the detector something new.
- `truth_estep`: an E-step that hands the M-step every weak label's true box (posterior 1).
  EM run with it is `em_truth`, the M-step's ceiling: the whole EM path (band exclusion, weak /
  full passes, steps, crop sampling) with perfect picks. A diagnostic run, not a method.
- `negatives_estep`: an E-step that picks nothing, so the weak scans give only negatives away
  from their labels' z bands: what the weak labels are worth without any pseudo box.
"""
import json
import os

import numpy as np
import torch

from .data import datasets, preprocess
from .em.estep import EStepResult
from .em.lobe import features
from .eval.matching import _hits


def true_boxes(data_dir, uid):
    """(grid boxes [N, 4] (z, y, x, d), world [N, 4] (x, y, z, d mm)) of a scan's nodules."""
    _, labels, meta = datasets.load_scan(data_dir, uid)
    world = preprocess.grid_to_world(labels[:, :3].astype(np.float64), meta).reshape(-1, 3)
    return labels, np.concatenate([world, labels[:, 3:] * meta.get("resolution", 1.0)], 1)


def missed_at_one_fp(marks, truth):
    """{uid: bool [N]}: nodules the marks miss at 1 false positive per scan. marks: {uid: [K, 4]
    (x, y, z, p) world mm}; truth: {uid: [N, 4] (x, y, z, d)}. The operating point is the
    score of the n_scans-th highest false positive over all scans (LUNA16's hit rule)."""
    best, fp_scores = {}, []
    for uid, t in truth.items():
        m = np.asarray(marks.get(uid, np.zeros((0, 4))), np.float64).reshape(-1, 4)
        hit = _hits(m, t)
        best[uid] = np.where(hit, m[:, 3:4], -np.inf).max(axis=0, initial=-np.inf)
        fp_scores.extend(m[~hit.any(axis=1), 3].tolist())
    fp_scores = np.sort(np.asarray(fp_scores))[::-1]
    cut = fp_scores[len(truth) - 1] if len(fp_scores) >= len(truth) else -np.inf
    return {uid: ~(b > cut) for uid, b in best.items()}


def label_nodules(weak, truth_grid, tolerance=3.0):
    """The true nodule of each weak label: int [M] (index into truth_grid, -1: none). Labels
    mined from records come in their own order and miss some nodules (NLST gives micronodules
    no location), so a label is matched to the nodule nearest in z (within `tolerance` grid
    voxels: a mined slice is within one slice of the centre), one to one, closest pairs first
    (ties: the lower indices). Labels derived from the truth, in its order, get their own
    nodule. weak: [M, >= 1] (z, ...); truth_grid: [N, >= 1] (z, ...), both in grid voxels."""
    weak, truth_grid = np.asarray(weak, np.float64), np.asarray(truth_grid, np.float64)
    out = np.full(len(weak), -1, np.int64)
    if not len(weak) or not len(truth_grid):
        return out
    dz = np.abs(weak[:, 0][:, None] - truth_grid[:, 0][None, :])
    pairs = sorted((dz[i, j], i, j) for i in range(len(weak)) for j in range(len(truth_grid)) if dz[i, j] <= tolerance)
    taken = set()
    for _, i, j in pairs:
        if out[i] < 0 and j not in taken:
            out[i] = j
            taken.add(j)
    return out


class PickDiagnostics:
    """em_fit observer: how right each E-step's picks are (see the module docstring)."""

    def __init__(self, data_dir, weak_uids, missed=None):
        self.truth = {u: true_boxes(data_dir, u)[1] for u in weak_uids}
        self.nodule_of = {u: label_nodules(datasets.load_weak(data_dir, u), true_boxes(data_dir, u)[0])
                          for u in weak_uids}
        self.missed = missed  # {uid: bool [N]} from missed_at_one_fp with the initial detector, or None

    def __call__(self, epoch, est: EStepResult) -> dict:
        """Pick precision (picks inside any true nodule), label recall (labels with a pick
        inside their own nodule; a label without one counts as wrong) and, of the nodules the
        initial detector misses that have a label, the share whose label picked them."""
        scans = list(est.boxes)
        right_any, own = [], {}
        for row in est.rows:
            uid, m = row[0], int(row[1])
            xyz, t = np.asarray(row[3:6], np.float64), self.truth[uid]
            inside = np.linalg.norm(t[:, :3] - xyz, axis=1) < t[:, 3] / 2
            right_any.append(bool(inside.any()))
            j = self.nodule_of[uid][m] if m < len(self.nodule_of[uid]) else -1
            own[(uid, m)] = own.get((uid, m), False) or bool(j >= 0 and inside[j])
        labels = [(u, m) for u in scans for m in range(len(self.nodule_of[u]))]
        out = {"picks": len(est.rows), "labels": len(labels),
               "pick_precision": float(np.mean(right_any)) if right_any else float("nan"),
               "label_recall": float(np.mean([own.get(k, False) for k in labels])) if labels else float("nan")}
        if self.missed is not None:
            label_of = {(u, int(j)): m for u in scans for m, j in enumerate(self.nodule_of[u]) if j >= 0}
            hard = [(u, m) for u in scans for j in np.flatnonzero(self.missed[u]) for m in [label_of.get((u, int(j)))]
                    if m is not None]
            out["missed_by_init"] = len(hard)
            out["missed_picked_right"] = float(np.mean([own.get(k, False) for k in hard])) if hard else float("nan")
        return out


def truth_estep(model, data_dir, uids, config, lobe, epoch, ctx) -> EStepResult:
    """run_estep's signature and result, with every true box of the weak scans as a pick
    (with mined labels this includes the nodules the record gave no label, e.g. NLST's
    micronodules); each keeps the lobe of its matched label (label_nodules), -1 without."""
    boxes, weights, rows, feats, lobes = {}, {}, [], [], []
    for uid in uids:
        grid, world = true_boxes(data_dir, uid)
        weak = datasets.load_weak(data_dir, uid)
        lobe_of = {int(j): int(weak[m, 1]) for m, j in enumerate(label_nodules(weak, grid)) if j >= 0}
        meta = preprocess.load_meta(data_dir, uid)
        boxes[uid] = grid.astype(np.float32)
        weights[uid] = np.ones(len(grid), np.float32)
        for m, (g, w) in enumerate(zip(grid, world)):
            lobe_id = lobe_of.get(m, -1)  # the lobe its weak label says (-1: no label)
            rows.append([uid, m, 0, *map(float, w[:3]), float(w[3]), 1.0, float(w[2]), lobe_id])
            if lobe_id >= 0:
                feats.append(features(torch.as_tensor(g[None, :3]), meta["shape"])[0])
                lobes.append(lobe_id)
    profile = {"scans": len(uids), "labels": len(rows), "labels_without_candidates": 0, "proposals_per_scan": 0.0,
               "truth": True}
    return EStepResult(boxes, weights, rows, torch.stack(feats) if feats else torch.zeros(0, 3),
                       torch.tensor(lobes, dtype=torch.long), profile)


def negatives_estep(model, data_dir, uids, config, lobe, epoch, ctx) -> EStepResult:
    """run_estep's signature, with no pick at all: the weak scans train only as negatives away
    from their labels' z bands (random crops). What the weak labels are worth without a single
    pseudo box; a diagnostic run, not a method."""
    empty = {u: np.zeros((0, 4), np.float32) for u in uids}
    profile = {"scans": len(uids), "labels": int(sum(len(datasets.load_weak(data_dir, u)) for u in uids)),
               "labels_without_candidates": 0, "proposals_per_scan": 0.0, "negatives_only": True}
    return EStepResult(empty, {u: np.zeros(0, np.float32) for u in uids}, [], torch.zeros(0, 3),
                       torch.zeros(0, dtype=torch.long), profile)


def right_only_estep(model, data_dir, uids, config, lobe, epoch, ctx) -> EStepResult:
    """run_estep, then every pick that misses all true nodules is dropped: the E-step's right
    picks with their own (proposal) geometry. Separates the harm of wrong picks from that of
    the picks' size and centre; a diagnostic run, not a method."""
    from .em.estep import run_estep

    est = run_estep(model, data_dir, uids, config, lobe, epoch, ctx)
    for uid in uids:
        boxes, t = est.boxes[uid], true_boxes(data_dir, uid)[0]
        keep = np.array([bool((np.linalg.norm(t[:, :3] - b[:3], axis=1) < t[:, 3] / 2).any()) for b in boxes], bool)
        est.boxes[uid], est.weights[uid] = boxes[keep].reshape(-1, 4), est.weights[uid][keep]
    return est


def truth_subset_estep(keep):
    """truth_estep keeping only the nodules where keep[uid] (bool [N]) is True, e.g. those the
    initial detector already finds (or misses) at 1 FP per scan: which of the weak nodules the
    M-step's ceiling needs. The others give no box (their z bands still give no negatives)."""
    def estep(model, data_dir, uids, config, lobe, epoch, ctx):
        est = truth_estep(model, data_dir, uids, config, lobe, epoch, ctx)
        for uid in uids:
            k = np.asarray(keep[uid], bool)
            est.boxes[uid], est.weights[uid] = est.boxes[uid][k].reshape(-1, 4), est.weights[uid][k]
        est.rows[:] = [r for r in est.rows if keep[r[0]][int(r[1])]]
        return est
    return estep


def perturbed_truth_estep(scale=1.38, offset=0.5):
    """truth_estep with each true box's diameter times `scale` and its centre moved by `offset`
    times its radius in a seeded random direction: perfect picks with the geometry errors
    that the E-step's proposals have (measured on the demo: diameter 1.38x, centre 0.5 r)."""
    def estep(model, data_dir, uids, config, lobe, epoch, ctx):
        est = truth_estep(model, data_dir, uids, config, lobe, epoch, ctx)
        rng = np.random.default_rng([config.run.seed, epoch, 17])
        for uid in uids:
            b = est.boxes[uid].astype(np.float64)
            v = rng.normal(size=(len(b), 3))
            v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-9)
            b[:, :3] += v * offset * b[:, 3:] / 2
            b[:, 3] *= scale
            est.boxes[uid] = b.astype(np.float32)
        return est
    return estep


def read_metrics(run_dir):
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def picks_plot(run_dir, path=None) -> str:
    """picks.png of an EM run: pick precision, label recall and missed-right share (left) and
    proposals per weak scan (right) by epoch, from its metrics.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .data.atomic import atomic_write

    records = read_metrics(run_dir)
    diag = {r["epoch"]: r for r in records if r.get("kind") == "diagnostics"}
    estep = {r["epoch"]: r for r in records if r.get("kind") == "estep"}
    epochs = sorted(diag)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key, style, label in (("pick_precision", "o-", "pick precision"), ("label_recall", "s-", "label recall"),
                              ("missed_picked_right", "^-", "missed by init, picked right")):
        ax.plot(epochs, [diag[e].get(key, np.nan) for e in epochs], style, label=label)
    ax.set_ylim(0, 1)
    ax.set_xlabel("E-step epoch")
    ax.set_ylabel("share")
    right = ax.twinx()
    right.plot(epochs, [estep.get(e, {}).get("proposals_per_scan", np.nan) for e in epochs], "d--", color="tab:gray",
               label="proposals / weak scan")
    right.set_ylabel("proposals per weak scan")
    handles = ax.get_legend_handles_labels()
    more = right.get_legend_handles_labels()
    ax.legend(handles[0] + more[0], handles[1] + more[1], fontsize=8)
    ax.set_title(os.path.basename(os.path.normpath(run_dir)), fontsize=9)
    fig.tight_layout()
    path = path or os.path.join(run_dir, "picks.png")
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)
    return path

"""How well mined weak labels match the truth, where a truth exists (the phantom): a label is
right when a true nodule of its series has its central slice within one slice of the label's
z and the same lobe; each nodule counts once."""
import numpy as np


def score_labels(labels, truth, z_spacing):
    """labels: {uid: [N, >= 3] (coordZ, slice, lobe, ...)} (tables.read_weak_labels);
    truth: {uid: [M, 2] (z, lobe)} of the series' true nodules; z_spacing: {uid: mm}.
    -> dict(labels, right, nodules, found, precision, recall)"""
    right = found = n_labels = n_nodules = 0
    for uid in set(labels) | set(truth):
        lab = np.asarray(labels.get(uid, np.zeros((0, 5))), dtype=np.float64)
        lab = lab.reshape(-1, lab.shape[-1])
        tru = np.asarray(truth.get(uid, np.zeros((0, 2))), dtype=np.float64).reshape(-1, 2)
        n_labels, n_nodules = n_labels + len(lab), n_nodules + len(tru)
        if not len(lab) or not len(tru):
            continue
        dz = np.abs(lab[:, 0][:, None] - tru[:, 0][None, :])
        ok = (dz <= z_spacing[uid] + 1e-6) & (lab[:, 2][:, None] == tru[:, 1][None, :])
        used = np.zeros(len(tru), bool)
        for i, j in sorted(zip(*np.nonzero(ok)), key=lambda ij: dz[ij]):  # closest pairs first, one to one
            if not used[j] and ok[i].any():
                used[j] = True
                ok[i] = False
                right += 1
        found += int(used.sum())
    return {"labels": n_labels, "right": right, "nodules": n_nodules, "found": found,
            "precision": right / n_labels if n_labels else float("nan"),
            "recall": found / n_nodules if n_nodules else float("nan")}

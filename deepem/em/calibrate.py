"""The E-step calibrated on fully labelled scans (not in the paper; we know of no peer that does
it). The posterior's free parts, fixed by hand in the paper, are fitted where the truth is
known: weak labels are derived from a fully labelled split (each nodule's central slice), the
E-step runs on those scans with the current teacher, and for every setting of

  the detector term sigmoid((logit - shift) / temperature)   (paper: shift 0, temperature 1)
  the z term's mu and sigma                                   (paper: 1.63 and 2.38 mm)

the MAP picks are ranked by posterior and cut at the minimum posterior that keeps the most
right picks in excess of wrong ones; the setting with the largest excess wins (ties: the
earlier in the grid, the paper's first). The pseudo boxes' diameter scale is then the median
of true / picked diameter over the right picks (the demo's initial detector draws its boxes
about 1.4x too large). Why a shift: with the paper's sigmoid(logit), every
proposal above logit ~4 scores ~1, so a weak detector's posterior is flat over the vessels at
the labelled slice and says nothing about which picks to trust (on the demo: the top half of
the picks by posterior 59% right, against 81% with a shift). The lobe term is left as
configured (the calibration scans carry no lobes here)."""
import dataclasses
import itertools
from dataclasses import dataclass

import numpy as np
import torch

from ..data import datasets, preprocess
from ..ops import em_map
from .estep import batch_labels, batch_records, detect_proposals, label_posterior
from .lobe import LobeModel

SHIFTS = (0.0, 2.0, 4.0, 6.0, 8.0, 10.0)  # the paper's value first in each: it wins ties
TEMPERATURES = (1.0, 0.5, 2.0)
MUS = (1.63, 0.5)
SIGMAS = (2.38, 1.0, 4.0)
SIZE_SIGMAS = (0.25, 0.35, 0.5, 0.7, 1.0)  # the size term's spread in log diameter (with em.size_term)


@dataclass
class Calibration:
    logit_shift: float
    temperature: float
    mu: float
    sigma: float
    min_posterior: float
    pseudo_scale: float  # median true / picked diameter of the right MAP picks (1 if none)
    size_sigma: float  # the size term's spread (fitted with em.size_term on; else as configured)
    labels: int  # calibration labels (nodules of the calibration scans)
    right: int  # MAP picks on their own nodule, at the chosen setting
    kept: int  # picks at or above min_posterior
    kept_right: int
    paper_right: int  # MAP picks right at the paper's setting
    paper_net: int  # best right - wrong at the paper's setting (its own best threshold)

    def apply(self, config):
        """config with the calibrated E-step settings."""
        em = dataclasses.replace(config.em, logit_shift=self.logit_shift, temperature=self.temperature, mu=self.mu,
                                 sigma=self.sigma, min_posterior=self.min_posterior, pseudo_scale=self.pseudo_scale,
                                 size_sigma=self.size_sigma)
        return dataclasses.replace(config, em=em)


def right_picks(props, picks, truth):
    """bool [B, M]: pick (index into props[b]) lies within the radius of label m's nodule
    truth[b][m] = (z, y, x, d) (grid voxels). Labels without a pick are False."""
    right = torch.zeros(picks.shape, dtype=torch.bool)
    for b, t in enumerate(truth):
        for m in range(len(t)):
            j = int(picks[b, m])
            if j >= 0:
                right[b, m] = bool(np.linalg.norm(props[b, j, 1:4].numpy() - t[m, :3]) < t[m, 3] / 2)
    return right


def best_min_posterior(posterior, right):
    """(threshold, net): the threshold t (0, one of the posteriors, or inf to keep none) that
    maximises net = right - wrong among the picks with posterior >= t (ties: the lower t)."""
    if len(posterior) == 0:
        return 0.0, 0
    order = np.argsort(-posterior, kind="stable")
    gain = np.cumsum(np.where(right[order], 1, -1))
    k = len(gain) - 1 - int(np.argmax(gain[::-1]))  # of equal excesses, the one that keeps more picks
    if gain[k] <= 0:
        return float("inf"), 0  # every prefix holds at least as many wrong picks as right ones: keep none
    return (0.0 if k == len(order) - 1 else float(posterior[order[k]])), int(gain[k])


def calibrate(model, data_dir, uids, config, ctx) -> Calibration:
    """The fitted setting (see the module's docstring). With em.size_term on, the size term's
    spread is fitted too, the calibration labels recording their nodules' true diameters; the
    texture term is left as configured (the calibration scans carry no textures)."""
    truth = [datasets.load_scan(data_dir, u)[1] for u in uids]
    # slice (and diameter) only: no lobe, no texture
    weak = [np.stack([t[:, 0], np.zeros(len(t)), t[:, 3], -np.ones(len(t))], 1).astype(np.float32) for t in truth]
    proposals, _ = detect_proposals(model, data_dir, uids, {u: w[:, 0] for u, w in zip(uids, weak)}, config, ctx)
    metas = [preprocess.load_meta(data_dir, u) for u in uids]
    props, num_p, weak_z, weak_lobe, num_w, lobe_lp = batch_labels(uids, proposals, weak, metas, LobeModel())
    weak_d, _ = batch_records(weak, weak_z.shape[1])
    real = torch.arange(weak_z.shape[1])[None] < num_w[:, None]
    size_sigmas = SIZE_SIGMAS if config.em.size_term else (config.em.size_sigma,)
    best, paper = None, None
    for shift, t, mu, s, ss in itertools.product(SHIFTS, TEMPERATURES, MUS, SIGMAS, size_sigmas):
        em = dataclasses.replace(config.em, logit_shift=shift, temperature=t, mu=mu, sigma=s, size_sigma=ss,
                                 use_lobe=False, texture_term=False)
        lp, _ = label_posterior(props, num_p, weak_z, weak_lobe, num_w, lobe_lp, em, weak_d)
        picks = em_map(lp)  # -1 where a label has no candidate
        right = right_picks(props, picks, truth) & real
        picked = real & (picks >= 0)
        post = lp.exp().gather(2, picks.clamp(min=0)[..., None])[..., 0][picked].numpy()
        ok = right[picked].numpy()
        threshold, net = best_min_posterior(post, ok)
        kept = post >= threshold
        found = Calibration(shift, t, mu, s, threshold, 1.0, ss, int(real.sum()), int(right.sum()), int(kept.sum()),
                            int((kept & ok).sum()), 0, 0)
        if paper is None:
            paper = (found.right, net)
        if best is None or net > best[0]:
            best = (net, found, picks, right)
    _, found, picks, right = best
    ratios = [truth[b][m, 3] / float(props[b, picks[b, m], 4]) for b, m in zip(*torch.nonzero(right, as_tuple=True))]
    scale = float(np.median(ratios)) if ratios else 1.0
    return dataclasses.replace(found, pseudo_scale=scale, paper_right=paper[0], paper_net=paper[1])

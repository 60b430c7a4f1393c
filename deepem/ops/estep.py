"""The DeepEM E-step as batched kernels: the posterior of every weak label over its scan's
proposals, then a pick per label by MAP or by sampling, then pseudo ground-truth boxes.

A batch holds B scans padded to P proposal slots and M weak-label slots; `num_proposals[b]`
and `num_weak[b]` say how many slots of scan b are real. Padded slots are never read: any
values there (NaN included) leave the results unchanged.

Posterior of weak label m (central slice z_m, lobe l_m) over proposal H = (logit, z, y, x, d):

    p(H | m) ∝ sigmoid(logit) · N+(max(|z_m - z_H| - mu, 0); sigma) · p(l_m | H)
               [· exp(-(log d_H - log d_m)^2 / (2 s^2)) · p(t_m | H)^w_t]

where the bracketed record terms (not the paper's; off by default) apply to labels whose
record gives a diameter d_m or a texture t_m.

with N+ the half-Gaussian density 2 / sqrt(2 pi sigma^2) · exp(-t^2 / (2 sigma^2)). A proposal
with |z_m - z_H| > z_window, or whose log weight is not finite (NaN inputs, logit -inf, lobe
log-probability ±inf), has probability 0. Computed in log space (log-sum-exp per label).
"""
from typing import List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from .._extension import load

load()

# Paper values (deepem-method.md §3): minimal nodule radius and spread of the radius
# histogram in mm, and the public code's window of ±13 slices around the weak slice.
DEFAULT_MU = 1.63
DEFAULT_SIGMA = 2.38
DEFAULT_Z_WINDOW = 13.0


def em_posterior(
    proposals: Tensor,
    num_proposals: Tensor,
    weak_z: Tensor,
    weak_lobe: Tensor,
    num_weak: Tensor,
    lobe_log_probs: Optional[Tensor] = None,
    mu: float = DEFAULT_MU,
    sigma: float = DEFAULT_SIGMA,
    z_window: float = DEFAULT_Z_WINDOW,
    weak_diameter: Optional[Tensor] = None,
    size_sigma: float = 1.0,
    weak_texture: Optional[Tensor] = None,
    texture_log_probs: Optional[Tensor] = None,
    texture_weight: float = 1.0,
) -> Tuple[Tensor, Tensor]:
    """Log posterior of every weak label over its scan's proposals.

    Args:
        proposals: [B, P, 5] (logit, z, y, x, d), floating.
        num_proposals: [B] integer, real proposals per scan (0..P).
        weak_z: [B, M] floating, central slice of each weak label (same z unit as proposals).
        weak_lobe: [B, M] integer, lobe of each weak label (0..L-1; read only with
            `lobe_log_probs`).
        num_weak: [B] integer, real weak labels per scan (0..M).
        lobe_log_probs: optional [B, P, L], log p(lobe | proposal) (e.g. log_softmax of the
            lobe model); without it the lobe term is 1.
        mu, sigma: half-Gaussian parameters (mm); z_window: admissible |z_m - z_H| (inf: all).
        weak_diameter: optional [B, M] floating, each label's recorded diameter (the unit of
            the proposals' d), NaN where the record has none. A label with one gets the size
            term -(log d_H - log d_m)^2 / (2 size_sigma^2); a proposal with d <= 0 or NaN then
            has probability 0 under it.
        weak_texture, texture_log_probs: optional together: [B, M] integer texture id of each
            label (0..K-1, -1 where none) and [B, P, K] log p(texture | proposal). A label with
            a texture gets the term texture_weight * log p(texture_m | H) (texture_weight > 0).
        Labels without a diameter or texture keep the paper's posterior bit for bit.

    Returns:
        (log_posterior [B, M, P] in the proposals' dtype, has_candidate [B, M] bool). Each row
        of a label with a candidate sums to 1 in probability; rows of labels without an
        admissible proposal (and of padded label slots) are all -inf with has_candidate False.
    """
    return torch.ops.deepem.em_posterior(
        proposals, num_proposals, weak_z, weak_lobe, num_weak, lobe_log_probs,
        float(mu), float(sigma), float(z_window), weak_diameter, float(size_sigma),
        weak_texture, texture_log_probs, float(texture_weight),
    )


def em_map(log_posterior: Tensor) -> Tensor:
    """MAP pick per weak label: [B, M, P] -> int64 [B, M], the proposal with the largest log
    posterior (ties: lower index), -1 where no entry is > -inf (NaN is never picked)."""
    return torch.ops.deepem.em_map(log_posterior)


def em_sample(log_posterior: Tensor, k: int = 2, seed: int = 0, offset: int = 0) -> Tensor:
    """k draws without replacement per weak label: [B, M, P] -> int64 [B, M, k].

    Gumbel top-k: the draws are in draw order (the first is a sample of the posterior, the
    next a sample of the rest, ...). Where fewer than k proposals are admissible, the row
    holds them all, then -1. Reproducible from (seed, offset) with a counter-based generator:
    the same inputs, seed and offset give the same draws on CPU and CUDA; change `offset`
    (e.g. the epoch) for fresh draws. Draws of label (b, m) do not depend on the padding."""
    return torch.ops.deepem.em_sample(log_posterior, int(k), int(seed), int(offset))


class PseudoBoxes(NamedTuple):
    """Pseudo ground truth of weak scans, flat over the batch (one row per kept pick)."""

    boxes: Tensor  # [N, 4] (z, y, x, d) of the picked proposals
    scan: Tensor  # [N] int64, scan index b
    label: Tensor  # [N] int64, weak label index m that picked it (the first one, if merged)
    weight: Tensor  # [N] loss weight: posterior probability of the pick, or 1

    def per_scan(self, num_scans: int) -> List[Tuple[Tensor, Tensor]]:
        """(boxes [n_b, 4], weight [n_b]) for each scan b < num_scans."""
        order = torch.argsort(self.scan, stable=True)
        counts = torch.bincount(self.scan, minlength=num_scans).tolist()
        boxes = self.boxes[order].split(counts)
        weights = self.weight[order].split(counts)
        return list(zip(boxes, weights))


def pseudo_boxes(
    proposals: Tensor,
    picks: Tensor,
    log_posterior: Optional[Tensor] = None,
    merge_duplicates: bool = True,
) -> PseudoBoxes:
    """Turn picks into pseudo ground-truth boxes.

    Args:
        proposals: [B, P, 5] (logit, z, y, x, d).
        picks: int64 [B, M] (em_map) or [B, M, k] (em_sample); -1 entries are skipped.
        log_posterior: optional [B, M, P]; when given, each box's weight is the posterior
            probability of the pick under its label, else 1.
        merge_duplicates: one box per (scan, proposal) when several labels (or draws) pick
            the same proposal, keeping the largest weight and the lowest label index.

    Every weak label of a scan contributes its own picks. Rows are ordered by (scan, label,
    draw), or by (scan, proposal) when merged.
    """
    if proposals.dim() != 3 or proposals.shape[2] != 5:
        raise ValueError(f"pseudo_boxes: 'proposals' must be [B, P, 5], got {tuple(proposals.shape)}")
    if picks.dim() == 2:
        picks = picks.unsqueeze(2)
    if picks.dim() != 3 or picks.shape[0] != proposals.shape[0]:
        raise ValueError(
            f"pseudo_boxes: 'picks' must be [B, M] or [B, M, k] with B = {proposals.shape[0]}, "
            f"got {tuple(picks.shape)}"
        )
    if picks.dtype != torch.long:
        raise ValueError(f"pseudo_boxes: 'picks' must be int64, got {picks.dtype}")
    B, M, k = picks.shape
    P = proposals.shape[1]
    if log_posterior is not None and tuple(log_posterior.shape) != (B, M, P):
        raise ValueError(
            f"pseudo_boxes: 'log_posterior' must be [{B}, {M}, {P}], got {tuple(log_posterior.shape)}"
        )
    if picks.numel() and int(picks.max()) >= P:
        raise ValueError(f"pseudo_boxes: 'picks' holds indices >= P = {P}")
    device = proposals.device
    b, m, _ = torch.nonzero(picks >= 0, as_tuple=True)
    p = picks[picks >= 0]
    boxes = proposals[b, p, 1:5]
    if log_posterior is not None:
        weight = log_posterior[b, m, p].exp()
    else:
        weight = torch.ones(b.shape[0], dtype=proposals.dtype, device=device)
    if merge_duplicates and b.numel():
        key = b * P + p
        uniq, inverse = torch.unique(key, sorted=True, return_inverse=True)
        n = uniq.shape[0]
        weight = torch.full((n,), float("-inf"), dtype=weight.dtype, device=device).scatter_reduce(
            0, inverse, weight, reduce="amax"
        )
        m = torch.full((n,), M, dtype=torch.long, device=device).scatter_reduce(
            0, inverse, m, reduce="amin"
        )
        b, p = uniq // P, uniq % P
        boxes = proposals[b, p, 1:5]
    return PseudoBoxes(boxes=boxes, scan=b, label=m, weight=weight)


def _check_posterior_shapes(proposals, weak_z):
    torch._check(proposals.dim() == 3 and proposals.shape[2] == 5, lambda: "proposals must be [B, P, 5]")
    torch._check(weak_z.dim() == 2 and weak_z.shape[0] == proposals.shape[0], lambda: "weak_z must be [B, M]")


@torch.library.register_fake("deepem::em_posterior")
def _em_posterior_fake(proposals, num_proposals, weak_z, *args):
    _check_posterior_shapes(proposals, weak_z)
    B, P, M = proposals.shape[0], proposals.shape[1], weak_z.shape[1]
    return proposals.new_empty((B, M, P)), proposals.new_empty((B, M), dtype=torch.bool)


@torch.library.register_fake("deepem::_em_posterior_emulated")
def _em_posterior_emulated_fake(*args):
    return _em_posterior_fake(*args)


@torch.library.register_fake("deepem::em_map")
def _em_map_fake(log_posterior):
    torch._check(log_posterior.dim() == 3, lambda: "log_posterior must be [B, M, P]")
    return log_posterior.new_empty(log_posterior.shape[:2], dtype=torch.long)


@torch.library.register_fake("deepem::_em_map_emulated")
def _em_map_emulated_fake(log_posterior):
    return _em_map_fake(log_posterior)


@torch.library.register_fake("deepem::em_sample")
def _em_sample_fake(log_posterior, k, seed, offset):
    torch._check(log_posterior.dim() == 3, lambda: "log_posterior must be [B, M, P]")
    torch._check(k >= 0, lambda: "k must be >= 0")
    return log_posterior.new_empty((log_posterior.shape[0], log_posterior.shape[1], k), dtype=torch.long)


@torch.library.register_fake("deepem::_em_sample_emulated")
def _em_sample_emulated_fake(log_posterior, k, seed, offset):
    return _em_sample_fake(log_posterior, k, seed, offset)

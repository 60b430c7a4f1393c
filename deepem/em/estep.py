"""The E-step over weak scans: whole-scan detection with the current model (deepem.infer's
path), proposals above the logit threshold whose centre lies in some weak label's z window,
NMS, then the posterior of every weak label over its scan's proposals (em_posterior: the
detector's probability x the half-Gaussian z term x the lobe model's p(lobe)), and a pick per
label by MAP or k draws (em_map / em_sample). Every weak label gets its own picks.

Detection is sharded over ranks; the proposals are all-gathered and the posterior and picks
are computed for all scans in one global order on every rank, so N ranks give exactly the
pseudo boxes of 1 rank."""
import os
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from ..data import datasets, preprocess
from ..infer import Detector
from ..infer.detector import load_preprocessed
from ..ops import em_map, em_posterior, em_sample, pseudo_boxes
from ..train import distributed
from .lobe import LobeModel, features

CSV_COLUMNS = ("seriesuid", "weak_index", "draw", "coordX", "coordY", "coordZ", "diameter_mm", "posterior",
               "weak_coordZ", "lobe")


@dataclass
class EStepResult:
    boxes: dict  # uid -> float32 [n, 4] (z, y, x, d) pseudo boxes (grid voxels), merged picks
    weights: dict  # uid -> float32 [n] posterior of each pseudo box
    rows: list  # CSV rows (CSV_COLUMNS), one per pick
    lobe_feats: torch.Tensor  # [n, 3] features of picked proposals ...
    lobe_labels: torch.Tensor  # [n] ... and the weak lobe that picked them
    profile: dict = field(default_factory=dict)


def scan_proposals(detector: Detector, image, weak_z: np.ndarray, threshold: float, z_window: float,
                   nms_iou: float, timings: Optional[dict] = None) -> torch.Tensor:
    """Proposals [P, 5] (logit, z, y, x, d) of one scan that can explain one of its weak labels.
    `timings` (optional) accumulates the seconds of the network ('network') and of decoding,
    window filter and NMS ('postprocess')."""
    t0 = time.perf_counter()
    output = detector.network_output(image)
    detector._sync()
    t1 = time.perf_counter()
    candidates = detector.decode(output, threshold).cpu()
    if len(weak_z) == 0 or len(candidates) == 0:
        kept = candidates[:0]
    else:
        dz = (candidates[:, 1:2] - torch.as_tensor(weak_z, dtype=candidates.dtype)[None]).abs()
        near = (dz <= z_window).any(1)
        kept = detector.postprocess(candidates[near], nms_iou=nms_iou, min_diameter=0.0, max_marks=None)
    if timings is not None:
        timings["network"] = timings.get("network", 0.0) + t1 - t0
        timings["postprocess"] = timings.get("postprocess", 0.0) + time.perf_counter() - t1
    return kept


def _file_signature(path: str):
    """(size, mtime in ns) of a file, or None where it is missing (reading it then fails)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def detect_proposals(model, data_dir: str, uids: list, weak_z: dict, config, ctx: distributed.Context):
    """({uid: proposals [P, 5]} of every scan, this rank's seconds of reading, network and
    post-processing): detection sharded over ranks, proposals all-gathered. weak_z: {uid:
    the label slices whose windows keep proposals}. The model's train/eval mode is restored.
    A model with a `proposal_cache` (a frozen teacher, deepem.em.teacher.ProposalCache) keeps
    each scan's proposals there and detects a scan again only under other settings or slices,
    or when its preprocessed file has changed."""
    em, det = config.em, config.detect
    cache = getattr(model, "proposal_cache", None)
    training = model.training
    detector = Detector(model, device=ctx.device, tile=det.tile or None, margin=det.margin,
                        tile_batch=det.tile_batch, max_memory=det.max_memory_gb * 2**30 or None, amp=config.run.amp)
    mine, timings = {}, {"read": 0.0, "network": 0.0, "postprocess": 0.0}
    for i in range(ctx.rank, len(uids), ctx.world):
        uid = uids[i]
        key = (os.path.abspath(data_dir), uid, _file_signature(os.path.join(data_dir, uid + "_clean.npy")),
               tuple(np.asarray(weak_z[uid], np.float64).tolist()), em.threshold, em.z_window, em.nms_iou,
               det.tile, det.margin, det.tile_batch, det.max_memory_gb, config.run.amp)
        if cache is not None and key in cache:
            mine[uid] = cache[key]
            continue
        t0 = time.perf_counter()
        image, _ = load_preprocessed(data_dir, uid)  # the image only
        image = np.asarray(image)
        timings["read"] += time.perf_counter() - t0
        mine[uid] = scan_proposals(detector, image, weak_z[uid], em.threshold, em.z_window, em.nms_iou, timings)
        if cache is not None:
            cache[key] = mine[uid]
    proposals = {}
    for part in distributed.all_gather_object(mine, ctx):
        proposals.update(part)
    model.train(training)
    return proposals, timings


def batch_labels(uids, proposals, weak, metas, lobe):
    """All scans padded to one batch: props [B, P, 5], num_p [B], weak_z [B, M], weak_lobe
    [B, M], num_w [B] and the lobe model's log p(lobe | proposal) [B, P, L]."""
    B = len(uids)
    P = max([len(proposals[u]) for u in uids] + [1])
    M = max([len(w) for w in weak] + [1])
    props = torch.zeros(B, P, 5)
    num_p = torch.zeros(B, dtype=torch.long)
    weak_z = torch.zeros(B, M)
    weak_lobe = torch.zeros(B, M, dtype=torch.long)
    num_w = torch.zeros(B, dtype=torch.long)
    lobe_lp = torch.zeros(B, P, lobe.linear.out_features)
    with torch.no_grad():
        for b, u in enumerate(uids):
            p, w = proposals[u], weak[b]
            props[b, : len(p)], num_p[b] = p, len(p)
            weak_z[b, : len(w)], weak_lobe[b, : len(w)], num_w[b] = torch.from_numpy(w[:, 0]), \
                torch.from_numpy(w[:, 1]).long(), len(w)
            if len(p):
                centres = p[:, 1:4].to(lobe.linear.weight.device)  # the lobe model lives on the run's device
                lobe_lp[b, : len(p)] = lobe.log_probs(features(centres, metas[b]["shape"])).cpu()
    return props, num_p, weak_z, weak_lobe, num_w, lobe_lp


def run_estep(model, data_dir: str, uids: list, config, lobe: LobeModel, epoch: int,
              ctx: distributed.Context) -> EStepResult:
    """E-step on `uids` (the scans sampled this epoch), in their order. The profile's seconds
    are this rank's: detection (reading + network), post-processing (decode, weak-window
    filter, NMS), posterior + pick."""
    weak_z = {u: datasets.load_weak(data_dir, u)[:, 0] for u in uids}  # a weak scan's true boxes are never read
    proposals, timings = detect_proposals(model, data_dir, uids, weak_z, config, ctx)
    t1 = time.perf_counter()
    result = posterior_and_picks(data_dir, uids, proposals, lobe, config, epoch)
    result.profile.update({"scans": len(uids), "seconds_detection": timings["read"] + timings["network"],
                           "seconds_postprocess": timings["postprocess"],
                           "seconds_posterior_pick": time.perf_counter() - t1,
                           "proposals_per_scan": float(np.mean([len(proposals[u]) for u in uids])) if uids else 0.0})
    return result


def batch_records(weak, M):
    """What the weak labels' records say, padded like batch_labels: diameter [B, M] (grid
    voxels, NaN where none) and texture id [B, M] (-1 where none)."""
    diameter = torch.full((len(weak), M), float("nan"))
    texture = torch.full((len(weak), M), -1, dtype=torch.long)
    for b, w in enumerate(weak):
        diameter[b, : len(w)] = torch.from_numpy(np.asarray(w[:, 2], np.float32))
        texture[b, : len(w)] = torch.from_numpy(np.asarray(w[:, 3])).long()
    return diameter, texture


def label_posterior(props, num_p, weak_z, weak_lobe, num_w, lobe_lp, em, weak_d=None, weak_tex=None, tex_lp=None):
    """em_posterior with the E-step's free parts applied: the detector's logit l enters as
    sigmoid((l - em.logit_shift) / em.temperature), the lobe term's log-probabilities times
    em.lobe_weight (paper: shift 0, temperature 1, weight 1); with em.size_term the labels'
    recorded diameters weak_d, with em.texture_term their textures weak_tex under the texture
    model's tex_lp (the record terms; not the paper's)."""
    if em.temperature != 1.0 or em.logit_shift != 0.0:
        props = props.clone()
        props[..., 0] = (props[..., 0] - em.logit_shift) / em.temperature
    lobe = lobe_lp * em.lobe_weight if lobe_lp is not None and em.use_lobe and em.lobe_weight > 0 else None
    record = {}
    if em.size_term and weak_d is not None:
        record.update(weak_diameter=weak_d, size_sigma=em.size_sigma)
    if em.texture_term and weak_tex is not None and tex_lp is not None:
        record.update(weak_texture=weak_tex, texture_log_probs=tex_lp, texture_weight=em.texture_weight)
    return em_posterior(props, num_p, weak_z, weak_lobe, num_w, lobe, mu=em.mu, sigma=em.sigma, z_window=em.z_window,
                        **record)


def texture_posterior(data_dir, uids, props, num_p, weak_z, weak_lobe, num_w, lobe_lp, em, weak_d, weak_tex):
    """The posterior with the texture term: the texture model fitted on this E-step's posterior
    without it (deepem/em/texture.py), then the posterior again with it."""
    from ..infer.detector import load_preprocessed
    from . import texture

    first, _ = label_posterior(props, num_p, weak_z, weak_lobe, num_w, lobe_lp, em, weak_d)
    features = [texture.core_features(np.asarray(load_preprocessed(data_dir, u)[0]), props[b, : int(num_p[b])].numpy())
                for b, u in enumerate(uids)]
    model = texture.fit_from_posterior(features, first, weak_tex, num_p)
    tex_lp = texture.batch_log_probs(features, model, num_p, props.shape[1], props.dtype)
    return label_posterior(props, num_p, weak_z, weak_lobe, num_w, lobe_lp, em, weak_d, weak_tex, tex_lp)


def confident_labels(log_posterior, em):
    """bool [B, M]: labels whose best proposal has posterior >= em.min_posterior and beats the
    runner-up by em.min_margin (both 0 in the paper: every label with a candidate counts).
    The others give no pseudo box; their scans still give negatives outside the z bands."""
    p = log_posterior.exp()
    top = p.topk(min(2, p.shape[-1]), dim=-1).values if p.shape[-1] else p.new_zeros(p.shape[:2] + (1,))
    best = top[..., 0]
    second = top[..., 1] if top.shape[-1] > 1 else torch.zeros_like(best)
    return (best >= em.min_posterior) & (best - second >= em.min_margin)


def box_geometry(merged, weak_z, em, weak_d=None):
    """Pseudo boxes with the E-step's geometry options: the centre's z set to the picking
    label's slice (em.box_z_from_label: the weak label knows the central slice; a proposal's z
    is the detector's guess), the diameter the label's recorded one where it has one
    (em.pseudo_diameter=record), and the diameter times em.pseudo_scale (paper: none)."""
    record = em.pseudo_diameter == "record" and weak_d is not None
    if not em.box_z_from_label and em.pseudo_scale == 1.0 and not record:
        return merged
    boxes = merged.boxes.clone()
    if em.box_z_from_label and len(boxes):
        boxes[:, 0] = weak_z[merged.scan, merged.label].to(boxes.dtype)
    if record and len(boxes):
        d = weak_d[merged.scan, merged.label].to(boxes.dtype)
        boxes[:, 3] = torch.where(torch.isnan(d), boxes[:, 3], d)
    boxes[:, 3] *= em.pseudo_scale
    return merged._replace(boxes=boxes)


def posterior_and_picks(data_dir, uids, proposals, lobe, config, epoch) -> EStepResult:
    """The batched posterior (all scans padded to one [B, P, 5]) and the picks."""
    em = config.em
    B = len(uids)
    weak = [datasets.load_weak(data_dir, u) for u in uids]
    metas = [preprocess.load_meta(data_dir, u) for u in uids]
    props, num_p, weak_z, weak_lobe, num_w, lobe_lp = batch_labels(uids, proposals, weak, metas, lobe)
    M = weak_z.shape[1]
    weak_d, weak_tex = batch_records(weak, M)
    if em.texture_term:
        lp, has = texture_posterior(data_dir, uids, props, num_p, weak_z, weak_lobe, num_w, lobe_lp, em, weak_d,
                                    weak_tex)
    else:
        lp, has = label_posterior(props, num_p, weak_z, weak_lobe, num_w, lobe_lp, em, weak_d)
    picks = em_map(lp)[..., None] if em.method == "map" else em_sample(lp, em.k, seed=config.run.seed, offset=epoch)
    confident = confident_labels(lp, em)
    picks = torch.where(confident[..., None], picks, torch.full_like(picks, -1))
    merged = box_geometry(pseudo_boxes(props, picks, lp), weak_z, em, weak_d)
    boxes, weights = {}, {}
    for b, (bx, wt) in enumerate(merged.per_scan(B)):
        boxes[uids[b]] = bx.numpy().astype(np.float32)
        weights[uids[b]] = wt.numpy().astype(np.float32)
    rows, feats, labels = [], [], []
    for b, m, d in zip(*[t.tolist() for t in torch.nonzero(picks >= 0, as_tuple=True)]):
        j = int(picks[b, m, d])
        z, y, x, diam = props[b, j, 1:5].tolist()
        meta = metas[b]
        world = preprocess.grid_to_world(np.array([z, y, x]), meta)
        weak_world = preprocess.grid_to_world(np.array([float(weak_z[b, m]), y, x]), meta)
        rows.append([uids[b], m, d, *map(float, world), diam * meta.get("resolution", 1.0),
                     float(lp[b, m, j].exp()), float(weak_world[2]), int(weak_lobe[b, m])])
        feats.append(features(props[b, j, 1:4][None], meta["shape"])[0])
        labels.append(int(weak_lobe[b, m]))
    real = torch.arange(M)[None] < num_w[:, None]
    profile = {"labels": int(num_w.sum()), "labels_without_candidates": int((real & ~has).sum()),
               "labels_not_confident": int((real & has & ~confident).sum())}
    return EStepResult(boxes, weights, rows, torch.stack(feats) if feats else torch.zeros(0, 3),
                       torch.tensor(labels, dtype=torch.long), profile)

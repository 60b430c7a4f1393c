"""DeepEM training (Algorithm 1 of the paper): from a supervised checkpoint, each epoch
  E-step on a seeded share of the weak scans (pseudo boxes of the others are kept),
  lobe model update on the (picked proposal, weak lobe) pairs,
  M-step: one pass over the weak scans with pseudo boxes (negatives kept out of each weak
  label's z band; optionally posterior-weighted), then one supervised epoch,
through the same Trainer as `deepem train` (checkpoints, exact resume, NaN guard, metrics).

Options beyond the paper (config em.*, each off by default): a teacher other than the student
runs the E-step (teacher.py), the E-step's free parts are fitted on a fully labelled split
before each E-step (calibrate.py), unconfident labels give no pseudo box (estep.py), full and
weak crops share every batch (mix), pseudo boxes train classification only."""
import dataclasses
import math
import os
from typing import Optional

import numpy as np
import torch

from ..data import datasets
from ..data.atomic import atomic_write
from ..model.safe_load import CheckpointError
from ..train import config as cfg
from ..train.trainer import (Trainer, check_data_root, check_not_held_out, load_init, lr_at, read_split,
                             selection_value, validate)
from .calibrate import calibrate
from .estep import CSV_COLUMNS, run_estep
from .lobe import LobeModel
from .teacher import Teacher


def sample_scans(uids, fraction, seed, epoch):
    """The weak scans re-estimated this epoch: a seeded share, in split order."""
    n = max(1, int(math.ceil(fraction * len(uids))))
    chosen = np.random.default_rng([seed, epoch, 13]).choice(len(uids), size=min(n, len(uids)), replace=False)
    return [uids[i] for i in sorted(chosen)]


def write_csv(path, rows):
    import csv
    import io

    text = io.StringIO()
    w = csv.writer(text, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in rows:
        w.writerow([("%.6g" % v) if isinstance(v, float) else v for v in r])
    atomic_write(path, lambda f: f.write(text.getvalue().encode()))


def to_tensors(arrays: dict) -> dict:
    """{uid: numpy array} -> {uid: tensor}: checkpoints hold tensors, so they load weights-only."""
    return {u: torch.from_numpy(np.ascontiguousarray(a)) for u, a in arrays.items()}


def from_tensors(tensors: dict) -> dict:
    return {u: t.cpu().numpy() for u, t in tensors.items()}


def em_fit(config: cfg.TrainConfig, init: Optional[str] = None, resume: Optional[str] = None,
           trainer: Optional[Trainer] = None, stop_at: Optional[int] = None, trusted: bool = False,
           estep=None, observer=None) -> Trainer:
    """EM training for config.optim.epochs epochs starting from the supervised checkpoint `init`
    (resume: 'auto' or a path continues an EM run exactly; trusted: load them with a full
    unpickle, only for files you trust). For studies of the method only: `estep` replaces
    run_estep (same arguments and result), `observer(epoch, result)` sees each E-step's result
    and returns a dict logged as a 'diagnostics' record; neither is part of DeepEM."""
    check_data_root(config.data.root)
    c, em = config, config.em
    t = trainer or Trainer(c)
    full_uids = read_split(c, c.data.train_split)
    weak_uids = read_split(c, em.weak_split)
    common = dict(crop_size=c.data.crop_size, seed=c.run.seed, random_fraction=c.data.random_fraction)
    full_set = datasets.CropDataset(c.data.root, full_uids, **common)
    weak_set = datasets.WeakCropDataset(c.data.root, weak_uids, **common)
    val_set = None
    if c.data.val_split:
        val_uids = read_split(c, c.data.val_split)
        check_not_held_out(c, "data.val_split", c.data.val_split, val_uids)
        val_set = datasets.CropDataset(c.data.root, val_uids, train=False, crop_size=c.data.crop_size, seed=c.run.seed)
    calibration_uids = read_split(c, em.calibrate) if em.calibrate else []
    check_not_held_out(c, "em.calibrate", em.calibrate, calibration_uids)
    weak_calibration = sorted(set(calibration_uids) & set(weak_uids))
    if weak_calibration:  # its true boxes are what EM must never read
        raise cfg.ConfigError("config key 'em.calibrate' ('%s') holds %d weak scan(s) of em.weak_split (e.g. %s): the "
                              "calibration reads its scans' true boxes; calibrate on a fully labelled split (e.g. val)"
                              % (em.calibrate, len(weak_calibration), weak_calibration[0]))
    lobe = LobeModel().to(t.device)
    boxes, weights = {}, {}
    state = t.resume(resume, trusted) if resume else None
    if state is not None and "em" not in state:  # e.g. --resume auto in the folder of a supervised run
        raise CheckpointError("cannot resume EM from %s: it is a supervised checkpoint (no EM state); start EM from it "
                         "with init (--init) and a fresh run folder" % (resume if resume != "auto" else
                                                                       "the newest checkpoint in '%s'" % c.run.out))
    t.open_run_folder()  # after the resume check: a refused run leaves the folder as it was
    if state is not None:
        lobe.load_state_dict(state["em"]["lobe"])
        boxes, weights = from_tensors(state["em"]["boxes"]), from_tensors(state["em"]["weights"])
    elif init:
        load_init(t, init, trusted)
    elif trainer is None:  # EM from random weights is never what was meant
        raise FileNotFoundError("EM needs a start: no checkpoint to resume in '%s' and no init (a supervised "
                                "checkpoint, --init)" % c.run.out)
    teacher = Teacher(em.teacher, t.model, em.ema_decay, em.proposal_cache)  # a copy of the start (or the student)
    if state is not None:
        teacher.load_state_dict(state["em"].get("teacher", {}))
    t.after_step.append(teacher.update)
    estep = estep or run_estep
    end = c.optim.epochs if stop_at is None else min(stop_at, c.optim.epochs)
    while t.epoch < end:
        epoch = t.epoch
        chosen = sample_scans(weak_uids, em.fraction, c.run.seed, epoch)
        run_config = c
        if calibration_uids:
            fitted = calibrate(teacher.model, c.data.root, calibration_uids, c, t.ctx)
            t.log({"kind": "calibration", "epoch": epoch, **dataclasses.asdict(fitted)})
            run_config = fitted.apply(c)
        est = estep(teacher.model, c.data.root, chosen, run_config, lobe, epoch, t.ctx)
        boxes.update(est.boxes)
        weights.update(est.weights)
        if t.ctx.main and c.run.out:
            write_csv(os.path.join(c.run.out, "pseudo_boxes", "epoch_%03d.csv" % epoch), est.rows)
        if observer is not None:
            t.log({"kind": "diagnostics", "epoch": epoch, **observer(epoch, est)})
        lobe_loss = lobe.fit(est.lobe_feats.to(t.device), est.lobe_labels.to(t.device),
                             em.lobe_lr_factor * lr_at(c, epoch), em.lobe_steps)
        est.profile.update({"epoch": epoch, "picks": len(est.rows), "lobe_loss": lobe_loss})
        t.log({"kind": "estep", **est.profile})
        record = {"epoch": epoch, "estep": est.profile}
        weak_set.set_pseudo_boxes(boxes, weights)
        full_steps = em.full_steps or c.optim.steps_per_epoch
        if em.mix:  # one pass, every batch drawn from full and weak crops alike
            record["train"] = t.train_epoch(datasets.MixedCropDataset(full_set, weak_set), epoch,
                                            steps=em.weak_steps + full_steps, tag="mixed", weighted=em.weighted)
        else:
            if len(weak_set):  # with no pseudo box at all: random crops, negatives outside the bands
                record["weak"] = t.train_epoch(weak_set, epoch, steps=em.weak_steps, tag="weak", weighted=em.weighted,
                                               stream=1)
            record["train"] = t.train_epoch(full_set, epoch, steps=full_steps, tag="full")
        metric = validate(t, val_set, epoch)
        record.update(metric)
        t.history.append(record)
        t.log({"kind": "epoch", **record})
        t.epoch = epoch + 1
        t.save(selection_value(record, val_set is not None),
               extra={"em": {"lobe": lobe.state_dict(), "boxes": to_tensors(boxes), "weights": to_tensors(weights),
                             "teacher": teacher.state_dict()}})
        t.plot()
    return t

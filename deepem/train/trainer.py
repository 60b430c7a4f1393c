"""The one training loop: supervised epochs here, and the EM M-step (deepem.em) through the same
`train_epoch` with other crops. Checkpoints, exact resume, NaN guard, metrics and model
selection on the validation split live here too."""
import json
import math
import os
import time
from typing import Optional

import numpy as np
import torch

from .. import heap
from ..data import datasets, splits
from ..data.atomic import atomic_write, remove_stale_temps
from ..model import DetectionLoss, Res18
from . import checkpoint, distributed
from .config import ConfigError, TrainConfig, save_config, to_dict
from .ema import WeightAverage
from .sampling import EpochSampler


TRAINING_STATE = ("model", "optimizer", "scaler", "rng", "epoch", "best", "history")


class NonFiniteLoss(RuntimeError):
    """Training stopped on a NaN/Inf loss; the last good checkpoint is left intact."""


def read_split(config: TrainConfig, name: str) -> list:
    """uids of a split: a name in the splits JSON (data.splits, default <root>/splits.json), or
    a text file with one uid a line."""
    return splits.read_split(name, config.data.splits or os.path.join(config.data.root, "splits.json"))


def check_not_held_out(config: TrainConfig, key: str, split: str, uids) -> None:
    """Refuses split `split` (config key `key`) when it holds scans of the splits file's
    held-out split (deepem.data.splits.HELD_OUT, 'test': read only by the final scoring):
    model selection and the E-step's calibration never see them, whatever the split is called."""
    path = config.data.splits or os.path.join(config.data.root, "splits.json")
    overlap = sorted(set(splits.held_out(path)) & set(uids))
    if overlap:
        raise ConfigError("config key '%s' ('%s') holds %d scan(s) of the held-out '%s' split of %s (e.g. %s): "
                          "that split is for the final scoring only; select and calibrate on a validation split"
                          % (key, split, len(overlap), splits.HELD_OUT, path, overlap[0]))


def selection_value(record: dict, validating: bool):
    """What model selection minimises for one epoch's record. A run with a validation split
    selects only among its validated epochs (None on the epochs it skips, so that no training
    loss competes with a validation metric); a run without one, by the training loss."""
    return record.get("selection") if validating else record["train"]["loss"]


def check_data_root(root: str) -> None:
    if not root:
        raise FileNotFoundError("config data.root is empty: give the preprocessed folder (deepem preprocess output)")
    if not os.path.isdir(root):
        raise FileNotFoundError("config data.root '%s' is not a folder" % root)


def lr_at(config: TrainConfig, epoch: int) -> float:
    """DeepLung's step schedule: lr x factor from each milestone (a fraction of the epochs) on."""
    factor = 1.0
    for milestone, f in zip(config.optim.lr_milestones, config.optim.lr_factors):
        if epoch >= milestone * config.optim.epochs:
            factor = f
    return config.optim.lr * factor


def warmup_factor(config: TrainConfig, steps: int) -> float:
    """The lr's linear warm-up: (steps + 1) / optim.warmup_steps for the run's first
    optim.warmup_steps optimizer steps, then 1. Why: a run that starts from an init's weights
    starts a fresh optimizer, whose first AdamW steps move every weight by the full lr."""
    w = config.optim.warmup_steps
    return 1.0 if w <= 0 or steps >= w else (steps + 1.0) / w


def step_seed(seed: int, epoch: int, step: int, rank: int) -> int:
    """Labelling seed of one step: distinct per (seed, epoch, step, rank)."""
    return int(np.random.default_rng([seed, epoch, step, rank, 11]).integers(1 << 62))


def rng_state(device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


class Trainer:
    """Model, optimizer, loss and run folder of one training run (any world size)."""

    def __init__(self, config: TrainConfig, ctx: Optional[distributed.Context] = None):
        self.config = config
        self.ctx = ctx or distributed.setup(config.run.device)
        if config.run.threads > 0:
            torch.set_num_threads(config.run.threads)
        if self.ctx.device.type == "cpu":
            torch.set_flush_denormal(True)  # denormal activations slow CPU convolutions many-fold
        torch.manual_seed(config.run.seed)
        self.device = self.ctx.device
        self.model = Res18(config.model.width, dropout=config.model.dropout).to(self.device)
        if config.run.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last_3d)
        self.net = self.model
        if self.ctx.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.loss = DetectionLoss(pos_threshold=config.loss.pos_threshold, neg_threshold=config.loss.neg_threshold,
                                  num_neg=config.loss.num_neg, num_hard=config.loss.num_hard)
        o = config.optim
        # fused: one kernel for all parameters (the quarter-width model's AdamW step 6.9 -> 1.1 ms on CPU)
        fused = self.device.type in ("cpu", "cuda")
        if o.name == "adamw":
            self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=o.lr, weight_decay=o.weight_decay,
                                               fused=fused)
        else:
            self.optimizer = torch.optim.SGD(self.model.parameters(), lr=o.lr, momentum=o.momentum,
                                             weight_decay=o.weight_decay, fused=fused)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.run.amp == "fp16")
        self.epoch = 0  # the next epoch to run
        self.steps = 0  # optimizer steps taken (the lr warm-up counts them)
        self.best = None  # (metric, epoch): lower is better
        self.history = []
        self.out = config.run.out
        self.after_step = []  # called after every optimizer step (e.g. the EM teacher's EMA update)
        # optim.ema_decay > 0: an average of the weights is what is validated, selected and saved as
        # "model" (the trained weights are saved as "student", for resuming)
        self.average = WeightAverage(self.model, o.ema_decay) if o.ema_decay > 0 else None
        if self.average is not None:
            self.after_step.append(lambda: self.average.update(self.model))

    @property
    def eval_model(self) -> torch.nn.Module:
        """The weights that are validated and saved as the checkpoint's model: the average of
        the weights with optim.ema_decay > 0, else the trained weights themselves."""
        return self.model if self.average is None else self.average.model

    # ---- one pass -------------------------------------------------------------------------
    def autocast(self):
        if self.config.run.amp == "none":
            return torch.autocast(self.device.type, enabled=False)
        dtype = torch.bfloat16 if self.config.run.amp == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def loader(self, dataset, epoch: int, steps: int = 0, stream: int = 0):
        c = self.config
        sampler = EpochSampler(len(dataset), c.optim.batch_size, steps, c.run.seed + 7919 * stream,
                               self.ctx.rank, self.ctx.world)
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        return torch.utils.data.DataLoader(dataset, batch_size=c.optim.batch_size // self.ctx.world,
                                           sampler=sampler, num_workers=c.data.workers,
                                           collate_fn=datasets.collate, drop_last=True)

    def train_epoch(self, dataset, epoch: int, steps: int = 0, tag: str = "train", weighted: bool = False,
                    stream: int = 0) -> dict:
        """One pass of SGD over `dataset` (steps > 0: exactly that many steps). Crops that carry
        'weak_z' get negatives excluded in their weak z bands; with weighted=True, crops' 'weights'
        scale their boxes' loss terms; `stream` separates the random choices of passes in one
        epoch (the EM M-step's weak and full passes). Returns the mean loss parts."""
        c = self.config
        self.net.train()
        loader = self.loader(dataset, epoch, steps, stream)
        sums, count, t0 = {}, 0, time.perf_counter()
        bar = self._bar(len(loader), "%s %d" % (tag, epoch))
        with heap.reuse_freed_memory():  # no page faults for memory freed by the last step
            for step, batch in enumerate(loader):
                lr = lr_at(c, epoch) * warmup_factor(c, self.steps)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                parts = self.train_step(batch, epoch, step + 100003 * stream, weighted)
                self.steps += 1
                for k, v in parts.items():
                    if isinstance(v, float) and math.isnan(v):
                        continue
                    sums[k] = sums.get(k, 0.0) + v
                count += 1
                crops_per_s = count * c.optim.batch_size / (time.perf_counter() - t0)
                if bar is not None:
                    bar.set_postfix(loss="%.3f" % parts["loss"], crops_s="%.1f" % crops_per_s)
                    bar.update()
                if (step + 1) % c.run.log_every == 0:
                    self.log({"kind": "step", "tag": tag, "epoch": epoch, "step": step + 1, "lr": lr,
                              "crops_per_s": crops_per_s, **parts})
        if bar is not None:
            bar.close()
        means = {k: distributed.mean(v / max(count, 1), self.ctx) for k, v in sums.items()}
        means["seconds"] = time.perf_counter() - t0
        return means

    def train_step(self, batch, epoch: int, step: int, weighted: bool = False) -> dict:
        image = batch["image"].to(self.device, non_blocking=True)
        coord = batch["coord"].to(self.device, non_blocking=True)
        if self.config.run.channels_last:
            image = image.contiguous(memory_format=torch.channels_last_3d)
        bands = None
        if "weak_z" in batch:
            # the band is em.exclude_band voxels of the scan: a crop scaled by s sees it s times as wide
            bands = [exclusion_band(z, self.config.em.exclude_band * float(s))
                     for z, s in zip(batch["weak_z"], batch["scale"])]
        weights = batch.get("weights") if weighted else None
        reg_weights = None
        if "weak" in batch and not self.config.em.pseudo_regression:  # pseudo boxes: classification only
            reg_weights = [torch.full((len(b),), 0.0 if weak else 1.0) for b, weak in zip(batch["boxes"], batch["weak"])]
        with self.autocast():
            output = self.net(image, coord)
        result = self.loss(output, batch["boxes"], weights=weights, neg_exclude_z=bands,
                           seed=step_seed(self.config.run.seed, epoch, step, self.ctx.rank), reg_weights=reg_weights)
        finite = distributed.all_true(bool(torch.isfinite(result.total)), self.ctx)
        if not finite:
            bad = [k for k, v in result.parts.items() if isinstance(v, float) and not math.isfinite(v)]
            raise NonFiniteLoss("non-finite loss at epoch %d, step %d (parts: %s); the last good checkpoint "
                                "is left intact" % (epoch, step, ", ".join(bad) or "total"))
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(result.total).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        for hook in self.after_step:
            hook()
        return {"loss": float(result.total.detach()), **result.parts}

    @torch.no_grad()
    def validation_loss(self, dataset) -> float:
        """Mean loss over the validation crops (one centred crop per nodule; fixed labelling seed)."""
        if len(dataset) == 0:
            return float("nan")
        model = self.eval_model
        model.eval()
        loader = torch.utils.data.DataLoader(dataset, batch_size=max(1, self.config.optim.batch_size // self.ctx.world),
                                             num_workers=self.config.data.workers, collate_fn=datasets.collate)
        total, n = 0.0, 0
        for i, batch in enumerate(loader):
            if i % self.ctx.world != self.ctx.rank:
                continue
            with self.autocast():
                out = model(batch["image"].to(self.device), batch["coord"].to(self.device))
            r = self.loss(out, batch["boxes"], seed=step_seed(self.config.run.seed, 1 << 20, i, 0))
            total += float(r.total) * len(batch["boxes"])
            n += len(batch["boxes"])
        total = distributed.mean(total, self.ctx) * self.ctx.world
        n = distributed.mean(float(n), self.ctx) * self.ctx.world
        return total / max(n, 1.0)

    def validation_cpm(self, uids) -> float:
        """Validation FROC score: whole-scan detection of the validation scans (sharded over
        ranks), LUNA16 CPM against their labels (deepem.eval, no bootstrap)."""
        from ..data import preprocess
        from ..eval import froc
        from ..infer import Detector

        d = self.config.detect
        det = Detector(self.eval_model, device=self.device, tile=d.tile or None, margin=d.margin,
                       tile_batch=d.tile_batch, max_memory=d.max_memory_gb * 2**30 or None,
                       amp=self.config.run.amp, threshold=d.threshold, nms_iou=d.nms_iou,
                       min_diameter=d.min_diameter, max_marks=d.max_marks)
        marks, annotations = {}, {}
        for i in range(self.ctx.rank, len(uids), self.ctx.world):
            m = det.detect((self.config.data.root, uids[i]))
            marks[uids[i]] = np.concatenate([m.world_xyz, m.probability[:, None]], 1)
        for part in distributed.all_gather_object(marks, self.ctx):
            marks.update(part)
        for uid in uids:
            image, labels, meta = datasets.load_scan(self.config.data.root, uid)
            world = preprocess.grid_to_world(labels[:, :3].astype(np.float64), meta) if len(labels) else np.zeros((0, 3))
            annotations[uid] = np.concatenate([world, labels[:, 3:] * meta.get("resolution", 1.0)], 1)
        self.model.train()
        if not any(len(a) for a in annotations.values()):
            return float("nan")
        return float(froc.evaluate(marks, annotations, list(uids), bootstrap=0).cpm)

    # ---- run folder --------------------------------------------------------------------------
    def _bar(self, total, desc):
        if not (self.config.run.progress and self.ctx.main):
            return None
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit="step", leave=False, dynamic_ncols=True)

    def log(self, record: dict) -> None:
        if not (self.ctx.main and self.out):
            return
        os.makedirs(self.out, exist_ok=True)
        with open(os.path.join(self.out, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")

    def state(self) -> dict:
        state = {"model": self.eval_model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scaler": self.scaler.state_dict(), "rng": rng_state(self.device), "epoch": self.epoch,
                 "steps": self.steps,
                 "best": self.best, "history": self.history, "config": to_dict(self.config)}
        if self.average is not None:
            state.update(student=self.model.state_dict(), ema=self.average.state())
        return state

    def load_state(self, state: dict) -> None:
        if self.average is not None and "student" in state:
            self.model.load_state_dict(state["student"])
            self.average.model.load_state_dict(state["model"])
            self.average.load(state["ema"])
        else:  # a run saved without an average continues with one from its weights
            self.model.load_state_dict(state["model"])
            if self.average is not None:
                self.average.reset(self.model)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"], self.device)
        self.epoch, self.best, self.history = state["epoch"], state["best"], list(state["history"])
        self.steps = int(state.get("steps", 0))

    def save(self, metric: Optional[float], extra: Optional[dict] = None, keep: int = 2) -> None:
        """Epoch checkpoint + last.pt (+ best.pt when `metric` improved); rank 0 only."""
        improved = metric is not None and math.isfinite(metric) and (self.best is None or metric < self.best[0])
        if improved:
            self.best = (float(metric), self.epoch - 1)
        if not (self.ctx.main and self.out):
            return
        folder = os.path.join(self.out, "checkpoints")
        path = os.path.join(folder, checkpoint.EPOCH_FILE % (self.epoch - 1))
        checkpoint.save({**self.state(), **(extra or {})}, path)
        checkpoint.link(path, os.path.join(self.out, "last.pt"))
        if improved:
            checkpoint.link(path, os.path.join(self.out, "best.pt"))
        old = sorted(os.listdir(folder))[:-keep]
        for name in old:
            if name.startswith("epoch_"):
                os.unlink(os.path.join(folder, name))

    def resume(self, which: str, trusted: bool = False) -> Optional[dict]:
        """which: a checkpoint path, or 'auto' (the newest in the run folder; none: fresh start).
        Returns the checkpoint (for callers' own state) or None. Weights-only unless `trusted`."""
        path = checkpoint.latest(self.out) if which == "auto" else which
        if path is None:
            return None
        state = checkpoint.load(path, map_location=self.device, trusted=trusted)
        missing = [k for k in TRAINING_STATE if k not in state]
        if missing:
            raise checkpoint.CheckpointError("checkpoint '%s' cannot be resumed: it lacks %s (a training checkpoint "
                                             "of deepem train or em has them)" % (path, ", ".join(missing)))
        checkpoint.state_dict_of(state, "checkpoint '%s'" % path)
        self.load_state(state)
        return state

    def open_run_folder(self) -> None:
        """Creates the run folder (rank 0), removes temp files that killed writes left in it,
        and writes config.yaml."""
        if self.ctx.main and self.out:
            os.makedirs(self.out, exist_ok=True)
            remove_stale_temps(self.out, recursive=True)
            save_config(self.config, os.path.join(self.out, "config.yaml"))

    def plot(self) -> None:
        if self.ctx.main and self.out and self.history:
            plot_history(self.history, os.path.join(self.out, "loss.png"))


def load_init(t: Trainer, init: str, trusted: bool = False) -> None:
    """The start weights of a run: the model state_dict of checkpoint `init`."""
    state = checkpoint.load_weights(init, map_location=t.device, trusted=trusted)
    try:
        t.model.load_state_dict(state)
    except RuntimeError as e:
        raise checkpoint.CheckpointError("checkpoint '%s': its weights do not fit this run's model (model.width %s): %s"
                                         % (init, t.config.model.width, str(e).strip().splitlines()[0])) from None
    if t.average is not None:
        t.average.reset(t.model)


def exclusion_band(weak_z, half_width: float):
    """z bands [E, 2] around weak slices (crop voxels) where the M-step takes no negatives
    (half_width: config em.exclude_band scan voxels times the crop's scale; the public code
    used weak z +- 5 voxels)."""
    return torch.stack([weak_z - half_width, weak_z + half_width], -1)


def plot_history(history, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(get):
        values = [get(h) for h in history]
        values = [float("nan") if v is None else v for v in values]
        return values if any(math.isfinite(v) for v in values) else None

    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for get, style, label in ((lambda h: h["train"]["loss"], "o-", "train loss"),
                              (lambda h: h.get("weak", {}).get("loss"), "^-", "EM weak-crop loss"),
                              (lambda h: h.get("val_loss"), "s-", "validation loss")):
        values = series(get)
        if values is not None:
            ax.plot(epochs, values, style, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    handles, labels = ax.get_legend_handles_labels()
    cpm = series(lambda h: h.get("val_cpm"))
    if cpm is not None:  # the model-selection metric, on its own axis
        right = ax.twinx()
        right.plot(epochs, cpm, "d--", color="tab:red", label="validation CPM")
        right.set_ylabel("CPM")
        right.set_ylim(0, 1)
        more = right.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    ax.legend(handles, labels, fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)


def validate(t: Trainer, val_set, epoch: int) -> dict:
    """Validation record of an epoch (every run.val_every epochs and at the last): val_loss, and
    with run.select = cpm val_cpm; 'selection' is the value model selection minimises."""
    c = t.config
    if val_set is None or not ((epoch + 1) % c.run.val_every == 0 or epoch + 1 == c.optim.epochs):
        return {}
    out = {"val_loss": t.validation_loss(val_set)}
    if c.run.select == "cpm":
        out["val_cpm"] = t.validation_cpm(val_set.uids)
        out["selection"] = -out["val_cpm"]
    else:
        out["selection"] = out["val_loss"]
    return out


def fit(config: TrainConfig, resume: Optional[str] = None, trainer: Optional[Trainer] = None,
        stop_at: Optional[int] = None, init: Optional[str] = None, trusted: bool = False) -> Trainer:
    """Supervised training (`deepem train`): epochs over the train split's crops, validation
    loss on the validation split for model selection, a checkpoint each epoch. stop_at: return
    before that epoch, as if interrupted (the schedule still follows optim.epochs). init: start
    from this checkpoint's weights (not its optimizer or epoch). trusted: load `resume` and `init`
    with a full unpickle (only for files you trust; deepem's own checkpoints never need it)."""
    check_data_root(config.data.root)
    t = trainer or Trainer(config)
    c = config
    common = dict(crop_size=c.data.crop_size, seed=c.run.seed)
    train_set = datasets.CropDataset(c.data.root, read_split(c, c.data.train_split),
                                     random_fraction=c.data.random_fraction, **common)
    val_set = None
    if c.data.val_split:
        val_uids = read_split(c, c.data.val_split)
        check_not_held_out(c, "data.val_split", c.data.val_split, val_uids)
        val_set = datasets.CropDataset(c.data.root, val_uids, train=False, **common)
    t.open_run_folder()
    state = t.resume(resume, trusted) if resume else None
    if state is None and init:
        load_init(t, init, trusted)
    while t.epoch < min(c.optim.epochs, c.optim.epochs if stop_at is None else stop_at):
        epoch = t.epoch
        train = t.train_epoch(train_set, epoch, steps=c.optim.steps_per_epoch)
        record = {"epoch": epoch, "train": train, **validate(t, val_set, epoch)}
        t.history.append(record)
        t.log({"kind": "epoch", **record})
        t.epoch = epoch + 1
        t.save(selection_value(record, val_set is not None))
        t.plot()
    return t

"""Training configuration: nested dataclasses, read from one YAML file plus `--set a.b=value`
overrides. Unknown keys and values of the wrong type are rejected with the key's name. The
defaults are the paper's GPU settings; `PRESETS` holds the small CPU model.
"""
import dataclasses
import math
import os
import typing
from dataclasses import dataclass, field
from typing import List, Optional

import yaml


class ConfigError(ValueError):
    """A bad configuration: the message names the key and what was expected."""


@dataclass
class DataConfig:
    root: str = ""  # preprocessed folder (deepem preprocess output)
    splits: str = ""  # JSON {split name: [uids]}; default: <root>/splits.json
    train_split: str = "full"  # split name in `splits`, or a text file with one uid a line
    val_split: str = "val"  # split for model selection ('' for none); never the test split (refused)
    crop_size: int = 96  # training crop side (voxels, multiple of 16)
    random_fraction: float = 0.3  # share of random crops (DeepLung: 0.3)
    workers: int = 2  # DataLoader worker processes (0: load in the main process)


@dataclass
class ModelConfig:
    width: float = 1.0  # channel multiplier of the Res18 (1: DeepLung's 5.4 M parameters)
    dropout: float = 0.5  # Dropout3d before the head


@dataclass
class LossConfig:
    pos_threshold: float = 0.5  # anchor IoU for a positive
    neg_threshold: float = 0.02  # anchors below this IoU may be negatives
    num_neg: int = 800  # sampled negatives per crop
    num_hard: int = 2  # hard negatives per crop in the loss


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd (DeepLung's) | adamw (learns a narrow model in far fewer steps)
    lr: float = 1e-3  # learning rate
    momentum: float = 0.9  # SGD only
    weight_decay: float = 1e-4
    batch_size: int = 32  # crops per step (over all processes)
    epochs: int = 100
    steps_per_epoch: int = 0  # 0: one pass over the crops; else exactly this many steps
    lr_milestones: List[float] = field(default_factory=lambda: [0.5, 0.75])  # fractions of the epochs
    lr_factors: List[float] = field(default_factory=lambda: [0.5, 0.1])  # lr x factor from each milestone
    ema_decay: float = 0.0  # > 0: validate, select and save an EMA of the weights (deepem/train/ema.py); 0: off
    warmup_steps: int = 0  # the lr rises linearly over a run's first this many steps (0: none)


@dataclass
class RunConfig:
    out: str = ""  # run folder (checkpoints, metrics.jsonl, loss.png, config.yaml)
    seed: int = 0  # every random choice follows it
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "none"  # none | bf16 | fp16 (autocast; GPU)
    channels_last: bool = False  # channels-last-3d memory format
    threads: int = 0  # CPU threads for torch (0: torch's default)
    log_every: int = 10  # steps between metrics.jsonl lines
    val_every: int = 1  # epochs between validations
    select: str = "cpm"  # model selection on the validation split: cpm (detect + LUNA16 FROC) | loss
    progress: bool = True  # progress bars


@dataclass
class DetectConfig:
    threshold: float = -2.0  # logit threshold of the marks
    nms_iou: float = 0.1  # cube IoU of DeepLung's post-processing
    min_diameter: float = 3.0  # mm
    max_marks: int = 100  # per scan (LUNA16)
    tile: int = 0  # 0: the fewest tiles that fit max_memory_gb (deepem.infer.plan); N: DeepLung's fixed tiles of side N (144)
    margin: int = 16  # context voxels around each tile (deepem.infer.plan.DEFAULT_BORDER; DeepLung: 32)
    tile_batch: int = 1  # tiles per network call
    max_memory_gb: float = 0.0  # memory budget of the tiles; 0: half the available memory (GPU: 80% of free)


@dataclass
class EMConfig:
    weak_split: str = "weak"  # weakly labelled scans (split name or uid file)
    method: str = "sample"  # map | sample (k draws per weak label)
    k: int = 2  # draws per weak label when sampling (paper: 2)
    fraction: float = 0.0625  # share of weak scans re-estimated per epoch (public code: 1/16)
    threshold: float = -3.0  # logit threshold of E-step proposals (paper: -3)
    nms_iou: float = 0.1  # cube IoU of E-step NMS
    mu: float = 1.63  # half-Gaussian offset, mm (minimal nodule radius)
    sigma: float = 2.38  # half-Gaussian spread, mm
    z_window: float = 13.0  # admissible |z_m - z_H| (public code: 13 slices)
    use_lobe: bool = True  # multiply the posterior by the lobe model's p(lobe | proposal)
    lobe_lr_factor: float = 10.0  # lobe model lr = this x the detector's lr (paper: 10)
    lobe_steps: int = 50  # full-batch SGD steps of the lobe model per epoch
    weighted: bool = False  # scale pseudo boxes' loss terms by their posterior
    exclude_band: float = 5.0  # no negatives within weak z +- this (scan voxels; scaled with the crop) in weak crops
    weak_steps: int = 0  # M-step steps over weak crops per epoch (0: one pass)
    full_steps: int = 0  # supervised steps per epoch (0: optim.steps_per_epoch)
    # Beyond the paper (each default is the paper's method; docs/deepem-study.md measures them):
    temperature: float = 1.0  # the posterior uses sigmoid((logit - logit_shift) / temperature) ...
    logit_shift: float = 0.0  # ... (Platt scaling: a shift keeps confident proposals from all saturating at 1)
    lobe_weight: float = 1.0  # the posterior uses p(lobe | proposal) ** lobe_weight
    min_posterior: float = 0.0  # a label gives pseudo boxes only if its best posterior reaches this ...
    min_margin: float = 0.0  # ... and beats the runner-up by this; else only its band-free negatives
    teacher: str = "student"  # who runs the E-step: student (paper) | init (frozen start) | ema (weights' EMA)
    ema_decay: float = 0.999  # per optimizer step, for teacher = ema
    proposal_cache: str = ""  # teacher = init: a folder keeping its proposals on disk for other runs from the same init
    mix: bool = False  # full and weak crops in every batch (one pass of weak_steps + full_steps)
    pseudo_regression: bool = True  # false: pseudo boxes train classification only, no box regression
    box_z_from_label: bool = False  # a pseudo box's centre z is its label's slice, not the proposal's
    pseudo_scale: float = 1.0  # pseudo box diameter = the proposal's times this
    # What the record says beyond slice and lobe (the weak labels' diameter_mm and texture columns):
    size_term: bool = False  # x exp(-(log d_H - log d_m)^2 / (2 size_sigma^2)) for labels with a diameter
    size_sigma: float = 0.5  # spread of the size term in log diameter (em.calibrate fits it with the size term on)
    texture_term: bool = False  # x p(texture_m | H)^texture_weight for labels with a texture (deepem/em/texture.py)
    texture_weight: float = 0.1
    pseudo_diameter: str = "proposal"  # a pseudo box's diameter: the proposal's, or the label's recorded one (record)
    calibrate: str = ""  # a fully labelled split (e.g. val): fit logit_shift, temperature, mu, sigma and
    #                      min_posterior on it before each E-step (deepem/em/calibrate.py); never the test
    #                      split nor the weak split (refused: it reads its scans' true boxes)


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    detect: DetectConfig = field(default_factory=DetectConfig)
    em: EMConfig = field(default_factory=EMConfig)


# Named starting points; a YAML file and --set apply on top.
PRESETS = {
    "paper": {},  # DeepLung/DeepEM on a GPU: full width, 96^3 crops, batch 32
    # 2 CPU cores: a quarter-width Res18 on 48^3 crops; batches of 8 cost about 2x one crop
    # (benchmarks/bench_train.py), so steps are batched. AdamW without dropout: on the demo's
    # phantom, SGD (lr 0.01, dropout 0.5) had not begun to separate nodules after 450 steps,
    # AdamW 1e-3 did within 125.
    "cpu": {"model": {"width": 0.25, "dropout": 0.0}, "data": {"crop_size": 48, "workers": 1},
            "optim": {"name": "adamw", "lr": 1e-3, "batch_size": 8, "epochs": 20}, "loss": {"num_neg": 200}},
}


def from_dict(values: dict, cls=TrainConfig, prefix: str = ""):
    """A config dataclass from a nested dict; unknown keys and wrong types raise ConfigError."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError("%s: expected a mapping, got %r" % (prefix or "config", values))
    names = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        path = prefix + str(key)
        if key not in names:
            raise ConfigError("unknown config key '%s' (known: %s)" % (path, ", ".join(sorted(names))))
        kind = hints[key]
        if dataclasses.is_dataclass(kind):
            kwargs[key] = from_dict(value, kind, path + ".")
        else:
            kwargs[key] = _coerce(value, kind, path)
    return cls(**kwargs)


def _coerce(value, kind, path):
    origin = typing.get_origin(kind)
    if origin in (list, List):
        (item,) = typing.get_args(kind)
        if not isinstance(value, (list, tuple)):
            raise ConfigError("config key '%s' must be a list, got %r" % (path, value))
        return [_coerce(v, item, path) for v in value]
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        return _coerce(value, [a for a in typing.get_args(kind) if a is not type(None)][0], path)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is float and isinstance(value, str):  # YAML 1.1 reads 1e9 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if kind is str and value is None:
        return ""
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError("config key '%s' must be %s, got %r" % (path, kind.__name__, value))
    return value


def to_dict(config) -> dict:
    return dataclasses.asdict(config)


def merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in (update or {}).items():
        out[k] = merge(out.get(k, {}), v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_overrides(items: Optional[List[str]]) -> dict:
    """['optim.lr=0.01', 'model.width=0.25'] -> nested dict (values parsed as YAML scalars)."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError("--set expects key=value (e.g. optim.lr=0.01), got '%s'" % item)
        key, text = item.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(text)
    return out


def load_config(path: Optional[str] = None, preset: Optional[str] = None, overrides=None,
                extra: Optional[dict] = None) -> TrainConfig:
    """preset, then the YAML file, then `extra` (a dict), then --set overrides."""
    values = {}
    if preset:
        if preset not in PRESETS:
            raise ConfigError("unknown preset '%s' (known: %s)" % (preset, ", ".join(PRESETS)))
        values = merge(values, PRESETS[preset])
    if path:
        if not os.path.isfile(path):
            raise ConfigError("config file '%s' does not exist" % path)
        with open(path) as f:
            try:
                loaded = yaml.safe_load(f)
            except yaml.YAMLError as e:
                raise ConfigError("config file '%s' is not valid YAML: %s" % (path, e)) from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError("config file '%s' must hold a mapping of sections (data:, model:, optim:, ...), "
                              "got a %s" % (path, type(loaded).__name__))
        values = merge(values, loaded or {})
    values = merge(values, extra or {})
    values = merge(values, parse_overrides(overrides))
    config = from_dict(values)
    validate(config)
    return config


# The range of every numeric setting: (low, high, low included, high included); None: unbounded.
# A list setting's range applies to each of its items. Every float must also be finite.
RANGES = {
    "data.crop_size": (16, None, True, True), "data.random_fraction": (0, 1, True, False),
    "data.workers": (0, None, True, True),
    "model.width": (0, None, False, True), "model.dropout": (0, 1, True, False),
    "loss.pos_threshold": (0, 1, False, True), "loss.neg_threshold": (0, 1, True, True),
    "loss.num_neg": (0, None, True, True), "loss.num_hard": (0, None, True, True),
    "optim.lr": (0, None, False, True), "optim.momentum": (0, 1, True, False),
    "optim.weight_decay": (0, None, True, True), "optim.batch_size": (1, None, True, True),
    "optim.epochs": (1, None, True, True), "optim.steps_per_epoch": (0, None, True, True),
    "optim.lr_milestones": (0, 1, True, True), "optim.lr_factors": (0, None, False, True),
    "optim.ema_decay": (0, 1, True, False), "optim.warmup_steps": (0, None, True, True),
    "run.threads": (0, None, True, True), "run.log_every": (1, None, True, True),
    "run.val_every": (1, None, True, True),
    "detect.nms_iou": (0, 1, True, True), "detect.min_diameter": (0, None, True, True),
    "detect.max_marks": (1, None, True, True), "detect.tile": (0, None, True, True),
    "detect.max_memory_gb": (0, None, True, True),
    "detect.margin": (0, None, True, True), "detect.tile_batch": (1, None, True, True),
    "em.k": (1, None, True, True), "em.fraction": (0, 1, False, True), "em.nms_iou": (0, 1, True, True),
    "em.mu": (0, None, True, True), "em.sigma": (0, None, False, True), "em.z_window": (0, None, False, True),
    "em.lobe_lr_factor": (0, None, False, True), "em.lobe_steps": (0, None, True, True),
    "em.exclude_band": (0, None, True, True), "em.weak_steps": (0, None, True, True),
    "em.full_steps": (0, None, True, True), "em.temperature": (0, None, False, True),
    "em.lobe_weight": (0, None, True, True), "em.min_posterior": (0, 1, True, True), "em.min_margin": (0, 1, True, True),
    "em.ema_decay": (0, 1, True, False), "em.pseudo_scale": (0, None, False, True),
    "em.size_sigma": (0, None, False, True), "em.texture_weight": (0, None, False, True),
}


def _interval(low, high, low_in, high_in):
    if high is None:
        return ">= %g" % low if low_in else "> %g" % low
    return "in %s%g, %g%s" % ("[" if low_in else "(", low, high, "]" if high_in else ")")


def _check_numbers(config) -> None:
    for section in dataclasses.fields(config):
        part = getattr(config, section.name)
        for f in dataclasses.fields(part):
            key, value = "%s.%s" % (section.name, f.name), getattr(part, f.name)
            items = value if isinstance(value, list) else [value]
            for v in items:
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    continue
                if isinstance(v, float) and not math.isfinite(v):
                    raise ConfigError("config key '%s' must be a finite number, got %r" % (key, value))
                if key in RANGES:
                    low, high, low_in, high_in = RANGES[key]
                    ok = (v >= low if low_in else v > low) and (high is None or (v <= high if high_in else v < high))
                    if not ok:
                        raise ConfigError("config key '%s' must be %s, got %r"
                                          % (key, _interval(*RANGES[key]), value))


def validate(config: TrainConfig) -> None:
    c = config
    _check_numbers(c)
    if c.data.crop_size % 16:
        raise ConfigError("config key 'data.crop_size' must be a positive multiple of 16, got %d" % c.data.crop_size)
    from ..infer import tiles

    try:  # the detector's own rule for tiles and margins
        tiles.split_comb((1, 1, 1), c.detect.tile or 144, c.detect.margin)
    except ValueError as e:
        raise ConfigError("config keys 'detect.tile' / 'detect.margin': %s" % e) from None
    if c.loss.neg_threshold > c.loss.pos_threshold:
        raise ConfigError("config key 'loss.neg_threshold' (%g) must not exceed 'loss.pos_threshold' (%g)"
                          % (c.loss.neg_threshold, c.loss.pos_threshold))
    if len(c.optim.lr_milestones) != len(c.optim.lr_factors):
        raise ConfigError("config keys 'optim.lr_milestones' and 'optim.lr_factors' must have the same length")
    if c.optim.name not in ("sgd", "adamw"):
        raise ConfigError("config key 'optim.name' must be sgd or adamw, got '%s'" % c.optim.name)
    if c.run.select not in ("loss", "cpm"):
        raise ConfigError("config key 'run.select' must be loss or cpm, got '%s'" % c.run.select)
    if c.em.teacher not in ("student", "init", "ema"):
        raise ConfigError("config key 'em.teacher' must be student, init or ema, got '%s'" % c.em.teacher)
    if c.em.method not in ("map", "sample"):
        raise ConfigError("config key 'em.method' must be map or sample, got '%s'" % c.em.method)
    if c.em.pseudo_diameter not in ("proposal", "record"):
        raise ConfigError("config key 'em.pseudo_diameter' must be proposal or record, got '%s'"
                          % c.em.pseudo_diameter)
    if c.run.amp not in ("none", "bf16", "fp16"):
        raise ConfigError("config key 'run.amp' must be none, bf16 or fp16, got '%s'" % c.run.amp)
    check_split_roles(c)


def check_split_roles(config: TrainConfig) -> None:
    """The splits whose names say what they are: model selection and the E-step's calibration
    never read the held-out test split (deepem.data.splits.HELD_OUT), and the calibration never
    the weak split (it reads its scans' true boxes). Training refuses a split holding test
    scans under any name as well (deepem.train.trainer.check_not_held_out)."""
    from ..data.splits import HELD_OUT

    c = config
    for key, split in (("data.val_split", c.data.val_split), ("em.calibrate", c.em.calibrate)):
        if split and split == HELD_OUT:
            raise ConfigError("config key '%s' must not be the held-out '%s' split: only the final scoring reads it; "
                              "select and calibrate on a validation split (e.g. val)" % (key, split))
    if c.em.calibrate and c.em.calibrate == c.em.weak_split:
        raise ConfigError("config key 'em.calibrate' must not be the weak split ('%s', em.weak_split): the calibration "
                          "reads its scans' true boxes; calibrate on a fully labelled split (e.g. val)" % c.em.calibrate)


def save_config(config: TrainConfig, path: str) -> None:
    from ..data.atomic import atomic_write

    atomic_write(path, lambda f: f.write(yaml.safe_dump(to_dict(config), sort_keys=False).encode()))

"""Checkpoints written atomically (temp file in the same folder, fsync, rename), so a run
killed mid-write never leaves a broken file; `latest` finds what `--resume auto` continues.
What is saved is tensors, numbers, strings and plain containers only, so that every load is
weights-only (deepem.model.safe_load): a checkpoint never runs code."""
import glob
import os
import re

import torch

from ..data.atomic import atomic_write
from ..model.safe_load import CheckpointError, load_checkpoint, state_dict_of  # noqa: F401

EPOCH_FILE = "epoch_%03d.pt"


def save(state: dict, path: str) -> None:
    atomic_write(path, lambda f: torch.save(state, f))


def load(path: str, map_location="cpu", trusted: bool = False) -> dict:
    """A checkpoint dict, weights-only unless `trusted` (CheckpointError names the file)."""
    state = load_checkpoint(path, map_location, trusted)
    if not isinstance(state, dict):
        raise CheckpointError("checkpoint '%s' holds a %s, expected a dict" % (path, type(state).__name__))
    return state


def load_weights(path: str, map_location="cpu", trusted: bool = False) -> dict:
    """The model state_dict of checkpoint `path` (for --init)."""
    return state_dict_of(load(path, map_location, trusted), "checkpoint '%s'" % path)


def latest(run_dir: str):
    """The newest epoch checkpoint in run_dir (by epoch number), or None."""
    best, best_epoch = None, -1
    for path in glob.glob(os.path.join(run_dir, "checkpoints", "epoch_*.pt")):
        m = re.search(r"epoch_(\d+)\.pt$", path)
        if m and int(m.group(1)) > best_epoch:
            best, best_epoch = path, int(m.group(1))
    return best


def link(src: str, dst: str) -> None:
    """dst becomes a copy of src (last.pt / best.pt), atomically."""
    with open(src, "rb") as f:
        data = f.read()
    atomic_write(dst, lambda out: out.write(data))

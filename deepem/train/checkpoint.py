"""Checkpoints written atomically (temp file in the same folder, fsync, rename), so a run
killed mid-write never leaves a broken file; `latest` finds what `--resume auto` continues."""
import glob
import os
import re

import torch

from ..data.atomic import atomic_write

EPOCH_FILE = "epoch_%03d.pt"


def save(state: dict, path: str) -> None:
    atomic_write(path, lambda f: torch.save(state, f))


def load(path: str, map_location="cpu") -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError("checkpoint '%s' does not exist" % path)
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # a truncated or foreign file: say which
        raise RuntimeError("checkpoint '%s' could not be read: %s" % (path, e)) from None


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

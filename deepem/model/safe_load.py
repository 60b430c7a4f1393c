"""Reading checkpoint files without running code from them.

A .pt file is a pickle, and unpickling an arbitrary object can run arbitrary code, so every
deepem load is weights-only (tensors, numbers, strings and plain containers, which is all
that deepem writes). A file that needs more is refused with an error naming the file and
what it holds; `trusted=True` (`--trust-checkpoint` on the command line) opts in to a full
unpickle, for files from an older deepem or another codebase that you trust."""
import os
import pickle
import re

import torch


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, refused as unsafe, or not what was expected."""


def load_checkpoint(path, map_location="cpu", trusted: bool = False):
    """The object stored in checkpoint `path`, loaded weights-only unless `trusted`."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError("checkpoint not found: %s" % path)
    try:
        return torch.load(path, map_location=map_location, weights_only=not trusted)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if found and not trusted:
            raise CheckpointError(
                "checkpoint '%s' holds the global %s, which only a full unpickle can load, and unpickling can run "
                "code; refused. If you trust where the file came from, pass --trust-checkpoint (Python: "
                "trusted=True)" % (path, found.group(1))) from None
        raise CheckpointError("checkpoint '%s' could not be read: it is not a PyTorch checkpoint deepem can load%s"
                              % (path, "" if trusted else " weights-only")) from None
    except Exception as e:  # a truncated or foreign file: say which
        raise CheckpointError("checkpoint '%s' could not be read (%s: %s)" % (path, type(e).__name__, _first_line(e))) \
            from None


def state_dict_of(checkpoint, name: str, key: str = "model") -> dict:
    """checkpoint[key] if checkpoint is a dict whose `key` is a state_dict (str -> tensor)."""
    if not isinstance(checkpoint, dict) or key not in checkpoint:
        raise CheckpointError("%s: expected a dict with '%s' (a state_dict), got %s"
                              % (name, key, sorted(map(str, checkpoint)) if isinstance(checkpoint, dict)
                                 else type(checkpoint).__name__))
    state = checkpoint[key]
    if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise CheckpointError("%s: '%s' must be a state_dict (parameter names -> tensors), got %s"
                              % (name, key, type(state).__name__))
    return state


def _first_line(e):
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__

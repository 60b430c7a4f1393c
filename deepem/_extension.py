"""Loads deepem._C, which registers the torch.ops.deepem.* kernels."""
import importlib

import torch  # noqa: F401  (the extension links against torch's libraries)

_module = None


def load():
    global _module
    if _module is None:
        try:
            _module = importlib.import_module("deepem._C")
        except ImportError as e:
            raise ImportError(
                "deepem's compiled kernels (deepem._C) are not built or do not match the "
                "installed torch: run `pip install --no-build-isolation .` (or "
                "`python setup.py build_ext --inplace` in a checkout). Cause: %s" % e
            ) from e
    return _module

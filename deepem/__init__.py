"""deepem: 3D pulmonary nodule detection with DeepEM.

`deepem.ops` holds the compiled 3D box kernels (CPU and CUDA), importable on their own.
"""
from ._version import __version__
from ._extension import load as _load

_load()  # registers torch.ops.deepem.* (as `import torchvision` does for its ops)

from . import ops  # noqa: E402  deepem.ops after `import deepem`, as torchvision.ops (torch only)


def build_info():
    """What the compiled extension holds: {'cuda_kernels': bool, 'cuda_archs': str,
    'cuda_version': str, 'torch': the torch version it was compiled against,
    'torch_runtime': the torch running now, 'version': deepem's version}."""
    import torch

    from ._extension import load

    info = dict(load().build_info())
    info["torch_runtime"] = torch.__version__
    info["version"] = __version__
    return info


__all__ = ["__version__", "build_info", "ops"]

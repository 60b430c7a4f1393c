"""Packaging promises: `import deepem` registers torch.ops.deepem.*, and the kernel library
imports with torch and numpy alone (the system's other dependencies stay unloaded)."""
import subprocess
import sys


def test_import_deepem_registers_ops_and_ops_need_only_torch_and_numpy():
    # (tqdm is not checked: torch itself imports it.)
    code = ("import sys, torch, deepem; torch.ops.deepem.nms3d; import deepem.ops; "
            "bad = [m for m in ('scipy', 'SimpleITK', 'matplotlib', 'yaml') if m in sys.modules]; "
            "assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr


def test_machine_description_names_cpu_cores_torch_and_threads():
    import os

    import torch

    from deepem.machine import describe

    info = describe()
    assert isinstance(info["cpu"], str) and info["cpu"]
    assert info["cores"] == os.cpu_count() and info["torch"] == torch.__version__
    assert info["torch_threads"] == torch.get_num_threads()
    assert ("gpu" in info) == torch.cuda.is_available()
    assert info["load_average_1min"] is None or info["load_average_1min"] >= 0

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


def test_ops_reachable_after_import_deepem_as_torchvision_ops_and_monai_never_imported():
    # `import deepem; deepem.ops.nms3d(...)`, as `import torchvision; torchvision.ops.nms(...)`;
    # the MONAI integration stays unloaded (and with it monai) until asked for.
    code = ("import sys, torch, deepem; "
            "b = torch.tensor([[0., 0, 0, 2, 2, 2], [0, 0, 0, 2, 2, 1]]); "
            "assert deepem.ops.nms3d(b, torch.tensor([0.9, 0.8]), 0.4).tolist() == [0]; "
            "assert deepem.ops.boxes.xyzxyz_to_boxes(b).shape == (2, 6); "
            "bad = [m for m in sys.modules if m.split('.')[0] == 'monai' or m == 'deepem.integrations']; "
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

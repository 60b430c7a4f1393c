"""The `deepem` command line: phantom, then preprocess, then a rerun that resumes."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("scipy")
pytest.importorskip("SimpleITK")

from deepem import cli
from deepem.data import datasets


def test_phantom_then_preprocess(tmp_path, capsys):
    data, pre = tmp_path / "luna", tmp_path / "pre"
    assert cli.main(["phantom", str(data), "--scans", "3", "--seed", "4", "--shape", "48", "72", "72",
                     "--subsets", "2", "--quiet"]) == 0
    assert "wrote 3 phantom scans" in capsys.readouterr().out
    splits = json.loads((data / "splits.json").read_text())
    assert (data / "subset1").is_dir() and not (data / "subset2").exists()
    assert cli.main(["preprocess", str(data), str(pre), "--quiet", "--workers", "2"]) == 0
    assert "preprocessed 3 scans, 0 already done, 0 failed" in capsys.readouterr().out
    uids = sum(splits.values(), [])
    for uid in uids:
        meta = json.loads((pre / (uid + "_meta.json")).read_text())
        assert meta["lung_mask"].endswith(uid + ".mhd")  # seg-lungs found by default
    ds = datasets.CropDataset(pre, uids, crop_size=32)
    assert ds[0]["image"].shape == (1, 32, 32, 32)
    # rerun: nothing to do; a scan file that seriesuids.csv (taken by default) does not list is
    # left out and said; with every scan found, a file that is not a scan makes --strict fail, by name
    (data / "subset0" / "broken.mhd").write_text("garbage\n")
    assert cli.main(["preprocess", str(data), str(pre), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "0 scans, 3 already done, 0 failed" in captured.out
    assert "1 scan(s) under" in captured.err and "(e.g. broken)" in captured.err
    assert cli.main(["preprocess", str(data), str(pre), "--quiet", "--seriesuids", "none"]) == 0
    captured = capsys.readouterr()
    assert "0 scans, 3 already done, 1 failed" in captured.out and "broken" in captured.err
    assert cli.main(["preprocess", str(data), str(pre), "--quiet", "--strict", "--seg-dir", "none",
                     "--seriesuids", "none"]) == 1
    # without annotations the labels are empty
    assert cli.main(["preprocess", str(data), str(tmp_path / "nolab"), "--quiet", "--annotations", "none"]) == 0
    assert np.load(tmp_path / "nolab" / (uids[0] + "_label.npy")).shape == (0, 4)


def test_bad_arguments_exit_with_usage(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["phantom", "out", "--scans", "0"])
    assert e.value.code == 2 and "--scans" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main([])


def test_module_entry_point():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-m", "deepem", "--help"], capture_output=True, text=True, check=True,
                         cwd=root)
    assert "phantom" in out.stdout and "preprocess" in out.stdout

"""Hostile and broken files, as a stranger might hand them to deepem: checkpoints that run code,
seriesuids that are paths, scans with NaN or out-of-range voxels, settings out of range,
leftovers of killed writes, and messages that must name the real cause. Each case here was
a defect once; the next one of this kind belongs here too."""
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from deepem.data import io, preprocess, tables
from deepem.data.atomic import atomic_write, remove_stale_temps
from deepem.data.splits import read_split
from deepem.data.uids import UnsafeUid, check_uid
from deepem.infer import Detector
from deepem.infer.marks import Marks
from deepem.infer.overlays import write_overlays
from deepem.model import Res18
from deepem.model.safe_load import CheckpointError
from deepem.train import ConfigError, fit, load_config
from synthetic import make_preprocessed

TINY = ["model.width=0.125", "data.crop_size=32", "optim.batch_size=2", "optim.steps_per_epoch=1",
        "data.workers=0", "loss.num_neg=50", "run.progress=false", "optim.lr=0.01", "run.select=loss",
        "detect.tile=48", "detect.margin=8", "optim.epochs=1"]


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "deepem", *args], capture_output=True, text=True, encoding="utf-8",
                          errors="replace", timeout=600, cwd=cwd)


def one_line_error(r, *needles):
    """Exit status 2 and a single stderr line holding every needle."""
    assert r.returncode == 2, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    text = r.stderr.strip()
    assert text.count("\n") == 0, text
    for n in needles:
        assert n in text, (n, text)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pre")
    make_preprocessed(str(folder), n_scans=6, shape=(48, 48, 48), lobes=True,
                      splits=lambda u: {"full": u[:2], "val": u[2:3], "weak": u[3:]})
    return str(folder)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """A tiny supervised run (1 step): its folder holds last.pt."""
    out = tmp_path_factory.mktemp("run")
    fit(load_config(overrides=TINY + ["data.root=" + data, "run.out=" + str(out)]))
    return out


# ---- 1. checkpoints never run code ---------------------------------------------------------

class Payload:
    """Unpickling this creates the file `path`: the stand-in for os.system(...)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture
def malicious(tmp_path):
    sentinel = tmp_path / "PWNED"
    path = tmp_path / "BAD.pt"
    torch.save({"model": Payload(str(sentinel)), "config": {"model": {"width": 0.125}}}, path)
    return path, sentinel


def test_deepem_checkpoints_load_weights_only(trained):
    state = torch.load(trained / "last.pt", weights_only=True)
    assert {"model", "optimizer", "rng", "history", "config"} <= set(state)


def test_a_malicious_checkpoint_never_runs_in_the_detector(malicious):
    path, sentinel = malicious
    with pytest.raises(CheckpointError, match=r"BAD\.pt.*the global io\.open.*--trust-checkpoint"):
        Detector(path)
    assert not sentinel.exists()


@pytest.mark.parametrize("command", ["detect", "em_init", "em_resume", "train_resume"])
def test_a_malicious_checkpoint_never_runs_from_the_command_line(malicious, data, tmp_path, command):
    path, sentinel = malicious
    out = str(tmp_path / "out")
    args = {"detect": ["detect", str(path), "--data", data, "--out", out, "--quiet"],
            "em_init": ["em", "--init", str(path), "--data", data, "--out", out, "--set", "run.progress=false"],
            "em_resume": ["em", "--resume", str(path), "--data", data, "--out", out],
            "train_resume": ["train", "--resume", str(path), "--data", data, "--out", out]}[command]
    r = run_cli(*args)
    one_line_error(r, str(path), "--trust-checkpoint")
    assert not sentinel.exists()


def test_trusted_opt_in_loads_an_old_style_checkpoint(tmp_path):
    """Older deepem EM checkpoints held numpy arrays: refused by default, loaded when trusted."""
    model = Res18(0.125)
    path = tmp_path / "old.pt"
    torch.save({"model": model.state_dict(), "config": {"model": {"width": 0.125, "dropout": 0.5}},
                "em": {"boxes": {"scan": np.zeros((1, 4), np.float32)}}}, path)
    with pytest.raises(CheckpointError, match="numpy"):
        Detector(path, device="cpu")
    det = Detector(path, device="cpu", trusted=True)
    assert torch.equal(det.model.output[2].weight, model.output[2].weight)


def test_garbage_and_wrong_shaped_checkpoints_are_one_line_errors(data, trained, tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all" * 10)
    one_line_error(run_cli("em", "--init", str(garbage), "--data", data, "--out", str(tmp_path / "a")),
                   "garbage.pt", "could not be read")
    not_dict = tmp_path / "notdict.pt"
    state = torch.load(trained / "last.pt", weights_only=True)
    state["model"] = [1, 2, 3]
    torch.save(state, not_dict)
    one_line_error(run_cli("train", "--resume", str(not_dict), "--data", data, "--out", str(tmp_path / "b")),
                   "notdict.pt", "state_dict")
    one_line_error(run_cli("em", "--init", str(not_dict), "--data", data, "--out", str(tmp_path / "c")),
                   "notdict.pt", "state_dict")
    one_line_error(run_cli("detect", str(not_dict), "--data", data, "--out", str(tmp_path / "d")),
                   "notdict.pt", "state_dict")


# ---- 2. files stay inside --out -----------------------------------------------------------

@pytest.mark.parametrize("uid", ["../../x", "/some/dir/x", "a\\b", "..", ".", "", "x\ny"])
def test_a_uid_that_is_not_a_plain_file_name_is_refused(uid):
    with pytest.raises(UnsafeUid, match="plain file name"):
        check_uid(uid, "u.txt")
    assert check_uid("1.3.6.1.4.1.14519.5.2.1.6279.6001.100225287222365663678666836860") .startswith("1.3.6")


def test_detect_refuses_path_uids_and_writes_nothing_outside(data, trained, tmp_path):
    outside = tmp_path / "elsewhere"
    uids = tmp_path / "u.txt"
    uids.write_text("scan00\n%s\n../../x\n" % (outside / "x"))
    out = tmp_path / "det"
    r = run_cli("detect", str(trained / "last.pt"), "--data", data, "--uids", str(uids), "--out", str(out),
                "--overlays", "--quiet")
    one_line_error(r, "u.txt line 2", "plain file name")
    assert not outside.exists() and not (tmp_path.parent / "x_mark000").exists()


def test_overlay_writer_refuses_a_path_uid(tmp_path):
    vol = io.Volume(np.zeros((8, 8, 8), np.int16))
    marks = _one_mark("../x")
    with pytest.raises(UnsafeUid):
        write_overlays(vol, marks, str(tmp_path / "overlays"), min_probability=0.0)
    assert not (tmp_path / "x_mark000_p0.900.png").exists()


def _one_mark(uid):
    return Marks.from_grid(np.array([[2.0, 4.0, 4.0, 4.0, 3.0]], np.float32),
                           {"seriesuid": uid, "origin": [0.0, 0.0, 0.0], "spacing": [1.0, 1.0, 1.0],
                            "direction": [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0], "resolution": 1.0,
                            "crop_start": [0, 0, 0], "shape": [8, 8, 8]})


def test_preprocess_refuses_path_uids(tmp_path):
    listed = tmp_path / "seriesuids.csv"
    listed.write_text("../../escape\n")
    with pytest.raises(UnsafeUid, match="seriesuids.csv line 1"):
        preprocess.preprocess_dataset(str(tmp_path), str(tmp_path / "pre"), seriesuids_csv=str(listed), progress=False)
    with pytest.raises(UnsafeUid):
        preprocess.output_paths(str(tmp_path), "..")
    assert not (tmp_path.parent / "escape_clean.npy").exists()


def test_splits_with_path_uids_stop_training_and_em_before_writing(data, trained, tmp_path):
    splits = tmp_path / "splits.json"
    splits.write_text(json.dumps({"full": ["scan00"], "val": ["scan02"], "weak": ["scan03", "../../x"]}))
    with pytest.raises(UnsafeUid, match="split 'weak'"):
        read_split("weak", str(splits))
    out = tmp_path / "em"
    r = run_cli("em", "--init", str(trained / "last.pt"), "--data", data, "--out", str(out),
                "--set", "data.splits=" + str(splits))
    one_line_error(r, "../../x", "plain file name")
    assert not (out / "pseudo_boxes").exists()
    listed = tmp_path / "train_uids.txt"
    listed.write_text("scan00\n/etc/passwd\n")
    r = run_cli("train", "--data", data, "--out", str(tmp_path / "t"), "--set", "data.train_split=" + str(listed))
    one_line_error(r, "/etc/passwd", "train_uids.txt")


def test_a_tampered_demo_split_is_refused_on_resume(tmp_path):
    """The demo reads back the splits.json it wrote; a uid edited into a path stops it there."""
    from deepem import demo

    out = tmp_path / "demo"
    pre = out / "preprocessed"
    make_preprocessed(str(pre), n_scans=4, shape=(48, 48, 48))
    (pre / "splits.json").write_text(json.dumps({"full": ["scan00", "../../../x"], "weak": [], "val": ["scan02"],
                                                 "test": ["scan03"]}))
    demo.Stage(str(out), "data").finish(0.0)
    with pytest.raises(UnsafeUid, match="split 'full'"):
        demo.run_once(str(out), demo.QUICK, 0, 1)
    assert not (tmp_path / "x_clean.npy").exists()


# ---- 3. voxels are never silently changed ---------------------------------------------------

def test_non_finite_voxels_are_an_error_naming_the_count(tmp_path):
    a = np.zeros((4, 5, 6), np.float32)
    a[0, 0, 0], a[1, 2, 3], a[3, 4, 5] = np.nan, np.inf, -np.inf
    io.write_image(io.Volume(a), tmp_path / "nan.mhd")
    with pytest.raises(io.ScanReadError, match=r"nan\.mhd has 3 non-finite voxels"):
        io.read_image(tmp_path / "nan.mhd")
    filled = io.read_image(tmp_path / "nan.mhd", fill_nonfinite=-1000).array
    assert filled.dtype == np.int16 and filled[0, 0, 0] == filled[1, 2, 3] == -1000 and filled[0, 0, 1] == 0
    report = preprocess.preprocess_dataset(str(tmp_path), str(tmp_path / "pre"), progress=False)
    assert "non-finite" in report["failed"]["nan"]


def test_values_outside_int16_are_clipped_with_a_warning_never_wrapped(tmp_path):
    a = np.zeros((3, 4, 5), np.int32)
    a[0, 0, 0], a[0, 0, 1], a[0, 0, 2] = 40000, -40000, 1234
    io.write_image(io.Volume(a), tmp_path / "wide.mhd")
    with pytest.warns(UserWarning, match=r"wide\.mhd: 2 voxels outside the int16 range"):
        got = io.read_image(tmp_path / "wide.mhd").array
    assert got[0, 0, :3].tolist() == [32767, -32768, 1234]
    f = np.full((3, 4, 5), -999.6, np.float32)
    io.write_image(io.Volume(f), tmp_path / "float.mhd")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert (io.read_image(tmp_path / "float.mhd").array == -1000).all()  # rounded, not truncated


# ---- 4. every numeric setting is range-checked -----------------------------------------------

@pytest.mark.parametrize("setting, needle", [
    ("optim.lr_factors=[-1.0,0.1]", "'optim.lr_factors' must be > 0"),
    ("model.dropout=1.5", "'model.dropout' must be in [0, 1)"),
    ("optim.lr=.nan", "'optim.lr' must be a finite number"),
    ("data.workers=-1", "'data.workers' must be >= 0"),
    ("loss.num_neg=-5", "'loss.num_neg' must be >= 0"),
    ("em.sigma=0", "'em.sigma' must be > 0"),
    ("optim.lr_milestones=[1.5]", "'optim.lr_milestones' must be in [0, 1]"),
    ("detect.tile=100", "detect.tile"),
])
def test_out_of_range_settings_are_refused(setting, needle):
    with pytest.raises(ConfigError) as e:
        load_config(overrides=[setting] + (["optim.lr_factors=[0.5]"] if "milestones" in setting else []))
    assert needle in str(e.value)


def test_config_problems_are_one_line_errors_from_the_command_line(data, tmp_path):
    listed = tmp_path / "list.yaml"
    listed.write_text("- optim\n- lr\n")
    one_line_error(run_cli("train", "--config", str(listed), "--data", data, "--out", str(tmp_path / "a")),
                   "list.yaml", "mapping")
    for setting in ("model.dropout=1.5", "optim.lr=.nan", "data.workers=-1", "optim.lr_factors=[-1.0,0.1]"):
        one_line_error(run_cli("train", "--data", data, "--out", str(tmp_path / "b"), "--set", setting),
                       setting.split("=")[0])


# ---- 5. file modes and leftovers of killed writes ------------------------------------------

@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_outputs_get_the_umask_mode(tmp_path, umask, mode):
    before = os.umask(umask)
    try:
        atomic_write(tmp_path / "out.txt", lambda f: f.write(b"x"))
    finally:
        os.umask(before)
    assert os.stat(tmp_path / "out.txt").st_mode & 0o777 == mode


def dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_run_removes_temp_files_of_killed_writers_only(data, tmp_path):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    stale = [out / (".tmp-%d-last.pt.x1" % dead_pid()), out / "checkpoints" / (".tmp-%d-epoch_000.pt.y" % dead_pid())]
    live = out / (".tmp-%d-metrics.tmp" % os.getpid())  # a writer that still runs: kept
    other = out / ".tmp-notes.txt"  # not a deepem temp name: kept
    for p in stale + [live, other]:
        p.write_bytes(b"partial")
    fit(load_config(overrides=TINY + ["data.root=" + data, "run.out=" + str(out)]))
    assert not any(p.exists() for p in stale)
    assert live.exists() and other.exists()
    assert remove_stale_temps(str(tmp_path / "missing")) == []


# ---- 6. messages that name the real cause --------------------------------------------------

def test_a_truncated_raw_says_so_with_byte_counts(tmp_path):
    io.write_image(io.Volume(np.zeros((4, 5, 6), np.int16)), tmp_path / "t.mhd")
    raw = tmp_path / "t.raw"
    raw.write_bytes(raw.read_bytes()[:100])
    with pytest.raises(io.ScanReadError, match=r"t\.raw is truncated: 100 bytes, .* needs 240"):
        io.read_image(tmp_path / "t.mhd")


def test_a_nan_spacing_is_named_not_printed_as_zero(tmp_path):
    io.write_image(io.Volume(np.zeros((4, 5, 6), np.int16), spacing=(0.5, 0.5, 2.0)), tmp_path / "s.mhd")
    header = (tmp_path / "s.mhd").read_text().splitlines()
    header = ["ElementSpacing = nan 0.5 2" if h.startswith("ElementSpacing") else h for h in header]
    (tmp_path / "s.mhd").write_text("\n".join(header) + "\n")
    with pytest.raises(io.ScanReadError, match=r"ElementSpacing 'nan 0.5 2' must be finite positive"):
        io.read_image(tmp_path / "s.mhd")


def test_training_without_a_validation_split_says_what_best_means(data, tmp_path):
    r = run_cli("train", "--data", data, "--out", str(tmp_path / "r"), *sum([["--set", s] for s in TINY], []),
                "--set", "data.val_split=")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "no validation split: best.pt has the lowest training loss" in r.stdout
    assert "best validation" not in r.stdout


def test_evaluate_warns_about_marks_on_unlisted_scans(tmp_path):
    ann = tmp_path / "annotations.csv"
    tables.write_annotations(str(ann), {"a": np.array([[0.0, 0.0, 0.0, 6.0]])})
    res = tmp_path / "results.csv"
    res.write_text("seriesuid,coordX,coordY,coordZ,probability\na,0,0,0,0.9\nb,1,1,1,0.8\nb,2,2,2,0.7\n")
    uids = tmp_path / "seriesuids.csv"
    uids.write_text("a\n")
    r = run_cli("evaluate", str(res), "--annotations", str(ann), "--seriesuids", str(uids), "--out",
                str(tmp_path / "e"), "--bootstrap", "0")
    assert r.returncode == 0, r.stderr
    assert "warning: results.csv has 2 marks on 1 scans that seriesuids.csv does not list (e.g. b)" in r.stdout


# ---- 7. error paths do not crash the process -------------------------------------------------

def test_kernel_argument_errors_that_format_integers_raise_cleanly():
    """TORCH_CHECK messages with integers segfaulted on one toolchain (GCC 13 + torch 2.11); run
    in a child process so that a crash fails this test instead of killing the run."""
    code = ("import torch, deepem.ops as o\n"
            "p = torch.zeros(2, 3, 5); w = torch.zeros(2, 1)\n"
            "try:\n"
            "    o.em_posterior(p, torch.tensor([7, 1]), w, w.long(), torch.tensor([1, 1]))\n"
            "except RuntimeError as e:\n"
            "    print('raised:', str(e).splitlines()[0])\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    assert "raised:" in r.stdout and "num_proposals" in r.stdout

"""LUNA16 FROC (deepem.eval): the evaluation script's rules one at a time on hand-worked
cases, an independent brute-force FROC on random cases, the bootstrap, the paired
comparison and the `deepem evaluate` command."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from deepem import cli
from deepem.data import tables
from deepem.eval import FP_RATES, compare, evaluate, read_marks, write_marks
from deepem.eval.curve import Curve
from deepem.eval.froc import READ_AT, resample_counts
from deepem.eval.matching import cap_marks, match


# ---------------------------------------------------------------- brute force, written plainly
def brute_froc(marks, annotations, uids, excluded=None):
    """The script's FROC one mark and one nodule at a time; the curve by looping over thresholds.
    Returns (7 sensitivities, curve x, curve y)."""
    excluded = excluded or {}
    entries = []  # (is a nodule, score)
    nodules = 0
    for uid in uids:
        m = [list(r) for r in marks.get(uid, [])]
        if len(m) > 100:
            cut = sorted((r[3] for r in m), reverse=True)[100]
            m = [r for r in m if r[3] > cut]
        claimed = [False] * len(m)
        for x, y, z, d in annotations.get(uid, []):
            nodules += 1
            best = None
            for i, (mx, my, mz, p) in enumerate(m):
                if (x - mx) ** 2 + (y - my) ** 2 + (z - mz) ** 2 < (d / 2) ** 2:
                    claimed[i] = True
                    best = p if best is None else max(best, p)
            if best is not None:
                entries.append((True, best))
        for x, y, z, d in excluded.get(uid, []):
            d = 10.0 if d < 0 else d
            for i, (mx, my, mz, p) in enumerate(m):
                if (x - mx) ** 2 + (y - my) ** 2 + (z - mz) ** 2 < (d / 2) ** 2:
                    claimed[i] = True
        entries += [(False, r[3]) for i, r in enumerate(m) if not claimed[i]]
    fps, tps = [0], [0]
    for t in sorted({s for _, s in entries}, reverse=True):
        tps.append(sum(1 for g, s in entries if g and s >= t))
        fps.append(sum(1 for g, s in entries if not g and s >= t))
    n, T, D = len(uids), fps[-1], tps[-1]
    xs = [(f / T) * T / n if T else 0.0 for f in fps]
    ys = [(t / D) * D / nodules if D else 0.0 for t in tps]
    grid = np.linspace(0.125, 8, 10001)
    on_grid = np.interp(grid, xs, ys)
    sens = [on_grid[np.argmin(np.abs(grid - r))] for r in FP_RATES]
    return np.array(sens), np.array(xs), np.array(ys)


def random_case(rng, n_scans=10, listed=8):
    """Scans with 0-3 nodules, marks near nodules and excluded findings and at random, scores
    on a coarse grid (ties), a scan over the 100-mark cap, empty scans, unlisted scans."""
    uids = ["1.3.6.%d" % i for i in range(n_scans)]
    ann, exc, marks = {}, {}, {}
    for s, uid in enumerate(uids):
        k = rng.integers(0, 4) if s % 4 else 0
        if k:
            ann[uid] = np.c_[rng.uniform(-80, 80, (k, 3)), rng.uniform(4, 25, k)]
        if rng.random() < 0.5:
            e = rng.integers(1, 3)
            exc[uid] = np.c_[rng.uniform(-80, 80, (e, 3)), rng.choice([-1.0, 6.0], e)]
        if s % 5 == 4:
            continue  # a scan without marks
        near = [f[:3] + rng.normal(0, f[3] / 3 if f[3] > 0 else 3, 3)
                for t in (ann, exc) for f in t.get(uid, np.zeros((0, 4))) for _ in range(rng.integers(0, 3))]
        far = rng.uniform(-100, 100, (rng.integers(0, 130 if s == 1 else 15), 3))
        xyz = np.r_[np.reshape(near, (-1, 3)), far]
        marks[uid] = np.c_[xyz, rng.integers(0, 20, len(xyz)) / 10.0]
    return marks, ann, exc, uids[:listed]


# ---------------------------------------------------------------- hand-worked cases
def one_scan_case():
    """One scan, 4 nodules; marks in score order TP .95, FP .9, TP .8, FP .7, FP .6, TP .5, FP .4.
    Curve (FP/scan, sens): (0,0) (0,.25) (1,.25) (1,.5) (2,.5) (3,.5) (3,.75) (4,.75)."""
    ann = {"a": np.array([[0, 0, 0, 10], [100, 0, 0, 10], [0, 100, 0, 10], [0, 0, 100, 10.]])}
    far = lambda i: [200 + 20 * i, 200, 200]  # noqa: E731
    marks = {"a": np.array([[1, 0, 0, .95], far(0) + [.9], [100, 1, 0, .8], far(1) + [.7], far(2) + [.6],
                            [0, 100, 2, .5], far(3) + [.4]])}
    return marks, ann


def test_hand_worked_curve_and_readoff():
    marks, ann = one_scan_case()
    r = evaluate(marks, ann, ["a"], bootstrap=0)
    # 1 FP/scan is read at 0.9999125, just before the jump at 1 (0.25, not 0.5); 2 at 2.0000375
    # (0.5); 4 and 8 are past the curve's end (4 FP/scan): the last sensitivity, 3 of 4 nodules
    np.testing.assert_allclose(r.sensitivity, [.25, .25, .25, .25, .5, .75, .75], rtol=0, atol=1e-15)
    assert r.cpm == pytest.approx(3 / 7, abs=1e-15)
    assert (r.num_scans, r.num_nodules, r.num_marks) == (1, 4, 7)
    np.testing.assert_allclose(r.curve_fps, [0, 0, 1, 1, 2, 3, 3, 4])
    np.testing.assert_allclose(r.curve_sensitivity, [0, .25, .25, .5, .5, .5, .75, .75])
    assert r.ci95 is None
    assert list(r.to_json()) == ["fp_rates", "sensitivity", "cpm", "ci95", "num_scans", "num_nodules", "num_marks"]
    np.testing.assert_allclose(READ_AT, [0.125, 0.2502125, 0.4998500, 0.9999125, 2.0000375, 4.0002875, 8.0])


def test_scan_without_marks_or_nodules_counts_in_fp_rate():
    marks, ann = one_scan_case()
    r = evaluate(marks, ann, ["a", "empty"], bootstrap=0)  # x halves: (.5,.25) (.5,.5) (1,.5) ... (2,.75)
    np.testing.assert_allclose(r.sensitivity, [.25, .25, .25, .5, .75, .75, .75], atol=1e-15)
    assert r.num_scans == 2
    # a scan with marks but no nodules: all its marks are false positives
    marks["fp"] = np.array([[0, 0, 0, .99], [5, 5, 5, .98]])
    r = evaluate(marks, ann, ["a", "fp"], bootstrap=0)  # (0,0) (.5,0) (1,0) (1,.25) (1.5,.25) (1.5,.5) (2,.5) ...
    assert r.num_marks == 9
    np.testing.assert_allclose(r.sensitivity, [0, 0, 0, 0, .5, .75, .75], atol=1e-15)


def test_jump_exactly_at_a_rate_reads_its_top():
    # 8 scans, two nodules in one: TP .9, FP .8, TP .7, FP .6 -> a jump from .5 to 1 at exactly 1/8 FP/scan
    ann = {"s0": np.array([[0, 0, 0, 10], [50, 0, 0, 10.]])}
    marks = {"s0": np.array([[0, 0, 0, .9], [99, 99, 99, .8], [50, 0, 0, .7], [-99, 99, 99, .6]])}
    r = evaluate(marks, ann, ["s%d" % i for i in range(8)], bootstrap=0)
    assert r.sensitivity[0] == 1.0 and r.cpm == 1.0


def test_unlisted_scans_are_ignored():
    marks, ann = one_scan_case()
    base = evaluate(marks, ann, ["a"], bootstrap=0)
    marks["other"] = np.array([[0, 0, 0, 1.0]] * 5)
    ann["other"] = np.array([[0, 0, 0, 10.], [9, 9, 9, 4]])
    r = evaluate(marks, ann, ["a"], bootstrap=0)
    np.testing.assert_array_equal(r.sensitivity, base.sensitivity)
    assert (r.num_nodules, r.num_marks) == (4, 7)


def test_several_hits_on_one_nodule_count_once_with_the_best_score():
    ann = {"a": np.array([[0, 0, 0, 10.]])}
    e = match({"a": np.array([[1, 0, 0, .3], [0, 1, 0, .9], [0, 0, 1, .5], [50, 0, 0, .4]])}, ann, ["a"])
    assert e.tp.tolist() == [True, False] and e.score.tolist() == [.9, .4]  # the .3 and .5 hits: neither TP nor FP
    r = evaluate({"a": np.array([[1, 0, 0, .3], [0, 1, 0, .9], [50, 0, 0, .4]])}, ann, ["a"], bootstrap=0)
    r1 = evaluate({"a": np.array([[0, 1, 0, .9], [50, 0, 0, .4]])}, ann, ["a"], bootstrap=0)
    np.testing.assert_array_equal(r.sensitivity, r1.sensitivity)


def test_a_mark_on_two_nodules_detects_both():
    # the script matches each nodule against all marks of the scan, claimed or not
    ann = {"a": np.array([[0, 0, 0, 10.], [4, 0, 0, 10]])}
    e = match({"a": np.array([[2, 0, 0, .7]])}, ann, ["a"])
    assert e.tp.tolist() == [True, True] and e.score.tolist() == [.7, .7] and e.false_pos.sum() == 0


def test_marks_on_excluded_findings_are_ignored():
    ann = {"a": np.array([[0, 0, 0, 10.]])}
    exc = {"a": np.array([[50, 0, 0, -1.], [0, 50, 0, 6]])}  # -1: 10 mm
    m = np.array([[0, 0, 0, .5], [54.9, 0, 0, .9], [0, 52.9, 0, .8], [55.1, 0, 0, .1], [0, 53.1, 0, .2]])
    e = match({"a": m}, ann, ["a"], exc)
    assert e.tp.tolist() == [True, False, False] and sorted(e.score[~e.tp]) == [.1, .2]
    with_exc = evaluate({"a": m}, ann, ["a"], exc, bootstrap=0)
    without = evaluate({"a": np.delete(m, [1, 2], axis=0)}, ann, ["a"], bootstrap=0)
    np.testing.assert_array_equal(with_exc.sensitivity, without.sensitivity)
    assert with_exc.num_marks == 5  # counted as marks, not as false positives


def test_hit_needs_distance_strictly_below_the_radius():
    ann = {"a": np.array([[0, 0, 0, 6.]])}
    exc = {"a": np.array([[100, 0, 0, 6.]])}
    m = np.array([[3, 0, 0, .9], [0, 0, -3, .8], [103, 0, 0, .7], [0, 2.999, 0, .1]])
    e = match({"a": m}, ann, ["a"], exc)
    # exactly at the radius: not a hit, so a false positive (also for the excluded finding)
    assert e.tp.tolist() == [True, False, False, False] and e.score.tolist() == [.1, .9, .8, .7]


def test_cap_keeps_marks_strictly_above_the_101st_score():
    p = np.r_[np.linspace(1, 2, 99), [0.5, 0.5, 0.5, 0.1]]  # 100th to 102nd tied at the cut
    m = np.c_[np.zeros((len(p), 3)), p]
    assert len(cap_marks(m)) == 99  # ties at the cut all go
    p2 = np.r_[np.linspace(1, 2, 100), [0.5, 0.5]]  # 101st and 102nd tied: 100 stay
    assert len(cap_marks(np.c_[np.zeros((102, 3)), p2])) == 100
    assert len(cap_marks(m[:100])) == 100  # 100 or fewer: all stay
    # a nodule whose only mark is tied at the cut is missed
    ann = {"a": np.array([[0, 0, 0, 10.]])}
    far = np.c_[np.full((len(p), 3), 500.0), p]
    far[99, :3] = 0  # the nodule's mark scores 0.5, tied at the cut
    r = evaluate({"a": far}, ann, ["a"], bootstrap=0)
    assert r.num_marks == 99 and r.cpm == 0.0
    far[99, 3] = 0.6  # now above the cut: found (after 99 false positives, past 8 FP/scan)
    r = evaluate({"a": far}, ann, ["a"], bootstrap=0)
    assert r.num_marks == 100 and r.curve_sensitivity[-1] == 1.0 and r.cpm == 0.0


def test_no_false_positives_and_no_hits():
    ann = {"a": np.array([[0, 0, 0, 10.], [50, 0, 0, 10]])}
    r = evaluate({"a": np.array([[0, 0, 0, .9]])}, ann, ["a", "b"], bootstrap=0)
    np.testing.assert_array_equal(r.sensitivity, 0.5)  # every x is 0: the last sensitivity everywhere
    r = evaluate({"a": np.array([[99, 0, 0, .9]])}, ann, ["a"], bootstrap=0)
    np.testing.assert_array_equal(r.sensitivity, 0.0)  # the script divides 0 by 0 here; we say 0
    r = evaluate({}, ann, ["a"], bootstrap=20)
    assert r.cpm == 0.0 and r.num_marks == 0 and r.ci95["cpm"] == [0.0, 0.0]
    with pytest.raises(ValueError, match="no nodule"):
        evaluate({"a": np.array([[0, 0, 0, .9]])}, ann, ["b"])
    with pytest.raises(ValueError, match="empty"):
        evaluate({}, ann, [])
    with pytest.raises(ValueError, match=r"marks\[a\]"):
        evaluate({"a": np.array([[np.nan, 0, 0, .9]])}, ann, ["a"])


# ---------------------------------------------------------------- against the brute force
@pytest.mark.parametrize("seed", range(12))
def test_matches_brute_force_on_random_cases(seed):
    rng = np.random.default_rng(seed)
    marks, ann, exc, uids = random_case(rng, n_scans=12 if seed % 2 else 8, listed=10 if seed % 2 else 8)
    if sum(len(ann.get(u, ())) for u in uids) == 0:
        pytest.skip("no nodule drawn")
    r = evaluate(marks, ann, uids, exc, bootstrap=0)
    sens, xs, ys = brute_froc(marks, ann, uids, exc)
    np.testing.assert_array_equal(r.sensitivity, sens)
    np.testing.assert_array_equal(r.curve_fps, xs)
    np.testing.assert_array_equal(r.curve_sensitivity, ys)
    # the vectorised read-off equals np.interp on the curve at any rate, inside and past the end
    q = np.r_[READ_AT, np.linspace(0, 1.2 * xs[-1] + 1, 97), xs]
    curve = Curve(match(marks, ann, uids, exc), len(uids))
    np.testing.assert_array_equal(curve.read(np.ones((1, len(uids)), np.int64), q)[0], np.interp(q, xs, ys))


def test_bootstrap_resamples_match_brute_force_on_duplicated_scans():
    rng = np.random.default_rng(7)
    marks, ann, exc, uids = random_case(rng, n_scans=10, listed=10)
    counts = resample_counts(len(uids), 25, seed=3)
    curve = Curve(match(marks, ann, uids, exc), len(uids))
    got = curve.read(counts, READ_AT)
    want = np.full_like(got, np.nan)
    for b, c in enumerate(counts):
        dup = ["%s#%d" % (u, k) for u, n in zip(uids, c) for k in range(n)]
        base = lambda d: {x: d[x.split("#")[0]] for x in dup if x.split("#")[0] in d}  # noqa: E731
        if sum(len(ann.get(x.split("#")[0], ())) for x in dup):
            want[b] = brute_froc(base(marks), base(ann), dup, base(exc))[0]
    np.testing.assert_array_equal(got, want)  # NaN where a resample drew no nodule
    # evaluate's intervals: the script's percentile rule over these per-resample values
    r = evaluate(marks, ann, uids, exc, bootstrap=25, seed=3)
    cpm = np.sort(want.mean(axis=1)[np.isfinite(want[:, 0])])
    assert r.ci95["cpm"] == [cpm[math.floor(0.025 * len(cpm))], cpm[math.floor(0.975 * len(cpm))]]


def test_bootstrap_contains_estimate_and_is_deterministic():
    marks, ann, exc, uids = random_case(np.random.default_rng(1), 40, 40)
    r = evaluate(marks, ann, uids, exc, bootstrap=300, seed=5)
    lo, hi = r.ci95["cpm"]
    assert lo <= r.cpm <= hi and lo < hi
    for (a, b), s in zip(r.ci95["sensitivity"], r.sensitivity):
        assert a <= s <= b
    assert r.curve_band.shape == (2, len(r.band_fps)) and (r.curve_band[0] <= r.curve_band[1]).all()
    assert evaluate(marks, ann, uids, exc, bootstrap=300, seed=5).ci95 == r.ci95
    assert evaluate(marks, ann, uids, exc, bootstrap=300, seed=6).ci95 != r.ci95


def test_paired_compare():
    rng = np.random.default_rng(2)
    marks, ann, exc, uids = random_case(rng, 40, 40)
    same = compare(marks, marks, ann, uids, exc, bootstrap=200, seed=1)
    assert same["diff"] == 0 and same["ci95"] == [0, 0] and same["p_positive"] == 0
    assert same["cpm_a"] == evaluate(marks, ann, uids, exc, bootstrap=0).cpm
    # b: every mark on a nodule loses most of its score -> a is clearly better
    worse = {}
    for u, m in marks.items():
        m = m.copy()
        if u in ann:
            d2 = ((m[:, None, :3] - ann[u][None, :, :3]) ** 2).sum(-1)
            m[(d2 < (ann[u][None, :, 3] / 2) ** 2).any(1), 3] -= 1.5
        worse[u] = m
    c = compare(marks, worse, ann, uids, exc, bootstrap=200, seed=1)
    assert c["diff"] > 0 and c["ci95"][0] > 0 and c["p_positive"] > 0.95
    assert compare(worse, marks, ann, uids, exc, bootstrap=200, seed=1)["p_positive"] < 0.05
    assert compare(marks, worse, ann, uids, exc, bootstrap=0)["p_positive"] is None


# ---------------------------------------------------------------- files and the command
def write_case(tmp_path, seed=4):
    rng = np.random.default_rng(seed)
    marks, ann, exc, uids = random_case(rng, 20, 16)
    tables.write_annotations(tmp_path / "ann.csv", ann)
    tables.write_annotations(tmp_path / "exc.csv", exc)
    tables.write_seriesuids(tmp_path / "uids.csv", uids)
    write_marks(tmp_path / "results.csv", marks, diameters={u: np.full(len(m), 7.5) for u, m in marks.items()})
    return marks, ann, exc, uids


def test_marks_round_trip(tmp_path):
    marks = {"a": np.array([[1.5, -2.25, 3.0, 0.1 + 0.2]]), "b": np.zeros((0, 4))}
    write_marks(tmp_path / "m.csv", marks)
    assert (tmp_path / "m.csv").read_text().splitlines()[0] == "seriesuid,coordX,coordY,coordZ,probability"
    back = read_marks(tmp_path / "m.csv")
    assert list(back) == ["a"] and back["a"].tolist() == marks["a"].tolist()
    (tmp_path / "bad.csv").write_text("seriesuid,coordX,coordY,coordZ,probability\na,1,nan,3,0.5\n")
    with pytest.raises(tables.TableError, match=r"bad.csv line 2, column coordY"):
        read_marks(tmp_path / "bad.csv")
    (tmp_path / "bad2.csv").write_text("seriesuid,coordX,coordY,coordZ,score\na,1,2,3,0.5\n")
    with pytest.raises(tables.TableError, match="missing column.*probability"):
        read_marks(tmp_path / "bad2.csv")


def test_cli_round_trip(tmp_path, capsys):
    marks, ann, exc, uids = write_case(tmp_path)
    other = {u: m + [0, 0, 0, 0.05] * (np.arange(len(m)) % 2)[:, None] for u, m in marks.items()}
    write_marks(tmp_path / "other.csv", other)
    out = tmp_path / "out"
    argv = ["evaluate", str(tmp_path / "results.csv"), "--annotations", str(tmp_path / "ann.csv"),
            "--excluded", str(tmp_path / "exc.csv"), "--seriesuids", str(tmp_path / "uids.csv"),
            "--out", str(out), "--bootstrap", "100", "--seed", "2"]
    assert cli.main(argv + ["--compare", str(tmp_path / "other.csv")]) == 0
    text = capsys.readouterr().out
    doc = json.loads((out / "froc.json").read_text())
    assert list(doc) == ["fp_rates", "sensitivity", "cpm", "ci95", "num_scans", "num_nodules", "num_marks", "compare"]
    r = evaluate(marks, ann, uids, exc, bootstrap=100, seed=2)
    assert doc["cpm"] == r.cpm and doc["ci95"] == r.ci95 and doc["num_scans"] == 16
    c = compare(marks, other, ann, uids, exc, bootstrap=100, seed=2)
    assert all(doc["compare"][k] == v for k, v in c.items())
    assert "CPM" in text and "P(diff > 0)" in text and len(text.splitlines()) < 25
    assert (out / "froc.png").read_bytes()[:4] == b"\x89PNG"
    rows = (out / "froc.csv").read_text().splitlines()
    assert rows[0] == "fps,sensitivity,sensitivity_lo,sensitivity_hi" and len(rows) > 100
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp")]
    # without a seriesuid list: the scans named in the files, and it says so
    assert cli.main(argv[:4] + ["--out", str(tmp_path / "o2"), "--bootstrap", "0"]) == 0
    text = capsys.readouterr().out
    assert "no --seriesuids" in text
    assert json.loads((tmp_path / "o2" / "froc.json").read_text())["ci95"] is None


def test_cli_bad_input_is_one_line_and_status_2(tmp_path, capsys):
    write_case(tmp_path)
    (tmp_path / "nan.csv").write_text("seriesuid,coordX,coordY,coordZ,probability\n1.3.6.1,1,2,nan,0.5\n")
    base = ["--annotations", str(tmp_path / "ann.csv"), "--out", str(tmp_path / "o")]
    assert cli.main(["evaluate", str(tmp_path / "nan.csv")] + base) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nan.csv line 2, column coordZ" in err
    assert cli.main(["evaluate", str(tmp_path / "missing.csv")] + base) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "missing.csv" in err
    assert not (tmp_path / "o").exists()


def test_eval_is_numpy_only():
    # `import deepem` loads the compiled ops (torch); deepem.eval itself imports neither torch
    # nor, until a plot is drawn, matplotlib
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    folder = os.path.join(root, "deepem", "eval")
    for name in os.listdir(folder):
        if name.endswith(".py"):
            lines = [ln.strip() for ln in open(os.path.join(folder, name))]
            assert not [ln for ln in lines if ln.startswith(("import torch", "from torch"))], name
    code = "import sys, deepem.eval; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


@pytest.mark.skipif(not os.environ.get("DEEPEM_LUNA16_SCRIPT"),
                    reason="set DEEPEM_LUNA16_SCRIPT to a Python 3 noduleCADEvaluationLUNA16.py (needs scikit-learn)")
def test_against_the_official_script(tmp_path):
    """Opt-in: the challenge's own script (collect + evaluateCAD, no bootstrap) on random cases
    written as CSV files, read off the script's way; must agree exactly."""
    import contextlib
    import importlib.util
    import io

    pytest.importorskip("sklearn")
    spec = importlib.util.spec_from_file_location("luna16_script", os.environ["DEEPEM_LUNA16_SCRIPT"])
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    rng = np.random.default_rng(11)
    grid = np.linspace(0.125, 8, 10001)
    for case in range(10):
        marks, ann, exc, uids = random_case(rng, 20, 18)
        exc = exc or {uids[0]: np.array([[0, 0, 0, -1.0]])}  # the script needs a non-empty table
        d = tmp_path / str(case)
        d.mkdir()
        tables.write_annotations(d / "ann.csv", ann)
        tables.write_annotations(d / "exc.csv", exc)
        tables.write_seriesuids(d / "uids.csv", uids)
        write_marks(d / "res.csv", marks)
        with contextlib.redirect_stdout(io.StringIO()):
            nodules, listed = script.collect(str(d / "ann.csv"), str(d / "exc.csv"), str(d / "uids.csv"))
            fps, sens = script.evaluateCAD(listed, str(d / "res.csv"), str(d), nodules, "res", maxNumberOfCADMarks=100,
                                           performBootstrapping=False)[:2]
        on_grid = np.interp(grid, fps, sens)
        theirs = [on_grid[np.argmin(np.abs(grid - r))] for r in FP_RATES]
        ours = evaluate(read_marks(d / "res.csv"), tables.read_annotations(d / "ann.csv"), uids,
                        tables.read_annotations(d / "exc.csv", excluded=True), bootstrap=0).sensitivity
        if np.isnan(theirs).all():  # no nodule detected: the script divides 0 by 0, we say 0
            assert (ours == 0).all()
        else:
            np.testing.assert_array_equal(ours, theirs)

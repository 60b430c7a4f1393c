"""The phantom's medical records, mined as a user's would be: every valid row becomes a label
within one slice of its nodule's centre with the exact lobe, every planted bad row is rejected
with its reason, and nothing is lost without a row in the rejection file."""
import csv
import json
import os
from collections import Counter

import numpy as np
import pytest

pytest.importorskip("pydicom")

from deepem.data import io, phantom, tables  # noqa: E402
from deepem.data.phantom.records import read_truth  # noqa: E402
from deepem.emr.dicom_index import index_dicom  # noqa: E402
from deepem.emr.score import score_labels  # noqa: E402
from deepem.emr.weak_labels import mine_nlst  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("phantom"))
    # dense nodules, so that the tables hold many rows; 9 weak scans
    stats = phantom.NoduleOptions(p_none=0.0, extra_mean=2.0)
    splits = phantom.make_dataset(root, n_scans=11, seed=4, preset="demo", split=(1, 9, 1), records=True,
                                  nodule_stats=stats)
    return root, splits


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_dicom_series_is_the_mhd_scan(data):
    root, splits = data
    with open(os.path.join(root, "phantom.json")) as f:
        subsets = json.load(f)["subsets"]
    index = index_dicom(os.path.join(root, "records", "dicom"))
    assert set(splits["weak"]) <= set(index.series)  # each weak scan's own series, under its seriesuid
    for uid in splits["weak"][:3]:
        mhd = io.read_image(os.path.join(root, "subset%d" % subsets[uid], uid + ".mhd"))
        series = index.series[uid]
        dcm = io.read_image(os.path.dirname(series.instances[0][3]))  # SimpleITK / GDCM reads the DICOM series
        np.testing.assert_array_equal(dcm.array, mhd.array)
        np.testing.assert_allclose(dcm.origin, mhd.origin, atol=1e-3)
        np.testing.assert_allclose(dcm.spacing, mhd.spacing, atol=1e-4)
        numbers = [n for n, *_ in series.instances]
        assert numbers == list(range(len(numbers), 0, -1))  # numbered head to feet: the feet-most slice is the last
    kinds = Counter(s.kind() for s in index.series.values())
    assert kinds["axial"] > len(splits["weak"]) and kinds["localizer"] > 0  # second reconstructions, localizers
    assert set(index.series) - set(splits["weak"]), "the records hold more series than the scans"


def test_nlst_table_mined_against_its_truth(data, tmp_path):
    root, splits = data
    records, out = os.path.join(root, "records"), str(tmp_path / "mined")
    with open(os.path.join(records, "nlst_ctab.csv")) as f:
        header = f.readline().strip().split(",")
    assert sorted(h.lower() for h in header) == sorted(
        ["pid", "study_yr", "sct_ab_num", "sct_ab_desc", "sct_epi_loc", "sct_slice_num", "sct_long_dia",
         "sct_perp_dia", "sct_pre_att", "sct_margins"])
    mining = mine_nlst(os.path.join(records, "nlst_ctab.csv"), os.path.join(records, "dicom"), out,
                       image_info=os.path.join(records, "image_info.csv"), progress=False)
    truth = read_csv(os.path.join(records, "nlst_truth.csv"))
    expected = Counter((t["source"], t["expect"]) for t in truth)
    got = Counter([(lb.source, "label") for lb in mining.labels] + [(s, r) for s, r, _ in mining.rejected])
    assert got == expected  # every row as planted: nothing lost, nothing made up
    planted = {r for _, r in expected} - {"label"}
    assert {"not_nodule", "duplicate", "lobe_other", "slice_missing"} <= planted  # the planted noise is there
    with open(os.path.join(root, "phantom.json")) as f:
        subsets = json.load(f)["subsets"]
    by_source = {t["source"]: t for t in truth if t["expect"] == "label"}
    for lb in mining.labels:
        t = by_source[lb.source]
        sz = io.read_image(os.path.join(root, "subset%d" % subsets[lb.seriesuid], lb.seriesuid + ".mhd")).spacing[2]
        assert lb.seriesuid == t["seriesuid"] and lb.lobe == int(t["lobe"])
        assert abs(lb.coordZ - float(t["coordZ"])) <= sz / 2 + 1e-3  # the nodule's central slice
    # the files say the same as the objects
    assert len(read_csv(os.path.join(out, "weak_labels.csv"))) == len(mining.labels)
    assert len(read_csv(os.path.join(out, "weak_labels_rejected.csv"))) == len(mining.rejected)
    # scored against the phantom's truth: precise, and recall short only by the micronodules (< 4 mm, code 52)
    labels = tables.read_weak_labels(os.path.join(out, "weak_labels.csv"))
    score = score_labels(labels, *read_truth(root, splits["weak"]))
    assert score["precision"] == 1.0 and score["right"] == score["found"] == len(mining.labels)
    assert score["nodules"] == sum(len(t) for t in read_truth(root, splits["weak"])[0].values())


def test_strict_policy_without_image_info_only_adds_ambiguous_rows(data, tmp_path):
    root, _ = data
    records = os.path.join(root, "records")
    named = mine_nlst(os.path.join(records, "nlst_ctab.csv"), os.path.join(records, "dicom"), str(tmp_path / "a"),
                      image_info=os.path.join(records, "image_info.csv"), progress=False)
    strict = mine_nlst(os.path.join(records, "nlst_ctab.csv"), os.path.join(records, "dicom"), str(tmp_path / "b"),
                       progress=False)
    extra = Counter(r for _, r, _ in strict.rejected) - Counter(r for _, r, _ in named.rejected)
    assert set(extra) <= {"ambiguous_series"}
    assert {lb.source for lb in strict.labels} <= {lb.source for lb in named.labels}
    assert len(strict.labels) + extra["ambiguous_series"] == len(named.labels)


def test_reports_mined_against_the_truth(data, tmp_path):
    from deepem.emr.weak_labels import mine_reports

    root, splits = data
    records, out = os.path.join(root, "records"), str(tmp_path / "mined")
    mining = mine_reports(os.path.join(records, "reports.csv"), os.path.join(records, "dicom"), out, progress=False)
    labels = tables.read_weak_labels(os.path.join(out, "weak_labels.csv"))
    score = score_labels(labels, *read_truth(root, splits["weak"]))
    # the reports name every nodule with its image: every one becomes a right label
    assert score["precision"] == 1.0 and score["recall"] == 1.0 and score["nodules"] > 10
    assert {r for _, r, _ in mining.rejected} <= {"negated", "resolved", "non_pulmonary", "calcified"}
    assert all(src.split("/")[-1].startswith("other") for src, _, _ in mining.rejected)
    with open(os.path.join(records, "reports.csv"), newline="") as f:
        assert len(list(csv.DictReader(f))) == len(splits["weak"])


def test_score_labels_literal_cases():
    """Right = same series, |z - z_nodule| <= the slice spacing, lobe exact; one to one."""
    truth = {"a": np.array([[10.0, 2], [30.0, 4]]), "b": np.array([[5.0, 0]])}
    labels = {"a": np.array([[11.0, 7, 2, np.nan, -1],  # right (1 mm off, spacing 1.25)
                             [10.5, 7, 2, np.nan, -1],  # the same nodule again: not right twice
                             [30.0, 9, 3, np.nan, -1],  # wrong lobe
                             [60.0, 20, 4, np.nan, -1]]),  # no nodule there
              "c": np.array([[5.0, 1, 0, np.nan, -1]])}  # a series without nodules
    got = score_labels(labels, truth, {"a": 1.25, "b": 2.5, "c": 2.5})
    assert got == {"labels": 5, "right": 1, "nodules": 3, "found": 1, "precision": 0.2, "recall": 1 / 3}
    assert score_labels({"a": np.array([[12.0, 7, 2]])}, truth, {"a": 1.25})["right"] == 0  # 2 mm > 1.25


def test_records_are_the_same_in_every_run(tmp_path):
    """Same seed, same exam: the same UIDs, paths and bytes (pydicom's generate_uid without a
    prefix is random, which once made every run's study and image UIDs differ)."""
    from pydicom.uid import UID

    from deepem.data.phantom import dicom, records

    rng = np.random.default_rng(0)
    volume = io.Volume(rng.integers(-1000, 400, (6, 8, 8)).astype(np.int16), (-5.0, -4.0, -100.0),
                       (0.7, 0.7, 2.5), io.IDENTITY)
    info = {"nodules": [[0.0, 0.0, -95.0, 6.0]], "lobes": [3], "types": [{"texture": "solid"}]}

    def tree(folder):
        out = {}
        for d, _, files in os.walk(folder):
            for f in files:
                with open(os.path.join(d, f), "rb") as fh:
                    out[os.path.relpath(os.path.join(d, f), folder)] = fh.read()
        return out

    for run in ("a", "b"):
        for index in range(3):  # index 2: a thick or soft second series, a localizer
            records.write_study(str(tmp_path / run), 5, index, "1.2.3.%d" % index, volume, info)
    first, second = tree(tmp_path / "a"), tree(tmp_path / "b")
    assert len(first) > 3 * 6 and first == second
    uids = [dicom.uid("study", 5, i) for i in range(3)] + [dicom.uid("1.2.3.0", n) for n in range(1, 7)]
    assert len(set(uids)) == len(uids) and all(UID(u).is_valid and u.startswith("2.25.") for u in uids)

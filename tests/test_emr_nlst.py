"""NLST records -> weak labels: the table reader, the DICOM header index and the lookup of a
slice number among InstanceNumbers, against DICOM series written here with known positions."""
import csv
import os

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")

from deepem.data import io, tables  # noqa: E402
from deepem.data.tables import TableError  # noqa: E402
from deepem.emr import nlst  # noqa: E402
from deepem.emr.dicom_index import index_dicom  # noqa: E402
from deepem.emr.weak_labels import REASONS, mine_nlst, nlst_labels  # noqa: E402

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
DATES = {0: "19990102", 1: "20000102", 2: "20010102"}


def write_slice(path, pid, year, study, series, number, instance, z, thickness, orientation=AXIAL,
                image_type=("ORIGINAL", "PRIMARY", "AXIAL"), value=0):
    """One 4 x 4 CT image, written with pydicom alone (independent of deepem's phantom writer)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    sop = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = "1.2.840.10008.5.1.4.1.1.2", sop, "CT"
    ds.PatientID, ds.StudyDate, ds.StudyInstanceUID = pid, DATES[year], study
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = series, number, instance
    ds.ImagePositionPatient = [-10.0, -20.0, float(z)]
    ds.ImageOrientationPatient = list(orientation)
    ds.ImageType = list(image_type)
    ds.PixelSpacing, ds.SliceThickness = [0.7, 0.7], thickness
    ds.Rows = ds.Columns = 4
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.PixelData = np.full((4, 4), value, "<i2").tobytes()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def write_series(root, pid, year, study, series, number, z0, step, count, thickness, skip=(), **kw):
    """`count` slices from z0 upwards by `step`; InstanceNumber 1 is the head-most (highest z)."""
    for k in range(count):
        instance = count - k
        if instance in skip:
            continue
        write_slice(os.path.join(root, pid, study, series, "%03d.dcm" % instance), pid, year, study, series, number,
                    instance, z0 + step * k, thickness, value=k, **kw)


@pytest.fixture
def exams(tmp_path):
    """Three exams: participant 100001's T0 (a 2.5 mm series of 20, a 5 mm reconstruction of 10,
    a soft-kernel copy of the 2.5 mm series, a localizer), its T1 (one series with instance 7
    missing) and participant 100002's T0 (a localizer and a coronal reformat only)."""
    root = str(tmp_path / "dicom")
    write_series(root, "100001", 0, "1.1", "1.1.1", 2, -100.0, 2.5, 20, 2.5)
    write_series(root, "100001", 0, "1.1", "1.1.2", 3, -98.75, 5.0, 10, 5.0)
    write_series(root, "100001", 0, "1.1", "1.1.3", 4, -100.0, 2.5, 20, 2.5)
    write_slice(os.path.join(root, "100001", "1.1", "1.1.9", "1.dcm"), "100001", 0, "1.1", "1.1.9", 1, 1, 0.0, 1.0,
                orientation=CORONAL, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    write_series(root, "100001", 1, "1.2", "1.2.1", 2, -50.0, 1.25, 30, 1.25, skip=(7,))
    write_slice(os.path.join(root, "100002", "2.1", "2.1.9", "1.dcm"), "100002", 0, "2.1", "2.1.9", 1, 1, 0.0, 1.0,
                orientation=CORONAL, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    for k in range(5):
        write_slice(os.path.join(root, "100002", "2.1", "2.1.5", "%d.dcm" % k), "100002", 0, "2.1", "2.1.5", 5, k + 1,
                    0.0, 1.0, orientation=CORONAL)
    return root


def table(path, header, rows, delimiter=","):
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter=delimiter)
        w.writerow(header)
        w.writerows(rows)
    return str(path)


IDC = ["pid", "study_yr", "sct_ab_num", "sct_ab_desc", "sct_epi_loc", "sct_slice_num", "sct_long_dia",
       "sct_perp_dia", "sct_pre_att", "sct_margins"]


def row(pid="100001", yr=0, num=1, desc=51, loc=1, sl=3, long_="7", perp="5", att="1", margins="2"):
    return [pid, yr, num, desc, loc, sl, long_, perp, att, margins]


def test_index_reads_series_kinds_and_positions(exams, tmp_path):
    index = index_dicom(exams)
    kinds = {uid: s.kind() for uid, s in index.series.items()}
    assert kinds == {"1.1.1": "axial", "1.1.2": "axial", "1.1.3": "axial", "1.1.9": "localizer",
                     "1.2.1": "axial", "2.1.9": "localizer", "2.1.5": "non_axial"}
    s = index.series["1.1.1"]
    assert s.series_number == 2 and s.slice_thickness == 2.5 and len(s.instances) == 20
    # sorted by position (feet to head): instance 20 first, instance 1 (head) last
    assert [num for num, *_ in s.instances][:3] == [20, 19, 18] and s.instances[-1][0] == 1
    assert s.lookup(3) == (17, -100.0 + 2.5 * 17)
    assert s.lookup(21) is None
    assert len(index.nlst_study("100001", 0)) == 4 and len(index.nlst_study(" 100001.0", 1)) == 1
    assert index.nlst_study("100001", 2) == []


def test_slice_index_is_the_one_simpleitk_reads(exams):
    """The label's `slice` indexes the volume as deepem reads the series (SimpleITK / GDCM)."""
    index = index_dicom(exams)
    folder = os.path.join(exams, "100001", "1.1", "1.1.1")
    vol = io.read_image(folder)
    for instance in (1, 3, 11, 20):
        k, z = index.series["1.1.1"].lookup(instance)
        assert vol.voxel_to_world([k, 0, 0])[2] == pytest.approx(z)
        assert vol.array[k, 0, 0] == 20 - instance  # the pixel value written for that instance


def test_head_to_feet_numbering_is_looked_up_not_used_as_index(exams, tmp_path):
    path = table(tmp_path / "t.csv", IDC, [row(sl=3)])
    m = nlst_labels(nlst.read_abnormalities(path), index_dicom(exams), policy="thinnest")
    (label,) = m.labels
    # instance 3 of 20, numbered head first: the 18th slice from the feet (index 17), not index 2 or 3
    assert (label.seriesuid, label.slice, label.coordZ) == ("1.1.1", 17, -100.0 + 2.5 * 17)
    assert (label.lobe, label.diameter_mm, label.texture, label.source) == (0, 7.0, "solid", "nlst:100001/0/1")


def test_reconstructions_that_disagree_are_ambiguous_unless_a_policy_resolves(exams, tmp_path):
    # instance 3 is z -57.5 in the 2.5 mm series and -63.75 in the 5 mm one: 6.25 mm apart, more than 5
    path = table(tmp_path / "t.csv", IDC, [row(num=1, sl=3), row(num=2, sl=15, loc=6)])
    rows, index = nlst.read_abnormalities(path), index_dicom(exams)
    strict = nlst_labels(rows, index)
    assert [r[:2] for r in strict.rejected] == [("nlst:100001/0/1", "ambiguous_series")]
    # instance 15 exists only in the 2.5 mm series (and its soft-kernel copy, which agrees)
    (label,) = strict.labels
    assert (label.seriesuid, label.slice, label.coordZ, label.lobe) == ("1.1.1", 5, -87.5, 5)
    thinnest = nlst_labels(rows, index, policy="thinnest")
    assert not thinnest.rejected and thinnest.labels[0].coordZ == -57.5
    # the image info table says the reader's numbers are the 5 mm series': the labels go there
    named = nlst_labels(rows, index, image_info={("100001", 0): {"1.1.2"}})
    assert named.labels[0].seriesuid == "1.1.2" and named.labels[0].coordZ == -98.75 + 5.0 * 7
    assert named.labels[0].slice == 7
    assert [r[1] for r in named.rejected] == ["slice_out_of_range"]  # 15 > the 5 mm series' 10 images


def test_missing_instance_localizer_and_non_axial(exams, tmp_path):
    path = table(tmp_path / "t.csv", IDC, [row(yr=1, num=1, sl=7), row(yr=1, num=2, sl=8), row(pid="100002", sl=3),
                                           row(pid="100003", sl=3), row(yr=2, sl=3)])
    m = nlst_labels(nlst.read_abnormalities(path), index_dicom(exams))
    (label,) = m.labels
    # 30 slices, instance 7 missing: instance 8 is the 23rd from the feet of the 29 read (index 22)
    assert (label.seriesuid, label.slice, label.coordZ) == ("1.2.1", 22, -50.0 + 1.25 * 22)
    assert [r[1] for r in m.rejected] == ["slice_out_of_range", "no_axial_series", "no_study", "no_study"]


CDAS = [c.upper() for c in IDC]


@pytest.mark.parametrize("header", [IDC, CDAS, list(reversed(CDAS))], ids=["idc", "cdas", "cdas_reordered"])
def test_table_codes_and_missing_values(exams, tmp_path, header):
    rows = [row(num=1, sl=15, att="2"), row(num=2, desc=52, loc=".N", sl=".N"), row(num=3, loc=8, sl=12),
            row(num=4, loc=".M", sl=12), row(num=5, loc="", sl=12), row(num=6, sl=999), row(num=7, sl=".M"),
            row(num=8, sl=""), row(num=9, sl=".S"), row(num=1, sl=15, att="2"), row(num=10, sl=16, long_=".S",
                                                                                    att="9"),
            row(num=11, sl=17, att="3"), row(num=12, loc=7, sl=12), row(num=13, desc=".M", sl=12)]
    idc = [dict(zip(IDC, r)) for r in rows]
    path = table(tmp_path / "t.csv", header, [[d[h.lower()] for h in header] for d in idc])
    m = nlst_labels(nlst.read_abnormalities(path), index_dicom(exams))
    assert [(lb.source, lb.slice, lb.diameter_mm, lb.texture) for lb in m.labels] == [
        ("nlst:100001/0/1", 5, 7.0, "ground_glass"), ("nlst:100001/0/10", 4, None, ""),
        ("nlst:100001/0/11", 3, 7.0, "part_solid")]
    assert [(src.rsplit("/", 1)[1], reason) for src, reason, _ in m.rejected] == [
        ("2", "not_nodule"), ("3", "lobe_other"), ("4", "lobe_missing"), ("5", "lobe_missing"), ("6", "slice_missing"),
        ("7", "slice_missing"), ("8", "slice_missing"), ("9", "slice_missing"), ("1", "duplicate"), ("12", "bad_code"),
        ("13", "not_nodule")]
    assert len(m.labels) + len(m.rejected) == len(rows)  # every row is a label or a rejection


def test_tab_separated_table(exams, tmp_path):
    path = table(tmp_path / "t.tsv", CDAS, [row(sl=15)], delimiter="\t")
    assert nlst.read_abnormalities(path)[0].slice_num == 15


def test_bad_tables_name_file_line_and_column(tmp_path):
    no_pid = table(tmp_path / "a.csv", IDC[1:], [row()[1:]])
    with pytest.raises(TableError, match=r"a\.csv: missing column\(s\) pid"):
        nlst.read_abnormalities(no_pid)
    bad = table(tmp_path / "b.csv", IDC, [row(), row(desc="fifty-one")])
    with pytest.raises(TableError, match=r"b\.csv line 3, column sct_ab_desc: 'fifty-one' is not a number"):
        nlst.read_abnormalities(bad)
    year = table(tmp_path / "c.csv", IDC, [row(yr=3)])
    with pytest.raises(TableError, match=r"c\.csv line 2, column study_yr"):
        nlst.read_abnormalities(year)
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        nlst.read_abnormalities(tmp_path / "nope.csv")


def test_unreadable_files_are_skipped_and_counted(exams, tmp_path):
    folder = os.path.join(exams, "100001", "1.1", "1.1.1")
    with open(os.path.join(folder, "garbage.dcm"), "wb") as f:
        f.write(b"\x00" * 50)
    good = os.path.join(folder, "001.dcm")
    with open(good, "rb") as f:
        data = f.read()
    with open(os.path.join(folder, "truncated.dcm"), "wb") as f:
        f.write(data[:200])
    with open(os.path.join(exams, "README.txt"), "w") as f:
        f.write("not DICOM")
    index = index_dicom(exams)
    assert len(index.skipped) == 3 and index.files == 20 + 10 + 20 + 1 + 29 + 1 + 5
    assert index.series["1.1.1"].kind() == "axial" and len(index.series["1.1.1"].instances) == 20


def test_index_cache_rereads_only_changed_files(exams, tmp_path):
    out = str(tmp_path / "out")
    first = index_dicom(exams, cache_dir=out)
    assert first.read == 86
    again = index_dicom(exams, cache_dir=out, workers=2)
    assert again.read == 0 and again.files == first.files
    assert {u: s.instances for u, s in again.series.items()} == {u: s.instances for u, s in first.series.items()}
    path = os.path.join(exams, "100001", "1.2", "1.2.1", "001.dcm")
    write_slice(path, "100001", 1, "1.2", "1.2.1", 2, 1, 99.0, 1.25)
    third = index_dicom(exams, cache_dir=out)
    assert third.read == 1 and third.series["1.2.1"].lookup(1)[1] == 99.0


def test_mine_nlst_writes_labels_and_one_rejection_per_row(exams, tmp_path, capsys):
    rows = [row(num=1, sl=15), row(num=2, desc=53, loc=".N", sl=".N"), row(num=3, loc=8, sl=12)]
    out = str(tmp_path / "out")
    mine_nlst(table(tmp_path / "t.csv", CDAS, rows), exams, out, progress=False)
    with open(os.path.join(out, "weak_labels.csv")) as f:
        got = list(csv.DictReader(f))
    assert list(got[0]) == ["seriesuid", "coordZ", "slice", "lobe", "diameter_mm", "texture", "source"]
    assert [(g["seriesuid"], float(g["coordZ"]), g["slice"], g["lobe"]) for g in got] == [("1.1.1", -87.5, "5", "0")]
    with open(os.path.join(out, "weak_labels_rejected.csv")) as f:
        rejected = list(csv.DictReader(f))
    assert [(r["source"], r["reason"]) for r in rejected] == [("nlst:100001/0/2", "not_nodule"),
                                                             ("nlst:100001/0/3", "lobe_other")]
    assert set(r["reason"] for r in rejected) <= set(REASONS)
    printed = capsys.readouterr().out
    assert "not_nodule" in printed and "1 labels on 1 series; 2 rows rejected" in printed
    # deepem's weak-label reader takes the mined file with its extra columns
    weak = tables.read_weak_labels(os.path.join(out, "weak_labels.csv"))
    np.testing.assert_array_equal(weak["1.1.1"], [[-87.5, 5.0, 0.0, 7.0, 0.0]])  # 7 mm, solid


def test_cli_weak_labels_nlst(exams, tmp_path, capsys):
    from deepem.cli import main

    out = str(tmp_path / "out")
    path = table(tmp_path / "t.csv", IDC, [row(sl=15)])
    assert main(["weak-labels", "nlst", "--abnormalities", path, "--dicom", exams, "--out", out, "--quiet"]) == 0
    assert os.path.isfile(os.path.join(out, "weak_labels.csv"))
    bad = table(tmp_path / "bad.csv", IDC[1:], [row()[1:]])
    assert main(["weak-labels", "nlst", "--abnormalities", bad, "--dicom", exams, "--out", out, "--quiet"]) == 2
    assert "missing column(s) pid" in capsys.readouterr().err

"""deepem.data.tables: LUNA16 tables and weak labels, and errors that name file and column."""
import numpy as np
import pytest

pytest.importorskip("scipy")

from deepem.data import tables

UID1 = "1.3.6.1.4.1.14519.5.2.1.6279.6001.100225287222365663678666836860"
UID2 = "1.3.6.1.4.1.14519.5.2.1.6279.6001.100332161840553388986847034053"


def write(path, text):
    path.write_text(text)
    return path


def test_read_annotations_luna_format(tmp_path):
    p = write(tmp_path / "annotations.csv",
              "seriesuid,coordX,coordY,coordZ,diameter_mm\n"
              "%s,-128.6994211,-175.3192718,-298.3875064,5.651470635\n"
              "%s,103.7836509,-211.9251487,-227.12125,4.224708481\n"
              "%s,69.63901724,-140.9445859,876.3744957,5.786347814\n" % (UID1, UID1, UID2))
    ann = tables.read_annotations(p)
    assert sorted(ann) == sorted([UID1, UID2])
    assert ann[UID1].shape == (2, 4) and ann[UID2].shape == (1, 4)
    np.testing.assert_allclose(ann[UID1][0], [-128.6994211, -175.3192718, -298.3875064, 5.651470635])


def test_annotations_round_trip_and_column_order(tmp_path):
    ann = {UID1: np.array([[1.5, -2.25, 3.0, 7.0]]), UID2: np.array([[0.1, 0.2, 0.3, 3.5], [4, 5, 6, 12]])}
    tables.write_annotations(tmp_path / "a.csv", ann)
    back = tables.read_annotations(tmp_path / "a.csv")
    for uid in ann:
        np.testing.assert_array_equal(back[uid], ann[uid])
    # column order in the file does not matter
    write(tmp_path / "b.csv", "diameter_mm,coordZ,seriesuid,coordY,coordX\n7,3,%s,-2.25,1.5\n" % UID1)
    np.testing.assert_array_equal(tables.read_annotations(tmp_path / "b.csv")[UID1], ann[UID1])


def test_excluded_allows_minus_one(tmp_path):
    p = write(tmp_path / "annotations_excluded.csv",
              "seriesuid,coordX,coordY,coordZ,diameter_mm\n%s,1,2,3,-1\n" % UID1)
    assert tables.read_annotations(p, excluded=True)[UID1][0, 3] == -1
    with pytest.raises(tables.TableError, match=r"annotations_excluded.csv line 2, column diameter_mm"):
        tables.read_annotations(p)


@pytest.mark.parametrize("text, match", [
    ("seriesuid,coordX,coordY,diameter_mm\n", r"a.csv: missing column\(s\) coordZ"),
    ("seriesuid,coordX,coordY,coordZ,diameter_mm\nU,1,2,abc,4\n", r"a.csv line 2, column coordZ: 'abc' is not a number"),
    ("seriesuid,coordX,coordY,coordZ,diameter_mm\nU,1,2,3,4\nU,1,2,3,0\n", r"a.csv line 3, column diameter_mm"),
    ("seriesuid,coordX,coordY,coordZ,diameter_mm\nU,1,2,nan,4\n", r"a.csv line 2, column coordZ: 'nan' is not finite"),
    ("seriesuid,coordX,coordY,coordZ,diameter_mm\n,1,2,3,4\n", r"a.csv line 2, column seriesuid: empty"),
    ("seriesuid,coordX,coordY,coordZ,diameter_mm\nU,1,2,3\n", r"a.csv line 2: 4 fields, header has 5"),
    ("", r"a.csv: empty file"),
])
def test_annotation_errors_name_file_and_column(tmp_path, text, match):
    write(tmp_path / "a.csv", text)
    with pytest.raises(tables.TableError, match=match):
        tables.read_annotations(tmp_path / "a.csv")


def test_missing_table(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        tables.read_annotations(tmp_path / "nope.csv")


def test_candidates(tmp_path):
    p = write(tmp_path / "candidates.csv", "seriesuid,coordX,coordY,coordZ,class\n%s,1,2,3,0\n%s,4,5,6,1\n" % (UID1, UID1))
    np.testing.assert_array_equal(tables.read_candidates(p)[UID1], [[1, 2, 3, 0], [4, 5, 6, 1]])
    write(p, "seriesuid,coordX,coordY,coordZ,class\n%s,1,2,3,2\n" % UID1)
    with pytest.raises(tables.TableError, match="candidates.csv line 2, column class"):
        tables.read_candidates(p)


def test_seriesuids_with_and_without_header(tmp_path):
    write(tmp_path / "s.csv", "%s\n%s\n%s\n" % (UID1, UID2, UID1))
    assert tables.read_seriesuids(tmp_path / "s.csv") == [UID1, UID2]
    write(tmp_path / "t.csv", "seriesuid\n%s\n\n" % UID2)
    assert tables.read_seriesuids(tmp_path / "t.csv") == [UID2]
    tables.write_seriesuids(tmp_path / "u.csv", [UID2, UID1])
    assert tables.read_seriesuids(tmp_path / "u.csv") == [UID2, UID1]
    write(tmp_path / "v.csv", "%s,1\n" % UID1)
    with pytest.raises(tables.TableError, match="v.csv line 1"):
        tables.read_seriesuids(tmp_path / "v.csv")


def test_weak_labels_variants(tmp_path):
    p = write(tmp_path / "w.csv", "seriesuid,coordZ,slice,lobe\n%s,-100.5,,3\n%s,,42,\n%s,7,,0\n" % (UID1, UID1, UID2))
    w = tables.read_weak_labels(p)
    np.testing.assert_array_equal(w[UID1][0], [-100.5, np.nan, 3, np.nan, -1])
    np.testing.assert_array_equal(w[UID1][1], [np.nan, 42, -1, np.nan, -1])
    np.testing.assert_array_equal(w[UID2], [[7, np.nan, 0, np.nan, -1]])
    # a table with only seriesuid and slice
    q = write(tmp_path / "x.csv", "seriesuid,slice\n%s,12\n" % UID1)
    np.testing.assert_array_equal(tables.read_weak_labels(q)[UID1], [[np.nan, 12, -1, np.nan, -1]])
    tables.write_weak_labels(tmp_path / "y.csv", w)
    back = tables.read_weak_labels(tmp_path / "y.csv")
    for uid in w:
        np.testing.assert_array_equal(back[uid], w[uid])


def test_weak_labels_with_record_columns(tmp_path):
    """A mined table (deepem weak-labels): diameter_mm and texture are read, source ignored."""
    p = write(tmp_path / "w.csv", "seriesuid,coordZ,slice,lobe,diameter_mm,texture,source\n"
              "%s,-10.5,7,2,6.5,ground_glass,nlst:1/0/1\n%s,-3,9,0,,,report:1.2/1\n%s,4,1,5,12,part_solid,x\n"
              % (UID1, UID1, UID2))
    w = tables.read_weak_labels(p)
    np.testing.assert_array_equal(w[UID1], [[-10.5, 7, 2, 6.5, 2], [-3, 9, 0, np.nan, -1]])
    np.testing.assert_array_equal(w[UID2], [[4, 1, 5, 12, 1]])
    tables.write_weak_labels(tmp_path / "y.csv", w)
    back = tables.read_weak_labels(tmp_path / "y.csv")
    for uid in w:
        np.testing.assert_array_equal(back[uid], w[uid])
    # [N, 3] arrays (no record) are written with empty record columns
    tables.write_weak_labels(tmp_path / "z.csv", {UID1: np.array([[1.0, 2.0, 3.0]])})
    np.testing.assert_array_equal(tables.read_weak_labels(tmp_path / "z.csv")[UID1], [[1, 2, 3, np.nan, -1]])


@pytest.mark.parametrize("text, match", [
    ("seriesuid,lobe\nU,1\n", r"w.csv: missing column coordZ or slice"),
    ("seriesuid,coordZ,lobe\nU,1,6\n", r"w.csv line 2, column lobe: '6'"),
    ("seriesuid,coordZ,lobe\nU,1,1.5\n", r"w.csv line 2, column lobe"),
    ("seriesuid,coordZ,slice\nU,,\n", r"w.csv line 2, columns coordZ/slice: both empty"),
    ("coordZ,slice\n1,2\n", r"w.csv: missing column\(s\) seriesuid"),
    ("seriesuid,coordZ,diameter_mm\nU,1,0\n", r"w.csv line 2, column diameter_mm: '0' must be > 0"),
    ("seriesuid,coordZ,diameter_mm\nU,1,big\n", r"w.csv line 2, column diameter_mm: 'big' is not a number"),
    ("seriesuid,coordZ,texture\nU,1,ggo\n", r"w.csv line 2, column texture: 'ggo' must be one of solid"),
])
def test_weak_label_errors(tmp_path, text, match):
    write(tmp_path / "w.csv", text)
    with pytest.raises(tables.TableError, match=match):
        tables.read_weak_labels(tmp_path / "w.csv")


def test_derive_weak_labels_drops_x_y_d():
    ann = {UID1: np.array([[1.0, 2.0, 3.0, 4.0], [5, 6, 7, 8]])}
    w = tables.derive_weak_labels(ann)
    np.testing.assert_array_equal(w[UID1], [[3, np.nan, -1, np.nan, -1], [7, np.nan, -1, np.nan, -1]])
    w = tables.derive_weak_labels(ann, {UID1: np.array([2, 5])}, {UID1: np.array([0, 2])})
    np.testing.assert_array_equal(w[UID1][:, 2], [2, 5])
    np.testing.assert_array_equal(w[UID1][:, 4], [0, 2])
    with pytest.raises(ValueError, match="lobes"):
        tables.derive_weak_labels(ann, {UID1: np.array([2])})
    with pytest.raises(ValueError, match="textures"):
        tables.derive_weak_labels(ann, None, {UID1: np.array([2])})


def test_derive_weak_labels_measures_diameters_as_a_reader():
    ann = {UID1: np.column_stack([np.zeros((4000, 3)), np.full(4000, 10.0)])}
    w = tables.derive_weak_labels(ann, diameter_noise=(0.3, 0.05), rng=np.random.default_rng(0))[UID1]
    d = w[:, 3]
    assert np.all(d == np.round(d, 1)) and np.all(d > 0)
    assert abs(d.mean() - 10.0) < 0.05 and abs(d.std() - 0.8) < 0.05  # sd 0.3 + 0.05 * 10

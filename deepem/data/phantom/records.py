"""The medical records of the phantom's weakly labelled scans, in the formats real ones come in
(what `deepem weak-labels` mines):

  records/dicom/<pid>/<study uid>/<series uid>/NNNN.dcm   each exam as DICOM (the LUNA16
        scan's own series, number 2, whose SeriesInstanceUID is the scan's seriesuid; for some
        exams a second reconstruction, number 3, and a localizer, number 1)
  records/nlst_ctab.csv     an NLST-style Spiral CT Abnormalities table, with the noise real
        tables have: other abnormality codes, lobe code 8, missing slices and lobes (.M, .N,
        999, empty), duplicated rows, rows of exams that have no images, slice numbers past
        the series, micronodules (< 4 mm) under code 52, and upper-case headers (the CDAS
        release) or lower-case ones (IDC) in a shuffled column order
  records/nlst_truth.csv    what each table row should become: 'label' or its rejection reason
  records/image_info.csv    per exam, the series the slice numbers refer to
  records/reports.csv       one free-text report per exam (study_uid, text), from several templates

The truth stays in the LUNA16 tables; these files hold only what a record would say.
"""
import csv
import json
import os

import numpy as np

from .. import io
from ..atomic import atomic_write
from . import dicom

NLST_COLUMNS = ("pid", "study_yr", "sct_ab_num", "sct_ab_desc", "sct_epi_loc", "sct_slice_num", "sct_long_dia",
                "sct_perp_dia", "sct_pre_att", "sct_margins")
PRE_ATT_OF_TEXTURE = {"solid": 1, "ggo": 2, "part-solid": 3}
OTHER_CODES = tuple(range(53, 66))  # calcified nodules, atelectasis, effusion, ... (no location)
MICRONODULE, NODULE = 52, 51
PRIMARY, SECOND, LOCALIZER = 2, 3, 1


def nlst_identity(seed, index):
    """(pid, study_yr) of scan `index`: three consecutive scans are one participant's T0-T2."""
    return str(100000 + 1000 * (int(seed) % 900) + int(index) // 3), int(index) % 3


def write_study(records_dir, seed, index, series_uid, volume, info):
    """Writes one exam's DICOM series; returns what its table rows and report need."""
    rng = np.random.default_rng([int(seed), int(index), 7])
    pid, year = nlst_identity(seed, index)
    study_uid = dicom.uid("study", seed, index)
    study = {"pid": pid, "date": dicom.NLST_STUDY_DATES[year], "uid": study_uid, "frame": dicom.uid("frame", seed, index),
             "accession": "PH%d%05d" % (int(seed) % 1000, int(index))}
    folder = os.path.join(records_dir, "dicom", pid, study_uid)
    primary = {"uid": series_uid, "number": PRIMARY, "description": "1,OPA,GE,LSS,,B,2000,,,,", "kernel": "STANDARD",
               "image_type": ["ORIGINAL", "PRIMARY", "AXIAL"]}
    numbers = dicom.write_series(volume, os.path.join(folder, series_uid), study, primary)
    second = rng.uniform()
    if second < 0.5:  # a second reconstruction: thicker slices, or the same slices through a softer kernel
        recon = dicom.thick_reconstruction(volume) if second < 0.25 else dicom.soft_reconstruction(volume)
        extra = {"uid": dicom.uid("second", seed, index), "number": SECOND, "description": "second reconstruction",
                 "kernel": "SOFT", "image_type": ["ORIGINAL", "PRIMARY", "AXIAL"]}
        dicom.write_series(recon, os.path.join(folder, extra["uid"]), study, extra)
    if rng.uniform() < 0.7:
        loc = {"uid": dicom.uid("localizer", seed, index), "number": LOCALIZER, "description": "scout",
               "image_type": ["ORIGINAL", "PRIMARY", "LOCALIZER"]}
        dicom.write_localizer(volume, os.path.join(folder, loc["uid"]), study, loc)
    nodules = []
    ann = np.asarray(info["nodules"], dtype=np.float64).reshape(-1, 4)
    for (x, y, z, d), lobe, kind in zip(ann, info["lobes"], info["types"]):
        k = int(np.rint(io.world_to_voxel(np.array([x, y, z]), volume.origin, volume.spacing, volume.direction)[0]))
        k = min(max(k, 0), len(numbers) - 1)
        nodules.append({"z": float(z), "diameter": float(d), "lobe": int(lobe), "texture": kind["texture"],
                        "image": int(numbers[k])})
    return {"index": int(index), "pid": pid, "study_yr": year, "study_uid": study_uid, "series_uid": series_uid,
            "slices": int(len(numbers)), "nodules": nodules}


def _missing(rng):
    return str(rng.choice([".M", ".N", "", ".S"]))


def _measured(rng, d):
    """A reader's long and perpendicular diameters (whole mm, as NLST records them)."""
    long_ = max(1.0, d * float(np.exp(rng.normal(0, 0.08))))
    return int(round(long_)), int(round(long_ * rng.uniform(0.6, 1.0)))


def nlst_rows(studies, seed, imaged):
    """The abnormality table's rows and, per row, what mining should make of it (label or reason).
    `imaged` is the set of (pid, study_yr) exams that have images."""
    rng = np.random.default_rng([int(seed), 77])
    rows, truth = [], []

    def add(study, num, desc, loc, slice_, long_, perp, att, margins, expect, z=None, lobe=None, pid=None, yr=None):
        pid, yr = pid or study["pid"], study["study_yr"] if yr is None else yr
        rows.append({"pid": pid, "study_yr": str(yr), "sct_ab_num": str(num), "sct_ab_desc": str(desc),
                     "sct_epi_loc": loc, "sct_slice_num": slice_, "sct_long_dia": long_, "sct_perp_dia": perp,
                     "sct_pre_att": att, "sct_margins": margins})
        truth.append({"source": "nlst:%s/%s/%d" % (pid, yr, num), "expect": expect,
                      "seriesuid": study["series_uid"] if expect == "label" else "", "coordZ": "" if z is None else
                      repr(z), "lobe": "" if lobe is None else str(lobe)})

    for study in studies:
        num = 0
        for nod in study["nodules"]:
            num += 1
            long_, perp = _measured(rng, nod["diameter"])
            margins = str(rng.choice([1, 2, 3, 9]))
            att = str(PRE_ATT_OF_TEXTURE[nod["texture"]])
            if long_ < 4:  # NLST lists micronodules under their own code, without a location
                add(study, num, MICRONODULE, ".N", ".N", ".N", ".N", ".N", ".N", "not_nodule")
            else:
                add(study, num, NODULE, str(nod["lobe"] + 1), str(nod["image"]), str(long_), str(perp), att, margins,
                    "label", nod["z"], nod["lobe"])
                if rng.uniform() < 0.1:  # the same row twice
                    rows.append(dict(rows[-1]))
                    truth.append(dict(truth[-1], expect="duplicate", seriesuid="", coordZ="", lobe=""))
        for _ in range(rng.poisson(1.5)):  # other findings: ~80% of NLST's rows are not code 51
            num += 1
            add(study, num, int(rng.choice(OTHER_CODES)), ".N", ".N", ".N", ".N", ".N", ".N", "not_nodule")
        plants = [("lobe_other", 0.15), ("lobe_missing", 0.1), ("slice_missing", 0.15), ("slice_out_of_range", 0.1)]
        for reason, p in plants:
            if rng.uniform() >= p:
                continue
            num += 1
            image = int(rng.integers(1, study["slices"] + 1))
            loc, slice_ = str(rng.integers(1, 7)), str(image)
            if reason == "lobe_other":
                loc = "8"
            elif reason == "lobe_missing":
                loc = _missing(rng)
            elif reason == "slice_missing":
                slice_ = "999" if rng.uniform() < 0.5 else _missing(rng)
            else:
                slice_ = str(study["slices"] + int(rng.integers(5, 40)))
            add(study, num, NODULE, loc, slice_, "6", "5", "1", "2", reason)
        if rng.uniform() < 0.15:  # a finding of an exam whose images are not in the collection
            years = [y for y in range(3) if (study["pid"], y) not in imaged]
            if years:
                add(study, 60 + study["study_yr"], NODULE, "1", "40", "7", "6", "1", "2", "no_study", yr=int(rng.choice(years)))
    return rows, truth


def write_records(records_dir, studies, seed):
    """The tables of the exams that `write_study` wrote: NLST table, its truth, image info, reports."""
    from .reports import write_report

    rng = np.random.default_rng([int(seed), 78])
    imaged = {(s["pid"], s["study_yr"]) for s in studies}
    rows, truth = nlst_rows(studies, seed, imaged)
    columns = list(NLST_COLUMNS)
    rng.shuffle(columns)
    upper = rng.uniform() < 0.5  # the 2017 CDAS release spells the headers in upper case
    _write(os.path.join(records_dir, "nlst_ctab.csv"), [c.upper() if upper else c for c in columns],
           [[r[c] for c in columns] for r in rows])
    _write(os.path.join(records_dir, "nlst_truth.csv"), ["source", "expect", "seriesuid", "coordZ", "lobe"],
           [[t[c] for c in ("source", "expect", "seriesuid", "coordZ", "lobe")] for t in truth])
    _write(os.path.join(records_dir, "image_info.csv"), ["pid", "study_yr", "seriesinstanceuid"],
           [[s["pid"], s["study_yr"], s["series_uid"]] for s in studies])
    reports = []
    for s in studies:
        rrng = np.random.default_rng([int(seed), int(s["index"]), 79])
        nodules = [{"lobe": n["lobe"], "series": PRIMARY, "image": n["image"],
                    "diameter_mm": round(n["diameter"] * float(np.exp(rrng.normal(0, 0.05))), 1),
                    "texture": n["texture"]} for n in s["nodules"]]
        reports.append([s["study_uid"], write_report(rrng, nodules)])
    _write(os.path.join(records_dir, "reports.csv"), ["study_uid", "text"], reports)
    return {"studies": len(studies), "nlst_rows": len(rows), "reports": len(reports)}


def _write(path, header, rows):
    def write(f):
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)

    atomic_write(path, write, "w")


def read_truth(data_dir, uids):
    """What mined labels are scored against: {uid: [M, 2] (world z, lobe)} of every nodule of
    the scans `uids` (annotations_lobes.csv) and {uid: slice spacing (mm)} (their .mhd headers)."""
    from .. import mhd

    with open(os.path.join(data_dir, "phantom.json")) as f:
        subsets = json.load(f)["subsets"]
    wanted = set(uids)
    truth = {u: [] for u in uids}
    with open(os.path.join(data_dir, "annotations_lobes.csv"), newline="") as f:
        for r in csv.DictReader(f):
            if r["seriesuid"] in wanted:
                truth[r["seriesuid"]].append((float(r["coordZ"]), int(r["lobe"])))
    spacing = {}
    for u in uids:
        header = mhd.read_header(os.path.join(data_dir, "subset%d" % subsets[u], u + ".mhd"))
        spacing[u] = float(header["ElementSpacing"].split()[2])
    return {u: np.asarray(t, dtype=np.float64).reshape(-1, 2) for u, t in truth.items()}, spacing

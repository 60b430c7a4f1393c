"""Records -> weak labels: `weak_labels.csv` and `weak_labels_rejected.csv`.

Every input row (an NLST table row, a nodule mention of a report) either becomes one label or
one row of the rejection file with a reason from REASONS: nothing is dropped without a word.
"""
import csv
import os
from collections import Counter
from dataclasses import dataclass

from ..data.atomic import atomic_write
from . import nlst
from .assign import place
from .dicom_index import normal_id

LABEL_COLUMNS = ("seriesuid", "coordZ", "slice", "lobe", "diameter_mm", "texture", "source")
REJECT_COLUMNS = ("source", "reason", "detail")
TEXTURES = ("solid", "part_solid", "ground_glass")
REASONS = {
    "duplicate": "the same abnormality (pid, study_yr, sct_ab_num) listed again",
    "not_nodule": "sct_ab_desc is not 51 (non-calcified nodule >= 4 mm), the only code with a location",
    "lobe_missing": "no lobe (sct_epi_loc missing)",
    "lobe_other": "sct_epi_loc 8, 'other': not one of the six lobes",
    "bad_code": "a code that NLST's data dictionary does not define",
    "slice_missing": "no slice number (missing, or 999)",
    "no_study": "no DICOM series of the exam (pid + screening year, or study uid) in the index",
    "no_axial_series": "the exam has only localizers, non-axial or unordered series",
    "series_not_found": "the referenced series is not in the exam",
    "slice_out_of_range": "the image number is no instance of the exam's axial series",
    "ambiguous_series": "axial series of the exam put the image number at different z",
    "negated": "the report says there is no such nodule",
    "resolved": "a prior nodule that has resolved or is no longer seen",
    "non_pulmonary": "a nodule of another organ (thyroid, liver, adrenal, ...)",
    "calcified": "a calcified (benign) nodule or granuloma",
    "hypothetical": "guideline or recommendation text, not a finding",
    "no_lobe": "the report names no single lung lobe",
    "no_image_ref": "the report gives no image number",
}


@dataclass(frozen=True)
class WeakLabel:
    seriesuid: str
    coordZ: float
    slice: int
    lobe: int
    diameter_mm: object  # float or None
    texture: str  # one of TEXTURES or ''
    source: str


class Mining:
    """Collects labels and rejections, one per input row."""

    def __init__(self):
        self.labels, self.rejected = [], []

    def reject(self, source, reason, detail=""):
        assert reason in REASONS, reason
        self.rejected.append((source, reason, detail))

    def counts(self):
        return Counter(reason for _, reason, _ in self.rejected)

    def summary(self):
        lines = ["%d labels on %d series; %d rows rejected" % (len(self.labels), len({lb.seriesuid for lb in
                                                                                     self.labels}),
                                                            len(self.rejected))]
        lines += ["  %-18s %6d  %s" % (r, n, REASONS[r]) for r, n in sorted(self.counts().items())]
        return "\n".join(lines)

    def write(self, out_dir):
        os.makedirs(out_dir, exist_ok=True)
        labels = sorted(self.labels, key=lambda lb: (lb.seriesuid, lb.coordZ, lb.source))
        _write_csv(os.path.join(out_dir, "weak_labels.csv"), LABEL_COLUMNS,
                   [[lb.seriesuid, repr(lb.coordZ), str(lb.slice), str(lb.lobe),
                     "" if lb.diameter_mm is None else repr(float(lb.diameter_mm)), lb.texture, lb.source]
                    for lb in labels])
        _write_csv(os.path.join(out_dir, "weak_labels_rejected.csv"), REJECT_COLUMNS, self.rejected)


def _write_csv(path, header, rows):
    def write(f):
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)

    atomic_write(path, write, "w")


def nlst_labels(rows, index, image_info=None, policy="strict"):
    """NLST abnormality rows (nlst.read_abnormalities) -> Mining."""
    mining, seen = Mining(), set()
    for row in rows:
        src = row.source if row.ab_num is not None else "%s@line%d" % (row.source, row.line)
        key = (normal_id(row.pid), row.study_yr, row.ab_num) if row.ab_num is not None else (
            normal_id(row.pid), row.study_yr, row.ab_desc, row.epi_loc, row.slice_num, row.long_dia, row.perp_dia)
        if key in seen:
            mining.reject(src, "duplicate", "line %d repeats an earlier row" % row.line)
            continue
        seen.add(key)
        if row.ab_desc != nlst.NODULE:
            mining.reject(src, "not_nodule", "sct_ab_desc %s" % ("missing" if row.ab_desc is None else row.ab_desc))
            continue
        if row.epi_loc is None:
            mining.reject(src, "lobe_missing", "line %d" % row.line)
            continue
        if row.epi_loc == nlst.EPI_LOC_OTHER:
            mining.reject(src, "lobe_other", "line %d" % row.line)
            continue
        if row.epi_loc not in nlst.EPI_LOC:
            mining.reject(src, "bad_code", "sct_epi_loc %d (line %d)" % (row.epi_loc, row.line))
            continue
        if row.slice_num is None or row.slice_num == nlst.SLICE_MISSING:
            mining.reject(src, "slice_missing", "sct_slice_num %s" % ("missing" if row.slice_num is None else 999))
            continue
        if row.pre_att is not None and row.pre_att not in nlst.PRE_ATT_CODES:
            mining.reject(src, "bad_code", "sct_pre_att %d (line %d)" % (row.pre_att, row.line))
            continue
        reference = (image_info or {}).get((normal_id(row.pid), row.study_yr))
        placed, why = place(index.nlst_study(row.pid, row.study_yr), row.slice_num, reference=reference,
                            policy=policy)
        if placed is None:
            mining.reject(src, *why)
            continue
        diameter = row.long_dia if row.long_dia is not None and row.long_dia > 0 else None
        mining.labels.append(WeakLabel(placed.series_uid, placed.z, placed.slice, nlst.EPI_LOC[row.epi_loc], diameter,
                                       nlst.PRE_ATT.get(row.pre_att, ""), src))
    return mining


def read_reports(path):
    """REPORTS.csv: `study_uid` (or `accession`) and `text`, one report a row.
    -> [(line, study_uid, accession, text)]"""
    from ..data.tables import TableError

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError("reports table not found: %s" % path)
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = [h.strip().lower() for h in next(reader, [])]
        if "text" not in header or not ({"study_uid", "accession"} & set(header)):
            raise TableError("%s: expected columns study_uid (or accession) and text; header is %s"
                             % (path, ",".join(header)))
        out = []
        for row in reader:
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(header):
                raise TableError("%s line %d: %d fields, header has %d" % (path, reader.line_num, len(row),
                                                                           len(header)))
            get = dict(zip(header, row)).get
            study, accession = (get("study_uid") or "").strip(), (get("accession") or "").strip()
            if not study and not accession:
                raise TableError("%s line %d: empty study_uid and accession" % (path, reader.line_num))
            out.append((reader.line_num, study, accession, get("text") or ""))
    return out


def report_labels(reports, index, policy="strict"):
    """Reports (read_reports) -> Mining: one label or rejection per current nodule (a nodule
    named again in the impression counts once) and a rejection per other nodule mention."""
    from .reports import extract_findings, extract_mentions

    mining = Mining()
    for line, study_uid, accession, text in reports:
        study = index.study(study_uid, accession)
        name = study_uid or "accession:" + accession
        for k, f in enumerate(extract_findings(text), 1):
            src = "report:%s/%d" % (name, k)
            if f.lobe < 0:
                mining.reject(src, "no_lobe", f.text[:200])
            elif f.image is None:
                mining.reject(src, "no_image_ref", f.text[:200])
            else:
                placed, why = place(study, f.image, series_number=f.series, policy=policy)
                if placed is None:
                    mining.reject(src, *why)
                    continue
                mining.labels.append(WeakLabel(placed.series_uid, placed.z, placed.slice, f.lobe, f.diameter_mm,
                                               f.texture, src))
        others = [m for m in extract_mentions(text) if m.status != "current"]
        for k, m in enumerate(others, 1):
            mining.reject("report:%s/other%d" % (name, k), m.status, m.text[:200])
    return mining


def _index(dicom_dir, out_dir, workers, progress):
    from .dicom_index import index_dicom

    index = index_dicom(dicom_dir, cache_dir=out_dir, workers=workers, progress=progress)
    _write_csv(os.path.join(out_dir, "dicom_skipped.csv"), ("path", "why"), sorted(index.skipped.items()))
    kinds = Counter(s.kind() for s in index.series.values())
    print("DICOM index: %d files in %d series (%s); %d headers read, %d from the cache; %d files skipped "
          "(dicom_skipped.csv)" % (index.files, len(index.series), ", ".join("%d %s" % (n, k) for k, n in
                                                                                sorted(kinds.items())),
                                   index.read, index.files + len(index.skipped) - index.read, len(index.skipped)))
    return index


def mine_nlst(abnormalities, dicom_dir, out_dir, image_info=None, policy="strict", workers=1, progress=True):
    """`deepem weak-labels nlst`: the table + the DICOM tree -> OUT/weak_labels.csv and
    OUT/weak_labels_rejected.csv (the DICOM index is cached in OUT). Returns the Mining."""
    rows = nlst.read_abnormalities(abnormalities)
    info = nlst.read_image_info(image_info) if image_info else None
    os.makedirs(out_dir, exist_ok=True)
    mining = nlst_labels(rows, _index(dicom_dir, out_dir, workers, progress), info, policy)
    mining.write(out_dir)
    print("%d table rows -> %s" % (len(rows), mining.summary()))
    return mining


def mine_reports(reports_csv, dicom_dir, out_dir, policy="strict", workers=1, progress=True):
    """`deepem weak-labels reports`: free-text reports + the DICOM tree -> the same outputs."""
    reports = read_reports(reports_csv)
    os.makedirs(out_dir, exist_ok=True)
    mining = report_labels(reports, _index(dicom_dir, out_dir, workers, progress), policy)
    mining.write(out_dir)
    print("%d reports -> %s" % (len(reports), mining.summary()))
    return mining

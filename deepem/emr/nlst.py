"""NLST's Spiral CT Abnormalities table (CDAS `sctabn`; IDC `nlst_780_ctab_idc_*.csv`), read by
column name, case-insensitively, in any column order, with the codes of NLST's data dictionary.

The table names no series and no coordinates: `sct_slice_num` is the InstanceNumber of the
image that shows the abnormality's greatest diameter (deepem.emr.assign looks it up).
"""
import csv
import os
from dataclasses import dataclass

from ..data.tables import TableError
from .dicom_index import normal_id

COLUMNS = ("pid", "study_yr", "sct_ab_num", "sct_ab_desc", "sct_epi_loc", "sct_slice_num", "sct_long_dia",
           "sct_perp_dia", "sct_pre_att", "sct_margins")
REQUIRED = ("pid", "study_yr", "sct_ab_desc", "sct_epi_loc", "sct_slice_num")
MISSING = ("", ".", ".m", ".n", ".s", ".f")  # NLST's missing-value codes (and an empty field)
NODULE = 51  # non-calcified nodule or mass >= 4 mm: the only code with a location, size and slice
SLICE_MISSING = 999
EPI_LOC = {1: 0, 2: 1, 3: 2, 4: 3, 5: 4, 6: 5}  # NLST lobe code -> deepem lobe (RUL RML RLL LUL lingula LLL)
EPI_LOC_OTHER = 8
PRE_ATT = {1: "solid", 2: "ground_glass", 3: "part_solid"}  # soft tissue, ground glass, mixed; 4 fluid, 6 fat, 7 other, 9 unknown
PRE_ATT_CODES = (1, 2, 3, 4, 6, 7, 9)
MARGINS = (1, 2, 3, 9)
STUDY_YEARS = (0, 1, 2)


@dataclass(frozen=True)
class Abnormality:
    """One row of the table; None where the field is missing (.M, .N, .S, empty)."""
    line: int
    pid: str
    study_yr: int
    ab_num: object
    ab_desc: object
    epi_loc: object
    slice_num: object
    long_dia: object
    perp_dia: object
    pre_att: object
    margins: object

    @property
    def source(self):
        return "nlst:%s/%d/%s" % (self.pid, self.study_yr, "" if self.ab_num is None else self.ab_num)


def _delimiter(header_line):
    return "\t" if "\t" in header_line and "," not in header_line else ","


def _number(path, line, column, text, integer):
    if text.strip().lower() in MISSING:
        return None
    try:
        value = float(text)
    except ValueError:
        raise TableError("%s line %d, column %s: %r is not a number (or one of NLST's missing-value codes %s)"
                         % (path, line, column, text, ", ".join(repr(m) for m in MISSING[1:]))) from None
    if integer:
        if value != int(value):
            raise TableError("%s line %d, column %s: %r is not a whole-number code" % (path, line, column, text))
        return int(value)
    return value


def read_abnormalities(path):
    """The rows of an NLST abnormality table (CSV or tab-separated), as Abnormality records.
    Raises TableError naming the file, line and column for a missing column or a bad value."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError("NLST abnormality table not found: %s" % path)
    with open(path, newline="", encoding="utf-8-sig") as f:
        first = f.readline()
        if not first.strip():
            raise TableError("%s: empty file, expected a header line" % path)
        f.seek(0)
        reader = csv.reader(f, delimiter=_delimiter(first))
        header = [h.strip().lower() for h in next(reader)]
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise TableError("%s: missing column(s) %s (read case-insensitively); header is %s"
                             % (path, ", ".join(missing), ",".join(header)))
        where = {c: header.index(c) for c in COLUMNS if c in header}
        rows = []
        for row in reader:
            if not row or all(not c.strip() for c in row):
                continue
            line = reader.line_num
            if len(row) != len(header):
                raise TableError("%s line %d: %d fields, header has %d" % (path, line, len(row), len(header)))

            def field(column, integer=True):
                return _number(path, line, column, row[where[column]], integer) if column in where else None

            pid = row[where["pid"]].strip()
            if not pid:
                raise TableError("%s line %d, column pid: empty" % (path, line))
            study_yr = field("study_yr")
            if study_yr not in STUDY_YEARS:
                raise TableError("%s line %d, column study_yr: %r must be 0, 1 or 2 (T0, T1, T2)"
                                 % (path, line, row[where["study_yr"]]))
            rows.append(Abnormality(line=line, pid=pid, study_yr=study_yr, ab_num=field("sct_ab_num"),
                                    ab_desc=field("sct_ab_desc"), epi_loc=field("sct_epi_loc"),
                                    slice_num=field("sct_slice_num"), long_dia=field("sct_long_dia", False),
                                    perp_dia=field("sct_perp_dia", False), pre_att=field("sct_pre_att"),
                                    margins=field("sct_margins")))
    return rows


def read_image_info(path):
    """A table naming, per exam, the series the reader's slice numbers refer to: columns
    `pid`, `study_yr` and `seriesinstanceuid` (or `seriesinstanceuids`, several separated by
    ';' or spaces), case-insensitive. -> {(pid, study_yr): set of series uids}"""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError("image info table not found: %s" % path)
    with open(path, newline="", encoding="utf-8-sig") as f:
        first = f.readline()
        f.seek(0)
        reader = csv.reader(f, delimiter=_delimiter(first))
        header = [h.strip().lower() for h in next(reader, [])]
        uid_col = next((c for c in ("seriesinstanceuid", "seriesinstanceuids") if c in header), None)
        missing = [c for c in ("pid", "study_yr") if c not in header] + ([] if uid_col else ["seriesinstanceuid"])
        if missing:
            raise TableError("%s: missing column(s) %s; header is %s" % (path, ", ".join(missing), ",".join(header)))
        out = {}
        for row in reader:
            if not row or all(not c.strip() for c in row):
                continue
            line = reader.line_num
            if len(row) != len(header):
                raise TableError("%s line %d: %d fields, header has %d" % (path, line, len(row), len(header)))
            pid = row[header.index("pid")].strip()
            year = _number(path, line, "study_yr", row[header.index("study_yr")], True)
            uids = row[header.index(uid_col)].replace(";", " ").split()
            out.setdefault((normal_id(pid), year), set()).update(uids)
    return out

"""LUNA16 tables and weak labels.

Every reader returns {seriesuid: float64 array [N, k]} (scans with no rows are absent) and
raises TableError naming the file, the line and the column for any bad value.

- annotations.csv / annotations_excluded.csv: seriesuid, coordX, coordY, coordZ, diameter_mm
  -> [N, 4] (x, y, z, d) world mm (d = -1 in the excluded table means "unknown", 10 mm in FROC).
- candidates.csv: seriesuid, coordX, coordY, coordZ, class -> [N, 4] (x, y, z, class).
- seriesuids.csv: one seriesuid a line (LUNA16's has no header; a `seriesuid` header is skipped).
- weak labels: seriesuid, then coordZ (world mm) and/or slice (index along the scan's z axis),
  optional lobe (0..5: right upper, right middle, right lower, left upper, lingula, left lower),
  optional diameter_mm (the record's long axis) and texture (solid, part_solid, ground_glass);
  other columns (source, ...) are ignored -> [N, 5] (coordZ, slice, lobe, diameter_mm,
  texture id), NaN for a missing coordinate or diameter, -1 for an unknown lobe or texture.
"""
import csv
import math
import os

import numpy as np

from .atomic import atomic_write
from .uids import check_uid

ANNOTATION_COLUMNS = ("coordX", "coordY", "coordZ", "diameter_mm")
CANDIDATE_COLUMNS = ("coordX", "coordY", "coordZ", "class")
WEAK_COLUMNS = ("coordZ", "slice", "lobe", "diameter_mm", "texture")
WEAK_TEXTURES = ("solid", "part_solid", "ground_glass")  # texture ids 0, 1, 2 (-1: unknown)
LOBES = ("right upper", "right middle", "right lower", "left upper", "lingula", "left lower")


class TableError(ValueError):
    """A table that is missing a column or holds a bad value; the message names file and column."""


def _rows(path, required=()):
    """Yields (line number, header, header-keyed dict) for a CSV with a header that holds
    the `required` columns."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError("table not found: %s" % path)
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise TableError("%s: empty file, expected a header line" % path)
        header = [h.strip() for h in header]
        _require(path, header, required)
        for row in reader:
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(header):
                raise TableError(
                    "%s line %d: %d fields, header has %d" % (path, reader.line_num, len(row), len(header))
                )
            yield reader.line_num, header, dict(zip(header, (c.strip() for c in row)))


def _require(path, header, columns):
    missing = [c for c in columns if c not in header]
    if missing:
        raise TableError("%s: missing column(s) %s; header is %s" % (path, ", ".join(missing), ",".join(header)))


def _float(path, line, column, text, allow_empty=False):
    if text == "" and allow_empty:
        return math.nan
    try:
        value = float(text)
    except ValueError:
        raise TableError("%s line %d, column %s: %r is not a number" % (path, line, column, text)) from None
    if not math.isfinite(value):
        raise TableError("%s line %d, column %s: %r is not finite" % (path, line, column, text))
    return value


def _group(rows):
    out = {}
    for uid, values in rows:
        out.setdefault(uid, []).append(values)
    return {uid: np.asarray(v, dtype=np.float64) for uid, v in out.items()}


def _uid(path, line, row):
    uid = row["seriesuid"]
    if not uid:
        raise TableError("%s line %d, column seriesuid: empty" % (path, line))
    return uid


def read_annotations(path, excluded: bool = False):
    """annotations.csv (or annotations_excluded.csv with excluded=True, where d may be -1)."""
    rows = []
    for line, header, row in _rows(path, ("seriesuid",) + ANNOTATION_COLUMNS):
        values = [_float(path, line, c, row[c]) for c in ANNOTATION_COLUMNS]
        d = values[3]
        if not (d > 0 or (excluded and d == -1)):
            raise TableError(
                "%s line %d, column diameter_mm: %r must be > 0%s"
                % (path, line, row["diameter_mm"], " or -1" if excluded else "")
            )
        rows.append((_uid(path, line, row), values))
    return _group(rows)


def read_candidates(path):
    rows = []
    for line, header, row in _rows(path, ("seriesuid",) + CANDIDATE_COLUMNS):
        values = [_float(path, line, c, row[c]) for c in CANDIDATE_COLUMNS]
        if values[3] not in (0.0, 1.0):
            raise TableError("%s line %d, column class: %r must be 0 or 1" % (path, line, row["class"]))
        rows.append((_uid(path, line, row), values))
    return _group(rows)


def read_seriesuids(path):
    """A list of seriesuids, in file order, without duplicates."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError("table not found: %s" % path)
    uids = []
    with open(path, newline="") as f:
        for i, row in enumerate(csv.reader(f)):
            uid = row[0].strip() if row else ""
            if not uid or (i == 0 and uid == "seriesuid"):
                continue
            if len(row) > 1 and any(c.strip() for c in row[1:]):
                raise TableError("%s line %d: expected one seriesuid a line, got %d fields" % (path, i + 1, len(row)))
            uids.append(check_uid(uid, "%s line %d" % (path, i + 1)))
    return list(dict.fromkeys(uids))


def read_weak_labels(path):
    path = os.fspath(path)
    rows = []
    for line, header, row in _rows(path, ("seriesuid",)):
        if "coordZ" not in header and "slice" not in header:
            raise TableError("%s: missing column coordZ or slice; header is %s" % (path, ",".join(header)))
        z = _float(path, line, "coordZ", row.get("coordZ", ""), allow_empty=True)
        s = _float(path, line, "slice", row.get("slice", ""), allow_empty=True)
        if math.isnan(z) and math.isnan(s):
            raise TableError("%s line %d, columns coordZ/slice: both empty" % (path, line))
        lobe = -1.0
        text = row.get("lobe", "")
        if text != "":
            lobe = _float(path, line, "lobe", text)
            if lobe not in (0, 1, 2, 3, 4, 5, -1):
                raise TableError("%s line %d, column lobe: %r must be an integer 0..5 (or -1)" % (path, line, text))
        d = _float(path, line, "diameter_mm", row.get("diameter_mm", ""), allow_empty=True)
        if not (math.isnan(d) or d > 0):
            raise TableError("%s line %d, column diameter_mm: %r must be > 0 (or empty)" % (path, line,
                                                                                         row["diameter_mm"]))
        texture = row.get("texture", "")
        if texture not in WEAK_TEXTURES + ("",):
            raise TableError("%s line %d, column texture: %r must be one of %s (or empty)"
                             % (path, line, texture, ", ".join(WEAK_TEXTURES)))
        tex = float(WEAK_TEXTURES.index(texture)) if texture else -1.0
        rows.append((_uid(path, line, row), [z, s, lobe, d, tex]))
    return _group(rows)


def derive_weak_labels(annotations, lobes=None, textures=None, diameter_noise=None, rng=None):
    """Weak labels from full annotations: keep coordZ (and the lobe when `lobes`, a dict
    {uid: int array [N]} aligned with the annotations, is given), drop x, y and d. As a
    record would: `textures` ({uid: [N] texture ids, -1 unknown}) gives each label its texture,
    and `diameter_noise` (a reader's measurement error: its sd in mm, as a + b * d for (a, b))
    gives it the diameter as a reader measures it (drawn from `rng`, rounded to 0.1 mm)."""
    out = {}
    for uid, ann in annotations.items():
        ann = np.asarray(ann, dtype=np.float64).reshape(-1, 4)
        weak = np.full((len(ann), 5), np.nan)
        weak[:, 0] = ann[:, 2]
        weak[:, 2] = -1
        weak[:, 4] = -1
        for k, (given, name) in enumerate(((lobes, "lobes"), (textures, "textures"))):
            if given is not None and uid in given:
                values = np.asarray(given[uid]).reshape(-1)
                if len(values) != len(ann):
                    raise ValueError("%s[%s] has %d entries for %d annotations" % (name, uid, len(values), len(ann)))
                weak[:, 2 + 2 * k] = values
        if diameter_noise is not None:
            a, b = diameter_noise
            d = ann[:, 3] + rng.normal(0.0, 1.0, len(ann)) * (a + b * ann[:, 3])
            weak[:, 3] = np.round(np.maximum(d, 0.5 * ann[:, 3]), 1)
        out[uid] = weak
    return out


def _write(path, header, rows):
    def write(f):
        w = csv.writer(f, lineterminator="\n")
        if header:
            w.writerow(header)
        w.writerows(rows)

    atomic_write(path, write, "w")


def _fmt(v):
    return "" if isinstance(v, float) and math.isnan(v) else repr(float(v))


def write_annotations(path, annotations, uids=None):
    """Writes {uid: [N, 4] (x, y, z, d)} in LUNA16's column order; `uids` fixes the order."""
    rows = []
    for uid in uids if uids is not None else annotations:
        for x, y, z, d in np.asarray(annotations.get(uid, np.zeros((0, 4)))).reshape(-1, 4):
            rows.append([uid, _fmt(x), _fmt(y), _fmt(z), _fmt(d)])
    _write(path, ("seriesuid",) + ANNOTATION_COLUMNS, rows)


def write_seriesuids(path, uids):
    _write(path, None, [[u] for u in uids])


def write_weak_labels(path, weak, uids=None):
    """Writes {uid: [N, 3] (coordZ, slice, lobe) or [N, 5] (..., diameter_mm, texture id)}."""
    rows = []
    for uid in uids if uids is not None else weak:
        for z, s, lobe, d, tex in as_weak_records(weak.get(uid, np.zeros((0, 5)))):
            rows.append([uid, _fmt(z), _fmt(s), "" if lobe < 0 else str(int(lobe)), _fmt(d),
                         "" if tex < 0 else WEAK_TEXTURES[int(tex)]])
    _write(path, ("seriesuid",) + WEAK_COLUMNS, rows)


def as_weak_records(weak):
    """Weak labels [N, 3] (coordZ, slice, lobe) or [N, 5] -> [N, 5] (no diameter: NaN, no
    texture: -1)."""
    weak = np.asarray(weak, dtype=np.float64)
    weak = weak.reshape(-1, weak.shape[-1] if weak.ndim > 1 else 3)
    if weak.shape[1] == 5:
        return weak
    if weak.shape[1] != 3:
        raise ValueError("weak labels must be [N, 3] or [N, 5], got %s" % (weak.shape,))
    return np.concatenate([weak, np.full((len(weak), 1), np.nan), np.full((len(weak), 1), -1.0)], 1)

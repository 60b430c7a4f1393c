"""A header-only index of a DICOM tree: which patients, studies and series it holds, and the
world position of every instance. Pixel data is never read.

The index is cached in an SQLite file (one row per file, keyed by path, size and mtime), so a
rerun over 10^4 series reads only the headers of new or changed files. Files that are not
DICOM or cannot be parsed are skipped and counted, never fatal.
"""
import os
import sqlite3
import sys
from dataclasses import dataclass, field

import numpy as np

TAGS = ("Modality", "PatientID", "StudyDate", "StudyInstanceUID", "AccessionNumber", "SeriesInstanceUID",
        "SeriesNumber", "InstanceNumber", "ImagePositionPatient", "ImageOrientationPatient", "ImageType",
        "SliceThickness")
# NLST codes the screening year in StudyDate (the dates are fictitious): T0, T1, T2.
NLST_STUDY_YEAR = {"19990102": 0, "20000102": 1, "20010102": 2}
AXIAL_COS = float(np.cos(np.deg2rad(20.0)))  # slice normal within 20 degrees of z (gantry tilt stays axial)
CACHE_NAME = "dicom_index.sqlite"
_COLUMNS = ("path", "size", "mtime_ns", "error") + TAGS
_SCHEMA_VERSION = 1


def _text(value):
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def read_header(path):
    """The TAGS of one file as strings ('' where absent), plus an error text ('' if read)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(TAGS))
    except InvalidDicomError:
        return {"error": "not a DICOM file"}
    except Exception as e:  # a truncated or corrupt file: skipped and counted, not fatal
        return {"error": "%s: %s" % (type(e).__name__, e)}
    out = {"error": ""}
    for tag in TAGS:
        try:
            out[tag] = _text(ds.get(tag))
        except Exception as e:  # a malformed value in one tag
            out[tag] = ""
            out["error"] = out["error"] or "bad %s: %s" % (tag, e)
    if not out.get("SeriesInstanceUID"):
        out["error"] = out["error"] or "no SeriesInstanceUID"
    return out


def _read_job(item):
    path, size, mtime = item
    return (path, size, mtime, read_header(path))


def _floats(text, n):
    try:
        values = [float(v) for v in text.split("\\")]
    except ValueError:
        return None
    return values if len(values) == n and all(np.isfinite(values)) else None


def _int(text):
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if value == int(value) else None


@dataclass
class Series:
    """One series: its identity, geometry and instances (number, position along the slice
    normal, world z, path), sorted as deepem reads the volume (by position along the normal)."""
    series_uid: str
    study_uid: str
    patient_id: str
    study_date: str
    accession: str
    series_number: object  # int or None
    modality: str
    image_type: str
    slice_thickness: object  # float or None
    orientation: object  # 6 floats or None
    instances: list = field(default_factory=list)  # (instance number or None, position, world z, path)

    @property
    def normal(self):
        if self.orientation is None:
            return None
        row, col = np.asarray(self.orientation[:3]), np.asarray(self.orientation[3:])
        n = np.cross(row, col)
        norm = np.linalg.norm(n)
        return n / norm if norm > 0 else None

    def kind(self):
        """'axial' (a target for labels) or why not: 'localizer', 'no_orientation',
        'non_axial', 'single_image', 'no_position', 'unordered' (InstanceNumbers not unique
        and monotonic with position)."""
        if "LOCALIZER" in self.image_type.upper().split("\\"):
            return "localizer"
        n = self.normal
        if n is None:
            return "no_orientation"
        if abs(n[2]) < AXIAL_COS:
            return "non_axial"
        if len(self.instances) < 2:
            return "single_image"
        if any(pos is None for _, pos, _, _ in self.instances):
            return "no_position"
        numbers = [num for num, _, _, _ in self.instances]
        positions = [pos for _, pos, _, _ in self.instances]
        if any(num is None for num in numbers) or len(set(numbers)) != len(numbers) or len(set(positions)) != len(
                positions):
            return "unordered"
        steps = np.diff(numbers)
        if not (np.all(steps > 0) or np.all(steps < 0)):
            return "unordered"
        return "axial"

    def thickness(self):
        """SliceThickness, else the median spacing of the instances along the normal."""
        if self.slice_thickness is not None and self.slice_thickness > 0:
            return float(self.slice_thickness)
        return self.spacing()

    def spacing(self):
        positions = [pos for _, pos, _, _ in self.instances if pos is not None]
        return float(np.median(np.abs(np.diff(positions)))) if len(positions) > 1 else 0.0

    def lookup(self, instance_number):
        """(0-based slice index in the volume as deepem reads it, world z) of an instance
        number, or None if the series has no such instance."""
        for k, (num, _, z, _) in enumerate(self.instances):
            if num == instance_number:
                return k, z
        return None

    def nearest_slice(self, z):
        """The 0-based slice index whose world z is nearest to `z`, or None when `z` lies
        outside the series by more than half a slice spacing."""
        zs = np.asarray([iz for _, _, iz, _ in self.instances])
        k = int(np.argmin(np.abs(zs - z)))
        half = 0.5 * self.spacing() + 1e-6
        return k if abs(zs[k] - z) <= half else None


@dataclass
class DicomIndex:
    series: dict  # series uid -> Series
    files: int = 0  # DICOM files indexed
    skipped: dict = field(default_factory=dict)  # path -> why it was skipped
    read: int = 0  # headers read in this call (the rest came from the cache)

    def studies(self):
        """{study uid: [Series]}"""
        out = {}
        for s in self.series.values():
            out.setdefault(s.study_uid, []).append(s)
        return out

    def nlst_study(self, pid, study_yr):
        """The series of NLST participant `pid`'s screening exam `study_yr` (0, 1, 2)."""
        key = normal_id(pid)
        return [s for s in self.series.values()
                if normal_id(s.patient_id) == key and NLST_STUDY_YEAR.get(s.study_date) == study_yr]

    def study(self, study_uid="", accession=""):
        """The series of a study, found by StudyInstanceUID or AccessionNumber."""
        if study_uid:
            return [s for s in self.series.values() if s.study_uid == study_uid]
        return [s for s in self.series.values() if accession and s.accession == accession]


def normal_id(text):
    """'100012', ' 100012', '100012.0' -> '100012' (tables and headers spell ids differently)."""
    text = str(text).strip()
    number = _int(text) if text else None
    return str(number) if number is not None else text


def _walk(root):
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            if name.startswith(".") or name == CACHE_NAME:
                continue
            path = os.path.join(folder, name)
            try:
                st = os.stat(path)
            except OSError:
                continue
            yield path, st.st_size, st.st_mtime_ns


class _Cache:
    def __init__(self, path):
        self.db = sqlite3.connect(path) if path else None
        if self.db is None:
            return
        cols = ", ".join("%s TEXT" % c for c in _COLUMNS[3:])
        self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        version = self.db.execute("SELECT value FROM meta WHERE key='version'").fetchone()
        if version is None or int(version[0]) != _SCHEMA_VERSION:
            self.db.execute("DROP TABLE IF EXISTS files")
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('version', ?)", (str(_SCHEMA_VERSION),))
        self.db.execute("CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, "
                        "%s)" % cols)
        self.db.commit()

    def get(self, path, size, mtime):
        if self.db is None:
            return None
        row = self.db.execute("SELECT * FROM files WHERE path=?", (path,)).fetchone()
        if row is None or row[1] != size or row[2] != mtime:
            return None
        return dict(zip(_COLUMNS[3:], row[3:]))

    def put(self, rows):
        if self.db is None or not rows:
            return
        self.db.executemany("INSERT OR REPLACE INTO files VALUES (%s)" % ", ".join("?" * len(_COLUMNS)),
                            [(p, s, m, *(h.get(c, "") for c in _COLUMNS[3:])) for p, s, m, h in rows])
        self.db.commit()

    def close(self):
        if self.db is not None:
            self.db.close()


def index_dicom(root, cache_dir=None, workers=1, progress=False):
    """Indexes every DICOM file under `root` (headers only). With `cache_dir`, headers are
    cached in cache_dir/dicom_index.sqlite and a rerun reads only new or changed files.
    `workers` > 1 reads headers in that many processes."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError("DICOM folder not found: %s" % root)
    cache = None
    if cache_dir:
        os.makedirs(cache_dir, exist_ok=True)
        cache = os.path.join(cache_dir, CACHE_NAME)
    db = _Cache(cache)
    try:
        headers, todo = {}, []
        for path, size, mtime in _walk(root):
            cached = db.get(path, size, mtime)
            if cached is not None:
                headers[path] = cached
            else:
                todo.append((path, size, mtime))
        fresh = []
        for path, size, mtime, header in _read_all(todo, workers, progress):
            headers[path] = header
            fresh.append((path, size, mtime, header))
            if len(fresh) >= 2000:
                db.put(fresh)
                fresh = []
        db.put(fresh)
    finally:
        db.close()
    index = _build(headers)
    index.read = len(todo)
    return index


def _read_all(todo, workers, progress):
    bar = None
    if progress and todo:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="DICOM headers", unit="file", file=sys.stderr)
    try:
        if workers > 1 and len(todo) > 64:
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(max_workers=workers) as pool:
                for result in pool.map(_read_job, todo, chunksize=64):
                    if bar is not None:
                        bar.update()
                    yield result
        else:
            for item in todo:
                result = _read_job(item)
                if bar is not None:
                    bar.update()
                yield result
    finally:
        if bar is not None:
            bar.close()


def _build(headers):
    series, skipped, files = {}, {}, 0
    for path in sorted(headers):
        h = headers[path]
        if h.get("error"):
            skipped[path] = h["error"]
            continue
        files += 1
        uid = h["SeriesInstanceUID"]
        s = series.get(uid)
        if s is None:
            thickness = _floats(h.get("SliceThickness", ""), 1)
            s = series[uid] = Series(
                series_uid=uid, study_uid=h.get("StudyInstanceUID", ""), patient_id=h.get("PatientID", ""),
                study_date=h.get("StudyDate", ""), accession=h.get("AccessionNumber", ""),
                series_number=_int(h.get("SeriesNumber", "")), modality=h.get("Modality", ""),
                image_type=h.get("ImageType", ""), slice_thickness=thickness[0] if thickness else None,
                orientation=_floats(h.get("ImageOrientationPatient", ""), 6))
        position = _floats(h.get("ImagePositionPatient", ""), 3)
        s.instances.append((_int(h.get("InstanceNumber", "")), position, None if position is None else position[2],
                            path))
    for s in series.values():
        n = s.normal
        placed = []
        for num, pos, z, path in s.instances:
            placed.append((num, None if pos is None or n is None else float(np.dot(pos, n)), z, path))
        # deepem (SimpleITK / GDCM) stacks a series by position along the slice normal
        placed.sort(key=lambda t: (t[1] is None, t[1] if t[1] is not None else 0.0, t[3]))
        s.instances = placed
    return DicomIndex(series=series, files=files, skipped=skipped)

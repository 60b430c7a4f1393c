"""LUNA16 submission files: seriesuid,coordX,coordY,coordZ,probability (world mm, x y z).

An extra diameter_mm column (what `deepem detect` writes) is allowed on reading and ignored.
"""
import numpy as np

from ..data.tables import _float, _fmt, _rows, _uid, _write

MARK_COLUMNS = ("coordX", "coordY", "coordZ", "probability")


def read_marks(path):
    """{uid: float64 [K, 4] (x, y, z, probability)}; raises TableError / FileNotFoundError
    naming the file, line and column for a missing column or a bad (NaN, inf, text) value."""
    out = {}
    for line, _, row in _rows(path, ("seriesuid",) + MARK_COLUMNS):
        values = [_float(path, line, c, row[c]) for c in MARK_COLUMNS]
        out.setdefault(_uid(path, line, row), []).append(values)
    return {uid: np.asarray(v, dtype=np.float64).reshape(-1, 4) for uid, v in out.items()}


def write_marks(path, marks, diameters=None):
    """Writes {uid: [K, 4]} (and, given {uid: [K]} diameters, a diameter_mm column); atomic."""
    header = ("seriesuid",) + MARK_COLUMNS + (("diameter_mm",) if diameters is not None else ())
    rows = []
    for uid, m in marks.items():
        m = np.asarray(m, dtype=np.float64).reshape(-1, 4)
        d = None
        if diameters is not None:
            d = np.asarray(diameters.get(uid, ()), dtype=np.float64).reshape(-1)
            if len(d) != len(m):
                raise ValueError("diameters[%s] has %d values for %d marks" % (uid, len(d), len(m)))
        for i, (x, y, z, p) in enumerate(m):
            rows.append([uid, _fmt(x), _fmt(y), _fmt(z), _fmt(p)] + ([_fmt(d[i])] if d is not None else []))
    _write(path, header, rows)

"""`deepem detect` over many scans: which scans, the per-scan loop (a scan that fails is
reported by name and skipped), and the run folder's files.

Run folder:
  marks.csv           LUNA16 submission CSV (seriesuid,coordX,coordY,coordZ,probability,diameter_mm),
                      world mm ITK/LPS; written by the `write_csv` the caller passes (deepem.eval)
  marks.json          MONAI-style: cccwhd boxes in world mm, scores, the box mode and convention named
  overlays/*.png      with overlays: slices of the original scan through each mark above a score
  detect_report.json  settings, scans done and failed (with reasons), each file's coordinate convention
"""
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from ..data import io, preprocess
from ..data.atomic import remove_stale_temps
from .detector import load_input, scan_uid
from .marks import COORDINATES, CSV_COLUMNS, Marks
from ..data.splits import read_split
from .outputs import write_json, write_marks_json
from .overlays import write_overlays


def split_uids(split, splits_json):
    """uids of split `split` in a splits JSON ({name: [uids]}) or a uid file."""
    return read_split(split, splits_json)


def preprocessed_uids(data_dir):
    """Every finished scan of a `deepem preprocess` folder (those with a <uid>_meta.json)."""
    if not os.path.isdir(data_dir):
        raise FileNotFoundError("preprocessed folder not found: %s" % data_dir)
    return sorted(f[: -len("_meta.json")] for f in os.listdir(data_dir) if f.endswith("_meta.json"))


def raw_inputs(paths):
    """[(uid, path)] of raw scan paths: files, DICOM series folders, or folders holding scans
    (searched as deepem preprocess does). A path that holds no scan is kept, to fail by name."""
    out = []
    for p in paths:
        p = os.fspath(p)
        if os.path.isdir(p) and not any(f.lower().endswith(".dcm") for f in os.listdir(p)):
            found = preprocess.find_scans(p)
            if found:
                out.extend(sorted(found.items()))
                continue
        out.append((scan_uid(p), p))
    return out


@dataclass
class RunResult:
    marks: dict = field(default_factory=dict)  # uid -> Marks (scans done, with or without marks)
    failed: dict = field(default_factory=dict)  # uid -> reason
    overlays: list = field(default_factory=list)
    overlay_failed: dict = field(default_factory=dict)  # uid -> reason
    seconds: dict = field(default_factory=dict)  # uid -> detect timings

    @property
    def ok(self):
        return not self.failed and not self.overlay_failed


def lung_mask_path(seg_dir, uid):
    """A LUNA16 lung mask <seg_dir>/<uid>.mhd (.nii.gz, .nii), or None."""
    for ext in (".mhd", ".nii.gz", ".nii"):
        path = os.path.join(seg_dir, uid + ext) if seg_dir else None
        if path and os.path.exists(path):
            return path
    return None


def _reason(e):
    text = str(e).strip().splitlines()
    return "%s: %s" % (type(e).__name__, text[0] if text else "")


def detect_many(detector, inputs, out_dir, write_csv, overlays=False, overlay_min_prob=0.5, seg_dir=None,
                progress=True, settings=None):
    """Detects in every input ((uid, source): source a raw scan path or (folder, uid)) and writes the
    run folder. write_csv(path, {uid: [K, 4] (x, y, z, p)}, {uid: [K] diameters}) writes marks.csv."""
    os.makedirs(out_dir, exist_ok=True)
    remove_stale_temps(out_dir, recursive=True)
    result = RunResult()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(inputs), desc="detect", unit="scan", file=sys.stderr, dynamic_ncols=True)

    def say(text):
        (bar.write if bar is not None else lambda t: print(t, file=sys.stderr))(text)

    for uid, source in inputs:
        if bar is not None:
            bar.set_postfix_str(uid[-24:])
        on_tile = (lambda i, n: bar.set_postfix_str("%s tile %d/%d" % (uid[-16:], i, n))) if bar else None
        try:
            raw = isinstance(source, (str, os.PathLike))
            t0 = time.perf_counter()
            image, meta, uid = load_input(source, None if raw else uid,
                                          seg_path=lung_mask_path(seg_dir, uid) if raw else None)
            read = time.perf_counter() - t0  # a raw scan's preprocessing included
            marks = detector.detect(image, uid=uid, meta=meta, on_tile=on_tile)
            result.marks[uid] = marks
            result.seconds[uid] = dict(detector.timings, read=read)
        except Exception as e:  # any scan's failure: report it by name, go on with the others
            result.failed[uid] = _reason(e)
            say("skipped %s: %s" % (uid, result.failed[uid]))
        else:
            if overlays and np.any(marks.probability >= overlay_min_prob):
                try:
                    volume = io.read_image(meta["source"])
                    result.overlays += write_overlays(volume, marks, os.path.join(out_dir, "overlays"),
                                                      overlay_min_prob)
                except Exception as e:
                    result.overlay_failed[uid] = _reason(e)
                    say("no overlays for %s: %s" % (uid, result.overlay_failed[uid]))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()

    write_csv(os.path.join(out_dir, "marks.csv"),
              {u: np.stack([m.x, m.y, m.z, m.probability], 1).reshape(-1, 4) for u, m in result.marks.items()},
              {u: m.diameter_mm for u, m in result.marks.items()})
    write_marks_json(os.path.join(out_dir, "marks.json"), result.marks)
    write_json(os.path.join(out_dir, "detect_report.json"), {
        "outputs": {
            "marks.csv": "LUNA16 submission columns %s; coordX/Y/Z: %s; probability = sigmoid(logit); "
                         "diameter_mm: the detected cube side" % (",".join(CSV_COLUMNS), COORDINATES),
            "marks.json": "MONAI-style, box_mode cccwhd, %s" % COORDINATES,
            "overlays": "original scan slices (lung window) through each mark with probability >= %g; "
                        "the title gives the mark in %s" % (overlay_min_prob, COORDINATES) if overlays else None,
        },
        "settings": settings or {},
        "scans_done": sorted(result.marks), "marks": int(sum(len(m) for m in result.marks.values())),
        "failed": result.failed, "overlay_failed": result.overlay_failed,
        "seconds": result.seconds, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })
    return result


def all_marks(result: RunResult) -> Marks:
    return Marks.concat(result.marks.values())

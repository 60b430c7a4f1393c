"""Whole-scan detection: tiles -> Res18 -> stitched output -> decode -> NMS -> world-mm marks.

    from deepem.infer import Detector
    marks = Detector("run/best.pt").detect("scan.mhd")   # Marks: numpy columns, .rows() for CSV

Imports data, model and ops only (never train or eval)."""
from .decode import CANDIDATE_COLUMNS, anchors_at, decode, postprocess
from .detector import Detector, load_input, load_model, load_preprocessed, preprocess_raw, scan_uid
from .marks import COORDINATES, CSV_COLUMNS, Marks
from .tiles import split_comb, stitched_output, tile_sides

__all__ = ["Detector", "Marks", "decode", "postprocess", "anchors_at", "load_model", "load_input",
           "load_preprocessed", "preprocess_raw", "scan_uid", "split_comb", "stitched_output", "tile_sides",
           "COORDINATES", "CSV_COLUMNS", "CANDIDATE_COLUMNS"]

"""Whole-scan detection: planned tiles (plan) -> Res18 in its fastest form (fast) -> stitched output
-> decode -> NMS -> world-mm marks.

    from deepem.infer import Detector
    marks = Detector("run/best.pt").detect("scan.mhd")   # Marks: numpy columns, .rows() for CSV

Imports data, model and ops only (never train or eval)."""
from .decode import CANDIDATE_COLUMNS, anchors_at, decode, postprocess
from .detector import Detector, load_input, load_model, load_preprocessed, preprocess_raw, scan_uid
from .fast import InferenceRunner, resolve_amp
from .marks import COORDINATES, CSV_COLUMNS, Marks
from .plan import DEFAULT_BORDER, plan_tiles
from .tiles import split_comb, stitched_output, tile_sides

__all__ = ["Detector", "Marks", "decode", "postprocess", "anchors_at", "load_model", "load_input",
           "load_preprocessed", "preprocess_raw", "scan_uid", "split_comb", "stitched_output", "tile_sides",
           "plan_tiles", "DEFAULT_BORDER", "InferenceRunner", "resolve_amp",
           "COORDINATES", "CSV_COLUMNS", "CANDIDATE_COLUMNS"]

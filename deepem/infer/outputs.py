"""Files of a detection run, each written atomically (deepem.data.atomic)."""
import json

from ..data.atomic import atomic_write
from .marks import COORDINATES


def marks_json(marks_by_uid):
    """MONAI-style detection results of {uid: Marks}: cccwhd boxes in world mm with scores."""
    scans = {}
    for uid, m in marks_by_uid.items():
        scans[uid] = {"boxes": m.cccwhd().tolist(), "scores": m.probability.tolist(),
                      "logits": m.logit.tolist()}
    return {"box_mode": "cccwhd", "coordinates": COORDINATES,
            "box": "[x_centre, y_centre, z_centre, width (x), height (y), depth (z)] in mm; cubes of the "
                   "detected diameter",
            "scores": "probability = sigmoid(logit)", "scans": scans}


def write_marks_json(path, marks_by_uid):
    write_json(path, marks_json(marks_by_uid))


def write_json(path, payload):
    atomic_write(path, lambda f: json.dump(payload, f, indent=1), mode="w")

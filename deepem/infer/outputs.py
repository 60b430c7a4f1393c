"""Files of a detection run, each written atomically (temp file beside it, then os.replace)."""
import json
import os

from .marks import COORDINATES


def atomic_write(path, write, mode="w"):
    """Calls write(file) on a temp file next to `path`, then renames it over `path`."""
    path = os.fspath(path)
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, ".tmp-%d-%s" % (os.getpid(), os.path.basename(path)))
    try:
        with open(tmp, mode) as f:
            write(f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


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
    atomic_write(path, lambda f: json.dump(marks_json(marks_by_uid), f, indent=1))


def write_json(path, payload):
    atomic_write(path, lambda f: json.dump(payload, f, indent=1))

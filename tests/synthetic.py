"""A tiny preprocessed data set made directly (no phantom, no SimpleITK): bright soft spheres
on a textured background, written in deepem preprocess's layout (uid_clean.npy, _label.npy,
_weak.npy, _meta.json with an identity geometry) plus splits.json. For fast training tests."""
import json
import os

import numpy as np


def sphere_scan(rng, shape, boxes):
    zz, yy, xx = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    img = 60 + rng.normal(0, 6, shape).astype(np.float32)
    for z, y, x, d in boxes:
        r = np.sqrt((zz - z) ** 2 + (yy - y) ** 2 + (xx - x) ** 2)
        img += 150 * np.clip(d / 2 - r + 0.5, 0, 1)
    return np.clip(img, 0, 255).astype(np.uint8)


def identity_meta(uid, shape):
    """meta of a scan whose preprocessed grid is its world frame: voxel (z, y, x) is world
    (x, y, z) mm."""
    return {"seriesuid": uid, "origin": [0.0, 0.0, 0.0], "spacing": [1.0, 1.0, 1.0],
            "direction": [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0], "source_shape": list(shape),
            "resolution": 1.0, "crop_start": [0, 0, 0], "shape": list(shape)}


def toy_lobe(boxes, shape):
    """A stand-in lobe (0 or 1): which half of the scan in x the nodule centre lies in."""
    return (np.asarray(boxes)[:, 2] >= shape[2] / 2).astype(np.float32)


def write_weak(folder, uid, weak_zl, shape):
    """Only what the E-step reads of a weak scan: <uid>_weak.npy ([M, 2] z, lobe) and its meta."""
    os.makedirs(folder, exist_ok=True)
    base = os.path.join(folder, uid)
    np.save(base + "_weak.npy", np.asarray(weak_zl, dtype=np.float32).reshape(-1, 2))
    with open(base + "_meta.json", "w") as f:
        json.dump(identity_meta(uid, shape), f)


def make_preprocessed(folder, n_scans=6, shape=(48, 48, 48), seed=0, splits=None, lobes=False):
    """Writes n_scans scans with 1-2 nodules each (4-10 voxels); returns the uids. Weak labels
    are (central z, lobe): lobe 0, or with lobes=True the toy lobe (x half)."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    uids = []
    for i in range(n_scans):
        uid = "scan%02d" % i
        n = 1 + i % 2
        boxes = np.concatenate([rng.uniform(10, np.array(shape) - 10, (n, 3)), rng.uniform(4, 10, (n, 1))], 1)
        base = os.path.join(folder, uid)
        np.save(base + "_clean.npy", sphere_scan(rng, shape, boxes))
        np.save(base + "_label.npy", boxes.astype(np.float32))
        lobe = toy_lobe(boxes, shape) if lobes else np.zeros(n)
        np.save(base + "_weak.npy", np.stack([boxes[:, 0], lobe], 1).astype(np.float32))
        with open(base + "_meta.json", "w") as f:
            json.dump(identity_meta(uid, shape), f)
        uids.append(uid)
    splits = splits(uids) if callable(splits) else splits
    splits = splits or {"full": uids[: n_scans // 2], "val": uids[n_scans // 2:]}
    with open(os.path.join(folder, "splits.json"), "w") as f:
        json.dump(splits, f)
    return uids

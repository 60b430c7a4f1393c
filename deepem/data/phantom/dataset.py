"""Writing a phantom data set in LUNA16 layout (scans in parallel; bytes independent of it)."""
import dataclasses
import json
import os

import numpy as np

from .. import io, tables
from ..atomic import remove_stale_temps
from . import records as records_mod
from .scan import make_scan


# The phantom's textures as the weak-label tables name them (tables.WEAK_TEXTURES ids).
TEXTURE_IDS = {"solid": 0, "part-solid": 1, "ggo": 2}
READER_DIAMETER_SD = (0.3, 0.05)  # a reader's diameter error: sd 0.3 mm + 5% of the diameter


def series_uid(seed, index):
    return "1.2.826.0.1.3680043.10.1042.%d.%d" % (int(seed), int(index))


def _make_and_write(args):
    out_dir, seed, index, subset, kwargs, write_seg, with_records = args
    uid = series_uid(seed, index)
    volume, seg, info = make_scan(seed, index, **kwargs)
    if with_records:
        info["record"] = records_mod.write_study(os.path.join(out_dir, "records"), seed, index, uid, volume, info)
    folder = os.path.join(out_dir, "subset%d" % subset)
    os.makedirs(folder, exist_ok=True)
    io.write_image(volume, os.path.join(folder, uid + ".mhd"))
    if write_seg:
        seg_dir = os.path.join(out_dir, "seg-lungs-LUNA16")
        os.makedirs(seg_dir, exist_ok=True)
        io.write_image(io.Volume(seg, volume.origin, volume.spacing, volume.direction), os.path.join(seg_dir, uid + ".mhd"))
    return uid, subset, volume, info


def split_names(n_scans, fractions=(0.5, 0.3, 0.2)):
    """'full' / 'weak' / 'test' for n scans, in that order, in proportion to `fractions`
    (rounded; from 3 scans on, every split with a non-zero fraction gets at least one)."""
    f = np.asarray(fractions, dtype=np.float64)
    if f.shape != (3,) or np.any(f < 0) or f.sum() <= 0:
        raise ValueError("split fractions must be three non-negative numbers, got %s" % (fractions,))
    counts = np.floor(f / f.sum() * n_scans).astype(int)
    for k in np.argsort(-f):  # hand out the remainder, largest fraction first
        if counts.sum() < n_scans:
            counts[k] += 1
    if n_scans >= 3:
        for k in range(3):
            if counts[k] == 0 and f[k] > 0:
                counts[k] += 1
                counts[int(np.argmax(counts))] -= 1
    return ["full"] * counts[0] + ["weak"] * counts[1] + ["test"] * counts[2]


def make_dataset(out_dir, n_scans=10, seed=0, shape=None, n_subsets=10, split=(0.5, 0.3, 0.2),
                 workers=1, write_seg=True, progress=False, preset="luna16", records=False, **scan_kwargs):
    """Writes a phantom LUNA16 data set into `out_dir`:
      subsetK/<uid>.mhd + .raw, seg-lungs-LUNA16/<uid>.mhd (LUNA16's lung masks: 3 right, 4 left),
      annotations.csv, annotations_excluded.csv, seriesuids.csv, weak_labels.csv (the weak split:
      seriesuid, coordZ, slice, lobe, diameter_mm as a reader measures it, texture), annotations_lobes.csv (every nodule's lobe),
      annotations_types.csv (every nodule's texture: solid / part-solid / ggo, attachment:
      isolated / pleural / fissure / vascular, and shape: round / lobulated / spiculated),
      lookalikes.csv (the non-nodules drawn: seriesuid, coordX, coordY, coordZ, kind),
      splits.json ({'full', 'weak', 'test'}: seriesuid lists) and phantom.json (the settings);
    with `records`, the weak split's medical records under records/ (DICOM series, an NLST-style
    abnormality table, reports: see records.py), from which `deepem weak-labels` mines labels.
    `preset` and `scan_kwargs` go to make_scan. Returns the splits."""
    os.makedirs(out_dir, exist_ok=True)
    remove_stale_temps(out_dir, recursive=True)
    n_subsets = max(1, min(int(n_subsets), int(n_scans)))
    names = split_names(n_scans, split)
    order = np.random.default_rng([int(seed), 1 << 30]).permutation(n_scans)  # which scan goes where
    kwargs = dict(shape=shape, preset=preset, **scan_kwargs)
    weak_index = {int(order[rank]) for rank, name in enumerate(names) if name == "weak"}
    jobs = [(out_dir, seed, i, i % n_subsets, kwargs, write_seg, records and i in weak_index) for i in range(n_scans)]
    if workers > 1 and n_scans > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(_progress(pool.map(_make_and_write, jobs), n_scans, progress))
    else:
        results = list(_progress(map(_make_and_write, jobs), n_scans, progress))
    uids = [r[0] for r in results]
    splits = {"full": [], "weak": [], "test": []}
    for rank, i in enumerate(order):
        splits[names[rank]].append(uids[i])
    ann = {u: info["nodules"] for u, _, _, info in results if len(info["nodules"])}
    excl = {u: info["excluded"] for u, _, _, info in results if len(info["excluded"])}
    lobes = {u: info["lobes"] for u, _, _, info in results}
    tables.write_annotations(os.path.join(out_dir, "annotations.csv"), ann, uids)
    tables.write_annotations(os.path.join(out_dir, "annotations_excluded.csv"), excl, uids)
    tables.write_seriesuids(os.path.join(out_dir, "seriesuids.csv"), uids)
    # As a record gives them: the lobe, the texture, and the diameter as a reader measures it.
    textures = {u: [TEXTURE_IDS[t["texture"]] for t in info["types"]] for u, _, _, info in results}
    weak = tables.derive_weak_labels({u: ann[u] for u in splits["weak"] if u in ann}, lobes, textures,
                                     diameter_noise=READER_DIAMETER_SD, rng=np.random.default_rng([int(seed), 31]))
    for u, w in weak.items():  # also give the slice index, as EMR data often has it
        vol = next(r[2] for r in results if r[0] == u)
        w[:, 1] = np.round(io.world_to_voxel(ann[u][:, :3], vol.origin, vol.spacing, vol.direction)[:, 0])
    tables.write_weak_labels(os.path.join(out_dir, "weak_labels.csv"), weak, splits["weak"])
    rows = [[u, *map(repr, map(float, a)), str(int(l))] for u in uids if u in ann for a, l in zip(ann[u], lobes[u])]
    tables._write(os.path.join(out_dir, "annotations_lobes.csv"),
                  ("seriesuid",) + tables.ANNOTATION_COLUMNS + ("lobe",), rows)
    rows = [[u, *map(repr, map(float, a)), t["texture"], t["attachment"], t["shape"]]
            for u, _, _, info in results for a, t in zip(info["nodules"], info["types"])]
    tables._write(os.path.join(out_dir, "annotations_types.csv"),
                  ("seriesuid",) + tables.ANNOTATION_COLUMNS + ("texture", "attachment", "shape"), rows)
    rows = [[u, *map(repr, map(float, p)), k] for u, _, _, info in results
            for p, k in zip(info["lookalikes"], info["lookalike_kinds"])]
    tables._write(os.path.join(out_dir, "lookalikes.csv"), ("seriesuid", "coordX", "coordY", "coordZ", "kind"), rows)
    if records:
        records_mod.write_records(os.path.join(out_dir, "records"), [info["record"] for _, _, _, info in results
                                                                     if "record" in info], seed)
    with open(os.path.join(out_dir, "splits.json"), "w") as f:
        json.dump(splits, f, indent=1)
    settings = {"seed": int(seed), "n_scans": int(n_scans), "preset": preset,
                "shape": None if shape is None else [int(v) for v in shape], "n_subsets": n_subsets,
                "split": list(split), "records": bool(records), "scan_kwargs": {k: _jsonable(v) for k, v in scan_kwargs.items()},
                "subsets": {u: s for u, s, _, _ in results}}
    with open(os.path.join(out_dir, "phantom.json"), "w") as f:
        json.dump(settings, f, indent=1)
    return splits


def _jsonable(value):
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    return np.asarray(value).tolist() if value is not None else None


def _progress(iterable, total, enabled):
    if not enabled:
        return iterable
    import sys

    from tqdm import tqdm

    return tqdm(iterable, total=total, desc="phantom", unit="scan", file=sys.stderr)

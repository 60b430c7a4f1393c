"""DeepLung's preprocessing (deepem-method.md section 5), resumable and parallel over scans.

For each scan `uid` it writes into the output folder
  uid_clean.npy  uint8 (Z, Y, X): HU window [-1200, 600] -> 0..255, 170 outside the dilated
                 lung mask and for bone in the dilated rim, resampled to `resolution` mm and
                 cropped to the lung box (margin 5 mm low, 10 mm high)
  uid_label.npy  float32 [N, 4] (z, y, x, d) of annotations.csv in that grid
  uid_weak.npy   float32 [N, 4] (z, lobe, recorded diameter, texture id) of the weak labels in
                 that grid (lobe and texture -1: unknown; diameter NaN: none)
  uid_meta.json  the source geometry and crop box (written last: its presence marks a
                 finished scan, so a rerun skips it and an interrupted one loses nothing)

Grid mapping (exact, no resize rounding): preprocessed voxel p <-> source voxel
v = (p + crop_start) * resolution / spacing_zyx, and v <-> world through origin, spacing
and direction (deepem.data.io).
"""
import json
import os
import sys
import traceback

import numpy as np
from scipy import ndimage

from . import io, lung_mask, tables
from .atomic import atomic_write, remove_stale_temps
from .uids import check_uid

PAD_VALUE = 170
HU_WINDOW = (-1200.0, 600.0)
BONE_THRESHOLD = 210
MARGIN_LOW_MM, MARGIN_HIGH_MM = 5, 10
SEG_FOLDER = "seg-lungs-LUNA16"


def hu_to_uint8(hu: np.ndarray, window=HU_WINDOW) -> np.ndarray:
    lo, hi = window
    scaled = np.clip((hu.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0) * 255.0
    return scaled.astype(np.uint8)  # truncation, as DeepLung


def masked_uint8(hu, right, left, dilation=10):
    """The windowed image with 170 outside the dilated lungs and on bone in the dilated rim,
    and the (undilated, refined) lung mask."""
    right = lung_mask.convex_hull_refine(right)
    left = lung_mask.convex_hull_refine(left)
    mask = right | left
    if not mask.any():
        raise lung_mask.EmptyLungMask("empty lung mask")
    dilated = lung_mask.dilate(right, dilation) | lung_mask.dilate(left, dilation)
    img = hu_to_uint8(hu)
    img[~dilated] = PAD_VALUE
    img[(dilated & ~mask) & (img > BONE_THRESHOLD)] = PAD_VALUE
    return img, mask


def crop_box(mask, spacing_zyx, resolution=1.0):
    """DeepLung's lung box in the resampled grid: (start, stop) int arrays (z, y, x)."""
    factor = np.asarray(spacing_zyx, dtype=np.float64) / resolution
    new_shape = np.round(np.asarray(mask.shape) * factor).astype(np.int64)
    idx = np.nonzero(mask)
    lo = np.floor(np.array([i.min() for i in idx]) * factor).astype(np.int64)
    hi = np.floor(np.array([i.max() for i in idx]) * factor).astype(np.int64)
    start = np.maximum(lo - int(round(MARGIN_LOW_MM / resolution)), 0)
    stop = np.minimum(hi + int(round(MARGIN_HIGH_MM / resolution)), new_shape)
    return start, stop


def resample_crop(img, spacing_zyx, start, stop, resolution=1.0):
    """Linear resampling of `img` onto the `resolution` mm grid, only over [start, stop)."""
    scale = resolution / np.asarray(spacing_zyx, dtype=np.float64)
    out = ndimage.affine_transform(
        img, scale, offset=np.asarray(start) * scale, output_shape=tuple(int(v) for v in stop - start),
        output=np.float32, order=1, mode="nearest",
    )
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


# ---- mapping between world mm and the preprocessed grid, from the metadata ----

def _meta_geometry(meta):
    spacing_zyx = np.asarray(meta["spacing"], dtype=np.float64)[::-1]
    factor = spacing_zyx / float(meta["resolution"])
    return factor, np.asarray(meta["crop_start"], dtype=np.float64)


def world_to_grid(world_xyz, meta):
    """World (x, y, z) mm [..., 3] -> preprocessed voxel (z, y, x) [..., 3]."""
    factor, start = _meta_geometry(meta)
    v = io.world_to_voxel(world_xyz, meta["origin"], meta["spacing"], meta["direction"])
    return v * factor - start


def grid_to_world(grid_zyx, meta):
    """Preprocessed voxel (z, y, x) [..., 3] -> world (x, y, z) mm [..., 3]."""
    factor, start = _meta_geometry(meta)
    v = (np.asarray(grid_zyx, dtype=np.float64) + start) / factor
    return io.voxel_to_world(v, meta["origin"], meta["spacing"], meta["direction"])


def source_slice_of_world_z(z_world, volume: io.Volume):
    """The continuous slice index (array axis 0) where world z meets the scan's central
    (y, x) line; exact for the axial stacks of LUNA16 and NLST."""
    d = np.asarray(volume.direction, dtype=np.float64).reshape(3, 3)
    s = np.asarray(volume.spacing, dtype=np.float64)
    if abs(d[2, 2]) < 1e-6:
        raise ValueError("the scan's slice axis is not along world z (direction %s)" % d.tolist())
    cx, cy = (volume.array.shape[2] - 1) / 2.0, (volume.array.shape[1] - 1) / 2.0
    rest = volume.origin[2] + d[2, 0] * s[0] * cx + d[2, 1] * s[1] * cy
    return (np.asarray(z_world, dtype=np.float64) - rest) / (d[2, 2] * s[2])


def output_paths(out_dir, uid):
    check_uid(uid)
    return {k: os.path.join(out_dir, "%s_%s" % (uid, k)) for k in ("clean.npy", "label.npy", "weak.npy", "meta.json")}


def is_done(out_dir, uid) -> bool:
    paths = output_paths(out_dir, uid)
    return all(os.path.exists(p) for p in paths.values())


def preprocess_scan(scan_path, out_dir, uid, annotations=None, weak=None, seg_path=None, resolution=1.0):
    """Preprocesses one scan; `annotations` [N, 4] world (x, y, z, d), `weak` [N, 5]
    (coordZ, slice, lobe, diameter_mm, texture id; or the first 3) as read by
    deepem.data.tables. Returns the metadata dict."""
    volume = io.read_image(scan_path)
    if seg_path is not None:
        right, left = lung_mask.lungs_from_seg(io.read_image(seg_path).array)
        if right.shape != volume.array.shape:
            raise io.ScanReadError("lung mask %s has shape %s, scan has %s" % (seg_path, right.shape, volume.array.shape))
    else:
        right, left = lung_mask.segment_lungs(volume.array, volume.spacing_zyx)
    img, mask = masked_uint8(volume.array, right, left)
    start, stop = crop_box(mask, volume.spacing_zyx, resolution)
    clean = resample_crop(img, volume.spacing_zyx, start, stop, resolution)
    meta = {
        "seriesuid": uid,
        "source": os.path.abspath(os.fspath(scan_path)),
        "lung_mask": os.path.abspath(os.fspath(seg_path)) if seg_path is not None else "threshold",
        "origin": [float(v) for v in volume.origin],
        "spacing": [float(v) for v in volume.spacing],
        "direction": [float(v) for v in np.asarray(volume.direction).reshape(9)],
        "source_shape": [int(v) for v in volume.array.shape],
        "resolution": float(resolution),
        "crop_start": [int(v) for v in start],
        "shape": [int(v) for v in clean.shape],
    }
    labels = np.zeros((0, 4), dtype=np.float32)
    if annotations is not None and len(annotations):
        ann = np.asarray(annotations, dtype=np.float64).reshape(-1, 4)
        labels = np.concatenate([world_to_grid(ann[:, :3], meta), ann[:, 3:] / resolution], 1).astype(np.float32)
    weak_out = np.zeros((0, 4), dtype=np.float32)
    if weak is not None and len(weak):
        weak = tables.as_weak_records(weak)
        # coordZ (world mm) when given: more exact than a whole slice index.
        from_z = source_slice_of_world_z(np.nan_to_num(weak[:, 0]), volume)
        sl = np.where(np.isnan(weak[:, 0]), weak[:, 1], from_z)
        z = sl * volume.spacing_zyx[0] / resolution - start[0]
        weak_out = np.stack([z, weak[:, 2], weak[:, 3] / resolution, weak[:, 4]], 1).astype(np.float32)
    meta["n_labels"], meta["n_weak"] = int(len(labels)), int(len(weak_out))
    paths = output_paths(out_dir, uid)
    atomic_write(paths["clean.npy"], lambda f: np.save(f, clean))
    atomic_write(paths["label.npy"], lambda f: np.save(f, labels))
    atomic_write(paths["weak.npy"], lambda f: np.save(f, weak_out))
    atomic_write(paths["meta.json"], lambda f: f.write(json.dumps(meta, indent=1).encode()))
    return meta


def load_meta(out_dir, uid):
    with open(output_paths(out_dir, uid)["meta.json"]) as f:
        return json.load(f)


# ---- a whole data set ----

def find_scans(root):
    """{seriesuid: path} for every `.mhd`, `.nii`, `.nii.gz` file and DICOM folder under
    `root` (the seg-lungs folder excluded)."""
    found = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("seg-lungs") and not d.startswith("."))
        if any(f.lower().endswith(".dcm") for f in files):
            found.setdefault(os.path.basename(folder), folder)
            continue
        for f in sorted(files):
            if f.startswith("."):
                continue
            for ext in (".mhd", ".nii.gz", ".nii"):
                if f.endswith(ext):
                    found.setdefault(f[: -len(ext)], os.path.join(folder, f))
                    break
    return found


def _seg_path(seg_dir, uid):
    if seg_dir is None:
        return None
    for ext in (".mhd", ".nii.gz", ".nii"):
        p = os.path.join(seg_dir, uid + ext)
        if os.path.exists(p):
            return p
    return None


def _job(args):
    uid, scan_path, out_dir, ann, weak, seg, resolution = args
    try:
        if scan_path is None:
            raise FileNotFoundError("no scan file found for this seriesuid")
        preprocess_scan(scan_path, out_dir, uid, ann, weak, seg, resolution)
        return uid, None
    except (FileNotFoundError, io.ScanReadError, lung_mask.EmptyLungMask, ValueError, OSError) as e:
        return uid, "%s: %s" % (type(e).__name__, e)
    except Exception as e:  # report any other failure by name too, and keep going
        return uid, "%s: %s\n%s" % (type(e).__name__, e, traceback.format_exc(limit=3))


def preprocess_dataset(data_root, out_dir, annotations_csv=None, weak_csv=None, seriesuids_csv=None,
                       seg_dir="auto", workers=1, resolution=1.0, overwrite=False, progress=True):
    """Preprocesses every scan under `data_root` (or those in `seriesuids_csv`) into `out_dir`.
    Finished scans are skipped unless `overwrite`. Missing, unreadable or lungless scans are
    reported by name and skipped. Returns {'done', 'skipped', 'failed': {uid: reason}} and
    writes it to out_dir/preprocess_report.json."""
    from concurrent.futures import ProcessPoolExecutor

    os.makedirs(out_dir, exist_ok=True)
    remove_stale_temps(out_dir)
    scans = find_scans(data_root)
    uids = tables.read_seriesuids(seriesuids_csv) if seriesuids_csv else sorted(scans)
    ann = tables.read_annotations(annotations_csv) if annotations_csv else {}
    weak = tables.read_weak_labels(weak_csv) if weak_csv else {}
    if seg_dir == "auto":
        seg_dir = os.path.join(data_root, SEG_FOLDER)
    if seg_dir is not None and not os.path.isdir(seg_dir):
        seg_dir = None
    report = {"done": [], "skipped": [], "failed": {},
              # scans on disk that a seriesuids list left out: said, never silently dropped
              "unlisted": sorted(set(scans) - set(uids)) if seriesuids_csv else []}
    jobs = []
    for uid in uids:
        try:
            check_uid(uid, "scan file name under %s" % data_root)
        except ValueError as e:  # a scan whose name cannot be a file name here: report it, go on
            report["failed"][uid] = str(e)
            continue
        if not overwrite and is_done(out_dir, uid):
            report["skipped"].append(uid)
            continue
        jobs.append((uid, scans.get(uid), out_dir, ann.get(uid), weak.get(uid), _seg_path(seg_dir, uid), resolution))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc="preprocess", unit="scan", file=sys.stderr)

    def record(uid, error):
        if error is None:
            report["done"].append(uid)
        else:
            report["failed"][uid] = error
            if bar is not None:
                bar.write("skipped %s: %s" % (uid, error.splitlines()[0]))
        if bar is not None:
            bar.update(1)

    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            record(*_job(job))
    else:
        from concurrent.futures import as_completed
        from concurrent.futures.process import BrokenProcessPool

        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(_job, job): job[0] for job in jobs}
            for fut in as_completed(futures):
                try:
                    record(*fut.result())
                except BrokenProcessPool as e:  # a worker died (e.g. killed for memory)
                    record(futures[fut], "worker process died: %s" % e)
    if bar is not None:
        bar.close()
    report["done"].sort()
    atomic_write(os.path.join(out_dir, "preprocess_report.json"),
                 lambda f: f.write(json.dumps(report, indent=1).encode()))
    return report

"""`Detector`: a trained Res18 turned into marks on whole scans.

    det = Detector("run/best.pt", tile_batch=2)
    marks = det.detect("scan.mhd")             # raw scan: preprocessing runs inside
    marks = det.detect("preprocessed/", uid)   # a `deepem preprocess` folder
    marks = det.detect(image_u8, meta=meta)    # a preprocessed volume and its meta dict

The steps are public so that the EM E-step runs the same path with its own filtering:
network_output (tiles -> stitched output), decode (threshold -> candidates), postprocess
(min diameter, NMS, cap) and Marks.from_grid (world mm).
"""
import json
import os
import tempfile
import time

import numpy as np
import torch

from ..data import lung_mask, preprocess
from ..data.uids import check_uid
from ..model.res18 import STRIDE, Res18
from ..model.safe_load import CheckpointError, load_checkpoint, state_dict_of
from ..ops.anchors import DEEPLUNG_SIZES
from . import plan, tiles
from .decode import decode as _decode
from .decode import postprocess as _postprocess
from .fast import InferenceRunner, resolve_amp
from .marks import Marks

SCAN_EXTENSIONS = (".mhd", ".nii.gz", ".nii")


def _strip_prefixes(state):
    """DistributedDataParallel ('module.') and torch.compile ('_orig_mod.') key prefixes off."""
    out = {}
    for k, v in state.items():
        for prefix in ("module.", "_orig_mod."):
            while k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def load_model(checkpoint_or_model, sizes=None, trusted=False):
    """(Res18 in eval mode on the CPU, anchor sizes) from a Res18, a checkpoint dict
    ({'model': state_dict, 'config': {'model': {'width', 'dropout'}}}) or its file (loaded
    weights-only unless `trusted`: deepem.model.safe_load)."""
    if isinstance(checkpoint_or_model, torch.nn.Module):
        model = checkpoint_or_model
        return model.eval(), tuple(sizes or DEEPLUNG_SIZES)
    ckpt, name = checkpoint_or_model, "checkpoint dict"
    if isinstance(ckpt, (str, os.PathLike)):
        name = os.fspath(ckpt)
        ckpt = load_checkpoint(name, map_location="cpu", trusted=trusted)
    state = _strip_prefixes(state_dict_of(ckpt, name))
    cfg = ckpt.get("config") or {}
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model") or {}, dict):
        raise CheckpointError("%s: 'config' must be a dict whose 'model' section (width, dropout) is a dict" % name)
    cfg = cfg.get("model") or {}
    head = state.get("output.2.weight")
    if head is None:
        raise ValueError("%s: the state_dict is not a Res18's (no 'output.2.weight')" % name)
    sizes = tuple(sizes or cfg.get("anchor_sizes") or DEEPLUNG_SIZES)
    model = Res18(width=float(cfg.get("width", 1.0)), num_anchors=head.shape[0] // 5,
                  dropout=float(cfg.get("dropout", 0.5)))
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError("%s: weights do not fit Res18(width=%s): %s"
                         % (name, cfg.get("width", 1.0), str(e).splitlines()[0])) from None
    if model.num_anchors != len(sizes):
        raise ValueError("%s: %d anchors per cell but %d anchor sizes %s"
                         % (name, model.num_anchors, len(sizes), sizes))
    return model.eval(), sizes


def scan_uid(path):
    """A raw scan's seriesuid: its file name without the extension, or a DICOM folder's name."""
    base = os.path.basename(os.path.normpath(os.fspath(path)))
    for ext in SCAN_EXTENSIONS:
        if base.endswith(ext):
            return base[: -len(ext)]
    return base


def load_preprocessed(folder, uid):
    """(uint8 image (memory-mapped), meta) of a `deepem preprocess` output."""
    check_uid(uid, "preprocessed folder %s" % os.fspath(folder))
    clean = os.path.join(os.fspath(folder), uid + "_clean.npy")
    meta_path = os.path.join(os.fspath(folder), uid + "_meta.json")
    for p in (clean, meta_path):
        if not os.path.exists(p):
            raise FileNotFoundError("preprocessed scan %s: %s not found" % (uid, p))
    try:
        image = np.load(clean, mmap_mode="r")
        with open(meta_path) as f:
            meta = json.load(f)
    except (ValueError, OSError) as e:
        raise ValueError("preprocessed scan %s cannot be read (%s): %s" % (uid, clean, e)) from None
    return image, meta


def preprocess_raw(path, uid=None, seg_path=None):
    """DeepLung preprocessing of a raw scan (.mhd, .nii/.nii.gz, DICOM folder) in memory:
    (uint8 image, meta). Errors name the file."""
    path = os.fspath(path)
    uid = uid or scan_uid(path)
    with tempfile.TemporaryDirectory(prefix="deepem-detect-") as tmp:
        try:
            meta = preprocess.preprocess_scan(path, tmp, uid, seg_path=seg_path)
        except lung_mask.EmptyLungMask as e:
            raise lung_mask.EmptyLungMask("no lungs found in %s: %s" % (path, e)) from None
        except ValueError as e:
            raise ValueError("cannot preprocess %s: %s" % (path, e)) from None
        image = np.load(preprocess.output_paths(tmp, uid)["clean.npy"])
    return image, meta


def load_input(x, uid=None, meta=None, seg_path=None):
    """(uint8 image (z, y, x), meta, uid) of anything `Detector.detect` takes."""
    if isinstance(x, torch.Tensor):
        x = x.cpu().numpy()
    if isinstance(x, np.ndarray):
        if meta is None:
            raise ValueError("a volume needs meta= (the preprocessing geometry: origin, spacing, direction, "
                             "resolution, crop_start; the <uid>_meta.json of deepem preprocess)")
        if x.dtype != np.uint8 or x.ndim != 3:
            raise ValueError("a volume must be a preprocessed uint8 (z, y, x) array, got %s %s"
                             % (x.dtype, tuple(x.shape)))
        return x, meta, uid or meta.get("seriesuid", "scan")
    if isinstance(x, tuple) and len(x) == 2:  # (folder, uid)
        x, uid = x
    path = os.fspath(x)
    if path.endswith("_clean.npy"):
        folder, name = os.path.split(path)
        uid = name[: -len("_clean.npy")]
        image, meta = load_preprocessed(folder or ".", uid)
        return image, meta, uid
    if uid is not None and os.path.isdir(path) and os.path.exists(os.path.join(path, uid + "_meta.json")):
        image, meta = load_preprocessed(path, uid)
        return image, meta, uid
    if not os.path.exists(path):
        raise FileNotFoundError("scan not found: %s" % path)
    image, meta = preprocess_raw(path, uid, seg_path)
    return image, meta, meta["seriesuid"]


def _device(device):
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Detector:
    """Whole-scan detection with a Res18 (a module, a checkpoint dict or its file).

    Tiles (deepem.infer.plan): by default the fewest tiles whose tile_batch tiles fit
    max_memory bytes (default: half the available memory, 80% of a GPU's free memory), each
    with `margin` voxels of context (default plan.DEFAULT_BORDER = 16); a scan that fits is one
    tile of its own size. tile=N gives DeepLung's fixed tiles instead (side N, shrunk to the
    scan per axis, see deepem.infer.tiles; DeepLung: tile=144, margin=32). amp: 'none' | 'bf16'
    | 'fp16' | 'auto' (bf16 where the hardware has it natively, else none; `self.amp` says what
    was chosen). fast: run the network in its fastest form (deepem.infer.fast: oneDNN's fused
    convolutions on the CPU in fp32, channels_last under autocast); 'torchscript' the
    TorchScript graph instead on the CPU in fp32; False runs the module as it is.
    threshold: logit cut; min_diameter: mm; nms_iou: cube IoU; max_marks: per scan (LUNA16:
    100). A checkpoint file is loaded weights-only; trusted=True allows a full unpickle (files
    you trust only: it can run code).
    """

    def __init__(self, checkpoint_or_model, device="auto", tile=None, margin=None, tile_batch=1, amp="none",
                 threshold=-2.0, nms_iou=0.1, min_diameter=3.0, max_marks=100, sizes=None, trusted=False,
                 max_memory=None, fast=True):
        self.device = _device(device)
        model, self.sizes = load_model(checkpoint_or_model, sizes, trusted)
        self.model = model.to(self.device).eval()
        self.amp_requested, self.amp = amp, resolve_amp(amp, self.device)
        margin = plan.DEFAULT_BORDER if margin is None else margin
        tiles.split_comb((1, 1, 1), 144 if tile is None else tile, margin)  # validates tile and margin
        if int(tile_batch) < 1:
            raise ValueError("tile_batch must be >= 1, got %r" % (tile_batch,))
        if max_memory is not None and not float(max_memory) > 0:
            raise ValueError("max_memory must be > 0 bytes, got %r" % (max_memory,))
        self.tile, self.margin, self.tile_batch, self.max_memory = tile, int(margin), int(tile_batch), max_memory
        if fast not in (True, False, "torchscript"):
            raise ValueError("fast must be True, False or 'torchscript', got %r" % (fast,))
        self.fast = fast
        self.threshold, self.nms_iou = float(threshold), float(nms_iou)
        self.min_diameter, self.max_marks = float(min_diameter), max_marks
        self.timings = {}  # seconds of the last detect(): read, network, postprocess, mapping
        self._runner = None

    def split_comb(self, shape):
        """The tiles of a scan of `shape` (a deepem.data.datasets.SplitComb)."""
        if self.tile is not None:
            return tiles.split_comb(shape, self.tile, self.margin)
        return plan.plan_tiles(shape, getattr(self.model, "width", 1.0), self.margin, self.max_memory,
                               self.tile_batch, self.device)

    def runner(self):
        """What runs the network (deepem.infer.fast.InferenceRunner), for this model."""
        if self._runner is None or self._runner.model is not self.model:
            self._runner = InferenceRunner(self.model, self.device, self.amp, self.fast)
        return self._runner

    @torch.no_grad()  # not inference_mode: callers (the E-step) may edit the output in place
    def network_output(self, image_u8_zyx, on_tile=None):
        """Stitched whole-scan output, float32 [ceil(Z/4), ceil(Y/4), ceil(X/4), A, 5] on the
        detector's device; cell i is centred on preprocessed voxel 1.5 + 4 i."""
        image = image_u8_zyx
        if isinstance(image, torch.Tensor):
            image = image.cpu().numpy()
        if image.dtype != np.uint8:
            raise ValueError("network_output needs the preprocessed uint8 scan, got %s" % image.dtype)
        return tiles.stitched_output(self.runner(), image, self.split_comb(image.shape), self.tile_batch,
                                     self.device, "none", on_tile)

    def decode(self, output, threshold=None):
        """Every anchor with logit > threshold (default: the detector's): float [K, 5]
        (logit, z, y, x, d) in preprocessed voxels, no NMS, no cap."""
        return _decode(output, self.threshold if threshold is None else threshold, self.sizes, STRIDE)

    def postprocess(self, candidates, nms_iou=None, min_diameter=None, max_marks="default", resolution=1.0):
        """Candidates -> marks [M, 5] best first: d > min_diameter mm (the grid has `resolution`
        mm voxels), NMS at nms_iou, at most max_marks (None: no cap)."""
        return _postprocess(
            candidates, self.nms_iou if nms_iou is None else nms_iou,
            (self.min_diameter if min_diameter is None else min_diameter) / float(resolution),
            self.max_marks if max_marks == "default" else max_marks)

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def detect(self, x, uid=None, meta=None, seg_path=None, on_tile=None) -> Marks:
        """Marks of one scan: a raw scan path (.mhd, .nii/.nii.gz, DICOM folder; preprocessed
        inside, `seg_path` an optional LUNA16 lung mask), a preprocessed folder with `uid`
        (or its <uid>_clean.npy, or a (folder, uid) pair), or a uint8 volume with its `meta`."""
        t0 = time.perf_counter()
        image, meta, uid = load_input(x, uid, meta, seg_path)
        t1 = time.perf_counter()
        output = self.network_output(image, on_tile)
        self._sync()
        t2 = time.perf_counter()
        kept = self.postprocess(self.decode(output), resolution=meta.get("resolution", 1.0))
        self._sync()
        t3 = time.perf_counter()
        marks = Marks.from_grid(kept, meta, uid)
        t4 = time.perf_counter()
        self.timings = {"read": t1 - t0, "network": t2 - t1, "postprocess": t3 - t2, "mapping": t4 - t3}
        return marks

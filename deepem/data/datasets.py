"""Training and test datasets over preprocessed scans (deepem.data.preprocess's output).

- CropDataset: DeepLung's sampling and augmentation. Each nodule is repeated by size
  (once if d > 2.5 mm, 2 more if d > 10, 4 more if d > 20), 30% extra random crops, the crop
  placed at random with the nodule inside (margin 12), scale in
  [max(8/d, 0.75), min(120/d, 1.25)], flips on y and x. Yields the crop, every box that meets
  it as (z, y, x, d) in crop voxels, and the coordinate map of the output cells.
- WeakCropDataset: the same over weakly labelled scans, fed by pseudo boxes (the EM E-step's
  picks, `set_pseudo_boxes` each epoch), and also yields each weak label's z in the crop.
- MixedCropDataset: full and weak crops in one index space, for batches that hold both.
- SplitComb / ScanDataset: the whole-scan tiling used at test time (144^3 tiles with a 32
  voxel margin, configurable) and the inverse that stitches per-tile outputs.

Randomness comes from numpy Generators seeded by (seed, epoch, index): a sample does not
depend on which DataLoader worker draws it or in which order. Call `set_epoch` (and, for the
weak set, `set_pseudo_boxes`) before iterating; DataLoader workers copy the dataset when an
iteration starts, so use persistent_workers=False (the default) for the changes to reach them.
Images go to the network as float32 (u8 - 128) / 128.
"""
import json
import os

import numpy as np
import torch

from .uids import check_uid

PAD_VALUE = 170


def load_scan(data_dir, uid, mmap=True):
    """(image uint8 (Z, Y, X), labels [N, 4] float32, meta dict) of one preprocessed scan."""
    check_uid(uid, "preprocessed folder %s" % os.fspath(data_dir))
    base = os.path.join(data_dir, uid)
    image = np.load(base + "_clean.npy", mmap_mode="r" if mmap else None)
    labels = np.load(base + "_label.npy").astype(np.float32).reshape(-1, 4)
    with open(base + "_meta.json") as f:
        meta = json.load(f)
    return image, labels, meta


def load_weak(data_dir, uid):
    """Weak labels [M, 4] (z, lobe, recorded diameter, texture id) in the preprocessed grid
    (empty when the file is absent; diameter NaN and texture -1 where the record has none,
    and in files written before records had them, which hold (z, lobe) only)."""
    path = os.path.join(data_dir, uid + "_weak.npy")
    if not os.path.exists(path):
        return np.zeros((0, 4), dtype=np.float32)
    weak = np.load(path).astype(np.float32)
    weak = weak.reshape(-1, weak.shape[-1] if weak.ndim == 2 else 2)
    if weak.shape[1] == 2:
        weak = np.concatenate([weak, np.full((len(weak), 1), np.nan, np.float32),
                               np.full((len(weak), 1), -1.0, np.float32)], 1)
    return weak


def normalize(u8):
    return (np.asarray(u8, dtype=np.float32) - 128.0) / 128.0


def coord_map(start, crop_shape, scan_shape, stride=4, scale=1.0):
    """Position of each output cell of a crop in the whole scan, normalised to [-0.5, 0.5):
    float32 (3, D/stride, H/stride, W/stride). Cell i covers crop voxels [stride*i, stride*(i+1))
    and its centre, crop voxel (stride - 1)/2 + stride*i, is scan voxel start + that / scale."""
    axes = []
    for k in range(3):
        cells = np.arange(int(crop_shape[k]) // stride, dtype=np.float64)
        pos = float(start[k]) + ((stride - 1) / 2.0 + stride * cells) / scale
        axes.append((pos / float(scan_shape[k]) - 0.5).astype(np.float32))
    grids = np.meshgrid(*axes, indexing="ij")
    return np.stack(grids, 0)


def extract(image, start, size, pad_value=PAD_VALUE):
    """image[start : start + size] (integer start, any sign), padded with pad_value."""
    start = np.asarray(start, dtype=np.int64)
    size = np.asarray(size, dtype=np.int64)
    out = np.full(tuple(size), pad_value, dtype=image.dtype)
    lo = np.maximum(start, 0)
    hi = np.minimum(start + size, image.shape)
    if np.all(hi > lo):
        src = tuple(slice(a, b) for a, b in zip(lo, hi))
        dst = tuple(slice(a - s, b - s) for a, b, s in zip(lo, hi, start))
        out[dst] = image[src]
    return out


def crop_scaled(image, start, crop_shape, scale, pad_value=PAD_VALUE):
    """float32 crop where crop voxel i samples scan voxel start + i / scale (linear)."""
    crop_shape = np.asarray(crop_shape, dtype=np.int64)
    start = np.asarray(start, dtype=np.float64)
    if scale == 1.0 and np.all(start == np.round(start)):
        return extract(image, start.astype(np.int64), crop_shape, pad_value).astype(np.float32)
    base = np.floor(start).astype(np.int64)
    need = np.ceil((start - base) + (crop_shape - 1) / scale).astype(np.int64) + 2
    out = extract(image, base, need, pad_value).astype(np.float64)
    # Linear interpolation one axis at a time, x first (contiguous gathers), in float64: every
    # crop equals scipy's affine_transform(order=1) bit for bit after the cast to float32
    # (tests/test_data_datasets.py), 3x faster (0.45 against 1.3 ms a 32^3 crop).
    step, offset = 1.0 / scale, start - base
    for axis in (2, 1, 0):
        pos = np.arange(crop_shape[axis]) * step + offset[axis]
        low = np.floor(pos).astype(np.int64)
        frac = pos - low
        last = out.shape[axis] - 1
        a = np.take(out, np.minimum(low, last), axis=axis)
        b = np.take(out, np.minimum(low + 1, last), axis=axis)
        view = [1, 1, 1]
        view[axis] = -1
        a *= (1.0 - frac).reshape(view)
        b *= frac.reshape(view)
        a += b
        out = a
    return out.astype(np.float32)


def repeat_by_size(boxes, thresholds=(2.5, 10.0, 20.0), repeats=(1, 2, 4)):
    """DeepLung's size oversampling: indices of boxes, box i listed once if d > 2.5, 2 more
    times if d > 10 and 4 more if d > 20."""
    out = []
    for i, d in enumerate(np.asarray(boxes).reshape(-1, 4)[:, 3]):
        n = sum(r for t, r in zip(thresholds, repeats) if d > t)
        out.extend([i] * n)
    return out


class CropDataset(torch.utils.data.Dataset):
    """DeepLung crops around labelled nodules (and random crops) of preprocessed scans.

    train=False gives one centred crop per box, no augmentation and no random crops
    (validation). `boxes` replaces the scans' labels ({uid: [N, 4] (z, y, x, d)}).
    Items: dict(image float32 [1, D, H, W], coord float32 [3, D/s, H/s, W/s], boxes float32
    [K, 4] in crop voxels, uid, start float32 [3] (scan voxel of crop voxel 0), scale, flip
    (bool [2]: y, x flipped)). Batch them with `collate`.
    """

    def __init__(self, data_dir, uids, crop_size=96, stride=4, train=True, random_fraction=0.3, margin=12,
                 size_thresholds=(2.5, 10.0, 20.0), size_repeats=(1, 2, 4), scale_limits=(0.75, 1.25),
                 scale_diameters=(8.0, 120.0), augment_scale=True, augment_flip=True, pad_value=PAD_VALUE,
                 seed=0, boxes=None):
        self.data_dir = os.fspath(data_dir)
        self.uids = list(uids)
        self.crop = np.broadcast_to(np.asarray(crop_size, dtype=np.int64), (3,)).copy()
        if np.any(self.crop % stride) or np.any(self.crop <= 0):
            raise ValueError("crop_size %s must be positive multiples of stride %d" % (self.crop.tolist(), stride))
        if not 0 <= random_fraction < 1:
            raise ValueError("random_fraction must be in [0, 1), got %r" % random_fraction)
        self.stride, self.train, self.random_fraction, self.margin = stride, train, random_fraction, margin
        self.size_thresholds, self.size_repeats = size_thresholds, size_repeats
        self.scale_limits, self.scale_diameters = scale_limits, scale_diameters
        self.augment_scale, self.augment_flip, self.pad_value = augment_scale, augment_flip, pad_value
        self.seed, self.epoch = int(seed), 0
        self.shapes = {}
        for uid in self.uids:
            with open(os.path.join(self.data_dir, uid + "_meta.json")) as f:
                self.shapes[uid] = tuple(json.load(f)["shape"])
        self.set_boxes(boxes)

    def _scan_boxes(self, uid):
        return np.load(os.path.join(self.data_dir, uid + "_label.npy")).astype(np.float32).reshape(-1, 4)

    def set_boxes(self, boxes=None, weights=None):
        """Sets the boxes to sample around ({uid: [N, 4]}; None: the scans' labels) and their
        loss weights ({uid: [N]}; None: 1), which items carry as 'weights'."""
        self.boxes, self.weights = {}, {}
        for uid in self.uids:
            b = self._scan_boxes(uid) if boxes is None else boxes.get(uid, np.zeros((0, 4)))
            self.boxes[uid] = np.asarray(b, dtype=np.float32).reshape(-1, 4)
            w = None if weights is None else weights.get(uid)
            w = np.ones(len(self.boxes[uid])) if w is None else np.asarray(w, dtype=np.float32).reshape(-1)
            if len(w) != len(self.boxes[uid]):
                raise ValueError("scan %s: %d weights for %d boxes" % (uid, len(w), len(self.boxes[uid])))
            self.weights[uid] = w.astype(np.float32)
        self.samples = []
        for uid in self.uids:
            b = self.boxes[uid]
            idx = repeat_by_size(b, self.size_thresholds, self.size_repeats) if self.train else range(len(b))
            self.samples.extend((uid, i) for i in idx)

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def __len__(self):
        if not self.train:
            return len(self.samples)
        if not self.samples:
            return len(self.uids) if self.random_fraction > 0 else 0
        return int(len(self.samples) / (1 - self.random_fraction))

    def _placement(self, rng, uid, target):
        """(start (float, scan voxels), scale) of the crop."""
        shape = np.asarray(self.shapes[uid], dtype=np.float64)
        scale = 1.0
        if target is None:  # random crop anywhere (may overhang the scan by the margin)
            hi = np.maximum(shape - self.crop + self.margin, -self.margin + 1)
            return np.array([rng.integers(-self.margin, h) for h in hi], dtype=np.float64), scale
        c, d = target[:3].astype(np.float64), float(target[3])
        if not self.train:
            return np.round(c - self.crop / 2.0), scale
        if self.augment_scale:
            lo = min(max(self.scale_diameters[0] / d, self.scale_limits[0]), 1.0)
            hi = max(min(self.scale_diameters[1] / d, self.scale_limits[1]), 1.0)
            scale = float(rng.uniform(lo, hi))
        size = self.crop / scale
        start = np.empty(3)
        for k in range(3):
            s = np.floor(c[k] - d / 2) + 1 - self.margin
            e = np.ceil(c[k] + d / 2) + 1 + self.margin - size[k]
            if s > e:  # the crop holds nodule + margin: any start that keeps them inside
                start[k] = rng.integers(int(np.floor(e)), int(np.floor(s)) + 1)
            else:  # nodule larger than the crop: centre it, jitter by half the margin
                start[k] = np.floor(c[k] - size[k] / 2) + rng.integers(-self.margin // 2, self.margin // 2 + 1)
        return start, scale

    def _rng(self, index):
        return np.random.default_rng([self.seed, self.epoch, int(index)])

    def _pick(self, rng, index):
        if index < len(self.samples):
            uid, i = self.samples[index]
            return uid, self.boxes[uid][i]
        return self.uids[int(rng.integers(len(self.uids)))], None

    def __getitem__(self, index):
        if index < 0 or index >= len(self):
            raise IndexError(index)
        rng = self._rng(index)
        uid, target = self._pick(rng, index)
        start, scale = self._placement(rng, uid, target)
        image = np.load(os.path.join(self.data_dir, uid + "_clean.npy"), mmap_mode="r")
        crop = crop_scaled(image, start, self.crop, scale, self.pad_value)
        coord = coord_map(start, self.crop, image.shape, self.stride, scale)
        boxes = self.boxes[uid].astype(np.float64).copy()
        boxes[:, :3] = (boxes[:, :3] - start) * scale
        boxes[:, 3] *= scale
        flip = np.zeros(2, dtype=bool)
        if self.train and self.augment_flip:
            flip = rng.uniform(size=2) < 0.5
            for k, axis in ((0, 1), (1, 2)):
                if flip[k]:
                    crop = np.flip(crop, axis)
                    coord = np.flip(coord, axis + 1)
                    boxes[:, axis] = self.crop[axis] - 1 - boxes[:, axis]
        half = boxes[:, 3:] / 2
        keep = np.all((boxes[:, :3] + half > -0.5) & (boxes[:, :3] - half < self.crop - 0.5), axis=1)
        return self._item(uid, crop, coord, boxes[keep], start, scale, flip, self.weights[uid][keep])

    def _item(self, uid, crop, coord, boxes, start, scale, flip, weights):
        return {
            "image": torch.from_numpy(normalize(np.ascontiguousarray(crop))[None]),
            "coord": torch.from_numpy(np.ascontiguousarray(coord)),
            "boxes": torch.from_numpy(boxes.astype(np.float32)),
            "weights": torch.from_numpy(weights.astype(np.float32)),
            "uid": uid,
            "start": torch.from_numpy(np.asarray(start, dtype=np.float32)),
            "scale": float(scale),
            "flip": torch.from_numpy(flip.copy()),
        }


class WeakCropDataset(CropDataset):
    """Crops of weakly labelled scans around pseudo boxes ({uid: [N, 4]}, from the E-step;
    scans without one give random crops only). Items also hold 'weak_z': float32 [M], the
    scan's weak-label slices in crop voxels (flips are on y and x, so z is unchanged), for
    choosing negatives away from the weak z band."""

    def __init__(self, data_dir, uids, pseudo_boxes=None, **kwargs):
        self._weak = {u: load_weak(data_dir, u) for u in uids}
        super().__init__(data_dir, uids, boxes=pseudo_boxes or {}, **kwargs)

    def set_pseudo_boxes(self, pseudo_boxes, weights=None):
        self.set_boxes(pseudo_boxes or {}, weights)

    def weak_labels(self, uid):
        return self._weak[uid]

    def _item(self, uid, crop, coord, boxes, start, scale, flip, weights):
        item = super()._item(uid, crop, coord, boxes, start, scale, flip, weights)
        z = (self._weak[uid][:, 0].astype(np.float64) - start[0]) * scale
        item["weak_z"] = torch.from_numpy(z.astype(np.float32))
        item["weak"] = True
        return item


class MixedCropDataset(torch.utils.data.Dataset):
    """Full and weak crops in one index space (full first), so that a sampler over it mixes
    them in every batch in proportion to their numbers of crops (the EM M-step with em.mix).
    Full items get an empty 'weak_z' (no band) and 'weak' False."""

    def __init__(self, full: CropDataset, weak: WeakCropDataset):
        self.full, self.weak = full, weak

    def set_epoch(self, epoch):
        self.full.set_epoch(epoch)
        self.weak.set_epoch(epoch)

    def __len__(self):
        return len(self.full) + len(self.weak)

    def __getitem__(self, index):
        if index < len(self.full):
            item = self.full[index]
            item["weak_z"], item["weak"] = torch.zeros(0), False
            return item
        return self.weak[index - len(self.full)]


def collate(batch):
    """Stacks images and coordinate maps; keeps per-crop lists of the rest (box counts vary)."""
    out = {"image": torch.stack([b["image"] for b in batch]), "coord": torch.stack([b["coord"] for b in batch])}
    for key in batch[0]:
        if key not in out:
            out[key] = [b[key] for b in batch]
    return out


class SplitComb:
    """Whole-scan tiling: the scan, padded with pad_value by `margin` on the low side and up to
    a whole number of `side_len` tiles plus `margin` on the high side, is cut into tiles of
    side_len + 2 * margin (DeepLung: 144 + 2*32 = 208); `combine` drops each tile output's
    margin (margin / stride cells) and stitches the rest.

    side_len is one int (cubic tiles) or three (z, y, x): a scan smaller than DeepLung's 144
    on an axis can then be one tile of about its own size there (deepem.infer sizes them)."""

    def __init__(self, side_len=144, margin=32, stride=4, pad_value=PAD_VALUE):
        sides = np.broadcast_to(np.asarray(side_len, dtype=np.int64), (3,)).copy()
        if np.any(sides % stride) or margin % stride or np.any(sides <= 0) or margin < 0:
            raise ValueError("side_len %s and margin %d must be multiples of stride %d"
                             % (np.asarray(side_len).tolist(), margin, stride))
        self.side_len, self.margin, self.stride, self.pad_value = side_len, margin, stride, pad_value
        self.sides = sides

    @property
    def tile_shape(self):
        """Input voxels of one tile (z, y, x): side + 2 * margin per axis."""
        return tuple(int(s) + 2 * self.margin for s in self.sides)

    def grid(self, shape):
        return tuple(int(np.ceil(s / side)) for s, side in zip(shape, self.sides))

    def starts(self, shape):
        """Scan voxel of each tile's voxel 0, [n, 3] int (tiles in z, y, x raster order)."""
        g = self.grid(shape)
        idx = np.stack(np.meshgrid(*[np.arange(n) for n in g], indexing="ij"), -1).reshape(-1, 3)
        return idx * self.sides - self.margin

    def split(self, image):
        """image (Z, Y, X) -> (tiles [n, *tile_shape] of image's dtype, grid)."""
        tiles = np.stack([extract(image, s, self.tile_shape, self.pad_value) for s in self.starts(image.shape)])
        return tiles, self.grid(image.shape)

    def coords(self, shape):
        """Coordinate maps of the tiles, float32 [n, 3, *tile_shape / stride]."""
        return np.stack([coord_map(s, self.tile_shape, shape, self.stride) for s in self.starts(shape)])

    def output_shape(self, grid):
        """Cells of the stitched output before the cut: grid * side / stride per axis."""
        return tuple(int(g) * int(s) // self.stride for g, s in zip(grid, self.sides))

    def paste(self, out, tile_output, index, grid):
        """Writes tile `index`'s output [*tile_shape / stride, ...] without its margin into the
        stitched output `out` [*output_shape(grid), ...] (numpy or torch)."""
        k = self.sides // self.stride
        m = self.margin // self.stride
        pos = np.unravel_index(int(index), tuple(grid))
        dst = tuple(slice(int(p) * int(kk), (int(p) + 1) * int(kk)) for p, kk in zip(pos, k))
        out[dst] = tile_output[m:m + int(k[0]), m:m + int(k[1]), m:m + int(k[2])]

    def combine(self, outputs, grid, shape=None):
        """Per-tile outputs [n, cz, cy, cx, ...] (numpy or torch) -> whole-scan output
        [gz*kz, gy*ky, gx*kx, ...] with k = side / stride, cut to ceil(shape / stride) if given."""
        n = int(np.prod(grid))
        if len(outputs) != n:
            raise ValueError("combine: %d tile outputs for a grid of %s (%d tiles)" % (len(outputs), grid, n))
        full = self.output_shape(grid) + tuple(outputs.shape[4:])
        out = outputs.new_zeros(full) if torch.is_tensor(outputs) else np.zeros(full, dtype=outputs.dtype)
        for t in range(n):
            self.paste(out, outputs[t], t, grid)
        if shape is not None:
            out = out[tuple(slice(0, c) for c in self.cells(shape))]
        return out

    def cells(self, shape):
        """Output cells that cover a scan of `shape`: ceil(shape / stride) per axis."""
        return tuple(int(np.ceil(s / self.stride)) for s in shape)


class ScanDataset(torch.utils.data.Dataset):
    """Whole preprocessed scans for detection: dict(tiles float32 [n, 1, T, T, T],
    coord float32 [n, 3, T/s, T/s, T/s], grid, shape, uid, meta); one scan per step: use
    DataLoader(..., batch_size=None) and run the tiles through the network in chunks."""

    def __init__(self, data_dir, uids, split_comb=None):
        self.data_dir, self.uids = os.fspath(data_dir), list(uids)
        self.split_comb = split_comb or SplitComb()

    def __len__(self):
        return len(self.uids)

    def __getitem__(self, index):
        uid = self.uids[index]
        image, _, meta = load_scan(self.data_dir, uid)
        tiles, grid = self.split_comb.split(image)
        return {
            "tiles": torch.from_numpy(normalize(tiles)[:, None]),
            "coord": torch.from_numpy(self.split_comb.coords(image.shape)),
            "grid": grid, "shape": tuple(image.shape), "uid": uid, "meta": meta,
        }

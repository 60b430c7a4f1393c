"""Whole-scan tiled inference: tiles cut from the scan a batch at a time, run through the
network and pasted into one stitched output [D/4, H/4, W/4, A, 5].

Only `tile_batch` tiles exist at any time (input and activations), so peak memory follows the
tile batch, not the scan; the stitched output is ~1 byte per scan voxel (15 floats per 64).
Tile sides shrink to the scan: each axis is split into ceil(side / tile) equal parts rounded
up to 16 voxels, so a scan smaller than a tile is one tile of its own size plus the margin,
and a 300-voxel axis takes 3 x 112 rather than 3 x 144.
"""
import math
from contextlib import nullcontext

import numpy as np
import torch

from ..data.datasets import PAD_VALUE, SplitComb, coord_map, extract
from ..model.res18 import MAX_STRIDE, STRIDE
from .. import heap

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _triple_int(value, name):
    values = np.broadcast_to(np.asarray(value), (3,))
    if not np.all(values == np.round(values)) or np.any(values <= 0):
        raise ValueError("%s must be a positive int or 3 of them (z, y, x), got %r" % (name, value))
    return tuple(int(v) for v in values)


def tile_sides(shape, tile=144):
    """Per-axis tile side (voxels, without the margin) for a scan of `shape` (z, y, x)."""
    sides = []
    for s, t in zip(shape, _triple_int(tile, "tile")):
        if t % MAX_STRIDE:
            raise ValueError("tile sides must be multiples of %d, got %d" % (MAX_STRIDE, t))
        n = max(1, math.ceil(int(s) / t))
        sides.append(min(t, MAX_STRIDE * math.ceil(math.ceil(int(s) / n) / MAX_STRIDE)) or MAX_STRIDE)
    return tuple(sides)


def split_comb(shape, tile=144, margin=32):
    """The SplitComb for a scan of `shape`: tiles of tile_sides(shape, tile) + 2 * margin."""
    if margin < 0 or (2 * margin) % MAX_STRIDE:
        raise ValueError("margin must be >= 0 and a multiple of %d, got %r" % (MAX_STRIDE // 2, margin))
    return SplitComb(side_len=tile_sides(shape, tile), margin=int(margin), stride=STRIDE, pad_value=PAD_VALUE)


def autocast(device, amp):
    """The autocast context of amp ('none' | 'bf16' | 'fp16') on `device`."""
    if amp not in AMP_DTYPES:
        raise ValueError("amp must be one of %s, got %r" % (", ".join(AMP_DTYPES), amp))
    dtype = AMP_DTYPES[amp]
    return nullcontext() if dtype is None else torch.autocast(torch.device(device).type, dtype=dtype)


def stitched_output(model, image, sc, tile_batch=1, device="cpu", amp="none", on_tile=None):
    """The network's output over the whole scan `image` (uint8 (Z, Y, X), numpy or memmap):
    `model(x, coord)` is called per tile batch under `amp`'s autocast (a module, or a
    deepem.infer.fast.InferenceRunner, which applies its own);
    float32 [ceil(Z/4), ceil(Y/4), ceil(X/4), A, 5] on `device`; cell i lies at scan voxel
    1.5 + 4 i per axis. `on_tile(n_done, n_total)` is called after each tile batch.

    The tensor is stored values first (output[..., 0], the logits, is one contiguous block):
    index and reshape it freely; .view() of the last dims needs .contiguous() first."""
    if image.ndim != 3:
        raise ValueError("image must be a 3D (z, y, x) volume, got shape %s" % (tuple(image.shape),))
    if tile_batch < 1:
        raise ValueError("tile_batch must be >= 1, got %r" % (tile_batch,))
    with heap.reuse_freed_memory():  # host memory only: on CUDA it keeps the input's buffers
        return _stitched_output(model, image, sc, tile_batch, torch.device(device), amp, on_tile)


def _stitched_output(model, image, sc, tile_batch, device, amp, on_tile):
    shape, grid = tuple(image.shape), sc.grid(image.shape)
    starts = sc.starts(shape)
    out = None
    for b0 in range(0, len(starts), tile_batch):
        chunk = starts[b0:b0 + tile_batch]
        u8 = np.stack([extract(image, s, sc.tile_shape, sc.pad_value) for s in chunk])
        coord = np.stack([coord_map(s, sc.tile_shape, shape, sc.stride) for s in chunk])
        # uint8 to the device (4x less to copy), then (u8 - 128) / 128 there: exact in float32.
        x = torch.from_numpy(u8).to(device)[:, None].float().sub_(128.0).div_(128.0)
        with autocast(device, amp):
            y = model(x, torch.from_numpy(coord).to(device))
        y = y.float()
        if out is None:  # values first in memory: decode's threshold then reads the logits only
            out = y.new_empty(y.shape[-1:] + sc.output_shape(grid) + tuple(y.shape[4:-1])).movedim(0, -1)
        for j in range(len(chunk)):
            sc.paste(out, y[j], b0 + j, grid)
        del x, y
        if on_tile is not None:
            on_tile(min(b0 + tile_batch, len(starts)), len(starts))
    cut = out.movedim(-1, 0)[(slice(None),) + tuple(slice(0, c) for c in sc.cells(shape))]
    return cut.clone().movedim(0, -1)  # a compact copy, still values first

"""How a scan is cut into tiles for detection: the fewest tiles that fit a memory budget, each
with a border of context (real neighbouring voxels inside the scan, pad value outside it).

DeepLung cut every scan into 144-voxel tiles with a 32-voxel margin on every side, also at the
scan's own border: a demo scan ran as one tile of 6.9x its voxels, a LUNA16-size scan as 18
tiles of 4.5x. Here a scan that fits the budget is one tile of its own size (rounded up to the
network's 16) plus the border, and a larger one is split into as few equal tiles as the budget
allows.

What the output is: the network sees, for every output cell, the voxels of its tile: the scan
within `border` voxels of the tile's core, the pad value (170, DeepLung's) beyond the scan.
With one tile that is exactly one pass over the scan padded by `border` voxels of pad value;
with several, a cell near a seam also sees `border` voxels of its neighbour tile's data and
nothing beyond, where one pass would see more: the 3D Res18's receptive field is wider than
any border worth paying for, so seams change the output a little, and fewer tiles mean fewer
seams. docs/detection.md has the measurement behind DEFAULT_BORDER.
"""
import itertools
import math
import os

from ..model.res18 import MAX_STRIDE
from .tiles import _triple_int

# Context voxels around each tile's core. Chosen on the demo's validation scans
# (docs/detection.md): 16 moves the trained baseline's logits on its positive cells by at most
# ~0.8 against DeepLung's 32 and leaves the validation CPM unchanged; 8 moves 7% of all cells.
DEFAULT_BORDER = 16

# Peak bytes of inference activations per input voxel of a tile, per unit of width (Res18's
# channel multiplier), measured with measure_bytes_per_voxel on torch 2.14, CPU, fp32, no_grad:
# width 1: 289 (96^3 and 128^3 tiles), 0.5: 178, 0.25: 82-185 (the input, coordinate map and
# output do not shrink with the width). bf16 autocast is counted as fp32 (it keeps fp32
# copies around); a 25% reserve on top.
BYTES_PER_VOXEL = 300.0
_MIN_WIDTH = 0.4
_RESERVE = 1.25


def bytes_per_voxel(width):
    """Peak inference memory per input voxel of a tile of a Res18 of `width`, with the reserve."""
    return BYTES_PER_VOXEL * max(float(width), _MIN_WIDTH) * _RESERVE


def available_memory(device="cpu"):
    """Bytes a detection may use by default: half of MemAvailable on the CPU (so that the rest
    of the machine keeps running), 80% of the free memory of a CUDA device."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.8)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 // 2
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def _round_up(n, m):
    return m * math.ceil(n / m)


def tile_counts(shape, border, max_tile_voxels):
    """(tiles per axis, core side per axis) of the plan with the fewest input voxels in all
    (then the fewest tiles) whose tile (core + 2 * border) holds at most max_tile_voxels;
    the smallest possible tiles if none does."""
    shape = _triple_int(shape, "shape")
    options = []
    for axis in shape:
        choices = {}
        for n in range(1, math.ceil(axis / MAX_STRIDE) + 1):
            side = _round_up(math.ceil(axis / n), MAX_STRIDE)
            n_used = math.ceil(axis / side)  # rounding can leave a tile empty: drop it
            choices.setdefault(side, n_used)
        options.append(sorted((n, side) for side, n in choices.items()))
    best = None
    for combo in itertools.product(*options):
        counts = tuple(n for n, _ in combo)
        sides = tuple(s for _, s in combo)
        tile_voxels = math.prod(s + 2 * border for s in sides)
        fits = tile_voxels <= max_tile_voxels
        key = (not fits, math.prod(counts) * tile_voxels if fits else tile_voxels, math.prod(counts))
        if best is None or key < best[0]:
            best = (key, counts, sides)
    return best[1], best[2]


def plan_tiles(shape, width=1.0, border=DEFAULT_BORDER, max_memory=None, tile_batch=1, device="cpu"):
    """The SplitComb for a scan of `shape` (z, y, x): the fewest tiles of a Res18 of `width`
    whose tile_batch tiles fit max_memory bytes (default: available_memory(device))."""
    from .tiles import split_comb

    budget = available_memory(device) if max_memory is None else int(max_memory)
    if budget <= 0:
        raise ValueError("max_memory must be > 0 bytes, got %r" % (max_memory,))
    max_tile_voxels = budget / (bytes_per_voxel(width) * max(1, int(tile_batch)))
    _, sides = tile_counts(shape, int(border), max_tile_voxels)
    return split_comb(shape, sides, border)


def measure_bytes_per_voxel(width=1.0, amp="none", side=96):
    """Peak RSS growth (bytes) per input voxel of one forward pass of a random Res18 on a
    side^3 tile, in a fresh process (how BYTES_PER_VOXEL was measured)."""
    import subprocess
    import sys

    code = (
        "import resource, torch\n"
        "from deepem.model import Res18\n"
        "from deepem.infer.tiles import autocast\n"
        "m = Res18(%r).eval(); x = torch.zeros(1, 1, %d, %d, %d); c = torch.zeros(1, 3, %d, %d, %d)\n"
        "with torch.no_grad(), autocast('cpu', %r): m(x[:, :, :16, :16, :16], c[:, :, :4, :4, :4])\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "with torch.no_grad(), autocast('cpu', %r): m(x, c)\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024 / %d)\n"
        % (float(width), side, side, side, side // 4, side // 4, side // 4, amp, amp, side ** 3))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])

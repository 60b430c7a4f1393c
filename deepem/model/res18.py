"""The DeepLung 3D Res18 detector (Zhu et al., WACV 2018), the network DeepEM trains.

Encoder: preBlock (two 3^3 conv-BN-ReLU at full resolution), then four max-pool + residual
stages (forw1..forw4: 2, 2, 3, 3 blocks) down to stride 16. Decoder: two transposed-conv
upsamplings with skip concatenation (forw3 at stride 8; forw2 and a 3-channel coordinate map at
stride 4), each followed by 3 residual blocks. Head: Dropout3d, 1x1 conv, ReLU, 1x1 conv to
5 values per anchor. Output (B, D/4, H/4, W/4, A, 5) = (logit, dz, dy, dx, dd).

At width 1 it has DeepLung's 5,383,623 trainable parameters; `width` scales every feature
channel count (structure kept), so a narrow model trains on a few CPU cores.
"""
import os
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from .batch_norm import BatchNorm3d
from .conv3d import Conv3d
from .pool import MaxPool3d2x

STRIDE = 4  # output cell size in input voxels
MAX_STRIDE = 16  # input sides must be multiples of this (four 2x poolings)
COORD_CHANNELS = 3


class ResBlock(nn.Module):
    """conv3-BN-ReLU-conv3-BN plus a shortcut (1x1 conv + BN when channels change), ReLU."""

    def __init__(self, n_in: int, n_out: int, cpu_kernels: bool = True):
        super().__init__()
        self.conv1 = Conv3d(n_in, n_out, 3, padding=1, cpu_kernels=cpu_kernels)
        self.bn1 = BatchNorm3d(n_out, cpu_kernels=cpu_kernels, relu=True)
        self.conv2 = Conv3d(n_out, n_out, 3, padding=1, cpu_kernels=cpu_kernels)
        self.bn2 = BatchNorm3d(n_out, cpu_kernels=cpu_kernels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = None
        if n_in != n_out:
            self.shortcut = nn.Sequential(nn.Conv3d(n_in, n_out, 1), BatchNorm3d(n_out, cpu_kernels=cpu_kernels))

    def forward(self, x: Tensor) -> Tensor:
        residual = x if self.shortcut is None else self.shortcut(x)
        out = self.bn1(self.conv1(x))  # with its ReLU
        out = self.bn2(self.conv2(out))
        return self.relu(out + residual)


def _stage(n_in: int, n_out: int, blocks: int, cpu_kernels: bool) -> nn.Sequential:
    return nn.Sequential(*[ResBlock(n_in if i == 0 else n_out, n_out, cpu_kernels) for i in range(blocks)])


def _up(channels: int, cpu_kernels: bool) -> nn.Sequential:
    # nn.Identity holds the place of the ReLU the batch norm now applies (checkpoint keys)
    return nn.Sequential(nn.ConvTranspose3d(channels, channels, 2, stride=2),
                         BatchNorm3d(channels, cpu_kernels=cpu_kernels, relu=True), nn.Identity())


class Res18(nn.Module):
    """DeepLung's 3D Res18 detector.

    Args:
        width: multiplier of every feature channel count (1 = DeepLung; 0.25 for CPU training).
        num_anchors: anchor sizes per output cell (DeepLung: 3, sides 5, 10, 20 mm).
        dropout: Dropout3d probability before the head (DeepLung: 0.5).
        cpu_kernels: CPU training through deepem's own kernels where they are faster (the 3^3
            convolutions, deepem.model.conv3d; batch norm, deepem.model.batch_norm; max
            pooling, deepem.model.pool; the same gradients to float rounding); False: torch's
            (the benchmarks' baseline); None: on unless the environment sets DEEPEM_CPU_KERNELS=0.

    forward(x [B, 1, D, H, W], coord [B, 3, D/4, H/4, W/4]) -> [B, D/4, H/4, W/4, A, 5];
    D, H, W multiples of 16; coord is the normalised position of each output cell in the
    scan (deepem.data.datasets.coord_map).
    """

    def __init__(self, width: float = 1.0, num_anchors: int = 3, dropout: float = 0.5,
                 cpu_kernels: Optional[bool] = None):
        super().__init__()
        if cpu_kernels is None:  # DEEPEM_CPU_KERNELS=0: torch's layers everywhere (comparisons, a suspected kernel)
            cpu_kernels = os.environ.get("DEEPEM_CPU_KERNELS", "1") != "0"
        if not width > 0:
            raise ValueError("width must be > 0, got %r" % (width,))
        self.width, self.num_anchors = float(width), int(num_anchors)
        c = [max(1, int(round(n * width))) for n in (24, 32, 64, 64, 64)]
        back3, back2, head = (max(1, int(round(n * width))) for n in (64, 128, 64))
        self.channels = dict(forward=c, back3=back3, back2=back2, head=head)
        self.preBlock = nn.Sequential(
            Conv3d(1, c[0], 3, padding=1, cpu_kernels=cpu_kernels), BatchNorm3d(c[0], cpu_kernels=cpu_kernels, relu=True),
            nn.Identity(),  # the ReLU's place (checkpoint keys): the batch norm applies it
            Conv3d(c[0], c[0], 3, padding=1, cpu_kernels=cpu_kernels), BatchNorm3d(c[0], cpu_kernels=cpu_kernels, relu=True),
            nn.Identity())
        self.pool = MaxPool3d2x(cpu_kernels)
        self.forw1 = _stage(c[0], c[1], 2, cpu_kernels)
        self.forw2 = _stage(c[1], c[2], 2, cpu_kernels)
        self.forw3 = _stage(c[2], c[3], 3, cpu_kernels)
        self.forw4 = _stage(c[3], c[4], 3, cpu_kernels)
        self.path1 = _up(c[4], cpu_kernels)
        self.back3 = _stage(c[4] + c[3], back3, 3, cpu_kernels)
        self.path2 = _up(back3, cpu_kernels)
        self.back2 = _stage(back3 + c[2] + COORD_CHANNELS, back2, 3, cpu_kernels)
        self.drop = nn.Dropout3d(dropout)
        self.output = nn.Sequential(nn.Conv3d(back2, head, 1), nn.ReLU(),
                                    nn.Conv3d(head, 5 * self.num_anchors, 1))

    def forward(self, x: Tensor, coord: Tensor) -> Tensor:
        check_input(x, coord)
        out = self.preBlock(x)
        out1 = self.forw1(self.pool(out))
        out2 = self.forw2(self.pool(out1))
        out3 = self.forw3(self.pool(out2))
        out4 = self.forw4(self.pool(out3))
        comb3 = self.back3(torch.cat((self.path1(out4), out3), 1))
        comb2 = self.back2(torch.cat((self.path2(comb3), out2, coord.to(out2.dtype)), 1))
        out = self.output(self.drop(comb2))
        b, _, d, h, w = out.shape
        # (B, A*5, D, H, W) -> (B, D, H, W, A, 5): the anchor layout of deepem.ops.anchors3d.
        return out.permute(0, 2, 3, 4, 1).reshape(b, d, h, w, self.num_anchors, 5)


def check_input(x: Tensor, coord: Tensor) -> None:
    """Clear errors for the shapes the network cannot take (traced away under torch.compile)."""
    if torch.compiler.is_compiling():
        return
    if x.dim() != 5 or x.shape[1] != 1:
        raise ValueError("Res18: input must be [B, 1, D, H, W], got %s" % (tuple(x.shape),))
    if any(s % MAX_STRIDE for s in x.shape[2:]):
        raise ValueError("Res18: input sides must be multiples of %d, got %s"
                         % (MAX_STRIDE, tuple(x.shape[2:])))
    want = (x.shape[0], COORD_CHANNELS) + tuple(s // STRIDE for s in x.shape[2:])
    if tuple(coord.shape) != want:
        raise ValueError("Res18: coord must be %s for input %s, got %s"
                         % (want, tuple(x.shape), tuple(coord.shape)))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def output_size(input_size: Sequence[int]) -> tuple:
    return tuple(int(s) // STRIDE for s in input_size)

"""Res18 for CPU fp32 inference as oneDNN's fused convolutions, the way torch.compile's
inductor (with freezing) lowers it, but without its compile time or one compilation per
input shape:
- BatchNorm folded into each convolution's weight and bias;
- activations in channels_last_3d (the layout oneDNN's direct convolutions want at few
  channels; TorchScript's frozen graph keeps blocked layouts padded to 8 channels and
  reorders the full-resolution 6-channel tensor);
- convolution + ReLU as one oneDNN primitive (`mkldnn._convolution_pointwise`), and each
  residual block's second convolution + shortcut add + ReLU as one, written into the
  shortcut's buffer (`mkldnn._convolution_pointwise_.binary`);
- weights reordered to oneDNN's preferred format once per input shape (cached);
- a narrow model's full-resolution preBlock (at most 8 channels: width <= 1/3) through deepem's
  own AVX2 convolution (deepem.ops.conv3d_small, with the ReLU in its store) in NCDHW instead,
  pooled there and handed to oneDNN in channels_last_3d: on the 2-core AVX2 VM 1.5-1.7x oneDNN's
  fused convolution on those layers (the 1 -> 6 and 6 -> 6 layers of a LUNA16-size scan: 28 and
  ~72 GFLOP/s in oneDNN, ~50 and ~115 in conv3d_small). At 8 channels and half resolution oneDNN
  is as fast or faster (measured), so the stages after the first pooling stay oneDNN's.
On the 2-core AVX2 VM at width 0.25: a demo scan 1.3x and a LUNA16-size scan 1.7x faster
than the TorchScript graph, with 2/3 of its peak memory; width 1 within 5%
(benchmarks/bench_detect.py, docs/detection.md); outputs within 2e-5 of the module's
(tests/test_infer_plan.py).

These are the private oneDNN ops inductor itself calls on the CPU; `available()` says whether
this torch has them, and deepem.infer.fast runs TorchScript where it does not (or where oneDNN
refuses a primitive at the first call).
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..model.res18 import Res18, ResBlock, check_input
from ..ops import conv3d_small as small

CL = torch.channels_last_3d
_ONES = [1, 1, 1]
_PACKED_SHAPES = 4  # input shapes whose packed weights are kept (a full-width model's: 21 MB each)
_NARROW_CHUNK = 64  # planes of the narrow preBlock computed at a time (even: pooling pairs)


def available() -> bool:
    return torch.backends.mkldnn.is_available() and all(
        hasattr(torch.ops.mkldnn, op) for op in ("_convolution_pointwise", "_convolution_pointwise_",
                                                  "_reorder_convolution_weight"))


def _folded(conv: nn.Module, bn: Optional[nn.BatchNorm3d], out_axis: int = 0):
    """(weight, bias) of conv followed by bn in eval mode, as one convolution; out_axis: the
    weight's output-channel axis (0 for Conv3d, 1 for ConvTranspose3d)."""
    weight, bias = conv.weight.detach(), conv.bias.detach()
    if bn is not None:
        scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
        shape = [1] * weight.dim()
        shape[out_axis] = -1
        weight = weight * scale.reshape(shape)
        bias = (bias - bn.running_mean) * scale + bn.bias.detach()
    return weight, bias.contiguous()


class _Conv:
    """One stride-1 convolution (BatchNorm folded in), its weight packed per input shape."""

    def __init__(self, conv: nn.Conv3d, bn: Optional[nn.BatchNorm3d] = None):
        if conv.stride != (1, 1, 1) or conv.dilation != (1, 1, 1) or conv.groups != 1:
            raise ValueError("fused inference takes stride-1, undilated, ungrouped convolutions")
        weight, self.bias = _folded(conv, bn)
        self.weight = weight.contiguous(memory_format=CL)
        self.padding = list(conv.padding)
        self.packed = {}

    def _weight(self, x: Tensor) -> Tensor:
        key = tuple(x.shape)
        if key not in self.packed:
            if len(self.packed) >= _PACKED_SHAPES:  # scans differ in shape: keep the newest few only
                self.packed.pop(next(iter(self.packed)))
            self.packed[key] = torch.ops.mkldnn._reorder_convolution_weight(
                self.weight, self.padding, _ONES, _ONES, 1, list(x.shape))
        return self.packed[key]

    def __call__(self, x: Tensor, relu: bool = True) -> Tensor:
        return torch.ops.mkldnn._convolution_pointwise(x, self._weight(x), self.bias, self.padding, _ONES, _ONES, 1,
                                                        "relu" if relu else "none", [None], "")

    def add_relu_(self, x: Tensor, residual: Tensor) -> Tensor:
        """residual <- relu(conv(x) + residual), in place."""
        torch.ops.mkldnn._convolution_pointwise_.binary(residual, x, self._weight(x), self.bias, self.padding, _ONES,
                                                        _ONES, 1, "add", 1.0, "relu", [None], "")
        return residual


class _NarrowConv:
    """A 3^3 convolution (BatchNorm folded in) + ReLU of an NCDHW volume through conv3d_small."""

    def __init__(self, conv: nn.Conv3d, bn: nn.BatchNorm3d):
        weight, self.bias = _folded(conv, bn)
        self.weight = weight.contiguous()

    def __call__(self, x: Tensor) -> Tensor:
        return small.conv3d_small(x, self.weight, self.bias, relu=True)


def narrow_kernels_apply(model: Res18) -> bool:
    """Whether the preBlock runs in deepem's convolution: its channels fit conv3d_small, this CPU
    has the AVX2 kernels, and the model was not built with cpu_kernels=False (DEEPEM_CPU_KERNELS=0)."""
    return (model.channels["forward"][0] <= small.MAX_CHANNELS and getattr(model.preBlock[0], "cpu_kernels", False)
            and small.avx2_kernels())


class _Block:
    def __init__(self, block: ResBlock):
        self.conv1, self.conv2 = _Conv(block.conv1, block.bn1), _Conv(block.conv2, block.bn2)
        self.shortcut = None if block.shortcut is None else _Conv(block.shortcut[0], block.shortcut[1])

    def __call__(self, x: Tensor) -> Tensor:
        residual = x.clone() if self.shortcut is None else self.shortcut(x, relu=False)
        return self.conv2.add_relu_(self.conv1(x), residual)


class _Up:
    """ConvTranspose3d (stride 2) + BatchNorm (folded) + ReLU."""

    def __init__(self, seq: nn.Sequential):
        conv, bn = seq[0], seq[1]
        self.weight, self.bias = _folded(conv, bn, out_axis=1)  # weight [in, out, k, k, k]
        self.stride = conv.stride

    def __call__(self, x: Tensor) -> Tensor:
        return F.conv_transpose3d(x, self.weight, self.bias, stride=self.stride).relu_()


def _max_pool2(x: Tensor) -> Tensor:
    """max_pool3d(x, 2, 2) of a channels_last_3d tensor with even sides, as three pairwise
    maxima over strided views, halving D first: 4x faster than max_pool3d on a full-resolution
    LUNA16-size activation (0.08 against 0.33 s), the same values (NaN propagates in both)."""
    v = x.permute(0, 2, 3, 4, 1)  # [B, D, H, W, C], contiguous
    v = torch.maximum(v[:, 0::2], v[:, 1::2])
    v = torch.maximum(v[:, :, 0::2], v[:, :, 1::2])
    return torch.maximum(v[:, :, :, 0::2], v[:, :, :, 1::2]).permute(0, 4, 1, 2, 3)


class FusedRes18:
    """Calls like the Res18 it was built from, in eval mode and fp32 on the CPU: (x, coord) ->
    [B, D/4, H/4, W/4, A, 5]. A snapshot: build it again after the weights change."""

    def __init__(self, model: Res18):
        if not isinstance(model, Res18):
            raise TypeError("FusedRes18 takes a deepem Res18, got %s" % type(model).__name__)
        m = model
        self.num_anchors = m.num_anchors
        self.narrow_pre = narrow_kernels_apply(m)
        pre = _NarrowConv if self.narrow_pre else _Conv
        self.pre = [pre(m.preBlock[0], m.preBlock[1]), pre(m.preBlock[3], m.preBlock[4])]
        self.stages = {name: [_Block(b) for b in getattr(m, name)]
                       for name in ("forw1", "forw2", "forw3", "forw4", "back3", "back2")}
        self.path1, self.path2 = _Up(m.path1), _Up(m.path2)
        self.head = _Conv(m.output[0])
        self.out = _Conv(m.output[2])

    def _narrow_pre_pooled(self, x: Tensor) -> Tensor:
        """max_pool(preBlock(x)) in channels_last_3d, the preBlock in chunks of _NARROW_CHUNK planes
        along z, each with the 2 planes on either side its two 3^3 convolutions need (computed again
        per chunk: +2 x 4 / 64 of the preBlock's work). The full-resolution activations are then a
        chunk's, not the scan's: on a LUNA16-size scan 2 x 0.9 GB that a process's first scan
        page-faulted in (1-1.5 s on the 2-core VM) become 2 x ~0.2 GB, reused by each chunk."""
        b, _, d, h, w = x.shape
        pooled = torch.empty((b, self.pre[1].weight.shape[0], d // 2, h // 2, w // 2),
                             memory_format=CL) if d > _NARROW_CHUNK else None
        for z0 in range(0, d, _NARROW_CHUNK):
            z1 = min(d, z0 + _NARROW_CHUNK)
            lo, hi = max(0, z0 - 2), min(d, z1 + 2)  # even: whole pooling pairs
            # Planes lo and hi - 1 see the chunk's zero padding (wrong unless at the scan's border),
            # the next ones in from them too after the second convolution; z0 .. z1 - 1 are exact.
            out = self.pre[1](self.pre[0](x[:, :, lo:hi]))
            chunk = torch.ops.deepem._max_pool3d_2x(out)[0][:, :, (z0 - lo) // 2:(z1 - lo) // 2]
            if pooled is None:
                return chunk.contiguous(memory_format=CL)
            pooled[:, :, z0 // 2:z1 // 2].copy_(chunk)
        return pooled

    def _stage(self, name: str, x: Tensor) -> Tensor:
        for block in self.stages[name]:
            x = block(x)
        return x

    @torch.no_grad()
    def __call__(self, x: Tensor, coord: Tensor) -> Tensor:
        check_input(x, coord)
        if self.narrow_pre:
            pooled = self._narrow_pre_pooled(x.float().contiguous())  # NCDHW: one channel, the same bytes as CL
        else:
            out = self.pre[1](self.pre[0](x.float().contiguous(memory_format=CL)))
            pooled = _max_pool2(out)
            del out  # the largest activation: freed before forw1 allocates
        out1 = self._stage("forw1", pooled)
        out2 = self._stage("forw2", _max_pool2(out1))
        out3 = self._stage("forw3", _max_pool2(out2))
        out4 = self._stage("forw4", _max_pool2(out3))
        comb3 = self._stage("back3", torch.cat((self.path1(out4), out3), 1))
        coord = coord.to(out2.dtype).contiguous(memory_format=CL)
        comb2 = self._stage("back2", torch.cat((self.path2(comb3), out2, coord), 1))
        out = self.out(self.head(comb2), relu=False)  # Dropout3d is the identity in eval mode
        b, _, d, h, w = out.shape
        return out.permute(0, 2, 3, 4, 1).reshape(b, d, h, w, self.num_anchors, 5)

"""The network as detection runs it: the fastest form of the same function on the device at hand.

- CPU, fp32, a Res18: deepem.infer.fused, oneDNN's fused convolutions in channels_last_3d
  (BatchNorm folded, convolution + ReLU and convolution + residual add + ReLU as one
  primitive); at width 0.25, 1.3x (a demo scan) to 1.7x (a LUNA16-size scan) faster than
  the TorchScript graph.
- CPU, fp32, another model (or a torch without those oneDNN ops): the model traced, frozen and
  optimised for inference by TorchScript: BatchNorm folded into the convolutions, oneDNN's
  blocked layouts kept between layers (ReLU a separate oneDNN step for 3D convolutions). On the
  2-core AVX2 VM: 2.4x the module at width 0.25 (a demo scan's tile), 1.5x at width 1.
Both give outputs within 2e-5 of the module's (docs/detection.md, tests/test_infer_plan.py)
and are built at the first call and again whenever a parameter or buffer has changed since
(the E-step detects with a model that trains between its calls).
- bf16 / fp16 autocast, and CUDA: the module itself on a channels_last_3d input (the format
  oneDNN's bf16 and cuDNN's kernels want; it carries through the layers), under autocast.
Anything that cannot be traced runs as it is, with a warning.

`resolve_amp('auto', device)` picks bf16 where the hardware computes it natively (CUDA devices
with bf16; CPUs with AVX512-BF16 or AMX), else fp32: emulated bf16 is several times slower.
"""
import warnings

import torch

from ..model.res18 import Res18
from . import fused
from .tiles import AMP_DTYPES, autocast

_TRACE_SIDE = 32  # a small input to trace with: the trace holds for any input size


def cpu_has_native_bf16():
    """True where the CPU computes bf16 in hardware (x86 flags avx512_bf16 or amx_bf16)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def resolve_amp(amp, device):
    """'auto' -> 'bf16' where native (see the module docstring), else 'none'; others as given."""
    if amp != "auto":
        if amp not in AMP_DTYPES:
            raise ValueError("amp must be one of auto, %s, got %r" % (", ".join(AMP_DTYPES), amp))
        return amp
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "none"
    return "bf16" if cpu_has_native_bf16() else "none"


def _state_signature(model):
    return tuple((id(t), t._version) for t in list(model.parameters()) + list(model.buffers()))


class InferenceRunner:
    """Calls the model for detection in its fastest form (see the module docstring):
    runner(x, coord) under no_grad, autocast applied."""

    def __init__(self, model, device, amp="none", fast=True):
        self.model, self.device, self.amp = model, torch.device(device), amp
        self.mode = "module"
        if fast and self.device.type == "cpu" and amp == "none":  # fast='torchscript': that form
            use_fused = fast is True and isinstance(model, Res18) and fused.available()
            self.mode = "fused" if use_fused else "torchscript"
        elif fast:
            self.mode = "channels_last"
        self._traced, self._fused, self._signature = None, None, None

    def _fused_call(self, x, coord):
        signature = _state_signature(self.model)
        if self._fused is None or signature != self._signature:
            self._fused, self._signature = fused.FusedRes18(self.model), signature
        try:
            return self._fused(x, coord)
        except RuntimeError as e:  # a oneDNN build that refuses a primitive: TorchScript instead
            warnings.warn("detection runs TorchScript: oneDNN's fused convolutions failed (%s)"
                          % str(e).splitlines()[0])
            self.mode, self._fused, self._signature = "torchscript", None, None
            return self._torchscript(x, coord)

    def _trace(self, x, coord):
        s = _TRACE_SIDE
        example = (x.new_zeros((1, 1, s, s, s)), coord.new_zeros((1, coord.shape[1], s // 4, s // 4, s // 4)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript's tracer warnings about Python control flow
            traced = torch.jit.trace(self.model.eval(), example, check_trace=False)
            return torch.jit.optimize_for_inference(torch.jit.freeze(traced))

    def _torchscript(self, x, coord):
        signature = _state_signature(self.model)
        if self._traced is None or signature != self._signature:
            try:
                self._traced = self._trace(x, coord)
            except Exception as e:  # noqa: BLE001 - any module the tracer cannot take runs as it is
                warnings.warn("detection runs the model as a module: TorchScript could not trace it (%s)"
                              % str(e).splitlines()[0])
                self.mode = "module"
                return self.model(x, coord)
            self._signature = signature
        return self._traced(x, coord)

    @torch.no_grad()
    def __call__(self, x, coord):
        if self.mode == "fused":
            return self._fused_call(x, coord)
        if self.mode == "torchscript":
            return self._torchscript(x, coord)
        if self.mode == "channels_last":  # the input's format carries through the convolutions;
            x = x.contiguous(memory_format=torch.channels_last_3d)  # the model (maybe training) stays as it is
        with autocast(self.device, self.amp):
            return self.model(x, coord)

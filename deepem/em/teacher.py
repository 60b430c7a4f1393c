"""Who runs the E-step. The paper's E-step uses the model being trained (`student`), so a wrong
pick the M-step learns makes the next E-step pick more of the same (on the demo: proposals per
weak scan 36 -> 274 -> 552, right picks 45% -> 21%). Semi-supervised detectors break that loop
with a teacher that is not the student: the initial detector frozen (`init`), or an
exponential moving average of the student's weights (`ema`, updated after every optimizer
step, so it follows the student slowly)."""
import copy
import hashlib
import os

import torch

from ..data.atomic import atomic_write
from ..train.ema import ema_update

CACHE_FORMAT = 1  # raise when what a cached proposal means changes


class ProposalCache:
    """A frozen teacher's proposals per (scan, slices, settings) key of estep.detect_proposals:
    in memory, and with `folder` also on disk under a hash of the key and the teacher's weights,
    so that another EM run from the same initial detector (the demo's MAP and sampling rows, a
    study's variants) reads them instead of detecting each weak scan again. The weights are
    hashed at the first use (after a resume has loaded them)."""

    def __init__(self, model: torch.nn.Module, folder: str = ""):
        self.model, self.folder, self.memory, self._weights = model, folder, {}, None

    def _path(self, key) -> str:
        if self._weights is None:
            h = hashlib.sha256()
            for name, value in self.model.state_dict().items():
                h.update(("%s %s %s" % (name, value.dtype, tuple(value.shape))).encode())
                h.update(value.detach().cpu().contiguous().numpy().tobytes())
            self._weights = h.hexdigest()
        name = hashlib.sha256(repr((CACHE_FORMAT, torch.__version__, self._weights, key)).encode()).hexdigest()
        return os.path.join(self.folder, name[:40] + ".pt")

    def __contains__(self, key) -> bool:
        return key in self.memory or bool(self.folder) and os.path.exists(self._path(key))

    def __getitem__(self, key) -> torch.Tensor:
        if key not in self.memory:
            self.memory[key] = torch.load(self._path(key), map_location="cpu", weights_only=True)
        return self.memory[key]

    def __setitem__(self, key, proposals: torch.Tensor) -> None:
        self.memory[key] = proposals
        if self.folder:
            atomic_write(self._path(key), lambda f: torch.save(proposals.cpu(), f))


class Teacher:
    def __init__(self, kind: str, student: torch.nn.Module, decay: float = 0.999, proposal_cache: str = ""):
        if kind not in ("student", "init", "ema"):
            raise ValueError("teacher must be student, init or ema, got %r" % (kind,))
        self.kind, self.decay, self.student = kind, float(decay), student
        self.model = student if kind == "student" else copy.deepcopy(student)
        if self.model is not student:
            self.model.requires_grad_(False)
        if kind == "init":  # its detections never change: each scan runs through it once (estep.detect_proposals)
            self.model.proposal_cache = ProposalCache(self.model, proposal_cache)

    @torch.no_grad()
    def update(self) -> None:
        """One EMA step toward the student (teacher = ema; a no-op otherwise). Buffers (batch
        norm statistics) are copied."""
        if self.kind == "ema":
            ema_update(self.model, self.student, self.decay, buffers="copy")

    def state_dict(self) -> dict:
        return {} if self.model is self.student else self.model.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if self.model is not self.student:
            self.model.load_state_dict(state)

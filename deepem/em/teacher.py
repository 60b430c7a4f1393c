"""Who runs the E-step. The paper's E-step uses the model being trained (`student`), so a wrong
pick the M-step learns makes the next E-step pick more of the same (on the demo: proposals per
weak scan 36 -> 274 -> 552, right picks 45% -> 21%). Semi-supervised detectors break that loop
with a teacher that is not the student: the initial detector frozen (`init`), or an
exponential moving average of the student's weights (`ema`, updated after every optimizer
step, so it follows the student slowly)."""
import copy

import torch

from ..train.ema import ema_update


class Teacher:
    def __init__(self, kind: str, student: torch.nn.Module, decay: float = 0.999):
        if kind not in ("student", "init", "ema"):
            raise ValueError("teacher must be student, init or ema, got %r" % (kind,))
        self.kind, self.decay, self.student = kind, float(decay), student
        self.model = student if kind == "student" else copy.deepcopy(student)
        if self.model is not student:
            self.model.requires_grad_(False)
        if kind == "init":  # its detections never change: each scan runs through it once (estep.detect_proposals)
            self.model.proposal_cache = {}

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

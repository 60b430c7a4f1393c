"""Exponential moving averages of a model's weights: the one update rule that the evaluated
weights (optim.ema_decay) and the EM's EMA teacher (deepem.em.teacher) share.

Why evaluate an average: a small detector trained with AdamW on batches of 8 crops moves far
between steps; on the demo, two baselines that differ only in their training seed ended
0.08 validation CPM apart, and one epoch at the init's lr knocked a baseline from 0.67 to 0.35.
An average over the last ~1/(1 - decay) steps is the usual remedy (Polyak averaging; the
"model EMA" of modern detectors), and it makes a run's result depend less on its last steps."""
import copy

import torch


@torch.no_grad()
def ema_update(average: torch.nn.Module, model: torch.nn.Module, decay: float, buffers: str = "average") -> None:
    """average <- decay * average + (1 - decay) * model, parameter by parameter. Floating
    buffers (batch-norm statistics) are averaged the same way (buffers='average') or copied
    (buffers='copy'); integer buffers (batches seen) are always copied."""
    # the same mul_ and add_ per tensor as a loop, in one foreach call each (a loop over the
    # quarter-width model's ~300 tensors cost 3 ms a step, a quarter of that this way)
    averaged, sources = list(average.parameters()), [m.detach() for m in model.parameters()]
    for a, m in zip(average.buffers(), model.buffers()):
        if buffers == "average" and a.is_floating_point():
            averaged.append(a)
            sources.append(m)
        else:
            a.copy_(m)
    if averaged:
        torch._foreach_mul_(averaged, decay)
        torch._foreach_add_(averaged, sources, alpha=1.0 - decay)


class WeightAverage:
    """A copy of `model` that follows it by an EMA. From random weights the k-th update uses
    min(decay, (1 + k) / (10 + k)) (a warm-up, so that the average soon forgets the random
    start); from trained weights (`reset`, a run's init) it uses `decay` from the first step."""

    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError("weight average decay must be in (0, 1), got %r" % (decay,))
        self.decay, self.updates, self.warmup = float(decay), 0, True
        self.model = copy.deepcopy(model).requires_grad_(False)

    def update(self, model: torch.nn.Module) -> None:
        k = self.updates
        ema_update(self.model, model, min(self.decay, (1.0 + k) / (10.0 + k)) if self.warmup else self.decay)
        self.updates += 1

    def reset(self, model: torch.nn.Module) -> None:
        """Start again from `model`'s trained weights (a run's init): no warm-up."""
        self.model.load_state_dict(model.state_dict())
        self.updates, self.warmup = 0, False

    def state(self) -> dict:
        return {"updates": self.updates, "warmup": self.warmup}

    def load(self, state: dict) -> None:
        self.updates, self.warmup = int(state["updates"]), bool(state["warmup"])

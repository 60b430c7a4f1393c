"""DeepEM: EM training over weak labels (central slice + lobe) on top of the detector."""
from .estep import EStepResult, run_estep
from .lobe import LobeModel
from .loop import em_fit

__all__ = ["em_fit", "run_estep", "EStepResult", "LobeModel"]

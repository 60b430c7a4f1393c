"""Training: configuration, the one training loop (supervised epochs and the EM M-step),
checkpoints, distributed setup."""
from .config import PRESETS, ConfigError, TrainConfig, load_config
from .trainer import NonFiniteLoss, Trainer, fit

__all__ = ["TrainConfig", "load_config", "ConfigError", "PRESETS", "Trainer", "fit", "NonFiniteLoss"]

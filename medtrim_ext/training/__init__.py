"""Training: config, the loop (one process or torchrun), objectives, checkpoints, logs."""

from .config import Config, load_config, replace
from .loop import Trainer, train

__all__ = ["Config", "Trainer", "load_config", "replace", "train"]

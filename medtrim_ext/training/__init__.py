"""Training: config, the loop (one process or torchrun), objectives, checkpoints, logs."""

from ..utils.extras import require_extra

# a clear ImportError naming the extra, before any import of it fails bare
require_extra("train", "medtrim_ext.training")

from .config import Config, load_config, replace
from .loop import Trainer, train

__all__ = ["Config", "Trainer", "load_config", "replace", "train"]

"""The training engine shared by every task: config, loop, optimizer and schedules, EMA, checkpoints, logs."""

from vistra.engine.checkpoint_io import atomic_save, load_checkpoint
from vistra.engine.config import TrainConfig
from vistra.engine.ema import ModelEma
from vistra.engine.errors import TrainingDiverged
from vistra.engine.optim import build_lr_fn, build_optimizer, build_param_groups
from vistra.engine.trainer import Trainer

__all__ = [
    "ModelEma",
    "TrainConfig",
    "Trainer",
    "TrainingDiverged",
    "atomic_save",
    "build_lr_fn",
    "build_optimizer",
    "build_param_groups",
    "load_checkpoint",
]

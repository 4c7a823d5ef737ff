"""Training: configs, DeepSpeed engine, the three stage objectives, cached streaming data, resumable loop."""

from relightful.training.config import DeepSpeedConfig, OptimConfig, TrainConfig
from relightful.training.loop import StageResult, train_stage

__all__ = ["DeepSpeedConfig", "OptimConfig", "StageResult", "TrainConfig", "train_stage"]

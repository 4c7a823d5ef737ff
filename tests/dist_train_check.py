"""Run under torchrun by test_training: trains a few stage-1 steps and writes each rank's parameters."""

import sys
from pathlib import Path

import torch

from relightful.io import save_tensors
from relightful.training import TrainConfig
from relightful.training.config import DeepSpeedConfig
from relightful.training.loop import train_stage

sys.path.insert(0, str(Path(__file__).parent))
from conftest import micro_model_config  # noqa: E402

pairs, out, zero = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
config = TrainConfig(steps=3, log_every=1, checkpoint_every=100,
                     deepspeed=DeepSpeedConfig(micro_batch=2, zero_stage=zero))
result = train_stage(1, pairs, out / "model", out / "run", config, micro_model_config(), cache_dir=out / "cache",
                     progress=False)
rank = torch.distributed.get_rank()
save_tensors(out / f"rank{rank}.safetensors",
             {n: p.detach().float().contiguous() for n, p in result.model.named_parameters()})
save_tensors(out / f"loss{rank}.safetensors", {"loss": torch.tensor([r["loss"] for r in result.history])})

"""Run under torchrun by test_training's slow real-shape test: the gpu profile's model (SD-1.5-shaped UNet, F_bg,
F_env; random weights) takes two stage-1 steps on 64×64 latents under DeepSpeed ZeRO-2 bf16, one sample per
rank. Prints one JSON line per rank: the losses, each trained tensor's checksum of its fp32 master weights before
and after, and the peak resident memory of the rank."""

import dataclasses
import json
import resource
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from profile_model import model_config, train_config  # noqa: E402

from relightful.models import RelightModel  # noqa: E402
from relightful.training.config import OptimConfig, RuntimeConfig  # noqa: E402
from relightful.training.engine import build_engine, init_distributed  # noqa: E402
from relightful.training.loop import draw_step, step_generator  # noqa: E402
from relightful.training.objectives import StageObjective, param_groups, set_trainable  # noqa: E402
from relightful.training.runtime import batch_to_device, prepare_model  # noqa: E402

params, bucket = sys.argv[1], int(sys.argv[2])
rank, world = init_distributed()
with tempfile.TemporaryDirectory() as tmp:
    config = model_config("gpu", Path(tmp), params)  # 512² images, 64×64 latents of a random SD-shaped VAE
    torch.manual_seed(0)  # every rank builds the same weights (DeepSpeed also broadcasts rank 0's)
    model = RelightModel(config)
train = train_config("gpu", params, micro_batch=1, bucket_size=bucket)
train = dataclasses.replace(train, steps=2, optim=OptimConfig(lr=1e-4, warmup_steps=1, schedule="constant"),
                            runtime=RuntimeConfig(gradient_checkpointing=True))
set_trainable(model, 1)
prepare_model(model, train.runtime)
objective = StageObjective.from_config(model, 1, train)
engine, _, _ = build_engine(objective, param_groups(model, 1), train, world)


def checksums() -> list[float]:
    from deepspeed.utils import safe_get_full_fp32_param

    return [float(safe_get_full_fp32_param(p).double().abs().sum()) for p in objective.parameters() if p.requires_grad]


before = checksums()
latent, size = model.latent_size, config.image_size
gen = torch.Generator().manual_seed(100 + rank)  # each rank its own sample
losses = []
for step in range(train.steps):
    batch = {"composite": torch.randn(1, 4, latent, latent, generator=gen),
             "target": torch.randn(1, 4, latent, latent, generator=gen),
             "matte": torch.rand(1, 1, latent, latent, generator=gen),
             "background": torch.rand(1, 3, size, size, generator=gen) * 2 - 1}
    noise, t, keep_image, keep_light = draw_step(batch, step_generator(0, step, 0, rank), 1000, 0.0)
    loss, _ = engine(batch_to_device(batch, torch.device("cpu"), train.runtime), noise, t, keep_image, keep_light)
    engine.backward(loss)
    engine.step()
    losses.append(float(loss.detach()))
after = checksums()
print(json.dumps({"rank": rank, "latent": latent, "unet_params_m": sum(p.numel() for p in model.unet.parameters()) / 1e6,
                  "losses": losses, "before": before, "after": after,
                  "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}), flush=True)

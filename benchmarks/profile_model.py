"""A params.yaml profile's model and stage-1 step settings with random weights, for the benchmarks: no weights are
offline, and speed does not depend on their values. A VAE codec becomes a randomly initialised AutoencoderKL of
Stable Diffusion's shape (8× downsampling, 4 latent channels), written to `folder`."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from relightful.config import deep_merge, from_dict, load_section
from relightful.models import ModelConfig
from relightful.training import TrainConfig

SD_VAE = dict(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
              up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, norm_num_groups=32, layers_per_block=2)


def model_config(profile: str, folder: Path, params: str = "params.yaml", image_size: int | None = None) -> ModelConfig:
    values = load_section(params, "model", profile)
    if image_size:
        values = {**values, "image_size": image_size}
    values = deep_merge(values, {"unet": {"init_from": None}})
    if values["codec"].get("kind") == "vae":
        import torch
        from diffusers import AutoencoderKL

        torch.manual_seed(0)
        AutoencoderKL(**SD_VAE, sample_size=values["image_size"]).save_pretrained(folder / "vae", safe_serialization=True)
        values = deep_merge(values, {"codec": {"vae_path": str(folder / "vae")}})
    return from_dict(ModelConfig, values, f"{profile}.model")


def train_config(profile: str, params: str = "params.yaml", stage: int = 1, **deepspeed) -> TrainConfig:
    """The profile's `train` block with its `train_stageN` block over it; `deepspeed` keys given (not None) override."""
    block = f"train_stage{stage}"
    values = deep_merge(load_section(params, "train", profile), load_section(params, block, profile))
    config = from_dict(TrainConfig, values, f"{profile}.{block}")
    changes = {k: v for k, v in deepspeed.items() if v is not None}
    return dataclasses.replace(config, deepspeed=dataclasses.replace(config.deepspeed, **changes))

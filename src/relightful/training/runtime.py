"""The runtime settings of a training step (`RuntimeConfig`): applied to the model before DeepSpeed wraps it, and
to each batch as it moves to the device. One owner, so the training loop and `benchmarks/train_step.py` time the
same step."""

from __future__ import annotations

import torch

from relightful.models import RelightModel
from relightful.training.config import RuntimeConfig


def prepare_model(model: RelightModel, runtime: RuntimeConfig) -> RelightModel:
    """Training mode, gradient checkpointing and compilation as `runtime` asks. Compilation is in place
    (`nn.Module.compile`): parameter names, and so checkpoints and model folders, stay the same. Channels-last
    applies to the activations only (`to_device`): DeepSpeed flattens and broadcasts the weights as contiguous."""
    model.train()  # diffusers' from_pretrained leaves eval mode, under which it skips gradient checkpointing
    if runtime.gradient_checkpointing:
        model.unet.enable_gradient_checkpointing()
    if runtime.compile:
        for part in (model.unet, model.lighting, model.panorama):
            part.compile()
    return model


def to_device(value: torch.Tensor, device: torch.device, runtime: RuntimeConfig) -> torch.Tensor:
    """`value` on `device`; an image-shaped tensor in channels-last layout when asked (convolutions keep the layout
    of their input, so the whole UNet then runs NHWC)."""
    value = value.to(device, non_blocking=True)
    if runtime.channels_last and value.ndim == 4:
        value = value.contiguous(memory_format=torch.channels_last)
    return value


def batch_to_device(batch: dict[str, torch.Tensor], device: torch.device,
                    runtime: RuntimeConfig) -> dict[str, torch.Tensor]:
    return {key: to_device(value, device, runtime) for key, value in batch.items()}

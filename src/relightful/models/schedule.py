"""The noise schedule the model is trained with (DESIGN 3.6), and the sampler built on it: training and inference
both import it from here."""

from __future__ import annotations

from pathlib import Path

from relightful.io import InputError
from relightful.models.codecs import PixelUnshuffleCodec

# The forward process the model was trained with (DESIGN 3.6); samplers must use the same betas.
TRAINING_NOISE: dict = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                            beta_end=0.012, prediction_type="epsilon", rescale_betas_zero_snr=False)
SCHEDULER_DIR = "scheduler"  # optional diffusers scheduler config inside a model folder; overrides TRAINING_NOISE


def default_scheduler(model, config: dict | None = None):
    """DDIM on the training betas. "trailing" spacing starts sampling at t = T−1 (pure noise, as the initial
    sample is), which matters at the few steps used here (Lin et al. 2024, "Common diffusion noise schedules and
    sample steps are flawed"). x̂₀ is clipped to [−1, 1] only when latents are pixels (pixel_unshuffle codec)."""
    from diffusers import DDIMScheduler

    values = dict(TRAINING_NOISE if config is None else config)
    values.update(clip_sample=isinstance(model.codec, PixelUnshuffleCodec), set_alpha_to_one=False, steps_offset=0,
                  timestep_spacing="trailing")
    return DDIMScheduler.from_config(values)


def folder_scheduler(folder: str | Path, model):
    """The sampler of a model folder's `scheduler/` config (diffusers format), on its betas; None when the folder
    has none. An unreadable config raises `InputError`."""
    folder = Path(folder)
    if not (folder / SCHEDULER_DIR / "scheduler_config.json").is_file():
        return None
    from diffusers import DDIMScheduler

    try:
        config = DDIMScheduler.load_config(folder / SCHEDULER_DIR)
    except (OSError, ValueError) as err:
        raise InputError(folder / SCHEDULER_DIR, f"unreadable scheduler config ({err})") from None
    return default_scheduler(model, {k: config[k] for k in TRAINING_NOISE if k in config})


__all__ = ["SCHEDULER_DIR", "TRAINING_NOISE", "default_scheduler", "folder_scheduler"]

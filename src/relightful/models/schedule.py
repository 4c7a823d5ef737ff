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


def folder_scheduler(folder: str | Path, model, format_version: int = 2):
    """The sampler of a model folder's `scheduler/` config (diffusers format), None when the folder has none.

    Its `_class_name` is honoured (any diffusers scheduler: DDIM, Euler, DPM-Solver++, ...) with all its settings.
    Folders of format version 1 kept the *training* schedule there (a DDPMScheduler): only its betas and
    prediction type are taken, under the default DDIM sampler. An unreadable config or a class that is not a
    diffusers scheduler raises `InputError` naming the file."""
    import diffusers
    from diffusers import DDIMScheduler, SchedulerMixin

    path = Path(folder) / SCHEDULER_DIR / "scheduler_config.json"
    if not path.is_file():
        return None
    try:
        config = DDIMScheduler.load_config(path.parent)  # any class's JSON: a plain dict
    except (OSError, ValueError) as err:
        raise InputError(path, f"unreadable scheduler config ({err})") from None
    if format_version < 2:
        return default_scheduler(model, {k: config[k] for k in TRAINING_NOISE if k in config})
    name = config.get("_class_name")
    cls = getattr(diffusers, str(name), None)
    if not (isinstance(cls, type) and issubclass(cls, SchedulerMixin)):
        raise InputError(path, f"_class_name {name!r} is not a diffusers scheduler (e.g. DDIMScheduler)")
    try:
        return cls.from_config(config)
    except (TypeError, ValueError) as err:
        raise InputError(path, f"cannot build {name} from it ({err})") from None


__all__ = ["SCHEDULER_DIR", "TRAINING_NOISE", "default_scheduler", "folder_scheduler"]

"""Typed training configs. params.yaml holds `<profile>.model` (the architecture), `<profile>.train` (shared by
the three stages) and `<profile>.train_stageN` (what differs per stage: steps, learning rate, ...)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 20
    schedule: str = "cosine"        # "cosine" (to min_lr_ratio · lr) or "constant", after the linear warm-up
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0


@dataclass(frozen=True)
class DeepSpeedConfig:
    zero_stage: int = 0             # 0-3 (ZeRO-3 needs gathered weights to export; use 0-2 here)
    precision: str = "fp32"         # "fp32" | "bf16"
    micro_batch: int = 8            # per process
    grad_accum: int = 1
    bucket_size: int = 500_000_000  # elements per ZeRO gradient-reduce and all-gather bucket (DeepSpeed's default)


@dataclass(frozen=True)
class RuntimeConfig:
    """How a training step runs, not what it computes: the loss and its gradients stay the same (to rounding).
    What each setting pays on which device is measured by `benchmarks/train_step.py` (docs/benchmarks.md, "Training
    speed")."""
    channels_last: bool = False          # NHWC activations (the layout of GPU tensor cores)
    compile: bool = False                # torch.compile the UNet and the encoders, in place (names unchanged)
    gradient_checkpointing: bool = False  # recompute the UNet's activations in backward: less memory, more time


@dataclass(frozen=True)
class SamplingConfig:
    """How the trained model is best sampled; written into the model folder as `harmonize`'s defaults."""
    steps: int = 20
    image_guidance: float = 1.5
    lighting_guidance: float = 3.0
    # None: at or below the model's size the generated pixels are the output. A number: the output is always the
    # input foreground times the model's relighting gain, smoothed by a Gaussian of this σ (model pixels): the
    # input's detail is kept wherever a small model's own pixels are noisy (above the model's size that is always
    # done, with σ = 1 unless set here).
    detail_sigma: float | None = None
    # Noise draws averaged, in linear light, into each output. One sampler step from pure noise estimates
    # E[x0 | inputs], which the noise should not change; a small model's output still varies with it, and the mean
    # of a few draws is a better estimate (measured on val: +0.35 dB fg PSNR with 4 draws over one).
    ensemble: int = 1
    # Half of those draws on the left-right mirrored input, mirrored back before the average (needs an even
    # ensemble): the same passes, two views of the subject and its lighting.
    mirror_ensemble: bool = False
    # The shape of the relighting gain (its log less the mean log over the matte) scaled by this (the output then
    # always goes through the gain): a model trained on squared errors draws its shading flatter than it knows it
    # (models/compositing.py `scale_gain_shape`). 1: the model's own.
    gain_shape_scale: float = 1.0

    def __post_init__(self):
        if self.gain_shape_scale <= 0:
            raise ValueError(f"sampling.gain_shape_scale must be > 0, got {self.gain_shape_scale}")


@dataclass(frozen=True)
class TimestepBias:
    """Which diffusion timesteps training draws more often (diffusers' `timestep_bias_strategy` of its SDXL
    script). A model sampled in few steps from pure noise spends most of a uniform draw on nearly clean inputs it
    never meets at sampling time: "later" with `portion` 0.1 and `multiplier` 10 draws the noisiest tenth of the
    schedule about half of the time."""
    strategy: str = "none"          # "none" (uniform) | "later" | "earlier"
    portion: float = 0.25           # the share of the schedule (at its noisy end for "later") that is favoured
    multiplier: float = 1.0         # its weight relative to the other timesteps

    def __post_init__(self):
        if self.strategy not in ("none", "later", "earlier"):
            raise ValueError(f"timestep_bias.strategy must be 'none', 'later' or 'earlier', got {self.strategy!r}")
        if not 0.0 < self.portion <= 1.0 or self.multiplier <= 0:
            raise ValueError("timestep_bias: portion in (0, 1] and multiplier > 0 required")

    def weights(self, timesteps: int):
        """(timesteps,) float64 sampling weights."""
        import torch

        w = torch.ones(timesteps, dtype=torch.float64)
        n = max(1, round(self.portion * timesteps))
        if self.strategy == "later":
            w[timesteps - n:] = self.multiplier
        elif self.strategy == "earlier":
            w[:n] = self.multiplier
        return w


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 200                # optimizer steps of this stage
    seed: int = 0
    optim: OptimConfig = field(default_factory=OptimConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    cond_dropout: float = 0.05      # P(drop image) = P(drop lighting) = P(drop both) (InstructPix2Pix's recipe)
    align_weight: float = 1.0       # stage 2: weight of the F_bg -> F_env alignment loss
    env_warmup_steps: int = 0       # stage 2: only F_env trains for these first steps (the rest keeps stage 1's)
    pretrained_lr_scale: float = 1.0  # stage 2: learning rate of the UNet and F_bg relative to F_env's
    align_start_step: int = 0       # stage 2: no alignment before this step (F_env first learns from the maps)
    align_warmup_steps: int = 0     # stage 2: then the alignment weight ramps linearly from 0 over these steps
    bg_condition_fraction: float = 0.0  # stage 2: share of each batch conditioned on F_bg instead of F_env
    # stage 3: share of each batch replayed from the light-stage pairs (`--replay`): fine-tuned on the pairs of a
    # few natural portraits alone, the UNet forgets the light-stage lighting it learned (0: the paper's recipe)
    replay_fraction: float = 0.0
    # stages 1-2: this share of each batch from the pairs whose target map comes from one of `target_sources` (map
    # sources: the id's prefix, `pmndrs-city` -> pmndrs), whatever their share of the training pairs. Procedural
    # skies are cheap and outnumber real maps; a model that sees few real targets relights them worst
    target_sources: tuple[str, ...] = ()
    target_source_fraction: float = 0.0
    # probability that a training sample is mirrored left-right with its background and panorama (augment.py)
    hflip: float = 0.0
    shading_weight: float = 0.0     # weight of the level-free shading loss (gain-edit models; objectives.py)
    # stages 1-2: weight of the auxiliary loss asking the UNet's middle features for both lightings' mean direction
    # (training/light_probe.py; light-stage pairs only, the head is not part of the model)
    light_probe_weight: float = 0.0
    # models with a shading head (models/shading_head.py): weight of the error of its predicted shading coefficients
    # against the pair's true maps' (light-stage pairs only)
    shading_head_weight: float = 0.0
    # models with a shading prior (models/shading_prior.py): stage 1 of a new model first fits its two estimators
    # for this many steps of this batch (training/prior_fit.py; light-stage pairs only), then freezes them
    shading_prior_steps: int = 500
    shading_prior_batch: int = 64
    shading_prior_lr: float = 1.0e-3
    # the background's estimator sees each background's exposure changed by up to this many stops (uniform in log2):
    # the maps' shading coefficients are level-free, so a brighter or darker scene keeps them
    shading_prior_exposure_stops: float = 0.0
    ema_decay: float = 0.0          # > 0: the model folder gets this EMA of the trained weights (training/ema.py)
    num_train_timesteps: int = 1000
    timestep_bias: TimestepBias = field(default_factory=TimestepBias)
    prediction_type: str = "epsilon"  # "epsilon" (InstructPix2Pix, SD), "v_prediction" or "sample" (x̂₀)
    zero_snr: bool = False          # rescale the betas to zero terminal SNR (Lin et al. 2024; not with epsilon)
    shuffle_window: int = 4         # shards whose pairs are shuffled together (a streaming shuffle buffer)
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    log_every: int = 10
    validate_every: int = 100       # validation grids every this many steps (0: only at the end)
    validation_pairs: int = 4
    sampling: SamplingConfig = field(default_factory=SamplingConfig)  # validation grids; the model's defaults

    def __post_init__(self):
        if isinstance(self.target_sources, str):
            raise ValueError(f"target_sources: expected a list of map sources, got {self.target_sources!r}")
        object.__setattr__(self, "target_sources", tuple(self.target_sources))
        if not 0.0 <= self.target_source_fraction < 1.0:
            raise ValueError(f"target_source_fraction must be in [0, 1), got {self.target_source_fraction}")
        if bool(self.target_sources) != bool(self.target_source_fraction):
            raise ValueError("target_sources and target_source_fraction go together: name the map sources and the "
                             f"share of each batch they fill (got {list(self.target_sources)} and "
                             f"{self.target_source_fraction})")

"""Typed training configs. params.yaml holds `<profile>.model` (the architecture), `<profile>.train` (shared by
the three stages) and `<profile>.stageN` (what differs per stage: steps, learning rate, ...)."""

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


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 200                # optimizer steps of this stage
    seed: int = 0
    optim: OptimConfig = field(default_factory=OptimConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    cond_dropout: float = 0.05      # P(drop image) = P(drop lighting) = P(drop both) (InstructPix2Pix's recipe)
    align_weight: float = 1.0       # stage 2: weight of the F_bg -> F_env alignment loss
    num_train_timesteps: int = 1000
    prediction_type: str = "epsilon"  # "epsilon" (InstructPix2Pix, SD), "v_prediction" or "sample" (x̂₀)
    zero_snr: bool = False          # rescale the betas to zero terminal SNR (Lin et al. 2024; not with epsilon)
    shuffle_window: int = 4         # shards whose pairs are shuffled together (a streaming shuffle buffer)
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    log_every: int = 10
    validate_every: int = 100       # validation grids every this many steps (0: only at the end)
    validation_pairs: int = 4
    sampling: SamplingConfig = field(default_factory=SamplingConfig)  # validation grids; the model's defaults

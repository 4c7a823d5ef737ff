"""The three stages' objectives (DESIGN 3.6), each as the module that the DeepSpeed engine wraps.

1. ε-prediction (or v-prediction) loss; the UNet sees the composite and F_bg(background), each dropped at random so that both
   classifier-free guidance scales work at inference.
2. The same loss with F_env(panorama) as the lighting, plus an alignment loss pulling F_bg(background) towards
   F_env(panorama) at every scale (F_env's side held fixed): the background alone learns physically grounded
   lighting features. F_env starts untrained (its outputs are zero): it can first learn alone (`env_warmup_steps`,
   `param_groups`), and the alignment can wait until `align_start_step` and ramp up over `align_warmup_steps`
   instead of first pulling F_bg to zero (measured: aligned at once, both encoders' features shrank 200-fold and
   the lighting was lost); with `bg_condition_fraction` > 0 that share of each batch is conditioned on F_bg
   instead, so the UNet keeps serving the background path it is deployed with.
3. The stage-1 loss on natural pairs; only the UNet trains, F_bg is frozen.

With `shading_weight` > 0 (models whose edit is a gain), a level-free shading term joins the loss: the model's
relighting gain and the true one (target over composite, linear, smoothed as the harmonizer smooths it), each minus
its matte-weighted mean log, compared inside the matte. The pixel loss is dominated by the overall level, which a
background shows least (the light on a face comes from behind the camera); this term asks for the shape of the new
shading, where the light direction and the shadows are, whatever the level.

With `light_probe_weight` > 0 (stages 1-2), a small head on the UNet's middle features predicts the mean light
direction of the pair's source and target maps (training/light_probe.py) and its error joins the loss: the UNet must
read the old lighting from the composite, not only receive the new one.
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from relightful.models import RelightModel
from relightful.models.codecs import from_model_space
from relightful.models.compositing import gain_field
from relightful.models.relight_model import GAIN_LOG_LIMIT
from relightful.training.light_probe import LightProbe


def noise_scheduler(num_train_timesteps: int = 1000, prediction_type: str = "epsilon", zero_snr: bool = False):
    """Stable Diffusion's training schedule (the one InstructPix2Pix was trained with), optionally rescaled to zero
    terminal SNR, so that the last timestep is pure noise as the sampler's first sample is."""
    from diffusers import DDPMScheduler

    if prediction_type not in ("epsilon", "v_prediction", "sample"):
        raise ValueError(f"prediction_type must be 'epsilon', 'v_prediction' or 'sample', got {prediction_type!r}")
    if zero_snr and prediction_type == "epsilon":
        raise ValueError("zero_snr needs prediction_type 'v_prediction' or 'sample' (ε is unpredictable from pure "
                         "noise)")
    return DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule="scaled_linear", beta_start=0.00085,
                         beta_end=0.012, prediction_type=prediction_type, rescale_betas_zero_snr=zero_snr)


def trainable_parts(model: RelightModel, stage: int) -> list[nn.Module | nn.Parameter]:
    unet = [model.unet] + ([model.shading_head] if model.shading_head is not None else [])  # the head renders
    if stage == 1:
        return unet + [model.lighting] + ([model.null_embedding] if model.config.unet.init_from is None else [])
    if stage == 2:
        return unet + [model.panorama, model.lighting]
    if stage == 3:
        return unet
    raise ValueError(f"stage must be 1, 2 or 3, got {stage}")


def set_trainable(model: RelightModel, stage: int) -> list[nn.Parameter]:
    """Freeze everything, then unfreeze what `stage` trains; returns those parameters (the optimizer's)."""
    model.requires_grad_(False)
    params = []
    for part in trainable_parts(model, stage):
        if isinstance(part, nn.Parameter):
            part.requires_grad_(True)
            params.append(part)
        else:
            part.requires_grad_(True)
            params += list(part.parameters())
    return params


def param_groups(model: RelightModel, stage: int, env_warmup_steps: int = 0,
                 pretrained_lr_scale: float = 1.0) -> list[dict]:
    """The optimizer's param groups of `stage` (after `set_trainable`). In stage 2, the parts stage 1 trained (UNet,
    F_bg) are held for `env_warmup_steps` and then run at `pretrained_lr_scale` times the learning rate: F_env
    starts from zero and first learns to drive the trained UNet, so that neither the UNet unlearns the lighting while
    its F_env half of the batch has none, nor F_bg is aligned to nothing; then the trained parts move gently."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if stage != 2 or (env_warmup_steps <= 0 and pretrained_lr_scale == 1.0):
        return [{"params": trainable}]
    env = {id(p) for p in model.panorama.parameters()}
    return [{"params": [p for p in trainable if id(p) not in env], "hold_steps": env_warmup_steps,
             "lr_scale": pretrained_lr_scale},
            {"params": [p for p in trainable if id(p) in env]}]


class StageObjective(nn.Module):
    """forward(batch, noise, timesteps, keep_image, keep_light) -> (loss, {name: detached value})."""

    def __init__(self, model: RelightModel, stage: int, align_weight: float = 1.0, num_train_timesteps: int = 1000,
                 prediction_type: str = "epsilon", zero_snr: bool = False, bg_condition_fraction: float = 0.0,
                 shading_weight: float = 0.0, shading_sigma: float = 3.0, light_probe_weight: float = 0.0,
                 shading_head_weight: float = 0.0):
        super().__init__()
        if stage not in (1, 2, 3):
            raise ValueError(f"stage must be 1, 2 or 3, got {stage}")
        if not 0.0 <= bg_condition_fraction < 1.0:
            raise ValueError(f"bg_condition_fraction must be in [0, 1), got {bg_condition_fraction}")
        self.model, self.stage, self.align_weight = model, stage, align_weight
        self.bg_condition_fraction = bg_condition_fraction
        if shading_weight and not (model.config.residual and model.config.edit == "gain"):
            raise ValueError("shading_weight needs a model whose edit is a gain (model.residual, model.edit: gain)")
        self.shading_weight, self.shading_sigma = shading_weight, shading_sigma
        self.align_scale = 1.0  # the training loop ramps it over align_warmup_steps
        if light_probe_weight and stage == 3:
            raise ValueError("light_probe_weight is for stages 1-2 (stage 3 trains the UNet only, on natural pairs)")
        self.light_probe_weight = light_probe_weight
        if shading_head_weight and model.shading_head is None:
            raise ValueError("shading_head_weight supervises the model's shading head: set model.shading_head")
        self.shading_head_weight = shading_head_weight
        self.light_probe = LightProbe(model.unet) if light_probe_weight else None
        self.scheduler = noise_scheduler(num_train_timesteps, prediction_type, zero_snr)
        self.prediction_type = prediction_type
        self.register_buffer("alphas_cumprod", self.scheduler.alphas_cumprod.clone(), persistent=False)

    @classmethod
    def from_config(cls, model: RelightModel, stage: int, config) -> "StageObjective":
        """The objective of `stage` as a `TrainConfig` sets it (the shading term smoothed at its sampling σ)."""
        return cls(model, stage, config.align_weight, config.num_train_timesteps, config.prediction_type,
                   config.zero_snr, config.bg_condition_fraction, config.shading_weight,
                   config.sampling.detail_sigma or 1.0, config.light_probe_weight if stage != 3 else 0.0,
                   config.shading_head_weight)

    def forward(self, batch: dict[str, torch.Tensor], noise: torch.Tensor, timesteps: torch.Tensor,
                keep_image: torch.Tensor, keep_light: torch.Tensor):
        dtype = next(self.model.unet.parameters()).dtype
        target = batch["target"].to(dtype)
        a = self.alphas_cumprod.to(torch.float32)[timesteps].view(-1, 1, 1, 1)
        noisy = (a.sqrt() * target.float() + (1 - a).sqrt() * noise.float()).to(dtype)
        composite = batch["composite"].to(dtype) * keep_image.view(-1, 1, 1, 1).to(dtype)
        logs = {}
        from_bg = self.model.background_features(batch["background"].to(dtype))
        if self.stage == 2:
            lighting = self.model.panorama_features(batch["panorama"].to(dtype))
            n_bg = round(self.bg_condition_fraction * target.shape[0])  # the batch order is already random
            conditioning = [torch.cat([b[:n_bg], e[n_bg:]]) for b, e in zip(from_bg, lighting)] if n_bg else lighting
        else:
            conditioning = from_bg
        features = [f * keep_light.view(-1, *[1] * (f.ndim - 1)).to(dtype) for f in conditioning]
        with torch.no_grad():  # frozen, and computed from the real inputs whatever the dropout keeps (as sampled)
            prior = self.model.prior_log_gain(batch["composite"], batch["matte"], batch["background"])
        edit = None
        if self.shading_weight:
            prediction, edit = self.model.denoise(noisy, timesteps, composite, batch["matte"].to(dtype), features,
                                                  return_edit=True, prior=prior)
        else:
            prediction = self.model.denoise(noisy, timesteps, composite, batch["matte"].to(dtype), features,
                                            prior=prior)
        if self.prediction_type == "v_prediction":
            wanted = a.sqrt() * noise.float() - (1 - a).sqrt() * target.float()
        elif self.prediction_type == "sample":
            wanted = target.float()
        else:
            wanted = noise.float()
        loss = F.mse_loss(prediction.float(), wanted)
        logs["diffusion_loss"] = loss.detach()
        if edit is not None:
            shading = self.shading_loss(batch["composite"].to(dtype), target, batch["matte"][:, :1].to(dtype), edit)
            logs["shading_loss"] = shading.detach()
            loss = loss + self.shading_weight * shading
        if self.light_probe is not None and "light" in batch:
            probe = self.light_probe.loss(batch["light"])
            logs["light_probe_loss"] = probe.detach()
            loss = loss + self.light_probe_weight * probe
        if self.shading_head_weight and "shading" in batch:  # light-stage pairs: the maps' true coefficients
            head = F.mse_loss(self.model.shading_head.coefficients, batch["shading"].float())
            logs["shading_head_loss"] = head.detach()
            loss = loss + self.shading_head_weight * head
        if self.stage == 2:
            align = torch.stack([F.mse_loss(b.float(), e.detach().float()) for b, e in zip(from_bg, lighting)]).mean()
            logs["align_loss"] = align.detach()
            loss = loss + self.align_weight * self.align_scale * align
        logs["loss"] = loss.detach()
        return loss, logs


    def shading_loss(self, composite: torch.Tensor, target: torch.Tensor, matte: torch.Tensor,
                     edit: torch.Tensor) -> torch.Tensor:
        """Level-free shading error (module docstring): latents of the composite and target, the latent matte and
        the UNet's log-gain edit -> a scalar, the matte-weighted mean squared difference of the mean-free log gains."""
        codec = self.model.codec
        comp = from_model_space(codec.decode(composite.float()))
        wanted = from_model_space(codec.decode(target.float()))
        m = F.interpolate(matte.float(), size=comp.shape[-2:], mode="nearest")
        log_gain = codec.decode(edit.float()).clamp(-GAIN_LOG_LIMIT, GAIN_LOG_LIMIT)
        predicted = gain_field(comp * torch.exp(log_gain), comp, m, self.shading_sigma).log()
        true = gain_field(wanted, comp, m, self.shading_sigma).log()
        mass = m.sum(dim=(2, 3), keepdim=True).clamp_min(1e-6)
        centred = lambda g: g - (m * g).sum(dim=(2, 3), keepdim=True) / mass
        return ((centred(predicted) - centred(true)) ** 2 * m).sum() / (mass.sum() * comp.shape[1])

"""The whole lighting-aware diffusion model: codec, conditioned UNet, `F_bg`, `F_env`, null instruction.

A model folder (what training writes and `--model` accepts):

    relightful.json               {"format": "relightful-model", "version": 2, "config": ModelConfig, ...}
    unet/                         diffusers layout (config.json + diffusion_pytorch_model.safetensors)
    encoders.safetensors          F_bg ("lighting.*"), F_env ("panorama.*"), "null_embedding", and the shading
                                  head ("shading_head.*") and shading prior ("shading_prior.*") when the model
                                  has them
    vae/                          the AutoencoderKL, when the codec is one (so the folder is self-contained)
    scheduler/                    the sampler to use (diffusers format, any scheduler class) on the training
                                  betas and prediction type; in version-1 folders, the training noise schedule

Everything is safetensors and JSON; nothing is unpickled.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
import torch.nn.functional as F

from relightful.config import from_dict
from relightful.io import InputError, atomic_write_text, load_tensors, read_json, save_tensors
from relightful.io.paths import contained
from relightful.lighting.silhouette import silhouette_normals
from relightful.models.codecs import CodecConfig, PixelUnshuffleCodec, VaeCodec, build_codec, from_model_space
from relightful.models.lighting_encoder import EncoderConfig, LightingEncoder
from relightful.models.panorama_encoder import PanoramaConfig, PanoramaEncoder, log_encode
from relightful.models.shading_head import ShadingHead, upsample_log_gain
from relightful.models.shading_prior import ShadingPrior
from relightful.models.unet import (UNetConfig, adapter_feature_shapes, build_unet, check_features,
                                    load_instruct_pix2pix_unet, load_null_embedding)

FORMAT = "relightful-model"
FORMAT_VERSION = 2  # 2: scheduler/ is the sampler to use (class and settings); 1: it held the training schedule
CONFIG_FILE = "relightful.json"
ENCODERS_FILE = "encoders.safetensors"
GAIN_LOG_LIMIT = math.log(16.0)  # a gain edit stays within [1/16, 16]


@dataclass(frozen=True)
class ModelConfig:
    image_size: int = 64                     # the resolution the model is trained and sampled at
    codec: CodecConfig = field(default_factory=CodecConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    lighting: EncoderConfig = field(default_factory=EncoderConfig)
    panorama: PanoramaConfig = field(default_factory=PanoramaConfig)
    # The denoiser returns an edit of the composite: with x̂₀-prediction ("sample") the UNet learns the edit (the
    # relighting) rather than the whole image, so a short run starts from "paste unchanged", not from noise.
    residual: bool = False
    # How the edit applies: "add" (x̂₀ = composite + UNet, in latent space) or "gain" (pixel codecs only: the UNet's
    # output, pixel-shuffled, is a per-pixel log gain in linear light, x̂₀ = composite · exp(UNet), bounded to
    # [1/16, 16]). Relighting a Lambertian point multiplies it by the ratio of two shadings, whatever its albedo: a
    # gain is what a relighting is, and a global colour or exposure change is one constant, not a function of each
    # pixel's value as it is in sRGB.
    edit: str = "add"
    # The UNet also sees the silhouette's normals (lighting/silhouette.py) beside the matte: three more input
    # channels at latent resolution (a relighting gain is a ratio of two shadings of the surface's normals; the
    # normals need nothing the matte does not give). Off in both profiles: level on the tiny profile's val.
    silhouette_normals: bool = False
    # The relighting gain starts from the ratio of two predicted order-2 shadings of the silhouette normals
    # (models/shading_head.py); needs `silhouette_normals` and the gain edit. Off: level on val (docs/model.md).
    shading_head: bool = False
    # The relighting gain starts from the ratio of the shadings of two lightings estimated by two small networks
    # fitted on their own before stage 1 and then frozen (models/shading_prior.py, training/prior_fit.py); needs
    # `silhouette_normals` and the gain edit.
    shading_prior: bool = False
    # The UNet also reads that prior's log gain (one channel at latent resolution), so it can tell where to trust it
    # rather than only add to it blind; needs `shading_prior`.
    prior_input: bool = False
    # The prior's background estimator also reads each pixel's place in the frame (two coordinate channels): where a
    # bright region sits in the background says where the light comes from, and its pooled features lose the place.
    # Needs `shading_prior`.
    prior_coordinates: bool = False

    @property
    def shape_channels(self) -> int:
        """Input channels of the subject's shape: the matte, and its normals when `silhouette_normals`."""
        return 4 if self.silhouette_normals else 1

    @property
    def condition_channels(self) -> int:
        """The UNet's input channels besides its two latents: the shape, and the prior's log gain (`prior_input`)."""
        return self.shape_channels + int(self.prior_input)


class RelightModel(nn.Module):
    def __init__(self, config: ModelConfig, unet=None, null_embedding: torch.Tensor | None = None):
        super().__init__()
        self.config = config
        self.codec = build_codec(config.codec)
        if config.image_size % self.codec.factor:
            raise ValueError(f"image_size {config.image_size} is not a multiple of the codec factor {self.codec.factor}")
        latent = config.image_size // self.codec.factor
        self.latent_size = latent
        if unet is None:
            unet = (load_instruct_pix2pix_unet(config.unet.init_from, config.condition_channels)
                    if config.unet.init_from
                    else build_unet(config.unet, self.codec.channels, latent, config.condition_channels))
        if config.edit not in ("add", "gain"):
            raise ValueError(f"model edit must be 'add' or 'gain', got {config.edit!r}")
        if config.residual and config.edit == "gain" and not isinstance(self.codec, PixelUnshuffleCodec):
            raise ValueError("a gain edit needs the pixel_unshuffle codec (a VAE latent is not linear light)")
        expected_in = 2 * self.codec.channels + config.condition_channels
        if unet.config.in_channels != expected_in:
            raise ValueError(f"UNet takes {unet.config.in_channels} input channels; the codec, the shape "
                             f"and prior inputs need {expected_in}")
        self.unet = unet
        self.feature_shapes = adapter_feature_shapes(unet, (latent, latent))
        self.lighting = LightingEncoder(config.lighting, config.image_size, self.feature_shapes)
        self.panorama = PanoramaEncoder(config.panorama, self.feature_shapes)
        if null_embedding is None and config.unet.init_from:
            null_embedding = load_null_embedding(config.unet.init_from)
        if null_embedding is None:  # built from a config: a learned null instruction
            null_embedding = torch.randn(1, config.unet.null_tokens, unet.config.cross_attention_dim) * 0.02
        if null_embedding.ndim != 3 or null_embedding.shape[-1] != unet.config.cross_attention_dim:
            raise ValueError(f"null embedding of shape {tuple(null_embedding.shape)} does not fit a UNet with "
                             f"cross_attention_dim {unet.config.cross_attention_dim}")
        self.null_embedding = nn.Parameter(null_embedding.float())
        self.shading_head = None
        if config.shading_head:
            if not (config.silhouette_normals and config.residual and config.edit == "gain"):
                raise ValueError("model.shading_head needs model.silhouette_normals, model.residual and edit 'gain'")
            self.shading_head = ShadingHead(unet)
        self.shading_prior = None
        if config.shading_prior:
            if not (config.silhouette_normals and config.residual and config.edit == "gain"):
                raise ValueError("model.shading_prior needs model.silhouette_normals, model.residual and edit 'gain'")
            self.shading_prior = ShadingPrior(target_coordinates=config.prior_coordinates)
        for option in ("prior_input", "prior_coordinates"):
            if getattr(config, option) and not config.shading_prior:
                raise ValueError(f"model.{option} needs model.shading_prior")

    # --- conditioning -------------------------------------------------------------------------------------------
    def background_features(self, background: torch.Tensor) -> list[torch.Tensor]:
        """F_bg of backgrounds (B, 3, S, S) in [−1, 1] at the model's size."""
        features = self.lighting(background)
        check_features(features, self.feature_shapes, background.shape[0], "F_bg")
        return features

    def panorama_features(self, panorama: torch.Tensor) -> list[torch.Tensor]:
        """F_env of HDR maps (B, 3, h, 2h), linear radiance."""
        features = self.panorama(log_encode(panorama))
        check_features(features, self.feature_shapes, panorama.shape[0], "F_env")
        return features

    def matte_latent(self, matte: torch.Tensor) -> torch.Tensor:
        """(B, 1, S, S) matte -> the UNet's shape input (B, shape_channels, s, s) at latent resolution (area
        average): the matte, then its silhouette normals (x, y, z) when `config.silhouette_normals`."""
        size = (self.latent_size, self.latent_size)
        shape = F.interpolate(matte, size=size, mode="area")
        if self.config.silhouette_normals:
            normals = silhouette_normals(matte).to(matte.device, matte.dtype)
            shape = torch.cat([shape, F.interpolate(normals, size=size, mode="area")], dim=1)
        return shape

    def prior_inputs(self, composite: torch.Tensor, shape: torch.Tensor,
                     background: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """What the shading prior's estimators read: the composite's latents, the shape input (`matte_latent`) and
        the backgrounds (B, 3, S, S) in [−1, 1] -> linear composite, matte and background at (S, S). The matte is
        the latent-resolution one upsampled, in training and inference alike (the training cache keeps no other)."""
        linear = from_model_space(self.codec.decode(composite.float()))
        matte = F.interpolate(shape[:, :1].float(), size=linear.shape[-2:], mode="bilinear", align_corners=False)
        return linear, matte, from_model_space(background.float())

    def prior_log_gain(self, composite: torch.Tensor, shape: torch.Tensor,
                       background: torch.Tensor) -> torch.Tensor | None:
        """The shading prior's log gain as a latent (B, C, s, s), to add to the UNet's edit (`denoise`'s `prior`),
        from the inputs of `prior_inputs`; None when the model has no prior."""
        if self.shading_prior is None:
            return None
        log_gain = self.shading_prior.log_gain(*self.prior_inputs(composite, shape, background), shape)
        return self.codec.encode(upsample_log_gain(log_gain, self.config.image_size))

    def denoise(self, noisy: torch.Tensor, timesteps: torch.Tensor, composite: torch.Tensor, matte: torch.Tensor,
                features: list[torch.Tensor] | None, return_edit: bool = False, prior: torch.Tensor | None = None):
        """The UNet's prediction (ε, v or x̂₀, as trained; an edit of the composite when `config.residual`).
        `features=None` is the null lighting (no residuals); a zero composite the null image. `prior`: the shading
        prior's log gain (`prior_log_gain` of the real inputs), added to the edit whatever the pass drops. With
        `return_edit` (residual models), also the UNet's raw edit: (prediction, edit). With `config.prior_input`
        the UNet reads the prior too (`prior_channel`), so a model with it needs `prior`."""
        inputs = [noisy, composite, matte]
        if self.config.prior_input:
            if prior is None:
                raise ValueError("this model's UNet reads the shading prior (model.prior_input): pass prior=")
            inputs.append(self.prior_channel(prior).to(noisy.dtype))
        x = torch.cat(inputs, dim=1)
        context = self.null_embedding.to(x.dtype).expand(x.shape[0], -1, -1)
        extra = {}
        if features is not None:
            check_features(features, self.feature_shapes, x.shape[0])
            extra["down_intrablock_additional_residuals"] = [f.to(x.dtype) for f in features]  # a fresh list
        out = self.unet(x, timesteps, encoder_hidden_states=context, return_dict=False, **extra)[0]
        if self.shading_head is not None:
            log_gain = upsample_log_gain(self.shading_head.log_gain(matte), self.config.image_size)
            out = out + self.codec.encode(log_gain).to(out.dtype)
        if prior is not None:
            out = out + prior.to(out.dtype)
        if not self.config.residual:
            return out
        prediction = out + composite if self.config.edit == "add" else self.apply_gain(composite, out)
        return (prediction, out) if return_edit else prediction

    def prior_channel(self, prior: torch.Tensor) -> torch.Tensor:
        """The prior's log gain as a latent (`prior_log_gain`) -> one channel (B, 1, s, s) at latent resolution (area
        average; the gain is grey), the UNet input of `prior_input`."""
        log_gain = self.codec.decode(prior.float()).mean(dim=1, keepdim=True)
        return F.interpolate(log_gain, size=(self.latent_size, self.latent_size), mode="area")

    def apply_gain(self, composite: torch.Tensor, log_gain: torch.Tensor) -> torch.Tensor:
        """composite · exp(log_gain) in linear light, both given as pixel latents; the log gain is clamped to
        ±log 16 (as the harmonizer's gain field is), so no prediction can blow a pixel up."""
        linear = from_model_space(self.codec.decode(composite.float()))
        log_gain = self.codec.decode(log_gain.float()).clamp(-GAIN_LOG_LIMIT, GAIN_LOG_LIMIT)
        relit = linear * torch.exp(log_gain)
        # sRGB-encoded without the clip at 1: an overshoot must still pay in the loss (a clip has no gradient)
        encoded = torch.where(relit <= 0.0031308, 12.92 * relit, 1.055 * relit.clamp_min(1e-12) ** (1 / 2.4) - 0.055)
        return self.codec.encode(encoded * 2.0 - 1.0).to(composite.dtype)

    # --- folders ------------------------------------------------------------------------------------------------
    def encoder_state(self) -> dict[str, torch.Tensor]:
        state = {f"lighting.{k}": v for k, v in self.lighting.state_dict().items()}
        state.update({f"panorama.{k}": v for k, v in self.panorama.state_dict().items()})
        if self.shading_head is not None:
            state.update({f"shading_head.{k}": v for k, v in self.shading_head.state_dict().items()})
        if self.shading_prior is not None:
            state.update({f"shading_prior.{k}": v for k, v in self.shading_prior.state_dict().items()})
        state["null_embedding"] = self.null_embedding.detach()
        return state

    def save_pretrained(self, folder: str | Path, extra: dict | None = None, scheduler=None) -> None:
        """Write the model folder; a complete folder appears at once (written aside, then renamed). `scheduler`: the
        diffusers scheduler to sample the model with (on the betas and prediction type it was trained with), kept in
        `scheduler/`."""
        folder = Path(folder)
        tmp = folder.with_name(f".{folder.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        unet = self.unet
        unet.save_pretrained(tmp / "unet", safe_serialization=True)
        if scheduler is not None:
            scheduler.save_pretrained(tmp / "scheduler")
        save_tensors(tmp / ENCODERS_FILE, {k: v.float().contiguous() for k, v in self.encoder_state().items()})
        config = dataclasses.asdict(self.config)
        config["unet"]["init_from"] = None  # the weights are here now
        if isinstance(self.codec, VaeCodec):
            self.codec.vae.save_pretrained(tmp / "vae", safe_serialization=True)
            config["codec"]["vae_path"] = "vae"
        atomic_write_text(tmp / CONFIG_FILE, json.dumps({"format": FORMAT, "version": FORMAT_VERSION, "config": config,
                                                         **(extra or {})}, indent=2, sort_keys=True))
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            folder.rename(old)
            tmp.rename(folder)
            shutil.rmtree(old)
        else:
            tmp.rename(folder)

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "RelightModel":
        """Load a model folder; a missing, corrupt or mismatched file raises `InputError` naming it."""
        from diffusers import UNet2DConditionModel

        folder = Path(folder)
        meta = read_model_meta(folder)
        values = meta["config"]
        codec = values.get("codec") if isinstance(values, dict) else None  # a wrong type is from_dict's to name
        if isinstance(codec, dict) and codec.get("kind") == "vae" and isinstance(codec.get("vae_path", "vae"), str):
            # the VAE ships inside the model folder: a path out of it (absolute, '..', a symlink) is refused
            codec["vae_path"] = str(contained(folder, codec.get("vae_path", "vae"),
                                              f"{folder / CONFIG_FILE}: codec.vae_path"))
        try:  # typed: a wrong type or size names its key, as "config.image_size", in the file
            config = from_dict(ModelConfig, values, "config")
        except (TypeError, ValueError) as err:
            raise InputError(folder / CONFIG_FILE, f"invalid model config: {err}") from None
        unet_dir = folder / "unet"
        try:
            unet = UNet2DConditionModel.from_pretrained(unet_dir, local_files_only=True, use_safetensors=True)
        except (OSError, ValueError, RuntimeError, EnvironmentError) as err:
            raise InputError(unet_dir, f"cannot load the UNet ({str(err).splitlines()[0]})") from None
        state = load_tensors(folder / ENCODERS_FILE)
        if "null_embedding" not in state:
            raise InputError(folder / ENCODERS_FILE, "no null_embedding tensor: not a relightful encoders file")
        try:
            model = cls(config, unet=unet, null_embedding=state.pop("null_embedding"))
        except ValueError as err:
            raise InputError(folder, str(err)) from None
        parts = [("lighting.", model.lighting), ("panorama.", model.panorama)]
        if model.shading_head is not None:
            parts.append(("shading_head.", model.shading_head))
        if model.shading_prior is not None:
            parts.append(("shading_prior.", model.shading_prior))
        for prefix, module in parts:
            part = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            try:
                module.load_state_dict(part, strict=True)
            except RuntimeError as err:
                raise InputError(folder / ENCODERS_FILE, f"weights do not fit the architecture in {CONFIG_FILE} "
                                 f"({str(err).splitlines()[0]} ...)") from None
        return model


def read_model_meta(folder: str | Path) -> dict:
    folder = Path(folder)
    path = folder / CONFIG_FILE
    if not folder.is_dir():
        raise InputError(folder, "model folder not found")
    meta = read_json(path, missing="not a relightful model folder (file missing)")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "config" not in meta:
        raise InputError(path, f"not a relightful model config (format must be {FORMAT!r})")
    return meta


__all__ = ["ModelConfig", "RelightModel", "PixelUnshuffleCodec", "read_model_meta"]

"""Latent codecs: images in [−1, 1] to the latent space the diffusion UNet works in, and back (DESIGN 3.5).

Two implementations of one interface (`encode`, `decode`, `channels`, `factor`):
- `VaeCodec`: a diffusers `AutoencoderKL` loaded from a local folder (real scale; nothing is downloaded);
- `PixelUnshuffleCodec`: the exact, parameter-free space-to-depth rearrangement, for runs without pretrained
  weights (the tiny profile): decode(encode(x)) == x bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from relightful.io.color import srgb_decode, srgb_encode
from relightful.io.errors import InputError


def to_model_space(linear: torch.Tensor) -> torch.Tensor:
    """Linear images -> sRGB-encoded in [−1, 1]: what the codecs and F_bg take (DESIGN 3.4)."""
    return srgb_encode(linear.float()) * 2.0 - 1.0


def from_model_space(images: torch.Tensor) -> torch.Tensor:
    """Decoded images in [−1, 1] (clipped) -> linear."""
    return srgb_decode((images.float().clamp(-1, 1) + 1) / 2)


@dataclass(frozen=True)
class CodecConfig:
    kind: str = "pixel_unshuffle"   # "pixel_unshuffle" | "vae"
    factor: int = 2                 # pixel_unshuffle: spatial downsampling factor
    vae_path: str | None = None     # vae: a local diffusers AutoencoderKL folder (config.json + safetensors)


class PixelUnshuffleCodec(torch.nn.Module):
    """Space-to-depth by `factor`: (B, 3, H, W) -> (B, 3·f², H/f, W/f). No parameters, exact inverse."""

    def __init__(self, factor: int = 2):
        super().__init__()
        if factor < 1:
            raise ValueError(f"pixel_unshuffle factor must be ≥ 1, got {factor}")
        self.factor = factor
        self.channels = 3 * factor * factor

    @property
    def identity(self) -> str:
        return f"pixel_unshuffle-{self.factor}"

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return F.pixel_unshuffle(images, self.factor)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(latents, self.factor)

    def mirror(self, latents: torch.Tensor) -> torch.Tensor:
        """The latents of the left-right mirrored images, exactly (the sub-pixels of each block swap too)."""
        return self.encode(self.decode(latents).flip(-1))


class VaeCodec(torch.nn.Module):
    """A diffusers `AutoencoderKL` from a local folder; latents are the posterior mode times the scaling factor
    (deterministic, so they can be cached once per pair)."""

    def __init__(self, path: str | Path):
        super().__init__()
        from diffusers import AutoencoderKL

        path = Path(path)
        if not (path / "config.json").is_file():
            raise InputError(path, "not a diffusers AutoencoderKL folder (config.json missing); weights are never "
                                   "downloaded, give a local folder")
        try:
            self.vae = AutoencoderKL.from_pretrained(path, local_files_only=True, use_safetensors=True)
        except (OSError, ValueError, RuntimeError) as err:
            raise InputError(path, f"cannot load AutoencoderKL ({err})") from None
        self.vae.requires_grad_(False).eval()
        self.path = path
        self.factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.channels = self.vae.config.latent_channels
        self.scaling = float(self.vae.config.scaling_factor)

    @property
    def identity(self) -> str:
        import hashlib

        weights = sorted(self.path.glob("*.safetensors"))
        digest = hashlib.sha256(b"".join(p.name.encode() + str(p.stat().st_size).encode() for p in weights))
        return f"vae-{digest.hexdigest()[:12]}"

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        dtype = next(self.vae.parameters()).dtype
        return self.vae.encode(images.to(dtype)).latent_dist.mode().float() * self.scaling

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        dtype = next(self.vae.parameters()).dtype
        return self.vae.decode((latents / self.scaling).to(dtype)).sample.float()

    def mirror(self, latents: torch.Tensor) -> torch.Tensor:
        """The latents of the left-right mirrored images, approximated by mirroring the latents (the VAE is close to
        mirror-equivariant; decoding and re-encoding every training sample would cost more than the step)."""
        return latents.flip(-1)


def build_codec(config: CodecConfig) -> PixelUnshuffleCodec | VaeCodec:
    if config.kind == "pixel_unshuffle":
        return PixelUnshuffleCodec(config.factor)
    if config.kind == "vae":
        if not config.vae_path:
            raise ValueError("codec kind 'vae' needs vae_path (a local AutoencoderKL folder)")
        return VaeCodec(config.vae_path)
    raise ValueError(f"unknown codec kind {config.kind!r}; expected 'pixel_unshuffle' or 'vae'")

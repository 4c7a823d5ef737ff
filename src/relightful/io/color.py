"""The sRGB transfer curve (IEC 61966-2-1) between linear radiance and display values in [0, 1]."""

from __future__ import annotations

from functools import cache

import numpy as np
import torch

from relightful.io.dispatch import to_torch, like


def srgb_encode(linear):
    """Linear [0, ∞) -> sRGB [0, 1] (values above 1 clip). numpy or torch in, same kind out."""
    x = to_torch(linear).clamp(0.0, 1.0)
    out = torch.where(x <= 0.0031308, 12.92 * x, 1.055 * x.clamp_min(1e-12) ** (1 / 2.4) - 0.055)
    return like(out, linear)


def srgb_decode(encoded):
    """sRGB [0, 1] -> linear [0, 1]."""
    x = to_torch(encoded).clamp(0.0, 1.0)
    out = torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)
    return like(out, encoded)


@cache
def _decode_table() -> np.ndarray:
    return srgb_decode(torch.arange(256, dtype=torch.float32) / 255.0).numpy()


def srgb_decode_8bit(pixels: np.ndarray) -> torch.Tensor:
    """8-bit sRGB (uint8 array) -> linear float32 tensor of the same shape, through a table of `srgb_decode`'s 256
    values: a lookup per pixel instead of a power (a 2048² photo decodes 10× faster)."""
    if pixels.dtype != np.uint8:
        raise TypeError(f"expected uint8 pixels, got {pixels.dtype}")
    return torch.from_numpy(_decode_table()[pixels])


def to_uint8(encoded) -> np.ndarray:
    """Display values in [0, 1] -> uint8 with rounding."""
    x = to_torch(encoded).detach().float().clamp(0.0, 1.0)
    return (x * 255.0 + 0.5).to(torch.uint8).cpu().numpy()


def tonemap(linear, exposure: float = 1.0) -> np.ndarray:
    """Linear radiance -> 8-bit sRGB: multiply by `exposure`, clip, encode (DESIGN 3.1 backgrounds)."""
    return to_uint8(srgb_encode(to_torch(linear) * exposure))


def auto_exposure(linear, key: float = 0.18) -> float:
    """Exposure that maps the log-average luminance to the photographic middle grey `key` (Reinhard et al. 2002)."""
    x = to_torch(linear).double()
    lum = 0.2126 * x[..., 0] + 0.7152 * x[..., 1] + 0.0722 * x[..., 2]
    log_avg = torch.exp(torch.log(lum.clamp_min(1e-6)).mean()).item()
    return key / max(log_avg, 1e-6)

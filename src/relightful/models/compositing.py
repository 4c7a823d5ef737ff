"""The geometry and the gain field of inference (steps 1, 2 and 4 of harmonizer.py): cover-resizing the background,
the square canvas, resizing in linear light, and the smooth gain that carries a relighting over to the input's
pixels; and the plain paste the results are shown beside. Also used by training (the shading loss), evaluation (the
oracle bound, the real-portrait grid) and serving (the page's paste | result)."""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from relightful.io import srgb_decode_8bit, srgb_encode, to_uint8


def _cover_scaled(bg: np.ndarray, height: int, width: int) -> tuple[np.ndarray, int, int]:
    """The background scaled to cover (height, width), and the top-left of the centred crop."""
    hb, wb = bg.shape[:2]
    s = max(height / hb, width / wb)
    sh, sw = max(height, round(hb * s)), max(width, round(wb * s))
    if (sh, sw) != (hb, wb):
        bg = cv2.resize(bg, (sw, sh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC)
    return bg, (sh - height) // 2, (sw - width) // 2


def cover_resize(bg: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize `bg` (H', W', 3) to cover `size` = (H, W) and centre-crop: the background pixels of the output."""
    scaled, top, left = _cover_scaled(bg, *size)
    return np.ascontiguousarray(scaled[top:top + size[0], left:left + size[1]])


def paste(fg8: np.ndarray, matte: np.ndarray, bg8: np.ndarray) -> np.ndarray:
    """The portrait composited unchanged over the cover-resized background, in linear light (as the model does)."""
    bg = srgb_decode_8bit(cover_resize(bg8, fg8.shape[:2]))
    fg = srgb_decode_8bit(fg8)
    m = torch.from_numpy(np.asarray(matte, np.float32))[..., None]
    return to_uint8(srgb_encode(m * fg + (1 - m) * bg))


def cover_canvas(bg: np.ndarray, size: tuple[int, int], side: int) -> tuple[np.ndarray, np.ndarray]:
    """(cover_resize(bg, size), the side×side square centred on it in the same scaled background), mirrored
    where the square reaches past the photo. The square's centre (H, W) window equals the first result."""
    height, width = size
    scaled, top, left = _cover_scaled(bg, height, width)
    sh, sw = scaled.shape[:2]
    r0, c0 = top - (side - height) // 2, left - (side - width) // 2
    pads = ((max(0, -r0), max(0, r0 + side - sh)), (max(0, -c0), max(0, c0 + side - sw)), (0, 0))
    padded = np.pad(scaled, pads, mode="symmetric") if any(p for p in pads[:2] for p in p) else scaled
    r0, c0 = r0 + pads[0][0], c0 + pads[1][0]
    return (np.ascontiguousarray(scaled[top:top + height, left:left + width]),
            np.ascontiguousarray(padded[r0:r0 + side, c0:c0 + side]))


def uses_gain_field(size: tuple[int, int], image_size: int) -> bool:
    """Whether an input of `size` = (H, W) is restored through the gain field (larger than the model's square)."""
    return max(size) > image_size


def resize_square(x: torch.Tensor, side: int) -> torch.Tensor:
    """(B, C, n, n) -> (B, C, side, side), antialiased when shrinking (linear-light values in, linear out)."""
    if x.shape[-1] == side:
        return x
    return F.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False)


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    if sigma <= 0:
        return x
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def gain_field(generated: torch.Tensor, composite: torch.Tensor, matte: torch.Tensor, sigma: float = 1.0,
               eps: float = 2e-3, limits: tuple[float, float] = (1 / 16, 16.0)) -> torch.Tensor:
    """Per-pixel, per-channel gain (B, 3, s, s) turning the input foreground into the relit one, all linear at the
    model's resolution: `(G(m·gen) + ε) / (G(m·comp) + ε)` with G a Gaussian of `sigma` model pixels. Blurring both
    with the same matte-weighted kernel makes it a local weighted mean of the ratio (a uniform relighting `gen = g·comp`
    gives exactly g), keeps the model's pixel noise out of the full-resolution result, and ε pulls the gain towards 1
    where the foreground is black or absent. The clamp bounds what an unreliable prediction can do."""
    num = _gaussian_blur(matte * generated, sigma)
    den = _gaussian_blur(matte * composite, sigma)
    return ((num + eps) / (den + eps)).clamp(*limits)


def scale_gain_shape(gain: torch.Tensor, matte: torch.Tensor, scale: float,
                     limits: tuple[float, float] = (1 / 16, 16.0)) -> torch.Tensor:
    """A gain field (B, 3, s, s) whose shape is `scale` times as strong: the log of its channel-mean gain, less that
    log's matte-weighted mean, times `scale` − 1 is added to every channel's log. The level (the mean log) and the
    colour (the ratios between channels) stay. A model trained on squared errors hedges where the lighting is
    uncertain and draws the shading flatter than its own estimate; scaling the shape undoes part of that."""
    if scale == 1.0:
        return gain
    log_gain = gain.mean(dim=1, keepdim=True).log()
    mean = (log_gain * matte).sum(dim=(2, 3), keepdim=True) / matte.sum(dim=(2, 3), keepdim=True).clamp_min(1e-6)
    return (gain * torch.exp((scale - 1.0) * (log_gain - mean))).clamp(*limits)


def sample_window(field: torch.Tensor, side: int, top: int, left: int, height: int, width: int) -> torch.Tensor:
    """Bilinear upsampling of a (B, C, s, s) field over a side×side canvas, evaluated only on the output window
    (identical to interpolating to side×side then cropping, without the side² buffer)."""
    ys = (torch.arange(height, device=field.device, dtype=field.dtype) + top + 0.5) / side * 2 - 1
    xs = (torch.arange(width, device=field.device, dtype=field.dtype) + left + 0.5) / side * 2 - 1
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)[None].expand(field.shape[0], -1, -1, -1)
    return F.grid_sample(field, grid, mode="bilinear", padding_mode="border", align_corners=False)


__all__ = ["cover_canvas", "cover_resize", "gain_field", "resize_square", "sample_window", "scale_gain_shape",
           "uses_gain_field"]

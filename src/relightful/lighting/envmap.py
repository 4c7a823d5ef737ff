"""Latitude-longitude environment maps: pixel directions, solid angles, rotation, resampling (DESIGN 3.1).

Pixel (i, j) of an H x 2H map has polar angle θ = π(i+0.5)/H from +y and longitude φ = 2π(j+0.5)/W − π; its
direction is (sin θ sin φ, cos θ, −sin θ cos φ), so the centre column looks along −z, the camera's view direction.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch

from relightful.io.dispatch import like, to_torch


def latlong_angles(height: int) -> tuple[np.ndarray, np.ndarray]:
    """Polar angles θ (H,) and longitudes φ (2H,) of the pixel centres, float64."""
    if height < 1:
        raise ValueError(f"height must be positive, got {height}")
    width = 2 * height
    theta = np.pi * (np.arange(height) + 0.5) / height
    phi = 2 * np.pi * (np.arange(width) + 0.5) / width - np.pi
    return theta, phi


def latlong_directions(height: int, dtype=np.float32) -> np.ndarray:
    """(H, 2H, 3) unit vectors of the pixel centres (float32 unless `dtype` says otherwise)."""
    theta, phi = latlong_angles(height)
    t, p = np.meshgrid(theta, phi, indexing="ij")
    d = np.stack([np.sin(t) * np.sin(p), np.cos(t), -np.sin(t) * np.cos(p)], axis=-1)
    return d.astype(dtype)


def latlong_solid_angles(height: int, dtype=np.float32) -> np.ndarray:
    """(H, 2H) pixel solid angles sin θ · (π/H) · (2π/W); they sum to 4π (to O(1/H²))."""
    theta, _ = latlong_angles(height)
    width = 2 * height
    row = np.sin(theta) * (np.pi / height) * (2 * np.pi / width)
    return np.repeat(row[:, None], width, axis=1).astype(dtype)


def direction_to_pixel(directions) -> tuple[np.ndarray, np.ndarray]:
    """Continuous (row, column) coordinates of unit directions in an H=1 map; multiply by H for a real map.

    Returned as fractions: row = θ/π, col = (φ + π)/2π, so pixel centre (i, j) of an H x W map sits at
    (row·H − 0.5, col·W − 0.5).
    """
    d = np.asarray(directions, dtype=np.float64)
    theta = np.arccos(np.clip(d[..., 1], -1.0, 1.0))
    phi = np.arctan2(d[..., 0], -d[..., 2])
    return theta / np.pi, (phi + np.pi) / (2 * np.pi)


def check_envmap(env, name: str = "environment map") -> None:
    """Raise ValueError unless env is (..., H, 2H, 3)."""
    shape = tuple(env.shape)
    if len(shape) < 3 or shape[-1] != 3 or shape[-2] != 2 * shape[-3]:
        raise ValueError(f"{name} must be (..., H, 2H, 3) lat-long, got shape {shape}")


def rotate_envmap(env, degrees: float):
    """Rotate a map about +y: radiance that came from longitude φ now comes from φ + degrees.

    A column roll when the shift is a whole number of pixels (exact; 360° is the identity), linear interpolation
    between the two neighbouring columns otherwise. Works on (..., H, W, 3).
    """
    check_envmap(env)
    x = to_torch(env)
    width = x.shape[-2]
    shift = (float(degrees) % 360.0) / 360.0 * width
    whole = math.floor(shift)
    frac = shift - whole
    if frac < 1e-9 or frac > 1 - 1e-9:
        out = torch.roll(x, int(round(shift)) % width, dims=-2)
    else:
        a = torch.roll(x, whole, dims=-2)
        b = torch.roll(x, whole + 1, dims=-2)
        out = (1.0 - frac) * a + frac * b
    return like(out, env)


def resize_envmap(env: np.ndarray, height: int) -> np.ndarray:
    """Resample an (H, 2H, 3) map to (height, 2·height, 3), preserving ∫L dω when downsampling.

    Downsampling averages with solid-angle weights (rows near the poles count less); upsampling is bilinear.
    """
    check_envmap(env)
    src = np.asarray(env, dtype=np.float32)
    h = src.shape[0]
    if height == h:
        return src.copy()
    size = (2 * height, height)
    if height > h:
        return cv2.resize(src, size, interpolation=cv2.INTER_LINEAR)
    weight = np.sin(np.pi * (np.arange(h) + 0.5) / h).astype(np.float32)[:, None]
    weighted = cv2.resize(src * weight[..., None], size, interpolation=cv2.INTER_AREA)
    norm = cv2.resize(np.repeat(weight, 2 * h, axis=1), size, interpolation=cv2.INTER_AREA)
    return (weighted / np.maximum(norm, 1e-12)[..., None]).astype(np.float32)


def sample_envmap(env: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """Bilinear lookup of an (H, W, C) map at unit directions (..., 3); longitude wraps, latitude clamps."""
    h, w, c = env.shape
    d = directions.to(torch.float64)
    theta = torch.arccos(d[..., 1].clamp(-1.0, 1.0))
    phi = torch.atan2(d[..., 0], -d[..., 2])
    row = (theta * (h / math.pi) - 0.5).clamp(0.0, h - 1.0)
    col = (phi + math.pi) * (w / (2 * math.pi)) - 0.5
    r0 = row.floor()
    c0 = col.floor()
    fr = (row - r0).to(env.dtype)[..., None]
    fc = (col - c0).to(env.dtype)[..., None]
    r0 = r0.long()
    r1 = (r0 + 1).clamp_max(h - 1)
    c0 = c0.long() % w
    c1 = (c0 + 1) % w
    flat = env.reshape(h * w, c)

    def at(r, col_idx):
        return flat[(r * w + col_idx).reshape(-1)].reshape(*r.shape, c)

    top = at(r0, c0) * (1 - fc) + at(r0, c1) * fc
    bottom = at(r1, c0) * (1 - fc) + at(r1, c1) * fc
    return top * (1 - fr) + bottom * fr

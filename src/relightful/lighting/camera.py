"""Perspective views of an environment map: the background a pinhole camera sees (DESIGN 3.1)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from relightful.io.dispatch import like, to_torch
from relightful.lighting.envmap import check_envmap


def camera_rays(fov_deg: float, yaw_deg: float = 0.0, pitch_deg: float = 0.0, size: tuple[int, int] = (256, 256)) -> torch.Tensor:
    """(h, w, 3) float64 unit view directions of a pinhole camera's pixel centres.

    `fov_deg` is the horizontal field of view; yaw > 0 turns the view towards +x, pitch > 0 up; yaw = pitch = 0
    looks along −z at the horizon. Image row 0 is the top.
    """
    if not 0.0 < fov_deg < 180.0:
        raise ValueError(f"fov_deg must be in (0, 180), got {fov_deg}")
    h, w = size
    half = math.tan(math.radians(fov_deg) / 2.0)
    x = (2.0 * (torch.arange(w, dtype=torch.float64) + 0.5) / w - 1.0) * half
    y = -(2.0 * (torch.arange(h, dtype=torch.float64) + 0.5) / h - 1.0) * half * (h / w)
    yaw, pitch = math.radians(yaw_deg), math.radians(pitch_deg)
    forward = torch.tensor([math.sin(yaw) * math.cos(pitch), math.sin(pitch), -math.cos(yaw) * math.cos(pitch)],
                           dtype=torch.float64)
    right = torch.tensor([math.cos(yaw), 0.0, math.sin(yaw)], dtype=torch.float64)
    up = torch.linalg.cross(right, forward)
    rays = forward + x[None, :, None] * right + y[:, None, None] * up
    return rays / rays.norm(dim=-1, keepdim=True)


def project_to_pixel(direction, fov_deg: float, yaw_deg: float = 0.0, pitch_deg: float = 0.0,
                     size: tuple[int, int] = (256, 256)) -> tuple[float, float]:
    """Continuous (row, column) where a world direction lands in the crop (pixel centres at integer + 0.5)."""
    h, w = size
    half = math.tan(math.radians(fov_deg) / 2.0)
    yaw, pitch = math.radians(yaw_deg), math.radians(pitch_deg)
    forward = np.array([math.sin(yaw) * math.cos(pitch), math.sin(pitch), -math.cos(yaw) * math.cos(pitch)])
    right = np.array([math.cos(yaw), 0.0, math.sin(yaw)])
    up = np.cross(right, forward)
    d = np.asarray(direction, dtype=np.float64)
    depth = d @ forward
    if depth <= 0:
        raise ValueError("direction is behind the camera")
    x, y = (d @ right) / depth, (d @ up) / depth
    col = (x / half + 1.0) * w / 2.0
    row = (1.0 - y / (half * h / w)) * h / 2.0
    return row, col


def pad_longitude(env_chw: torch.Tensor) -> torch.Tensor:
    """(..., C, H, W) map -> (..., C, H, 2W + 4) with W/2 + 2 columns wrapped onto each side, for `crop_grid`."""
    w = env_chw.shape[-1]
    pad = w // 2 + 2
    return torch.cat([env_chw[..., w - pad:], env_chw, env_chw[..., :pad]], dim=-1)


def crop_grid(fov_deg, yaw_deg, pitch_deg, size: tuple[int, int], map_height: int) -> torch.Tensor:
    """`grid_sample` coordinates of pinhole views into a `pad_longitude`-padded map: (h, w, 2) float32 for one
    pose, (B, h, w, 2) when the angles are sequences of B poses (computed together, no per-pose Python work).

    Exact pinhole geometry: in the camera's yaw-free frame a pixel (x, y) on the image plane has direction
    (x, sin p + y cos p, −cos p + y sin p), so its longitude is yaw + atan2(x, cos p − y sin p) and its polar angle
    atan2(√(x² + (cos p − y sin p)²), sin p + y cos p). grid_sample's bilinear lookup with border padding equals
    `sample_envmap` (longitude wraps through the padding, latitude clamps).
    """
    single = np.ndim(fov_deg) == 0
    fov, yaw, pitch = (torch.tensor(np.atleast_1d(np.asarray(a, dtype=np.float64))) for a in (fov_deg, yaw_deg, pitch_deg))
    if not bool(((fov > 0.0) & (fov < 180.0)).all()):
        raise ValueError(f"fov_deg must be in (0, 180), got {fov_deg}")
    h, w = size
    width = 2 * map_height
    half = torch.tan(torch.deg2rad(fov) / 2.0).float()[:, None, None]  # (B, 1, 1)
    u = (2.0 * (torch.arange(w, dtype=torch.float32) + 0.5) / w - 1.0)[None, None, :]
    v = -(2.0 * (torch.arange(h, dtype=torch.float32) + 0.5) / h - 1.0)[None, :, None] * (h / w)
    x, y = u * half, v * half  # (B, 1, w), (B, h, 1)
    sp = torch.sin(torch.deg2rad(pitch)).float()[:, None, None]
    cp = torch.cos(torch.deg2rad(pitch)).float()[:, None, None]
    depth = cp - y * sp  # (B, h, 1): −z of the yaw-free direction
    up = sp + y * cp
    phi = torch.atan2(x, depth)  # (B, h, w)
    theta = torch.atan2(torch.sqrt(x**2 + depth**2), up)
    centre = (torch.remainder(torch.deg2rad(yaw) + math.pi, 2 * math.pi) * (width / (2 * math.pi))).float()
    col = centre[:, None, None] + phi * (width / (2 * math.pi)) - 0.5 + (width // 2 + 2)
    padded = 2 * width + 4
    gx = (2.0 * col + 1.0) / padded - 1.0
    gy = (2.0 / math.pi) * theta - 1.0
    grid = torch.stack([gx, gy], dim=-1)
    return grid[0] if single else grid


def perspective_crop(env, fov_deg: float, yaw_deg: float = 0.0, pitch_deg: float = 0.0,
                     size: tuple[int, int] = (256, 256)):
    """Linear float32 (h, w, 3) pinhole view of an (H, 2H, 3) map, bilinearly sampled."""
    check_envmap(env)
    x = to_torch(env).float()
    padded = pad_longitude(x.permute(2, 0, 1))[None]
    grid = crop_grid(fov_deg, yaw_deg, pitch_deg, size, x.shape[0])[None]
    out = F.grid_sample(padded, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return like(out[0].permute(1, 2, 0).contiguous(), env)

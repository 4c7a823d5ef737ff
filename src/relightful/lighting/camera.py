"""Perspective views of an environment map: the background a pinhole camera sees (DESIGN 3.1)."""

from __future__ import annotations

import math

import numpy as np
import torch

from relightful.io.dispatch import like, to_torch
from relightful.lighting.envmap import check_envmap, sample_envmap


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


def perspective_crop(env, fov_deg: float, yaw_deg: float = 0.0, pitch_deg: float = 0.0,
                     size: tuple[int, int] = (256, 256)):
    """Linear float32 (h, w, 3) pinhole view of an (H, 2H, 3) map, bilinearly sampled."""
    check_envmap(env)
    x = to_torch(env).float()
    out = sample_envmap(x, camera_rays(fov_deg, yaw_deg, pitch_deg, size))
    return like(out.float(), env)

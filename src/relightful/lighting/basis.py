"""The LED basis: projecting an environment map onto a light stage's LEDs and back (DESIGN 3.2).

Each LED k has a Gaussian lobe G_k(ω) = exp(−angle(ω, d_k)² / 2σ²); the basis B_k = G_k / Σ_j G_j is a partition
of unity, computed as a softmax so it stays exact where every lobe underflows. The weights w_k = ∫ L B_k dω are one
matrix product with a precomputed N x (H·W) matrix that already holds the pixel solid angles, hence
Σ_k w_k = ∫ L dω exactly.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from relightful.io.dispatch import like, to_torch
from relightful.lighting.envmap import check_envmap, latlong_directions, latlong_solid_angles
from relightful.lighting.rig import LedRig


def _squared_angles(rig: LedRig, height: int) -> torch.Tensor:
    """(N, H·W) float64 squared angles between LED directions and pixel directions."""
    dirs = torch.from_numpy(latlong_directions(height, np.float64).reshape(-1, 3))  # float64: weights are exact
    cos = torch.tensor(rig.directions) @ dirs.T
    return torch.arccos(cos.clamp(-1.0, 1.0)) ** 2


@functools.lru_cache(maxsize=4)
def _projection_cached(fingerprint: str, height: int, rig: LedRig) -> torch.Tensor:
    sigma = np.radians(rig.sigma_deg)
    basis = torch.softmax(-_squared_angles(rig, height) / (2 * sigma**2), dim=0)
    omega = torch.from_numpy(latlong_solid_angles(height, np.float64).reshape(-1))
    return (basis * omega).contiguous()


def led_projection_matrix(rig: LedRig, height: int) -> torch.Tensor:
    """(N, H·2H) float64 matrix P with P[k, p] = B_k(ω_p) Ω_p, cached per rig geometry and map height."""
    return _projection_cached(rig.fingerprint, int(height), rig)


def envmap_to_led_weights(env, rig: LedRig):
    """LED weights w_k = ∫ L B_k dω of a map (H, 2H, 3) -> (N, 3), or of a batch (B, H, 2H, 3) -> (B, N, 3); float64."""
    check_envmap(env)
    x = to_torch(env).double()
    h, w = x.shape[-3], x.shape[-2]
    batch = x.shape[:-3]
    pixels = x.reshape(-1, h * w, 3)  # (B, HW, 3)
    proj = led_projection_matrix(rig, h)  # (N, HW)
    weights = torch.einsum("np,bpc->bnc", proj, pixels)
    return like(weights.reshape(*batch, rig.n_leds, 3), env)


@functools.lru_cache(maxsize=4)
def _splat_cached(fingerprint: str, height: int, rig: LedRig) -> torch.Tensor:
    sigma = np.radians(rig.sigma_deg)
    lobes = torch.exp(-_squared_angles(rig, height) / (2 * sigma**2))  # (N, HW)
    omega = torch.from_numpy(latlong_solid_angles(height, np.float64).reshape(-1))
    integral = (lobes * omega).sum(dim=1, keepdim=True)
    return lobes / integral.clamp_min(1e-300)


def led_weights_to_envmap(weights, rig: LedRig, height: int = 16):
    """A small lat-long map (height, 2·height, 3) whose LED lobes carry the weights: ∫ map dω = Σ_k w_k.

    Each LED's weight is splatted with its Gaussian lobe normalised to unit integral at this resolution.
    Accepts (N, 3) or (B, N, 3); float32 out.
    """
    w = to_torch(weights).double()
    if w.shape[-2:] != (rig.n_leds, 3):
        raise ValueError(f"weights must be (..., {rig.n_leds}, 3) for rig {rig.name!r}, got {tuple(w.shape)}")
    splat = _splat_cached(rig.fingerprint, int(height), rig)  # (N, HW)
    env = torch.einsum("np,...nc->...pc", splat, w)
    return like(env.reshape(*w.shape[:-2], height, 2 * height, 3).float(), weights)

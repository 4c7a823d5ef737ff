"""Low-order spherical harmonics of lighting: the irradiance a Lambertian surface of normal n receives.

Ramamoorthi & Hanrahan (2001): irradiance is the lighting convolved with the clamped cosine, whose spherical
harmonic coefficients fall off so fast that orders 0-2 (9 numbers per colour) hold it to a few percent. Order 1
alone (the mean direction and its level, `1 + 2·v·n`) is not enough: relighting light-stage pairs by the ratio of
the true order-1 irradiances left 28° of light-direction error on val, by order 2, 16° (paste: 37°).

A shading here is level-free: `S(n) = 1 + Σ_{j=1..8} r_j Y_j(n) / Y_0`, with r_j = c_j / c_0 the irradiance
coefficients of the lighting's luminance over its constant term, so a relighting's shape is the ratio of two
shadings and its level and colour are left to whatever predicts them.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from relightful.lighting.envmap import latlong_directions, latlong_solid_angles, rotate_envmap
from relightful.lighting.sky import LUMINANCE

Y0 = 0.5 / math.sqrt(math.pi)
# the clamped cosine's coefficients per order (π, 2π/3, π/4), one per basis function
COSINE_LOBE = torch.tensor([math.pi] + [2 * math.pi / 3] * 3 + [math.pi / 4] * 5, dtype=torch.float64)
# basis functions odd in x (they change sign in a left-right mirror): x, xy, xz (indices 3, 4, 7 of sh_basis)
ODD_IN_X = (3, 4, 7)
FLOOR = 0.05  # a shading never falls below this share of its constant term (order 2 can dip below 0)


def sh_basis(directions: torch.Tensor) -> torch.Tensor:
    """(..., 3) unit vectors (camera space, +y up) -> (..., 9) real spherical harmonics of orders 0-2."""
    x, y, z = directions.unbind(-1)
    return torch.stack([torch.full_like(x, Y0), 0.488603 * y, 0.488603 * z, 0.488603 * x,
                        1.092548 * x * y, 1.092548 * y * z, 0.315392 * (3 * z * z - 1), 1.092548 * x * z,
                        0.546274 * (x * x - y * y)], dim=-1)


def shading_coefficients(env: torch.Tensor, rotation_deg: float = 0.0) -> torch.Tensor:
    """(8,) float32: the level-free irradiance coefficients r_j (module docstring) of a lat-long map (h, 2h, 3)
    rotated by `rotation_deg`, from its luminance."""
    env = rotate_envmap(env.double(), float(rotation_deg))
    height = env.shape[0]
    weight = (env @ torch.from_numpy(LUMINANCE).double()).clamp_min(0) * torch.from_numpy(
        latlong_solid_angles(height, np.float64))
    basis = sh_basis(torch.from_numpy(latlong_directions(height, np.float64)))
    c = (weight[..., None] * basis).sum(dim=(0, 1)) * COSINE_LOBE
    return (c[1:] / c[0].clamp_min(1e-12)).float()


def shading(coefficients: torch.Tensor, normals: torch.Tensor) -> torch.Tensor:
    """Level-free shadings (B, 1, H, W) of coefficients (B, 8) on normals (B, 3, H, W) (not necessarily unit:
    they are normalised), floored at FLOOR."""
    n = normals / normals.norm(dim=1, keepdim=True).clamp_min(1e-6)
    basis = sh_basis(n.permute(0, 2, 3, 1))[..., 1:] / Y0                     # (B, H, W, 8)
    s = 1 + (basis * coefficients[:, None, None, :].to(basis.dtype)).sum(-1)
    return s.clamp_min(FLOOR)[:, None]


def mirror_coefficients(coefficients: torch.Tensor) -> torch.Tensor:
    """Coefficients (..., 8k) of the left-right mirrored lighting (k shadings side by side)."""
    out = coefficients.clone()
    odd = [j - 1 for j in ODD_IN_X]
    for start in range(0, coefficients.shape[-1], 8):
        out[..., [start + j for j in odd]] = -out[..., [start + j for j in odd]]
    return out

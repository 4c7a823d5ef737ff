"""An auxiliary task for stages 1-2 (`train.light_probe_weight`): the UNet's middle features must tell where the light
of both lightings of a pair comes from.

To relight, the UNet has to divide the composite by its old shading and multiply it by the new one. The new lighting
reaches it through `F_bg`; the old one it must read from the composite's own shading, and the diffusion loss, which
is dominated by the overall level, teaches that slowly: trained from the full HDR map instead of the background, the
tiny model's light-direction error on val was no better (27.6° against 28.7°), so the lighting's source was not the
limit. A small head on the pooled middle features predicts the low-order moments of the source and the target map
(`light_moments`); its error joins the loss, so the UNet's deepest features are made to hold both lightings. The
moments are what a Lambertian surface's shading depends on: its irradiance is, to within a few percent, the map's
spherical harmonics of orders 0-2 (Ramamoorthi & Hanrahan 2001), which are the map's level, its mean light
direction (order 1) and the traceless second moment of its directions (order 2: how spread, or how two-sided, the
light is); divided by the level, eight numbers per map. The head is a training aid only: the model folder never
holds it, and sampling never runs it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from relightful.lighting.envmap import latlong_directions, latlong_solid_angles, rotate_envmap
from relightful.lighting.sky import LUMINANCE


MOMENTS = 8  # per map: the mean direction (x, y, z), then the traceless second moment's xy, xz, yz, xx, yy
# the sign each moment takes when the scene is mirrored left-right (x -> -x): odd powers of x change sign
MIRROR_SIGNS = (-1.0, 1.0, 1.0, -1.0, -1.0, 1.0, 1.0, 1.0)


def light_moments(env: torch.Tensor, rotation_deg: float = 0.0) -> torch.Tensor:
    """(8,) float32: the level-free moments of a lat-long map (h, 2h, 3) rotated by `rotation_deg`, in camera space
    (DESIGN 3.1), expectations over the map's luminance: the mean light direction E[ω] (its length says how
    directional the lighting is: 0 for a uniform map, 1 for a single point light), then the independent entries of
    E[ωωᵀ] − I/3 (its zz entry is minus the sum of xx and yy). All zero for a uniform map."""
    env = rotate_envmap(env.float(), float(rotation_deg))
    height = env.shape[0]
    weight = (env @ torch.from_numpy(LUMINANCE).float()).clamp_min(0) * torch.from_numpy(latlong_solid_angles(height))
    w = (weight / weight.sum().clamp_min(1e-12)).reshape(-1)
    d = torch.from_numpy(latlong_directions(height, dtype=np.float32)).reshape(-1, 3)
    mean = w @ d
    second = (w[:, None] * d).T @ d
    x, y, z = 0, 1, 2
    return torch.cat([mean, torch.stack([second[x, y], second[x, z], second[y, z], second[x, x] - 1 / 3,
                                         second[y, y] - 1 / 3])])


class LightProbe(nn.Module):
    """Reads the output of `unet.mid_block` on every forward (a hook) and predicts from it, pooled (mean and max),
    the (B, 2·MOMENTS) `light_moments` of a pair's source and target lightings."""

    def __init__(self, unet, hidden: int = 128):
        super().__init__()
        if getattr(unet, "mid_block", None) is None:
            raise ValueError("light_probe_weight needs a UNet with a middle block")
        channels = unet.config.block_out_channels[-1]
        self.head = nn.Sequential(nn.Linear(2 * channels, hidden), nn.SiLU(), nn.Linear(hidden, 2 * MOMENTS))
        self._features: torch.Tensor | None = None
        self._hook = unet.mid_block.register_forward_hook(self._keep)

    def _keep(self, module, inputs, output) -> None:
        self._features = output[0] if isinstance(output, tuple) else output

    def loss(self, wanted: torch.Tensor) -> torch.Tensor:
        """Mean squared error of the moments predicted from the UNet's last forward against `wanted` (B, 2·MOMENTS)."""
        if self._features is None:
            raise RuntimeError("the light probe reads the UNet's last forward: run the UNet first")
        x = self._features.float()
        predicted = self.head(torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1))
        self._features = None
        return F.mse_loss(predicted, wanted.float())


__all__ = ["LightProbe", "MIRROR_SIGNS", "MOMENTS", "light_moments"]

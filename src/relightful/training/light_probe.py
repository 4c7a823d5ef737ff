"""An auxiliary task for stages 1-2 (`train.light_probe_weight`): the UNet's middle features must tell where the light
of both lightings of a pair comes from.

To relight, the UNet has to divide the composite by its old shading and multiply it by the new one. The new lighting
reaches it through `F_bg`; the old one it must read from the composite's own shading, and the diffusion loss, which
is dominated by the overall level, teaches that slowly: trained from the full HDR map instead of the background, the
tiny model's light-direction error on val was no better (27.6° against 28.7°), so the lighting's source was not the
limit. A small head on the pooled middle features predicts the mean light direction of the source and the target
map (`mean_light_direction`, two camera-space vectors); its error joins the loss, so the UNet's deepest features are
made to hold both lightings. The head is a training aid only: the model folder never holds it, and sampling never
runs it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from relightful.lighting.envmap import latlong_directions, latlong_solid_angles, rotate_envmap
from relightful.lighting.sky import LUMINANCE


def mean_light_direction(env: torch.Tensor, rotation_deg: float = 0.0) -> torch.Tensor:
    """(3,) float32: the luminance-weighted mean of the directions of a lat-long map (h, 2h, 3) rotated by
    `rotation_deg`, in camera space (DESIGN 3.1). Its length says how directional the lighting is: 0 for a uniform
    map, 1 for a single point light."""
    env = rotate_envmap(env.float(), float(rotation_deg))
    height = env.shape[0]
    weight = (env @ torch.from_numpy(LUMINANCE).float()).clamp_min(0) * torch.from_numpy(latlong_solid_angles(height))
    directions = torch.from_numpy(latlong_directions(height, dtype=np.float32))
    return (weight[..., None] * directions).sum(dim=(0, 1)) / weight.sum().clamp_min(1e-12)


class LightProbe(nn.Module):
    """Reads the output of `unet.mid_block` on every forward (a hook) and predicts from it, pooled (mean and max),
    the (B, 6) mean light directions of a pair's source and target lightings."""

    def __init__(self, unet, hidden: int = 128):
        super().__init__()
        if getattr(unet, "mid_block", None) is None:
            raise ValueError("light_probe_weight needs a UNet with a middle block")
        channels = unet.config.block_out_channels[-1]
        self.head = nn.Sequential(nn.Linear(2 * channels, hidden), nn.SiLU(), nn.Linear(hidden, 6))
        self._features: torch.Tensor | None = None
        self._hook = unet.mid_block.register_forward_hook(self._keep)

    def _keep(self, module, inputs, output) -> None:
        self._features = output[0] if isinstance(output, tuple) else output

    def loss(self, wanted: torch.Tensor) -> torch.Tensor:
        """Mean squared error of the directions predicted from the UNet's last forward against `wanted` (B, 6)."""
        if self._features is None:
            raise RuntimeError("the light probe reads the UNet's last forward: run the UNet first")
        x = self._features.float()
        predicted = self.head(torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1))
        self._features = None
        return F.mse_loss(predicted, wanted.float())


__all__ = ["LightProbe", "mean_light_direction"]

"""The shading path (`ModelConfig.shading_head`): the model's relighting gain starts from a physically shaped one.

For a Lambertian subject the relit image over the input is the ratio of two shadings of the surface's normals. A
small UNet left to learn that ratio pixel by pixel from minutes of training renders too little of it: even given the
full HDR map it left 38° of light-direction error on the light-stage test pairs, where relighting by the ratio of
the two true order-2 irradiances on the silhouette's normals leaves 18° (lighting/sh.py). So a head on the UNet's
pooled middle features (which see the composite, the matte and normals, and `F_bg` or `F_env`) predicts the
level-free order-2 shading coefficients of both lightings, and the log of their ratio on the silhouette normals,
mean-free inside the matte, is added to the UNet's log-gain edit. The UNet keeps the level, the colour and all
that the ratio misses (cast shadows, highlights, the silhouette's errors). The head's last layer starts at zero, so
a new model starts from the UNet alone; in stages 1-2 its coefficients are also supervised with the true maps'
(`train.shading_head_weight`). On the tiny profile the whole chain with it read level on val, because its estimates
of the two lightings, not the rendering, are the limit (docs/model.md); both profiles leave it off.
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from relightful.models.shading_prior import COEFFICIENTS, log_shading_ratio


class ShadingHead(nn.Module):
    """Reads the output of `unet.mid_block` on every forward (a hook) and turns it into the shading path's log gain."""

    def __init__(self, unet, hidden: int = 128):
        super().__init__()
        if getattr(unet, "mid_block", None) is None:
            raise ValueError("the shading head needs a UNet with a middle block")
        channels = unet.config.block_out_channels[-1]
        self.head = nn.Sequential(nn.Linear(2 * channels, hidden), nn.SiLU(), nn.Linear(hidden, 2 * COEFFICIENTS))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)
        self._features: torch.Tensor | None = None
        self.coefficients: torch.Tensor | None = None  # (B, 16) source then target, of the last forward
        unet.mid_block.register_forward_hook(self._keep)

    def _keep(self, module, inputs, output) -> None:
        self._features = output[0] if isinstance(output, tuple) else output

    def log_gain(self, shape: torch.Tensor) -> torch.Tensor:
        """The shape input (B, 4, s, s) (matte, normals) of the UNet's last forward -> (B, 1, s, s) log of the
        target's shading over the source's, mean-free inside the matte and zero outside it."""
        if self._features is None:
            raise RuntimeError("the shading head reads the UNet's last forward: run the UNet first")
        x = self._features.float()
        self._features = None
        self.coefficients = self.head(torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1))
        return log_shading_ratio(self.coefficients[:, :COEFFICIENTS], self.coefficients[:, COEFFICIENTS:], shape)


def upsample_log_gain(log_gain: torch.Tensor, size: int, channels: int = 3) -> torch.Tensor:
    """(B, 1, s, s) -> (B, channels, size, size), bilinear (a shading is smooth)."""
    return F.interpolate(log_gain, size=(size, size), mode="bilinear", align_corners=False).expand(-1, channels, -1, -1)

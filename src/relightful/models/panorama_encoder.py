"""`F_env`: the panorama encoder. Same output contract as `F_bg` (one feature map per UNet scale), computed from
the full HDR map, log-encoded (DESIGN 3.5). Stage 2 conditions the UNet on it and pulls `F_bg` towards it.

A lat-long map has no spatial correspondence with the image, so the map is encoded (circular padding in
longitude) into one lighting code, which each scale decodes into a coarse spatial layout that is upsampled to
the scale's size: the features can still vary across the image (e.g. towards the light), as the adapter's do.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
import torch.nn.functional as F

from relightful.models.lighting_encoder import ResBlock, zero_conv


@dataclass(frozen=True)
class PanoramaConfig:
    widths: tuple[int, ...] = (32, 64, 64)   # channels of each scale's decoder (one per UNet down block)
    code_dim: int = 128                      # the lighting code
    grid: int = 4                            # side of the coarse layout each scale decodes the code into
    trunk: int = 32                          # channels of the map encoder


def log_encode(radiance: torch.Tensor) -> torch.Tensor:
    """Linear radiance ≥ 0 -> log(1 + L): HDR maps span many stops, the network sees them compressed."""
    return torch.log1p(radiance.clamp_min(0))


class PanoramaEncoder(nn.Module):
    """Log-encoded map (B, 3, h, 2h) -> [(B, C_i, h_i, w_i) for each UNet down block]."""

    def __init__(self, config: PanoramaConfig, shapes: list[tuple[int, int, int]]):
        super().__init__()
        if len(config.widths) != len(shapes):
            raise ValueError(f"panorama encoder has {len(config.widths)} widths for {len(shapes)} UNet scales")
        t = config.trunk
        self.trunk = nn.Sequential(
            nn.Conv2d(3, t, 3, padding=1, padding_mode="circular"), ResBlock(t, circular=True),
            nn.Conv2d(t, 2 * t, 3, stride=2, padding=1, padding_mode="circular"), ResBlock(2 * t, circular=True))
        self.to_code = nn.Sequential(nn.Linear(2 * t * 2, config.code_dim), nn.SiLU(),
                                     nn.Linear(config.code_dim, config.code_dim), nn.SiLU())
        self.grid = config.grid
        self.sizes = [(h, w) for _, h, w in shapes]
        self.layouts = nn.ModuleList(nn.Linear(config.code_dim, w * config.grid**2) for w in config.widths)
        self.refine = nn.ModuleList(ResBlock(w) for w in config.widths)
        self.out = nn.ModuleList(zero_conv(w, c) for w, (c, _, _) in zip(config.widths, shapes))

    def forward(self, panorama_log: torch.Tensor) -> list[torch.Tensor]:
        x = self.trunk(panorama_log)
        # mean and max over the sphere: the overall level and the brightest source both matter
        code = self.to_code(torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1))
        features = []
        for layout, refine, out, size in zip(self.layouts, self.refine, self.out, self.sizes):
            grid = layout(code).view(code.shape[0], -1, self.grid, self.grid)
            features.append(out(refine(F.interpolate(grid, size=size, mode="bilinear", align_corners=False))))
        return features

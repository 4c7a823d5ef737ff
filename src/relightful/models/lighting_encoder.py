"""`F_bg`: the lighting encoder, a CNN from the background image to one feature map per UNet encoder scale
(T2I-Adapter style, DESIGN 3.5). Its output projections start at zero, so stage 1 starts from the base model.

Lighting is a property of the whole scene, not of the pixels under the subject, and a few convolutions see only a
window of the background. With `code_dim > 0` the deepest features are also pooled (mean and max) over the image
into one lighting code which, as in `F_env`, each scale decodes into a coarse `grid`×`grid` layout added to its
local features: so every position of the UNet receives the scene's overall colour, level and where it is brightest,
and stage 2 can align the two encoders code to code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
import torch.nn.functional as F


@dataclass(frozen=True)
class EncoderConfig:
    widths: tuple[int, ...] = (32, 64, 64)   # channels of the encoder at each UNet scale (one per down block)
    blocks_per_scale: int = 1
    code_dim: int = 0                        # the global lighting code (0: local features only)
    grid: int = 4                            # side of the coarse layout each scale decodes the code into


class ResBlock(nn.Module):
    def __init__(self, channels: int, circular: bool = False):
        super().__init__()
        pad = "circular" if circular else "zeros"
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, padding_mode=pad)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, padding_mode=pad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.silu(self.conv1(F.silu(x))))


def zero_conv(cin: int, cout: int) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, 1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


def scale_strides(image_size: int, shapes: list[tuple[int, int, int]]) -> tuple[int, list[int]]:
    """The space-to-depth factor from the image to the first scale, and each later scale's stride (1 or 2)."""
    first = shapes[0][1]
    if image_size % first or (image_size // first) & (image_size // first - 1):
        raise ValueError(f"image size {image_size} is not a power-of-two multiple of the first scale {first}")
    strides = []
    for (_, h0, _), (_, h1, _) in zip(shapes, shapes[1:]):
        if h0 not in (h1, 2 * h1, 2 * h1 - 1):
            raise ValueError(f"UNet scales {h0} -> {h1} are not a stride of 1 or 2")
        strides.append(1 if h0 == h1 else 2)
    return image_size // first, strides


class LightingEncoder(nn.Module):
    """Background (B, 3, S, S) in [−1, 1] -> [(B, C_i, h_i, w_i) for each UNet down block]."""

    def __init__(self, config: EncoderConfig, image_size: int, shapes: list[tuple[int, int, int]]):
        super().__init__()
        if len(config.widths) != len(shapes):
            raise ValueError(f"encoder has {len(config.widths)} widths for {len(shapes)} UNet scales")
        self.unshuffle, strides = scale_strides(image_size, shapes)
        widths = config.widths
        self.stem = nn.Conv2d(3 * self.unshuffle**2, widths[0], 3, padding=1)
        self.downs = nn.ModuleList(
            nn.Conv2d(widths[i], widths[i + 1], 3, stride=s, padding=1) for i, s in enumerate(strides))
        self.blocks = nn.ModuleList(
            nn.Sequential(*[ResBlock(w) for _ in range(config.blocks_per_scale)]) for w in widths)
        self.out = nn.ModuleList(zero_conv(w, c) for w, (c, _, _) in zip(widths, shapes))
        self.grid = config.grid
        if config.code_dim:
            self.to_code = nn.Sequential(nn.Linear(2 * widths[-1], config.code_dim), nn.SiLU(),
                                         nn.Linear(config.code_dim, config.code_dim), nn.SiLU())
            self.layouts = nn.ModuleList(nn.Linear(config.code_dim, w * config.grid**2) for w in widths)

    def forward(self, background: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(F.pixel_unshuffle(background, self.unshuffle))
        local = []
        for i, block in enumerate(self.blocks):
            if i > 0:
                x = self.downs[i - 1](F.silu(x))
            x = block(x)
            local.append(x)
        if hasattr(self, "to_code"):
            code = self.to_code(torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1))
            for i, (layout, feat) in enumerate(zip(self.layouts, local)):
                grid = layout(code).view(code.shape[0], -1, self.grid, self.grid)
                local[i] = feat + F.interpolate(grid, size=feat.shape[-2:], mode="bilinear", align_corners=False)
        return [out(feat) for out, feat in zip(self.out, local)]

"""The shading prior (`ModelConfig.shading_prior`): the relighting gain starts from the ratio of two estimated
shadings of the silhouette's normals, estimated by two networks trained on their own.

For a Lambertian subject the relit image over the input is the ratio of the two lightings' shadings of its normals.
Relighting the val pairs by that ratio of their true order-2 shadings on the silhouette normals leaves 17.7° of
light-direction error; with the two estimates below, 25.4° (paste 36.8°; docs/model.md). Inside the model the same
estimates are weak: features trained with the UNet hold 13% of the target's coefficients, a standalone CNN 53%. So
two `LightingEstimator`s are fitted first, supervised by the light-stage maps' coefficients (training/prior_fit.py),
then frozen: one reads the source lighting off the composite and matte, one the target's off the background. The log
of their shadings' ratio, mean-free inside the matte (the level and colour are the UNet's), is added to the UNet's
log-gain edit in every guidance pass, so the UNet learns what the ratio misses (level, colour, cast shadows,
highlights, the silhouette's errors) and classifier-free guidance does not scale the prior.
"""

from __future__ import annotations

import torch
from torch import nn

from relightful.lighting.sh import shading
from relightful.models.lighting_estimator import LightingEstimator, log_input

COEFFICIENTS = 8  # per lighting (lighting/sh.py)


def log_shading_ratio(source: torch.Tensor, target: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    """Coefficients (B, 8) of two lightings and the shape input (B, 4, s, s) (matte, normals) -> (B, 1, s, s)
    log of the target's shading over the source's, mean-free inside the matte and zero outside it."""
    matte, normals = shape[:, :1].float(), shape[:, 1:4].float()
    ratio = shading(target.float(), normals).log() - shading(source.float(), normals).log()
    mass = matte.sum(dim=(2, 3), keepdim=True).clamp_min(1e-6)
    return (ratio - (matte * ratio).sum(dim=(2, 3), keepdim=True) / mass) * matte


class ShadingPrior(nn.Module):
    """The two estimators: `source` (composite and matte, 4 channels) and `target` (background, 3 channels; with
    `target_coordinates`, also where each pixel is in the frame)."""

    def __init__(self, target_coordinates: bool = False):
        super().__init__()
        self.source = LightingEstimator(4, COEFFICIENTS)
        self.target = LightingEstimator(3, COEFFICIENTS, coordinates=target_coordinates)

    def coefficients(self, composite: torch.Tensor, matte: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
        """Linear composites and backgrounds (B, 3, S, S), mattes (B, 1, S, S) -> (B, 16): the source's
        coefficients, then the target's (the order of the training cache's `shading`), float32 whatever the
        estimators' precision (bf16 under DeepSpeed)."""
        dtype = self.target.head[-1].weight.dtype
        source = self.source(torch.cat([log_input(composite), matte], dim=1).to(dtype))
        return torch.cat([source, self.target(log_input(background).to(dtype))], dim=1).float()

    def log_gain(self, composite: torch.Tensor, matte: torch.Tensor, background: torch.Tensor,
                 shape: torch.Tensor) -> torch.Tensor:
        """The prior's log gain (B, 1, s, s) on the shape input's normals (`log_shading_ratio`)."""
        c = self.coefficients(composite, matte, background)
        return log_shading_ratio(c[:, :COEFFICIENTS], c[:, COEFFICIENTS:], shape)


__all__ = ["COEFFICIENTS", "ShadingPrior", "log_shading_ratio"]

"""Image-based relighting: a subject under any lighting is the LED-weighted sum of its OLAT images (DESIGN 3.2)."""

from __future__ import annotations

import torch

from relightful.io.dispatch import like, to_torch


class OlatStack:
    """An OLAT stack laid out once as (3, N, H·W) so many lightings relight in one batched matrix product.

    Relighting B lightings costs one (3 x B x N) @ (3 x N x HW) product: the bound that `relight` and the pair
    renderer are benchmarked against.
    """

    def __init__(self, olat):
        x = to_torch(olat)
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"OLAT stack must be (N, H, W, 3), got {tuple(x.shape)}")
        self.n_leds, self.height, self.width = x.shape[0], x.shape[1], x.shape[2]
        self.planar = x.float().permute(3, 0, 1, 2).reshape(3, self.n_leds, -1).contiguous()

    @classmethod
    def from_planar(cls, planar: torch.Tensor) -> "OlatStack":
        """A stack over an arbitrary set of pixels, given as (3, N, P) planes (height 1, width P)."""
        stack = cls.__new__(cls)
        stack.n_leds, stack.height, stack.width = planar.shape[1], 1, planar.shape[2]
        stack.planar = planar.float().contiguous()
        return stack

    def relight_planar(self, weights: torch.Tensor) -> torch.Tensor:
        """weights (B, N, 3) -> images (3, B, H·W) float32, channel planes first."""
        if weights.ndim != 3 or weights.shape[1:] != (self.n_leds, 3):
            raise ValueError(f"weights must be (B, {self.n_leds}, 3), got {tuple(weights.shape)}")
        return torch.bmm(weights.float().permute(2, 0, 1), self.planar)

    def relight_chw(self, weights: torch.Tensor) -> torch.Tensor:
        """weights (B, N, 3) -> images (B, 3, H, W) float32."""
        out = self.relight_planar(weights)
        return out.permute(1, 0, 2).reshape(-1, 3, self.height, self.width)


def relight(olat, weights):
    """Σ_k w_k ⊙ OLAT_k: olat (N, H, W, 3) with weights (N, 3) -> (H, W, 3), or (B, N, 3) -> (B, H, W, 3).

    Linear RGB in and out; numpy or torch, returned as the kind of `olat`.
    """
    w = to_torch(weights)
    single = w.ndim == 2
    stack = OlatStack(olat)
    out = stack.relight_planar(w[None] if single else w)  # (3, B, HW)
    images = out.permute(1, 2, 0).reshape(-1, stack.height, stack.width, 3)
    return like(images[0] if single else images, olat)

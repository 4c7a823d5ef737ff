"""LPIPS (Zhang et al. 2018, AlexNet variant) from local safetensors weights; nothing is ever downloaded.

The network is the `lpips` package's `LPIPS(net="alex")` layer for layer, so its state dict loads unchanged. The
weights are not shipped (AlexNet's ImageNet weights are not ours to redistribute) and are never unpickled here:
convert them once on a machine that has them, from files you trust:

    import lpips, safetensors.torch
    state = lpips.LPIPS(net="alex").state_dict()   # `lins.N` repeats `linN`: keep one copy
    safetensors.torch.save_file({k: v for k, v in state.items() if not k.startswith("lins.")},
                                "lpips_alex.safetensors")

Without that file the evaluation reports LPIPS as not computed, with the reason.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from relightful.io import InputError, load_tensors

CHANNELS = (64, 192, 384, 256, 256)


class _ScalingLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None])
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450])[None, :, None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.shift) / self.scale


def _alexnet_slices() -> nn.ModuleList:
    """torchvision's AlexNet `features`, cut after each ReLU; module indices as in torchvision (0..11)."""
    layers = [nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2), nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(),
              nn.MaxPool2d(3, 2), nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(), nn.Conv2d(384, 256, 3, padding=1),
              nn.ReLU(), nn.Conv2d(256, 256, 3, padding=1), nn.ReLU()]
    cuts = [(0, 2), (2, 5), (5, 8), (8, 10), (10, 12)]
    slices = nn.ModuleList()
    for start, stop in cuts:
        s = nn.Sequential()
        for i in range(start, stop):
            s.add_module(str(i), layers[i])
        slices.append(s)
    return slices


class _Backbone(nn.Module):
    def __init__(self):
        super().__init__()
        for i, s in enumerate(_alexnet_slices(), start=1):
            self.add_module(f"slice{i}", s)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i in range(1, 6):
            x = getattr(self, f"slice{i}")(x)
            out.append(x)
        return out


class _Linear(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))


class LPIPS(nn.Module):
    """`LPIPS(pred, target)` on (B, 3, H, W) sRGB in [0, 1] -> (B,) distances, or (B, 1, H, W) maps with
    `spatial=True` (each layer's map upsampled to the input size, as the lpips package does)."""

    def __init__(self):
        super().__init__()
        self.scaling_layer = _ScalingLayer()
        self.net = _Backbone()
        for i, c in enumerate(CHANNELS):
            self.add_module(f"lin{i}", _Linear(c))
        self.eval().requires_grad_(False)

    @classmethod
    def from_file(cls, path: str | Path) -> "LPIPS":
        net = cls()
        tensors = {k: v for k, v in load_tensors(path).items() if not k.startswith("lins.")}  # aliases of linN
        missing, unexpected = net.state_dict().keys() - tensors.keys(), tensors.keys() - net.state_dict().keys()
        if missing or unexpected:
            raise InputError(path, f"not LPIPS-alex weights (missing {sorted(missing)[:3]}, unexpected "
                                   f"{sorted(unexpected)[:3]})")
        for key, value in net.state_dict().items():
            if tensors[key].shape != value.shape:
                raise InputError(path, f"{key} has shape {tuple(tensors[key].shape)}, expected {tuple(value.shape)}")
        net.load_state_dict(tensors)
        return net

    @torch.inference_mode()
    def forward(self, pred: torch.Tensor, target: torch.Tensor, spatial: bool = False) -> torch.Tensor:
        size = pred.shape[-2:]
        fx = self.net(self.scaling_layer(pred.float() * 2 - 1))
        fy = self.net(self.scaling_layer(target.float() * 2 - 1))
        total = 0.0
        for i, (a, b) in enumerate(zip(fx, fy)):
            a = a / (a.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            b = b / (b.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            d = getattr(self, f"lin{i}").model((a - b) ** 2)
            total = total + (F.interpolate(d, size=size, mode="bilinear", align_corners=False) if spatial
                             else d.mean(dim=(2, 3), keepdim=True))
        return total if spatial else total.flatten()

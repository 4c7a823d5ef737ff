"""An exponential moving average of the trained weights, which is what the model folder receives at the end.

A short run's last weights are one noisy point of the optimiser's path: on the tiny profile, 150 more steps at a
learning rate of 3e-5, from any stage's result and on any data, move its val fg PSNR by 0.3 dB. The average of the
recent weights (Polyak averaging; the EMA of Stable Diffusion's and diffusers' training scripts) is a better
estimate of where that path is going. The decay warms up as diffusers' `EMAModel` does, `min(decay, (1 + n) / (10 + n))`
after n updates, so early weights are forgotten quickly. The average is kept in fp32 and saved in every checkpoint,
so a resumed run continues it exactly.
"""

from __future__ import annotations

import torch
from torch import nn

PREFIX = "ema::"  # checkpoint names of the averaged tensors (beside the trained parameters' own names)


class WeightEma:
    def __init__(self, module: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.params = {n: p for n, p in module.named_parameters() if p.requires_grad}
        self.average = {n: p.detach().float().clone() for n, p in self.params.items()}
        self.updates = 0

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        """Fold the parameters' current values in (after an optimiser step)."""
        d = self.current_decay()
        for name, p in self.params.items():
            self.average[name].lerp_(p.detach().float(), 1.0 - d)
        self.updates += 1

    def state(self) -> dict[str, torch.Tensor]:
        """Tensors for the checkpoint: the averages and the update count."""
        out = {PREFIX + n: v for n, v in self.average.items()}
        out[PREFIX + "updates"] = torch.tensor(self.updates, dtype=torch.int64)
        return out

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore from a checkpoint's tensors; every average must be there."""
        missing = [n for n in self.average if PREFIX + n not in tensors] + (
            [] if PREFIX + "updates" in tensors else ["updates"])
        if missing:
            raise ValueError(f"checkpoint lacks the weight average of {len(missing)} tensors (e.g. {missing[0]}): "
                             "it was written without ema_decay")
        for name in self.average:
            self.average[name].copy_(tensors[PREFIX + name].float())
        self.updates = int(tensors[PREFIX + "updates"])

    def weights(self) -> dict[str, torch.Tensor]:
        """The averaged weights, fp32 on the CPU, by parameter name."""
        return {n: v.detach().cpu().clone() for n, v in self.average.items()}

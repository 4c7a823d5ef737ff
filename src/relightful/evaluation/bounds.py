"""Reference bounds computed from the ground truth x_b (light-stage pairs, DESIGN 3.9): what a method of a given
form could reach at best, so the report can say how much of the reachable gain the model takes.

- `oracle_gain`: the best single RGB gain per pair, least squares in linear light inside the matte,
  `g_c = Σ m·x_a·x_b / Σ m·x_a²` (the matte weights the pixels as the foreground metrics do). It bounds
  `gain_regression` and every colour-only method: they can at best find this gain.
- `oracle_shading`: the best smooth gain field at the model's `detail_sigma`, `gain_field(x_b, x_a, m, σ)` of
  models/compositing.py: exactly the form of the model's own output when it carries its relighting over as a gain
  field, so it bounds what the model can deliver at that σ.

Both are least-squares / local-mean formulas in *linear* light, while the score is an MSE in 8-bit sRGB, so the
pure formula can lose to a simpler candidate after quantisation and the sRGB curve (a gain of 1 is sometimes
better than the linear-optimal gain, by a hair). The bounds are therefore the best, per pair, of a set of candidates
by the delivered foreground MSE, the very quantity fg PSNR is computed from: `oracle_gain` = best of {gain 1, g};
`oracle_shading` = best of {oracle_gain, the field}. So per pair, by construction,
`fg_psnr(oracle_shading) ≥ fg_psnr(oracle_gain) ≥ fg_psnr(composite)`.
"""

from __future__ import annotations

import torch

from relightful.evaluation.metrics import mse
from relightful.evaluation.pairs import deliver
from relightful.io import srgb_encode

GAIN_LIMITS = (1 / 16, 16.0)  # a gain beyond ±4 stops is a broken pair, not a relighting


def least_squares_gain(fg: torch.Tensor, target: torch.Tensor, matte: torch.Tensor,
                       limits: tuple[float, float] = GAIN_LIMITS) -> torch.Tensor:
    """(B, 3) per-channel gains g minimising Σ m·(g·fg − target)² (linear light); 1 where fg is black."""
    fg, target, m = fg.double(), target.double(), matte.double()
    num = (m * fg * target).sum(dim=(2, 3))
    den = (m * fg * fg).sum(dim=(2, 3))
    gain = torch.where(den > 1e-12, num / den.clamp_min(1e-12), torch.ones_like(den))
    return gain.clamp(*limits).float()


def target_image(x_b: torch.Tensor, matte: torch.Tensor, bg: torch.Tensor) -> torch.Tensor:
    """The sRGB target every method is scored against (unquantised), as the evaluator forms it."""
    return srgb_encode((matte * x_b + (1 - matte) * bg).clamp(0, 1))


def best_of(candidates: list[torch.Tensor], matte: torch.Tensor, bg: torch.Tensor,
            target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pair, the candidate foreground layer (B, 3, H, W) whose delivered composite has the lowest foreground
    MSE against `target`, and the index of that candidate (B,); ties go to the earlier candidate."""
    errors = torch.stack([mse(deliver(c, matte, bg), target, matte) for c in candidates])  # (K, B)
    choice = errors.argmin(dim=0)
    stack = torch.stack(candidates)                                                      # (K, B, 3, H, W)
    picked = stack.gather(0, choice.view(1, -1, 1, 1, 1).expand(1, *stack.shape[1:]))[0]
    return picked, choice


def oracle_gain(fg: torch.Tensor, x_b: torch.Tensor, matte: torch.Tensor, bg: torch.Tensor) -> torch.Tensor:
    """The best single RGB gain per pair (see the module docstring): the foreground layer (B, 3, H, W), linear."""
    gain = least_squares_gain(fg, x_b, matte)
    scaled = fg * gain[..., None, None].to(fg)
    return best_of([fg, scaled], matte, bg, target_image(x_b, matte, bg))[0]


def oracle_shading(fg: torch.Tensor, x_b: torch.Tensor, matte: torch.Tensor, bg: torch.Tensor,
                   sigma: float) -> torch.Tensor:
    """The best smooth gain field of Gaussian `sigma` (pixels of these images) per pair, never worse than
    `oracle_gain` (see the module docstring): the foreground layer (B, 3, H, W), linear."""
    from relightful.models.compositing import gain_field

    target = target_image(x_b, matte, bg)
    global_gain = oracle_gain(fg, x_b, matte, bg)
    field = fg * gain_field(x_b.float(), fg.float(), matte.float(), sigma)
    return best_of([global_gain, field.to(fg)], matte, bg, target)[0]

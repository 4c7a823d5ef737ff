"""Colour-harmonisation baselines the model is compared against (all batched, no learned weights).

Each takes the foreground layer `fg` (B, 3, H, W) linear, the matte (B, 1, H, W) and the background `bg`
(B, 3, H, W) linear, and returns the new foreground layer, linear; the evaluation composites every method the same
way (`m·fg' + (1−m)·bg`). Statistics of the foreground are matte-weighted; those of the background are weighted by
`1 − m` (the part of the background visible around the subject, which is all a harmonisation method can see).

- `paste`: the foreground unchanged (the composite a user would get without harmonisation).
- `reinhard`: Reinhard et al. 2001, "Color transfer between images": per-channel mean and standard deviation of
  the foreground matched to the background's in the decorrelated lαβ space (log LMS cone responses).
- `histogram_match`: per-channel histogram matching in sRGB: each foreground value goes to the background value of
  the same quantile (foreground: matte > 0.5, background: matte < 0.5).
"""

from __future__ import annotations

import torch

from relightful.io.color import srgb_decode, srgb_encode

# Reinhard et al. 2001, eqs. 4 and 6: linear RGB -> LMS, and log LMS -> lαβ.
RGB_TO_LMS = torch.tensor([[0.3811, 0.5783, 0.0402], [0.1967, 0.7244, 0.0782], [0.0241, 0.1288, 0.8444]],
                          dtype=torch.float64)
LMS_TO_LAB = (torch.diag(torch.tensor([3.0, 6.0, 2.0], dtype=torch.float64).rsqrt())
              @ torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, -2.0], [1.0, -1.0, 0.0]], dtype=torch.float64))
LMS_FLOOR = 1e-6  # log of black: clamp so a black pixel maps to a finite value


def _apply(matrix: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,bjhw->bihw", matrix.to(x), x)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """Linear RGB (B, 3, H, W) -> Reinhard's lαβ."""
    return _apply(LMS_TO_LAB, torch.log(_apply(RGB_TO_LMS, rgb.double()).clamp_min(LMS_FLOOR)))


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    return _apply(torch.linalg.inv(RGB_TO_LMS), torch.exp(_apply(torch.linalg.inv(LMS_TO_LAB), lab.double())))


def _moments(x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted per-channel mean and standard deviation, (B, C, 1, 1) each."""
    w = w.expand_as(x)
    mass = w.sum(dim=(2, 3), keepdim=True).clamp_min(1e-12)
    mean = (x * w).sum(dim=(2, 3), keepdim=True) / mass
    var = ((x - mean) ** 2 * w).sum(dim=(2, 3), keepdim=True) / mass
    return mean, var.sqrt()


def paste(fg: torch.Tensor, matte: torch.Tensor, bg: torch.Tensor) -> torch.Tensor:
    return fg


def reinhard(fg: torch.Tensor, matte: torch.Tensor, bg: torch.Tensor) -> torch.Tensor:
    src, ref = rgb_to_lab(fg), rgb_to_lab(bg)
    m = matte.double()
    mu_s, sd_s = _moments(src, m)
    mu_r, sd_r = _moments(ref, 1 - m)
    out = (src - mu_s) * (sd_r / sd_s.clamp_min(1e-6)) + mu_r
    return lab_to_rgb(out).clamp_min(0).to(fg.dtype)


def _match_channel(values: torch.Tensor, source: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Map `values` through the quantile map that takes the distribution of `source` to that of `reference`."""
    src_sorted, ref_sorted = source.sort().values, reference.sort().values
    # the rank of each value among the source samples (ties take the middle of their run), as a fraction
    lo = torch.searchsorted(src_sorted, values, right=False).double()
    hi = torch.searchsorted(src_sorted, values, right=True).double()
    q = ((lo + hi - 1) / 2).clamp(0, len(src_sorted) - 1) / max(len(src_sorted) - 1, 1)
    pos = q * (len(ref_sorted) - 1)
    i0 = pos.floor().long().clamp(max=len(ref_sorted) - 1)
    i1 = (i0 + 1).clamp(max=len(ref_sorted) - 1)
    frac = pos - i0.double()
    return ref_sorted[i0] * (1 - frac) + ref_sorted[i1] * frac


def histogram_match(fg: torch.Tensor, matte: torch.Tensor, bg: torch.Tensor) -> torch.Tensor:
    fg_s, bg_s = srgb_encode(fg.double().clamp(0, 1)), srgb_encode(bg.double().clamp(0, 1))
    out = fg_s.clone()
    for b in range(fg.shape[0]):  # per image: the two pixel sets differ in size from image to image
        inside, outside = matte[b, 0] > 0.5, matte[b, 0] < 0.5
        if not inside.any() or not outside.any():
            continue
        for c in range(3):
            out[b, c] = _match_channel(fg_s[b, c], fg_s[b, c][inside], bg_s[b, c][outside])
    return srgb_decode(out).to(fg.dtype)


BASELINES = {"paste": paste, "reinhard": reinhard, "histogram": histogram_match}

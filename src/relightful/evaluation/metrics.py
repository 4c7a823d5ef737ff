"""Image metrics of the evaluation: MSE, PSNR and SSIM over the whole image and over the foreground.

Images are batches (B, 3, H, W) of sRGB values in [0, 1] (what a person sees; data range 1). The foreground
versions weight every pixel by the matte (B, 1, H, W): a soft edge counts in proportion to how much subject it holds.
SSIM follows Wang et al. 2004 as scikit-image computes it with `gaussian_weights=True, sigma=1.5,
use_sample_covariance=False`: 11-tap Gaussian window, K1 = 0.01, K2 = 0.03, symmetric padding; the whole-image
score averages the map away from a 5-pixel border, as scikit-image does, and the foreground score averages the full
map with the matte as weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PSNR_CAP_DB = 100.0  # identical images have infinite PSNR; reports cap it so JSON stays finite
SSIM_SIGMA = 1.5
SSIM_RADIUS = 5  # scikit-image: int(3.5 · σ + 0.5)
K1, K2 = 0.01, 0.03


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Per-image mean of (B, C, H, W) values, weighted by (B, 1, H, W) weights when given."""
    if weights is None:
        return values.mean(dim=(1, 2, 3))
    w = weights.expand_as(values)
    return (values * w).sum(dim=(1, 2, 3)) / w.sum(dim=(1, 2, 3)).clamp_min(1e-12)


def mse(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) mean squared error, optionally matte-weighted."""
    return _weighted_mean((pred.double() - target.double()) ** 2, weights)


def psnr_from_mse(err: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """(B,) PSNR in dB, capped at PSNR_CAP_DB."""
    db = 10.0 * torch.log10(data_range ** 2 / err.clamp_min(1e-300))
    return db.clamp(max=PSNR_CAP_DB)


def psnr(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    return psnr_from_mse(mse(pred, target, weights))


def _gaussian_kernel() -> torch.Tensor:
    x = torch.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=torch.float64)
    k = torch.exp(-x ** 2 / (2 * SSIM_SIGMA ** 2))
    return k / k.sum()


def _symmetric_pad(x: torch.Tensor, r: int) -> torch.Tensor:
    """Pad (B, C, H, W) by r with edge-inclusive mirroring (d c b a | a b c d), scipy.ndimage's "reflect"."""
    x = torch.cat([x[..., :r, :].flip(-2), x, x[..., -r:, :].flip(-2)], dim=-2)
    return torch.cat([x[..., :r].flip(-1), x, x[..., -r:].flip(-1)], dim=-1)


def _blur(x: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter of (B, C, H, W), same size output."""
    c = x.shape[1]
    k = _gaussian_kernel().to(x)
    x = _symmetric_pad(x, SSIM_RADIUS)
    x = F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)


def ssim_map(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """(B, C, H, W) local SSIM. Images smaller than the window (11 px) are refused."""
    if min(pred.shape[-2:]) <= SSIM_RADIUS:
        raise ValueError(f"SSIM needs images of at least {SSIM_RADIUS + 1} px per side, got {tuple(pred.shape[-2:])}")
    x, y = pred.double(), target.double()
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    mu_x, mu_y = _blur(x), _blur(y)
    var_x = _blur(x * x) - mu_x ** 2
    var_y = _blur(y * y) - mu_y ** 2
    cov = _blur(x * y) - mu_x * mu_y
    return ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))


def ssim(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) SSIM: the map's mean inside a 5-pixel border, or its matte-weighted mean over the whole image."""
    local = ssim_map(pred, target)
    if weights is None:
        r = SSIM_RADIUS
        return local[..., r:-r, r:-r].mean(dim=(1, 2, 3))
    return _weighted_mean(local, weights.double())


def image_metrics(pred: torch.Tensor, target: torch.Tensor, matte: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every per-pair metric of the report: mse, psnr, ssim (whole image) and fg_mse, fg_psnr, fg_ssim."""
    whole_mse, fg_mse = mse(pred, target), mse(pred, target, matte)
    return {"mse": whole_mse, "psnr": psnr_from_mse(whole_mse), "ssim": ssim(pred, target),
            "fg_mse": fg_mse, "fg_psnr": psnr_from_mse(fg_mse), "fg_ssim": ssim(pred, target, matte)}


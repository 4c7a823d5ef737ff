"""The `gain_regression` baseline (DESIGN 3.9): one global RGB gain per pair, predicted from colour statistics by a
ridge regression fitted on the light-stage *train* split at evaluation time.

Why this baseline: it is the strongest thing a "colour and exposure only" method can learn from the same pairs as
the model. If the model does not beat it, the model has learnt a global gain, not a relighting.

- Features (18 per pair): log mean linear colours of the visible background (weights 1 − m) over the whole
  frame and its left, right, top and bottom halves (where the light comes from shows up as a brightness
  asymmetry), plus the log matte-weighted mean colour of the foreground (what has to be corrected).
- Target: the log of the per-pair least-squares gain `g_c = Σ m·x_a·x_b / Σ m·x_a²` (bounds.least_squares_gain),
  i.e. what `oracle_gain` uses; the prediction is exp of the regression, clamped to ±4 stops.
- Ridge in closed form on standardised features, intercept unpenalised; the regularisation λ is chosen by
  leave-one-out on the train pairs (exact for ridge: e_i / (1 − h_ii) from one SVD), never on test pairs.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from relightful.evaluation.bounds import GAIN_LIMITS, least_squares_gain
from relightful.evaluation.pairs import read_pair_rows, select_pairs

LOG_FLOOR = 1e-4  # log of a black region: clamp so a dark frame gives a finite feature
LAMBDAS = tuple(float(v) for v in np.logspace(-3, 4, 15))  # λ per unit of pair count, searched by leave-one-out
FEATURE_NAMES = tuple(f"bg_{region}_{c}" for region in ("all", "left", "right", "top", "bottom") for c in "rgb") + \
    tuple(f"fg_{c}" for c in "rgb")


def _weighted_log_mean(x: torch.Tensor, w: torch.Tensor, fallback: torch.Tensor | None = None) -> torch.Tensor:
    """(B, 3) log of the w-weighted mean colour; pairs with no weight take `fallback` (else the floor)."""
    mass = w.sum(dim=(2, 3))
    mean = (x * w).sum(dim=(2, 3)) / mass.clamp_min(1e-12)
    logm = torch.log(mean.clamp_min(LOG_FLOOR))
    if fallback is not None:
        logm = torch.where(mass > 1e-6, logm, fallback)
    return logm


def colour_features(fg: torch.Tensor, matte: torch.Tensor, bg: torch.Tensor) -> torch.Tensor:
    """(B, 18) float64 features of FEATURE_NAMES from fg, bg (B, 3, H, W) linear and the matte (B, 1, H, W)."""
    fg, m, bg = fg.double(), matte.double(), bg.double().clamp_min(0)
    h, w = m.shape[-2:]
    visible = 1 - m
    whole = _weighted_log_mean(bg, visible)
    regions = []
    for rows, cols in ((slice(None), slice(0, w // 2)), (slice(None), slice(w - w // 2, w)),
                       (slice(0, h // 2), slice(None)), (slice(h - h // 2, h), slice(None))):
        mask = torch.zeros_like(visible)
        mask[..., rows, cols] = 1
        regions.append(_weighted_log_mean(bg, visible * mask, fallback=whole))
    return torch.cat([whole, *regions, _weighted_log_mean(fg.clamp_min(0), m)], dim=1)


class GainRegression:
    """Ridge regression from colour features to log RGB gains, with λ chosen by leave-one-out."""

    def __init__(self, lambdas: tuple[float, ...] = LAMBDAS, limits: tuple[float, float] = GAIN_LIMITS):
        self.lambdas, self.limits = tuple(lambdas), limits
        self.mean = self.scale = self.coef = self.intercept = None
        self.lam: float | None = None
        self.loo_rmse: float | None = None  # leave-one-out RMSE of the log gain at the chosen λ
        self.n_train = 0

    def fit(self, features: torch.Tensor, gains: torch.Tensor) -> "GainRegression":
        """features (n, F), gains (n, 3) > 0 (linear): fit log gains; n ≥ 2."""
        x = torch.as_tensor(features, dtype=torch.float64)
        y = torch.log(torch.as_tensor(gains, dtype=torch.float64).clamp(*self.limits))
        n = x.shape[0]
        if n < 2:
            raise ValueError(f"gain regression needs at least 2 training pairs, got {n}")
        self.mean, self.scale = x.mean(0), x.std(0, unbiased=False).clamp_min(1e-6)
        xs = (x - self.mean) / self.scale
        self.intercept = y.mean(0)
        yc = y - self.intercept
        u, s, vt = torch.linalg.svd(xs, full_matrices=False)
        uty = u.T @ yc                                                   # (r, 3)
        best = None
        for lam_unit in self.lambdas:
            lam = lam_unit * n
            shrink = s ** 2 / (s ** 2 + lam)                             # (r,)
            fitted = u @ (shrink[:, None] * uty)
            hat = 1.0 / n + (u ** 2 * shrink).sum(1)                     # leverage, with the intercept
            loo = (yc - fitted) / (1 - hat).clamp_min(1e-9)[:, None]
            score = float((loo ** 2).mean())
            if best is None or score < best[0]:
                best = (score, lam_unit, vt.T @ ((s / (s ** 2 + lam))[:, None] * uty))
        score, self.lam, self.coef = best
        self.loo_rmse, self.n_train = math.sqrt(score), n
        return self

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """(n, F) -> (n, 3) linear gains, clamped to `limits`."""
        if self.coef is None:
            raise RuntimeError("GainRegression.predict before fit")
        xs = (torch.as_tensor(features, dtype=torch.float64) - self.mean) / self.scale
        log_gain = xs @ self.coef + self.intercept
        return torch.exp(log_gain).clamp(*self.limits)

    def relight(self, fg: torch.Tensor, matte: torch.Tensor, bg: torch.Tensor) -> torch.Tensor:
        """The baseline's foreground layer: fg times the predicted gain of each pair."""
        gain = self.predict(colour_features(fg, matte, bg)).to(fg)
        return fg * gain[..., None, None]

    def summary(self) -> dict:
        return {"n_train": self.n_train, "lambda_per_pair": self.lam,
                "loo_rmse_log_gain": None if self.loo_rmse is None else round(self.loo_rmse, 6)}


def training_set(pairs_dir: str | Path, split: str = "train", max_pairs: int = 2048, batch: int = 64,
                 skipped: dict[str, str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (n, 18), least-squares gains (n, 3)) of at most `max_pairs` pairs of `split`, spread evenly over it;
    only those rows are read. Unreadable shards go to `skipped` (when given) and the others are used."""
    rows = select_pairs(Path(pairs_dir), split, max_pairs)
    feats, gains = [], []
    for _, t in read_pair_rows(Path(pairs_dir), rows, batch=batch, skipped=skipped):
        feats.append(colour_features(t["x_a"], t["matte"], t["y_b"]))
        gains.append(least_squares_gain(t["x_a"], t["x_b"], t["matte"]))
    if not feats:
        return torch.empty(0, len(FEATURE_NAMES), dtype=torch.float64), torch.empty(0, 3)
    return torch.cat(feats), torch.cat(gains)


def fit_gain_regression(pairs_dir: str | Path, split: str = "train", max_pairs: int = 2048,
                        skipped: dict[str, str] | None = None) -> tuple[GainRegression | None, str]:
    """(the fitted regression, "") or (None, why not) when fewer than 2 readable pairs of `split` exist."""
    features, gains = training_set(pairs_dir, split, max_pairs, skipped=skipped)
    if len(features) < 2:
        return None, f"fewer than 2 readable {split!r} light-stage pairs to fit it on"
    return GainRegression().fit(features, gains), ""

"""Fitting the shading prior's two estimators (models/shading_prior.py) before stage 1 trains the UNet.

A supervised regression of each light-stage pair's true level-free shading coefficients (`shading` in the latent
cache: the source's and the target's maps, as rotated for the pair) from what the model is given: the composite and
matte for the source, the background for the target. Adam with a cosine decay; samples mirrored with their
coefficients at the stage's `hflip`. Trained alone, the estimators learn the lighting; trained with the UNet they
learned a quarter as much of the target's (docs/model.md). Short on purpose: on the tiny profile's 71 training
maps the target's estimator fits the maps after a few minutes and its val R² falls.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from relightful.io import load_tensors, read_metadata, save_tensors
from relightful.models import RelightModel
from relightful.models.shading_prior import COEFFICIENTS
from relightful.training.augment import mirror_mask, mirror_samples
from relightful.training.data import PairStream

log = logging.getLogger(__name__)

PRIOR_FILE = "shading_prior.safetensors"  # in the run folder: a resumed run does not fit again
# Shards whose pairs are shuffled together. A shard holds one subject's pairs: from a window of 4 every batch saw 4
# subjects, and after 500 steps of 64 the estimators explained 61% / 30% of the val coefficients, against 70% / 37%
# from a window of 32 (the tiny profile's cache: about 8 MB per shard).
SHUFFLE_WINDOW = 32


def prepare_shading_prior(model: RelightModel, run_dir: Path, manifest: pd.DataFrame, files: dict, config,
                          rank: int = 0, progress: bool = True) -> dict[str, float]:
    """Stage 1 of a new model with a prior: rank 0 fits it (`fit_shading_prior` with the `TrainConfig`'s
    shading_prior_* settings and `hflip`), or takes the fit its run folder already holds, and every rank gets its
    weights, frozen. Returns the fit's report."""
    prior, path = model.shading_prior, Path(run_dir) / PRIOR_FILE
    report: dict[str, float] = {}
    if rank == 0:
        if path.is_file():
            prior.load_state_dict(load_tensors(path))
            report = json.loads(read_metadata(path).get("report", "{}"))
            log.info("%s: the shading prior fitted before this run was resumed", path)
        else:
            report = fit_shading_prior(model, manifest, files, config.shading_prior_steps,
                                       config.shading_prior_batch, config.shading_prior_lr, config.seed,
                                       config.hflip, progress, config.shading_prior_exposure_stops)
            save_tensors(path, {k: v.detach().float().contiguous() for k, v in prior.state_dict().items()},
                         metadata={"report": json.dumps(report)})
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        for tensor in prior.state_dict().values():
            torch.distributed.broadcast(tensor, src=0)
    prior.requires_grad_(False)
    return report


def _coefficients(model: RelightModel, batch: dict[str, torch.Tensor], device,
                  background_gain: torch.Tensor | None = None) -> torch.Tensor:
    composite, matte, background = model.prior_inputs(*(batch[k].to(device) for k in ("composite", "matte",
                                                                                        "background")))
    if background_gain is not None:  # (B,) exposure changes of the backgrounds, linear
        background = background * background_gain.to(device).view(-1, 1, 1, 1)
    return model.shading_prior.coefficients(composite, matte, background)


def fit_shading_prior(model: RelightModel, manifest: pd.DataFrame, files: dict, steps: int, batch: int, lr: float,
                      seed: int = 0, hflip: float = 0.0, progress: bool = True,
                      exposure_stops: float = 0.0) -> dict[str, float]:
    """Fit `model.shading_prior` on the `train` pairs of the latent cache `files` and freeze it; returns the last
    steps' mean loss and, when the cache has `val` pairs, each estimator's R² there (`coefficient_r2`). Samples are
    mirrored with probability `hflip`, and each background's exposure changed by up to ±`exposure_stops`."""
    prior, device = model.shading_prior, next(model.parameters()).device
    if prior is None:
        raise ValueError("the model has no shading prior to fit (model.shading_prior)")
    if steps < 1:
        raise ValueError(f"a new model's shading prior needs fitting: shading_prior_steps must be ≥ 1, got {steps}")
    stream = PairStream(manifest, files, "train", batch, seed=seed + 1, window=SHUFFLE_WINDOW)
    if "shading" not in stream.batch(0):
        raise ValueError("the shading prior is fitted on light-stage pairs (their maps' shading coefficients); "
                         "these pairs have none")
    prior.requires_grad_(True)
    optimizer = torch.optim.Adam(prior.parameters(), lr=lr)
    decay = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.1 + 0.45 * (1 + math.cos(math.pi * s / steps)))
    recent: list[float] = []
    with torch.enable_grad():
        for step in tqdm(range(steps), desc="shading prior", unit="step", disable=not progress):
            samples = stream.batch(step)
            gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
            if hflip:
                samples = mirror_samples(samples, model.codec, mirror_mask(gen, batch, hflip))
            gain = None
            if exposure_stops:
                gain = torch.exp2((torch.rand(len(samples["shading"]), generator=gen) * 2 - 1) * exposure_stops)
            loss = F.mse_loss(_coefficients(model, samples, device, gain), samples["shading"].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            decay.step()
            recent = (recent + [float(loss.detach())])[-50:]
    prior.requires_grad_(False)
    report = {"prior_loss": sum(recent) / max(len(recent), 1)}
    if (manifest.split == "val").any():
        report.update(coefficient_r2(model, manifest, files, "val"))
    log.info("shading prior: %s", ", ".join(f"{k} {v:.3f}" for k, v in report.items()))
    return report


@torch.no_grad()
def coefficient_r2(model: RelightModel, manifest: pd.DataFrame, files: dict, split: str,
                   batch: int = 256) -> dict[str, float]:
    """Share of the variance of the true coefficients of `split`'s pairs that each estimator explains (pooled over
    the 8 coefficients): {"prior_r2_source_<split>", "prior_r2_target_<split>"}."""
    device = next(model.parameters()).device
    stream = PairStream(manifest, files, split, batch)
    predicted, true = [], []
    for start in range(0, stream.n, batch):
        samples = stream.samples(start, min(batch, stream.n - start))
        predicted.append(_coefficients(model, samples, device).float().cpu())
        true.append(samples["shading"].float())
    p, y = torch.cat(predicted), torch.cat(true)
    out = {}
    for name, cols in (("source", slice(0, COEFFICIENTS)), ("target", slice(COEFFICIENTS, 2 * COEFFICIENTS))):
        residual = ((p[:, cols] - y[:, cols]) ** 2).sum()
        spread = ((y[:, cols] - y[:, cols].mean(0)) ** 2).sum().clamp_min(1e-12)
        out[f"prior_r2_{name}_{split}"] = float(1 - residual / spread)
    return out


__all__ = ["PRIOR_FILE", "coefficient_r2", "fit_shading_prior", "prepare_shading_prior"]

"""Validation images during training: a fixed set of validation pairs sampled with the model as it is now, shown
as a grid (composite | model | target per row), so a person sees what the losses mean."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from relightful.io import load_tensors, write_ldr
from relightful.data.shards import read_pair_manifest
from relightful.training.data import cache_places


def validation_batch(pairs_dir: Path, cache_files: dict[str, Path], n: int, split: str = "val") -> dict[str, torch.Tensor]:
    """The first `n` pairs of `split` (falling back to `train` when the split is empty), from the latent cache."""
    manifest = read_pair_manifest(pairs_dir).reset_index(drop=True)
    place = cache_places(manifest)
    rows = manifest[manifest.split == split]
    if rows.empty:
        rows = manifest[manifest.split == "train"]
    rows = rows.sort_values(["shard", "index"]).iloc[:n]
    items = {}
    for shard, group in rows.groupby("shard", sort=True):
        cache = load_tensors(cache_files[shard])
        idx = torch.as_tensor(place[group.index].to_numpy(), dtype=torch.long)
        for k, v in cache.items():
            items.setdefault(k, []).append(v[idx].float())
    return {k: torch.cat(v) for k, v in items.items()}


@torch.no_grad()
def sample_grid(model, batch: dict[str, torch.Tensor], steps: int, seed: int = 0, image_guidance: float = 1.5,
                lighting_guidance: float = 3.0, scheduler=None) -> np.ndarray:
    """(rows·S, 3·S, 3) uint8: composite | sample | target for each pair of `batch` (sRGB)."""
    from relightful.models.harmonizer import Harmonizer

    harmonizer = Harmonizer(model, scheduler)
    dtype = next(model.unet.parameters()).dtype
    features = model.background_features(batch["background"].to(dtype))
    prior = model.prior_log_gain(batch["composite"], batch["matte"], batch["background"])
    latents = harmonizer.sample(batch["composite"], batch["matte"], features, steps, seed, image_guidance,
                                lighting_guidance, prior=prior)
    decode = lambda z: ((model.codec.decode(z.to(dtype)).float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1)
    rows = torch.cat([decode(batch["composite"]), decode(latents), decode(batch["target"])], dim=2)
    return (rows.reshape(-1, *rows.shape[2:]).cpu().numpy() * 255 + 0.5).astype(np.uint8)


def write_grid(path: str | Path, grid: np.ndarray) -> None:
    write_ldr(path, grid.astype(np.float32) / 255.0)

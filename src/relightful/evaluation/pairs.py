"""Reading evaluation pairs from shards, building their panoramas z_b, and delivering a method's foreground.

`iter_batches` reads each shard of the selected rows once (the evaluated split is small). `read_pair_rows` reads
only the rows it is asked for, through safetensors slices, so a bounded sample spread over a large train split
(the gain regression's fit) costs those rows' bytes, not whole shards.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from relightful.data.shards import (ENVMAPS, MANIFEST, pair_panorama, read_map_store, read_pair_manifest, read_shard,
                                    shard_path)
from relightful.io import InputError, srgb_encode

log = logging.getLogger(__name__)

IMAGE_KEYS = ("x_a", "x_b", "y_b", "matte")


def select_pairs(pairs_dir: Path, split: str, max_pairs: int) -> pd.DataFrame:
    """The rows of `split`, in (shard, index) order, thinned evenly to at most `max_pairs` (a fixed set)."""
    manifest = read_pair_manifest(pairs_dir)
    rows = manifest[manifest.split == split].sort_values(["shard", "index"]).reset_index(drop=True)
    if len(rows) > max_pairs:
        rows = rows.iloc[np.linspace(0, len(rows) - 1, max_pairs).round().astype(int)].reset_index(drop=True)
    return rows


def _read_shard(path: Path, group: pd.DataFrame, keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
    tensors = read_shard(path)
    missing = [k for k in keys if k not in tensors]
    if missing:
        raise InputError(path, f"shard lacks {missing}")
    n = len(tensors["matte"])
    if group["index"].max() >= n:
        raise InputError(path, f"manifest refers to pair {group['index'].max()} but the shard holds {n}")
    return tensors


def iter_batches(pairs_dir: Path, rows: pd.DataFrame, batch: int, with_weights: bool,
                 skipped: dict[str, str] | None = None):
    """(rows, tensors) per batch, float32 linear images; each shard file is read once. An unreadable shard is
    recorded in `skipped` (when given; else it raises `InputError`) and the other shards go on."""
    keys = IMAGE_KEYS + (("w_a", "w_b") if with_weights else ())
    for group, tensors in _each_shard(pairs_dir, rows, skipped, lambda path, group: _read_shard(path, group, keys)):
        for start in range(0, len(group), batch):
            part = group.iloc[start:start + batch]
            idx = torch.tensor(part["index"].to_numpy(dtype=np.int64))
            yield part, {k: tensors[k][idx].float() for k in keys}


def read_pair_rows(pairs_dir: Path, rows: pd.DataFrame, keys: tuple[str, ...] = IMAGE_KEYS, batch: int = 64,
                   skipped: dict[str, str] | None = None):
    """(rows, tensors) in batches of at most `batch` rows, reading only those rows of each shard (slices). An
    unreadable shard is recorded in `skipped` (when given; else it raises `InputError`) and the others go on."""
    for _, parts in _each_shard(pairs_dir, rows, skipped,
                                lambda path, group: list(_read_rows(path, group, keys, batch))):
        yield from parts


def _each_shard(pairs_dir: Path, rows: pd.DataFrame, skipped: dict[str, str] | None, read):
    """(group, read(path, group)) for each shard of `rows`; an unreadable shard is recorded in `skipped` (when
    given; else its `InputError` is raised) and the others go on. A shard name that leaves the folder is always
    an error: it is a swapped manifest, not a damaged shard."""
    for shard, group in rows.groupby("shard", sort=False):
        first = group["pair_id"].iloc[0] if "pair_id" in group else "?"
        path = shard_path(pairs_dir, shard, f"{Path(pairs_dir) / MANIFEST}: pair {first} (shard {shard!r})")
        try:
            result = read(path, group)
        except InputError as err:
            if skipped is None:
                raise
            log.warning("skipping %s", err)
            skipped[str(path)] = str(err)
            continue
        yield group, result


def _read_rows(path: Path, group: pd.DataFrame, keys: tuple[str, ...], batch: int):
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt") as f:
            missing = [k for k in keys if k not in f.keys()]
            if missing:
                raise InputError(path, f"shard lacks {missing}")
            n = f.get_slice("matte").get_shape()[0]
            if group["index"].max() >= n:
                raise InputError(path, f"manifest refers to pair {group['index'].max()} but the shard holds {n}")
            for start in range(0, len(group), batch):
                part = group.iloc[start:start + batch]
                index = part["index"].to_numpy(dtype=np.int64)
                yield part, {k: torch.stack([f.get_slice(k)[int(i):int(i) + 1][0] for i in index]).float()
                             for k in keys}
    except (SafetensorError, OSError) as err:
        raise InputError(path, f"not a valid safetensors file ({err})") from err


def deliver(fg: torch.Tensor, matte: torch.Tensor, bg: torch.Tensor) -> torch.Tensor:
    """Composite in linear light and quantise as an 8-bit sRGB file would: (B, 3, H, W) sRGB in [0, 1]."""
    out = srgb_encode((matte * fg + (1 - matte) * bg).clamp(0, 1))
    return (out * 255).round() / 255


class Panoramas:
    """z_b of light-stage pairs, built exactly as training builds it (data/shards.py `pair_panorama`)."""

    COLUMNS = ("env_b", "rotation_b_deg", "scale", "exposure_b_stops")

    def __init__(self, maps: dict[str, torch.Tensor]):
        self.maps = maps

    @classmethod
    def from_pairs(cls, pairs_dir: Path) -> "Panoramas | None":
        """The pair folder's map store, or None when it has none (natural pairs)."""
        maps = read_map_store(pairs_dir)
        return cls(maps) if maps is not None else None

    def __call__(self, rows: pd.DataFrame) -> torch.Tensor:
        """(B, 3, h, 2h) float32 linear panoramas of `rows`, rounded through float16 as the training cache is."""
        missing = [c for c in self.COLUMNS if c not in rows.columns]
        if missing:
            raise InputError(Path(ENVMAPS), f"the manifest lacks {missing}, needed to build the panoramas")
        unknown = sorted(set(rows.env_b) - set(self.maps))
        if unknown:
            raise InputError(Path(ENVMAPS), f"no map(s) {unknown} for the pairs of the manifest")
        return torch.stack([pair_panorama(self.maps[r.env_b], r) for r in rows.itertuples()]).half().float()

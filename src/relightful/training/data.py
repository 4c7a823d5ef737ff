"""Streaming training pairs from shards, with the fixed images' latents encoded once and cached.

The shards of `render-pairs` (and of `augment`) hold linear images. Before training, each shard is turned once
into a cache file of what the model consumes, in model space (DESIGN 3.4: sRGB-encoded, mapped to [−1, 1]):

    composite, target   (P, C, s, s) latents of m·x_a + (1−m)·y_b and m·x_b + (1−m)·y_b
    matte               (P, 1, s, s) at latent resolution; (P, 4, s, s) with the silhouette normals when the model
                        takes them (`RelightModel.matte_latent`)
    background          (P, 3, S, S) y_b, the input of F_bg
    panorama            (P, 3, h, 2h) z_b, linear, rotated and scaled like y_b (light-stage pairs only)
    light               (P, 6) the mean light directions of the source and target maps, as rotated for the pair
                        (training/light_probe.py; light-stage pairs only)
    shading             (P, 16) the level-free order-2 shading coefficients of the source and target maps, as
                        rotated for the pair (lighting/sh.py; light-stage pairs only)

`PairStream.batch(step)` is a pure function of (seed, step, rank): the data order needs no state to resume.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from relightful.data.splits import source_of
from relightful.data.shards import MANIFEST, pair_panorama, read_map_store, read_pair_manifest, read_shard, shard_path
from relightful.io import InputError, load_tensors, save_tensors
from relightful.lighting.sh import shading_coefficients
from relightful.models.codecs import to_model_space
from relightful.training.light_probe import mean_light_direction

CACHE_VERSION = "3"  # 2: + light; 3: + shading


def cache_key(shard_path: Path, codec_identity: str, image_size: int, rows: np.ndarray,
              shape_channels: int = 1) -> str:
    """The cache file's key: the shard file, the codec and size, and which of the shard's rows it holds (a manifest
    may list only some of a shard's pairs, e.g. one curated to drop bad pairs)."""
    stat = shard_path.stat()
    raw = f"{CACHE_VERSION}|{shard_path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{codec_identity}|{image_size}"
    if shape_channels != 1:  # keys of the matte-only caches stay as they were
        raw += f"|shape{shape_channels}"
    raw += "|rows" + hashlib.sha256(np.sort(np.asarray(rows, dtype=np.int64)).tobytes()).hexdigest()
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def cache_places(manifest: pd.DataFrame) -> pd.Series:
    """Each manifest row's place in its shard's cache file, which holds the shard's listed rows (whatever their
    split) in index order (`build_cache`); aligned with `manifest`'s index."""
    return manifest.sort_values(["shard", "index"]).groupby("shard").cumcount().reindex(manifest.index)


@torch.no_grad()
def encode_shard(shard: dict[str, torch.Tensor], rows: pd.DataFrame, model, panoramas: dict | None,
                 batch: int = 16) -> dict[str, torch.Tensor]:
    """The cache tensors of one shard (see the module docstring)."""
    size = model.config.image_size
    device = next(model.unet.parameters()).device
    out: dict[str, list[torch.Tensor]] = {"composite": [], "target": [], "matte": [], "background": []}
    for i in range(0, len(rows), batch):
        idx = torch.tensor(rows["index"].to_numpy()[i:i + batch], dtype=torch.long)
        x_a, x_b, y_b, m = (shard[k][idx].to(device).float() for k in ("x_a", "x_b", "y_b", "matte"))
        if x_a.shape[-1] != size:
            x_a, x_b, y_b, m = (F.interpolate(t, size=(size, size), mode="area" if t.shape[-1] > size else "bilinear")
                                for t in (x_a, x_b, y_b, m))
        out["composite"].append(model.codec.encode(to_model_space(m * x_a + (1 - m) * y_b)))
        out["target"].append(model.codec.encode(to_model_space(m * x_b + (1 - m) * y_b)))
        out["matte"].append(model.matte_latent(m))
        out["background"].append(to_model_space(y_b).half())
    cache = {k: torch.cat(v).cpu() for k, v in out.items()}
    if panoramas is not None:
        cache["panorama"] = torch.stack([pair_panorama(panoramas[r.env_b], r) for r in rows.itertuples()]).half()
        cache["light"] = torch.stack([torch.cat([mean_light_direction(panoramas[r.env_a], r.rotation_a_deg),
                                                 mean_light_direction(panoramas[r.env_b], r.rotation_b_deg)])
                                      for r in rows.itertuples()])
        cache["shading"] = torch.stack([torch.cat([shading_coefficients(panoramas[r.env_a], r.rotation_a_deg),
                                                   shading_coefficients(panoramas[r.env_b], r.rotation_b_deg)])
                                        for r in rows.itertuples()])
    return cache


def build_cache(pairs_dir: str | Path, cache_root: str | Path, model, progress: bool = True) -> dict[str, Path]:
    """Encode every shard once (skipping those already cached); returns shard name -> cache file, which holds the
    manifest's rows of that shard in the order of their index."""
    pairs_dir, cache_root = Path(pairs_dir), Path(cache_root)
    manifest = read_pair_manifest(pairs_dir)
    panoramas: dict | None = None  # the map store, read only if a shard needs encoding
    files = {}
    for name, rows in tqdm(list(manifest.groupby("shard", sort=True)), desc="latent cache", unit="shard",
                           disable=not progress):
        path = shard_path(pairs_dir, name, f"{pairs_dir / MANIFEST}: pair {rows.pair_id.iloc[0]} (shard {name!r})")
        if not path.is_file():
            raise InputError(path, "shard listed in the manifest is missing")
        key = cache_key(path, model.codec.identity, model.config.image_size, rows["index"].to_numpy(),
                        model.config.shape_channels)
        target = cache_root / f"{Path(name).stem}-{key}.safetensors"
        if not target.is_file():
            if panoramas is None:
                panoramas = read_map_store(pairs_dir)
            rows = rows.sort_values("index")
            cache = encode_shard(read_shard(path), rows, model, panoramas)
            save_tensors(target, cache, metadata={"pair_ids": ",".join(rows.pair_id)})
        files[name] = target
    return files


class PairStream:
    """Deterministic, resumable batches of cached pairs of one split.

    Each epoch permutes the shards, then the pairs within windows of `window` shards (a streaming shuffle: at
    most `window` shards are in memory). Optimizer step `step`, micro-step `micro` of rank `rank` reads samples
    [n, n + micro_batch) of the endless epoch-after-epoch sequence, n = ((step·accum + micro)·world + rank)·micro_batch.
    """

    def __init__(self, manifest: pd.DataFrame, cache_files: dict[str, Path], split: str, micro_batch: int,
                 grad_accum: int = 1, world: int = 1, rank: int = 0, seed: int = 0, window: int = 4):
        listed = manifest.reset_index(drop=True)
        place = cache_places(listed)
        rows = listed[listed.split == split].sort_values(["shard", "index"])
        if rows.empty:
            raise ValueError(f"no pairs in split {split!r}")
        self.shards = sorted(rows.shard.unique())
        self.indices = {s: place[rows.index[rows.shard == s]].to_numpy() for s in self.shards}  # places in the file
        self.files = cache_files
        self.n = len(rows)
        self.micro_batch, self.grad_accum, self.world, self.rank = micro_batch, grad_accum, world, rank
        self.seed, self.window = seed, window
        self._epochs: OrderedDict[int, list[tuple[str, int]]] = OrderedDict()
        self._loaded: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()

    def epoch_order(self, epoch: int) -> list[tuple[str, int]]:
        if epoch not in self._epochs:
            rng = np.random.default_rng([self.seed, epoch])
            shards = [self.shards[i] for i in rng.permutation(len(self.shards))]
            order = []
            for w in range(0, len(shards), self.window):
                items = [(s, int(i)) for s in shards[w:w + self.window] for i in self.indices[s]]
                order += [items[j] for j in rng.permutation(len(items))]
            self._epochs[epoch] = order
            while len(self._epochs) > 2:
                self._epochs.popitem(last=False)
        return self._epochs[epoch]

    def _shard(self, name: str) -> dict[str, torch.Tensor]:
        if name not in self._loaded:
            self._loaded[name] = load_tensors(self.files[name])
            while len(self._loaded) > self.window + 1:
                self._loaded.popitem(last=False)
        self._loaded.move_to_end(name)
        return self._loaded[name]

    def samples(self, start: int, count: int) -> dict[str, torch.Tensor]:
        items = [self.epoch_order((start + k) // self.n)[(start + k) % self.n] for k in range(count)]
        by_shard: OrderedDict[str, tuple[list[int], list[int]]] = OrderedDict()  # shard -> (rows, batch slots)
        for slot, (shard, row) in enumerate(items):
            rows, slots = by_shard.setdefault(shard, ([], []))
            rows.append(row)
            slots.append(slot)
        out: dict[str, torch.Tensor] = {}
        for shard, (rows, slots) in by_shard.items():  # one gather per shard and tensor, not one per sample
            tensors = self._shard(shard)
            for key, value in tensors.items():
                if key == "__metadata__":
                    continue
                if key not in out:
                    out[key] = torch.empty((count, *value.shape[1:]), dtype=torch.float32)
                out[key][torch.tensor(slots)] = value[torch.tensor(rows)].float()
        return out

    def batch(self, step: int, micro: int = 0) -> dict[str, torch.Tensor]:
        n = ((step * self.grad_accum + micro) * self.world + self.rank) * self.micro_batch
        return self.samples(n, self.micro_batch)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.n / (self.micro_batch * self.grad_accum * self.world))


_OUT_OF_STREAM = "<out of stream>"  # a split name no manifest uses: rows a stream must not draw


class ReplayStream:
    """Batches of one stream with a fixed share replayed from another (stage 3's light-stage replay, or the pairs
    of chosen target maps, `by_target_source`), keeping the tensors both streams have (stage 3 drops the light-stage
    panorama). Both are `PairStream`s of the same world, each with its part of the micro-batch, so the mixture is
    as deterministic and resumable as they are."""

    def __init__(self, main: PairStream, replay: PairStream):
        self.main, self.replay = main, replay

    @classmethod
    def split(cls, main_rows: pd.DataFrame, main_files: dict[str, Path], replay_rows: pd.DataFrame,
              replay_files: dict[str, Path], split: str, micro_batch: int, replay_fraction: float, grad_accum: int = 1,
              world: int = 1, rank: int = 0, seed: int = 0, window: int = 4) -> "ReplayStream":
        """`round(replay_fraction · micro_batch)` samples of each micro-batch from the replay rows (at least one,
        and at least one from the main rows)."""
        if not 0.0 < replay_fraction < 1.0:
            raise ValueError(f"replay_fraction must be in (0, 1) to mix two streams, got {replay_fraction}")
        if micro_batch < 2:
            raise ValueError(f"a replayed batch needs a micro-batch of at least 2, got {micro_batch}")
        n_replay = min(micro_batch - 1, max(1, round(replay_fraction * micro_batch)))
        return cls(PairStream(main_rows, main_files, split, micro_batch - n_replay, grad_accum, world, rank, seed,
                              window),
                   PairStream(replay_rows, replay_files, split, n_replay, grad_accum, world, rank, seed + 1, window))

    @classmethod
    def by_target_source(cls, rows: pd.DataFrame, files: dict[str, Path], sources: tuple[str, ...], split: str,
                         micro_batch: int, fraction: float, grad_accum: int = 1, world: int = 1, rank: int = 0,
                         seed: int = 0, window: int = 4) -> "ReplayStream":
        """Batches of one split of `rows` with `round(fraction · micro_batch)` samples of each micro-batch drawn from
        its pairs whose target map (`env_b`) comes from one of `sources` (`source_of`), the rest from its other
        pairs: a fixed share for maps that the pair plan gives few pairs. Pairs without a target map (natural
        pairs) are never chosen."""
        chosen = rows.env_b.map(lambda m: isinstance(m, str) and source_of(m) in sources).astype(bool)
        in_split = rows.split == split
        if not (chosen & in_split).any():
            raise ValueError(f"no {split} pairs have a target map from {list(sources)} (target_sources)")
        if (in_split & ~chosen).sum() == 0:
            raise ValueError(f"every {split} pair has a target map from {list(sources)}: nothing to mix them with")
        others, picked = rows.copy(), rows.copy()  # both keep every row: a row's place in its cache file stays
        others.loc[chosen, "split"] = _OUT_OF_STREAM
        picked.loc[~chosen, "split"] = _OUT_OF_STREAM
        return cls.split(others, files, picked, files, split, micro_batch, fraction, grad_accum, world, rank, seed,
                         window)

    def batch(self, step: int, micro: int = 0) -> dict[str, torch.Tensor]:
        main, replay = self.main.batch(step, micro), self.replay.batch(step, micro)
        return {k: torch.cat([main[k], replay[k]]) for k in main if k in replay}

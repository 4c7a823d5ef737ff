"""The shard format of pair folders (DESIGN 3.4), one owner for its file names and its readers and writers.

A pair folder (`relightful render-pairs`, `relightful augment`) holds:

    shard-00000.safetensors    fixed-size tensors of many pairs (x_a, x_b, y_b, matte, ...; data/render_pairs.py)
    envmaps.safetensors        light-stage pairs only: each map used, once, "<map_id>" (h, 2h, 3) float16 linear,
                               unrotated; z_b of a pair is `pair_panorama(envmaps[env_b], row)`
    manifest.parquet           one row per pair (columns: data/schema.py), written last: its presence means the
                               folder is complete

An ingest folder (`relightful ingest-hdr`) has a `manifest.parquet` of its own, one row per input map.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import torch

from relightful.io import InputError, atomic_path, load_tensors, save_tensors
from relightful.lighting import rotate_envmap

MANIFEST = "manifest.parquet"     # a folder's table of contents (pairs, or ingested maps)
ENVMAPS = "envmaps.safetensors"   # the map store of a light-stage pair folder
PAIR_KEY_COLUMNS = ("pair_id", "shard", "index", "split")  # what every reader of a pair manifest relies on


def shard_name(number: int) -> str:
    return f"shard-{number:05d}.safetensors"


# --- manifests -----------------------------------------------------------------------------------------------------

def read_manifest(path: str | Path, missing: str = "manifest not found", columns: tuple[str, ...] = ()) -> pd.DataFrame:
    """Read a parquet manifest; a missing or unreadable file, or one without `columns`, is an InputError naming it
    (`missing` says what to do about a missing one)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, missing)
    try:
        manifest = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise InputError(path, f"cannot read parquet manifest ({type(exc).__name__}: {exc})") from exc
    absent = set(columns) - set(manifest.columns)
    if absent:
        raise InputError(path, f"missing columns {sorted(absent)}")
    return manifest


def read_pair_manifest(pairs_dir: str | Path) -> pd.DataFrame:
    """The manifest of a pair folder."""
    return read_manifest(Path(pairs_dir) / MANIFEST, "pair manifest not found (render or augment the pairs first)",
                         PAIR_KEY_COLUMNS)


def write_manifest(manifest: pd.DataFrame, path: str | Path) -> None:
    """Write a manifest atomically (readers never see a partial file)."""
    with atomic_path(path) as tmp:
        manifest.to_parquet(tmp, index=False)


# --- shards and the map store --------------------------------------------------------------------------------------

def read_shard(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a shard; an unreadable file is an InputError naming it."""
    return load_tensors(path)


def read_map_store(pairs_dir: str | Path) -> dict[str, torch.Tensor] | None:
    """The map store of a pair folder, or None when it has none (natural pairs)."""
    path = Path(pairs_dir) / ENVMAPS
    return load_tensors(path) if path.is_file() else None


def pair_panorama(env: torch.Tensor, row) -> torch.Tensor:
    """z_b of one pair, (3, h, 2h) linear: its stored map `env` (h, 2h, 3) rotated by `row.rotation_b_deg`, times
    the pair's `scale` and `2**exposure_b_stops`, as y_b was (DESIGN 3.4)."""
    env = rotate_envmap(env.float(), float(row.rotation_b_deg))
    return env.permute(2, 0, 1) * float(row.scale) * 2.0 ** float(row.exposure_b_stops)


class ShardWriter:
    """Writes each shard on a thread while the next one renders (file writes release the GIL).

    At most one write is in flight, so at most two shards are in memory; leaving the block waits for the last
    write and re-raises any write error.
    """

    def __init__(self):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-writer")
        self._pending: Future | None = None

    def submit(self, path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
        self.wait()
        self._pending = self._pool.submit(save_tensors, path, tensors, metadata, drop_from_cache=True)

    def wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)


__all__ = ["ENVMAPS", "MANIFEST", "PAIR_KEY_COLUMNS", "ShardWriter", "pair_panorama", "read_manifest",
           "read_map_store", "read_pair_manifest", "read_shard", "shard_name", "write_manifest"]

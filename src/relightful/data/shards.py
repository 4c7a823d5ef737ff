"""The shard format of pair folders (DESIGN 3.4), one owner for its file names and its readers and writers.

A pair folder (`relightful render-pairs`, `relightful augment`) holds:

    shard-00000.safetensors    fixed-size tensors of many pairs (x_a, x_b, y_b, matte, ...; data/render_pairs.py)
    envmaps.safetensors        light-stage pairs only: each map used, once, "<map_id>" (h, 2h, 3) float16 linear,
                               unrotated; z_b of a pair is `pair_panorama(envmaps[env_b], row)`
    manifest.parquet           one row per pair (columns: data/schema.py), written last: its presence means the
                               folder is complete

An ingest folder (`relightful ingest-hdr`) has a `manifest.parquet` of its own, one row per input map.

Integrity (what makes a folder that looks complete also right):
- every shard's metadata holds the fingerprint of the plan it was rendered from (`plan_fingerprint`), and the
  manifest records it per row (`shard_fingerprint`): validate-data compares the two, so a manifest left over from
  another plan (another seed, other maps) over new shards is caught;
- shard names read from a manifest must resolve inside the folder (`shard_path`): the manifest is data, not a list
  of places to read from;
- a job that rewrites a folder first deletes its manifest, then what it replaces (`prepare_output`), so a run killed
  at any moment leaves either the old complete folder or one without a manifest, never a mix.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import torch

from relightful.io import InputError, atomic_path, load_tensors, read_metadata, save_tensors
from relightful.io.atomic import remove_temp_files
from relightful.io.paths import contained
from relightful.lighting import rotate_envmap

log = logging.getLogger(__name__)

MANIFEST = "manifest.parquet"     # a folder's table of contents (pairs, or ingested maps)
ENVMAPS = "envmaps.safetensors"   # the map store of a light-stage pair folder
PAIR_KEY_COLUMNS = ("pair_id", "shard", "index", "split")  # what every reader of a pair manifest relies on
SHARD_PATTERN = r"^shard-\d{5}\.safetensors$"  # the only names `shard_name` writes
FINGERPRINT = "fingerprint"              # the shard metadata key of its plan's fingerprint ...
SHARD_FINGERPRINT = "shard_fingerprint"  # ... and the manifest column that records it


def shard_name(number: int) -> str:
    return f"shard-{number:05d}.safetensors"


def is_shard_name(name: str) -> bool:
    return re.fullmatch(SHARD_PATTERN, str(name)) is not None


def shard_path(pairs_dir: str | Path, name: str, where: str | Path) -> Path:
    """The file of shard `name` of a pair folder; a name that is absolute, has `..` or resolves (through a
    symlink) outside the folder is an `InputError(where, ...)`."""
    return contained(pairs_dir, name, where)


def plan_fingerprint(rows: pd.DataFrame, context: dict) -> str:
    """Hex sha256 of a shard's plan: its rows (the columns given, in order, values exactly as JSON writes them)
    and `context` (the settings and input checksums its pixels depend on). Equal plans, equal fingerprints, on any
    machine: nothing here depends on dict order, pandas' float formatting or the process."""
    table = {"columns": [str(c) for c in rows.columns],
             "rows": [[_plain(v) for v in row] for row in rows.itertuples(index=False, name=None)]}
    text = json.dumps({"plan": table, "context": context}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _plain(value):
    """numpy scalars as Python ones (float repr is exact), missing values as None."""
    if hasattr(value, "item"):
        value = value.item()
    return None if isinstance(value, float) and value != value else value


def read_fingerprint(path: str | Path) -> str | None:
    """The plan fingerprint in a shard's metadata, or None when it has none; an unreadable file is an InputError."""
    return read_metadata(path).get(FINGERPRINT)


def prepare_output(folder: str | Path, replaced: Iterable[str], temp_targets: Iterable[str] | None = None) -> None:
    """Make `folder` ready to be rewritten: delete its manifest FIRST (from then on the folder says "incomplete",
    whatever happens), then the files in `replaced` (names or glob patterns) that this run will write again, then
    the temp files that killed writes left (those of `temp_targets` only, when given: other workers may be writing
    beside this one)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).unlink(missing_ok=True)
    for pattern in replaced:
        for path in sorted(folder.glob(pattern)):
            if path.is_file() or path.is_symlink():
                path.unlink()
    for path in remove_temp_files(folder, temp_targets):
        log.info("removed %s, left by a killed write", path)


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
    """The manifest of a pair folder; every shard it names must lie inside the folder (`check_shard_names`)."""
    path = Path(pairs_dir) / MANIFEST
    manifest = read_manifest(path, "pair manifest not found (render or augment the pairs first)", PAIR_KEY_COLUMNS)
    check_shard_names(manifest, pairs_dir, path)
    return manifest


def check_shard_names(manifest: pd.DataFrame, pairs_dir: str | Path, manifest_path: str | Path) -> None:
    """Refuse a manifest with a shard name that leaves `pairs_dir`; the error names the first pair using it."""
    first = manifest.drop_duplicates("shard")
    for shard, pair_id in zip(first["shard"], first["pair_id"]):
        if not isinstance(shard, str):
            raise InputError(f"{manifest_path}: pair {pair_id}", f"shard {shard!r} is not a file name")
        shard_path(pairs_dir, shard, f"{manifest_path}: pair {pair_id} (shard {shard!r})")


def write_manifest(manifest: pd.DataFrame, path: str | Path) -> None:
    """Write a manifest atomically (readers never see a partial file)."""
    with atomic_path(path) as tmp:
        manifest.to_parquet(tmp, index=False)


def shard_file_status(pairs_dir: str | Path, manifest: pd.DataFrame) -> dict[str, str]:
    """{shard name: "ok" or what is wrong} for each shard a pair manifest names: the name must resolve inside the
    folder, the file must be readable, carry the fingerprint the manifest records for it, and hold the manifest's
    pairs at their indices. Reads shard headers only (no tensors), so it costs milliseconds per shard."""
    status = {}
    has_fp = SHARD_FINGERPRINT in manifest.columns
    for shard, rows in manifest.groupby("shard", sort=True, dropna=False):
        try:
            path = shard_path(pairs_dir, str(shard), "shard")
            if not path.is_file():
                status[shard] = "missing"
                continue
            meta = read_metadata(path)
        except InputError as err:
            status[shard] = err.reason
            continue
        recorded = set(rows[SHARD_FINGERPRINT].astype(str)) if has_fp else set()
        if len(recorded) > 1:
            status[shard] = "its rows record different fingerprints"
        elif FINGERPRINT not in meta:
            status[shard] = "the shard has no plan fingerprint (written by an older version: render it again)"
        elif recorded and recorded != {meta[FINGERPRINT]}:
            status[shard] = (f"fingerprint mismatch: the shard was rendered from plan {meta[FINGERPRINT][:12]}, the "
                             f"manifest records {next(iter(recorded))[:12]}")
        elif not _pairs_match(meta.get("pair_ids"), rows):
            status[shard] = "the shard holds other pairs than the manifest lists at these indices"
        else:
            status[shard] = "ok"
    return status


def _pairs_match(pair_ids: str | None, rows: pd.DataFrame) -> bool:
    if pair_ids is None:
        return True  # shards of other writers may not list them; the fingerprint still ties them to the plan
    stored = pair_ids.split(",")
    index = pd.to_numeric(rows["index"], errors="coerce")
    if index.isna().any() or (index < 0).any() or (index >= len(stored)).any():
        return False
    return [stored[int(i)] for i in index] == list(rows["pair_id"].astype(str))


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


__all__ = ["ENVMAPS", "FINGERPRINT", "MANIFEST", "PAIR_KEY_COLUMNS", "SHARD_FINGERPRINT", "SHARD_PATTERN", "ShardWriter",
           "check_shard_names", "is_shard_name", "pair_panorama", "plan_fingerprint", "prepare_output",
           "read_fingerprint", "read_manifest", "shard_file_status", "read_map_store", "read_pair_manifest", "read_shard", "shard_name",
           "shard_path", "write_manifest"]

"""Stage-3 training pairs from natural portraits (DESIGN 3.6 stage 3).

For a real photo P with matte m and a random other background B, the stage-2 model relights the subject of P to B;
that relit subject R, put back over the photo's *own* background, is the input, and the photo the target:

    x_a = R (where m > 0; P elsewhere)    x_b = y_b = P    composite m·R + (1−m)·P  ->  target P

so the model learns to undo a relighting on real skin, hair and clothes, which the light stage's subjects lack.
Everything is linear float16 in the pair-shard format of DESIGN 3.4 (data/shards.py), so `relightful train --stage 3`
reads it like rendered pairs. Output folder:

    shard-00000.safetensors   x_a, x_b, y_b (P, 3, S, S), matte (P, 1, S, S); metadata: pair ids, fingerprint, rows
    manifest.parquet          one row per pair (data/schema.py NATURAL_PAIR_COLUMNS); written last
    report.json               portraits and backgrounds that were skipped and why, counts per split
    mattes/                   mattes computed for portraits without one (when augment.auto_matte is set)

Resuming: each shard's metadata holds a fingerprint of everything its pixels depend on (its plan rows, the
checksums of its photos, mattes and backgrounds, the model's files, the sampling settings). A shard whose file
already has the fingerprint it would get is kept as it is, byte for byte; its manifest rows come from its metadata.
So a killed run continues where it stopped, and a changed input re-renders only the shards it touches. Sampling is
deterministic for a seed: every batch's noise seed is a hash of the seed, the shard and the batch's position. The
manifest records each shard's fingerprint (`shard_fingerprint`), so validation can tell a manifest from the shards.

Before any work, a run deletes the manifest (first), the report and every shard it will not keep, and the temp files
of killed writes (data/shards.py `prepare_output`): a kill at any moment leaves no manifest over other shards. Every
entry of the input folders that is not used is reported (report.json `failed_*` and `skipped_inputs`, and stderr):
a symlink loop, a file where a portrait folder belongs, a background with another suffix.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from relightful.augment.config import AugmentConfig
from relightful.augment.natural_pair_plan import plan_natural_pairs
from relightful.augment.portraits import (Background, Portrait, load_background, load_portrait, scan_backgrounds,
                                          scan_portraits)
from relightful.data.schema import NATURAL_PAIR_COLUMNS
from relightful.augment.portraits import BACKGROUND_SUFFIXES
from relightful.data.shards import (FINGERPRINT, MANIFEST, SHARD_FINGERPRINT, ShardWriter, prepare_output,
                                    write_manifest)
from relightful.data.splits import stable_hash
from relightful.io import InputError, atomic_write_text, read_metadata
from relightful.io.atomic import remove_temp_files
from relightful.io.digest import folder_digest

log = logging.getLogger(__name__)

REPORT = "report.json"
MATTES_DIR = "mattes"
FORMAT_VERSION = "2"  # 2: manifest rows (and so shard metadata) carry shard_fingerprint
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class AugmentResult:
    manifest: pd.DataFrame
    failed_portraits: dict[str, str]
    failed_backgrounds: dict[str, str]
    rendered_shards: list[str]
    kept_shards: list[str]
    skipped_inputs: dict[str, str] = field(default_factory=dict)  # input entries neither used nor rejected, why


# --- fingerprints --------------------------------------------------------------------------------------------------

def resolve_sampling(config: AugmentConfig, model_meta: dict) -> AugmentConfig:
    """The config with steps and guidance scales left at None filled from the model folder's "sampling" block
    (what the model was validated with, as `relightful harmonize` does), else the pipeline's usual 20, 1.5, 3.0."""
    from relightful.models.harmonizer import SAMPLING_DEFAULTS

    saved = model_meta.get("sampling") or {}
    chosen = {k: getattr(config, k) for k in SAMPLING_DEFAULTS}
    return dataclasses.replace(config, **{k: saved.get(k, fallback) if chosen[k] is None else chosen[k]
                                          for k, fallback in SAMPLING_DEFAULTS.items()})


def sampling_settings(config: AugmentConfig) -> dict:
    """The config values that change a shard's pixels (and nothing else, so e.g. a new device keeps the shards)."""
    return {k: getattr(config, k) for k in ("size", "seed", "batch", "steps", "image_guidance", "lighting_guidance",
                                            "precision")}


def shard_fingerprint(rows: pd.DataFrame, portraits: dict[str, Portrait], backgrounds: dict[str, Background],
                      model: str, config: AugmentConfig) -> str:
    content = {"version": FORMAT_VERSION, "model": model, "settings": sampling_settings(config),
               "pairs": [[r.pair_id, int(r.index), portraits[r.subject_id].digest, backgrounds[r.background_id].digest]
                         for r in rows.itertuples()]}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def batch_seed(seed: int, shard: str, start: int) -> int:
    return stable_hash(seed, "noise", shard, start) % (2**63)


# --- inputs nobody else reports -----------------------------------------------------------------------------------

def _entry_problem(path: Path) -> str | None:
    """Why a folder entry cannot be looked at (a symlink loop, a dangling link), else None."""
    if not path.is_symlink():
        return None
    try:
        path.resolve(strict=True)
    except RuntimeError:
        return "symlink loop"
    except OSError:
        return f"dangling symlink (to {path.readlink()})"
    return None


def unscanned_entries(portraits_dir: Path, backgrounds_dir: Path, used: set[Path]) -> dict[str, str]:
    """{path: why} for every entry of the two input folders that the scans neither used nor rejected (`used`
    holds both), so nothing is passed over in silence."""
    skipped = {}
    for folder, expected in ((portraits_dir, "a portrait is a folder holding image.png (or .jpg) and matte.png"),
                             (backgrounds_dir, f"backgrounds are files named {', '.join(BACKGROUND_SUFFIXES)}")):
        for path in sorted(folder.iterdir()):
            if path in used:
                continue
            problem = _entry_problem(path)
            if problem is None:
                problem = "hidden entry" if path.name.startswith(".") else f"not used: {expected}"
            skipped[str(path)] = problem
            log.warning("skipped %s: %s", path, problem)
    return skipped


# --- relighting ----------------------------------------------------------------------------------------------------

class Relighter:
    """Relights a batch of subjects to a batch of backgrounds (`Harmonizer.relight_batch`) with the sampling
    settings of the augment config."""

    def __init__(self, harmonizer, config: AugmentConfig):
        self.h, self.config = harmonizer, config

    def __call__(self, photo: torch.Tensor, matte: torch.Tensor, background: torch.Tensor, seed: int) -> torch.Tensor:
        cfg = self.config
        return self.h.relight_batch(photo, matte, background, seed, cfg.steps, cfg.image_guidance,
                                    cfg.lighting_guidance)


def load_relighter(model_folder: Path, config: AugmentConfig) -> Relighter:
    from relightful.models.harmonizer import Harmonizer

    harmonizer = Harmonizer.from_pretrained(model_folder, device=config.device)
    if config.precision != "fp32":
        harmonizer.model.to(_DTYPES[config.precision])
    return Relighter(harmonizer, config)


# --- shards --------------------------------------------------------------------------------------------------------

class _Cache:
    """Least-recently-used images at the pair size: shards are grouped by portrait, so few are kept."""

    def __init__(self, load, capacity: int):
        self.load, self.capacity, self.items = load, capacity, OrderedDict()

    def get(self, key, item):
        if key not in self.items:
            self.items[key] = self.load(item)
            while len(self.items) > self.capacity:
                self.items.popitem(last=False)
        self.items.move_to_end(key)
        return self.items[key]


def pair_statistics(x_a: torch.Tensor, x_b: torch.Tensor, y_b: torch.Tensor, matte: torch.Tensor) -> dict:
    """Per-pair image statistics of the manifest (linear values), from the tensors as written (float16)."""
    x_a, x_b, y_b, m = (t.float() for t in (x_a, x_b, y_b, matte))
    mass = 3.0 * m.sum(dim=(1, 2, 3)).clamp_min(1e-12)
    inside = (m > 0).expand_as(x_a)
    neg = torch.tensor(float("-inf"))
    return {
        "scale": np.ones(len(m)),
        "matte_coverage": (m > 0.5).float().mean(dim=(1, 2, 3)).double().numpy(),
        "fg_mean_a": ((m * x_a).sum(dim=(1, 2, 3)) / mass).double().numpy(),
        "fg_mean_b": ((m * x_b).sum(dim=(1, 2, 3)) / mass).double().numpy(),
        "fg_max": torch.maximum(torch.where(inside, x_a, neg), torch.where(inside, x_b, neg))
                  .amax(dim=(1, 2, 3)).clamp_min(0).double().numpy(),
        "fg_change": ((m * (x_a - x_b).abs()).sum(dim=(1, 2, 3)) / mass).double().numpy(),
        "bg_mean": y_b.mean(dim=(1, 2, 3)).double().numpy(),
        "bg_max": y_b.amax(dim=(1, 2, 3)).double().numpy(),
    }


def render_shard(rows: pd.DataFrame, portraits: _Cache, backgrounds: _Cache, relighter: Relighter,
                 config: AugmentConfig, progress_bar=None) -> tuple[dict[str, torch.Tensor], pd.DataFrame]:
    """The tensors and completed manifest rows of one shard (rows in index order)."""
    shard = rows.shard.iloc[0]
    photos, mattes = zip(*(portraits.get(r.subject_id, r.subject_id) for r in rows.itertuples()))
    photo, matte = torch.stack(photos), torch.stack(mattes)
    relit = torch.empty_like(photo)
    seeds = np.empty(len(rows), dtype=np.int64)
    for start in range(0, len(rows), config.batch):
        part = slice(start, start + config.batch)
        bg = torch.stack([backgrounds.get(b, b) for b in rows.background_id.iloc[part]])
        seeds[part] = batch_seed(config.seed, shard, start)
        relit[part] = relighter(photo[part], matte[part], bg, int(seeds[part][0]))
        if progress_bar is not None:
            progress_bar.update(len(bg))
    photo16, matte16 = photo.half(), matte.half()
    x_a = torch.where(matte16 > 0, relit.clamp(0, 1).half(), photo16)
    tensors = {"x_a": x_a, "x_b": photo16, "y_b": photo16.clone(), "matte": matte16}
    stats = pair_statistics(tensors["x_a"], tensors["x_b"], tensors["y_b"], tensors["matte"])
    return tensors, rows.assign(seed=seeds, **stats)


def manifest_frame(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows in the column order and types of NATURAL_PAIR_COLUMNS; light-stage-only columns are null."""
    out = rows.reindex(columns=list(NATURAL_PAIR_COLUMNS)).reset_index(drop=True)
    for column, kind in NATURAL_PAIR_COLUMNS.items():
        values = out[column]
        if kind == "str":
            out[column] = values.astype(object).where(values.notna(), None)
        else:
            out[column] = values.astype("int64" if kind == "int" else "float64")
    return out


def _existing_rows(path: Path, fingerprint: str) -> pd.DataFrame | None:
    """The manifest rows stored in a shard written earlier with the same fingerprint, else None."""
    if not path.is_file():
        return None
    try:
        meta = read_metadata(path)
    except InputError:
        return None
    if meta.get("fingerprint") != fingerprint or "rows" not in meta:
        return None
    return pd.DataFrame(json.loads(meta["rows"]))


# --- the job -------------------------------------------------------------------------------------------------------

def augment_pairs(portraits_dir: str | Path, backgrounds_dir: str | Path, model_folder: str | Path,
                  out_dir: str | Path, config: AugmentConfig | None = None, progress: bool = True,
                  resolve=Path, **overrides) -> AugmentResult:
    """Synthesise the natural pairs into `out_dir` (see the module docstring); `overrides` replace config fields.
    `model_folder` is the stage-2 model folder, or any reference that `resolve` maps to one (the CLI passes
    `relightful.tracking.resolve_model` for MLflow URIs).

    Bad portraits and backgrounds are skipped and listed in the result and report.json; a missing model folder,
    no usable portrait or no usable background raises `InputError` before any work.
    """
    config = dataclasses.replace(config or AugmentConfig(), **overrides)
    out_dir = Path(out_dir)
    remove_temp_files(out_dir / MATTES_DIR)  # a matte write killed in an earlier run
    model_dir = resolve(model_folder)
    from relightful.models.relight_model import read_model_meta

    config = resolve_sampling(config, read_model_meta(model_dir))  # InputError naming a missing folder
    backgrounds, failed_bg = scan_backgrounds(backgrounds_dir)
    if not backgrounds:
        raise InputError(backgrounds_dir, f"no usable background photo ({len(failed_bg)} rejected: "
                                          f"{'; '.join(failed_bg.values()) or 'folder is empty'})")
    portraits, failed = scan_portraits(portraits_dir, config.auto_matte, out_dir / MATTES_DIR,
                                       config.matte_coverage_range)
    if not portraits:
        raise InputError(portraits_dir, f"no usable portrait ({len(failed)} rejected: "
                                        f"{'; '.join(failed.values()) or 'folder is empty'})")
    by_id = {p.portrait_id: p for p in portraits}
    bg_by_id = {b.background_id: b for b in backgrounds}
    used = ({Path(portraits_dir) / i for i in [*by_id, *failed]}
            | {b.path for b in backgrounds} | {Path(backgrounds_dir) / f for f in failed_bg})
    skipped = unscanned_entries(Path(portraits_dir), Path(backgrounds_dir), used)
    plan = plan_natural_pairs(list(by_id), list(bg_by_id), config.pairs_per_portrait, config.pairs_per_shard,
                              config.split_fractions, config.seed)
    plan["matte_source"] = plan.subject_id.map(lambda p: by_id[p].matte_source)
    model_id = folder_digest(model_dir)
    plan["model"] = model_id[:16]
    for key in ("steps", "image_guidance", "lighting_guidance"):
        plan[key] = getattr(config, key)

    shards = list(dict.fromkeys(plan.shard))
    fingerprints, written, kept, rendered = {}, [], [], []
    for name in shards:
        rows = plan[plan.shard == name]
        fingerprints[name] = shard_fingerprint(rows, by_id, bg_by_id, model_id, config)
        existing = _existing_rows(out_dir / name, fingerprints[name])
        if existing is not None:
            written.append(existing)
            kept.append(name)
    todo = [s for s in shards if s not in kept]
    plan[SHARD_FINGERPRINT] = plan.shard.map(fingerprints)
    # the manifest first, then what this run replaces: the report, shards it will not keep, killed writes' temps
    stale = [p.name for p in sorted(out_dir.glob("shard-*.safetensors")) if p.name not in kept]
    prepare_output(out_dir, [REPORT, *stale])

    relighter = load_relighter(model_dir, config) if todo else None
    portrait_cache = _Cache(lambda p: load_portrait(by_id[p], config.size), capacity=4)
    background_cache = _Cache(lambda b: load_background(bg_by_id[b], config.size), capacity=64)
    with ShardWriter() as writer, tqdm(total=len(plan), initial=len(plan) - int(plan.shard.isin(todo).sum()),
                                            desc="augment", unit="pair", disable=not progress) as bar:
        for name in todo:
            tensors, rows = render_shard(plan[plan.shard == name], portrait_cache, background_cache, relighter,
                                         config, bar)
            rows = manifest_frame(rows)
            metadata = {"pair_ids": ",".join(rows.pair_id), FINGERPRINT: fingerprints[name],
                        "rows": json.dumps(rows.to_dict(orient="records"))}
            writer.submit(out_dir / name, tensors, metadata)
            written.append(rows)
            rendered.append(name)
    manifest = manifest_frame(pd.concat(written)).sort_values(["shard", "index"], kind="stable").reset_index(drop=True)
    report = {"n_pairs": len(manifest), "splits": manifest.split.value_counts().to_dict(),
              "portraits": len(portraits), "backgrounds": len(backgrounds), "model": str(model_folder),
              "model_sha256": model_id,
              "rendered_shards": rendered, "kept_shards": kept,
              "failed_portraits": [{"portrait_id": k, "error": v} for k, v in sorted(failed.items())],
              "failed_backgrounds": [{"file": k, "error": v} for k, v in sorted(failed_bg.items())],
              "skipped_inputs": [{"file": k, "reason": v} for k, v in sorted(skipped.items())]}
    atomic_write_text(out_dir / REPORT, json.dumps(report, indent=2))
    write_manifest(manifest, out_dir / MANIFEST)  # last: its presence means the folder is complete
    return AugmentResult(manifest, failed, failed_bg, rendered, kept, skipped)


__all__ = ["AugmentResult", "Relighter", "augment_pairs", "pair_statistics", "shard_fingerprint"]

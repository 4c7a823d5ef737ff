"""Rendering the training tuples (x_a, m, y_b, z_b, x_b) of DESIGN 3.4 into safetensors shards.

Output folder (the shard format: data/shards.py):

    shard-00000.safetensors    per pair: x_a, x_b, y_b (P, 3, S, S) float16 linear, matte (P, 1, S, S) float16,
                               w_a, w_b (P, N, 3) float32 LED weights of the rotated maps a and b, exposure
                               gains included (x_a = scale · relight(OLAT, w_a) where matte > 0; 0 elsewhere,
                               which the composite m·x_a + (1−m)·y_b never reads)
    envmaps.safetensors        each map used, once: "<map_id>" (h, 2h, 3) float16 linear, unrotated; z_b is
                               rotate_envmap(envmaps[env_b], rotation_b_deg)
    rig.json                   the rig the weights refer to
    manifest.parquet           one row per pair (columns: data/schema.py), written last
    report.json                subjects that could not be loaded and why

Each shard's metadata carries the fingerprint of its plan (`shard_fingerprint`: its rows, the render settings, the
rig and the checksums of the maps it uses), recorded again in the manifest, which validate-data compares. A run into
a folder that holds an earlier render first deletes the manifest, then everything it rewrites (data/shards.py
`prepare_output`): a run killed midway leaves no manifest, never an old one over new shards.

The `render-pairs` job: the plan (pair_plan.py), the relighting maths per subject (pair_relighting.py) and the shards
of this worker, then the manifest, or the merge of all workers' parts.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from relightful.data.ingest_hdr import MAPS_DIR, load_map
from relightful.data.pair_plan import PlanConfig, plan_pairs
from relightful.data.pair_relighting import (PreparedSubject, RollTables, SubjectCache, background_crops,
                                             lookup_weights, relight_pairs)
from relightful.data.schema import PAIR_COLUMNS
from relightful.data.shards import (ENVMAPS, FINGERPRINT, MANIFEST, SHARD_FINGERPRINT, ShardWriter, plan_fingerprint,
                                    prepare_output, read_manifest, write_manifest)
from relightful.io import InputError, atomic_write_text, save_tensors
from relightful.io.paths import contained
from relightful.lighting import LedRig, resize_envmap
from relightful.lighting.camera import pad_longitude

log = logging.getLogger(__name__)

REPORT = "report.json"
RIG = "rig.json"
# The plan columns of a pair: with the settings and inputs of `shard_context`, all that its pixels depend on.
PLAN_COLUMNS = ("pair_id", "shard", "index", "subject_id", "split", "env_a", "env_b", "rotation_a_deg",
                "rotation_b_deg", "fov_deg", "pitch_deg", "exposure_a_stops", "exposure_b_stops")


@dataclass(frozen=True)
class RenderConfig:
    size: int = 64                 # pairs are size x size
    weights_height: int = 64       # maps are projected onto the LEDs at this lat-long height
    panorama_height: int = 32      # height of the maps stored for z_b
    background_oversampling: float = 2.0  # background samples per map pixel before resizing to the pair size
    plan: PlanConfig = field(default_factory=PlanConfig)


def part_name(shard_index: int, num_shards: int) -> str:
    return f"manifest.part-{shard_index:05d}-of-{num_shards:05d}.parquet"


def report_part_name(shard_index: int, num_shards: int) -> str:
    return f"report.part-{shard_index:05d}-of-{num_shards:05d}.json"


# --- inputs ------------------------------------------------------------------------------------------------------

def accepted_maps(envmap_dir: Path) -> dict[str, str]:
    """{map_id: sha256 of its input file} of the maps an ingest folder accepted. A map id is a file name in
    `maps/`, so one that would leave that folder is refused, naming its manifest row."""
    manifest_path = envmap_dir / MANIFEST
    manifest = read_manifest(manifest_path, "ingest manifest not found (run ingest-hdr first)", ("map_id", "status"))
    ok = manifest[manifest.status == "ok"].sort_values("map_id")
    if len(ok) < 2:
        raise InputError(manifest_path, f"needs at least 2 accepted maps, has {len(ok)}")
    for map_id in ok.map_id:
        contained(envmap_dir / MAPS_DIR, f"{map_id}.safetensors", f"{manifest_path}: map {map_id!r}")
    sha = ok["sha256"] if "sha256" in ok else pd.Series("", index=ok.index)
    return dict(zip(ok.map_id, sha.fillna("").astype(str)))


def load_envmaps(envmap_dir: Path) -> dict[str, np.ndarray]:
    """The accepted maps of an ingest output folder, by id."""
    return {i: load_map(envmap_dir / MAPS_DIR / f"{i}.safetensors").envmap for i in accepted_maps(envmap_dir)}


def shard_context(rows: pd.DataFrame, rig: LedRig, config: RenderConfig, map_sha: dict[str, str]) -> dict:
    """What a shard's pixels depend on besides its plan rows: the settings, the rig, its maps' checksums."""
    maps = sorted(set(rows.env_a) | set(rows.env_b))
    return {"rig": rig.fingerprint, "size": config.size, "weights_height": config.weights_height,
            "background_oversampling": config.background_oversampling, "maps": {m: map_sha[m] for m in maps}}


def list_subjects(subjects_dir: Path) -> list[str]:
    if not subjects_dir.is_dir():
        raise InputError(subjects_dir, "subjects folder not found")
    return sorted(p.name for p in subjects_dir.iterdir() if p.is_dir())


# --- one shard ---------------------------------------------------------------------------------------------------

def render_rows(rows: pd.DataFrame, subject: PreparedSubject, padded_maps: dict[str, torch.Tensor],
                tables: RollTables, config: RenderConfig,
                out: dict[str, torch.Tensor], start: int) -> pd.DataFrame:
    """Render the pairs of one subject into out[...][start:start+P]; returns the rows completed with statistics."""
    size, p = config.size, len(rows)
    gain_a = torch.from_numpy(2.0 ** rows.exposure_a_stops.values).float()
    gain_b = torch.from_numpy(2.0 ** rows.exposure_b_stops.values).float()
    w_a = lookup_weights(tables, rows.env_a, rows.rotation_a_deg.values) * gain_a[:, None, None]
    w_b = lookup_weights(tables, rows.env_b, rows.rotation_b_deg.values) * gain_b[:, None, None]
    fg_max = relight_pairs(subject, w_a, w_b, out["x_a"][start:start + p], out["x_b"][start:start + p])
    scale = 1.0 / fg_max.clamp_min(1e-12)
    crops = background_crops(padded_maps, rows, size, config.background_oversampling, gain=scale * gain_b)
    out["y_b"][start:start + p] = crops
    out["matte"][start:start + p] = subject.matte
    out["w_a"][start:start + p], out["w_b"][start:start + p] = w_a, w_b
    mass = 3.0 * subject.matte.sum().clamp_min(1e-12)
    stats = pd.DataFrame({
        "scale": scale.double().numpy(),
        "matte_coverage": float(subject.inside.float().mean()),
        "fg_mean_a": ((w_a * subject.olat_sums).sum(dim=(1, 2)) * scale / mass).double().numpy(),
        "fg_mean_b": ((w_b * subject.olat_sums).sum(dim=(1, 2)) * scale / mass).double().numpy(),
        "fg_max": (fg_max * scale).double().numpy(),
        "bg_mean": crops.mean(dim=(1, 2, 3)).double().numpy(),
        "bg_max": crops.amax(dim=(1, 2, 3)).double().numpy(),
    }, index=rows.index)
    return pd.concat([rows, stats], axis=1)


def empty_shard(p: int, size: int, n_leds: int) -> dict[str, torch.Tensor]:
    images = dict(dtype=torch.float16)
    return {"x_a": torch.empty(p, 3, size, size, **images), "x_b": torch.empty(p, 3, size, size, **images),
            "y_b": torch.empty(p, 3, size, size, **images), "matte": torch.empty(p, 1, size, size, **images),
            "w_a": torch.empty(p, n_leds, 3), "w_b": torch.empty(p, n_leds, 3)}


def render_shard(rows: pd.DataFrame, subjects: SubjectCache, padded_maps: dict[str, torch.Tensor],
                 tables: RollTables, config: RenderConfig, failed: dict[str, str]) -> tuple[dict, pd.DataFrame]:
    """Render one shard's rows; pairs of subjects that fail to load are dropped and recorded in `failed`."""
    groups = []
    for subject_id, group in rows.groupby("subject_id", sort=False):
        if subject_id in failed:
            continue
        try:
            groups.append((subjects.get(subject_id), group))
        except InputError as err:
            log.warning("skipping subject %s: %s", subject_id, err)
            failed[subject_id] = str(err)
    p = sum(len(g) for _, g in groups)
    if p == 0:
        return {}, rows.iloc[:0]
    out = empty_shard(p, config.size, subjects.rig.n_leds)
    done, start = [], 0
    for prepared, group in groups:
        done.append(render_rows(group, prepared, padded_maps, tables, config, out, start))
        start += len(group)
    manifest = pd.concat(done)
    manifest["index"] = np.arange(len(manifest))
    return out, manifest


# --- the whole job -----------------------------------------------------------------------------------------------

def manifest_frame(rows: pd.DataFrame) -> pd.DataFrame:
    out = rows.reindex(columns=list(PAIR_COLUMNS)).reset_index(drop=True)
    return out.astype({"index": "int64", **{c: "float64" for c, t in PAIR_COLUMNS.items() if t == "float"}})


def render_pairs(subjects_dir: str | Path, rig: LedRig, envmap_dir: str | Path, out_dir: str | Path,
                 config: RenderConfig, shard_index: int = 0, num_shards: int = 1,
                 progress: bool = True) -> pd.DataFrame:
    """Render this worker's shards (every shard whose number ≡ shard_index mod num_shards).

    With num_shards == 1 the folder is complete afterwards; otherwise each worker writes a manifest part and
    `merge_parts` (run once all workers are done) writes the manifest and the map store.
    """
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index must be in [0, {num_shards}), got {shard_index}")
    subjects_dir, envmap_dir, out_dir = Path(subjects_dir), Path(envmap_dir), Path(out_dir)
    map_sha = accepted_maps(envmap_dir)
    envmaps_np = load_envmaps(envmap_dir)
    plan = plan_pairs(list_subjects(subjects_dir), list(envmaps_np), config.plan)
    shards = list(dict.fromkeys(plan.shard))
    mine = [s for n, s in enumerate(shards) if n % num_shards == shard_index]
    parts = [part_name(shard_index, num_shards), report_part_name(shard_index, num_shards)]
    if num_shards == 1:  # the whole folder is this run's
        prepare_output(out_dir, [REPORT, RIG, ENVMAPS, "shard-*.safetensors", "manifest.part-*", "report.part-*"])
    else:  # other workers write beside this one: only its own files
        prepare_output(out_dir, mine + parts, temp_targets=mine + parts)
    used = sorted(set(plan.loc[plan.shard.isin(mine), "env_a"]) | set(plan.loc[plan.shard.isin(mine), "env_b"]))
    padded_maps = {m: pad_longitude(torch.from_numpy(envmaps_np[m]).permute(2, 0, 1)) for m in used}
    tables = RollTables.build({m: envmaps_np[m] for m in used}, rig, config.weights_height, progress)
    subjects = SubjectCache(subjects_dir, rig, config.size)
    failed: dict[str, str] = {}
    written = []
    with ShardWriter() as writer:
        for name in tqdm(mine, desc=f"render-pairs {shard_index + 1}/{num_shards}", unit="shard",
                         disable=not progress):
            tensors, rows = render_shard(plan[plan.shard == name], subjects, padded_maps, tables, config, failed)
            if rows.empty:
                continue
            fingerprint = plan_fingerprint(rows[list(PLAN_COLUMNS)], shard_context(rows, rig, config, map_sha))
            rows = rows.assign(**{SHARD_FINGERPRINT: fingerprint})
            writer.submit(out_dir / name, tensors, {"pair_ids": ",".join(rows.pair_id), "rig": rig.fingerprint,
                                                    FINGERPRINT: fingerprint})
            written.append(rows)
    manifest = manifest_frame(pd.concat(written)) if written else manifest_frame(plan.iloc[:0])
    report = {"shard_index": shard_index, "num_shards": num_shards, "n_pairs": len(manifest),
              "n_planned": int(plan.shard.isin(mine).sum()),
              "failed_subjects": [{"subject_id": s, "error": e} for s, e in sorted(failed.items())]}
    if num_shards == 1:
        _finalise(out_dir, manifest, envmap_dir, envmaps_np, rig, config, keep=set(mine), reports=[report])
    else:
        write_manifest(manifest, out_dir / parts[0])
        atomic_write_text(out_dir / parts[1], json.dumps(report))
    return manifest


def _finalise(out_dir: Path, manifest: pd.DataFrame, envmap_dir: Path, envmaps_np: dict[str, np.ndarray],
              rig: LedRig, config: RenderConfig, keep: set[str], reports: list[dict]) -> None:
    """Write the map store, rig, report and manifest (last, so its presence means the folder is complete)."""
    for stale in out_dir.glob("shard-*.safetensors"):
        if stale.name not in keep:
            stale.unlink()
    used = sorted(set(manifest.env_a) | set(manifest.env_b))
    store = {m: torch.from_numpy(resize_envmap(envmaps_np[m], config.panorama_height)).half() for m in used}
    save_tensors(out_dir / ENVMAPS, store, metadata={"panorama_height": str(config.panorama_height)})
    rig.to_json(out_dir / RIG)
    failed = [f for r in reports for f in r["failed_subjects"]]
    atomic_write_text(out_dir / REPORT, json.dumps({"n_pairs": len(manifest), "failed_subjects": failed,
                                                    "splits": manifest.split.value_counts().to_dict()}, indent=2))
    write_manifest(manifest, out_dir / MANIFEST)


def merge_parts(subjects_dir: str | Path, rig: LedRig, envmap_dir: str | Path, out_dir: str | Path,
                config: RenderConfig, num_shards: int) -> pd.DataFrame:
    """Combine the manifest parts of `num_shards` workers into the folder a single run would have written."""
    out_dir, envmap_dir = Path(out_dir), Path(envmap_dir)
    parts = [out_dir / part_name(i, num_shards) for i in range(num_shards)]
    missing = [p.name for p in parts if not p.is_file()]
    if missing:
        raise InputError(out_dir, f"missing manifest parts {missing}: not every worker has finished")
    envmaps_np = load_envmaps(envmap_dir)
    plan = plan_pairs(list_subjects(Path(subjects_dir)), list(envmaps_np), config.plan)
    finals = [MANIFEST, REPORT, RIG, ENVMAPS]
    prepare_output(out_dir, [REPORT, RIG, ENVMAPS], temp_targets=finals)
    manifest = pd.concat([read_manifest(p) for p in parts])
    manifest = manifest_frame(manifest.set_index("pair_id").loc[[i for i in plan.pair_id if i in set(manifest.pair_id)]]
                              .reset_index())
    reports = [json.loads((out_dir / report_part_name(i, num_shards)).read_text()) for i in range(num_shards)]
    _finalise(out_dir, manifest, envmap_dir, envmaps_np, rig, config, keep=set(plan.shard), reports=reports)
    for i in range(num_shards):
        parts[i].unlink()
        (out_dir / report_part_name(i, num_shards)).unlink()
    return manifest

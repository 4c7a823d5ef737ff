"""Rendering the training tuples (x_a, m, y_b, z_b, x_b) of DESIGN 3.4 into safetensors shards.

Output folder:

    shard-00000.safetensors    per pair: x_a, x_b, y_b (P, 3, S, S) float16 linear, matte (P, 1, S, S) float16,
                               w_a, w_b (P, N, 3) float32 LED weights of the rotated maps a and b
    envmaps.safetensors        each map used, once: "<map_id>" (h, 2h, 3) float16 linear, unrotated; z_b is
                               rotate_envmap(envmaps[env_b], rotation_b_deg)
    rig.json                   the rig the weights refer to
    manifest.parquet           one row per pair (columns: data/schema.py)
    report.json                subjects that could not be loaded and why

Work is grouped by subject so all lightings of a subject are one batched matrix product (`OlatStack`). The LED
weights of a rotated map come from a table of the weights of every whole-column roll, interpolated linearly:
weights are linear in the map, so this equals the weights of `rotate_envmap`'s interpolated map, at no cost per pair.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from relightful.data.envmaps import MANIFEST as ENVMAP_MANIFEST, MAPS_DIR, load_map
from relightful.data.plan import PlanConfig, plan_pairs
from relightful.data.schema import PAIR_COLUMNS
from relightful.io import InputError, atomic_path, atomic_write_text, save_tensors
from relightful.lighting import LedRig, OlatStack, camera_rays, envmap_to_led_weights, resize_envmap, sample_envmap
from relightful.lightstage import load_olat_set

log = logging.getLogger(__name__)

MANIFEST = "manifest.parquet"
ENVMAPS = "envmaps.safetensors"
REPORT = "report.json"
FLOAT16_MAX = 65504.0


@dataclass(frozen=True)
class RenderConfig:
    size: int = 64                 # pairs are size x size
    weights_height: int = 64       # maps are projected onto the LEDs at this lat-long height
    panorama_height: int = 32      # height of the maps stored for z_b
    plan: PlanConfig = field(default_factory=PlanConfig)


def part_name(shard_index: int, num_shards: int) -> str:
    return f"manifest.part-{shard_index:05d}-of-{num_shards:05d}.parquet"


# --- inputs ------------------------------------------------------------------------------------------------------

def load_envmaps(envmap_dir: Path) -> dict[str, np.ndarray]:
    """The accepted maps of an ingest output folder, by id."""
    manifest_path = envmap_dir / ENVMAP_MANIFEST
    if not manifest_path.is_file():
        raise InputError(manifest_path, "ingest manifest not found (run ingest-hdr first)")
    manifest = pd.read_parquet(manifest_path)
    ids = sorted(manifest.loc[manifest.status == "ok", "map_id"])
    if len(ids) < 2:
        raise InputError(manifest_path, f"needs at least 2 accepted maps, has {len(ids)}")
    return {i: load_map(envmap_dir / MAPS_DIR / f"{i}.safetensors").envmap for i in ids}


def list_subjects(subjects_dir: Path) -> list[str]:
    if not subjects_dir.is_dir():
        raise InputError(subjects_dir, "subjects folder not found")
    return sorted(p.name for p in subjects_dir.iterdir() if p.is_dir())


def roll_weight_table(env: np.ndarray, rig: LedRig, height: int) -> torch.Tensor:
    """(W, N, 3) float32: LED weights of the map rolled by 0..W−1 columns at lat-long height `height`."""
    small = torch.from_numpy(resize_envmap(env, height))
    width = small.shape[1]
    rolled = torch.stack([torch.roll(small, k, dims=1) for k in range(width)])
    return torch.as_tensor(envmap_to_led_weights(rolled, rig)).float()


@dataclass
class PreparedSubject:
    stack: OlatStack        # OLAT at render size
    matte: torch.Tensor     # (S, S) float32


def centre_square(x: torch.Tensor) -> torch.Tensor:
    """Crop (..., H, W) to its centred square."""
    h, w = x.shape[-2:]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return x[..., top:top + s, left:left + s]


def prepare_subject(subject_dir: Path, rig: LedRig, size: int) -> PreparedSubject:
    """Load an OLAT set and bring it to the render size (centre square, area resampling)."""
    olat, matte = load_olat_set(subject_dir, rig)
    chw = centre_square(torch.from_numpy(olat).permute(0, 3, 1, 2))
    m = centre_square(torch.from_numpy(matte))[None, None]
    if chw.shape[-1] != size:
        chw = F.interpolate(chw, size=(size, size), mode="area" if chw.shape[-1] > size else "bilinear")
        m = F.interpolate(m, size=(size, size), mode="area" if m.shape[-1] > size else "bilinear")
    return PreparedSubject(OlatStack(chw.permute(0, 2, 3, 1)), m[0, 0].clamp(0, 1))


# --- one shard ---------------------------------------------------------------------------------------------------

def background_crops(envmaps: dict[str, torch.Tensor], rows: pd.DataFrame, size: int) -> torch.Tensor:
    """(P, 3, S, S) linear crops of each pair's map b as seen by the camera after rotating the map by rotation_b.

    Looking at a map rotated by Δ at yaw 0 is looking at the unrotated map at yaw −Δ: one interpolation, not two.
    """
    crops = [
        sample_envmap(envmaps[r.env_b], camera_rays(r.fov_deg, -r.rotation_b_deg, r.pitch_deg, (size, size)))
        for r in rows.itertuples()
    ]
    return torch.stack(crops).permute(0, 3, 1, 2)


def lookup_weights(tables: dict[str, torch.Tensor], map_ids, degrees) -> torch.Tensor:
    """(P, N, 3) LED weights of each map rotated by its angle, interpolated between the two nearest rolls."""
    ids = list(map_ids)
    order = sorted(set(ids))
    stacked = torch.stack([tables[m] for m in order])  # (M, W, N, 3)
    which = torch.tensor([order.index(m) for m in ids])
    width = stacked.shape[1]
    shift = (np.asarray(degrees, dtype=np.float64) % 360.0) / 360.0 * width
    whole = np.floor(shift)
    frac = torch.from_numpy(shift - whole).float()[:, None, None]
    k = torch.from_numpy(whole.astype(np.int64)) % width
    return (1 - frac) * stacked[which, k] + frac * stacked[which, (k + 1) % width]


def render_rows(rows: pd.DataFrame, subject: PreparedSubject, envmaps: dict[str, torch.Tensor],
                tables: dict[str, torch.Tensor], size: int) -> tuple[dict[str, torch.Tensor], pd.DataFrame]:
    """Render the pairs of one subject: shard tensors, and the rows completed with scale and statistics."""
    p = len(rows)
    w_a = lookup_weights(tables, rows.env_a, rows.rotation_a_deg.values)
    w_b = lookup_weights(tables, rows.env_b, rows.rotation_b_deg.values)
    lit = subject.stack.relight_planar(torch.cat([w_a, w_b]))  # (3, 2P, S·S): every lighting in one product
    lit = lit.permute(1, 0, 2).reshape(2 * p, 3, size, size)
    x_a, x_b = lit[:p], lit[p:]
    m = subject.matte
    inside = (m > 0.5).expand(3, size, size)
    fg_max = torch.maximum(x_a[:, inside].amax(dim=1), x_b[:, inside].amax(dim=1)) if inside.any() else \
        torch.maximum(x_a.flatten(1).amax(1), x_b.flatten(1).amax(1))
    scale = 1.0 / fg_max.clamp_min(1e-12)
    y_b = background_crops(envmaps, rows, size)
    k = scale[:, None, None, None]
    x_a, x_b, y_b = x_a * k, x_b * k, y_b * k
    mass = m.sum().clamp_min(1e-12) * 3
    stats = pd.DataFrame({
        "scale": scale.double().numpy(),
        "matte_coverage": float((m > 0.5).float().mean()),
        "fg_mean_a": ((x_a * m).sum(dim=(1, 2, 3)) / mass).double().numpy(),
        "fg_mean_b": ((x_b * m).sum(dim=(1, 2, 3)) / mass).double().numpy(),
        "fg_max": (fg_max * scale).double().numpy(),
        "bg_mean": y_b.mean(dim=(1, 2, 3)).double().numpy(),
        "bg_max": y_b.amax(dim=(1, 2, 3)).double().numpy(),
    }, index=rows.index)
    tensors = {
        "x_a": x_a.clamp(0, FLOAT16_MAX).half(),
        "x_b": x_b.clamp(0, FLOAT16_MAX).half(),
        "y_b": y_b.clamp(0, FLOAT16_MAX).half(),
        "matte": m.expand(p, 1, size, size).half(),
        "w_a": w_a,
        "w_b": w_b,
    }
    return tensors, pd.concat([rows, stats], axis=1)


class SubjectCache:
    """Keeps the last few prepared subjects: shards are grouped by subject, so one or two suffice."""

    def __init__(self, subjects_dir: Path, rig: LedRig, size: int, capacity: int = 2):
        self.subjects_dir, self.rig, self.size, self.capacity = subjects_dir, rig, size, capacity
        self._items: OrderedDict[str, PreparedSubject] = OrderedDict()

    def get(self, subject_id: str) -> PreparedSubject:
        if subject_id not in self._items:
            self._items[subject_id] = prepare_subject(self.subjects_dir / subject_id, self.rig, self.size)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        self._items.move_to_end(subject_id)
        return self._items[subject_id]


def render_shard(rows: pd.DataFrame, subjects: SubjectCache, envmaps: dict[str, torch.Tensor],
                 tables: dict[str, torch.Tensor], size: int, failed: dict[str, str]) -> tuple[dict, pd.DataFrame]:
    """Render one shard's rows; pairs of subjects that fail to load are dropped and recorded in `failed`."""
    parts, done = [], []
    for subject_id, group in rows.groupby("subject_id", sort=False):
        if subject_id in failed:
            continue
        try:
            prepared = subjects.get(subject_id)
        except InputError as err:
            log.warning("skipping subject %s: %s", subject_id, err)
            failed[subject_id] = str(err)
            continue
        tensors, completed = render_rows(group, prepared, envmaps, tables, size)
        parts.append(tensors)
        done.append(completed)
    if not parts:
        return {}, rows.iloc[:0]
    tensors = {k: torch.cat([t[k] for t in parts]) for k in parts[0]}
    manifest = pd.concat(done)
    manifest["index"] = np.arange(len(manifest))
    return tensors, manifest


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
    envmaps_np = load_envmaps(envmap_dir)
    plan = plan_pairs(list_subjects(subjects_dir), list(envmaps_np), config.plan)
    shards = list(dict.fromkeys(plan.shard))
    mine = [s for n, s in enumerate(shards) if n % num_shards == shard_index]
    used = sorted(set(plan.loc[plan.shard.isin(mine), "env_a"]) | set(plan.loc[plan.shard.isin(mine), "env_b"]))
    envmaps = {m: torch.from_numpy(envmaps_np[m]) for m in used}
    tables = {m: roll_weight_table(envmaps_np[m], rig, config.weights_height)
              for m in tqdm(used, desc="LED weights", unit="map", disable=not progress)}
    subjects = SubjectCache(subjects_dir, rig, config.size)
    failed: dict[str, str] = {}
    written = []
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in tqdm(mine, desc=f"render-pairs {shard_index + 1}/{num_shards}", unit="shard", disable=not progress):
        tensors, rows = render_shard(plan[plan.shard == name], subjects, envmaps, tables, config.size, failed)
        if rows.empty:
            (out_dir / name).unlink(missing_ok=True)
            continue
        rows = manifest_frame(rows)
        save_tensors(out_dir / name, tensors, metadata={"pair_ids": ",".join(rows.pair_id), "rig": rig.fingerprint})
        written.append(rows)
    manifest = manifest_frame(pd.concat(written)) if written else manifest_frame(plan.iloc[:0])
    report = {"shard_index": shard_index, "num_shards": num_shards, "n_pairs": len(manifest),
              "n_planned": int(plan.shard.isin(mine).sum()),
              "failed_subjects": [{"subject_id": s, "error": e} for s, e in sorted(failed.items())]}
    if num_shards == 1:
        _finalise(out_dir, manifest, envmap_dir, envmaps_np, rig, config, keep=set(mine), reports=[report])
    else:
        with atomic_path(out_dir / part_name(shard_index, num_shards)) as tmp:
            manifest.to_parquet(tmp, index=False)
        atomic_write_text(out_dir / f"report.part-{shard_index:05d}-of-{num_shards:05d}.json", json.dumps(report))
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
    rig.to_json(out_dir / "rig.json")
    failed = [f for r in reports for f in r["failed_subjects"]]
    atomic_write_text(out_dir / REPORT, json.dumps({"n_pairs": len(manifest), "failed_subjects": failed,
                                                    "splits": manifest.split.value_counts().to_dict()}, indent=2))
    with atomic_path(out_dir / MANIFEST) as tmp:
        manifest.to_parquet(tmp, index=False)


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
    manifest = pd.concat([pd.read_parquet(p) for p in parts])
    manifest = manifest_frame(manifest.set_index("pair_id").loc[[i for i in plan.pair_id if i in set(manifest.pair_id)]]
                              .reset_index())
    reports = [json.loads((out_dir / f"report.part-{i:05d}-of-{num_shards:05d}.json").read_text())
               for i in range(num_shards)]
    _finalise(out_dir, manifest, envmap_dir, envmaps_np, rig, config, keep=set(plan.shard), reports=reports)
    for i in range(num_shards):
        parts[i].unlink()
        (out_dir / f"report.part-{i:05d}-of-{num_shards:05d}.json").unlink()
    return manifest

"""Rendering the training tuples (x_a, m, y_b, z_b, x_b) of DESIGN 3.4 into safetensors shards.

Output folder (the shard format: data/shards.py):

    shard-00000.safetensors    per pair: x_a, x_b, y_b (P, 3, S, S) float16 linear, matte (P, 1, S, S) float16,
                               w_a, w_b (P, N, 3) float32 LED weights of the rotated maps a and b, exposure
                               gains included (x_a = scale · relight(OLAT, w_a) where matte > 0; 0 elsewhere,
                               which the composite m·x_a + (1−m)·y_b never reads)
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
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from relightful.data.envmaps import MAPS_DIR, load_map
from relightful.data.plan import PlanConfig, plan_pairs
from relightful.data.schema import PAIR_COLUMNS
from relightful.data.shards import ENVMAPS, MANIFEST, ShardWriter, read_manifest, write_manifest
from relightful.io import InputError, atomic_write_text, save_tensors
from relightful.lighting import LedRig, OlatStack, led_projection_matrix, resize_envmap
from relightful.lighting.camera import crop_grid, pad_longitude
from relightful.lightstage import load_olat_set

log = logging.getLogger(__name__)

REPORT = "report.json"
FLOAT16_MAX = 65504.0


@dataclass(frozen=True)
class RenderConfig:
    size: int = 64                 # pairs are size x size
    weights_height: int = 64       # maps are projected onto the LEDs at this lat-long height
    panorama_height: int = 32      # height of the maps stored for z_b
    background_oversampling: float = 2.0  # background samples per map pixel before resizing to the pair size
    plan: PlanConfig = field(default_factory=PlanConfig)


def part_name(shard_index: int, num_shards: int) -> str:
    return f"manifest.part-{shard_index:05d}-of-{num_shards:05d}.parquet"


# --- inputs ------------------------------------------------------------------------------------------------------

def load_envmaps(envmap_dir: Path) -> dict[str, np.ndarray]:
    """The accepted maps of an ingest output folder, by id."""
    manifest_path = envmap_dir / MANIFEST
    manifest = read_manifest(manifest_path, "ingest manifest not found (run ingest-hdr first)")
    ids = sorted(manifest.loc[manifest.status == "ok", "map_id"])
    if len(ids) < 2:
        raise InputError(manifest_path, f"needs at least 2 accepted maps, has {len(ids)}")
    return {i: load_map(envmap_dir / MAPS_DIR / f"{i}.safetensors").envmap for i in ids}


def list_subjects(subjects_dir: Path) -> list[str]:
    if not subjects_dir.is_dir():
        raise InputError(subjects_dir, "subjects folder not found")
    return sorted(p.name for p in subjects_dir.iterdir() if p.is_dir())


def roll_weight_table(env: np.ndarray, rig: LedRig, height: int) -> torch.Tensor:
    """(W, N, 3) float32: LED weights of the map rolled by 0..W−1 columns, at lat-long height `height`.

    Rolling the map by k columns gives weights c[k] = Σ_j P[j + k] L[j] per row (a circular cross-correlation of
    the projection matrix P with the map L along longitude), so all W rolls cost a few FFTs, not W products.
    """
    small = torch.from_numpy(resize_envmap(env, height)).double()  # (H, W, 3)
    width = small.shape[1]
    proj = led_projection_matrix(rig, height).reshape(rig.n_leds, height, width)
    spectrum = torch.einsum("nhf,hfc->nfc", torch.fft.rfft(proj, dim=2), torch.fft.rfft(small, dim=1).conj())
    weights = torch.fft.irfft(spectrum, n=width, dim=1)  # (N, W, 3)
    return weights.permute(1, 0, 2).float().contiguous()


@dataclass
class PreparedSubject:
    matte: torch.Tensor     # (S, S) float32
    inside: torch.Tensor    # (S·S,) bool: matte > 0.5, where the subject's maximum is taken
    olat_sums: torch.Tensor  # (N, 3): Σ_pixels matte · OLAT_k, so matte-weighted means cost O(N) per lighting
    fg_index: torch.Tensor  # (F,) the pixels with matte > 0 (all, if none is), those with matte > 0.5 first
    n_peak: int             # how many of them lead: where the subject's maximum is taken
    fg_stack: OlatStack     # the OLAT at those pixels, in that order: all that is ever relit


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
    m = m[0, 0].clamp(0, 1)
    flat = m.reshape(-1)
    inside = flat > 0.5
    fg = flat > 0 if (flat > 0).any() else torch.ones_like(inside)
    peak = inside if inside.any() else fg
    fg_index = torch.cat([peak.nonzero()[:, 0], (fg & ~peak).nonzero()[:, 0]])
    pixels = chw.reshape(chw.shape[0], 3, -1)  # (N, 3, S·S): already channel planes
    fg_planar = pixels[:, :, fg_index].float().transpose(0, 1)  # (3, N, F)
    sums = (fg_planar * flat[fg_index]).sum(dim=2).T  # (N, 3): the matte is 0 elsewhere
    return PreparedSubject(m, inside, sums, fg_index, int(peak.sum()), OlatStack.from_planar(fg_planar))


@dataclass
class RollTables:
    """The `roll_weight_table` of every map, stacked once, so a batch of (map, angle) lookups is one gather."""
    index: dict[str, int]
    stacked: torch.Tensor  # (M, W, N, 3)

    @classmethod
    def build(cls, envmaps: dict[str, np.ndarray], rig: LedRig, height: int, progress: bool = False) -> "RollTables":
        ids = sorted(envmaps)
        tables = [roll_weight_table(envmaps[m], rig, height)
                  for m in tqdm(ids, desc="LED weights", unit="map", disable=not progress)]
        return cls({m: i for i, m in enumerate(ids)}, torch.stack(tables))


def lookup_weights(tables: RollTables, map_ids, degrees) -> torch.Tensor:
    """(P, N, 3) LED weights of each map rotated by its angle, interpolated between the two nearest rolls."""
    which = torch.tensor([tables.index[m] for m in map_ids], dtype=torch.long)
    width = tables.stacked.shape[1]
    shift = (np.asarray(degrees, dtype=np.float64) % 360.0) / 360.0 * width
    whole = np.floor(shift)
    frac = torch.from_numpy(shift - whole).float()[:, None, None]
    k = torch.from_numpy(whole.astype(np.int64)) % width
    return (1 - frac) * tables.stacked[which, k] + frac * tables.stacked[which, (k + 1) % width]


def background_crops(padded_maps: dict[str, torch.Tensor], rows: pd.DataFrame, size: int,
                     oversampling: float, gain: torch.Tensor | None = None) -> torch.Tensor:
    """(P, 3, S, S) linear views of each pair's map b, as the camera sees it after the map is rotated, times the
    pair's `gain` (P,) and clamped to float16's range.

    Looking at a map rotated by Δ at yaw 0 is looking at the unrotated map at yaw −Δ: one interpolation, not two.
    The views are sampled at `oversampling` samples per map pixel across the field of view (the map holds no finer
    detail) and bilinearly resized to the pair size: the same image as sampling every pixel, at a fraction of
    the cost. All views of one map are one `grid_sample` call (their grids stacked), so no map is copied per pair.
    Gain and clamp come before the resize: bilinear resizing is a convex combination, so that is the same image
    for a fraction of the work.
    """
    map_height = next(iter(padded_maps.values())).shape[-2]
    res = min(size, max(8, math.ceil(oversampling * 2 * map_height * float(rows.fov_deg.max()) / 360.0)))
    grids = crop_grid(rows.fov_deg.values, -rows.rotation_b_deg.values, rows.pitch_deg.values, (res, res), map_height)
    crops = torch.empty(len(rows), 3, res, res)
    env_b = rows.env_b.values
    for map_id in dict.fromkeys(env_b):
        idx = torch.from_numpy(np.flatnonzero(env_b == map_id))
        views = F.grid_sample(padded_maps[map_id][None], grids[idx].reshape(1, len(idx) * res, res, 2),
                              mode="bilinear", padding_mode="border", align_corners=False)  # (1, 3, n·res, res)
        crops[idx] = views.reshape(3, len(idx), res, res).transpose(0, 1)
    if gain is not None:
        crops.mul_(gain[:, None, None, None])
    crops.clamp_(0, FLOAT16_MAX)
    if res != size:
        crops = F.interpolate(crops, size=(size, size), mode="bilinear", align_corners=False)
    return crops


RELIGHT_BUFFER_BYTES = 256 << 20  # float32 working set of one relighting product; larger batches go in chunks


def relight_pairs(subject: PreparedSubject, w_a: torch.Tensor, w_b: torch.Tensor, x_a: torch.Tensor,
                  x_b: torch.Tensor) -> torch.Tensor:
    """Relight P pairs into the float16 images x_a, x_b (P, 3, S, S), scaled so the subject's maximum over x_a and
    x_b is 1; returns that maximum before scaling (P,).

    Only the pixels inside the matte are relit (one batched product for both lightings of every pair): the
    composite `m·x + (1−m)·y_b` never reads the others, so they are written as 0. The maximum comes from the
    pixels with matte > 0.5 of the same product, then the scale is applied on the way to float16.
    """
    p, n_fg = len(w_a), subject.fg_index.numel()
    chunk = max(1, RELIGHT_BUFFER_BYTES // (2 * 3 * 4 * max(n_fg, 1)))
    fg_max = torch.empty(p)
    x_a.zero_()
    x_b.zero_()
    planes_a, planes_b = x_a.view(p, 3, -1), x_b.view(p, 3, -1)
    for c0 in range(0, p, chunk):
        c1 = min(p, c0 + chunk)
        both = torch.cat([w_a[c0:c1], w_b[c0:c1]]).float().permute(2, 0, 1)  # (3, 2C, N)
        lit = torch.bmm(both, subject.fg_stack.planar)                     # (3, 2C, F)
        peak = lit[:, :, :subject.n_peak].amax(dim=(0, 2))
        n = c1 - c0
        fg_max[c0:c1] = torch.maximum(peak[:n], peak[n:])
        lit.mul_((1.0 / fg_max[c0:c1].clamp_min(1e-12)).repeat(2)[None, :, None]).clamp_(0, FLOAT16_MAX)
        lit = lit.to(torch.float16).transpose(0, 1)                      # (2C, 3, F)
        planes_a[c0:c1].index_copy_(2, subject.fg_index, lit[:n])
        planes_b[c0:c1].index_copy_(2, subject.fg_index, lit[n:])
    return fg_max


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
    envmaps_np = load_envmaps(envmap_dir)
    plan = plan_pairs(list_subjects(subjects_dir), list(envmaps_np), config.plan)
    shards = list(dict.fromkeys(plan.shard))
    mine = [s for n, s in enumerate(shards) if n % num_shards == shard_index]
    used = sorted(set(plan.loc[plan.shard.isin(mine), "env_a"]) | set(plan.loc[plan.shard.isin(mine), "env_b"]))
    padded_maps = {m: pad_longitude(torch.from_numpy(envmaps_np[m]).permute(2, 0, 1)) for m in used}
    tables = RollTables.build({m: envmaps_np[m] for m in used}, rig, config.weights_height, progress)
    subjects = SubjectCache(subjects_dir, rig, config.size)
    failed: dict[str, str] = {}
    written = []
    out_dir.mkdir(parents=True, exist_ok=True)
    with ShardWriter() as writer:
        for name in tqdm(mine, desc=f"render-pairs {shard_index + 1}/{num_shards}", unit="shard",
                         disable=not progress):
            tensors, rows = render_shard(plan[plan.shard == name], subjects, padded_maps, tables, config, failed)
            if rows.empty:
                (out_dir / name).unlink(missing_ok=True)
                continue
            writer.submit(out_dir / name, tensors, {"pair_ids": ",".join(rows.pair_id), "rig": rig.fingerprint})
            written.append(rows)
    manifest = manifest_frame(pd.concat(written)) if written else manifest_frame(plan.iloc[:0])
    report = {"shard_index": shard_index, "num_shards": num_shards, "n_pairs": len(manifest),
              "n_planned": int(plan.shard.isin(mine).sum()),
              "failed_subjects": [{"subject_id": s, "error": e} for s, e in sorted(failed.items())]}
    if num_shards == 1:
        _finalise(out_dir, manifest, envmap_dir, envmaps_np, rig, config, keep=set(mine), reports=[report])
    else:
        write_manifest(manifest, out_dir / part_name(shard_index, num_shards))
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

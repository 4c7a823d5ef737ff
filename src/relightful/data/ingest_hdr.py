"""Ingest of HDR environment maps: validate, normalise to the working size, project onto the LED basis.

Output folder layout (what `render-pairs` reads):

    maps/<map_id>.safetensors   "envmap" (H, 2H, 3) float32 linear, "weights" (N, 3) float64 LED weights
    manifest.parquet            one row per input file, accepted or rejected (columns: data/schema.py)
    report.json                 the rejected files and why, and the other entries of the input folder skipped

One bad file never stops the others: it gets a manifest row with its reason and is skipped. Nothing in the input
folder is passed over in silence: a file whose content is a map but whose suffix is not (an EXR named `.png`), a
symlink loop, a dangling link or an unreadable file is rejected with its reason; any other entry (a text file, a
folder) is listed under "skipped" in the report. Both go to stderr as warnings.

A run first deletes the manifest, the report and the maps of the previous one (data/shards.py `prepare_output`),
so a run killed midway leaves no manifest, and the maps it did write are never mistaken for a complete ingest.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from relightful.io.digest import sha256_file
from relightful.io import HDR_SUFFIXES, InputError, atomic_write_text, load_tensors, read_hdr, save_tensors
from relightful.lighting import LedRig, envmap_to_led_weights, latlong_solid_angles, resize_envmap
from relightful.data.schema import ENVMAP_COLUMNS
from relightful.data.shards import MANIFEST, prepare_output, write_manifest
from relightful.io.atomic import remove_temp_files

log = logging.getLogger(__name__)

MAPS_DIR = "maps"
REPORT = "report.json"


@dataclass(frozen=True)
class IngestConfig:
    height: int = 128                 # working size: maps are resampled to height x 2*height
    max_negative_fraction: float = 0.01  # more negative pixel values than this is a broken file, not compression noise
    # Maps from different sources have arbitrary absolute units (a CC0 sky in kcd/m², a studio HDRI in relative
    # units): scale each to this mean radiance ∫L dω / 4π. None keeps calibrated maps' absolute radiance.
    normalise_mean: float | None = 1.0


@dataclass(frozen=True)
class IngestedMap:
    map_id: str
    envmap: np.ndarray   # (H, 2H, 3) float32
    weights: np.ndarray  # (N, 3) float64


def normalise_envmap(raw: np.ndarray, path: Path, config: IngestConfig) -> tuple[np.ndarray, float, float]:
    """Check shape and sign, clip compression noise below zero, resample to the working size, normalise.

    Returns the map, the fraction of negative values clipped and the exposure factor applied.
    """
    h, w = raw.shape[:2]
    if w != 2 * h:
        ratio = w / h if h else float("inf")
        raise InputError(path, f"aspect ratio is {ratio:.3g}:1 ({w}x{h}), a lat-long map must be 2:1")
    negative = float((raw < 0).mean())
    if negative > config.max_negative_fraction:
        raise InputError(path, f"{negative:.1%} of values are negative (allowed {config.max_negative_fraction:.1%})")
    env = resize_envmap(np.clip(raw, 0.0, None), config.height)
    if not np.isfinite(env).all():
        raise InputError(path, "non-finite values after resampling (values too large for float32)")
    if float(env.max()) <= 0.0:
        raise InputError(path, "the map is black (no light)")
    exposure = 1.0
    if config.normalise_mean is not None:
        exposure = config.normalise_mean / map_statistics(env)["mean_radiance"]
        env = (env * np.float32(exposure)).astype(np.float32)
    return env, negative, exposure


def map_statistics(env: np.ndarray) -> dict[str, float]:
    """Per-map statistics the data expectations check: integrals, brightness, dynamic range."""
    omega = latlong_solid_angles(env.shape[0]).astype(np.float64)
    integral = (env.astype(np.float64) * omega[..., None]).sum(axis=(0, 1))
    lum = env @ np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)
    median = max(float(np.median(lum)), 1e-9)
    return {
        "integral_r": float(integral[0]), "integral_g": float(integral[1]), "integral_b": float(integral[2]),
        "mean_radiance": float(integral.mean() / (4 * np.pi)),
        "max_radiance": float(env.max()),
        "dynamic_range": float(np.log10(max(float(lum.max()), 1e-9) / median)),
    }


# The first bytes of each HDR format, and the suffix that names it.
MAGIC = ((b"\x76\x2f\x31\x01", ".exr", "OpenEXR"), (b"#?RADIANCE", ".hdr", "Radiance HDR"),
         (b"#?RGBE", ".hdr", "Radiance HDR"))


def sniff_hdr(path: Path) -> tuple[str, str] | None:
    """(suffix, format name) of an HDR file judged by its first bytes, None when it is not one; OSError if
    unreadable."""
    with open(path, "rb") as f:
        head = f.read(16)
    return next(((suffix, name) for magic, suffix, name in MAGIC if head.startswith(magic)), None)


def classify_entry(path: Path) -> tuple[str, str]:
    """("candidate" | "rejected" | "skipped", reason) for one entry of the input folder.

    Candidates are decoded; rejected entries become manifest rows with their reason (they look like maps, or
    cannot even be looked at); skipped ones (other kinds of files, folders) are listed in the report."""
    try:
        if path.is_symlink():
            path.resolve(strict=True)  # RuntimeError on a loop, FileNotFoundError when dangling
        if path.is_dir():
            return "skipped", "a folder (maps are read from the top level of the input folder only)"
        kind = sniff_hdr(path)
    except RuntimeError:
        return "rejected", "symlink loop"
    except FileNotFoundError:
        return "rejected", f"dangling symlink (to {path.readlink()})" if path.is_symlink() else "file vanished"
    except OSError as err:
        return "rejected", f"unreadable ({err.strerror or err})"
    suffix = path.suffix.lower()
    if kind is not None and kind[0] != suffix:
        return "rejected", f"the content is {kind[1]} but the suffix is {path.suffix or 'missing'!s}: rename it to " \
                           f"{path.stem}{kind[0]} to ingest it"
    if suffix in HDR_SUFFIXES:
        return "candidate", ""
    return "skipped", f"not an HDR map (suffix {path.suffix or 'none'}, content neither OpenEXR nor Radiance HDR)"


def list_map_files(input_dir: Path) -> list[tuple[Path, str, str]]:
    """Every entry of `input_dir` in name order, with `classify_entry`'s verdict and reason."""
    if not input_dir.is_dir():
        raise InputError(input_dir, "input folder not found")
    return [(p, *classify_entry(p)) for p in sorted(input_dir.iterdir())]


def save_map(path: Path, item: IngestedMap, rig: LedRig, source: str, sha: str) -> None:
    save_tensors(path, {"envmap": torch.from_numpy(item.envmap), "weights": torch.from_numpy(item.weights)},
                 metadata={"map_id": item.map_id, "rig": rig.fingerprint, "source": source, "sha256": sha})


def load_map(path: str | Path) -> IngestedMap:
    tensors = load_tensors(path)
    if "envmap" not in tensors or "weights" not in tensors:
        raise InputError(path, "not an ingested map (needs tensors 'envmap' and 'weights')")
    return IngestedMap(Path(path).stem, tensors["envmap"].float().numpy(), tensors["weights"].double().numpy())


def ingest_hdr(input_dir: str | Path, output_dir: str | Path, rig: LedRig, config: IngestConfig,
               progress: bool = True) -> pd.DataFrame:
    """Ingest every .exr/.hdr file of `input_dir`; returns the manifest (rejected files included)."""
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    entries = list_map_files(input_dir)
    maps_dir = output_dir / MAPS_DIR
    prepare_output(output_dir, [REPORT, f"{MAPS_DIR}/*.safetensors"])
    maps_dir.mkdir(parents=True, exist_ok=True)
    remove_temp_files(maps_dir)
    skipped = [{"file": str(p), "reason": why} for p, verdict, why in entries if verdict == "skipped"]
    for item in skipped:
        log.warning("skipped %s: %s", item["file"], item["reason"])
    rows, seen = [], set()
    files = [(p, verdict, why) for p, verdict, why in entries if verdict != "skipped"]
    for path, verdict, why in tqdm(files, desc="ingest-hdr", unit="map", disable=not progress):
        row = {c: None for c in ENVMAP_COLUMNS}
        row.update(map_id=path.stem, source_file=str(path), status="ok", reason="", height=0, width=0)
        try:
            if verdict == "rejected":
                raise InputError(path, why)
            row["sha256"] = sha256_file(path)
            if path.stem in seen:
                raise InputError(path, f"duplicate map id {path.stem!r} (another file has the same stem)")
            env, negative, exposure = normalise_envmap(read_hdr(path), path, config)
            item = IngestedMap(path.stem, env, envmap_to_led_weights(env, rig))
            save_map(maps_dir / f"{item.map_id}.safetensors", item, rig, str(path), row["sha256"])
            seen.add(path.stem)
            row.update(height=env.shape[0], width=env.shape[1], negative_fraction=negative, exposure=exposure,
                       **map_statistics(env))
        except InputError as err:
            log.warning("rejected %s", err)
            row.update(status="rejected", reason=err.reason)
        rows.append(row)
    manifest = pd.DataFrame(rows, columns=list(ENVMAP_COLUMNS)).astype(
        {"height": "int64", "width": "int64", **{c: "float64" for c, t in ENVMAP_COLUMNS.items() if t == "float"}})
    rejected = manifest[manifest.status == "rejected"]
    report = {"n_files": len(manifest), "n_accepted": int((manifest.status == "ok").sum()),
              "n_rejected": len(rejected), "rig": rig.fingerprint, "height": config.height,
              "rejected": [{"file": f, "reason": r} for f, r in zip(rejected.source_file, rejected.reason)],
              "n_skipped": len(skipped), "skipped": skipped}
    atomic_write_text(output_dir / REPORT, json.dumps(report, indent=2) + "\n")
    write_manifest(manifest, output_dir / MANIFEST)  # last: its presence means the folder is complete
    return manifest

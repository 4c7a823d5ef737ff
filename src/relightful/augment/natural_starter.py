"""The natural starter set: real portraits and background photos that can be had offline (DESIGN 5).

    <out>/portraits/<name>/image.png, matte.png    real portraits from scikit-image's and matplotlib's bundled data,
                                                   mattes derived here (the person segmenter, or GrabCut)
    <out>/backgrounds/<name>.png                   real photos from scikit-image's bundled data
    <out>/backgrounds/hdri-<map>-<k>.png           tone-mapped perspective views of the HDR starter maps (optional)
    <out>/SOURCES.json                             origin, licence and sha256 of every file written

scikit-image and matplotlib ship these photos inside their wheels (no download). Only the photos with a known free
licence are listed below. The folder is the input format of `relightful augment` (augment/portraits.py).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from relightful.augment.config import NaturalStarterConfig
from relightful.augment.matting import MattingUnavailable, compute_matte
from relightful.augment.portraits import IMAGE_NAMES, MATTE_NAME
from relightful.data.splits import source_of, stable_hash
from relightful.io.digest import sha256_file
from relightful.io import (HDR_SUFFIXES, InputError, atomic_write_text, auto_exposure, read_hdr, tonemap, write_ldr,
                           write_matte)
from relightful.lighting import check_envmap, perspective_crop

log = logging.getLogger(__name__)

SOURCES_FILE = "SOURCES.json"

# skimage.data functions that are real photographs with a free licence (from their docstrings, scikit-image 0.26).
SKIMAGE_PORTRAITS = {
    "astronaut": {"original": "skimage/data/astronaut.png",
                  "description": "Eileen Collins, NASA astronaut; NASA Great Images database "
                                 "(https://flic.kr/p/r9qvLn)",
                  "license": "public domain (NASA; no known copyright restrictions)"},
}
# matplotlib's sample data (mpl-data/sample_data): real portraits with a free licence.
MATPLOTLIB_PORTRAITS = {
    "grace_hopper": {"original": "matplotlib/mpl-data/sample_data/grace_hopper.jpg",
                     "description": "Rear Admiral Grace M. Hopper, official U.S. Navy portrait (1984)",
                     "license": "public domain (work of the U.S. federal government)"},
}
PORTRAITS = {**SKIMAGE_PORTRAITS, **MATPLOTLIB_PORTRAITS}
SKIMAGE_BACKGROUNDS = {
    "coffee": {"original": "skimage/data/coffee.png", "description": "coffee cup, courtesy of Pikolo Espresso Bar",
               "license": "CC0-1.0 (photographer Rachel Michetti)"},
    "rocket": {"original": "skimage/data/rocket.jpg", "description": "DSCOVR launch on Falcon 9, SpaceX",
               "license": "public domain (released by SpaceX)"},
    "chelsea": {"original": "skimage/data/chelsea.png", "description": "Chelsea the cat",
                "license": "CC0-1.0 (photographer Stefan van der Walt)"},
    "hubble_deep_field": {"original": "skimage/data/hubble_deep_field.jpg",
                          "description": "Hubble eXtreme Deep Field, NASA",
                          "license": "public domain (NASA)"},
}


class NaturalStarterError(RuntimeError):
    """The starter set cannot be built here (a missing package or an unknown photo name); the message says why."""


def _skimage_data():
    try:
        import skimage
        import skimage.data
    except ImportError:
        raise NaturalStarterError("the natural starter set needs scikit-image, whose wheel carries the photos: "
                                  "pip install -c constraints.txt scikit-image") from None
    return skimage.__version__, skimage.data


def _portrait(name: str, skimage_version: str, skimage_data) -> tuple[np.ndarray, str]:
    """(uint8 RGB photo, where it came from) of a starter portrait."""
    if name in SKIMAGE_PORTRAITS:
        return getattr(skimage_data, name)(), f"scikit-image {skimage_version} (PyPI wheel), skimage.data.{name}()"
    try:
        import matplotlib
        import matplotlib.cbook
    except ImportError:
        raise NaturalStarterError(f"starter portrait {name!r} ships with matplotlib: pip install -c constraints.txt "
                                  "matplotlib") from None
    import cv2

    with matplotlib.cbook.get_sample_data(Path(MATPLOTLIB_PORTRAITS[name]["original"]).name) as f:
        image = cv2.imdecode(np.frombuffer(f.read(), np.uint8), cv2.IMREAD_COLOR)
    return np.ascontiguousarray(image[..., ::-1]), f"matplotlib {matplotlib.__version__} (PyPI wheel), sample data"


def _write_rgb(path: Path, image: np.ndarray) -> None:
    """uint8 (H, W, 3) RGB -> 8-bit PNG with the same bytes' pixels (write_ldr rounds v/255·255 back to v)."""
    write_ldr(path, image[..., :3].astype(np.float32) / 255.0)


def hdri_views(hdri_dir: Path, config: NaturalStarterConfig, progress: bool = False):
    """Yield (name, uint8 view, source entry) for every HDR map of `hdri_dir` (of a source in `hdri_sources`, when
    given): `hdri_crops_per_map` random
    perspective views each (yaw uniform, FoV and pitch from their ranges, drawn from a generator seeded by the
    map's name), auto-exposed and tone-mapped to 8-bit sRGB as DESIGN 3.1 defines a background. A map that cannot
    be read is logged and left out (its entry carries the error)."""
    sources_path = hdri_dir / SOURCES_FILE
    licences = {}
    if sources_path.is_file():
        licences = {m["file"]: m for m in json.loads(sources_path.read_text()).get("maps", []) if "file" in m}
    maps = sorted(p for p in hdri_dir.iterdir() if p.suffix.lower() in HDR_SUFFIXES
                  and (config.hdri_sources is None or source_of(p.stem) in config.hdri_sources))
    for path in tqdm(maps, desc="HDR views", unit="map", disable=not progress):
        try:
            env = read_hdr(path)
            check_envmap(env, str(path))
        except (InputError, ValueError) as err:
            log.warning("skipping HDR map %s: %s", path.name, err)
            yield None, None, {"file": None, "source": str(path), "error": str(err)}
            continue
        for k in range(config.hdri_crops_per_map):
            rng = np.random.default_rng(stable_hash(config.seed, "hdri-view", path.stem, k))
            yaw, fov, pitch = rng.uniform(-180, 180), rng.uniform(*config.fov_range), rng.uniform(*config.pitch_range)
            view = perspective_crop(env, fov, yaw, pitch, size=tuple(config.hdri_crop_size))
            exposure = auto_exposure(view, config.exposure_key)
            meta = licences.get(path.name, {})
            yield f"hdri-{path.stem}-{k}", tonemap(view, exposure), {
                "source": str(path), "original": meta.get("original", path.name),
                "license": meta.get("license", "as the HDR map (see its folder's SOURCES.json)"),
                "description": f"perspective view of {path.name}: yaw {yaw:.1f}°, pitch {pitch:.1f}°, "
                               f"horizontal FoV {fov:.1f}°, exposure {exposure:.4g}, sRGB 8-bit"}


def build_natural_starter(out_dir: str | Path = "data/raw/natural", config: NaturalStarterConfig | None = None,
                          hdri_dir: str | Path | None = None, progress: bool = True) -> dict:
    """Write the starter portraits, backgrounds and SOURCES.json (see the module docstring); returns SOURCES.

    Files this job wrote before and does not write now are removed, so the folder is exactly this config's set.
    """
    config = config or NaturalStarterConfig()
    version, data = _skimage_data()
    out_dir = Path(out_dir)
    unknown = (sorted(set(config.portraits) - set(PORTRAITS))
               + sorted(set(config.backgrounds) - set(SKIMAGE_BACKGROUNDS)))
    if unknown:
        raise NaturalStarterError(f"unknown starter photo(s) {unknown}: portraits are some of "
                                  f"{sorted(PORTRAITS)}, "
                                  f"backgrounds some of {sorted(SKIMAGE_BACKGROUNDS)}")
    origin = f"scikit-image {version} (PyPI wheel), skimage.data"
    entries: list[dict] = []
    for name in config.portraits:
        image, portrait_origin = _portrait(name, version, data)
        try:
            matte = compute_matte(image, config.matting)
        except MattingUnavailable as err:
            raise NaturalStarterError(str(err)) from None
        folder = out_dir / "portraits" / name
        _write_rgb(folder / "image.png", image)
        write_matte(folder / MATTE_NAME, matte)
        coverage = float((matte > 0.5).mean())
        entries.append({"file": f"portraits/{name}/image.png", "kind": "portrait", "source": portrait_origin,
                        **PORTRAITS[name], "sha256": sha256_file(folder / "image.png")})
        entries.append({"file": f"portraits/{name}/{MATTE_NAME}", "kind": "matte",
                        "source": f"relightful.augment.matting, method {config.matting!r}",
                        "description": f"alpha matte of the portrait; {coverage:.1%} of its pixels above 0.5",
                        "license": "derived from the portrait: same licence", "coverage": coverage,
                        "sha256": sha256_file(folder / MATTE_NAME)})
    for name in config.backgrounds:
        path = out_dir / "backgrounds" / f"{name}.png"
        _write_rgb(path, getattr(data, name)())
        entries.append({"file": f"backgrounds/{name}.png", "kind": "background", "source": f"{origin}.{name}()",
                        **SKIMAGE_BACKGROUNDS[name], "sha256": sha256_file(path)})
    skipped = []
    if hdri_dir is not None:
        hdri_dir = Path(hdri_dir)
        if not hdri_dir.is_dir():
            raise InputError(hdri_dir, "HDR folder not found")
        for name, view, entry in hdri_views(hdri_dir, config, progress):
            if name is None:
                skipped.append(entry)
                continue
            path = out_dir / "backgrounds" / f"{name}.png"
            _write_rgb(path, view)
            entries.append({"file": f"backgrounds/{name}.png", "kind": "background", **entry, "sha256": sha256_file(path)})
    _remove_stale(out_dir, {e["file"] for e in entries})
    sources = {"description": "natural portraits and background photos of the relightful starter set",
               "files": entries, "skipped": skipped}
    atomic_write_text(out_dir / SOURCES_FILE, json.dumps(sources, indent=2))
    return sources


def _remove_stale(out_dir: Path, keep: set[str]) -> None:
    """Delete portrait and background files of an earlier run that this run did not write."""
    stale = [p for p in (out_dir / "backgrounds").glob("*") if p.is_file()]
    stale += [p for n in (*IMAGE_NAMES, MATTE_NAME) for p in (out_dir / "portraits").glob(f"*/{n}")]
    for path in stale:
        if path.relative_to(out_dir).as_posix() not in keep:
            path.unlink()
    for folder in (out_dir / "portraits").glob("*"):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


__all__ = ["NaturalStarterError", "SKIMAGE_BACKGROUNDS", "SKIMAGE_PORTRAITS", "build_natural_starter", "hdri_views"]

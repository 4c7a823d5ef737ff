"""The natural-portrait folder format and its validating loader.

    portraits/<portrait_id>/image.png | image.jpg | image.jpeg    8/16-bit RGB photo (alpha, if any, is ignored)
    portraits/<portrait_id>/matte.png                              8/16-bit alpha of the person, same size
    backgrounds/<background_id>.png | .jpg | .jpeg                 background photos, any size

`scan_portraits` and `scan_backgrounds` read every file once, up front, so a bad one is reported (with the file and
the reason) before any model time is spent, and the others still run. They keep only names and checksums: images
are read again, at the pair size, when a shard needs them (`load_portrait`, `load_background`), so memory does not
grow with the number of portraits. A portrait without matte.png can get one computed (`relightful.augment.matting`);
that matte is written under `matte_dir`, named by the image's checksum, and reused by later runs.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import relightful  # noqa: F401  (sets OPENCV_IO_ENABLE_OPENEXR before cv2 is imported)
import cv2
import numpy as np
import torch

from relightful.io import InputError, read_ldr, read_matte, srgb_decode, to_uint8, write_matte

log = logging.getLogger(__name__)

IMAGE_NAMES = ("image.png", "image.jpg", "image.jpeg")
MATTE_NAME = "matte.png"
BACKGROUND_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class Portrait:
    """A validated portrait: where its photo and matte are, and what they hold (checksums for shard fingerprints)."""

    portrait_id: str
    image: Path
    matte: Path
    matte_source: str       # "file", or the matting method that computed it
    digest: str             # sha256 over the image and matte file contents
    coverage: float         # fraction of matte > 0.5 at full resolution
    height: int
    width: int


@dataclass(frozen=True)
class Background:
    background_id: str
    path: Path
    digest: str
    height: int
    width: int


def _sha256(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.read_bytes())
    return h.hexdigest()


# --- geometry ------------------------------------------------------------------------------------------------------

def cover_crop(image: np.ndarray, size: int) -> np.ndarray:
    """Scale (H, W[, C]) float32 so it covers size×size, then centre-crop: no distortion, no borders. Antialiased
    (area) when shrinking, bicubic when enlarging (clipped to the input range, bicubic overshoots)."""
    h, w = image.shape[:2]
    s = max(size / h, size / w)
    sh, sw = max(size, round(h * s)), max(size, round(w * s))
    if (sh, sw) != (h, w):
        resized = cv2.resize(image, (sw, sh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC)
        image = np.clip(resized, image.min(), image.max()) if s > 1 else resized
    top, left = (sh - size) // 2, (sw - size) // 2
    return np.ascontiguousarray(image[top:top + size, left:left + size])


def _linear_chw(display: np.ndarray, size: int) -> torch.Tensor:
    """sRGB display values (H, W, 3) -> linear (3, size, size) float32, resized in linear light."""
    linear = srgb_decode(np.ascontiguousarray(display, dtype=np.float32))
    return torch.from_numpy(cover_crop(linear, size)).permute(2, 0, 1).contiguous()


# --- scanning ------------------------------------------------------------------------------------------------------

def find_image(folder: Path) -> Path:
    found = [folder / n for n in IMAGE_NAMES if (folder / n).is_file()]
    if not found:
        raise InputError(folder, f"no portrait photo (expected one of {', '.join(IMAGE_NAMES)})")
    if len(found) > 1:
        raise InputError(folder, f"ambiguous portrait photo: {', '.join(p.name for p in found)} (keep one)")
    return found[0]


def check_portrait(folder: Path, auto_matte: str = "none", matte_dir: Path | None = None,
                   coverage_range: tuple[float, float] = (0.01, 0.99)) -> Portrait:
    """Validate one portrait folder (reading both files); raise `InputError` naming the bad file and the reason."""
    image_path = find_image(folder)
    image = read_ldr(image_path)
    matte_path, source = folder / MATTE_NAME, "file"
    if not matte_path.is_file():
        if auto_matte == "none":
            raise InputError(matte_path, "matte not found (add matte.png, or set augment.auto_matte to segmenter "
                                         "or grabcut to compute missing mattes)")
        from relightful.augment.matting import MattingUnavailable, compute_matte

        if matte_dir is None:
            raise ValueError("computing a matte needs matte_dir, the folder to write it to")
        source = auto_matte
        matte_path = matte_dir / f"{folder.name}-{auto_matte}-{_sha256(image_path)[:16]}.png"
        if not matte_path.is_file():
            try:
                computed = compute_matte(to_uint8(image), auto_matte)
            except MattingUnavailable as err:
                raise InputError(folder / MATTE_NAME, f"matte not found and cannot be computed: {err}") from None
            except ValueError as err:  # the segmenter saw no person
                raise InputError(image_path, str(err)) from None
            write_matte(matte_path, computed)
            log.info("computed the matte of %s with %s -> %s", folder.name, auto_matte, matte_path)
    matte = read_matte(matte_path)
    if matte.shape != image.shape[:2]:
        raise InputError(matte_path, f"matte is {matte.shape[1]}x{matte.shape[0]} but {image_path.name} is "
                                     f"{image.shape[1]}x{image.shape[0]}: they must have the same size")
    coverage = float((matte > 0.5).mean())
    lo, hi = coverage_range
    if not lo <= coverage <= hi:
        raise InputError(matte_path, f"matte covers {coverage:.1%} of the photo, outside [{lo:.0%}, {hi:.0%}]: "
                                     "no usable subject (or no background) in this portrait")
    return Portrait(folder.name, image_path, matte_path, source, _sha256(image_path, matte_path), coverage,
                    image.shape[0], image.shape[1])


def scan_portraits(portraits_dir: str | Path, auto_matte: str = "none", matte_dir: str | Path | None = None,
                   coverage_range: tuple[float, float] = (0.01, 0.99)) -> tuple[list[Portrait], dict[str, str]]:
    """(usable portraits sorted by id, {portrait_id: why it was skipped}). Only a missing folder is fatal."""
    portraits_dir = Path(portraits_dir)
    if not portraits_dir.is_dir():
        raise InputError(portraits_dir, "portraits folder not found")
    good, failed = [], {}
    for folder in sorted(p for p in portraits_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            good.append(check_portrait(folder, auto_matte, None if matte_dir is None else Path(matte_dir),
                                       coverage_range))
        except InputError as err:
            log.warning("skipping portrait %s: %s", folder.name, err)
            failed[folder.name] = str(err)
    return good, failed


def scan_backgrounds(backgrounds_dir: str | Path) -> tuple[list[Background], dict[str, str]]:
    """(readable background photos sorted by id, {file name: why it was skipped})."""
    backgrounds_dir = Path(backgrounds_dir)
    if not backgrounds_dir.is_dir():
        raise InputError(backgrounds_dir, "backgrounds folder not found")
    good, failed, seen = [], {}, {}
    for path in sorted(p for p in backgrounds_dir.iterdir() if p.suffix.lower() in BACKGROUND_SUFFIXES):
        try:
            if path.stem in seen:
                raise InputError(path, f"same id {path.stem!r} as {seen[path.stem].name} "
                                       "(background ids are file stems)")
            image = read_ldr(path)
        except InputError as err:
            log.warning("skipping background %s: %s", path.name, err)
            failed[path.name] = str(err)
            continue
        seen[path.stem] = path
        good.append(Background(path.stem, path, _sha256(path), image.shape[0], image.shape[1]))
    return good, failed


# --- loading at the pair size --------------------------------------------------------------------------------------

def load_portrait(portrait: Portrait, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(photo (3, S, S) linear float32, matte (1, S, S) float32), both cover-cropped to `size` the same way."""
    image, matte = read_ldr(portrait.image), read_matte(portrait.matte)
    if matte.shape != image.shape[:2]:  # the files changed since the scan
        raise InputError(portrait.matte, "matte and photo sizes differ")
    return _linear_chw(image, size), torch.from_numpy(cover_crop(matte, size)).clamp(0, 1)[None]


def load_background(background: Background, size: int) -> torch.Tensor:
    """(3, S, S) linear float32 background photo, cover-cropped to `size`."""
    return _linear_chw(read_ldr(background.path), size)


__all__ = ["BACKGROUND_SUFFIXES", "Background", "IMAGE_NAMES", "MATTE_NAME", "Portrait", "check_portrait",
           "cover_crop", "find_image", "load_background", "load_portrait", "scan_backgrounds", "scan_portraits"]

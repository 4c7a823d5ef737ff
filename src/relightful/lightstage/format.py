"""The OLAT-set folder format (DESIGN 3.2): reading it with full validation, and writing it.

    subjects/<subject_id>/
        olat/<led_id:03d>.exr | .hdr       one linear image per LED of the rig   (or, instead of olat/,
        olat.safetensors | olat.npy        one stack "olat" of shape (N, H, W, 3) in rig order)
        matte.png                          8- or 16-bit alpha
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from relightful.io.errors import InputError
from relightful.io.images import HDR_SUFFIXES, read_hdr, read_matte, write_hdr, write_matte
from relightful.io.tensors import load_tensors, save_tensors
from relightful.lighting.rig import LedRig

MATTE_NAME = "matte.png"


def _led_file(olat_dir: Path, led_id: int) -> Path:
    for suffix in HDR_SUFFIXES:
        candidate = olat_dir / f"{led_id:03d}{suffix}"
        if candidate.is_file():
            return candidate
    raise InputError(olat_dir / f"{led_id:03d}.exr", f"missing image for LED {led_id} (also looked for .hdr)")


def _read_stack_file(subject_dir: Path) -> tuple[np.ndarray, Path] | None:
    st, npy = subject_dir / "olat.safetensors", subject_dir / "olat.npy"
    if st.is_file():
        tensors = load_tensors(st)
        if "olat" not in tensors:
            raise InputError(st, "no tensor named 'olat'")
        return tensors["olat"].float().numpy(), st
    if npy.is_file():
        try:
            return np.load(npy, allow_pickle=False).astype(np.float32), npy
        except (ValueError, OSError) as err:
            raise InputError(npy, f"cannot read array ({err})") from None
    return None


def load_olat_set(subject_dir: str | Path, rig: LedRig) -> tuple[np.ndarray, np.ndarray]:
    """Read one subject: (olat (N, H, W, 3) float32 with the rig's rgb_gain divided out, matte (H, W) float32).

    Every problem (missing LED image, mismatched sizes, missing matte, non-finite pixels) raises `InputError`
    naming the offending file.
    """
    subject_dir = Path(subject_dir)
    if not subject_dir.is_dir():
        raise InputError(subject_dir, "subject folder not found")
    matte_path = subject_dir / MATTE_NAME
    if not matte_path.is_file():
        raise InputError(matte_path, "matte missing")

    stacked = _read_stack_file(subject_dir)
    if stacked is not None:
        olat, source = stacked
        if olat.ndim != 4 or olat.shape[-1] != 3:
            raise InputError(source, f"OLAT stack must be (N, H, W, 3), got {olat.shape}")
        if olat.shape[0] != rig.n_leds:
            raise InputError(source, f"has {olat.shape[0]} OLAT images but rig {rig.name!r} has {rig.n_leds} LEDs")
        if not np.isfinite(olat).all():
            raise InputError(source, "OLAT stack holds NaN or infinite values")
    else:
        olat_dir = subject_dir / "olat"
        if not olat_dir.is_dir():
            raise InputError(subject_dir, "no olat/ folder, olat.safetensors or olat.npy")
        first_path = _led_file(olat_dir, rig.ids[0])
        first = read_hdr(first_path)
        olat = np.empty((rig.n_leds, *first.shape), dtype=np.float32)
        olat[0] = first
        for k, led_id in enumerate(rig.ids[1:], start=1):
            path = _led_file(olat_dir, led_id)
            image = read_hdr(path)
            if image.shape != first.shape:
                raise InputError(path, f"size {image.shape[1]}x{image.shape[0]} differs from "
                                       f"{first_path.name}'s {first.shape[1]}x{first.shape[0]}")
            olat[k] = image

    matte = read_matte(matte_path)
    if matte.shape != olat.shape[1:3]:
        raise InputError(matte_path, f"matte is {matte.shape[1]}x{matte.shape[0]} but the OLAT images are "
                                     f"{olat.shape[2]}x{olat.shape[1]}")
    olat /= rig.rgb_gain.astype(np.float32)[:, None, None, :]
    return olat, matte


def write_olat_set(subject_dir: str | Path, olat, matte, rig: LedRig, layout: str = "safetensors") -> None:
    """Write a subject in the folder format: `layout` "safetensors" (one float16 stack) or "exr" (one file per LED).

    `olat` is calibrated radiance; the rig's rgb_gain is multiplied back in, as a real capture would hold it.
    """
    subject_dir = Path(subject_dir)
    raw = torch.as_tensor(np.asarray(olat, dtype=np.float32) * rig.rgb_gain.astype(np.float32)[:, None, None, :])
    if layout == "safetensors":
        save_tensors(subject_dir / "olat.safetensors", {"olat": raw.half()}, metadata={"rig": rig.fingerprint})
    elif layout in ("exr", "hdr"):
        for led_id, image in zip(rig.ids, raw):
            write_hdr(subject_dir / "olat" / f"{led_id:03d}.{layout}", image)
    else:
        raise ValueError(f"unknown OLAT layout {layout!r}")
    write_matte(subject_dir / MATTE_NAME, np.asarray(matte, dtype=np.float32))

"""Reading and writing images: linear float32 HDR (.exr, .hdr), 8/16-bit LDR images and alpha mattes.

Every reader validates what it returns and raises `InputError` naming the file and the reason; every writer is
atomic (encode in memory, write a temp file, rename).
"""

from __future__ import annotations

from pathlib import Path

import relightful  # noqa: F401  (sets OPENCV_IO_ENABLE_OPENEXR before cv2 is imported)
import cv2
import numpy as np

from relightful.io.atomic import atomic_write_bytes
from relightful.io.color import to_uint8
from relightful.io.dispatch import to_torch
from relightful.io.errors import InputError

HDR_SUFFIXES = (".exr", ".hdr")
LDR_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


Source = str | Path | bytes  # a file, or an image file's bytes (an upload)


def _name(source: Source, name: str | None) -> str | Path:
    """What messages call the image: its path, or the name an upload was given."""
    return name or (Path(source) if not isinstance(source, bytes) else "image")


def _read(source: Source, name: str | None) -> bytes:
    if isinstance(source, bytes):
        data = source
    else:
        path = Path(source)
        if not path.is_file():
            raise InputError(path, "file not found")
        data = path.read_bytes()
    if not data:
        raise InputError(_name(source, name), "file is empty")
    return data


def _decode(source: Source, flags: int, name: str | None = None) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(_read(source, name), dtype=np.uint8), flags)
    if image is None:
        raise InputError(_name(source, name), "cannot decode image (truncated, corrupt or unsupported format)")
    return image


def check_pixels(source: Source, max_pixels: int, name: str | None = None) -> tuple[int, int]:
    """(width, height) of an image file (path or bytes) from its header, without decoding the pixels; `InputError`
    when it holds more than `max_pixels`, so an oversized upload is refused before it takes the memory of its
    decoded copies."""
    import io
    import warnings

    from PIL import Image

    label = _name(source, name)
    data = io.BytesIO(source) if isinstance(source, bytes) else Path(source)
    if not isinstance(source, bytes) and not data.is_file():
        raise InputError(label, "file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(data) as image:
                width, height = image.size
    except Image.DecompressionBombError:  # over twice Pillow's own limit (about 179 MP)
        raise InputError(label, f"over the limit of {max_pixels / 1e6:g} MP (--max-pixels)") from None
    except (OSError, ValueError, SyntaxError):
        raise InputError(label, "cannot decode image (truncated, corrupt or unsupported format)") from None
    if width * height > max_pixels:
        raise InputError(label, f"{width}x{height} is {width * height / 1e6:.1f} MP, over the limit of "
                                f"{max_pixels / 1e6:g} MP (--max-pixels)")
    return width, height


def _to_rgb(image: np.ndarray, path: Path) -> np.ndarray:
    if image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=-1)
    if image.ndim == 3 and image.shape[2] in (3, 4):
        return image[..., 2::-1]  # BGR(A) -> RGB
    raise InputError(path, f"unexpected image shape {image.shape}")


def read_hdr(path: str | Path) -> np.ndarray:
    """Read a linear HDR image (.exr or .hdr) as float32 (H, W, 3); reject non-finite pixels."""
    path = Path(path)
    if path.suffix.lower() not in HDR_SUFFIXES:
        raise InputError(path, f"not an HDR image (expected one of {HDR_SUFFIXES})")
    image = _decode(path, cv2.IMREAD_UNCHANGED)
    if not np.issubdtype(image.dtype, np.floating):
        raise InputError(path, f"HDR file decoded as {image.dtype}, expected floating point radiance")
    rgb = np.ascontiguousarray(_to_rgb(image, path), dtype=np.float32)
    bad = ~np.isfinite(rgb)
    if bad.any():
        raise InputError(path, f"{int(bad.any(axis=-1).sum())} pixels are NaN or infinite")
    return rgb


def write_hdr(path: str | Path, image) -> None:
    """Write a linear float (H, W, 3) image as 32-bit float .exr or RGBE .hdr, atomically."""
    path = Path(path)
    rgb = np.ascontiguousarray(to_torch(image).detach().cpu().float().numpy())
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"{path}: expected an (H, W, 3) image, got shape {rgb.shape}")
    if not np.isfinite(rgb).all():
        raise ValueError(f"{path}: refusing to write non-finite pixels")
    suffix = path.suffix.lower()
    params = [cv2.IMWRITE_EXR_TYPE, cv2.IMWRITE_EXR_TYPE_FLOAT] if suffix == ".exr" else []
    if suffix not in HDR_SUFFIXES:
        raise ValueError(f"{path}: HDR images are written as {HDR_SUFFIXES}")
    ok, buf = cv2.imencode(suffix, rgb[..., ::-1], params)
    if not ok:
        raise OSError(f"{path}: OpenCV could not encode the image")
    atomic_write_bytes(path, buf.tobytes())


def read_ldr(source: Source, name: str | None = None) -> np.ndarray:
    """Read an 8- or 16-bit image (a path, or a file's bytes called `name`) as float32 (H, W, 3) display values in
    [0, 1] (sRGB, not linearised)."""
    image = _decode(source, cv2.IMREAD_UNCHANGED, name)
    if image.dtype not in (np.uint8, np.uint16):
        raise InputError(_name(source, name), f"expected an 8- or 16-bit image, got {image.dtype}")
    scale = 255.0 if image.dtype == np.uint8 else 65535.0
    rgb = _to_rgb(image, _name(source, name))[..., :3]
    return np.ascontiguousarray(rgb, dtype=np.float32) / np.float32(scale)


def encode_png(image8: np.ndarray) -> bytes:
    """(H, W, 3) uint8 RGB or (H, W) uint8 grey -> PNG bytes (an API's answer, an upload in a test)."""
    pixels = image8[..., ::-1] if image8.ndim == 3 else image8
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(pixels))
    if not ok:
        raise RuntimeError("OpenCV could not encode the PNG")
    return buf.tobytes()


def write_ldr(path: str | Path, image, bits: int = 8) -> None:
    """Write display values in [0, 1] (H, W, 3) or (H, W) as an 8- or 16-bit image, atomically."""
    path = Path(path)
    x = to_torch(image).detach().cpu().float()
    if bits == 8:
        pixels = to_uint8(x)
    elif bits == 16:
        pixels = (x.clamp(0, 1).numpy() * 65535.0 + 0.5).astype(np.uint16)
    else:
        raise ValueError("bits must be 8 or 16")
    if pixels.ndim == 3:
        pixels = pixels[..., ::-1]
    ok, buf = cv2.imencode(path.suffix.lower(), np.ascontiguousarray(pixels))
    if not ok:
        raise OSError(f"{path}: OpenCV could not encode the image")
    atomic_write_bytes(path, buf.tobytes())


def read_matte(source: Source, name: str | None = None) -> np.ndarray:
    """Read an alpha matte (8/16-bit grey, or the alpha channel of RGBA; a path, or a file's bytes called `name`)
    as float32 (H, W) in [0, 1]."""
    image = _decode(source, cv2.IMREAD_UNCHANGED, name)
    if image.dtype not in (np.uint8, np.uint16):
        raise InputError(_name(source, name), f"expected an 8- or 16-bit matte, got {image.dtype}")
    if image.ndim == 3:
        image = image[..., 3] if image.shape[2] == 4 else image[..., 0]
    scale = 255.0 if image.dtype == np.uint8 else 65535.0
    return np.ascontiguousarray(image, dtype=np.float32) / np.float32(scale)


def write_matte(path: str | Path, matte, bits: int = 16) -> None:
    """Write an (H, W) alpha matte in [0, 1] as a grey PNG (16-bit by default), atomically."""
    x = to_torch(matte)
    if x.ndim != 2:
        raise ValueError(f"{path}: a matte is (H, W), got shape {tuple(x.shape)}")
    write_ldr(path, x, bits=bits)

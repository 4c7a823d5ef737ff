"""Reading and writing images: linear float32 HDR (.exr, .hdr), 8/16-bit LDR images and alpha mattes.

Every reader validates what it returns and raises `InputError` naming the file and the reason; every writer is
atomic (encode in memory, write a temp file, rename).
"""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path
from typing import BinaryIO

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

# Pixel limits, checked from each file's header before it is decoded. OpenCV's EXR and Radiance decoders (on with
# OPENCV_IO_ENABLE_OPENEXR) allocate what the header asks for: a 400 KB EXR claiming 8192x4096 takes 1.6 GB.
# LDR images and mattes: 40 MP (a 7,700x5,200 photo; its float copies take a few GB). HDR maps: 2^24 pixels
# (16.8 MP, room for a 4k map at 8.4 MP; the starter maps are at most 1024x512); an 8k map must be asked for.
DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MAX_HDR_PIXELS = 1 << 24
MAX_PIXELS_ENV = "RELIGHTFUL_MAX_PIXELS"
MAX_HDR_PIXELS_ENV = "RELIGHTFUL_MAX_HDR_PIXELS"

_EXR_MAGIC = b"\x76\x2f\x31\x01"
_EXR_MULTIPART = 0x1000  # version flag: several parts, each with its own header
_EXR_MAX_ATTRIBUTES = 4096  # a sane header has a few dozen; more is a crafted file
_RADIANCE_MAGIC = (b"#?RADIANCE", b"#?RGBE")
_RADIANCE_RESOLUTION = re.compile(rb"^[-+][XY] (\d+) [-+][XY] (\d+)$")


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


def pixel_limit(hdr: bool) -> tuple[int, str]:
    """(limit, the environment variable that sets it) for HDR maps or for LDR images and mattes: the variable's
    value when set, else the default. A value that is not a positive whole number is refused, naming it, rather
    than silently lifting the bound."""
    env, default = (MAX_HDR_PIXELS_ENV, DEFAULT_MAX_HDR_PIXELS) if hdr else (MAX_PIXELS_ENV, DEFAULT_MAX_PIXELS)
    raw = os.environ.get(env, "").strip()
    if not raw:
        return default, env
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        value = 0
    if value < 1:
        raise InputError(env, f"expected a positive whole number of pixels, got {raw!r}")
    return value, env


def _exr_size(f: BinaryIO) -> tuple[int, int]:
    """(width, height) from an OpenEXR header's `dataWindow` (for a multi-part file, the sum of its parts' pixel
    counts as a width x 1 strip), reading attribute by attribute and seeking over the values: no pixel is read.
    Layout (openexr.com, "OpenEXR File Layout"): magic, version (4 bytes), then per attribute name\\0 type\\0
    int32 size and the value; an empty name ends a header, and in a multi-part file an empty header ends the list.
    Raises ValueError on anything malformed."""
    f.read(4)
    (version,) = struct.unpack("<I", f.read(4))
    multipart = bool(version & _EXR_MULTIPART)
    sizes = []
    while True:
        window = None
        for _ in range(_EXR_MAX_ATTRIBUTES):
            attr = _exr_string(f)
            if not attr:
                break
            _exr_string(f)  # the type name
            raw = f.read(4)
            if len(raw) != 4:
                raise ValueError("truncated header")
            (size,) = struct.unpack("<i", raw)
            if size < 0:
                raise ValueError("negative attribute size")
            if attr == b"dataWindow":
                if size != 16:
                    raise ValueError("dataWindow is not a box2i")
                x0, y0, x1, y1 = struct.unpack("<4i", f.read(16))
                window = (x1 - x0 + 1, y1 - y0 + 1)
            else:
                f.seek(size, 1)
        else:
            raise ValueError("too many header attributes")
        if window is None:
            if sizes and multipart:  # the empty header that ends a multi-part list
                break
            raise ValueError("no dataWindow in the header")
        if window[0] < 1 or window[1] < 1:
            raise ValueError(f"empty data window {window[0]}x{window[1]}")
        sizes.append(window)
        if not multipart:
            break
    if len(sizes) == 1:
        return sizes[0]
    return sum(w * h for w, h in sizes), 1


def _exr_string(f: BinaryIO) -> bytes:
    """A NUL-terminated attribute or type name (at most 255 bytes, long names included)."""
    out = bytearray()
    while True:
        c = f.read(1)
        if not c:
            raise ValueError("truncated header")
        if c == b"\0":
            return bytes(out)
        out += c
        if len(out) > 255:
            raise ValueError("attribute name too long")


def _radiance_size(f: BinaryIO) -> tuple[int, int]:
    """(width, height) from a Radiance .hdr header: text lines up to an empty line, then the resolution line
    (`-Y 512 +X 1024`; "X" first means the rows are columns). Raises ValueError on anything malformed."""
    for _ in range(1024):
        line = f.readline(4096)
        if not line:
            raise ValueError("truncated header")
        if line.strip() == b"":
            break
    else:
        raise ValueError("header too long")
    match = _RADIANCE_RESOLUTION.match(f.readline(256).strip())
    if not match:
        raise ValueError("no resolution line")
    first, second = int(match[1]), int(match[2])
    line = match[0]
    return (second, first) if line[1:2] == b"Y" else (first, second)


def image_header(source: Source, name: str | None = None) -> tuple[int, int, bool]:
    """(width, height, is_hdr) of an image file (path or bytes) from its header, without decoding the pixels: EXR
    and Radiance headers are parsed here (Pillow knows neither), everything else by Pillow, which reads only the
    header on open. The format is recognised by content, not by name (an EXR called .png is still an EXR)."""
    import io
    import warnings

    from PIL import Image

    label = _name(source, name)
    if isinstance(source, bytes):
        stream = io.BytesIO(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise InputError(label, "file not found")
        stream = open(path, "rb")
    with stream:
        head = stream.read(16)
        stream.seek(0)
        if not head:
            raise InputError(label, "file is empty")
        try:
            if head.startswith(_EXR_MAGIC):
                return (*_exr_size(stream), True)
            if head.startswith(_RADIANCE_MAGIC):
                return (*_radiance_size(stream), True)
        except (ValueError, struct.error) as err:
            raise InputError(label, f"cannot read the image header ({err}): truncated, corrupt or not an image") from None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(stream) as image:
                    width, height = image.size
        except Image.DecompressionBombError as err:  # over twice Pillow's own limit (about 179 MP)
            raise InputError(label, f"over the pixel limit ({err})") from None
        except (OSError, ValueError, SyntaxError):
            raise InputError(label, "cannot decode image (truncated, corrupt or unsupported format)") from None
    return width, height, False


def check_pixels(source: Source, max_pixels: int | None = None, name: str | None = None,
                 setting: str | None = None) -> tuple[int, int]:
    """(width, height) of an image file (path or bytes) from its header, without decoding the pixels; `InputError`
    naming the file, its size and the setting when it holds more than the limit, so an oversized file is refused
    before it takes the memory of its decoded copies. The limit is `max_pixels` (called `setting`, by default
    "--max-pixels", in the message), else the one for its kind (HDR maps or LDR images, `pixel_limit`)."""
    width, height, hdr = image_header(source, name)
    if max_pixels is None:
        limit, env = pixel_limit(hdr)
        what = f"{env}, the limit for {'HDR maps' if hdr else 'images'}: raise it to read this file"
    else:
        limit, what = max_pixels, setting or "--max-pixels"
    if width * height > limit:
        raise InputError(_name(source, name), f"{width}x{height} is {width * height / 1e6:.1f} MP, over the limit of "
                                              f"{limit / 1e6:.3g} MP ({what})")
    return width, height


def _decode(source: Source, flags: int, name: str | None = None, max_pixels: int | None = None) -> np.ndarray:
    """Decode after checking the size in the header against the limit (every reader goes through here)."""
    data = _read(source, name)
    check_pixels(data, max_pixels, str(_name(source, name)))
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    if image is None:
        raise InputError(_name(source, name), "cannot decode image (truncated, corrupt or unsupported format)")
    return image


def _to_rgb(image: np.ndarray, path: Path) -> np.ndarray:
    if image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=-1)
    if image.ndim == 3 and image.shape[2] in (3, 4):
        return image[..., 2::-1]  # BGR(A) -> RGB
    raise InputError(path, f"unexpected image shape {image.shape}")


def read_hdr(path: str | Path, max_pixels: int | None = None) -> np.ndarray:
    """Read a linear HDR image (.exr or .hdr) as float32 (H, W, 3); reject non-finite pixels, and a map over
    `max_pixels` (default: RELIGHTFUL_MAX_HDR_PIXELS, else 16.8 MP) from its header."""
    path = Path(path)
    if path.suffix.lower() not in HDR_SUFFIXES:
        raise InputError(path, f"not an HDR image (expected one of {HDR_SUFFIXES})")
    image = _decode(path, cv2.IMREAD_UNCHANGED, max_pixels=max_pixels)
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


def read_ldr(source: Source, name: str | None = None, max_pixels: int | None = None) -> np.ndarray:
    """Read an 8- or 16-bit image (a path, or a file's bytes called `name`) as float32 (H, W, 3) display values in
    [0, 1] (sRGB, not linearised); over `max_pixels` (default: RELIGHTFUL_MAX_PIXELS, else 40 MP) it is refused
    from its header."""
    image = _decode(source, cv2.IMREAD_UNCHANGED, name, max_pixels)
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


def read_matte(source: Source, name: str | None = None, max_pixels: int | None = None) -> np.ndarray:
    """Read an alpha matte (8/16-bit grey, or the alpha channel of RGBA; a path, or a file's bytes called `name`)
    as float32 (H, W) in [0, 1]; the pixel limit is read_ldr's."""
    image = _decode(source, cv2.IMREAD_UNCHANGED, name, max_pixels)
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

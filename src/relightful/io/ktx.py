"""KTX 1 cube maps of packed unsigned floats, read from bytes in memory.

The open3d-cpu wheel's skyboxes (DESIGN 5; `relightful.data.starter_data`) are KTX 1 files made by Filament's cmgen:
internal format GL_R11F_G11F_B10F (0x8C3A), 6 faces of N×N texels, one uint32 per texel. This reads exactly that and
refuses anything else, naming the file and what it found. Layout (Khronos KTX 1 spec): the 12-byte identifier, 13
uint32 header fields, the key/value data, then per mip level a uint32 `imageSize` (for a non-array cube map, the size
of one face) and the six faces in OpenGL order (+X, −X, +Y, −Y, +Z, −Z), each padded to 4 bytes. Only mip level 0 is
read. A face is returned as stored: row k holds texel coordinate t = (k + 0.5)/N, column l holds s = (l + 0.5)/N
(the OpenGL (s, t) of `relightful.lighting.cubemap`).

A packed texel holds R in bits 0-10 and G in bits 11-21 (5-bit exponent, 6-bit mantissa) and B in bits 22-31 (5-bit
exponent, 5-bit mantissa): unsigned floats with exponent bias 15, denormals at exponent 0, Inf/NaN at exponent 31.
Every code is decoded through a lookup table of its exact value, so decoding is one indexing per channel.
"""

from __future__ import annotations

import struct

import numpy as np

from relightful.io.errors import InputError
from relightful.io.images import pixel_limit

KTX1_IDENTIFIER = b"\xabKTX 11\xbb\r\n\x1a\n"
KTX1_ENDIANNESS = 0x04030201
GL_R11F_G11F_B10F = 0x8C3A
HEADER_FIELDS = ("endianness", "glType", "glTypeSize", "glFormat", "glInternalFormat", "glBaseInternalFormat",
                 "pixelWidth", "pixelHeight", "pixelDepth", "numberOfArrayElements", "numberOfFaces",
                 "numberOfMipmapLevels", "bytesOfKeyValueData")
HEADER_BYTES = len(KTX1_IDENTIFIER) + 4 * len(HEADER_FIELDS)
CUBE_FACES = 6
EXPONENT_BITS = 5
EXPONENT_BIAS = 15


def unsigned_float_table(mantissa_bits: int) -> np.ndarray:
    """The float32 value of every code of an unsigned float with a 5-bit exponent (bias 15) and `mantissa_bits`
    mantissa bits, as packed in R11F_G11F_B10F (6 for R and G, 5 for B); exponent 31 decodes to Inf (mantissa 0) or
    NaN."""
    codes = np.arange(1 << (EXPONENT_BITS + mantissa_bits))
    exponent = codes >> mantissa_bits
    mantissa = (codes & ((1 << mantissa_bits) - 1)) / float(1 << mantissa_bits)
    normal = np.ldexp(1.0 + mantissa, exponent - EXPONENT_BIAS)
    denormal = np.ldexp(mantissa, 1 - EXPONENT_BIAS)
    special = np.where(mantissa == 0, np.inf, np.nan)
    values = np.where(exponent == 0, denormal, np.where(exponent == (1 << EXPONENT_BITS) - 1, special, normal))
    return values.astype(np.float32)


_R11_G11 = unsigned_float_table(6)
_B10 = unsigned_float_table(5)


def decode_r11g11b10f(words: np.ndarray) -> np.ndarray:
    """Float32 RGB (..., 3) from packed GL_R11F_G11F_B10F texels (uint32, ...), exactly."""
    words = np.asarray(words, dtype=np.uint32)
    return np.stack([_R11_G11[words & 0x7FF], _R11_G11[(words >> 11) & 0x7FF], _B10[words >> 22]], axis=-1)


def read_ktx_header(data: bytes, name: str) -> dict[str, int]:
    """The 13 header fields of a KTX 1 file, in the file's byte order; `InputError(name, ...)` if it is not one."""
    if len(data) < HEADER_BYTES:
        raise InputError(name, f"truncated KTX file: {len(data)} bytes, shorter than its {HEADER_BYTES}-byte header")
    if data[:len(KTX1_IDENTIFIER)] != KTX1_IDENTIFIER:
        raise InputError(name, "not a KTX 1 file (no «KTX 11» identifier)")
    for order in "<>":
        fields = struct.unpack_from(f"{order}{len(HEADER_FIELDS)}I", data, len(KTX1_IDENTIFIER))
        if fields[0] == KTX1_ENDIANNESS:
            return {"byte_order": order, **dict(zip(HEADER_FIELDS, fields))}
    raise InputError(name, "KTX endianness field is neither 0x04030201 nor its byte swap")


def _check_cubemap_header(header: dict[str, int], name: str) -> int:
    """The face size N of a header that describes a plain (non-array) R11F_G11F_B10F cube map; `InputError` else."""
    if header["glInternalFormat"] != GL_R11F_G11F_B10F:
        raise InputError(name, f"unsupported KTX internal format 0x{header['glInternalFormat']:04X} (only "
                               f"GL_R11F_G11F_B10F, 0x{GL_R11F_G11F_B10F:04X}, is decoded)")
    if header["numberOfFaces"] != CUBE_FACES or header["numberOfArrayElements"] != 0:
        raise InputError(name, f"not a cube map ({header['numberOfFaces']} faces, "
                               f"{header['numberOfArrayElements']} array elements)")
    size = header["pixelWidth"]
    if size < 1 or header["pixelHeight"] != size or header["pixelDepth"] != 0:
        raise InputError(name, f"cube faces must be square and 2D, got {header['pixelWidth']}x"
                               f"{header['pixelHeight']}x{header['pixelDepth']}")
    limit, env = pixel_limit(hdr=True)
    if CUBE_FACES * size * size > limit:
        raise InputError(name, f"6 faces of {size}x{size} are over the limit of {limit / 1e6:.3g} MP ({env})")
    return size


def read_ktx_cubemap(data: bytes, name: str = "<ktx>") -> np.ndarray:
    """The base level of a KTX 1 R11F_G11F_B10F cube map as float32 (6, N, N, 3), faces in OpenGL order (+X, −X,
    +Y, −Y, +Z, −Z), rows along t, columns along s; `InputError(name, ...)` for another format, a truncated file or
    non-finite texels."""
    header = read_ktx_header(data, name)
    size = _check_cubemap_header(header, name)
    offset = HEADER_BYTES + header["bytesOfKeyValueData"]
    face_bytes = 4 * size * size
    needed = offset + 4 + CUBE_FACES * face_bytes
    if len(data) < needed:
        raise InputError(name, f"truncated KTX file: {len(data)} bytes, its header needs at least {needed}")
    (image_size,) = struct.unpack_from(f"{header['byte_order']}I", data, offset)
    if image_size != face_bytes:
        raise InputError(name, f"KTX imageSize {image_size} is not one {size}x{size} face of 4-byte texels "
                               f"({face_bytes})")
    words = np.frombuffer(data, dtype=f"{header['byte_order']}u4", count=CUBE_FACES * size * size, offset=offset + 4)
    faces = decode_r11g11b10f(words.reshape(CUBE_FACES, size, size))
    if not np.isfinite(faces).all():
        raise InputError(name, "cube map holds Inf or NaN texels")
    return faces

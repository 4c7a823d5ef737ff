"""Image and tensor I/O with validation and atomic writes."""

from relightful.io.atomic import atomic_path, atomic_write_bytes, atomic_write_text
from relightful.io.color import auto_exposure, srgb_decode, srgb_decode_8bit, srgb_encode, to_uint8, tonemap
from relightful.io.errors import InputError, redact
from relightful.io.images import (
    DEFAULT_MAX_HDR_PIXELS,
    DEFAULT_MAX_PIXELS,
    HDR_SUFFIXES,
    LDR_SUFFIXES,
    MAX_HDR_PIXELS_ENV,
    MAX_PIXELS_ENV,
    check_pixels,
    image_header,
    pixel_limit,
    encode_png,
    read_hdr,
    read_ldr,
    read_matte,
    write_hdr,
    write_ldr,
    write_matte,
)
from relightful.io.json_files import read_json
from relightful.io.tensors import load_tensors, read_metadata, save_tensors

__all__ = [
    "DEFAULT_MAX_HDR_PIXELS", "DEFAULT_MAX_PIXELS", "HDR_SUFFIXES", "LDR_SUFFIXES", "InputError", "MAX_HDR_PIXELS_ENV",
    "MAX_PIXELS_ENV", "atomic_path", "atomic_write_bytes", "atomic_write_text", "auto_exposure", "check_pixels",
    "image_header", "pixel_limit", "redact", "encode_png", "load_tensors", "read_hdr", "read_json", "read_ldr", "read_matte",
    "read_metadata", "save_tensors",
    "srgb_decode", "srgb_decode_8bit", "srgb_encode", "to_uint8", "tonemap", "write_hdr", "write_ldr", "write_matte",
]

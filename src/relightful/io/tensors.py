"""safetensors files: the only format for tensors on disk (nothing is ever unpickled)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from relightful.io.atomic import _UMASK, atomic_path
from relightful.io.errors import InputError


METADATA_KEY = "relightful"


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None,
                 drop_from_cache: bool = False) -> None:
    """Write named tensors to a safetensors file atomically; same inputs give the same bytes.

    The metadata travels as one JSON string with sorted keys: safetensors keeps several keys in a hash map whose
    order changes from process to process, which would change the file's hash (and DVC's) on every run.

    `drop_from_cache` is for jobs that stream out far more than they re-read (pair shards): once the file is on
    disk its pages leave the page cache, so the next file reuses them instead of the kernel finding fresh ones
    (4x less system time per shard measured here) and the job does not evict everything else cached.
    """
    payload = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    header = {METADATA_KEY: json.dumps(metadata, sort_keys=True)} if metadata else None
    with atomic_path(path) as tmp:
        save_file(payload, tmp, metadata=header)  # streams the tensors to disk without a bytes copy
        os.chmod(tmp, 0o666 & ~_UMASK)  # safetensors recreates the file with mode 0600
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
            if drop_from_cache and hasattr(os, "posix_fadvise"):
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file; a missing or corrupt file raises `InputError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise InputError(path, f"not a valid safetensors file ({err})") from err


def tensor_shape(path: str | Path, key: str) -> tuple[int, ...]:
    """The shape of tensor `key` from a safetensors header, without reading any tensor."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(path, framework="pt") as f:
            shape = tuple(f.get_slice(key).get_shape()) if key in f.keys() else None
    except (SafetensorError, OSError, ValueError) as err:
        raise InputError(path, f"not a valid safetensors file ({err})") from err
    if shape is None:
        raise InputError(path, f"no tensor {key!r}")
    return shape


def read_metadata(path: str | Path) -> dict[str, str]:
    """The metadata dict of a safetensors header (as `save_tensors` wrote it)."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(path, framework="pt") as f:
            raw = dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as err:
        raise InputError(path, f"not a valid safetensors file ({err})") from err
    if METADATA_KEY in raw:
        try:
            return json.loads(raw[METADATA_KEY])
        except json.JSONDecodeError as err:
            raise InputError(path, f"unreadable metadata ({err})") from err
    return raw

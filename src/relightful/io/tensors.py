"""safetensors files: the only format for tensors on disk (nothing is ever unpickled)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from relightful.io.atomic import atomic_write_bytes
from relightful.io.errors import InputError


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write named tensors to a safetensors file atomically."""
    payload = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write_bytes(path, save(payload, metadata=metadata))


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file; a missing or corrupt file raises `InputError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise InputError(path, f"not a valid safetensors file ({err})") from err


def read_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata of a safetensors header."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(path, framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as err:
        raise InputError(path, f"not a valid safetensors file ({err})") from err

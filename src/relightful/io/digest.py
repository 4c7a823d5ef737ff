"""Content digests: of one file (sha256; md5 as DVC records it), and of a whole folder (a model folder's identity
across copies and machines)."""

from __future__ import annotations

import hashlib
from pathlib import Path

_BLOCK = 1 << 22


def _update(h, path: Path) -> None:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            h.update(block)


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    _update(h, Path(path))
    return h.hexdigest()


def md5_file(path: str | Path) -> str:
    """Hex md5 of a file's bytes: DVC's content hash, so a file can be matched with its dvc.lock record."""
    h = hashlib.md5()
    _update(h, Path(path))
    return h.hexdigest()


def folder_digest(folder: str | Path) -> str:
    """Hex sha256 over every file below `folder` (relative path and contents, in sorted order): equal for two
    copies of the same model folder wherever they lie."""
    folder, h = Path(folder), hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder).as_posix()).encode() + b"\0")
        _update(h, path)
    return h.hexdigest()

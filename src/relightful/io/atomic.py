"""Atomic writes: a temp file in the destination folder, then one rename, so readers never see half a file.

A temp file is named `.tmp.<final name>.<random><suffix>`: hidden (so `shard-*` and the like never match it), and
recognisable, so the next run of a job that was killed mid-write removes it (`remove_temp_files`) instead of
leaving it, or merging it into its outputs.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()
TEMP_PREFIX = ".tmp."  # every temp file of `atomic_path` starts with it


def is_temp_file(path: str | Path, targets: Iterable[str] | None = None) -> bool:
    """Whether `path` is a temp file of `atomic_path` (of one of the final names `targets`, when given)."""
    name = Path(path).name
    if not name.startswith(TEMP_PREFIX):
        return False
    return targets is None or any(name.startswith(f"{TEMP_PREFIX}{t}.") for t in targets)


def remove_temp_files(folder: str | Path, targets: Iterable[str] | None = None) -> list[Path]:
    """Delete the temp files that killed writes left in `folder` (only those of `targets`, final file names, when
    given: a worker sharing the folder with others removes its own, never a write still in flight elsewhere).
    Returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    targets = None if targets is None else list(targets)
    removed = sorted(p for p in folder.iterdir() if is_temp_file(p, targets) and not p.is_dir())
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds.

    The temporary name keeps the suffix, so writers that choose a format by extension still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the mode a plain open() would
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))

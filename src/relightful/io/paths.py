"""Paths named by data files stay inside their folder.

A manifest's `shard` column, an ingest manifest's `map_id` and a model folder's `codec.vae_path` are data: whoever
wrote (or edited, or swapped) the file chose them. Followed as given, `../../etc/passwd`, an absolute path or a
symlink out of the folder would feed files from anywhere into training and evaluation while every check of the
folder passes. So each such name is resolved here (symlinks included) and refused unless it lands inside.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath, PureWindowsPath

from relightful.io.errors import InputError


def contained(folder: str | Path, name: str | Path, where: str | Path) -> Path:
    """`folder / name`, after checking that `name` is a relative path without `..` that resolves (symlinks followed)
    inside `folder`. Else `InputError(where, reason)`: `where` names the row or file the name came from."""
    folder, text = Path(folder), str(name)
    if not text.strip():
        raise InputError(where, "empty path")
    if PurePosixPath(text).is_absolute() or PureWindowsPath(text).is_absolute():
        raise InputError(where, f"{text!r} is an absolute path; only names inside {folder} are allowed")
    parts = PurePosixPath(text.replace("\\", "/")).parts
    if ".." in parts:
        raise InputError(where, f"{text!r} leaves {folder} ('..'); only names inside it are allowed")
    path = folder / text
    try:
        root, target = folder.resolve(), path.resolve()
    except (OSError, RuntimeError) as err:  # RuntimeError: a symlink loop (Python 3.11)
        raise InputError(where, f"{text!r} cannot be resolved ({err})") from None
    if not target.is_relative_to(root):
        raise InputError(where, f"{text!r} resolves to {target}, outside {folder} (a symlink out of the folder)")
    return path


__all__ = ["contained"]

"""Lineage of a model: the data version it was trained on and the git commit of the code (DESIGN 3.8).

The data version is the md5 DVC recorded for the pairs folder in `dvc.lock` (read as YAML: the library never
imports dvc). A lock entry is used only while it still describes the folder on disk: same number of files, same
total size and, when DVC's cached listing of the folder is at hand, the same md5 of `manifest.parquet`; otherwise
(no lock, no entry, or a stale one, e.g. data regenerated outside `dvc repro`) the version is the md5 of the
folder's `manifest.parquet`, which lists every pair. `source` says which of the two it is, and `manifest_md5` is
always there so that versions of different sources can still be compared like for like.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

from relightful.data.shards import MANIFEST
from relightful.io.digest import md5_file
from relightful.io.errors import InputError

log = logging.getLogger(__name__)

SOURCE_LOCK = "dvc.lock"
SOURCE_MANIFEST = "manifest"


@dataclass(frozen=True)
class DataVersion:
    value: str          # the DVC md5 of the folder ("<md5>.dir"), or the manifest's md5
    source: str         # "dvc.lock" or "manifest"
    manifest_md5: str   # md5 of <pairs>/manifest.parquet, whatever the source

    def tags(self) -> dict[str, str]:
        return {"data_version": self.value, "data_version_source": self.source,
                "data_manifest_md5": self.manifest_md5}


def data_version(pairs_dir: str | Path, lock_path: str | Path = "dvc.lock") -> DataVersion:
    """The data version of `pairs_dir` (see the module docstring); `InputError` when it has no manifest."""
    pairs_dir, lock_path = Path(pairs_dir), Path(lock_path)
    manifest = pairs_dir / MANIFEST
    if not manifest.is_file():
        raise InputError(manifest, "pairs manifest not found: cannot tell the data version")
    manifest_md5 = md5_file(manifest)
    entry = _lock_entry(pairs_dir, lock_path)
    if entry is not None and _entry_matches(entry, pairs_dir, manifest_md5, lock_path.parent):
        return DataVersion(str(entry["md5"]), SOURCE_LOCK, manifest_md5)
    return DataVersion(manifest_md5, SOURCE_MANIFEST, manifest_md5)


def _lock_entry(pairs_dir: Path, lock_path: Path) -> dict | None:
    """The lock's record of `pairs_dir`: the output of the stage that produced it (the data as it is now), else
    the newest-looking dependency record of a stage that read it."""
    if not lock_path.is_file():
        return None
    try:
        lock = yaml.safe_load(lock_path.read_text())
    except (OSError, yaml.YAMLError) as err:
        log.warning("%s: unreadable (%s); using the pairs manifest as data version", lock_path, err)
        return None
    stages = lock.get("stages") if isinstance(lock, dict) else None
    if not isinstance(stages, dict):
        return None
    target = os.path.normpath(os.path.abspath(pairs_dir))
    root = lock_path.parent
    found: dict[str, dict] = {}
    for stage in stages.values():
        for kind in ("outs", "deps"):
            for item in (stage or {}).get(kind) or []:
                if (isinstance(item, dict) and item.get("md5") and
                        os.path.normpath(os.path.abspath(root / str(item.get("path", "")))) == target):
                    found.setdefault(kind, item)
    return found.get("outs") or found.get("deps")


def _entry_matches(entry: dict, pairs_dir: Path, manifest_md5: str, root: Path) -> bool:
    files = [p for p in pairs_dir.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    if ("nfiles" in entry and int(entry["nfiles"]) != len(files)) or ("size" in entry and int(entry["size"]) != size):
        log.warning("%s: differs from its dvc.lock record (files or size); using the manifest as data version",
                    pairs_dir)
        return False
    listing = _cached_listing(root, str(entry["md5"]))
    if listing is not None and listing.get(MANIFEST) != manifest_md5:
        log.warning("%s: manifest differs from its dvc.lock record; using the manifest as data version", pairs_dir)
        return False
    return True


def _cached_listing(root: Path, md5: str) -> dict[str, str] | None:
    """DVC's cached `.dir` object for a folder hash: relpath -> md5, when the local cache has it."""
    if not md5.endswith(".dir"):
        return None
    for cache in (root / ".dvc" / "cache" / "files" / "md5", root / ".dvc" / "cache"):
        path = cache / md5[:2] / md5[2:]
        if path.is_file():
            try:
                return {e["relpath"]: e["md5"] for e in json.loads(path.read_text())}
            except (OSError, ValueError, KeyError, TypeError):
                return None
    return None


def git_commit(cwd: str | Path | None = None) -> str:
    """`git rev-parse HEAD` of the working tree, else env `GIT_COMMIT` (images built without .git), else
    "unknown"."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=30)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return os.environ.get("GIT_COMMIT") or "unknown"


__all__ = ["DataVersion", "data_version", "git_commit"]

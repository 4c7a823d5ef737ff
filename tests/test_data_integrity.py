"""Data integrity (issue 16, item 1): paths from manifests and model folders stay inside their folder, a rewritten
folder never shows an old manifest over new shards, shards carry their plan's fingerprint and validate-data checks
it, temp files of killed writes are cleaned and never merged, and every skipped input is reported."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from conftest import make_maps
from relightful.data.ingest_hdr import IngestConfig, ingest_hdr
from relightful.data.pair_plan import PlanConfig
from relightful.data.render_pairs import RenderConfig, render_pairs
from relightful.data.shards import (MANIFEST, SHARD_FINGERPRINT, read_fingerprint, read_pair_manifest,
                                    shard_file_status)
from relightful.data.validate_data import validate_data
from relightful.io import InputError, atomic_write_bytes
from relightful.io.atomic import TEMP_PREFIX, is_temp_file, remove_temp_files
from relightful.io.paths import contained

FOV, MATTE = (40.0, 70.0), (0.0, 1.0)
SMALL = RenderConfig(size=16, weights_height=8, panorama_height=8,
                     plan=PlanConfig(pairs_per_subject=8, pairs_per_shard=4,
                                     split_fractions={"train": 0.5, "val": 0.25, "test": 0.25}, seed=0))


@pytest.fixture
def pairs_copy(rendered_pairs, tmp_path) -> Path:
    """A private copy of the shared rendered pair set (with its envmaps folder beside it), free to damage."""
    shutil.copytree(rendered_pairs.parent / "envmaps", tmp_path / "envmaps")
    return Path(shutil.copytree(rendered_pairs, tmp_path / "pairs"))


def _set_shard(pairs_dir: Path, pair_id: str, shard: str) -> None:
    manifest = pd.read_parquet(pairs_dir / MANIFEST)
    manifest.loc[manifest.pair_id == pair_id, "shard"] = shard
    manifest.to_parquet(pairs_dir / MANIFEST, index=False)


def _validate(pairs_dir: Path, tmp_path: Path):
    return validate_data(pairs_dir.parent / "envmaps" / MANIFEST, pairs_dir / MANIFEST, tmp_path / "report.json",
                         FOV, MATTE)


def _shard_failure(report):
    return [r for r in report.failures if r.column == "shard_status"]


# --- paths stay inside their folder ---------------------------------------------------------------------------------

def test_contained_refuses_absolute_dotdot_and_symlinks_out(tmp_path):
    folder, outside = tmp_path / "pairs", tmp_path / "secret"
    folder.mkdir()
    outside.write_text("x")
    (folder / "link.safetensors").symlink_to(outside)
    (folder / "loop.safetensors").symlink_to(folder / "loop.safetensors")
    assert contained(folder, "shard-00000.safetensors", "row") == folder / "shard-00000.safetensors"
    for name, reason in [("/etc/passwd", "absolute"), ("../../../../etc/passwd", "'..'"), ("a/../../x", "'..'"),
                         ("link.safetensors", "outside"), ("loop.safetensors", "cannot be resolved"), ("", "empty")]:
        with pytest.raises(InputError, match=reason) as err:
            contained(folder, name, "manifest.parquet: pair p1")
        assert err.value.path == "manifest.parquet: pair p1"


@pytest.mark.parametrize("shard", ["../../../../etc/passwd", "/etc/passwd", "link"])
def test_manifest_shard_outside_the_folder_is_refused_by_every_reader(pairs_copy, tmp_path, shard):
    from relightful.evaluation.pairs import iter_batches, select_pairs
    from relightful.training.data import build_cache

    if shard == "link":  # a name of the right shape, but a symlink out of the folder
        outside = tmp_path / "elsewhere.safetensors"
        shutil.copy(pairs_copy / "shard-00000.safetensors", outside)
        shard = "shard-00099.safetensors"
        (pairs_copy / shard).symlink_to(outside)
    pair_id = read_pair_manifest(pairs_copy).query("split == 'test'").pair_id.iloc[0]
    _set_shard(pairs_copy, pair_id, shard)
    for read in (lambda: read_pair_manifest(pairs_copy),
                 lambda: list(iter_batches(pairs_copy, select_pairs(pairs_copy, "test", 100), 4, False)),
                 lambda: build_cache(pairs_copy, tmp_path / "cache", model=None, progress=False)):
        with pytest.raises(InputError) as err:
            read()
        assert pair_id in err.value.path and shard in err.value.path, err.value
        assert "outside" in err.value.reason or "absolute" in err.value.reason or "'..'" in err.value.reason
    # the evaluation's row reader refuses it even when handed the rows directly (not through read_pair_manifest)
    rows = pd.read_parquet(pairs_copy / MANIFEST).query("pair_id == @pair_id")
    with pytest.raises(InputError, match=pair_id):
        list(iter_batches(pairs_copy, rows, 4, False, skipped={}))
    # and validate-data fails, naming the pair and the shard
    report = _validate(pairs_copy, tmp_path)
    assert not report.success
    named = [r for r in report.failures if pair_id in r.failing_ids]
    assert named and any(shard in v for r in named for v in r.failing_values), report.to_markdown()


def test_shard_names_must_have_the_writers_pattern(pairs_copy, tmp_path):
    pair_id = read_pair_manifest(pairs_copy).pair_id.iloc[0]
    (pairs_copy / "sub").mkdir()
    shutil.copy(pairs_copy / "shard-00000.safetensors", pairs_copy / "sub" / "shard-00000.safetensors")
    _set_shard(pairs_copy, pair_id, "sub/shard-00000.safetensors")  # inside, but not a name the writer makes
    report = _validate(pairs_copy, tmp_path)
    (rule,) = [r for r in report.failures if r.column == "shard" and "shard-NNNNN" in r.description]
    assert rule.failing_ids == (pair_id,)


def test_ingest_manifest_map_ids_cannot_leave_the_maps_folder(tmp_path, small_rig):
    make_maps(tmp_path / "hdri", 4)
    ingest_hdr(tmp_path / "hdri", tmp_path / "envmaps", small_rig, IngestConfig(height=8), progress=False)
    manifest = pd.read_parquet(tmp_path / "envmaps" / MANIFEST)
    manifest.loc[0, "map_id"] = "../../../etc/x"
    manifest.to_parquet(tmp_path / "envmaps" / MANIFEST, index=False)
    (tmp_path / "subjects").mkdir()
    with pytest.raises(InputError, match=r"map '\.\./\.\./\.\./etc/x'.*leaves"):
        render_pairs(tmp_path / "subjects", small_rig, tmp_path / "envmaps", tmp_path / "pairs", SMALL,
                     progress=False)


@pytest.mark.parametrize("vae_path", ["/usr/lib/vae", "../other-model/vae", "escape"])
def test_model_folder_vae_path_outside_is_refused(tmp_path, vae_path):
    from conftest import micro_model_config
    from relightful.models import RelightModel

    folder = tmp_path / "model"
    RelightModel(micro_model_config(16)).save_pretrained(folder)
    if vae_path == "escape":  # a symlink inside the folder that points out of it
        (tmp_path / "outside-vae").mkdir()
        (folder / "escape").symlink_to(tmp_path / "outside-vae")
    config_file = folder / "relightful.json"
    meta = json.loads(config_file.read_text())
    meta["config"]["codec"].update(kind="vae", vae_path=vae_path)
    config_file.write_text(json.dumps(meta))
    with pytest.raises(InputError) as err:
        RelightModel.from_pretrained(folder)
    assert "codec.vae_path" in err.value.path and str(config_file) in err.value.path
    assert vae_path in err.value.reason


# --- fingerprints and stale manifests -------------------------------------------------------------------------------

def test_shards_carry_their_plan_fingerprint_and_a_good_folder_validates(pairs_copy, tmp_path):
    manifest = read_pair_manifest(pairs_copy)
    for shard, rows in manifest.groupby("shard"):
        assert rows[SHARD_FINGERPRINT].nunique() == 1
        assert read_fingerprint(pairs_copy / shard) == rows[SHARD_FINGERPRINT].iloc[0]
    assert manifest[SHARD_FINGERPRINT].nunique() == manifest.shard.nunique()  # each plan is its own
    assert set(shard_file_status(pairs_copy, manifest).values()) == {"ok"}
    report = _validate(pairs_copy, tmp_path)
    assert report.success, report.to_markdown()


def test_old_manifest_over_new_shards_fails_validation_naming_the_shard(workspace, small_rig, tmp_path):
    ingest_hdr(workspace["hdri"], workspace["envmaps"], small_rig, IngestConfig(height=8), progress=False)
    old, new = tmp_path / "old", workspace["pairs"]
    render_pairs(workspace["subjects"], small_rig, workspace["envmaps"], old, SMALL, progress=False)
    reseeded = dataclasses.replace(SMALL, plan=dataclasses.replace(SMALL.plan, seed=5))
    render_pairs(workspace["subjects"], small_rig, workspace["envmaps"], new, reseeded, progress=False)
    shutil.copy(old / MANIFEST, new / MANIFEST)  # what a killed run in an existing folder used to leave
    report = _validate(new, tmp_path)
    assert not report.success
    (check,) = _shard_failure(report)
    assert "fingerprint" in check.description
    assert check.failing_values and all("shard=shard-" in v and "fingerprint mismatch" in v
                                        for v in check.failing_values)
    assert "fingerprint mismatch" in (tmp_path / "report.md").read_text()


def test_rerun_into_a_folder_removes_the_manifest_before_any_shard(workspace, small_rig, monkeypatch):
    from relightful.data import render_pairs as job

    ingest_hdr(workspace["hdri"], workspace["envmaps"], small_rig, IngestConfig(height=8), progress=False)
    out = workspace["pairs"]
    render_pairs(workspace["subjects"], small_rig, workspace["envmaps"], out, SMALL, progress=False)
    assert (out / MANIFEST).is_file()
    seen = []
    real = job.render_shard

    def render_then_die(*args, **kwargs):
        seen.append((out / MANIFEST).exists())
        if len(seen) == 3:
            raise KeyboardInterrupt  # a kill after two new shards
        return real(*args, **kwargs)

    monkeypatch.setattr(job, "render_shard", render_then_die)
    reseeded = dataclasses.replace(SMALL, plan=dataclasses.replace(SMALL.plan, seed=5))
    with pytest.raises(KeyboardInterrupt):
        render_pairs(workspace["subjects"], small_rig, workspace["envmaps"], out, reseeded, progress=False)
    assert seen == [False, False, False]  # gone before the first new shard was rendered
    assert not (out / MANIFEST).exists() and not (out / "report.json").exists()
    with pytest.raises(InputError, match="not found"):
        read_pair_manifest(out)


# --- temp files -----------------------------------------------------------------------------------------------------

def test_atomic_writes_use_recognisable_temp_names_and_clean_up(tmp_path):
    target = tmp_path / "manifest.parquet"
    with pytest.raises(RuntimeError):
        from relightful.io import atomic_path

        with atomic_path(target) as tmp:
            assert tmp.name.startswith(f"{TEMP_PREFIX}manifest.parquet.") and tmp.suffix == ".parquet"
            assert is_temp_file(tmp, ["manifest.parquet"]) and not is_temp_file(tmp, ["report.json"])
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    # what a SIGKILL leaves: only the worker's own targets are removed when it names them
    mine, theirs = tmp_path / ".tmp.shard-00000.safetensors.ab12cd34.safetensors", \
        tmp_path / ".tmp.shard-00001.safetensors.ef56gh78.safetensors"
    for p in (mine, theirs):
        p.write_bytes(b"partial")
    atomic_write_bytes(tmp_path / "shard-00002.safetensors", b"ok")
    assert remove_temp_files(tmp_path, ["shard-00000.safetensors"]) == [mine]
    assert remove_temp_files(tmp_path) == [theirs]
    assert [p.name for p in tmp_path.iterdir()] == ["shard-00002.safetensors"]


def test_jobs_remove_temp_files_left_by_killed_writes(workspace, small_rig):
    envmaps, pairs = workspace["envmaps"], workspace["pairs"]
    (envmaps / "maps").mkdir(parents=True)
    (pairs).mkdir()
    leftovers = [envmaps / ".tmp.manifest.parquet.k1ll3d00.parquet",
                 envmaps / "maps" / ".tmp.map-00.safetensors.k1ll3d01.safetensors",
                 pairs / ".tmp.shard-00000.safetensors.k1ll3d02.safetensors",
                 pairs / ".tmp.manifest.parquet.k1ll3d03.parquet"]
    for p in leftovers:
        p.write_bytes(b"half a file")
    manifest = ingest_hdr(workspace["hdri"], envmaps, small_rig, IngestConfig(height=8), progress=False)
    assert not any(is_temp_file(f) for f in manifest.source_file)
    render_pairs(workspace["subjects"], small_rig, envmaps, pairs, SMALL, progress=False)
    assert not any(p.exists() for p in leftovers)
    assert not [p for p in (*envmaps.rglob("*"), *pairs.rglob("*")) if p.name.startswith(".")]
    assert all(s.startswith("shard-") for s in read_pair_manifest(pairs).shard)


# --- skipped inputs are reported ------------------------------------------------------------------------------------

def test_ingest_reports_every_input_it_does_not_ingest(workspace, small_rig, caplog):
    hdri = workspace["hdri"]
    shutil.copy(hdri / "map-00.exr", hdri / "photo.png")              # an EXR named .png
    (hdri / "loop.exr").symlink_to(hdri / "loop.exr")                 # a symlink loop
    (hdri / "gone.hdr").symlink_to(hdri / "nowhere.hdr")              # a dangling link
    shutil.copy(hdri / "map-01.exr", hdri / "radiance.hdr")           # an EXR named .hdr
    (hdri / "README.txt").write_text("notes")                        # not a map at all
    (hdri / "more").mkdir()                                           # a folder
    unreadable = hdri / "locked.exr"
    shutil.copy(hdri / "map-02.exr", unreadable)
    unreadable.chmod(0)
    can_lock = not os.access(unreadable, os.R_OK)  # root reads anything
    with caplog.at_level(logging.WARNING):
        manifest = ingest_hdr(hdri, workspace["envmaps"], small_rig, IngestConfig(height=8), progress=False)
    unreadable.chmod(0o644)
    reasons = manifest.set_index("map_id").reason
    assert (manifest.status == "ok").sum() == 12 + (0 if can_lock else 1)
    assert "content is OpenEXR but the suffix is .png" in reasons["photo"] and "photo.exr" in reasons["photo"]
    assert "symlink loop" in reasons["loop"]
    assert "dangling symlink" in reasons["gone"]
    assert "content is OpenEXR but the suffix is .hdr" in reasons["radiance"]
    if can_lock:
        assert "unreadable" in reasons["locked"]
    report = json.loads((workspace["envmaps"] / "report.json").read_text())
    assert {Path(r["file"]).name for r in report["rejected"]} >= {"photo.png", "loop.exr", "gone.hdr", "radiance.hdr"}
    assert {Path(s["file"]).name: s["reason"].split(" (")[0] for s in report["skipped"]} == {
        "README.txt": "not an HDR map", "more": "a folder"}
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for name in ("photo.png", "loop.exr", "gone.hdr", "radiance.hdr", "README.txt", "more"):
        assert name in logged


def test_cli_ingest_prints_skipped_and_rejected_inputs_on_stderr(workspace):
    """In a real process (the CLI's own logging setup): each input left out is named on stderr."""
    import subprocess
    import sys

    hdri = workspace["hdri"]
    shutil.copy(hdri / "map-00.exr", hdri / "photo.png")
    (hdri / "loop.exr").symlink_to(hdri / "loop.exr")
    (hdri / "notes.txt").write_text("x")
    args = ["ingest-hdr", "--input", str(hdri), "--output", str(workspace["envmaps"]), "--rig", str(workspace["rig"]),
            "--set", "height=8", "--quiet", "--max-rejected", "2"]
    done = subprocess.run([sys.executable, "-m", "relightful", *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for needle in ("photo.png: the content is OpenEXR", "loop.exr: symlink loop", "notes.txt: not an HDR map"):
        assert needle in done.stderr, done.stderr

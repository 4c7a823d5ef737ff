"""Faults survived (issue 16, item 3): `relightful ingest-hdr`, `render-pairs` and `augment`, run as real processes,
are killed with SIGKILL midway (once some of their outputs exist), then run again; the folder they leave is
byte-identical, file for file, to the one an uninterrupted run writes elsewhere. A killed run never leaves a
manifest over a mix of old and new files.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from conftest import make_maps, make_subjects, micro_model_config
from relightful.data.ingest_hdr import IngestConfig, ingest_hdr
from relightful.data.shards import MANIFEST, read_pair_manifest
from relightful.io import InputError

TIMEOUT = 180


def relightful(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "relightful", *args, "--quiet"], capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    return done


def kill_midway(args: list[str], ready: Callable[[], bool]) -> None:
    """Start `relightful *args`, SIGKILL it as soon as `ready()` holds; fail if it finished first (then the test's
    data is too small to catch it midway)."""
    proc = subprocess.Popen([sys.executable, "-m", "relightful", *args, "--quiet"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + TIMEOUT
    while proc.poll() is None and not ready():
        assert time.monotonic() < deadline, "the job never got midway"
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, \
        f"the job ended (status {proc.returncode}) before the kill: {proc.stderr.read().decode()[-2000:]}"


def files(folder: Path) -> dict[str, bytes]:
    """Every file below `folder` (hidden ones too) by relative path."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def count(folder: Path, pattern: str, since_ns: int = 0) -> int:
    """Files matching `pattern` in `folder` (written after `since_ns`, a `time.time_ns()`, when given)."""
    if not folder.is_dir():
        return 0
    n = 0
    for path in folder.glob(pattern):
        try:
            n += path.stat().st_mtime_ns > since_ns
        except FileNotFoundError:  # removed while we looked
            pass
    return n


def test_ingest_hdr_killed_then_rerun_is_identical(tmp_path, small_rig):
    make_maps(tmp_path / "hdri", 40, height=128)  # about 30 ms each to ingest: a wide window to kill in
    (tmp_path / "hdri" / "notes.txt").write_text("not a map")  # a skipped input: reported the same both times
    small_rig.to_json(tmp_path / "rig.json")
    args = lambda out: ["ingest-hdr", "--input", str(tmp_path / "hdri"), "--output", str(out),  # noqa: E731
                        "--rig", str(tmp_path / "rig.json"), "--set", "height=8"]
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    relightful(*args(clean))
    kill_midway(args(killed), lambda: count(killed / "maps", "map-*.safetensors") >= 2)
    assert not (killed / MANIFEST).exists() and count(killed / "maps", "*.safetensors") < 40
    relightful(*args(killed))
    assert files(killed) == files(clean)
    assert json.loads((clean / "report.json").read_text())["skipped"][0]["file"].endswith("notes.txt")


@pytest.fixture
def render_inputs(tmp_path, small_rig) -> dict[str, Path]:
    make_maps(tmp_path / "hdri", 12)
    make_subjects(tmp_path / "subjects", small_rig, 4, size=16)
    small_rig.to_json(tmp_path / "rig.json")
    ingest_hdr(tmp_path / "hdri", tmp_path / "envmaps", small_rig, IngestConfig(height=16), progress=False)
    return {"subjects": tmp_path / "subjects", "envmaps": tmp_path / "envmaps", "rig": tmp_path / "rig.json"}


def test_render_pairs_killed_in_an_old_folder_then_rerun_is_identical(tmp_path, render_inputs, small_rig):
    from relightful.data.pair_plan import PlanConfig
    from relightful.data.render_pairs import RenderConfig, render_pairs

    def args(out: Path, seed: int) -> list[str]:
        return ["render-pairs", "--subjects", str(render_inputs["subjects"]), "--envmaps",
                str(render_inputs["envmaps"]), "--rig", str(render_inputs["rig"]), "--out", str(out),
                "--set", "size=16", "--set", "weights_height=8", "--set", "panorama_height=8",
                "--set", "plan.pairs_per_subject=32", "--set", "plan.pairs_per_shard=2", "--set", f"plan.seed={seed}",
                "--set", "plan.split_fractions={train: 0.5, val: 0.25, test: 0.25}"]

    clean, reused = tmp_path / "clean", tmp_path / "reused"
    relightful(*args(clean, seed=1))
    # an earlier render with another seed, complete (in-process: one process start less)
    render_pairs(render_inputs["subjects"], small_rig, render_inputs["envmaps"], reused,
                 RenderConfig(size=16, weights_height=8, panorama_height=8,
                              plan=PlanConfig(pairs_per_subject=16, pairs_per_shard=2, seed=0,
                                              split_fractions={"train": 0.5, "val": 0.25, "test": 0.25})),
                 progress=False)
    assert read_pair_manifest(reused).shard.nunique() == 32
    start = time.time_ns()
    # 64 shards of a few ms each: killed after the second, a wide window
    kill_midway(args(reused, seed=1), lambda: count(reused, "shard-*.safetensors", since_ns=start) >= 2)
    # no manifest over the new shards: the folder says "incomplete", and nothing reads it as a data set
    assert not (reused / MANIFEST).exists()
    with pytest.raises(InputError, match="not found"):
        read_pair_manifest(reused)
    relightful(*args(reused, seed=1))
    assert files(reused) == files(clean)


@pytest.fixture
def augment_inputs(tmp_path) -> dict[str, Path]:
    from test_augment import _photo, _portrait
    from relightful.io import write_ldr
    from relightful.models import RelightModel

    for i, name in enumerate(("anna", "ben")):
        _portrait(tmp_path / "portraits", name, 32, 32, i)
    for i in range(3):
        write_ldr(tmp_path / "backgrounds" / f"bg{i}.png", _photo(40, 48, 10 + i))
    torch.manual_seed(0)
    RelightModel(micro_model_config(32)).save_pretrained(tmp_path / "stage2")
    return {"portraits": tmp_path / "portraits", "backgrounds": tmp_path / "backgrounds", "model": tmp_path / "stage2"}


def test_augment_killed_then_rerun_is_identical(tmp_path, augment_inputs):
    def args(out: Path) -> list[str]:
        return ["augment", "--portraits", str(augment_inputs["portraits"]), "--backgrounds",
                str(augment_inputs["backgrounds"]), "--model", str(augment_inputs["model"]), "--out", str(out),
                "--set", "size=32", "--set", "pairs_per_portrait=2", "--set", "pairs_per_shard=1",
                "--set", "batch=1", "--set", "steps=2", "--set", "seed=3", "--set", "device=cpu",
                "--set", "split_fractions={train: 0.5, test: 0.5}"]

    from relightful.augment import AugmentConfig
    from relightful.augment.augment_pairs import augment_pairs

    clean, killed = tmp_path / "clean", tmp_path / "killed"
    # the uninterrupted run in-process (the CLI's config is the defaults plus the same --set values): one start less
    augment_pairs(augment_inputs["portraits"], augment_inputs["backgrounds"], str(augment_inputs["model"]), clean,
                  AugmentConfig(size=32, pairs_per_portrait=2, pairs_per_shard=1, batch=1, steps=2, seed=3,
                                device="cpu", split_fractions={"train": 0.5, "test": 0.5}), progress=False)
    kill_midway(args(killed), lambda: count(killed, "shard-*.safetensors") >= 1)  # of 4, ~0.5 s each
    assert not (killed / MANIFEST).exists() and count(killed, "shard-*.safetensors") < 4
    leftover = killed / ".tmp.shard-00003.safetensors.k1ll3d00.safetensors"  # as a kill mid-write leaves
    leftover.write_bytes(b"half a shard")
    relightful(*args(killed))
    assert not leftover.exists()
    report = {k: json.loads((f / "report.json").read_text()) for k, f in (("clean", clean), ("killed", killed))}
    assert report["killed"]["kept_shards"] and report["killed"]["rendered_shards"]  # it did resume
    for r in report.values():  # which shards this run rendered or kept is the run's own story, like a timing
        del r["kept_shards"], r["rendered_shards"]
    assert report["killed"] == report["clean"]
    assert {k: v for k, v in files(killed).items() if k != "report.json"} == \
        {k: v for k, v in files(clean).items() if k != "report.json"}

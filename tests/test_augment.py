"""Stage-3 data: natural portraits relit by a (tiny, untrained) stage-2 model into pair shards; the starter set."""

from __future__ import annotations

import argparse
import skimage.data
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import make_maps, micro_model_config
from relightful.augment import AugmentConfig
from relightful.augment.augment_pairs import augment_pairs
from relightful.augment.natural_pair_plan import plan_natural_pairs, portrait_splits
from relightful.cli.augment import add_augment_parsers
from relightful.io import (InputError, load_tensors, read_ldr, read_matte, read_metadata, srgb_decode, write_ldr,
                           write_matte)

SIZE = 32
CONFIG = AugmentConfig(size=SIZE, pairs_per_portrait=3, pairs_per_shard=2, batch=2, steps=2,
                       split_fractions={"train": 0.5, "test": 0.5}, seed=7)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("model") / "stage2"
    from relightful.models import RelightModel

    RelightModel(micro_model_config(SIZE)).save_pretrained(folder)
    return folder


def _photo(height: int, width: int, seed: int) -> np.ndarray:
    """A smooth colourful 'photo' with some texture, display values in [0, 1]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width] / max(height, width)
    base = np.stack([0.3 + 0.5 * xx, 0.2 + 0.6 * yy, 0.6 - 0.3 * xx * yy], axis=-1)
    return np.clip(base + 0.05 * rng.standard_normal((height, width, 3)), 0, 1).astype(np.float32)


def _disc(height: int, width: int, radius: float = 0.3) -> np.ndarray:
    yy, xx = np.mgrid[:height, :width]
    r = np.hypot((yy + 0.5) / height - 0.55, (xx + 0.5) / width - 0.5)
    return np.clip((radius - r) / 0.05, 0, 1).astype(np.float32)


def _portrait(root: Path, pid: str, height: int, width: int, seed: int, matte_shape=None, suffix=".png") -> None:
    write_ldr(root / pid / f"image{suffix}", _photo(height, width, seed))
    if matte_shape is not False:
        write_matte(root / pid / "matte.png", _disc(*(matte_shape or (height, width))))


@pytest.fixture
def natural(tmp_path: Path) -> dict[str, Path]:
    """Three good portraits (two at the pair size, one taller: centre-cropped without resampling) and three
    background photos of other sizes."""
    portraits, backgrounds = tmp_path / "portraits", tmp_path / "backgrounds"
    _portrait(portraits, "anna", SIZE, SIZE, 1)
    _portrait(portraits, "ben", SIZE, SIZE, 2)
    _portrait(portraits, "cleo", SIZE + 16, SIZE, 3)
    for i, (h, w) in enumerate([(40, 60), (50, 50), (24, 36)]):
        write_ldr(backgrounds / f"bg{i}{'.jpg' if i == 2 else '.png'}", _photo(h, w, 10 + i)[..., ::-1])
    return {"portraits": portraits, "backgrounds": backgrounds, "out": tmp_path / "natural_pairs", "root": tmp_path}


def _expected(portraits: Path, pid: str) -> tuple[np.ndarray, np.ndarray]:
    """The photo (linear, 3×S×S) and matte (S×S) a pair should hold: centre crop, no resampling in these tests."""
    image_path = next((portraits / pid).glob("image.*"))
    photo, matte = srgb_decode(read_ldr(image_path)), read_matte(portraits / pid / "matte.png")
    top = (photo.shape[0] - SIZE) // 2
    return photo[top:top + SIZE].transpose(2, 0, 1), matte[top:top + SIZE]


def test_augment_writes_shards_of_photos_and_relit_subjects(natural, model_dir):
    result = augment_pairs(natural["portraits"], natural["backgrounds"], model_dir, natural["out"], CONFIG,
                           progress=False)
    m = result.manifest
    assert len(m) == 3 * 3 and m.pair_id.is_unique and not result.failed_portraits
    assert set(m.subject_id) == {"anna", "ben", "cleo"}
    # splits are disjoint by portrait, shards never mix splits, both wanted splits are used
    assert m.groupby("subject_id").split.nunique().max() == 1
    assert m.groupby("shard").split.nunique().max() == 1
    assert set(m.split) == {"train", "test"}
    assert set(m.background_id) <= {"bg0", "bg1", "bg2"} and m.env_a.isna().all()
    assert (m.groupby("subject_id").background_id.nunique() == 3).all()  # no repeats while backgrounds suffice
    on_disk = pd.read_parquet(natural["out"] / "manifest.parquet")
    assert list(on_disk.pair_id) == list(m.pair_id) and on_disk.seed.dtype == np.int64
    assert (m.steps == 2).all() and (m.image_guidance == 1.5).all() and (m.matte_source == "file").all()

    for shard_name, rows in m.groupby("shard"):
        shard = load_tensors(natural["out"] / shard_name)
        ids = read_metadata(natural["out"] / shard_name)["pair_ids"].split(",")
        assert ids == list(rows.sort_values("index").pair_id)
        assert shard["x_a"].shape == (len(rows), 3, SIZE, SIZE) and shard["matte"].shape == (len(rows), 1, SIZE, SIZE)
        assert all(t.dtype == torch.float16 for t in shard.values())
        for r in rows.itertuples():
            photo, matte = _expected(natural["portraits"], r.subject_id)
            x_a, x_b, y_b, mt = (shard[k][r.index].float().numpy() for k in ("x_a", "x_b", "y_b", "matte"))
            np.testing.assert_allclose(x_b, photo, atol=1e-3, rtol=1e-3)   # the target is the real photo
            np.testing.assert_array_equal(y_b, x_b)                        # over its own background
            np.testing.assert_allclose(mt[0], matte, atol=1e-3)            # with the portrait's own matte
            outside = np.broadcast_to(mt == 0, x_a.shape)
            np.testing.assert_array_equal(x_a[outside], x_b[outside])      # input = relit subject over the photo
            assert np.abs(x_a - x_b)[~outside].mean() > 1e-3               # the model did change the subject
            assert r.fg_change > 0 and r.matte_coverage == pytest.approx((mt > 0.5).mean())


def test_rerun_keeps_finished_shards_and_is_deterministic(natural, model_dir):
    first = augment_pairs(natural["portraits"], natural["backgrounds"], model_dir, natural["out"], CONFIG,
                          progress=False)
    shards = sorted(natural["out"].glob("shard-*.safetensors"))
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes()) for p in shards}
    again = augment_pairs(natural["portraits"], natural["backgrounds"], model_dir, natural["out"], CONFIG,
                          progress=False)
    assert again.rendered_shards == [] and sorted(again.kept_shards) == sorted(before)
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes()) for p in shards} == before
    assert again.manifest.equals(first.manifest)
    # a killed run: the missing shard alone is rendered again, to the same bytes
    shards[1].unlink()
    resumed = augment_pairs(natural["portraits"], natural["backgrounds"], model_dir, natural["out"], CONFIG,
                            progress=False)
    assert resumed.rendered_shards == [shards[1].name] and shards[1].read_bytes() == before[shards[1].name][2]
    # same seed elsewhere: same bytes; another seed: other pixels; other settings re-render every shard
    other = natural["root"] / "other"
    augment_pairs(natural["portraits"], natural["backgrounds"], model_dir, other, CONFIG, progress=False)
    assert all((other / n).read_bytes() == b for n, (_, _, b) in before.items())
    reseeded = augment_pairs(natural["portraits"], natural["backgrounds"], model_dir, natural["root"] / "reseeded",
                             CONFIG, progress=False, seed=8)
    name = reseeded.manifest.shard.iloc[0]
    assert not torch.equal(load_tensors(natural["root"] / "reseeded" / name)["x_a"], load_tensors(other / name)["x_a"])
    changed = augment_pairs(natural["portraits"], natural["backgrounds"], model_dir, natural["out"], CONFIG,
                            progress=False, steps=3)
    assert sorted(changed.rendered_shards) == sorted(before)


def test_bad_portraits_are_skipped_and_reported(natural, model_dir):
    portraits = natural["portraits"]
    _portrait(portraits, "no-matte", SIZE, SIZE, 4, matte_shape=False)
    _portrait(portraits, "wrong-size", SIZE, SIZE, 5, matte_shape=(SIZE, SIZE + 2))
    (portraits / "broken").mkdir()
    (portraits / "broken" / "image.jpg").write_bytes(b"not a jpeg")
    write_matte(portraits / "broken" / "matte.png", _disc(SIZE, SIZE))
    (natural["backgrounds"] / "truncated.png").write_bytes(b"\x89PNG\r\n")
    result = augment_pairs(portraits, natural["backgrounds"], model_dir, natural["out"], CONFIG, progress=False)
    assert set(result.manifest.subject_id) == {"anna", "ben", "cleo"}
    failed = result.failed_portraits
    assert set(failed) == {"no-matte", "wrong-size", "broken"}
    assert str(portraits / "no-matte" / "matte.png") in failed["no-matte"] and "not found" in failed["no-matte"]
    assert "must have the same size" in failed["wrong-size"] and "matte.png" in failed["wrong-size"]
    assert "image.jpg" in failed["broken"] and "decode" in failed["broken"]
    assert "truncated.png" in result.failed_backgrounds
    report = json.loads((natural["out"] / "report.json").read_text())
    assert {f["portrait_id"] for f in report["failed_portraits"]} == set(failed)


def test_missing_mattes_are_computed_by_the_segmenter_or_the_portrait_is_skipped_clearly(natural, model_dir,
                                                                                         monkeypatch):
    portraits = natural["portraits"]
    person = portraits / "no-matte"
    person.mkdir(exist_ok=True)
    write_ldr(person / "image.png", skimage.data.astronaut()[::8, ::8].astype(np.float32) / 255.0)
    result = augment_pairs(portraits, natural["backgrounds"], model_dir, natural["out"], CONFIG, progress=False,
                           auto_matte="segmenter")
    assert "no-matte" in set(result.manifest.subject_id)
    monkeypatch.setenv("RELIGHTFUL_WEIGHTS", str(natural["out"] / "no-weights"))
    result = augment_pairs(portraits, natural["backgrounds"], model_dir, natural["out"] / "again", CONFIG,
                           progress=False, auto_matte="segmenter")
    assert "relightful fetch-weights" in result.failed_portraits["no-matte"]
    assert "no-matte" not in set(result.manifest.subject_id)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relightful")
    add_augment_parsers(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_reads_params_and_fails_clearly_without_the_model(natural, model_dir, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("profile: tiny\ntiny:\n  augment: {size: 32, pairs_per_portrait: 2, pairs_per_shard: 4, "
                      "batch: 4, steps: 1, split_fractions: {train: 1.0}}\n")
    common = ["--portraits", str(natural["portraits"]), "--backgrounds", str(natural["backgrounds"]),
              "--out", str(natural["out"]), "--params", str(params), "--quiet"]
    args = _parser().parse_args(["augment", "--model", str(tmp_path / "missing-model"), *common])
    with pytest.raises(InputError, match="missing-model.*model folder not found"):
        args.func(args)
    assert not natural["out"].exists()  # nothing written before the model was found
    args = _parser().parse_args(["augment", "--model", str(model_dir), *common, "--set", "pairs_per_portrait=1"])
    args.func(args)
    manifest = pd.read_parquet(natural["out"] / "manifest.parquet")
    assert len(manifest) == 3 and set(manifest.split) == {"train"}


def test_plan_splits_small_sets_and_never_reuses_the_portraits_own_background():
    assert set(portrait_splits(["only"], {"train": 0.8, "val": 0.1, "test": 0.1}, 0).values()) == {"train"}
    splits = portrait_splits([f"p{i}" for i in range(20)], {"train": 0.8, "val": 0.1, "test": 0.1}, 0)
    assert sorted(splits.values()).count("val") == 2 and sorted(splits.values()).count("test") == 2
    plan = plan_natural_pairs(["a", "b"], ["a", "b", "c"], 5, 4, {"train": 1.0}, 0)
    assert not (plan.subject_id == plan.background_id).any() and plan.groupby("shard").size().max() <= 4
    assert plan.equals(plan_natural_pairs(["a", "b"], ["a", "b", "c"], 5, 4, {"train": 1.0}, 0))


def test_natural_starter_writes_the_astronaut_with_a_plausible_matte(tmp_path):
    skdata = pytest.importorskip("skimage.data")
    from relightful.augment.natural_starter import build_natural_starter

    make_maps(tmp_path / "hdri", 1, height=32)
    out = tmp_path / "natural"
    sources = build_natural_starter(out, hdri_dir=tmp_path / "hdri", progress=False)
    image = read_ldr(out / "portraits" / "astronaut" / "image.png")
    np.testing.assert_array_equal(np.rint(image * 255).astype(np.uint8), skdata.astronaut())
    matte = read_matte(out / "portraits" / "astronaut" / "matte.png")
    assert matte.shape == (512, 512) and 0.1 < (matte > 0.5).mean() < 0.9
    assert matte[256, 256] > 0.5 and matte[5, 5] < 0.5 and matte[100, 220] > 0.5  # neck ring, corner, face
    names = {p.name for p in (out / "backgrounds").iterdir()}
    assert {"coffee.png", "rocket.png", "chelsea.png", "hdri-map-00-0.png"} <= names
    listed = json.loads((out / "SOURCES.json").read_text())
    assert listed == sources and {f["file"] for f in listed["files"]} >= {f"backgrounds/{n}" for n in names}
    assert all(f.get("license") and len(f["sha256"]) == 64 for f in listed["files"])
    view = read_ldr(out / "backgrounds" / "hdri-map-00-0.png")
    assert view.shape == (384, 512, 3) and 0.05 < view.mean() < 0.95  # exposed, neither black nor blown out


def test_natural_starter_views_only_the_listed_map_sources(tmp_path):
    """`hdri_sources` keeps the training-only skies out of the natural backgrounds; null views every map."""
    from relightful.augment.config import NaturalStarterConfig
    from relightful.augment.natural_starter import hdri_views

    paths = make_maps(tmp_path, 2, height=16)
    paths[1].rename(tmp_path / "sky_train-000.exr")
    config = NaturalStarterConfig(hdri_crop_size=(8, 8))
    assert [name for name, _, _ in hdri_views(tmp_path, config)] == ["hdri-map-00-0", "hdri-sky_train-000-0"]
    only = NaturalStarterConfig(hdri_crop_size=(8, 8), hdri_sources=("map", "sky"))
    assert [name for name, _, _ in hdri_views(tmp_path, only)] == ["hdri-map-00-0"]


def test_training_cache_accepts_augment_output(natural, model_dir, tmp_path):
    from relightful.models import RelightModel
    from relightful.data.shards import read_pair_manifest
    from relightful.training.data import PairStream, build_cache

    augment_pairs(natural["portraits"], natural["backgrounds"], model_dir, natural["out"], CONFIG, progress=False)
    model = RelightModel.from_pretrained(model_dir)
    files = build_cache(natural["out"], tmp_path / "cache", model, progress=False)
    manifest = read_pair_manifest(natural["out"])
    assert set(files) == set(manifest.shard)
    cache = load_tensors(next(iter(files.values())))
    latent = SIZE // model.codec.factor
    assert cache["composite"].shape[1:] == (model.codec.channels, latent, latent) and "panorama" not in cache
    split = manifest.split.iloc[0]
    batch = PairStream(manifest, files, split, micro_batch=2).batch(0)
    assert batch["target"].shape == (2, model.codec.channels, latent, latent)


def test_relighting_is_what_harmonize_makes_of_that_background(model_dir):
    """At the model's size, a batch of one relit by `Relighter` composites to the Harmonizer's output, byte for byte
    up to rounding: the pairs' inputs are what the inference pipeline makes."""
    from relightful.augment.augment_pairs import load_relighter, resolve_sampling
    from relightful.models.relight_model import read_model_meta
    from relightful.io import srgb_encode, to_uint8

    rng = np.random.default_rng(0)
    fg8 = to_uint8(_photo(SIZE, SIZE, 1))
    bg8 = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    matte = _disc(SIZE, SIZE)
    relighter = load_relighter(model_dir, resolve_sampling(CONFIG, read_model_meta(model_dir)))
    as_linear = lambda a: srgb_decode(torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255.0)
    m = torch.from_numpy(matte)[None, None]
    relit = relighter(as_linear(fg8), m, as_linear(bg8), seed=5)
    ours = to_uint8(srgb_encode((m * relit + (1 - m) * as_linear(bg8))[0].permute(1, 2, 0)))
    cfg = relighter.config
    theirs = relighter.h(fg8, matte, bg8, steps=cfg.steps, seed=5, image_guidance=cfg.image_guidance,
                         lighting_guidance=cfg.lighting_guidance)
    assert (cfg.steps, cfg.image_guidance, cfg.lighting_guidance) == (2, 1.5, 3.0)
    assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 1


def test_unset_sampling_settings_come_from_the_model_folder():
    from relightful.augment.augment_pairs import resolve_sampling

    saved = {"sampling": {"steps": 12, "image_guidance": 1.2}}
    cfg = resolve_sampling(AugmentConfig(lighting_guidance=2.0), saved)
    assert (cfg.steps, cfg.image_guidance, cfg.lighting_guidance) == (12, 1.2, 2.0)
    cfg = resolve_sampling(AugmentConfig(steps=4), {})
    assert (cfg.steps, cfg.image_guidance, cfg.lighting_guidance) == (4, 1.5, 3.0)


def test_pairs_larger_than_the_model_keep_the_photos_detail(natural, model_dir):
    """Pairs above the model's size: the relighting reaches the photo as a smooth gain (the pipeline's gain field),
    so the relit subject is the photo times a field that varies at the model's scale, not a blurred upsampling."""
    from relightful.augment.portraits import scan_portraits, load_portrait

    big = 2 * SIZE
    result = augment_pairs(natural["portraits"], natural["backgrounds"], model_dir, natural["out"], CONFIG,
                           progress=False, size=big, pairs_per_portrait=1)
    row = result.manifest.iloc[0]
    shard = load_tensors(natural["out"] / row.shard)
    x_a, x_b = shard["x_a"][row["index"]].float(), shard["x_b"][row["index"]].float()
    assert x_a.shape == (3, big, big)
    portrait = next(p for p in scan_portraits(natural["portraits"])[0] if p.portrait_id == row.subject_id)
    photo, matte = load_portrait(portrait, big)
    torch.testing.assert_close(x_b, photo, atol=1e-3, rtol=1e-3)
    inside = (matte[0] > 0.99) & (photo.min(dim=0).values > 0.05)
    gain = (x_a / x_b.clamp_min(1e-3))[:, inside]
    neighbours = (x_a[:, :, 1:] / x_b[:, :, 1:].clamp_min(1e-3) - x_a[:, :, :-1] / x_b[:, :, :-1].clamp_min(1e-3))
    both = inside[:, 1:] & inside[:, :-1]
    assert gain.std() > 0 and neighbours[:, both].abs().median() < 0.25 * gain.std()


def test_inputs_left_out_are_reported_with_the_reason(natural, model_dir, caplog):
    """Nothing in the input folders is passed over in silence: a symlink loop, a stray file where portrait
    folders belong, a background of another type, a hidden entry, an EXR named .png."""
    import logging
    import shutil

    portraits, backgrounds = natural["portraits"], natural["backgrounds"]
    (portraits / "loop").symlink_to(portraits / "loop")
    (portraits / "notes.txt").write_text("x")
    (portraits / ".cache").mkdir()
    (backgrounds / "sky.gif").write_bytes(b"GIF89a")
    (backgrounds / "gone.png").symlink_to(backgrounds / "nowhere.png")
    make_maps(natural["root"] / "hdri", 1)
    shutil.copy(natural["root"] / "hdri" / "map-00.exr", backgrounds / "hdr.png")  # an EXR named .png
    with caplog.at_level(logging.WARNING):
        result = augment_pairs(portraits, backgrounds, model_dir, natural["out"], CONFIG, progress=False)
    skipped = {Path(k).name: v for k, v in result.skipped_inputs.items()}
    assert set(skipped) == {"loop", "notes.txt", ".cache", "sky.gif"}
    assert skipped["loop"] == "symlink loop" and skipped[".cache"] == "hidden entry"
    assert "a portrait is a folder" in skipped["notes.txt"] and ".png" in skipped["sky.gif"]
    assert "gone.png" in result.failed_backgrounds and "hdr.png" in result.failed_backgrounds
    assert "8- or 16-bit" in result.failed_backgrounds["hdr.png"]
    report = json.loads((natural["out"] / "report.json").read_text())
    assert {Path(s["file"]).name for s in report["skipped_inputs"]} == set(skipped)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert all(name in logged for name in (*skipped, "gone.png", "hdr.png"))

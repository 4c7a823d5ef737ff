"""Training: each stage learns what it should, DeepSpeed ranks agree, a killed run resumes to the same weights."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from relightful.io import InputError, load_tensors, save_tensors
from relightful.lighting.envmap import latlong_directions, latlong_solid_angles
from relightful.models.codecs import PixelUnshuffleCodec
from relightful.models import RelightModel
from relightful.training import TrainConfig
from relightful.training.config import DeepSpeedConfig, OptimConfig, RuntimeConfig, SamplingConfig
from relightful.data.shards import ENVMAPS, read_pair_manifest
from relightful.training.augment import mirror_mask, mirror_samples
from relightful.training.light_probe import mean_light_direction
from relightful.training.data import PairStream, ReplayStream, build_cache
from relightful.training.loop import train_stage

from conftest import micro_model_config

FAST = TrainConfig(steps=40, log_every=5, checkpoint_every=100, optim=OptimConfig(lr=2e-3, warmup_steps=5),
                   deepspeed=DeepSpeedConfig(micro_batch=8))


@pytest.fixture(scope="module")
def stage1(rendered_pairs, tmp_path_factory):
    root = tmp_path_factory.mktemp("stage1")
    result = train_stage(1, rendered_pairs, root / "model", root / "run", FAST, micro_model_config(),
                         cache_dir=root / "cache", progress=False)
    return result, root


def _mean(history, key, rows):
    return sum(r[key] for r in rows) / len(rows)


def test_stage1_lowers_the_training_loss(stage1):
    result, root = stage1
    h = result.history
    first, last = _mean(h, "loss", h[:2]), _mean(h, "loss", h[-2:])
    assert last < 0.85 * first, (first, last)
    assert (root / "model" / "relightful.json").is_file()
    model = RelightModel.from_pretrained(root / "model")
    # F_bg learned something: its output projections left zero
    assert any(float(m.weight.detach().abs().max()) > 0 for m in model.lighting.out)


def test_stage2_lowers_the_alignment_loss(stage1, rendered_pairs, tmp_path):
    _, root = stage1
    config = TrainConfig(steps=30, log_every=5, checkpoint_every=100, align_weight=10.0,
                         optim=OptimConfig(lr=2e-3, warmup_steps=3), deepspeed=DeepSpeedConfig(micro_batch=8))
    result = train_stage(2, rendered_pairs, tmp_path / "model", tmp_path / "run", config, init_from=root / "model",
                         cache_dir=root / "cache", progress=False)
    h = result.history
    assert "align_loss" in h[0]
    assert _mean(h, "align_loss", h[-2:]) < 0.5 * _mean(h, "align_loss", h[:2]), [r["align_loss"] for r in h]


def test_stage3_leaves_f_bg_bit_identical(stage1, rendered_pairs, tmp_path):
    _, root = stage1
    before = RelightModel.from_pretrained(root / "model")
    config = TrainConfig(steps=4, log_every=2, checkpoint_every=100, optim=OptimConfig(lr=5e-3, warmup_steps=1),
                         deepspeed=DeepSpeedConfig(micro_batch=4), validate_every=2, validation_pairs=3,
                         sampling=SamplingConfig(steps=2))
    train_stage(3, rendered_pairs, tmp_path / "model", tmp_path / "run", config, init_from=root / "model",
                cache_dir=root / "cache", progress=False, samples_dir=tmp_path / "samples")
    # validation grids: composite | model | target for 3 validation pairs, every 2 steps
    from relightful.io import read_ldr

    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["step-00000002.png", "step-00000004.png"]
    grid = read_ldr(tmp_path / "samples" / "step-00000004.png")
    assert grid.shape == (3 * 32, 3 * 32, 3)
    # the folder names its sampler: DDIM on the trained betas, as validation sampled it
    sampler = json.loads((tmp_path / "model" / "scheduler" / "scheduler_config.json").read_text())
    assert (sampler["_class_name"], sampler["timestep_spacing"]) == ("DDIMScheduler", "trailing")
    assert sampler["prediction_type"] == "epsilon" and sampler["beta_end"] == 0.012
    after = RelightModel.from_pretrained(tmp_path / "model")
    for (name, a), (_, b) in zip(before.lighting.state_dict().items(), after.lighting.state_dict().items()):
        assert torch.equal(a, b), name
    assert not all(torch.equal(a, b) for a, b in zip(before.unet.state_dict().values(), after.unet.state_dict().values()))


def test_killed_run_resumes_to_the_same_weights(rendered_pairs, tmp_path):
    config = TrainConfig(steps=6, log_every=1, checkpoint_every=2, optim=OptimConfig(lr=2e-3, warmup_steps=2),
                         deepspeed=DeepSpeedConfig(micro_batch=4, grad_accum=2))
    kw = dict(model_config=micro_model_config(), cache_dir=tmp_path / "cache", progress=False)
    whole = train_stage(1, rendered_pairs, tmp_path / "whole", tmp_path / "run-whole", config, **kw)
    stopped = train_stage(1, rendered_pairs, tmp_path / "resumed", tmp_path / "run-resumed", config, stop_after=3, **kw)
    assert stopped.model_dir is None and not (tmp_path / "resumed").exists()
    resumed = train_stage(1, rendered_pairs, tmp_path / "resumed", tmp_path / "run-resumed", config, **kw)
    # resuming a finished run (as `dvc repro` does after removing the outputs) rewrites the outputs, grid included
    again = train_stage(1, rendered_pairs, tmp_path / "again", tmp_path / "run-resumed", config,
                        samples_dir=tmp_path / "grids", **kw)
    assert again.steps == 6 and (tmp_path / "grids" / "step-00000006.png").is_file()
    assert [r["loss"] for r in again.history] == [r["loss"] for r in whole.history]
    a = RelightModel.from_pretrained(tmp_path / "whole").state_dict()
    b = RelightModel.from_pretrained(tmp_path / "resumed").state_dict()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert [r["loss"] for r in whole.history] == [r["loss"] for r in resumed.history]
    # a checkpoint whose files are corrupt is refused with the file named
    latest = tmp_path / "run-resumed" / "checkpoints" / (tmp_path / "run-resumed" / "checkpoints" / "latest").read_text()
    (latest / "trainable.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(InputError, match="trainable.safetensors: not a valid safetensors file"):
        train_stage(1, rendered_pairs, tmp_path / "again2", tmp_path / "run-resumed", config, **kw)


def test_runtime_settings_resume_bit_identical_and_compute_the_same_step(rendered_pairs, tmp_path):
    """The step settings of `train.runtime` (channels-last activations, gradient checkpointing) with the fused
    AdamW step: a killed run resumes bit-identically, and the losses are the plain step's up to rounding."""
    runtime = RuntimeConfig(channels_last=True, gradient_checkpointing=True)
    config = TrainConfig(steps=4, log_every=1, checkpoint_every=2, optim=OptimConfig(lr=2e-3, warmup_steps=1),
                         deepspeed=DeepSpeedConfig(micro_batch=4), runtime=runtime)
    kw = dict(model_config=micro_model_config(), cache_dir=tmp_path / "cache", progress=False)
    whole = train_stage(1, rendered_pairs, tmp_path / "whole", tmp_path / "run-whole", config, **kw)
    train_stage(1, rendered_pairs, tmp_path / "resumed", tmp_path / "run-resumed", config, stop_after=2, **kw)
    resumed = train_stage(1, rendered_pairs, tmp_path / "resumed", tmp_path / "run-resumed", config, **kw)
    assert [r["loss"] for r in whole.history] == [r["loss"] for r in resumed.history]
    a = RelightModel.from_pretrained(tmp_path / "whole").state_dict()
    b = RelightModel.from_pretrained(tmp_path / "resumed").state_dict()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    plain = train_stage(1, rendered_pairs, tmp_path / "plain", tmp_path / "run-plain",
                        dataclasses.replace(config, runtime=RuntimeConfig()), **kw)
    assert [r["loss"] for r in plain.history] == pytest.approx([r["loss"] for r in whole.history], rel=1e-3)


def test_weight_average_follows_the_warmed_up_decay():
    from relightful.training.ema import WeightEma

    layer = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        layer.weight.fill_(0.0)
    ema = WeightEma(layer, decay=0.9)
    expected = torch.zeros(1, 2)
    for n, value in enumerate((1.0, 2.0, 3.0, 4.0)):
        with torch.no_grad():
            layer.weight.fill_(value)
        d = min(0.9, (1 + n) / (10 + n))
        expected = d * expected + (1 - d) * value
        ema.update()
    torch.testing.assert_close(ema.weights()["weight"], expected)
    restored = WeightEma(layer, decay=0.9)
    restored.load(ema.state())
    assert restored.updates == 4 and torch.equal(restored.weights()["weight"], ema.weights()["weight"])
    with pytest.raises(ValueError, match="without ema_decay"):
        restored.load({})
    with pytest.raises(ValueError, match="ema_decay"):
        WeightEma(layer, decay=1.0)


def test_ema_run_resumes_exactly_and_saves_the_average(rendered_pairs, tmp_path):
    """With `ema_decay` the model folder holds the average, not the last weights, and a killed run resumes to the
    same average (it is part of every checkpoint)."""
    config = TrainConfig(steps=4, log_every=1, checkpoint_every=2, ema_decay=0.5,
                         optim=OptimConfig(lr=2e-3, warmup_steps=1), deepspeed=DeepSpeedConfig(micro_batch=4))
    kw = dict(model_config=micro_model_config(), cache_dir=tmp_path / "cache", progress=False)
    whole = train_stage(1, rendered_pairs, tmp_path / "whole", tmp_path / "run-whole", config, **kw)
    train_stage(1, rendered_pairs, tmp_path / "resumed", tmp_path / "run-resumed", config, stop_after=2, **kw)
    train_stage(1, rendered_pairs, tmp_path / "resumed", tmp_path / "run-resumed", config, **kw)
    a = RelightModel.from_pretrained(tmp_path / "whole").state_dict()
    b = RelightModel.from_pretrained(tmp_path / "resumed").state_dict()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    plain = train_stage(1, rendered_pairs, tmp_path / "plain", tmp_path / "run-plain",
                        dataclasses.replace(config, ema_decay=0.0), **kw)
    assert [r["loss"] for r in plain.history] == [r["loss"] for r in whole.history]  # training itself unchanged
    p = RelightModel.from_pretrained(tmp_path / "plain").state_dict()
    moved = [n for n in a if n.startswith("unet.") and not torch.equal(a[n], p[n])]
    assert moved  # the saved weights are the average, not the last step's


def test_changed_settings_do_not_resume_stale_checkpoints(rendered_pairs, tmp_path):
    config = TrainConfig(steps=2, log_every=1, checkpoint_every=1, deepspeed=DeepSpeedConfig(micro_batch=2))
    kw = dict(model_config=micro_model_config(), cache_dir=tmp_path / "cache", progress=False)
    train_stage(1, rendered_pairs, tmp_path / "m", tmp_path / "run", config, **kw)
    other = TrainConfig(steps=3, log_every=1, checkpoint_every=1, seed=5, deepspeed=DeepSpeedConfig(micro_batch=2))
    result = train_stage(1, rendered_pairs, tmp_path / "m", tmp_path / "run", other, **kw)
    assert [r["step"] for r in result.history] == [1, 2, 3]  # started afresh


def test_pair_stream_is_deterministic_and_covers_the_split(rendered_pairs, tmp_path):
    model = RelightModel(micro_model_config())
    files = build_cache(rendered_pairs, tmp_path / "cache", model, progress=False)
    again = build_cache(rendered_pairs, tmp_path / "cache", model, progress=False)
    assert files == again  # cached once
    manifest = read_pair_manifest(rendered_pairs)
    n_train = int((manifest.split == "train").sum())
    streams = [PairStream(manifest, files, "train", micro_batch=4, world=2, rank=r, seed=7) for r in (0, 1)]
    seen = torch.cat([s.batch(step)["target"].flatten(1) for step in range(n_train // 8) for s in streams])
    assert len(torch.unique(seen, dim=0)) == len(seen)  # one epoch: every sample once, ranks disjoint
    fresh = PairStream(manifest, files, "train", micro_batch=4, world=2, rank=1, seed=7)
    assert torch.equal(fresh.batch(3)["composite"], streams[1].batch(3)["composite"])
    cache = load_tensors(next(iter(files.values())))
    assert set(cache) == {"composite", "target", "matte", "background", "panorama", "light", "shading"}
    assert cache["composite"].shape[1:] == (12, 16, 16) and cache["panorama"].shape[1:] == (3, 8, 16)
    # the target's light direction is that of the pair's own panorama z_b (its scale and exposure do not matter)
    assert torch.allclose(cache["light"][:, 3:], torch.stack([mean_light_direction(p.float().permute(1, 2, 0))
                                                              for p in cache["panorama"]]), atol=2e-3)
    assert float(cache["light"].view(-1, 2, 3).norm(dim=-1).max()) <= 1.0


def test_a_manifest_listing_some_of_a_shards_pairs_streams_those_pairs(rendered_pairs, tmp_path):
    """A curated manifest (bad pairs dropped) caches and streams exactly its own pairs, and its cache is not the
    whole manifest's."""
    import shutil

    from relightful.data.shards import MANIFEST, read_shard
    from relightful.models.codecs import to_model_space
    from relightful.training.validation import validation_batch

    curated = tmp_path / "curated"
    shutil.copytree(rendered_pairs, curated)
    manifest = read_pair_manifest(curated)
    kept = manifest[manifest["index"] % 2 == 1]  # every other pair of each shard
    kept.to_parquet(curated / MANIFEST)
    model = RelightModel(micro_model_config())
    files = build_cache(curated, tmp_path / "cache", model, progress=False)
    whole = build_cache(rendered_pairs, tmp_path / "cache", model, progress=False)
    assert set(files.values()).isdisjoint(whole.values())
    n_train = int((kept.split == "train").sum())
    stream = PairStream(kept, files, "train", micro_batch=n_train, seed=3)
    seen = stream.batch(0)["background"]
    wanted = []
    for shard, rows in kept[kept.split == "train"].groupby("shard"):
        y_b = read_shard(curated / shard)["y_b"][torch.as_tensor(rows["index"].to_numpy().copy())]
        wanted.append(to_model_space(y_b.float()).half().float())
    wanted = torch.cat(wanted)
    # the stream holds the kept pairs, each once (compared as sets of flattened backgrounds)
    key = lambda t: sorted(map(tuple, t.flatten(1).tolist()))
    assert key(seen) == key(wanted)
    first = validation_batch(curated, files, 3, split="train")["background"]
    assert torch.equal(first, wanted[:3])
    # a shard whose listed pairs are in two splits: each split streams its own
    mixed = kept.copy()
    mixed.loc[(mixed.split == "train") & (mixed["index"] % 4 == 1), "split"] = "val"
    val_rows = mixed[(mixed.split == "val") & (kept.split == "train")]
    val_seen = PairStream(mixed, files, "val", micro_batch=int((mixed.split == "val").sum()), seed=3).batch(0)
    moved = torch.cat([to_model_space(read_shard(curated / shard)["y_b"][torch.as_tensor(r["index"].to_numpy().copy())]
                                      .float()).half().float() for shard, r in val_rows.groupby("shard")])
    train_seen = PairStream(mixed, files, "train", micro_batch=int((mixed.split == "train").sum())).batch(0)
    assert len(moved) > 0 and set(key(moved)) <= set(key(val_seen["background"]))
    assert set(key(moved)).isdisjoint(key(train_seen["background"]))


def _without_panorama(files: dict[str, Path], folder: Path) -> dict[str, Path]:
    """Copies of light-stage cache files as natural pairs' caches are: no panorama, no light directions or shading
    coefficients."""
    out = {}
    for shard, path in files.items():
        tensors = {k: v for k, v in load_tensors(path).items() if k not in ("panorama", "light", "shading")}
        save_tensors(folder / path.name, tensors)
        out[shard] = folder / path.name
    return out


def test_replay_stream_mixes_its_share_of_each_batch(rendered_pairs, tmp_path):
    model = RelightModel(micro_model_config())
    files = build_cache(rendered_pairs, tmp_path / "cache", model, progress=False)
    natural = _without_panorama(files, tmp_path / "natural")
    manifest = read_pair_manifest(rendered_pairs)
    stream = ReplayStream.split(manifest, natural, manifest, files, "train", micro_batch=8, replay_fraction=0.3,
                                seed=4)
    main_part = PairStream(manifest, natural, "train", micro_batch=6, seed=4)
    replayed = PairStream(manifest, files, "train", micro_batch=2, seed=5)
    for step in (0, 3):
        batch = stream.batch(step)
        assert set(batch) == {"composite", "target", "matte", "background"}  # what both streams have
        assert torch.equal(batch["target"][:6], main_part.batch(step)["target"])
        assert torch.equal(batch["target"][6:], replayed.batch(step)["target"])
    for fraction in (0.0, 1.0):
        with pytest.raises(ValueError, match="replay_fraction must be in"):
            ReplayStream.split(manifest, natural, manifest, files, "train", 8, fraction)


def test_target_source_stream_gives_the_chosen_maps_their_share(rendered_pairs, tmp_path):
    from relightful.training.data import cache_places

    model = RelightModel(micro_model_config())
    files = build_cache(rendered_pairs, tmp_path / "cache", model, progress=False)
    manifest = read_pair_manifest(rendered_pairs)
    train_maps = sorted(manifest[manifest.split == "train"].env_b.unique())
    studio = set(train_maps[:max(1, len(train_maps) // 4)])  # a few maps renamed as another source's
    manifest["env_b"] = [f"studio-{m}" if m in studio else m for m in manifest.env_b]
    chosen = manifest.env_b.str.startswith("studio-") & (manifest.split == "train")
    assert 0 < chosen.mean() < 0.25
    places = cache_places(manifest)
    key = {}  # each train pair's target tensor -> whether its map is a chosen one
    for i in manifest.index[manifest.split == "train"]:
        target = load_tensors(files[manifest.shard[i]])["target"][int(places[i])].float()
        key[target.numpy().tobytes()] = bool(chosen[i])
    stream = ReplayStream.by_target_source(manifest, files, ("studio",), "train", micro_batch=8, fraction=0.5, seed=2)
    for step in range(6):
        flags = [key[t.numpy().tobytes()] for t in stream.batch(step)["target"]]
        assert flags == [False] * 4 + [True] * 4
    with pytest.raises(ValueError, match=r"no train pairs have a target map from \['lab'\]"):
        ReplayStream.by_target_source(manifest, files, ("lab",), "train", 8, 0.5)
    with pytest.raises(ValueError, match="nothing to mix them with"):
        ReplayStream.by_target_source(manifest, files, ("studio", "map"), "train", 8, 0.5)
    for bad in ({"target_sources": ["studio"]}, {"target_source_fraction": 0.3},
                {"target_sources": ["studio"], "target_source_fraction": 1.0}, {"target_sources": "studio"}):
        with pytest.raises(ValueError, match="target_source"):
            TrainConfig(**bad)


def test_training_draws_its_batches_by_target_source_when_configured(stage1, rendered_pairs, tmp_path):
    _, root = stage1
    config = dataclasses.replace(FAST, steps=1, target_sources=("lab",), target_source_fraction=0.25)
    with pytest.raises(ValueError, match=r"no train pairs have a target map from \['lab'\]"):
        train_stage(1, rendered_pairs, tmp_path / "model", tmp_path / "run", config, micro_model_config(),
                    cache_dir=root / "cache", progress=False)
    # stage 3 trains on natural pairs, which have no maps: the setting of the shared train block is left out there
    natural = tmp_path / "natural"
    shutil.copytree(rendered_pairs, natural)
    (natural / ENVMAPS).unlink()  # natural pairs come without maps
    manifest = read_pair_manifest(natural)
    manifest["env_a"], manifest["env_b"] = None, None
    manifest.to_parquet(natural / "manifest.parquet")
    stage3 = dataclasses.replace(config, steps=2)
    result = train_stage(3, natural, tmp_path / "model3", tmp_path / "run3", stage3, init_from=root / "model",
                         cache_dir=tmp_path / "cache3", progress=False)
    assert result.history[-1]["step"] == 2 and math.isfinite(result.history[-1]["loss"])


def test_stage3_replays_light_stage_pairs(stage1, rendered_pairs, tmp_path):
    _, root = stage1
    config = TrainConfig(steps=2, log_every=1, checkpoint_every=100, replay_fraction=0.5,
                         deepspeed=DeepSpeedConfig(micro_batch=4))
    with pytest.raises(ValueError, match="needs the pairs to replay"):
        train_stage(3, rendered_pairs, tmp_path / "model", tmp_path / "run", config, init_from=root / "model",
                    cache_dir=root / "cache", progress=False)
    result = train_stage(3, rendered_pairs, tmp_path / "model", tmp_path / "run", config, init_from=root / "model",
                         cache_dir=root / "cache", progress=False, replay_dir=rendered_pairs)
    assert [r["step"] for r in result.history] == [1, 2] and math.isfinite(result.history[-1]["loss"])
    assert (tmp_path / "model" / "relightful.json").is_file()


def _sphere_under(panorama: torch.Tensor, size: int = 32) -> torch.Tensor:
    """(3, size, size) Lambertian unit sphere in camera space (+x right, +y up) lit by a (3, h, 2h) lat-long map."""
    h = panorama.shape[1]
    directions = torch.from_numpy(latlong_directions(h, np.float64)).reshape(-1, 3)
    radiance = panorama.double().reshape(3, -1).T * torch.from_numpy(latlong_solid_angles(h, np.float64)).reshape(-1, 1)
    c = (torch.arange(size, dtype=torch.float64) + 0.5) / size * 2 - 1
    y, x = torch.meshgrid(-c, c, indexing="ij")
    z = (1 - x ** 2 - y ** 2).clamp_min(0).sqrt()
    normals = torch.stack([x, y, z], dim=-1).reshape(-1, 3)
    irradiance = (normals @ directions.T).clamp_min(0) @ radiance            # (size², 3)
    return (irradiance.T.reshape(3, size, size) * (z > 0)).float()


def test_mirrored_samples_are_the_pairs_seen_in_a_mirror():
    codec = PixelUnshuffleCodec(4)
    gen = torch.Generator().manual_seed(0)
    panorama = torch.rand(4, 3, 16, 32, generator=gen) ** 8  # a few bright lights
    images = torch.stack([_sphere_under(p) for p in panorama])
    light = torch.stack([mean_light_direction(p.permute(1, 2, 0)) for p in panorama])
    batch = {"composite": codec.encode(images), "target": codec.encode(images.flip(-2)),
             "matte": torch.rand(4, 1, 8, 8, generator=gen), "background": torch.rand(4, 3, 32, 32, generator=gen),
             "panorama": panorama, "light": torch.cat([light.flip(0), light], dim=1)}
    which = torch.tensor([True, False, True, False])
    mirrored = mirror_samples(batch, codec, which)
    # the latents are those of the mirrored images, exactly; images are mirrored along their width
    assert torch.equal(codec.decode(mirrored["composite"])[which], images[which].flip(-1))
    assert torch.equal(codec.decode(mirrored["target"])[which], images[which].flip(-2).flip(-1))
    for key in ("matte", "background", "panorama"):
        assert torch.equal(mirrored[key][which], batch[key][which].flip(-1))
    for key, value in batch.items():  # the samples not drawn are untouched, and so is the input batch
        assert torch.equal(mirrored[key][~which], value[~which])
    assert torch.equal(batch["composite"], codec.encode(images))
    # the mirrored panorama is the mirrored lighting: a sphere under it is the mirror image of the sphere under it
    relit = torch.stack([_sphere_under(p) for p in mirrored["panorama"][which]])
    assert torch.allclose(relit, images[which].flip(-1), atol=1e-5 * float(images.max()))
    assert not torch.allclose(relit, images[which], atol=0.05 * float(images.max()))  # the light did move
    # and its light directions are those of the mirrored panorama (source and target vectors alike)
    assert torch.allclose(mirrored["light"][which][:, 3:],
                          torch.stack([mean_light_direction(p.permute(1, 2, 0)) for p in mirrored["panorama"][which]]),
                          atol=1e-5)
    assert torch.equal(mirrored["light"][which][:, :3] * torch.tensor([-1.0, 1.0, 1.0]), batch["light"][which][:, :3])
    # about the share asked for, drawn from the step's generator
    draws = mirror_mask(torch.Generator().manual_seed(1), 4000, 0.25)
    assert draws.dtype == torch.bool and abs(float(draws.float().mean()) - 0.25) < 0.03
    assert torch.equal(draws, mirror_mask(torch.Generator().manual_seed(1), 4000, 0.25))


def test_mirrored_training_runs_and_resumes_to_the_same_weights(rendered_pairs, tmp_path):
    config = TrainConfig(steps=4, log_every=1, checkpoint_every=2, hflip=0.5, deepspeed=DeepSpeedConfig(micro_batch=4))
    kw = dict(model_config=micro_model_config(), cache_dir=tmp_path / "cache", progress=False)
    whole = train_stage(1, rendered_pairs, tmp_path / "a", tmp_path / "run_a", config, **kw)
    train_stage(1, rendered_pairs, tmp_path / "b", tmp_path / "run_b", config, stop_after=2, **kw)
    resumed = train_stage(1, rendered_pairs, tmp_path / "b", tmp_path / "run_b", config, **kw)
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in whole.history]
    a, b = (RelightModel.from_pretrained(tmp_path / n).state_dict() for n in ("a", "b"))
    assert all(torch.equal(a[name], b[name]) for name in a)
    plain = train_stage(1, rendered_pairs, tmp_path / "c", tmp_path / "run_c", dataclasses.replace(config, hflip=0.0),
                        **kw)
    assert plain.history[0]["loss"] != whole.history[0]["loss"]  # some samples of the first batch were mirrored
    with pytest.raises(ValueError, match="hflip is the probability"):
        train_stage(1, rendered_pairs, tmp_path / "d", tmp_path / "run_d", dataclasses.replace(config, hflip=1.5), **kw)


def test_light_probe_training_resumes_and_stays_out_of_the_model(rendered_pairs, tmp_path):
    config = TrainConfig(steps=4, log_every=1, checkpoint_every=2, light_probe_weight=1.0,
                         deepspeed=DeepSpeedConfig(micro_batch=4))
    kw = dict(model_config=micro_model_config(), cache_dir=tmp_path / "cache", progress=False)
    whole = train_stage(1, rendered_pairs, tmp_path / "a", tmp_path / "run_a", config, **kw)
    train_stage(1, rendered_pairs, tmp_path / "b", tmp_path / "run_b", config, stop_after=2, **kw)
    resumed = train_stage(1, rendered_pairs, tmp_path / "b", tmp_path / "run_b", config, **kw)
    assert all(r["light_probe_loss"] > 0 for r in whole.history)
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in whole.history]  # the head was checkpointed
    a, b = (RelightModel.from_pretrained(tmp_path / n).state_dict() for n in ("a", "b"))
    assert all(torch.equal(a[name], b[name]) for name in a)
    assert not any("probe" in name for name in load_tensors(tmp_path / "a" / "encoders.safetensors"))
    stage2 = dataclasses.replace(config, steps=2, env_warmup_steps=1, align_start_step=1)  # a fresh head, not held
    second = train_stage(2, rendered_pairs, tmp_path / "s2", tmp_path / "run_s2", stage2, init_from=tmp_path / "a",
                         cache_dir=tmp_path / "cache", progress=False)
    assert all(r["light_probe_loss"] > 0 for r in second.history)


@pytest.mark.parametrize("zero", [0, 2])
def test_two_ranks_on_cpu_hold_identical_parameters(rendered_pairs, tmp_path, zero):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR",
                                                            "MASTER_PORT", "LOCAL_WORLD_SIZE")}
    from relightful.training.engine import free_port

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), str(Path(__file__).parent / "dist_train_check.py"),
           str(rendered_pairs), str(tmp_path), str(zero)]
    proc = subprocess.run(cmd, env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = load_tensors(tmp_path / "rank0.safetensors"), load_tensors(tmp_path / "rank1.safetensors")
    assert r0.keys() == r1.keys()
    for name in r0:
        assert torch.equal(r0[name], r1[name]), name
    # and they trained: the saved model (rank 0) is rank 0's parameters, which left their initial values
    saved = dict(RelightModel.from_pretrained(tmp_path / "model").named_parameters())
    for name in r0:
        assert torch.equal(saved[name].detach(), r0[name]), name
    torch.manual_seed(0)
    start = dict(RelightModel(micro_model_config()).named_parameters())
    assert not torch.equal(start["unet.conv_in.weight"].detach(), r0["unet.conv_in.weight"])
    losses = load_tensors(tmp_path / "loss0.safetensors")["loss"]
    assert torch.equal(losses, load_tensors(tmp_path / "loss1.safetensors")["loss"])  # logged as the ranks' mean
    assert torch.isfinite(losses).all()


def test_bf16_zero2_resumes_and_exports_fp32_master_weights(rendered_pairs, tmp_path):
    """The gpu profile's precision: DeepSpeed bf16 with ZeRO-2 (fp32 master weights in the optimizer): a killed run
    resumes to the same weights, and the model folder holds the fp32 master weights."""
    config = TrainConfig(steps=4, log_every=1, checkpoint_every=2, optim=OptimConfig(lr=1e-3, warmup_steps=1),
                         deepspeed=DeepSpeedConfig(micro_batch=4, precision="bf16", zero_stage=2))
    kw = dict(model_config=micro_model_config(), cache_dir=tmp_path / "cache", progress=False)
    whole = train_stage(1, rendered_pairs, tmp_path / "whole", tmp_path / "run-whole", config, **kw)
    train_stage(1, rendered_pairs, tmp_path / "resumed", tmp_path / "run-resumed", config, stop_after=2, **kw)
    train_stage(1, rendered_pairs, tmp_path / "resumed", tmp_path / "run-resumed", config, **kw)
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in whole.history)
    a = RelightModel.from_pretrained(tmp_path / "whole").state_dict()
    b = RelightModel.from_pretrained(tmp_path / "resumed").state_dict()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    weights = [v for k, v in a.items() if k.startswith("unet.")]
    assert all(w.dtype == torch.float32 for w in weights)
    assert any(not torch.equal(w, w.bfloat16().float()) for w in weights)  # not bf16-rounded copies
    with pytest.raises(ValueError, match="bf16 needs zero_stage 1 or 2"):
        train_stage(1, rendered_pairs, tmp_path / "x", tmp_path / "run-x", TrainConfig(
            steps=1, deepspeed=DeepSpeedConfig(precision="bf16", zero_stage=0)), **kw)


def test_stage2_env_warmup_holds_all_but_f_env(stage1, rendered_pairs, tmp_path):
    """During `env_warmup_steps` only F_env learns: the UNet and F_bg leave those steps bit-identical."""
    _, root = stage1
    before = RelightModel.from_pretrained(root / "model")
    config = TrainConfig(steps=4, log_every=2, checkpoint_every=100, env_warmup_steps=4, bg_condition_fraction=0.5,
                         optim=OptimConfig(lr=5e-3, warmup_steps=1), deepspeed=DeepSpeedConfig(micro_batch=4))
    train_stage(2, rendered_pairs, tmp_path / "model", tmp_path / "run", config, init_from=root / "model",
                cache_dir=root / "cache", progress=False)
    after = RelightModel.from_pretrained(tmp_path / "model")
    for part in ("unet", "lighting"):
        for (name, a), (_, b) in zip(getattr(before, part).state_dict().items(),
                                     getattr(after, part).state_dict().items()):
            assert torch.equal(a, b), (part, name)
    assert not all(torch.equal(a, b) for a, b in zip(before.panorama.state_dict().values(),
                                                     after.panorama.state_dict().values()))


def _available_memory_gib() -> float:
    """Memory available to new processes, swap included (the ranks touch most of their state once a step)."""
    with open("/proc/meminfo") as f:
        info = dict(line.split(":", 1) for line in f)
    return (int(info["MemAvailable"].split()[0]) + int(info["SwapFree"].split()[0])) / 2**20


@pytest.mark.slow
@pytest.mark.parametrize("world", [1, 2])
def test_real_shape_stage1_under_zero2_bf16(world):
    """The gpu profile's model at its real shape (SD-1.5 UNet, 860 M parameters; with F_bg 1,055 M trained, F_env
    and the VAE frozen) takes two stage-1 steps at 64×64 latents under DeepSpeed ZeRO-2 bf16 on CPU ranks: the
    losses are finite, every trained tensor moved, the ranks hold the same weights, and each rank's peak memory is
    reported. Per rank it needs 2 bytes per weight (bf16 model), 2 per trained weight (bf16 gradients) and 16 per
    trained weight split over the ranks (fp32 master, fp32 gradient partition, AdamW's two moments): measured
    22.7 GiB for one rank, 11.5 and 11.4 GiB for each of two (run here with 16 GiB of swap beside the 23 GiB of
    memory); the test is skipped where memory and swap together fall short of the estimate."""
    n_all, n_trained = 1.241e9, 1.055e9
    need = world * (2 * n_all + 2 * n_trained + 16 * n_trained / world) / 2**30 + 1.0
    if _available_memory_gib() < need:
        pytest.skip(f"{world} rank(s) of the real shape need about {need:.0f} GiB; "
                    f"{_available_memory_gib():.0f} GiB available")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR",
                                                            "MASTER_PORT", "LOCAL_WORLD_SIZE")}
    env["MALLOC_MMAP_THRESHOLD_"] = "1048576"  # freed weight copies go back to the system, not to a heap
    from relightful.training.engine import free_port

    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(world), "--master_addr",
           "127.0.0.1", "--master_port", str(free_port()), str(Path(__file__).parent / "real_shape_check.py"),
           str(root / "params.yaml"), str(50_000_000)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600, cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = sorted((json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")),
                   key=lambda r: r["rank"])
    assert [r["rank"] for r in ranks] == list(range(world))
    for r in ranks:
        print(f"rank {r['rank']}: losses {r['losses']}, peak memory {r['peak_rss_gib']:.1f} GiB")
        assert r["latent"] == 64 and round(r["unet_params_m"]) == 860
        assert all(math.isfinite(x) for x in r["losses"])
        assert all(b != a for b, a in zip(r["before"], r["after"])), "a trained tensor did not move"
        assert r["after"] == ranks[0]["after"], "the ranks' weights differ"

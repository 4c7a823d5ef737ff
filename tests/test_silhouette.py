"""The silhouette's normals (lighting/silhouette.py) and the model that takes them as input channels: a disc gives
a hemisphere, identical mattes are computed once, a mirrored sample's normals are the mirrored normals, and the
model's shape input, cache and training use them."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from conftest import micro_model_config
from relightful.lighting import silhouette
from relightful.lighting.silhouette import normals_from_matte, silhouette_normals
from relightful.models import PixelUnshuffleCodec, RelightModel
from relightful.training.augment import mirror_samples


def _disc(size: int, cx: float, cy: float, radius: float) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    return ((xx - cx) ** 2 + (yy - cy) ** 2 <= radius ** 2).float()


def test_a_disc_is_a_hemisphere_and_identical_mattes_are_computed_once(monkeypatch):
    size, cx, cy, radius = 48, 20.0, 26.0, 15.0
    disc, other = _disc(size, cx, cy, radius), _disc(size, 30.0, 20.0, 10.0)
    calls = []
    original = silhouette.normals_from_matte
    monkeypatch.setattr(silhouette, "normals_from_matte", lambda m: calls.append(1) or original(m))
    normals = silhouette_normals(torch.stack([disc, other, disc, disc])[:, None])
    assert len(calls) == 2  # four mattes, two distinct
    assert normals.shape == (4, 3, size, size) and normals.dtype == torch.float64
    assert torch.equal(normals[0], normals[2]) and torch.equal(normals[0], normals[3])
    np.testing.assert_array_equal(normals[1].permute(1, 2, 0).numpy(), original(other.numpy())[0])
    # inside the disc (away from its rim) the normal is the hemisphere's: ((x − cx)/r, (cy − y)/r, z), +y up
    yy, xx = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    nx, ny = (xx - cx) / radius, (cy - yy) / radius
    inner = nx ** 2 + ny ** 2 < 0.7 ** 2
    true = torch.stack([nx, ny, (1 - nx ** 2 - ny ** 2).clamp_min(0).sqrt()])
    cosines = (normals[0] * true).sum(0)[inner]
    assert float(torch.rad2deg(torch.arccos(cosines.clamp(max=1))).mean()) < 6.0
    # the left half faces left, the right half right
    assert float(normals[0, 0][inner & (xx < cx - 4)].max()) < 0 < float(normals[0, 0][inner & (xx > cx + 4)].min())


def test_a_model_with_silhouette_normals_takes_them_as_shape_channels(tmp_path):
    torch.manual_seed(0)
    config = dataclasses.replace(micro_model_config(32), silhouette_normals=True)
    model = RelightModel(config)
    latent_channels = model.codec.channels
    assert config.shape_channels == 4 and model.unet.config.in_channels == 2 * latent_channels + 4
    matte = torch.stack([_disc(32, 14.0, 17.0, 10.0), _disc(32, 18.0, 15.0, 8.0)])[:, None]
    shape = model.matte_latent(matte)
    assert shape.shape == (2, 4, 16, 16)
    plain = RelightModel(micro_model_config(32)).matte_latent(matte)
    assert plain.shape == (2, 1, 16, 16) and torch.equal(shape[:, :1], plain)  # channel 0 is the matte, as before
    # a mirrored sample's shape input (training/augment.py) is the shape input of the mirrored matte
    mirrored = mirror_samples({"matte": shape}, PixelUnshuffleCodec(2), torch.tensor([True, False]))["matte"]
    assert torch.equal(mirrored[1], shape[1])
    of_mirror = model.matte_latent(matte.flip(-1))
    inside = of_mirror[0, 0] > 0.99
    assert float((mirrored[0, 1:, inside] - of_mirror[0, 1:, inside]).abs().max()) < 0.05
    assert float(shape[0, 1, inside.flip(-1)].abs().mean()) > 0.2  # the x channel is there to flip
    # denoising with it, and a model folder that keeps it
    z = torch.randn(2, latent_channels, 16, 16)
    with torch.no_grad():
        out = model.denoise(z, torch.tensor([10, 900]), z, shape, None)
    assert out.shape == z.shape
    model.save_pretrained(tmp_path / "m")
    again = RelightModel.from_pretrained(tmp_path / "m")
    assert again.config.silhouette_normals
    with torch.no_grad():
        assert torch.equal(again.denoise(z, torch.tensor([10, 900]), z, shape, None), out)
    with pytest.raises(RuntimeError):  # the matte alone does not fit its UNet
        model.denoise(z, torch.tensor([10, 900]), z, plain, None)


def test_training_with_silhouette_normals_caches_them_and_learns(rendered_pairs, tmp_path):
    from relightful.training.config import DeepSpeedConfig, OptimConfig, TrainConfig
    from relightful.training.data import build_cache
    from relightful.training.loop import train_stage
    from safetensors.torch import load_file

    config = TrainConfig(steps=30, log_every=5, checkpoint_every=100, hflip=0.5, shading_weight=1.0,
                         prediction_type="sample",
                         optim=OptimConfig(lr=2e-3, warmup_steps=5), deepspeed=DeepSpeedConfig(micro_batch=8))
    model_config = dataclasses.replace(micro_model_config(), silhouette_normals=True, residual=True, edit="gain")
    result = train_stage(1, rendered_pairs, tmp_path / "model", tmp_path / "run", config, model_config,
                         cache_dir=tmp_path / "cache", progress=False)
    losses = [r["loss"] for r in result.history]
    assert np.mean(losses[-2:]) < np.mean(losses[:2])
    files = build_cache(rendered_pairs, tmp_path / "cache", RelightModel.from_pretrained(tmp_path / "model"),
                        progress=False)
    cached = load_file(next(iter(files.values())))
    assert cached["matte"].shape[1] == 4 and float(cached["matte"][:, 3].max()) > 0.5
    # a matte-only model beside it gets caches of its own, not these
    plain = build_cache(rendered_pairs, tmp_path / "cache", RelightModel(micro_model_config()), progress=False)
    assert set(plain.values()).isdisjoint(files.values())
    assert load_file(next(iter(plain.values())))["matte"].shape[1] == 1

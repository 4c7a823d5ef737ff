"""The shading path: order-2 shading coefficients of maps (lighting/sh.py) and the model's shading head that turns
predicted ones into the first guess of its relighting gain (models/shading_head.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from conftest import micro_model_config
from relightful.io import InputError
from relightful.lighting.envmap import latlong_directions, latlong_solid_angles
from relightful.lighting.sh import mirror_coefficients, shading, shading_coefficients
from relightful.models import PixelUnshuffleCodec, RelightModel
from relightful.training.augment import mirror_samples


def _sky(height: int, towards: np.ndarray, sharpness: float) -> torch.Tensor:
    """(h, 2h, 3) a smooth lighting: a constant plus a lobe towards `towards`, a little warmer than it is blue."""
    d = latlong_directions(height, np.float64)
    lobe = np.clip(d @ (towards / np.linalg.norm(towards)), 0, None) ** sharpness
    lum = 0.2 + 3.0 * lobe
    return torch.from_numpy(np.stack([lum * 1.1, lum, lum * 0.8], axis=-1))


def _irradiance(env: torch.Tensor, normals: np.ndarray) -> np.ndarray:
    """Exact irradiance of the map's luminance on unit normals (N, 3): Σ L max(0, n·ω) dΩ."""
    h = env.shape[0]
    lum = env.numpy() @ np.array([0.2126, 0.7152, 0.0722])
    w = (lum * latlong_solid_angles(h, np.float64)).reshape(-1)
    return np.clip(normals @ latlong_directions(h, np.float64).reshape(-1, 3).T, 0, None) @ w


def test_order_two_shading_holds_the_irradiance_and_mirrors():
    rng = np.random.default_rng(0)
    normals = rng.standard_normal((500, 3))
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    for towards, sharpness in (([0.5, 0.8, 0.3], 1.0), ([-0.7, 0.2, -0.6], 2.0)):
        env = _sky(32, np.array(towards), sharpness)
        c = shading_coefficients(env)
        exact = _irradiance(env, normals)
        grid = torch.from_numpy(normals.T.reshape(1, 3, 500, 1))
        predicted = shading(c[None].double(), grid)[0, 0, :, 0].numpy()
        ratio = exact / predicted  # the level (c_0 Y_0) is left out: a constant ratio
        assert ratio.std() / ratio.mean() < 0.03, (towards, ratio.std() / ratio.mean())
        # a mirrored map (columns reversed: x -> −x) has the mirrored coefficients
        np.testing.assert_allclose(shading_coefficients(env.flip(1)).numpy(), mirror_coefficients(c).numpy(),
                                   atol=1e-5)
        # a rotation about +y is a rotation of its shading
        turned = shading_coefficients(env, 90.0)
        assert not torch.allclose(turned, c, atol=1e-3)
    # level and colour do not enter
    np.testing.assert_allclose(shading_coefficients(env * 7.0).numpy(), c.numpy(), rtol=1e-5, atol=1e-6)
    uniform = shading_coefficients(torch.ones(16, 32, 3))
    assert float(uniform.abs().max()) < 1e-3


def _disc(size: int) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    return (((xx - size / 2) ** 2 + (yy - size / 2) ** 2) <= (0.35 * size) ** 2).float()[None, None]


def _head_model(**changes) -> RelightModel:
    torch.manual_seed(0)
    config = dataclasses.replace(micro_model_config(32), silhouette_normals=True, shading_head=True, residual=True,
                                 edit="gain", **changes)
    return RelightModel(config)


def test_the_shading_head_starts_at_zero_and_renders_the_ratio_of_its_shadings():
    model = _head_model()
    shape = model.matte_latent(_disc(32).expand(2, -1, -1, -1))
    z = torch.randn(2, model.codec.channels, 16, 16)
    t = torch.tensor([999, 999])
    with torch.no_grad():
        model.denoise(z, t, z, shape, None)
    assert float(model.shading_head.coefficients.abs().max()) == 0.0  # a new model starts from the UNet alone
    # hand-set coefficients: the source lit from the left, the target from the right
    left = shading_coefficients(_sky(16, np.array([-1.0, 0.0, 0.3]), 4.0))
    right = shading_coefficients(_sky(16, np.array([1.0, 0.0, 0.3]), 4.0))
    with torch.no_grad():
        model.shading_head.head[-1].bias.copy_(torch.cat([left, right]))
        model.unet(torch.cat([z, z, shape], 1), t, encoder_hidden_states=model.null_embedding.expand(2, -1, -1))
        log_gain = model.shading_head.log_gain(shape)
    matte = shape[:, :1]
    inside = matte[0, 0] > 0.99
    assert float((log_gain * matte).sum() / matte.sum()).__abs__() < 1e-5      # mean-free inside the matte
    assert float(log_gain[0, 0][matte[0, 0] == 0].abs().max()) == 0.0          # nothing outside it
    cols = torch.arange(16)
    right_side, left_side = inside & (cols[None] >= 11), inside & (cols[None] <= 4)
    assert float(log_gain[0, 0][right_side].mean()) > 0.5 > -0.5 > float(log_gain[0, 0][left_side].mean())
    # and it reaches the prediction: the gain edit brightens the right of the disc
    with torch.no_grad():
        relit, edit = model.denoise(z, t, z, shape, None, return_edit=True)
        model.shading_head.head[-1].bias.zero_()
        plain, plain_edit = model.denoise(z, t, z, shape, None, return_edit=True)
    delta = model.codec.decode(edit - plain_edit)[0].mean(0)
    up = torch.nn.functional.interpolate(log_gain, size=(32, 32), mode="bilinear", align_corners=False)[0, 0]
    torch.testing.assert_close(delta, up, atol=1e-5, rtol=0)


@pytest.mark.parametrize("part", ["shading_head", "shading_prior"])
def test_model_folders_keep_the_shading_head_and_prior(tmp_path, part):
    torch.manual_seed(0)
    model = RelightModel(dataclasses.replace(micro_model_config(32), silhouette_normals=True, residual=True,
                                             edit="gain", **{part: True}))
    with torch.no_grad():
        for p in getattr(model, part).parameters():
            p.normal_()
    model.save_pretrained(tmp_path / "m")
    again = RelightModel.from_pretrained(tmp_path / "m")
    for a, b in zip(getattr(model, part).state_dict().values(), getattr(again, part).state_dict().values()):
        assert torch.equal(a, b)
    # an encoders file without the part's weights is refused, naming the file
    plain = RelightModel(dataclasses.replace(model.config, **{part: False}))
    plain.save_pretrained(tmp_path / "plain")
    (tmp_path / "m" / "encoders.safetensors").write_bytes((tmp_path / "plain" / "encoders.safetensors").read_bytes())
    with pytest.raises(InputError, match="encoders.safetensors: weights do not fit"):
        RelightModel.from_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match=f"{part} needs model.silhouette_normals"):
        RelightModel(dataclasses.replace(model.config, silhouette_normals=False))


def test_mirrored_samples_carry_mirrored_coefficients():
    env = _sky(16, np.array([0.6, 0.5, -0.4]), 3.0)
    batch = {"shading": torch.stack([torch.cat([shading_coefficients(env), shading_coefficients(env, 40.0)])] * 2)}
    out = mirror_samples(batch, PixelUnshuffleCodec(2), torch.tensor([True, False]))["shading"]
    np.testing.assert_allclose(out[0, :8].numpy(), shading_coefficients(env.flip(1)).numpy(), atol=1e-5)
    assert torch.equal(out[1], batch["shading"][1])


def test_training_supervises_the_head_and_stage_3_tunes_it(rendered_pairs, tmp_path):
    from relightful.training.config import DeepSpeedConfig, OptimConfig, TrainConfig
    from relightful.training.loop import train_stage

    config = TrainConfig(steps=30, log_every=5, checkpoint_every=100, hflip=0.5, prediction_type="sample",
                         shading_head_weight=1.0, optim=OptimConfig(lr=2e-3, warmup_steps=5),
                         deepspeed=DeepSpeedConfig(micro_batch=8))
    model_config = _head_model().config
    result = train_stage(1, rendered_pairs, tmp_path / "s1", tmp_path / "run1", config, model_config,
                         cache_dir=tmp_path / "cache", progress=False)
    head = [r["shading_head_loss"] for r in result.history if "shading_head_loss" in r]
    assert len(head) >= 4 and np.mean(head[-2:]) < 0.8 * np.mean(head[:2])
    trained = RelightModel.from_pretrained(tmp_path / "s1")
    assert float(trained.shading_head.head[-1].weight.detach().abs().max()) > 0
    # the head renders with the UNet: every stage tunes it (stage 3 too, where F_bg stays frozen)
    from relightful.training.objectives import set_trainable

    head = {id(p) for p in trained.shading_head.parameters()}
    for stage in (1, 2, 3):
        assert head <= {id(p) for p in set_trainable(trained, stage)}
    assert not any(p.requires_grad for p in trained.lighting.parameters())  # after stage 3's
    with pytest.raises(ValueError, match="shading_head_weight supervises the model's shading head"):
        train_stage(1, rendered_pairs, tmp_path / "x", tmp_path / "runx", config, micro_model_config(),
                    cache_dir=tmp_path / "cache", progress=False)

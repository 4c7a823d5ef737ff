"""The shading prior (models/shading_prior.py): two lighting estimators fitted on their own before stage 1
(training/prior_fit.py), whose shadings' ratio joins the UNet's log-gain edit in every guidance pass."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from conftest import micro_model_config
from test_shading_head import _disc
from relightful.data.shards import read_pair_manifest
from relightful.models import RelightModel
from relightful.models.harmonizer import Harmonizer
from relightful.models.lighting_estimator import LightingEstimator
from relightful.models.shading_prior import COEFFICIENTS
from relightful.training.data import build_cache


def _prior_model(**changes) -> RelightModel:
    torch.manual_seed(0)
    config = dataclasses.replace(micro_model_config(32), silhouette_normals=True, shading_prior=True, residual=True,
                                 edit="gain", **changes)
    return RelightModel(config)


def _set_target_from_the_right(model: RelightModel) -> None:
    """Hand-set estimators: the source reads as lit from the left, the target from the right (x coefficient ±0.6)."""
    with torch.no_grad():
        for estimator, sign in ((model.shading_prior.source, -1.0), (model.shading_prior.target, 1.0)):
            estimator.head[-1].weight.zero_()
            estimator.head[-1].bias.zero_()
            estimator.head[-1].bias[2] = 0.6 * sign  # the coefficient of x (lighting/sh.py: y, z, x, ...)


def _inputs(model: RelightModel) -> tuple[torch.Tensor, ...]:
    """Two 32-px samples: a disc matte, its shape input, a random composite (latents) and background."""
    matte = _disc(32).expand(2, -1, -1, -1)
    composite = model.codec.encode(torch.rand(2, 3, 32, 32) * 2 - 1)
    return matte, model.matte_latent(matte), composite, torch.rand(2, 3, 32, 32) * 2 - 1


def test_the_prior_is_the_ratio_of_two_shadings_added_to_every_pass():
    model = _prior_model()
    _set_target_from_the_right(model)
    matte, shape, composite, background = _inputs(model)
    with torch.no_grad():
        prior = model.prior_log_gain(composite, shape, background)
    log_gain = model.codec.decode(prior)[:, 0]                                    # (B, S, S), the same in R, G, B
    torch.testing.assert_close(model.codec.decode(prior)[:, 1], log_gain)
    up = torch.nn.functional.interpolate(shape[:, :1], size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
    cols = torch.arange(32)
    inside = up[0] > 0.99
    right, left = inside & (cols[None] >= 22), inside & (cols[None] <= 9)
    assert float(log_gain[0][right].mean()) > 0.3 > -0.3 > float(log_gain[0][left].mean())
    assert float(log_gain[0][up[0] == 0].abs().max()) < 1e-6                     # nothing outside the matte
    # it reaches the edit exactly, whatever the pass drops (lighting, image or both)
    z, t = torch.randn_like(composite), torch.tensor([999, 999])
    with torch.no_grad():
        for comp, features in ((composite, model.background_features(background)), (composite, None),
                               (torch.zeros_like(composite), None)):
            _, with_prior = model.denoise(z, t, comp, shape, features, return_edit=True, prior=prior)
            _, without = model.denoise(z, t, comp, shape, features, return_edit=True)
            torch.testing.assert_close(with_prior - without, prior, atol=1e-5, rtol=0)
    # and the harmonizer gives it to every pass, batched or one by one, with or without an ensemble
    fg, bg = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    settings = {"steps": 2, "image_guidance": 1.5, "lighting_guidance": 2.0, "ensemble": 2}
    batched = Harmonizer(model, defaults=settings).relight_batch(fg, matte, bg, seed=3)
    one_by_one = Harmonizer(model, batch_guidance=False, defaults=settings).relight_batch(fg, matte, bg, seed=3)
    torch.testing.assert_close(batched, one_by_one, atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        model.shading_prior.target.head[-1].bias.zero_()
        model.shading_prior.source.head[-1].bias.zero_()  # equal lightings: no prior
    flat = Harmonizer(model, defaults=settings).relight_batch(fg, matte, bg, seed=3)
    assert float((batched - flat).abs().max()) > 0.05


def test_prior_input_feeds_the_prior_to_the_unet(tmp_path):
    """`prior_input`: the UNet reads the prior's log gain as one more channel (at latent resolution), needs it in
    every call, and the folder round-trips."""
    model = _prior_model(prior_input=True)
    _set_target_from_the_right(model)
    assert model.unet.config.in_channels == 2 * model.codec.channels + 4 + 1
    matte, shape, composite, background = _inputs(model)
    with torch.no_grad():
        prior = model.prior_log_gain(composite, shape, background)
        channel = model.prior_channel(prior)
        small = model.shading_prior.log_gain(*model.prior_inputs(composite, shape, background), shape)
        interior = -torch.nn.functional.max_pool2d(-shape[:, :1], 3, 1, 1) > 0.99  # away from the matte's edge
        torch.testing.assert_close(channel[interior], small[interior], atol=0.05, rtol=0)  # the prior, latent res
        model.unet.conv_in.weight[:, -1].fill_(0.05)                        # make the new channel count
        z, t = torch.randn_like(composite), torch.tensor([999, 999])
        _, edit = model.denoise(z, t, composite, shape, None, return_edit=True, prior=prior)
        _, edit_zero = model.denoise(z, t, composite, shape, None, return_edit=True, prior=torch.zeros_like(prior))
    assert float((edit - edit_zero - prior).abs().max()) > 1e-3             # more than the prior added at the end
    with pytest.raises(ValueError, match="prior_input"):
        model.denoise(z, t, composite, shape, None)
    model.save_pretrained(tmp_path / "m")
    loaded = RelightModel.from_pretrained(tmp_path / "m")
    assert loaded.config.prior_input and loaded.unet.config.in_channels == model.unet.config.in_channels
    with torch.no_grad():
        again = loaded.denoise(z, t, composite, shape, None, return_edit=True, prior=prior)[1]
    torch.testing.assert_close(again, edit)
    with pytest.raises(ValueError, match="needs model.shading_prior"):
        RelightModel(dataclasses.replace(micro_model_config(32), prior_input=True))


def test_the_estimator_pools_mean_and_max():
    estimator = LightingEstimator(3, 8)
    out = estimator(torch.rand(5, 3, 32, 32))
    assert out.shape == (5, 8) and torch.isfinite(out).all()


def test_prior_coordinates_give_the_background_estimator_the_frame(tmp_path):
    """`prior_coordinates`: the target estimator reads x and y in [−1, 1] beside the background (its first layer
    takes 5 channels), the source's is unchanged, the folder round-trips, and it needs the prior."""
    from relightful.models.lighting_estimator import frame_coordinates

    coords = frame_coordinates(torch.zeros(2, 3, 4, 8))
    assert coords.shape == (2, 2, 4, 8)
    torch.testing.assert_close(coords[0, 0, 0], torch.linspace(-1, 1, 8))     # x: left to right
    torch.testing.assert_close(coords[1, 1, :, 5], torch.linspace(-1, 1, 4))  # y: top to bottom
    model = _prior_model(prior_coordinates=True)
    assert model.shading_prior.target.trunk[0].in_channels == 5
    assert model.shading_prior.source.trunk[0].in_channels == 4
    matte, shape, composite, background = _inputs(model)
    with torch.no_grad():
        prior = model.prior_log_gain(composite, shape, background)
    model.save_pretrained(tmp_path / "m")
    loaded = RelightModel.from_pretrained(tmp_path / "m")
    assert loaded.config.prior_coordinates
    with torch.no_grad():
        torch.testing.assert_close(loaded.prior_log_gain(composite, shape, background), prior)
    with pytest.raises(ValueError, match="prior_coordinates needs model.shading_prior"):
        RelightModel(dataclasses.replace(micro_model_config(32), prior_coordinates=True))


def test_fitting_learns_the_maps_coefficients(rendered_pairs, tmp_path):
    from relightful.training.prior_fit import coefficient_r2, fit_shading_prior

    model = _prior_model()
    files = build_cache(rendered_pairs, tmp_path / "cache", model, progress=False)
    manifest = read_pair_manifest(rendered_pairs)
    before = coefficient_r2(model, manifest, files, "train")
    report = fit_shading_prior(model, manifest, files, steps=150, batch=32, lr=2e-3, hflip=0.5, progress=False)
    after = coefficient_r2(model, manifest, files, "train")
    assert before["prior_r2_source_train"] < 0.0 and before["prior_r2_target_train"] < 0.0
    # 32-px backgrounds of 12 maps tell the target less than the composite tells the source, but both learn
    assert after["prior_r2_source_train"] > 0.8 and after["prior_r2_target_train"] > 0.05, after
    assert set(report) == {"prior_loss", "prior_r2_source_val", "prior_r2_target_val"}
    assert all(np.isfinite(list(report.values())))  # (this val split holds too few maps for its R² to mean much)
    assert not any(p.requires_grad for p in model.shading_prior.parameters())
    with pytest.raises(ValueError, match="shading_prior_steps must be ≥ 1"):
        fit_shading_prior(model, manifest, files, steps=0, batch=8, lr=1e-3)


def test_exposure_changes_teach_the_background_estimator_to_ignore_the_level(rendered_pairs, tmp_path):
    """`exposure_stops`: the maps' coefficients are level-free, and a fit that sees each background up to 2 stops
    brighter or darker answers a background and its 4× brighter copy more alike than the same fit without."""
    from relightful.training.data import PairStream
    from relightful.training.prior_fit import fit_shading_prior

    manifest = read_pair_manifest(rendered_pairs)
    change = {}
    for stops in (0.0, 2.0):
        model = _prior_model()
        files = build_cache(rendered_pairs, tmp_path / "cache", model, progress=False)
        fit_shading_prior(model, manifest, files, steps=300, batch=32, lr=2e-3, progress=False, exposure_stops=stops)
        samples = PairStream(manifest, files, "train", 64).samples(0, 64)
        composite, matte, background = model.prior_inputs(samples["composite"], samples["matte"],
                                                          samples["background"])
        with torch.no_grad():
            target = lambda gain: model.shading_prior.coefficients(composite, matte,
                                                                   background * gain)[:, COEFFICIENTS:]
            change[stops] = float((target(4.0) - target(1.0)).abs().mean() / target(1.0).std(dim=0).mean())
    assert change[2.0] < 0.7 * change[0.0], change


def test_stage_1_fits_the_prior_once_and_later_stages_keep_it(rendered_pairs, tmp_path):
    from relightful.training.config import DeepSpeedConfig, OptimConfig, TrainConfig
    from relightful.training.loop import train_stage
    from relightful.training.objectives import set_trainable
    from relightful.training.prior_fit import PRIOR_FILE

    config = TrainConfig(steps=6, log_every=2, checkpoint_every=3, prediction_type="sample", hflip=0.5,
                         shading_prior_steps=40, shading_prior_batch=16, optim=OptimConfig(lr=2e-3, warmup_steps=2),
                         deepspeed=DeepSpeedConfig(micro_batch=8))
    model_config = _prior_model().config
    run = tmp_path / "run1"
    stopped = train_stage(1, rendered_pairs, tmp_path / "s1", run, config, model_config,
                          cache_dir=tmp_path / "cache", progress=False, stop_after=3)
    fitted = {k: v.clone() for k, v in stopped.model.shading_prior.state_dict().items()}
    written = (run / PRIOR_FILE).stat().st_mtime_ns
    result = train_stage(1, rendered_pairs, tmp_path / "s1", run, config, model_config,
                         cache_dir=tmp_path / "cache", progress=False)
    assert (run / PRIOR_FILE).stat().st_mtime_ns == written            # resumed: not fitted again
    assert set(result.prior_fit) >= {"prior_loss", "prior_r2_source_val", "prior_r2_target_val"}
    trained = RelightModel.from_pretrained(tmp_path / "s1")
    for key, value in trained.shading_prior.state_dict().items():
        assert torch.equal(value, fitted[key]), key                      # frozen while the UNet trained
    prior = {id(p) for p in trained.shading_prior.parameters()}
    for stage in (1, 2, 3):
        assert not prior & {id(p) for p in set_trainable(trained, stage)}
    # stage 2 starts from the folder: its prior is kept as it is
    stage2 = train_stage(2, rendered_pairs, tmp_path / "s2", tmp_path / "run2", dataclasses.replace(config, steps=2),
                         init_from=tmp_path / "s1", cache_dir=tmp_path / "cache", progress=False)
    assert stage2.prior_fit == {}
    for key, value in RelightModel.from_pretrained(tmp_path / "s2").shading_prior.state_dict().items():
        assert torch.equal(value, fitted[key]), key
    assert np.isfinite([r["loss"] for r in stage2.history]).all()

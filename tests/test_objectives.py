"""The training levers of the tiny recipe: biased timesteps, F_bg's global lighting code, stage 2's mixed
conditioning and alignment warm-up."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from relightful.models import EncoderConfig, RelightModel
from relightful.training.config import TimestepBias
from relightful.training.loop import draw_step, step_generator
from relightful.training.objectives import StageObjective, set_trainable

from conftest import micro_model_config


def test_later_bias_draws_the_noisy_end_as_often_as_configured():
    bias = TimestepBias(strategy="later", portion=0.1, multiplier=10.0)
    w = bias.weights(1000)
    assert w.shape == (1000,) and float(w[:900].max()) == 1.0 and float(w[900:].min()) == 10.0
    batch = {"target": torch.zeros(4000, 3, 2, 2)}
    _, t, _, _ = draw_step(batch, step_generator(0, 0, 0, 0), 1000, 0.05, w)
    share = float((t >= 900).float().mean())
    assert abs(share - 1000 / 1900) < 0.03, share          # 100·10 / (900 + 100·10)
    assert int(t.min()) >= 0 and int(t.max()) <= 999
    _, t_uniform, _, _ = draw_step(batch, step_generator(0, 0, 0, 0), 1000, 0.05)
    assert abs(float((t_uniform >= 900).float().mean()) - 0.1) < 0.03


@pytest.mark.parametrize("bad", [dict(strategy="sideways"), dict(portion=0.0), dict(multiplier=-1.0)])
def test_timestep_bias_rejects_nonsense(bad):
    with pytest.raises(ValueError):
        TimestepBias(**bad)


def test_global_code_reaches_every_position_of_every_scale():
    """With the code, a change of the background's far corner changes F_bg's features everywhere; the local
    convolutions alone cannot see that far."""
    config = micro_model_config()
    for code_dim, expect_global in ((0, False), (16, True)):
        model = RelightModel(dataclasses.replace(config, lighting=EncoderConfig(widths=(16, 32), code_dim=code_dim,
                                                                               grid=2)))
        for conv in model.lighting.out:  # the zero projections would hide everything
            torch.nn.init.normal_(conv.weight)
        bg = torch.zeros(1, 3, 32, 32)
        changed = bg.clone()
        changed[..., -4:, -4:] = 1.0
        with torch.no_grad():
            a, b = model.background_features(bg), model.background_features(changed)
        corner = (a[0] - b[0]).abs().amax(dim=1)[0, 0, 0]  # the opposite corner of the first scale
        assert (float(corner) > 1e-6) == expect_global, (code_dim, float(corner))


def _stage2_batch(model, b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    c, s, size = model.codec.channels, model.latent_size, model.config.image_size
    return {"target": torch.randn(b, c, s, s, generator=g), "composite": torch.randn(b, c, s, s, generator=g),
            "matte": torch.rand(b, 1, s, s, generator=g), "background": torch.rand(b, 3, size, size, generator=g),
            "panorama": torch.rand(b, 3, 8, 16, generator=g)}


@pytest.mark.parametrize("fraction, bg_gets_diffusion_gradient", [(0.0, False), (0.5, True)])
def test_stage2_conditions_a_share_of_the_batch_on_the_background(fraction, bg_gets_diffusion_gradient):
    torch.manual_seed(0)
    model = RelightModel(micro_model_config())
    for conv in list(model.lighting.out) + list(model.panorama.out):
        torch.nn.init.normal_(conv.weight, std=0.1)
    set_trainable(model, 2)
    objective = StageObjective(model, 2, align_weight=0.0, prediction_type="sample", bg_condition_fraction=fraction)
    batch = _stage2_batch(model)
    ones = torch.ones(4)
    loss, logs = objective(batch, torch.randn_like(batch["target"]), torch.full((4,), 999), ones, ones)
    loss.backward()
    grad = sum(float(p.grad.abs().sum()) for p in model.lighting.parameters() if p.grad is not None)
    assert (grad > 0) == bg_gets_diffusion_gradient, grad
    assert "align_loss" in logs


def test_alignment_warmup_scales_the_alignment_term():
    torch.manual_seed(0)
    model = RelightModel(micro_model_config())
    for conv in list(model.lighting.out) + list(model.panorama.out):
        torch.nn.init.normal_(conv.weight, std=0.1)
    objective = StageObjective(model, 2, align_weight=1.0, prediction_type="sample")
    batch = _stage2_batch(model)
    ones, noise, t = torch.ones(4), torch.zeros_like(batch["target"]), torch.full((4,), 500)
    with torch.no_grad():
        full, logs = objective(batch, noise, t, ones, ones)
        objective.align_scale = 0.25
        quarter, _ = objective(batch, noise, t, ones, ones)
    diffusion, align = float(logs["diffusion_loss"]), float(logs["align_loss"])
    assert align > 0
    assert float(full) == pytest.approx(diffusion + align, rel=1e-5)
    assert float(quarter) == pytest.approx(diffusion + 0.25 * align, rel=1e-5)


def test_gain_edit_multiplies_the_composite_in_linear_light():
    from relightful.models.codecs import from_model_space, to_model_space

    model = RelightModel(dataclasses.replace(micro_model_config(), residual=True, edit="gain"))
    linear = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 0.45
    composite = model.codec.encode(to_model_space(linear))
    log_gain = torch.zeros(2, 3, 32, 32)
    log_gain[0] = torch.log(torch.tensor(2.0))      # a uniform exposure change: one constant
    log_gain[1, 0] = torch.log(torch.tensor(0.5))   # a colour change: red halved
    out = from_model_space(model.codec.decode(model.apply_gain(composite, model.codec.encode(log_gain))))
    torch.testing.assert_close(out[0], 2 * linear[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out[1, 1:], linear[1, 1:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1, 0], 0.5 * linear[1, 0], atol=1e-5, rtol=1e-4)
    huge = model.apply_gain(composite, model.codec.encode(torch.full_like(log_gain, 50.0)))
    ratio = from_model_space(model.codec.decode(huge)) / linear.clamp_min(1e-3)
    assert float(ratio.max()) <= 16.0 + 1e-3           # bounded like the harmonizer's gain field


def test_gain_edit_is_refused_where_it_means_nothing():
    with pytest.raises(ValueError, match="edit"):
        RelightModel(dataclasses.replace(micro_model_config(), residual=True, edit="multiply"))


def _noisy_model_and_inputs():
    """A micro gain-edit model whose output visibly depends on the noise, and two 32-px linear inputs."""
    torch.manual_seed(0)
    model = RelightModel(dataclasses.replace(micro_model_config(), residual=True, edit="gain"))
    for p in model.unet.conv_out.parameters():  # an untrained UNet outputs ~0: give the noise a visible effect
        torch.nn.init.normal_(p, std=0.3)
    g = torch.Generator().manual_seed(1)
    comp, matte, bg = torch.rand(2, 3, 32, 32, generator=g), torch.rand(2, 1, 32, 32, generator=g), torch.rand(
        2, 3, 32, 32, generator=g)
    return model, comp, matte, bg


def test_sampling_ensemble_averages_the_draws_of_one_batch():
    from relightful.models.harmonizer import Harmonizer

    model, comp, matte, bg = _noisy_model_and_inputs()
    defaults = {"steps": 1, "image_guidance": 1.0, "lighting_guidance": 1.0}
    single = Harmonizer(model, defaults=defaults)
    three = Harmonizer(model, defaults={**defaults, "ensemble": 3})
    rep = lambda x: x.repeat(3, 1, 1, 1)
    with torch.no_grad():
        members = single.generate(rep(comp), rep(matte), rep(bg), 1, 7, 1.0, 1.0).view(3, 2, 3, 32, 32)
        averaged = three.generate(comp, matte, bg, 1, 7, 1.0, 1.0)
    assert float((members[0] - members[1]).abs().max()) > 1e-3  # the draws differ
    torch.testing.assert_close(averaged, members.mean(dim=0), atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="ensemble"):
        Harmonizer(model, defaults={**defaults, "ensemble": 0})


def test_mirrored_ensemble_relights_half_the_draws_mirrored_and_mirrors_them_back():
    """`mirror_ensemble`: of 4 draws, 2 see the inputs and 2 their left-right mirrors (same noise rows as 4 plain
    draws of [x, mirror(x)] twice); the mirrored outputs are mirrored back before the mean."""
    from relightful.models.harmonizer import Harmonizer

    model, comp, matte, bg = _noisy_model_and_inputs()
    defaults = {"steps": 1, "image_guidance": 1.0, "lighting_guidance": 1.0}
    single = Harmonizer(model, defaults=defaults)
    mirrored = Harmonizer(model, defaults={**defaults, "ensemble": 4, "mirror_ensemble": True})
    both = lambda x: torch.cat([x, x.flip(-1)]).repeat(2, 1, 1, 1)
    with torch.no_grad():
        members = single.generate(both(comp), both(matte), both(bg), 1, 7, 1.0, 1.0).view(2, 2, 2, 3, 32, 32)
        averaged = mirrored.generate(comp, matte, bg, 1, 7, 1.0, 1.0)
    assert float((members[:, 0] - members[:, 1].flip(-1)).abs().max()) > 1e-3  # the two views differ
    expected = torch.cat([members[:, 0], members[:, 1].flip(-1)]).mean(dim=0)
    torch.testing.assert_close(averaged, expected, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="even"):
        Harmonizer(model, defaults={**defaults, "ensemble": 3, "mirror_ensemble": True})


def test_shading_loss_ignores_the_level_and_sees_the_shape():
    """The level-free shading term: zero for the true relighting, the same for a no-op edit and for the right
    overall level with the wrong shape (the level is not its business), and it reaches the total loss."""
    from relightful.models.codecs import to_model_space

    model = RelightModel(dataclasses.replace(micro_model_config(), residual=True, edit="gain"))
    objective = StageObjective(model, 1, prediction_type="sample", zero_snr=True, shading_weight=0.5,
                               shading_sigma=1.0)
    g = torch.Generator().manual_seed(0)
    linear = torch.rand(2, 3, 32, 32, generator=g) * 0.4 + 0.1
    matte = torch.zeros(2, 1, 32, 32)
    matte[..., 6:26, 6:26] = 1.0
    shape = torch.exp(torch.linspace(-0.6, 0.6, 32)).view(1, 1, 1, 32)   # light moving from left to right
    relit = linear * shape * 1.7
    comp, target = (model.codec.encode(to_model_space(x)) for x in (linear, relit))
    latent_matte = model.matte_latent(matte)
    edit = lambda log_gain: model.codec.encode(log_gain.expand(2, 3, 32, 32))
    true = float(objective.shading_loss(comp, target, latent_matte, edit(torch.log(shape * 1.7))))
    none = float(objective.shading_loss(comp, target, latent_matte, edit(torch.zeros(1, 1, 1, 1))))
    level = float(objective.shading_loss(comp, target, latent_matte, edit(torch.full((1, 1, 1, 1), 1.7).log())))
    assert true < 0.02 * none
    assert level == pytest.approx(none, rel=1e-3)
    batch = {"target": target, "composite": comp, "matte": latent_matte, "background": torch.rand(2, 3, 32, 32)}
    ones = torch.ones(2)
    with torch.no_grad():
        loss, logs = objective(batch, torch.randn_like(target), torch.full((2,), 999), ones, ones)
    assert float(logs["shading_loss"]) > 0
    assert float(loss) == pytest.approx(float(logs["diffusion_loss"]) + 0.5 * float(logs["shading_loss"]), rel=1e-5)


def test_shading_loss_needs_a_gain_edit():
    model = RelightModel(micro_model_config())
    with pytest.raises(ValueError, match="shading_weight"):
        StageObjective(model, 1, prediction_type="sample", shading_weight=1.0)


def test_mean_light_direction_points_at_the_light():
    from relightful.lighting.envmap import latlong_directions
    from relightful.training.light_probe import mean_light_direction

    env = torch.zeros(16, 32, 3)
    env[5, 20] = torch.tensor([2.0, 1.0, 0.5])  # one coloured light
    light = torch.from_numpy(latlong_directions(16))[5, 20]
    assert torch.allclose(mean_light_direction(env), light, atol=1e-6)
    x, y, z = light  # the map turned by 90° about the vertical axis turns the direction with it
    assert torch.allclose(mean_light_direction(env, 90.0), torch.stack([-z, y, x]), atol=1e-5)
    assert float(mean_light_direction(torch.ones(16, 32, 3)).norm()) < 1e-6  # no direction in a uniform map


def test_light_probe_reads_the_unet_and_learns_both_lightings():
    """The probe's error joins the loss of stages 1-2, trains the UNet as well as the head, drops out where a batch has
    no light directions (natural pairs), and a few steps on one batch learn the directions."""
    torch.manual_seed(0)
    model = RelightModel(micro_model_config())
    set_trainable(model, 1)
    objective = StageObjective(model, 1, prediction_type="sample", light_probe_weight=2.0)
    batch = _stage2_batch(model)
    batch["light"] = torch.nn.functional.normalize(torch.randn(4, 2, 3), dim=-1).view(4, 6) * 0.5
    ones, noise, t = torch.ones(4), torch.randn_like(batch["target"]), torch.full((4,), 999)
    loss, logs = objective(batch, noise, t, ones, ones)
    wanted = float(logs["diffusion_loss"]) + 2.0 * float(logs["light_probe_loss"])
    assert float(loss.detach()) == pytest.approx(wanted, rel=1e-5)
    loss.backward()
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in model.unet.down_blocks.parameters())
    natural = {k: v for k, v in batch.items() if k not in ("panorama", "light")}
    assert "light_probe_loss" not in objective(natural, noise, t, ones, ones)[1]
    params = [p for p in objective.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=3e-3)
    first = float(logs["light_probe_loss"])
    for _ in range(60):
        optimizer.zero_grad()
        loss, logs = objective(batch, noise, t, ones, ones)
        loss.backward()
        optimizer.step()
    assert float(logs["light_probe_loss"]) < 0.1 * first
    with pytest.raises(ValueError, match="stages 1-2"):
        StageObjective(model, 3, prediction_type="sample", light_probe_weight=1.0)
    assert not any("light_probe" in name for name in model.state_dict())  # a training aid, not part of the model

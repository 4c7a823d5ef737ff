"""The evaluation's methods against known answers: the gain regression, the shading baseline, the reference bounds,
the panoramas of model_panorama, the margins / headroom / quality bar, and `relightful evaluate --compare`."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import micro_model_config
from relightful.evaluation.bounds import best_of, least_squares_gain, oracle_gain, oracle_shading, target_image
from relightful.evaluation.gain_regression import (FEATURE_NAMES, GainRegression, colour_features,
                                                   fit_gain_regression, training_set)
from relightful.evaluation.light_direction import angle_deg, dominant_light_direction
from relightful.evaluation.methods import METHODS, method_order
from relightful.evaluation.metrics import psnr
from relightful.evaluation.pairs import Panoramas, deliver, iter_batches, select_pairs
from relightful.evaluation.shading import (ELEVATION_PRIOR, KEY_TO_FILL, REFLECTANCE, background_lighting,
                                           pinhole_rays, reshade, source_lighting)
from relightful.evaluation.summary import headroom_share, margins, quality_bar, stage_comparison


def _sphere(direction, size: int = 48, albedo=(0.6, 0.5, 0.4), ambient: float = 0.02, radius: float = 0.8):
    """fg (1, 3, S, S) of a Lambertian sphere lit from `direction`, and its matte (1, 1, S, S)."""
    c = (torch.arange(size, dtype=torch.float64) + 0.5) / size * 2 - 1
    y, x = torch.meshgrid(-c / radius, c / radius, indexing="ij")
    r2 = x ** 2 + y ** 2
    matte = (r2 < 1).double()
    n = torch.stack([x, y, (1 - r2).clamp_min(0).sqrt()], dim=0)
    d = torch.tensor(direction, dtype=torch.float64)
    shade = (torch.einsum("chw,c->hw", n, d / d.norm()).clamp_min(0) / math.pi + ambient) * matte
    return torch.stack([a * shade for a in albedo])[None], matte[None, None]


# --- gain regression -----------------------------------------------------------------------------------------------

def test_colour_features_are_log_means_of_the_regions():
    size = 32
    bg = torch.zeros(1, 3, size, size, dtype=torch.float64)
    bg[..., : size // 2] = torch.tensor([0.2, 0.3, 0.4]).view(3, 1, 1)      # left half
    bg[..., size // 2:] = torch.tensor([0.8, 0.6, 0.1]).view(3, 1, 1)      # right half
    m = torch.zeros(1, 1, size, size, dtype=torch.float64)
    m[..., 8:24, 12:20] = 1  # 4 columns in each half, the same rows: the visible halves keep equal weight
    fg = torch.full((1, 3, size, size), 0.25, dtype=torch.float64)
    f = colour_features(fg, m, bg)[0]
    assert f.shape == (len(FEATURE_NAMES),) == (18,)
    left, right = np.log([0.2, 0.3, 0.4]), np.log([0.8, 0.6, 0.1])
    np.testing.assert_allclose(f[3:6], left, atol=1e-9)
    np.testing.assert_allclose(f[6:9], right, atol=1e-9)
    np.testing.assert_allclose(f[0:3], np.log((np.exp(left) + np.exp(right)) / 2), atol=1e-9)
    np.testing.assert_allclose(f[9:12], f[12:15], atol=1e-9)   # top and bottom halves see both colours alike
    np.testing.assert_allclose(f[15:], np.log(0.25), atol=1e-9)


def test_gain_regression_recovers_a_linear_law_and_generalises():
    rng = np.random.default_rng(0)
    w = torch.from_numpy(rng.normal(0, 0.1, (18, 3)))  # log gains well inside the ±4-stop clamp
    x_train, x_test = (torch.from_numpy(rng.normal(0, 1, (n, 18))) for n in (300, 50))
    law = lambda x: torch.exp(x @ w + torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64))
    model = GainRegression().fit(x_train, law(x_train))
    assert model.lam == min(model.lambdas)  # noise-free: leave-one-out wants the least regularisation
    np.testing.assert_allclose(model.predict(x_test).log(), law(x_test).log(), atol=0.02)


def test_gain_regression_shrinks_towards_the_mean_when_features_say_nothing():
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.normal(0, 1, (60, 18)))
    log_g = torch.from_numpy(rng.normal(0, 0.5, (60, 3)))
    model = GainRegression().fit(x, log_g.exp())
    assert model.lam > 1.0  # pure noise: leave-one-out picks heavy regularisation
    pred = model.predict(torch.from_numpy(rng.normal(0, 1, (200, 18)))).log()
    assert float(pred.std(0).max()) < 0.15 * float(log_g.std(0).min())
    np.testing.assert_allclose(pred.mean(0), log_g.mean(0), atol=0.05)


def test_gain_regression_is_fitted_on_train_pairs_only(rendered_pairs: Path, tmp_path: Path):
    pairs = tmp_path / "pairs"
    shutil.copytree(rendered_pairs, pairs)
    manifest = pd.read_parquet(pairs / "manifest.parquet")
    train_shards = set(manifest.loc[manifest.split == "train", "shard"])
    held_out = set(manifest.loc[manifest.split != "train", "shard"]) - train_shards
    assert held_out
    for shard in held_out:  # a fit that touched a val/test shard would fail or record it
        (pairs / shard).write_bytes(b"not a safetensors file")
    skipped: dict = {}
    model, why = fit_gain_regression(pairs, skipped=skipped)
    assert why == "" and skipped == {} and model.n_train == int((manifest.split == "train").sum()) == 64
    features, gains = training_set(pairs, max_pairs=10)
    assert features.shape == (10, 18) and gains.shape == (10, 3)  # a bounded sample


def test_gain_regression_beats_paste_on_its_training_pairs(rendered_pairs: Path):
    model, _ = fit_gain_regression(rendered_pairs)
    rows = select_pairs(rendered_pairs, "train", 64)
    ours, paste = [], []
    for _, t in iter_batches(rendered_pairs, rows, 32, False):
        target = target_image(t["x_b"], t["matte"], t["y_b"])
        for out, fg in ((ours, model.relight(t["x_a"], t["matte"], t["y_b"])), (paste, t["x_a"])):
            out.append(psnr(deliver(fg, t["matte"], t["y_b"]), target, t["matte"]))
    ours, paste = torch.cat(ours).mean().item(), torch.cat(paste).mean().item()
    assert ours > paste + 1.5, (ours, paste)  # measured: 15.7 vs 13.2 dB


# --- shading -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("direction", [(1, 0, 0.5), (-0.6, 0.5, 0.7), (0.2, -0.4, 1.0), (0, 0.9, 0.4)])
def test_shading_source_lighting_recovers_a_spheres_light(direction):
    fg, m = _sphere(direction)
    src = source_lighting(fg, m)
    assert bool(src["ok"][0])
    assert angle_deg(src["direction"][0].numpy(), np.asarray(direction) / np.linalg.norm(direction)) < 10.0
    assert src["ambient"][0].item() == pytest.approx(0.02 * 0.51, rel=0.3)  # luminance of albedo × ambient


def test_shading_finds_a_light_in_view_where_it_is():
    size = 48
    bg = torch.full((1, 3, size, size), 0.1, dtype=torch.float64)
    bg[..., 10:13, 34:37] = 50.0                                   # a small bright lamp, up and to the right
    m = torch.zeros(1, 1, size, size, dtype=torch.float64)
    light = background_lighting(bg, m)
    rays, omega = pinhole_rays(size, size)
    expected = rays[10:13, 34:37].reshape(-1, 3).mean(0)
    assert bool(light["in_view"][0])
    assert angle_deg(light["direction"][0].numpy(), expected.numpy()) < 1.0
    assert light["direction"][0, 2] < 0                            # behind the subject: a backlight
    np.testing.assert_allclose(light["ambient"][0].numpy(), 0.1, rtol=1e-9)
    irradiance = float((omega[10:13, 34:37] * 49.9).sum() / math.pi)
    np.testing.assert_allclose(light["direct"][0].numpy(), irradiance, rtol=1e-6)


def test_shading_puts_an_unseen_light_behind_the_camera_on_the_bright_side():
    size = 48
    ramp = torch.linspace(0.6, 0.1, size, dtype=torch.float64)    # brighter on the left, no hot spot
    bg = ramp.view(1, 1, 1, size).expand(1, 3, size, size).clone()
    light = background_lighting(bg, torch.zeros(1, 1, size, size))
    d = light["direction"][0]
    assert not bool(light["in_view"][0]) and d[0] < -0.2 and d[2] > 0.5 and d[1] > 0  # left, in front, above
    flipped = background_lighting(bg.flip(-1), torch.zeros(1, 1, size, size))["direction"][0]
    np.testing.assert_allclose(flipped.numpy(), d.numpy() * np.array([-1, 1, 1]), atol=1e-9)
    uniform = background_lighting(torch.full_like(bg, 0.3), torch.zeros(1, 1, size, size))
    np.testing.assert_allclose(uniform["direction"][0].numpy(),
                               np.array([0, ELEVATION_PRIOR, 1]) / math.hypot(ELEVATION_PRIOR, 1), atol=1e-9)


def test_shading_moves_the_light_to_the_backgrounds():
    """A sphere lit from the left over a background brightest on the right comes out lit from the estimated target
    light, with the target's colour, at the light level the module docstring derives."""
    size = 48
    fg, m = _sphere((-1, 0.2, 0.6), size)
    ramp = torch.linspace(0.05, 0.5, size, dtype=torch.float64)
    bg = ramp.view(1, 1, 1, size) * torch.tensor([1.0, 0.8, 0.5], dtype=torch.float64).view(1, 3, 1, 1)
    bg = bg.expand(1, 3, size, size).clone()
    out = reshade(fg, m, bg)
    target = background_lighting(bg, m)["direction"][0].numpy()
    assert target[0] > 0.3
    found, _ = dominant_light_direction(out[0], m[0, 0])
    assert angle_deg(found, target) < 12.0 and angle_deg(found, np.array([-1, 0.2, 0.6])) > 45
    ratio = (out / fg.clamp_min(1e-12))[m.expand_as(out) > 0]
    assert float(ratio.min()) >= 1 / 16 - 1e-12 and float(ratio.max()) <= 16 + 1e-9
    chroma = lambda x: (x * m).sum((2, 3))[0] / (x * m).sum()
    assert chroma(out)[2] < chroma(fg)[2]  # the warm background warms the subject
    # the light level: a uniform background of radiance 0.3 is ambient 0.3 plus an unseen key light of the same
    # E/π from d_t (KEY_TO_FILL), times ρ₀ and the subject's relative albedo (albedo / its luminance, 0.514)
    sphere, mask = _sphere((0, 0, 1), size, ambient=0.0)
    flat = reshade(sphere, mask, torch.full((1, 3, size, size), 0.3, dtype=torch.float64))
    d_t = torch.tensor([0, ELEVATION_PRIOR, 1], dtype=torch.float64) / math.hypot(ELEVATION_PRIOR, 1)
    c = (torch.arange(size, dtype=torch.float64) + 0.5) / size * 2 - 1
    y, x = torch.meshgrid(-c / 0.8, c / 0.8, indexing="ij")
    n = torch.stack([x, y, (1 - x ** 2 - y ** 2).clamp_min(0).sqrt()], dim=-1)
    inside = mask[0, 0] > 0
    expected = REFLECTANCE * 0.3 * (1 + KEY_TO_FILL * (n[inside] @ d_t).clamp_min(0)).mean() * 0.5 / 0.514
    assert flat.permute(0, 2, 3, 1)[0][inside].mean().item() == pytest.approx(expected.item(), rel=0.1)


# --- reference bounds ----------------------------------------------------------------------------------------------

def test_least_squares_gain_recovers_a_known_gain():
    fg, m = _sphere((0.3, 0.4, 1.0))
    g = torch.tensor([1.7, 0.8, 0.35], dtype=torch.float64)
    np.testing.assert_allclose(least_squares_gain(fg, fg * g.view(1, 3, 1, 1), m)[0].numpy(), g.numpy(), rtol=1e-5)
    np.testing.assert_allclose(least_squares_gain(torch.zeros_like(fg), fg, m)[0].numpy(), 1.0)  # black: gain 1


def test_best_of_takes_the_candidate_with_the_lowest_delivered_error():
    fg, m = _sphere((0.3, 0.4, 1.0))
    bg = torch.full_like(fg, 0.2)
    x_b = fg * 1.5
    picked, choice = best_of([fg * 3.0, x_b, fg], m, bg, target_image(x_b, m, bg))
    assert choice.tolist() == [1] and torch.equal(picked, x_b)


def test_bounds_are_ordered_per_pair_on_rendered_pairs(rendered_pairs: Path):
    """On every pair: fg PSNR of oracle_shading ≥ oracle_gain ≥ composite (by construction, module docstring of
    bounds.py), and on average each bound is a real step up (measured on these 96 pairs: 14.8, 29.5, 38.6 dB). The
    pure formulas alone would break the order: the linear least-squares gain loses to gain 1 on 7 of these pairs
    after 8-bit sRGB delivery, the σ = 1 field loses to the global gain on 20."""
    rows = pd.concat([select_pairs(rendered_pairs, split, 64) for split in ("train", "val", "test")])
    scores = {"composite": [], "oracle_gain": [], "oracle_shading": []}
    for _, t in iter_batches(rendered_pairs, rows, 32, False):
        fg, m, bg, x_b = t["x_a"], t["matte"], t["y_b"], t["x_b"]
        target = target_image(x_b, m, bg)
        for name, layer in (("composite", fg), ("oracle_gain", oracle_gain(fg, x_b, m, bg)),
                            ("oracle_shading", oracle_shading(fg, x_b, m, bg, sigma=1.0))):
            scores[name].append(psnr(deliver(layer, m, bg), target, m))
    s = {k: torch.cat(v) for k, v in scores.items()}
    assert len(s["composite"]) == 96
    assert bool((s["oracle_gain"] >= s["composite"]).all())
    assert bool((s["oracle_shading"] >= s["oracle_gain"]).all())
    assert s["oracle_gain"].mean() > s["composite"].mean() + 5
    assert s["oracle_shading"].mean() > s["oracle_gain"].mean() + 3


# --- model_panorama ------------------------------------------------------------------------------------------------

def test_panoramas_are_built_exactly_as_training_builds_them(rendered_pairs: Path):
    from relightful.io import load_tensors
    from relightful.models import RelightModel
    from relightful.training.data import encode_shard

    manifest = pd.read_parquet(rendered_pairs / "manifest.parquet")
    rows = manifest[manifest.shard == manifest.shard.iloc[0]].sort_values("index").iloc[:5]
    model = RelightModel(micro_model_config(32))
    cache = encode_shard(load_tensors(rendered_pairs / rows.shard.iloc[0]), rows, model,
                         load_tensors(rendered_pairs / "envmaps.safetensors"))
    ours = Panoramas.from_pairs(rendered_pairs)(rows)
    assert ours.shape == (5, 3, 8, 16) and torch.equal(ours, cache["panorama"].float())


def test_relight_batch_conditions_on_the_panorama_when_given(rendered_pairs: Path):
    from relightful.models import RelightModel
    from relightful.models.harmonizer import Harmonizer

    torch.manual_seed(0)
    model = RelightModel(micro_model_config(32))
    with torch.no_grad():  # non-zero output projections, so that the lighting features change the result
        for p in list(model.panorama.parameters()) + list(model.lighting.parameters()):
            p.add_(0.05 * torch.randn_like(p))
    h = Harmonizer(model, defaults={"steps": 2})
    rows = select_pairs(rendered_pairs, "test", 2)
    _, t = next(iter_batches(rendered_pairs, rows, 2, False))
    z = Panoramas.from_pairs(rendered_pairs)(rows)
    calls = []
    original = model.panorama_features
    model.panorama_features = lambda pano: calls.append(pano) or original(pano)
    with_pano = h.relight_batch(t["x_a"], t["matte"], t["y_b"], 0, panorama=z)
    assert len(calls) == 1 and torch.equal(calls[0], z)
    plain = h.relight_batch(t["x_a"], t["matte"], t["y_b"], 0)
    assert len(calls) == 1  # the plain call uses F_bg
    assert (with_pano - plain).abs().max() > 1e-4


# --- margins, headroom, the quality bar ----------------------------------------------------------------------------

def _summary(model_psnr: float, gain_psnr: float, err: float = 20.0, shading: float = 14.5) -> dict:
    base = {"composite": 15.0, "reinhard": 14.0, "histogram": 13.5, "gain_regression": gain_psnr, "shading": shading}
    out = {k: {"fg_psnr": v, "fg_ssim": 0.5, "light_dir_err_deg": 40.0} for k, v in base.items()}
    out["model"] = {"fg_psnr": model_psnr, "fg_ssim": 0.6, "light_dir_err_deg": err}
    out["oracle_shading"] = {"fg_psnr": 25.0, "fg_ssim": 0.9, "light_dir_err_deg": 5.0}
    return out


def test_margins_cover_every_baseline_and_the_headroom_share():
    s = _summary(19.0, 17.0)
    lead = margins(s)
    assert len(lead) == 3 * 5
    assert lead["fg_psnr_vs_gain_regression"] == pytest.approx(2.0)
    assert lead["light_dir_err_deg_vs_shading"] == pytest.approx(20.0)  # an error: baseline − model
    assert headroom_share(s) == pytest.approx((19 - 15) / (25 - 15))
    assert headroom_share({k: v for k, v in s.items() if k != "oracle_shading"}) is None


@pytest.mark.parametrize("model_psnr, gain_psnr, err, shading, failing", [
    (19.0, 17.0, 20.0, 14.5, set()),                                               # everything passes
    (17.5, 16.0, 20.0, 14.5, {"fg PSNR − composite (dB)"}),                        # +2.5 dB over paste only
    (18.5, 17.8, 20.0, 14.5, {"fg PSNR − gain_regression (dB)"}),                  # +0.7 dB over the regression
    (19.0, 17.0, 20.0, 19.5, {"fg PSNR − shading (dB)"}),                          # the shading baseline is better
    (19.0, 17.0, 36.0, 14.5, {"light-direction error (°)"}),
])
def test_quality_bar_lists_each_condition_with_its_number(model_psnr, gain_psnr, err, shading, failing):
    s = _summary(model_psnr, gain_psnr, err, shading)
    bar = quality_bar({"methods": s, "margins": margins(s)})
    assert {c["condition"] for c in bar["conditions"] if not c["passed"]} == failing
    assert bar["passed"] == (not failing)
    assert len(bar["conditions"]) == 11 and ("PASSED" if not failing else "NOT MET") in bar["statement"]
    assert f"{model_psnr - 15.0:.3f}" in bar["statement"]


def test_quality_bar_fails_a_condition_it_could_not_measure():
    s = _summary(19.0, 17.0)
    del s["gain_regression"]
    bar = quality_bar({"methods": s, "margins": margins(s)})
    missing = [c for c in bar["conditions"] if c["value"] is None]
    assert len(missing) == 2 and not bar["passed"] and "not measured" in bar["statement"]


def test_method_order_puts_compared_models_after_the_panorama_model():
    names = ["oracle", "shading", "model_stage2", "composite", "model", "model_stage1", "model_panorama"]
    assert method_order(names) == ["composite", "model", "model_panorama", "model_stage2", "model_stage1",
                                   "shading", "oracle"]
    assert METHODS[-1] == "oracle" and len(METHODS) == 10


def test_stage_comparison_states_the_effect_of_the_alignment():
    s = {"model_stage1": {"fg_psnr": 16.0, "fg_ssim": 0.5, "light_dir_err_deg": 30.0},
         "model_stage2": {"fg_psnr": 17.5, "fg_ssim": 0.55, "light_dir_err_deg": 25.0}}
    c = stage_comparison(s)
    assert c["fg_psnr"]["stage2_minus_stage1"] == pytest.approx(1.5)
    assert "with and without stage 2's alignment" in c["statement"].lower() and "+1.500" in c["statement"]
    assert stage_comparison({"model_stage1": s["model_stage1"]}) is None


# --- the job -------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_models(tmp_path_factory) -> tuple[Path, Path]:
    from relightful.models import RelightModel

    root = tmp_path_factory.mktemp("compare-models")
    torch.manual_seed(0)
    RelightModel(micro_model_config(32)).save_pretrained(root / "a", extra={"sampling": {"steps": 2}})
    torch.manual_seed(1)
    other = RelightModel(micro_model_config(32))
    with torch.no_grad():
        for p in other.lighting.parameters():
            p.add_(0.05 * torch.randn_like(p))
    other.save_pretrained(root / "b", extra={"sampling": {"steps": 2}})
    return root / "a", root / "b"


def test_evaluate_compares_stage_models(rendered_pairs: Path, two_models, tmp_path: Path, capsys):
    from relightful.cli import main

    a, b = two_models
    out = tmp_path / "eval"
    code = main(["evaluate", "--model", str(a), "--pairs", str(rendered_pairs), "--out", str(out), "--quiet",
                 "--compare", f"stage1={a}", "--compare", f"stage2={b}", "--set", "max_pairs=4",
                 "--set", "n_visual=1"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    methods = metrics["lightstage"]["methods"]
    assert list(methods)[:5] == ["composite", "model", "model_panorama", "model_stage1", "model_stage2"]
    assert methods["model_stage1"] == methods["model"]  # the same model and seeds: the same numbers
    assert methods["model_stage2"]["fg_psnr"] != methods["model"]["fg_psnr"]
    comparison = metrics["lightstage"]["stage_comparison"]
    assert comparison["fg_psnr"]["stage2_minus_stage1"] == pytest.approx(
        methods["model_stage2"]["fg_psnr"] - methods["model_stage1"]["fg_psnr"], abs=1e-5)
    assert metrics["compare"] == {"stage1": str(a), "stage2": str(b)}
    page = (out / "report.html").read_text()
    assert "With and without stage 2&#x27;s alignment" in page or "With and without stage 2's alignment" in page
    assert "With and without stage 2's alignment" in capsys.readouterr().out
    assert set(pd.read_csv(out / "per_pair.csv").method) >= {"model_stage1", "model_stage2", "oracle_shading"}


@pytest.mark.parametrize("bad", ["stage1", "=models/x", "a b=models/x", "panorama=models/x"])
def test_evaluate_refuses_a_malformed_compare(rendered_pairs: Path, two_models, tmp_path: Path, bad, capsys):
    from relightful.cli import main

    code = main(["evaluate", "--model", str(two_models[0]), "--pairs", str(rendered_pairs), "--out",
                 str(tmp_path / "eval"), "--quiet", "--compare", bad])
    assert code != 0 and "--compare" in capsys.readouterr().err
    assert not (tmp_path / "eval" / "metrics.json").exists()

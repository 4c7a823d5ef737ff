"""Evaluation: metrics, baselines and the light-direction error against known answers; LPIPS from local weights;
`relightful evaluate` end to end on a handful of pairs."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from conftest import micro_model_config
from relightful.evaluation.baselines import histogram_match, lab_to_rgb, paste, reinhard, rgb_to_lab, RGB_TO_LMS
from relightful.evaluation.light_direction import dominant_light_direction, angle_deg, light_direction_errors
from relightful.evaluation.lpips import LPIPS
from relightful.evaluation.metrics import PSNR_CAP_DB, image_metrics, mse, psnr, ssim, ssim_map
from relightful.io import InputError, srgb_decode, srgb_encode


def _texture(seed: int, size: int = 48) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    smooth = torch.nn.functional.avg_pool2d(torch.from_numpy(rng.random((1, 3, size + 4, size + 4))), 5, 1)
    return 0.2 + 0.6 * smooth  # float64: the known answers below hold to 1e-9


def _half_matte(size: int = 48) -> torch.Tensor:
    m = torch.zeros(1, 1, size, size, dtype=torch.float64)
    m[..., : size // 2] = 1
    return m


# --- metrics -------------------------------------------------------------------------------------------------------

def test_identical_images_score_perfectly():
    x = _texture(0)
    scores = image_metrics(x, x, _half_matte())
    assert scores["mse"].item() == 0 and scores["fg_mse"].item() == 0
    assert scores["psnr"].item() == PSNR_CAP_DB and scores["fg_psnr"].item() == PSNR_CAP_DB
    assert scores["ssim"].item() == pytest.approx(1.0, abs=1e-12)
    assert scores["fg_ssim"].item() == pytest.approx(1.0, abs=1e-12)


def test_constant_offset_has_the_known_mse_psnr_and_ssim():
    x, c = _texture(1), 0.05
    y = x + c
    assert mse(y, x).item() == pytest.approx(c * c, rel=1e-9)
    assert psnr(y, x).item() == pytest.approx(10 * math.log10(1 / c**2), rel=1e-9)
    # constant images: only SSIM's luminance term is left, (2μxμy + C1) / (μx² + μy² + C1)
    flat = torch.full((1, 3, 32, 32), 0.4)
    c1 = 0.01**2
    expected = (2 * 0.4 * 0.45 + c1) / (0.4**2 + 0.45**2 + c1)
    assert ssim(flat + 0.05, flat).item() == pytest.approx(expected, rel=1e-6)


def test_foreground_metrics_weight_by_the_matte():
    x, m = _texture(2), _half_matte()
    y = x + 0.1 * m  # changed only inside the matte
    assert mse(y, x, m).item() == pytest.approx(0.01, rel=1e-9)
    assert mse(y, x).item() == pytest.approx(0.005, rel=1e-9)  # half the pixels
    soft = 0.5 * m  # a uniform soft matte weighs every foreground pixel alike
    assert mse(y, x, soft).item() == pytest.approx(0.01, rel=1e-9)


def test_ssim_of_a_known_blur_matches_scikit_image():
    from skimage.metrics import structural_similarity
    import cv2

    x = _texture(3, 64)
    img = x[0].permute(1, 2, 0).numpy().astype(np.float64)
    blurred = cv2.GaussianBlur(img, (0, 0), 1.2)
    ref = structural_similarity(img, blurred, channel_axis=2, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                use_sample_covariance=False)
    ours = ssim(torch.from_numpy(blurred).permute(2, 0, 1)[None], x.double()).item()
    assert ours == pytest.approx(ref, abs=1e-6)
    assert 0.3 < ours < 0.99
    assert ssim_map(x, x).shape == x.shape


# --- baselines -----------------------------------------------------------------------------------------------------

def test_paste_returns_the_foreground_unchanged():
    x = _texture(4)
    assert paste(x, _half_matte(), _texture(5)) is x


def test_lab_round_trip():
    x = _texture(6).double()
    assert torch.allclose(lab_to_rgb(rgb_to_lab(x)), x, atol=1e-9)


def test_reinhard_removes_a_uniform_tint():
    """The background holds the foreground's pixels under a uniform tint of the cone responses (a shift in lαβ);
    Reinhard's transfer must give the foreground exactly that tint."""
    size = 48
    fg_pixels = _texture(7, size).double()
    tint = torch.tensor([1.3, 0.9, 0.6], dtype=torch.float64)
    tinted = torch.einsum("ij,bjhw->bihw", torch.linalg.inv(RGB_TO_LMS) @ torch.diag(tint) @ RGB_TO_LMS, fg_pixels)
    m = _half_matte(size).double()
    fg = fg_pixels * m                                  # foreground: left half
    bg = tinted.roll(size // 2, dims=-1)                # background: the tinted left half, moved to the right half
    out = reinhard(fg, m, bg)
    left = (slice(None), slice(None), slice(None), slice(0, size // 2))
    assert torch.allclose(out[left], tinted[left], rtol=1e-6, atol=1e-9)


def test_histogram_matching_inverts_a_monotone_map():
    """Foreground values are the background's values squared (in sRGB, another order): matching gives them back."""
    size = 32
    rng = np.random.default_rng(8)
    values = torch.from_numpy(rng.random((1, 3, size, size // 2)))
    m = _half_matte(size).double()
    bg_s = torch.cat([torch.zeros_like(values), values], dim=-1)
    fg_s = torch.cat([values.flip(-2) ** 2, torch.zeros_like(values)], dim=-1)
    out = srgb_encode(histogram_match(srgb_decode(fg_s), m, srgb_decode(bg_s)))
    assert torch.allclose(out[..., : size // 2], values.flip(-2), atol=1e-9)


# --- light direction -----------------------------------------------------------------------------------------------

def _lit_sphere(direction, size: int = 64, albedo=(0.7, 0.5, 0.4)) -> tuple[np.ndarray, np.ndarray]:
    c = (np.arange(size) + 0.5) / size * 2 - 1
    x, y = np.meshgrid(c / 0.8, -c / 0.8)
    r2 = x**2 + y**2
    matte = (r2 < 1).astype(np.float64)
    normals = np.stack([x, y, np.sqrt(np.clip(1 - r2, 0, None))], axis=-1)
    d = np.asarray(direction, float) / np.linalg.norm(direction)
    shade = np.clip(normals @ d, 0, None) / np.pi + 0.02
    return np.stack([a * shade * matte for a in albedo]), matte


@pytest.mark.parametrize("direction", [(1, 0, 0.3), (0, 1, 0.5), (-0.5, -0.2, 1), (0.3, 0.2, -0.6), (0, 0, 1)])
def test_light_direction_of_a_sphere_lit_from_a_known_direction(direction):
    image, matte = _lit_sphere(direction)
    estimate, r2 = dominant_light_direction(image, matte)
    assert angle_deg(estimate, np.asarray(direction) / np.linalg.norm(direction)) < 3.5
    assert r2 > 0.8


def test_light_direction_error_is_the_angle_between_the_lights():
    a, b = (1.0, 0.2, 0.6), (-0.4, 0.5, 0.8)
    (img_a, matte), (img_b, _) = _lit_sphere(a), _lit_sphere(b)
    true = float(angle_deg(np.array(a), np.array(b)))
    t = lambda img: torch.from_numpy(img)[None].float()
    m = torch.from_numpy(matte)[None, None].float()
    errors = light_direction_errors({"other": t(img_a), "same": t(img_b)}, t(img_b), m)
    assert errors["other"][0] == pytest.approx(true, abs=3.0)
    assert errors["same"][0] == pytest.approx(0.0, abs=1e-9)


# --- LPIPS ---------------------------------------------------------------------------------------------------------

def test_lpips_from_local_weights(tmp_path: Path):
    torch.manual_seed(0)
    net = LPIPS()
    state = {k: (v.abs() if k.startswith("lin") else v).contiguous() for k, v in net.state_dict().items()}
    save_file(state, tmp_path / "lpips.safetensors")
    loaded = LPIPS.from_file(tmp_path / "lpips.safetensors")
    x = _texture(9, 64)
    noise = torch.randn_like(x)
    d = [loaded(x, (x + s * noise).clamp(0, 1)).item() for s in (0.0, 0.05, 0.2)]
    assert d[0] == 0.0 and 0 < d[1] < d[2]
    assert loaded(x, x + 0.1, spatial=True).shape == (1, 1, 64, 64)
    save_file({"lin0.model.1.weight": state["lin0.model.1.weight"]}, tmp_path / "partial.safetensors")
    with pytest.raises(InputError, match="partial.safetensors"):
        LPIPS.from_file(tmp_path / "partial.safetensors")


# --- the job -------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from relightful.models import RelightModel

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("eval-model") / "stage3"
    RelightModel(micro_model_config(32)).save_pretrained(folder, extra={"sampling": {"steps": 2}})
    return folder


def test_evaluate_writes_every_metric_baseline_and_the_report(rendered_pairs: Path, model_dir: Path, tmp_path: Path):
    from relightful.cli import main

    torch.manual_seed(0)
    net = LPIPS()
    save_file({k: (v.abs() if k.startswith("lin") else v).contiguous() for k, v in net.state_dict().items()},
              tmp_path / "lpips.safetensors")
    out = tmp_path / "eval"
    code = main(["evaluate", "--model", str(model_dir), "--pairs", str(rendered_pairs), "--subjects",
                 str(rendered_pairs.parent / "subjects"), "--out", str(out), "--quiet",
                 "--set", "max_pairs=6", "--set", "batch=4", "--set", "n_visual=3",
                 "--set", f"lpips_weights={tmp_path / 'lpips.safetensors'}"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    block = metrics["lightstage"]
    assert block["n_pairs"] == 6
    assert list(block["methods"]) == ["composite", "model", "model_panorama", "reinhard", "histogram",
                                      "gain_regression", "shading", "oracle_gain", "oracle_shading", "oracle"]
    for values in block["methods"].values():
        assert set(values) == {"mse", "psnr", "ssim", "fg_mse", "fg_psnr", "fg_ssim", "light_dir_err_deg", "lpips",
                               "fg_lpips"}
    oracle = block["methods"]["oracle"]
    assert oracle["fg_psnr"] > 45 and oracle["light_dir_err_deg"] < 1.0  # the renderer's answer: the upper bound
    assert set(block["margins"]) == {f"{m}_vs_{b}" for m in ("fg_psnr", "fg_ssim", "light_dir_err_deg")
                                     for b in ("composite", "reinhard", "histogram", "gain_regression", "shading")}
    summary = block["methods"]
    assert block["margins"]["fg_psnr_vs_gain_regression"] == pytest.approx(
        summary["model"]["fg_psnr"] - summary["gain_regression"]["fg_psnr"], abs=1e-5)
    assert block["margins"]["light_dir_err_deg_vs_shading"] == pytest.approx(
        summary["shading"]["light_dir_err_deg"] - summary["model"]["light_dir_err_deg"], abs=1e-5)
    assert block["headroom_share"] == pytest.approx(
        (summary["model"]["fg_psnr"] - summary["composite"]["fg_psnr"])
        / (summary["oracle_shading"]["fg_psnr"] - summary["composite"]["fg_psnr"]), abs=1e-5)
    assert metrics["lpips"]["computed"] and metrics["quality_bar"]["statement"]
    assert metrics["gain_regression"]["computed"] and metrics["gain_regression"]["n_train"] == 64
    assert metrics["model_panorama"]["computed"]
    conditions = {c["condition"]: c for c in metrics["quality_bar"]["conditions"]}
    assert conditions["fg PSNR − composite (dB)"]["value"] == block["margins"]["fg_psnr_vs_composite"]
    assert len(conditions) == 2 + 3 + 5 + 1  # PSNR +3 / +1 dB, PSNR and SSIM above each baseline, direction
    assert metrics["quality_bar"]["passed"] == all(c["passed"] for c in conditions.values())
    per_pair = pd.read_csv(out / "per_pair.csv")
    assert len(per_pair) == 6 * 10 and set(per_pair.scenario) == {"lightstage"}
    plot = pd.read_csv(out / "plots" / "lightstage_fg_psnr.csv")
    assert len(plot) == 6 and {"pair", "composite", "model", "oracle"} <= set(plot.columns)
    import cv2

    grid = cv2.imread(str(out / "grid.png"))
    assert grid is not None and grid.shape[1] == 11 * 128  # the 10 methods, then the target
    page = (out / "report.html").read_text()
    assert "data:image/png;base64," in page and "fg_psnr" in page
    assert "Quality bar (DESIGN 4)" in page and "share of the headroom" in page and "gain_regression fitted" in page


def test_evaluate_without_lpips_weights_says_why(rendered_pairs: Path, model_dir: Path, tmp_path: Path):
    from relightful.evaluation import EvalConfig, evaluate_model

    metrics = evaluate_model(model_dir, rendered_pairs, tmp_path / "eval", EvalConfig(max_pairs=2, n_visual=1))
    assert metrics["lpips"] == {"computed": False, "reason": metrics["lpips"]["reason"]}
    assert "not computed" not in metrics["lpips"]["reason"] and "weights" in metrics["lpips"]["reason"]
    assert "lpips" not in metrics["lightstage"]["methods"]["model"]
    assert "oracle" not in metrics["lightstage"]["methods"] and not metrics["oracle"]["computed"]
    assert "LPIPS: not computed" in (tmp_path / "eval" / "report.html").read_text()


def test_holdout_scores_are_the_models_metrics_on_the_same_pairs(rendered_pairs: Path, model_dir: Path):
    from relightful.evaluation import holdout_scores

    a = holdout_scores(model_dir, rendered_pairs, max_pairs=4)
    assert a == holdout_scores(model_dir, rendered_pairs, max_pairs=4)  # deterministic: same pairs, same seeds
    assert {"fg_psnr", "fg_ssim", "psnr", "ssim"} <= set(a)
    with pytest.raises(InputError, match="no 'nope' pairs"):
        holdout_scores(model_dir, rendered_pairs, split="nope")


def test_evaluate_scores_natural_pairs_against_the_real_photos(tmp_path: Path, model_dir: Path, rendered_pairs: Path):
    """Natural (stage-3) pairs from `augment` are scored too: the target is the photo, no oracle exists there."""
    from test_augment import CONFIG, _portrait

    from relightful.augment.augment_pairs import augment_pairs
    from relightful.evaluation import EvalConfig, evaluate_model

    portraits, backgrounds = tmp_path / "portraits", tmp_path / "backgrounds"
    for i in range(2):
        _portrait(portraits, f"p{i}", 32, 32, seed=i)
    from relightful.io import write_ldr

    for i in range(2):
        write_ldr(backgrounds / f"b{i}.png", np.full((40, 48, 3), 0.2 + 0.3 * i, np.float32))
    augment_pairs(portraits, backgrounds, model_dir, tmp_path / "natural", CONFIG, progress=False)
    manifest = pd.read_parquet(tmp_path / "natural" / "manifest.parquet")
    n_test = int((manifest.split == "test").sum())
    assert n_test > 0
    metrics = evaluate_model(model_dir, rendered_pairs, tmp_path / "eval", EvalConfig(max_pairs=3, n_visual=2),
                             natural_pairs=tmp_path / "natural")
    natural = metrics["natural"]
    assert natural["n_pairs"] == min(3, n_test)
    assert list(natural["methods"]) == ["composite", "model", "reinhard", "histogram", "gain_regression", "shading"]
    assert natural["headroom_share"] is None  # no oracle_shading without light-stage ground truth
    per_pair = pd.read_csv(tmp_path / "eval" / "per_pair.csv")
    assert set(per_pair.scenario) == {"lightstage", "natural"}
    assert (tmp_path / "eval" / "plots" / "natural_fg_psnr.csv").is_file()

    # the third scenario: every real portrait on every real background, at the portrait's resolution
    (portraits / "p1" / "matte.png").unlink()  # a portrait without a matte is named, the others still shown
    metrics = evaluate_model(model_dir, rendered_pairs, tmp_path / "eval-real", EvalConfig(max_pairs=1, n_visual=0),
                             portraits_dir=portraits, backgrounds_dir=backgrounds)
    real = metrics["real"]
    assert real["n_images"] == 2 and real["backgrounds"] == ["b0", "b1"] and real["portraits"] == {"p0": [32, 32]}
    assert "p1" in real["skipped"] and "matte.png" in real["skipped"]["p1"]
    import cv2

    shown = cv2.imread(str(tmp_path / "eval-real" / "real.jpg"))
    assert shown.shape[0] > 128 and shown.shape[1] >= 6 * 2 * 128
    page = (tmp_path / "eval-real" / "report.html").read_text()
    assert "real portraits on real backgrounds (2 images, no ground truth)" in page and "image/jpeg" in page


def test_evaluate_logs_to_the_run_that_registered_the_model(rendered_pairs: Path, model_dir: Path, tmp_path: Path,
                                                            monkeypatch):
    """DESIGN 3.8: evaluation logs its metrics to the candidate's run, found from the model folder by its digest."""
    from mlflow.tracking import MlflowClient

    from relightful.cli import main
    from relightful.tracking.registry import register_stage_model
    from relightful.tracking.runs import RunTracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # the embedded artifact store lands here
    with RunTracker.start("train-stage3") as run:
        version = register_stage_model(3, model_dir, run)
    code = main(["evaluate", "--model", str(model_dir), "--pairs", str(rendered_pairs), "--out",
                 str(tmp_path / "eval"), "--quiet", "--track", "--set", "max_pairs=2", "--set", "n_visual=1"])
    assert code == 0
    client = MlflowClient(uri)
    logged = client.get_run(version.run_id).data.metrics
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert logged["eval.lightstage.model.fg_psnr"] == pytest.approx(saved["lightstage"]["methods"]["model"]["fg_psnr"])
    assert {"eval.lightstage.composite.fg_ssim", "eval.lightstage.reinhard.psnr"} <= set(logged)
    assert "eval/metrics.json" in {f.path for f in client.list_artifacts(version.run_id, "eval")}
    registered = client.get_model_version("relightful-stage3", version.version)
    assert registered.tags["eval.quality_bar"] == str(saved["quality_bar"]["passed"])
    # the held-out figures in the version's description, once however often the model is evaluated
    model_psnr = saved["lightstage"]["methods"]["model"]["fg_psnr"]
    assert f"model fg PSNR {model_psnr:.2f} dB" in registered.description
    assert main(["evaluate", "--model", str(model_dir), "--pairs", str(rendered_pairs), "--out",
                 str(tmp_path / "eval"), "--quiet", "--track", "--set", "max_pairs=2", "--set", "n_visual=1"]) == 0
    again = client.get_model_version("relightful-stage3", version.version).description
    assert again == registered.description and again.count("## Held-out evaluation") == 1


def test_a_corrupt_shard_is_named_and_the_others_are_still_scored(rendered_pairs: Path, model_dir: Path,
                                                                   tmp_path: Path, capsys):
    from relightful.cli import main

    pairs = tmp_path / "pairs"
    shutil.copytree(rendered_pairs, pairs)
    train = pd.read_parquet(pairs / "manifest.parquet").query("split == 'train'")
    bad = sorted(train.shard.unique())[0]
    (pairs / bad).write_bytes(b"not a safetensors file")
    code = main(["evaluate", "--model", str(model_dir), "--pairs", str(pairs), "--out", str(tmp_path / "eval"),
                 "--quiet", "--set", "split=train", "--set", "max_pairs=12", "--set", "n_visual=0"])
    assert code == 1 and bad in capsys.readouterr().err
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    block = metrics["lightstage"]
    assert list(block["skipped_shards"]) == [str(pairs / bad)]
    kept = train[train.shard != bad]
    assert 0 < block["n_pairs"] < 12 and set(pd.read_csv(tmp_path / "eval" / "per_pair.csv").pair_id) <= set(kept.pair_id)

"""Inference: the Harmonizer pipeline, `--model` resolution (folders and MLflow URIs) and `relightful harmonize`."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from relightful.cli.inference import add_inference_parsers
from relightful.io import InputError, read_ldr, srgb_decode, srgb_encode, to_uint8, write_ldr, write_matte
from relightful.models import EncoderConfig, ModelConfig, RelightModel
from relightful.models.compositing import cover_canvas, cover_resize, uses_gain_field
from relightful.models.harmonizer import Harmonizer, combine_guidance
from relightful.models.schedule import TRAINING_NOISE
from relightful.tracking.model_uri import resolve_model

from conftest import micro_model_config

STEPS = 3


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("models") / "tiny"
    RelightModel(ModelConfig()).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def harmonizer(model_dir: Path) -> Harmonizer:
    return Harmonizer.from_pretrained(model_dir)


def disc_matte(height: int, width: int, radius: float = 0.4, soft: float = 0.05) -> np.ndarray:
    """A soft-edged ellipse: zeros, ones and fractional values."""
    yy, xx = np.mgrid[:height, :width]
    r = np.sqrt(((yy + 0.5) / height - 0.5) ** 2 + ((xx + 0.5) / width - 0.5) ** 2)
    return np.clip((radius - r) / soft, 0, 1).astype(np.float32)


def checker_detail(image: np.ndarray, mask: np.ndarray) -> float:
    """Amplitude of the 1-pixel checkerboard in `image` inside `mask` (its high-pass part projected on the ±1
    pattern), relative to the mean there: the input's finest detail, measured independently of a smooth gain and
    blind to other noise."""
    x = image.astype(np.float64)
    blur = sum(np.roll(np.roll(x, dy, 0), dx, 1) for dy in (-1, 0, 1) for dx in (-1, 0, 1)) / 9
    yy, xx = np.indices(image.shape[:2])
    sign = np.where((yy + xx) % 2, 1.0, -1.0)[..., None]
    return float(((x - blur) * sign)[mask].mean() / x[mask].mean())


# --- geometry and output contract ----------------------------------------------------------------------------------

def test_cover_resize_and_canvas_agree():
    bg = np.random.default_rng(0).integers(0, 256, (90, 160, 3), dtype=np.uint8)
    for size in [(40, 30), (30, 40), (200, 120)]:
        full, canvas = cover_canvas(bg, size, max(size))
        assert full.shape == (*size, 3) and canvas.shape == (max(size), max(size), 3)
        np.testing.assert_array_equal(full, cover_resize(bg, size))
        top, left = (max(size) - size[0]) // 2, (max(size) - size[1]) // 2
        np.testing.assert_array_equal(canvas[top:top + size[0], left:left + size[1]], full)
    np.testing.assert_array_equal(cover_resize(bg, (90, 160)), bg)  # same size: untouched


@pytest.mark.parametrize("size,bg_shape", [((40, 56), (30, 70)), ((96, 72), (480, 640))])
def test_output_size_and_exact_background(harmonizer: Harmonizer, size, bg_shape):
    rng = np.random.default_rng(1)
    fg = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    matte = disc_matte(*size)
    bg = rng.integers(0, 256, (*bg_shape, 3), dtype=np.uint8)
    out = harmonizer(fg, matte, bg, steps=STEPS)
    assert out.shape == (*size, 3) and out.dtype == np.uint8
    zero = matte == 0
    assert zero.sum() > 0.2 * zero.size and (matte == 1).any() and ((matte > 0) & (matte < 1)).any()
    np.testing.assert_array_equal(out[zero], cover_resize(bg, size)[zero])
    # a uint8 matte means the same as matte/255
    out8 = harmonizer(fg, to_uint8(matte), bg, steps=STEPS)
    np.testing.assert_array_equal(out8[zero], out[zero])


def test_seed_determinism(harmonizer: Harmonizer):
    rng = np.random.default_rng(2)
    fg, bg, matte = rng.integers(0, 256, (48, 48, 3), np.uint8), rng.integers(0, 256, (64, 80, 3), np.uint8), \
        disc_matte(48, 48)
    a = harmonizer(fg, matte, bg, steps=STEPS, seed=7)
    b = harmonizer(fg, matte, bg, steps=STEPS, seed=7)
    c = harmonizer(fg, matte, bg, steps=STEPS, seed=8)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(int) - c.astype(int))[matte == 1].mean() > 1.0


def test_bad_inputs_are_rejected(harmonizer: Harmonizer):
    fg = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="same size"):
        harmonizer(fg, np.zeros((32, 30), np.float32), fg)
    with pytest.raises(ValueError, match="non-finite"):
        harmonizer(fg, np.full((32, 32), np.nan, np.float32), fg)


# --- full resolution: the gain field -------------------------------------------------------------------------------

def detail_inputs(side: int = 256):
    yy, xx = np.mgrid[:side, :side]
    check = ((yy + xx) % 2).astype(np.float32)[..., None]           # a 1-pixel checkerboard: the finest detail
    base = np.stack([0.35 + 0.2 * xx / side, 0.3 + 0.1 * yy / side, np.full(xx.shape, 0.3)], axis=-1)
    fg = to_uint8((base * (0.8 + 0.4 * check)).astype(np.float32))
    matte = disc_matte(side, side, radius=0.4, soft=0.02)
    inner = disc_matte(side, side, radius=0.3, soft=1e-6) == 1
    bg = np.full((100, 150, 3), 90, np.uint8)
    return fg, matte, bg, inner


def test_gain_field_keeps_full_resolution_detail(harmonizer: Harmonizer, monkeypatch):
    """A 256² input on the 64² model: the fine checkerboard survives the gain field; upscaling the model's 64²
    output (the reference) would erase it."""
    fg, matte, bg, inner = detail_inputs()
    assert uses_gain_field(fg.shape[:2], harmonizer.model.config.image_size)
    out = harmonizer(fg, matte, bg, steps=STEPS)
    detail_in, detail_out = checker_detail(fg, inner), checker_detail(out, inner)
    monkeypatch.setattr("relightful.models.harmonizer.uses_gain_field", lambda size, image_size: False)
    upscaled = harmonizer(fg, matte, bg, steps=STEPS)
    detail_upscaled = checker_detail(upscaled, inner)
    print(f"relative checkerboard amplitude: input {detail_in:.3f}, gain field {detail_out:.3f}, "
          f"upscaled {detail_upscaled:.3f}")
    assert detail_out > 0.8 * detail_in
    assert abs(detail_upscaled) < 0.1 * detail_in


def test_gain_field_applies_a_uniform_relighting_exactly(harmonizer: Harmonizer, monkeypatch):
    """If the model darkens the whole composite by 0.5 (linear), the full-resolution foreground is darkened by
    exactly 0.5: the gain is a ratio of identically blurred images."""
    fg, matte, bg, inner = detail_inputs()
    original = Harmonizer.generate

    def half(self, composite, *args):
        original(self, composite, *args)  # run the model anyway: the path must work end to end
        return composite * 0.5

    monkeypatch.setattr(Harmonizer, "generate", half)
    out = harmonizer(fg, matte, bg, steps=1)
    expected = to_uint8(srgb_encode(srgb_decode(fg.astype(np.float32) / 255) * 0.5))
    assert np.abs(out[inner].astype(int) - expected[inner].astype(int)).max() <= 1


def test_gain_shape_scale_strengthens_the_relighting_keeping_level_and_colour():
    """A gain field of one colour times a spatial shape exp(ℓ): scaled by k, its log becomes mean + k·(ℓ − mean)
    inside the matte (matte-weighted mean), the channel ratios stay, and k = 1 returns the field untouched."""
    from relightful.models.compositing import scale_gain_shape

    g = torch.Generator().manual_seed(0)
    shape = 0.4 * torch.randn(2, 1, 16, 16, generator=g)
    colour = torch.tensor([1.2, 1.0, 0.7]).view(1, 3, 1, 1)
    gain = colour * shape.exp()
    matte = (torch.rand(2, 1, 16, 16, generator=g) > 0.3).float()
    assert scale_gain_shape(gain, matte, 1.0) is gain
    scaled = scale_gain_shape(gain, matte, 1.5)
    log_mean = gain.mean(dim=1, keepdim=True).log()
    mean = (log_mean * matte).sum(dim=(2, 3), keepdim=True) / matte.sum(dim=(2, 3), keepdim=True)
    torch.testing.assert_close(scaled.mean(dim=1, keepdim=True).log(), mean + 1.5 * (log_mean - mean))
    torch.testing.assert_close(scaled / scaled[:, 1:2], gain / gain[:, 1:2])  # the colour
    level = lambda x: (x.mean(dim=1, keepdim=True).log() * matte).sum(dim=(2, 3)) / matte.sum(dim=(2, 3))
    torch.testing.assert_close(level(scaled), level(gain))
    flat = scale_gain_shape(torch.full_like(gain, 2.0), matte, 3.0)  # no shape: nothing to strengthen
    torch.testing.assert_close(flat, torch.full_like(gain, 2.0))
    assert float(scale_gain_shape(gain * 1e3, matte, 50.0).max()) <= 16.0  # the gain's limits hold


def test_harmonizer_scales_the_shape_of_its_relighting(model_dir: Path, monkeypatch):
    """`sampling.gain_shape_scale` from the model folder: the output at the model's size is the input times the
    scaled gain (level and colour of the model's own), and it is refused unless positive."""
    rng = np.random.default_rng(5)
    fg, bg = rng.integers(40, 220, (64, 64, 3), np.uint8), rng.integers(0, 256, (64, 64, 3), np.uint8)
    matte = disc_matte(64, 64)

    def lit_from_the_left(self, composite, *args):  # a relighting with a shape: brighter on the left
        ramp = torch.linspace(1.6, 0.6, composite.shape[-1]).view(1, 1, 1, -1)
        return composite * ramp

    monkeypatch.setattr(Harmonizer, "generate", lit_from_the_left)
    plain = Harmonizer.from_pretrained(model_dir, defaults={"detail_sigma": 3.0})
    strong = Harmonizer.from_pretrained(model_dir, defaults={"detail_sigma": 3.0, "gain_shape_scale": 1.5})
    assert not Harmonizer.from_pretrained(model_dir).uses_gain and strong.uses_gain
    a, b = (srgb_decode(h(fg, matte, bg, steps=1).astype(np.float32) / 255) for h in (plain, strong))
    inner = matte > 0.99
    left, right = inner & (np.arange(64) < 24)[None], inner & (np.arange(64) > 40)[None]
    ratio = lambda x, where: float(x[where].mean())
    assert ratio(b, left) / ratio(b, right) > 1.2 * ratio(a, left) / ratio(a, right)
    with pytest.raises(ValueError, match="gain_shape_scale must be > 0"):
        Harmonizer.from_pretrained(model_dir, defaults={"gain_shape_scale": 0.0})


# --- classifier-free guidance --------------------------------------------------------------------------------------

def test_combine_guidance():
    g = torch.Generator().manual_seed(0)
    full, img, unc = (torch.randn(2, 12, 8, 8, generator=g) for _ in range(3))
    assert torch.equal(combine_guidance(full, img, unc, 1.0, 0.0), img)
    assert torch.equal(combine_guidance(None, img, None, 1.0, 0.0), img)  # passes that are not needed
    ones = torch.ones(1)
    out = combine_guidance(3 * ones, 1 * ones, 0 * ones, 1.5, 3.0)   # 0 + 1.5·(1−0) + 3·(3−1)
    assert out.item() == pytest.approx(7.5)
    torch.testing.assert_close(combine_guidance(full, img, unc, 2.0, 0.5),
                               unc + 2.0 * (img - unc) + 0.5 * (full - img))


def test_batched_guidance_equals_separate_passes(model_dir: Path):
    """The one-batch guidance (zero residuals for the passes without lighting) matches three separate calls with
    features=None, on a model whose F_bg is not zero."""
    model = RelightModel.from_pretrained(model_dir)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.lighting.parameters():
            p.add_(0.05 * torch.randn_like(p))
    rng = np.random.default_rng(3)
    fg, bg, matte = rng.integers(0, 256, (64, 64, 3), np.uint8), rng.integers(0, 256, (64, 64, 3), np.uint8), \
        disc_matte(64, 64)
    batched = Harmonizer(model)(fg, matte, bg, steps=2)
    separate = Harmonizer(model, batch_guidance=False)(fg, matte, bg, steps=2)
    assert np.abs(batched.astype(int) - separate.astype(int)).max() <= 1
    no_light = Harmonizer(model)(fg, matte, bg, steps=2, lighting_guidance=0.0)
    assert np.abs(no_light.astype(int) - batched.astype(int)).max() > 0  # the lighting pass does something


def test_any_diffusers_scheduler(model_dir: Path):
    from diffusers import EulerAncestralDiscreteScheduler

    model = RelightModel.from_pretrained(model_dir)
    scheduler = EulerAncestralDiscreteScheduler.from_config(TRAINING_NOISE)
    h = Harmonizer(model, scheduler)
    fg, matte = np.full((32, 32, 3), 120, np.uint8), disc_matte(32, 32)
    a, b = h(fg, matte, fg, steps=2, seed=3), h(fg, matte, fg, steps=2, seed=3)
    np.testing.assert_array_equal(a, b)  # a stochastic sampler is deterministic for a seed too


# --- model folders and URIs ----------------------------------------------------------------------------------------

def test_missing_model_folder(tmp_path: Path):
    with pytest.raises(InputError, match="missing-model"):
        Harmonizer.from_pretrained(tmp_path / "missing-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="relightful.json"):
        Harmonizer.from_pretrained(tmp_path / "empty")


def test_corrupt_encoders_file(model_dir: Path, tmp_path: Path):
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    (broken / "encoders.safetensors").write_bytes(b"\x00garbage, not safetensors" * 10)
    with pytest.raises(InputError, match="encoders.safetensors"):
        Harmonizer.from_pretrained(broken)


def test_weights_of_another_architecture(model_dir: Path, tmp_path: Path):
    other = ModelConfig(lighting=EncoderConfig(widths=(16, 32, 32)))
    RelightModel(other).save_pretrained(tmp_path / "other")
    mixed = tmp_path / "mixed"
    shutil.copytree(model_dir, mixed)
    shutil.copy(tmp_path / "other" / "encoders.safetensors", mixed / "encoders.safetensors")
    with pytest.raises(InputError, match="encoders.safetensors"):
        Harmonizer.from_pretrained(mixed)


def _with_scheduler(model_dir: Path, folder: Path, config: dict, version: int | None = None) -> Path:
    shutil.copytree(model_dir, folder)
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))
    if version is not None:
        meta = json.loads((folder / "relightful.json").read_text())
        (folder / "relightful.json").write_text(json.dumps({**meta, "version": version}))
    return folder


def test_scheduler_class_in_model_folder_is_honoured(model_dir: Path, tmp_path: Path):
    """The folder's `scheduler/` names the sampler: its class and settings are used as they are; without one,
    DDIM on the training betas."""
    from diffusers import DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler

    euler = _with_scheduler(model_dir, tmp_path / "euler", {"_class_name": "EulerDiscreteScheduler", **TRAINING_NOISE,
                                                            "beta_end": 0.02, "timestep_spacing": "trailing"})
    harmonizer = Harmonizer.from_pretrained(euler)
    assert type(harmonizer.scheduler) is EulerDiscreteScheduler and harmonizer.scheduler.config.beta_end == 0.02
    default = Harmonizer.from_pretrained(model_dir)
    assert type(default.scheduler) is DDIMScheduler and default.scheduler.config.beta_end == 0.012
    # the two samplers really differ: same inputs and seed, other pixels; each deterministic
    rng = np.random.default_rng(0)
    fg, bg = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    matte = np.zeros((32, 32), np.float32)
    matte[6:26, 8:24] = 1
    a, b = harmonizer(fg, matte, bg, steps=3, seed=1), default(fg, matte, bg, steps=3, seed=1)
    assert np.array_equal(a, harmonizer(fg, matte, bg, steps=3, seed=1)) and not np.array_equal(a, b)
    # a version-1 folder kept its *training* schedule (DDPM) there: only its betas count, under DDIM
    old = _with_scheduler(model_dir, tmp_path / "v1", {"_class_name": "DDPMScheduler", **TRAINING_NOISE,
                                                       "beta_end": 0.02}, version=1)
    assert type(Harmonizer.from_pretrained(old).scheduler) is DDIMScheduler
    assert Harmonizer.from_pretrained(old).scheduler.config.beta_end == 0.02
    ddpm = _with_scheduler(model_dir, tmp_path / "v2-ddpm", {"_class_name": "DDPMScheduler", **TRAINING_NOISE})
    assert type(Harmonizer.from_pretrained(ddpm).scheduler) is DDPMScheduler
    # not a scheduler: refused, naming the file
    bad = _with_scheduler(model_dir, tmp_path / "bad", {"_class_name": "UNet2DConditionModel", **TRAINING_NOISE})
    with pytest.raises(InputError, match=r"scheduler_config.json: _class_name 'UNet2DConditionModel' is not"):
        Harmonizer.from_pretrained(bad)


def test_resolve_model_from_mlflow_registry(model_dir: Path, tmp_path: Path, monkeypatch):
    pytest.importorskip("mlflow")
    from relightful.tracking.registry import register_stage_model
    from relightful.tracking.runs import RunTracker, make_client

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # no mlflow globals: they would leak into other tests
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    monkeypatch.chdir(tmp_path)                    # the embedded artifact store lands here
    with RunTracker.start("test") as run:
        version = register_stage_model(3, model_dir, run)
    make_client(uri).set_registered_model_alias("relightful-stage3", "champion", version.version)

    folder = resolve_model("models:/relightful-stage3@champion")
    assert (folder / "relightful.json").is_file()
    loaded, original = RelightModel.from_pretrained(folder), RelightModel.from_pretrained(model_dir)
    a, b = loaded.state_dict(), original.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resolve_model(f"runs:/{run.run_id}/model").joinpath("relightful.json").is_file()
    with pytest.raises(InputError, match="relightful-missing"):
        resolve_model("models:/relightful-missing@champion")
    assert resolve_model(str(model_dir)) == model_dir  # a folder is returned as is


# --- the command line ----------------------------------------------------------------------------------------------

def run_cli(argv: list[str]) -> int:
    """The part of relightful.cli.main that matters here: parse, run, map bad input to exit status 1."""
    parser = argparse.ArgumentParser(prog="relightful")
    add_inference_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (InputError, ValueError) as err:
        print(f"relightful {args.command}: error: {err}")
        return 1
    return 0


def test_cli_end_to_end(model_dir: Path, tmp_path: Path, capsys):
    rng = np.random.default_rng(4)
    fg, bg = tmp_path / "fg.png", tmp_path / "bg.jpg"
    write_ldr(fg, rng.uniform(0, 1, (40, 52, 3)).astype(np.float32))
    write_ldr(bg, rng.uniform(0, 1, (90, 120, 3)).astype(np.float32))
    matte = tmp_path / "matte.png"
    write_matte(matte, disc_matte(40, 52))
    out = tmp_path / "out" / "result.png"
    args = ["harmonize", "--model", str(model_dir), "--fg", str(fg), "--matte", str(matte), "--bg", str(bg),
            "--out", str(out), "--steps", "2", "--seed", "1", "--image-guidance", "1.2", "--lighting-guidance", "2",
            "--quiet", "--device", "cpu"]
    assert run_cli(args) == 0
    assert read_ldr(out).shape == (40, 52, 3)
    assert str(out) in capsys.readouterr().out

    small = tmp_path / "small-matte.png"
    write_matte(small, disc_matte(30, 52))
    bad = args.copy()
    bad[bad.index(str(matte))] = str(small)
    assert run_cli(bad) == 1
    message = capsys.readouterr().out
    assert "small-matte.png" in message and "fg.png" in message and "same size" in message

    missing = args.copy()
    missing[missing.index(str(bg))] = str(tmp_path / "nope.jpg")
    assert run_cli(missing) == 1
    assert "nope.jpg" in capsys.readouterr().out


def test_cli_refuses_an_input_over_the_pixel_limit_before_decoding(model_dir: Path, tmp_path: Path, capsys):
    rng = np.random.default_rng(5)
    fg, bg, matte = tmp_path / "fg.png", tmp_path / "big-bg.jpg", tmp_path / "matte.png"
    write_ldr(fg, rng.uniform(0, 1, (40, 52, 3)).astype(np.float32))
    write_ldr(bg, rng.uniform(0, 1, (1000, 1200, 3)).astype(np.float32))
    write_matte(matte, disc_matte(40, 52))
    args = ["harmonize", "--model", str(model_dir), "--fg", str(fg), "--matte", str(matte), "--bg", str(bg),
            "--out", str(tmp_path / "out.png"), "--steps", "1", "--quiet", "--device", "cpu"]
    assert run_cli(args + ["--max-pixels", "1000000"]) == 1
    message = capsys.readouterr().out
    assert "big-bg.jpg" in message and "1200x1000 is 1.2 MP, over the limit of 1 MP" in message
    assert not (tmp_path / "out.png").exists()
    assert run_cli(args + ["--max-pixels", "2000000"]) == 0
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    broken = args.copy()
    broken[broken.index(str(bg))] = str(tmp_path / "broken.png")
    assert run_cli(broken) == 1
    assert "broken.png" in capsys.readouterr().out


def test_only_the_matte_bounding_box_changes(harmonizer: Harmonizer):
    """Outside the matte's bounding box the output is the cover-resized background byte for byte; an empty matte
    returns that background unchanged."""
    rng = np.random.default_rng(6)
    fg = rng.integers(0, 256, (96, 80, 3), dtype=np.uint8)
    bg = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    matte = np.zeros((96, 80), np.float32)
    matte[30:70, 20:50] = 1.0
    out = harmonizer(fg, matte, bg, steps=1)
    expected_bg = cover_resize(bg, (96, 80))
    outside = np.ones((96, 80), bool)
    outside[30:70, 20:50] = False
    assert np.array_equal(out[outside], expected_bg[outside])
    assert not np.array_equal(out[30:70, 20:50], expected_bg[30:70, 20:50])
    assert np.array_equal(harmonizer(fg, np.zeros_like(matte), bg, steps=1), expected_bg)


def test_sampling_defaults_come_from_the_model_folder(tmp_path: Path, monkeypatch):
    torch.manual_seed(0)
    model = RelightModel(micro_model_config())
    model.save_pretrained(tmp_path / "m", extra={"sampling": {"steps": 3, "image_guidance": 1.0,
                                                              "lighting_guidance": 2.0}})
    h = Harmonizer.from_pretrained(tmp_path / "m")
    assert h.defaults == {"steps": 3, "image_guidance": 1.0, "lighting_guidance": 2.0}
    seen = {}
    real = h.sample

    def spy(composite, matte, features, steps, seed, s_img, s_light, progress=False, prior=None):
        seen.update(steps=steps, s_img=s_img, s_light=s_light)
        return real(composite, matte, features, steps, seed, s_img, s_light, progress, prior)

    monkeypatch.setattr(h, "sample", spy)
    fg = np.full((32, 32, 3), 128, np.uint8)
    h(fg, np.ones((32, 32), np.float32), fg)
    assert seen == {"steps": 3, "s_img": 1.0, "s_light": 2.0}
    h(fg, np.ones((32, 32), np.float32), fg, steps=2, lighting_guidance=0.0)
    assert seen == {"steps": 2, "s_img": 1.0, "s_light": 0.0}

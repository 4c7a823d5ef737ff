"""Messages, not tracebacks (issue 16, item 2): typed configs name the file and key; `--out` and `--device` are
checked before any work; an unreachable MLflow server fails in seconds naming the setting; credentials never reach
a message or a log; every image decoder is bounded in pixels from the header."""

from __future__ import annotations

import json
import logging
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from relightful.cli import main
from relightful.cli.common import JobFailed
from relightful.config import ConfigError, deep_merge, from_dict, load_config, read_params
from relightful.io import (InputError, check_pixels, read_hdr, read_ldr, read_matte, redact, write_hdr, write_ldr,
                           write_matte)
from relightful.models import ModelConfig, RelightModel
from relightful.tracking.http import HTTP_BOUNDS, bound_http_retries
from relightful.tracking.runs import TrackingError

from conftest import micro_model_config

ROOT = Path(__file__).resolve().parents[1]


# --- typed configs ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("values,message", [
    ({"image_size": "sixty-four"}, "model.image_size: expected a positive whole number, got 'sixty-four'"),
    ({"image_size": 0}, "model.image_size: expected a positive whole number, got 0"),
    ({"image_size": 63.5}, "model.image_size: expected a positive whole number, got 63.5"),
    ({"codec": {"factor": "x"}}, "model.codec.factor: expected a positive whole number, got 'x'"),
    ({"codec": "x"}, "model.codec: expected a mapping of CodecConfig settings, got 'x'"),
    ({"codec": {"vae_path": 3}}, "model.codec.vae_path: expected a string or null, got 3"),
    ({"unet": {"block_out_channels": [32, -64]}}, "model.unet.block_out_channels[1]: expected a positive whole number"),
    ({"unet": {"down_block_types": "DownBlock2D"}}, "model.unet.down_block_types: expected a list of strings"),
    ({"residual": "yes"}, "model.residual: expected true or false, got 'yes'"),
    ({"edit": 5}, "model.edit: expected a string, got 5"),
    ({"imagesize": 64}, "model: unknown key(s) ['imagesize']"),
])
def test_model_config_types_are_checked_with_the_key(values, message):
    with pytest.raises(ConfigError) as info:
        from_dict(ModelConfig, values, "model")
    assert message in str(info.value)


def test_config_numbers_keep_their_form_and_floats_written_like_1e_3_are_read():
    from relightful.training import TrainConfig

    cfg = from_dict(TrainConfig, {"steps": 10.0, "optim": {"lr": "1e-3", "betas": [0.9, 1]}}, "train")
    assert cfg.steps == 10 and type(cfg.steps) is int
    assert cfg.optim.lr == 1e-3 and cfg.optim.betas == (0.9, 1)  # an int stays an int (fingerprints, JSON)
    with pytest.raises(ConfigError, match=r"train\.optim\.lr: expected a number, got 'fast'"):
        from_dict(TrainConfig, {"optim": {"lr": "fast"}}, "train")
    with pytest.raises(ConfigError, match=r"train\.optim\.betas: expected a list of 2 numbers, got \[0\.9\]"):
        from_dict(TrainConfig, {"optim": {"betas": [0.9]}}, "train")
    with pytest.raises(ConfigError, match=r"train\.timestep_bias: timestep_bias\.strategy must be"):
        from_dict(TrainConfig, {"timestep_bias": {"strategy": "sideways"}}, "train")
    # counts that may be zero are not forced positive
    assert from_dict(TrainConfig, {"optim": {"warmup_steps": 0}}, "train").optim.warmup_steps == 0


def test_every_profile_of_params_yaml_passes_the_typed_check():
    """The checks refuse nothing the project's own params.yaml holds (every profile, every job's section)."""
    from relightful.augment import AugmentConfig, NaturalStarterConfig
    from relightful.data.ingest_hdr import IngestConfig
    from relightful.data.render_pairs import RenderConfig
    from relightful.data.starter_data import StarterConfig
    from relightful.data.validate_data import ValidationConfig
    from relightful.evaluation import EvalConfig
    from relightful.lightstage.synthetic_stage import SyntheticStageConfig
    from relightful.tracking.promotion import PromoteConfig
    from relightful.training import TrainConfig

    sections = {"model": ModelConfig, "starter_data": StarterConfig, "synthetic_stage": SyntheticStageConfig,
                "ingest_hdr": IngestConfig, "render_pairs": RenderConfig, "validate_data": ValidationConfig,
                "augment": AugmentConfig, "natural_starter": NaturalStarterConfig, "promote": PromoteConfig,
                "evaluate": EvalConfig}
    params, checked = read_params(ROOT / "params.yaml"), 0
    for profile, block in params.items():
        if not isinstance(block, dict):
            continue
        for name, values in block.items():
            if name in sections:
                from_dict(sections[name], values, name)
            elif name.startswith("train_stage"):
                from_dict(TrainConfig, deep_merge(block.get("train", {}), values), name)
            else:
                continue
            checked += 1
    assert checked >= 30


def test_params_file_and_set_override_are_named(tmp_path):
    from relightful.data.render_pairs import RenderConfig

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"profile": "p", "p": {"render_pairs": {"size": "big"}}}))
    with pytest.raises(InputError) as info:
        load_config(RenderConfig, params, "render_pairs")
    assert str(info.value) == f"{params}: render_pairs.size: expected a positive whole number, got 'big'"
    params.write_text(yaml.safe_dump({"profile": "p", "p": {"render_pairs": {"size": 64}}}))
    with pytest.raises(InputError) as info:
        load_config(RenderConfig, params, "render_pairs", ["plan.fov_range=[40, wide]"])
    assert str(info.value).startswith("--set plan.fov_range=[40, wide]: render_pairs.plan.fov_range[1]: expected a number")


@pytest.mark.parametrize("job", [["synthetic-stage"], ["render-pairs", "--subjects", "s", "--rig", "r.json",
                                                        "--envmaps", "e"], ["train", "--stage", "1", "--pairs", "p"]])
def test_profile_without_a_params_file_is_a_usage_error(job, tmp_path, capsys):
    """`--profile smoke` alone would run on the code's defaults, not the smoke profile: refused before any work."""
    with pytest.raises(SystemExit) as info:
        main([*job, "--out", str(tmp_path / "out"), "--profile", "smoke"])
    assert info.value.code == 2
    assert "--profile smoke chooses a profile of a params file: give --params" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_train_command_names_params_file_and_key(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"profile": "p", "p": {"model": {"image_size": "sixty-four"}}}))
    assert main(["train", "--stage", "1", "--params", str(params), "--no-track", "--pairs", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"{params}: model.image_size: expected a positive whole number, got 'sixty-four'" in err
    assert "Traceback" not in err
    assert main(["train", "--stage", "1", "--no-track", "--set", "model.codec.factor=x"]) == 1
    assert "--set model.codec.factor=x: model.codec.factor: expected a positive whole number, got 'x'" in \
        capsys.readouterr().err


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    import torch

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("models") / "micro"
    RelightModel(micro_model_config()).save_pretrained(folder)
    return folder


def _with_config(model_dir: Path, dst: Path, **changes) -> Path:
    import shutil

    shutil.copytree(model_dir, dst)
    meta = json.loads((dst / "relightful.json").read_text())
    for dotted, value in changes.items():
        node = meta["config"]
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node[p]
        node[leaf] = value
    (dst / "relightful.json").write_text(json.dumps(meta))
    return dst


@pytest.mark.parametrize("change,message", [
    ({"image_size": "sixty-four"}, "config.image_size: expected a positive whole number, got 'sixty-four'"),
    ({"image_size": 0}, "config.image_size: expected a positive whole number, got 0"),
    ({"codec__factor": "x"}, "config.codec.factor: expected a positive whole number, got 'x'"),
    ({"codec": 7}, "config.codec: expected a mapping of CodecConfig settings, got 7"),
])
def test_model_folder_config_types_name_the_file_and_key(model_dir, tmp_path, change, message):
    bad = _with_config(model_dir, tmp_path / "bad", **change)
    with pytest.raises(InputError) as info:
        RelightModel.from_pretrained(bad)
    assert str(info.value) == f"{bad / 'relightful.json'}: invalid model config: {message}"


# --- --out and --device ---------------------------------------------------------------------------------------

@pytest.fixture()
def images(tmp_path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    paths = {"fg": tmp_path / "fg.png", "bg": tmp_path / "bg.jpg", "matte": tmp_path / "matte.png"}
    write_ldr(paths["fg"], rng.uniform(0, 1, (32, 32, 3)).astype(np.float32))
    write_ldr(paths["bg"], rng.uniform(0, 1, (40, 48, 3)).astype(np.float32))
    write_matte(paths["matte"], np.full((32, 32), 0.5, np.float32))
    return paths


def _harmonize(images, out, model="no-such-model", *extra) -> list[str]:
    return ["harmonize", "--model", str(model), "--fg", str(images["fg"]), "--bg", str(images["bg"]),
            "--matte", str(images["matte"]), "--out", str(out), "--quiet", *extra]


@pytest.mark.parametrize("which", ["fg", "bg", "matte"])
def test_out_equal_to_an_input_is_refused_through_a_symlink(images, tmp_path, capsys, which):
    link = tmp_path / "link" / "same.png"
    link.parent.mkdir()
    link.symlink_to(images[which])
    before = images[which].read_bytes()
    assert main(_harmonize(images, link)) == 1
    err = capsys.readouterr().err
    assert f"--out is the same file as --{which} {images[which]}" in err and "refusing to overwrite" in err
    assert images[which].read_bytes() == before


def test_out_hard_linked_to_the_foreground_is_refused(images, tmp_path, capsys):
    twin = tmp_path / "twin.png"
    os.link(images["fg"], twin)
    assert main(_harmonize(images, twin)) == 1
    assert "--out is the same file as --fg" in capsys.readouterr().err


def test_bad_out_paths_fail_before_the_model_is_looked_at(images, tmp_path, capsys):
    """Each `--out` mistake is named, and the (missing) model is never reached: the check comes first."""
    (tmp_path / "folder.png").mkdir()
    (tmp_path / "a-file").write_text("x")
    cases = {tmp_path / "folder.png": "--out is a folder",
             tmp_path / "a-file" / "out.png": "--out: cannot create it",
             tmp_path / "out.txt": "--out must be an 8-bit image file, one of .png",
             }
    if Path("/sys").is_dir() and _unwritable("/sys"):  # unwritable even for root
        cases[Path("/sys/out.png")] = "--out: the folder /sys is not writable"
    for out, expected in cases.items():
        assert main(_harmonize(images, out)) == 1
        err = capsys.readouterr().err
        assert expected in err and "no-such-model" not in err, (out, err)
    # a missing folder that can be created is fine: the next check (the model) is what fails
    assert main(_harmonize(images, tmp_path / "new" / "deeper" / "out.png")) == 1
    assert "no-such-model: model folder not found" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()  # the check created nothing


def _unwritable(folder: str) -> bool:
    import tempfile

    try:
        fd, path = tempfile.mkstemp(dir=folder)
    except OSError:
        return True
    os.close(fd)
    os.unlink(path)
    return False


def test_matte_out_equal_to_its_image_is_refused(images, capsys):
    image = images["matte"]  # a .png, so the suffix is valid for both
    assert main(["matte", "--image", str(image), "--out", str(image), "--method", "grabcut"]) == 1
    assert "--out is the same file as --image" in capsys.readouterr().err


def test_train_out_equal_to_init_is_refused(tmp_path, capsys):
    init = tmp_path / "stage1"
    init.mkdir()
    assert main(["train", "--stage", "2", "--init", str(init), "--out", str(tmp_path / "x" / ".." / "stage1"),
                 "--no-track", "--pairs", str(tmp_path)]) == 1
    assert "--out is the same folder as --init" in capsys.readouterr().err


def test_replay_fraction_without_replay_pairs_is_refused_before_work(tmp_path, capsys):
    init = tmp_path / "stage2"
    init.mkdir()
    assert main(["train", "--stage", "3", "--init", str(init), "--out", str(tmp_path / "stage3"), "--no-track",
                 "--pairs", str(tmp_path), "--set", "replay_fraction=0.5"]) == 1
    assert "train_stage3.replay_fraction is 0.5: give the pairs to replay (--replay data/pairs)" in \
        capsys.readouterr().err
    assert not (tmp_path / "stage3").exists()


def test_device_spelling_is_a_usage_error_naming_the_option(images, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(_harmonize(images, tmp_path / "out.png", "no-such-model", "--device", "banana"))
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --device: expected auto, cpu, cuda, cuda:N or mps, got 'banana'" in err


def test_absent_cuda_is_refused_before_loading(images, tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(_harmonize(images, tmp_path / "out.png", "no-such-model", "--device", "cuda")) == 1
    err = capsys.readouterr().err
    assert "--device: cuda was asked for, but torch finds no CUDA device" in err and "no-such-model" not in err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert main(_harmonize(images, tmp_path / "out.png", "no-such-model", "--device", "cuda:3")) == 1
    assert "--device: cuda:3 was asked for, but this machine has 1 CUDA device(s)" in capsys.readouterr().err
    assert main(["serve", "--model", "no-such-model", "--device", "cuda:3"]) == 1
    assert "--device: cuda:3" in capsys.readouterr().err


def test_device_in_params_is_checked_before_the_job(tmp_path, capsys):
    assert main(["evaluate", "--model", str(tmp_path / "no-model"), "--pairs", str(tmp_path), "--no-track",
                 "--set", "device=banana"]) == 1
    err = capsys.readouterr().err
    assert "evaluate.device: expected auto, cpu, cuda, cuda:N or mps, got 'banana'" in err


# --- MLflow: bounded retries, redacted credentials --------------------------------------------------------------

def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dead_tracking_server_fails_within_30_s_naming_uri_and_setting(images, tmp_path):
    """The real command in its own process, as a user runs it, against a port nobody listens on; the URI carries a
    password, which must not be printed."""
    pytest.importorskip("mlflow")
    port = _dead_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(MLFLOW_TRACKING_URI=f"http://alice:s3cr3t-pw@127.0.0.1:{port}", PYTHONPATH=str(ROOT / "src"))
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "relightful", *_harmonize(
        images, tmp_path / "out.png", "models:/relightful-stage3@champion", "--device", "cpu")],
        capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path)
    elapsed = time.monotonic() - start
    assert proc.returncode == 1, proc.stderr
    assert elapsed < 30, elapsed
    assert f"http://***@127.0.0.1:{port}" in proc.stderr
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES=2" in proc.stderr and "MLFLOW_HTTP_REQUEST_TIMEOUT=8" in proc.stderr
    assert "s3cr3t-pw" not in proc.stderr + proc.stdout and "alice" not in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out.png").exists()


def test_user_retry_settings_win():
    environ = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "9"}
    added = bound_http_retries(environ)
    assert environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "9" and "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in added
    assert environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == HTTP_BOUNDS["MLFLOW_HTTP_REQUEST_TIMEOUT"]


def test_tracking_error_at_a_dead_server_is_redacted_and_names_the_setting(monkeypatch):
    pytest.importorskip("mlflow")
    from relightful.tracking.runs import RunTracker

    for key, value in HTTP_BOUNDS.items():
        monkeypatch.setenv(key, value)
    uri = f"http://bob:hunter22@127.0.0.1:{_dead_port()}/?token=abcdef123"
    start = time.monotonic()
    with pytest.raises(TrackingError) as info:
        RunTracker.start("dead", uri=uri)
    assert time.monotonic() - start < 30
    message = str(info.value)
    assert "hunter22" not in message and "abcdef123" not in message and "bob" not in message
    assert message.startswith("MLflow tracking at http://***@127.0.0.1:")
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES=2" in message


@pytest.mark.parametrize("text,secret,kept", [
    ("http://user:secret@mlflow:5000/api", "secret", "http://***@mlflow:5000/api"),
    ("https://tok3n@host/x", "tok3n", "https://***@host/x"),
    ("http://mlflow:5000/?token=abc123&x=1", "abc123", "http://mlflow:5000/?token=***&x=1"),
    ("s3://AKIAXXXX:wJalrXUtnFEMI@bucket/models", "wJalrXUtnFEMI", "s3://***@bucket/models"),
    ("https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIA%2F1&X-Amz-Signature=deadbeef", "deadbeef",
     "X-Amz-Credential=***&X-Amz-Signature=***"),
    ("header Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.x", "eyJhbGciOiJIUzI1NiJ9", "Bearer ***"),
    ("postgresql://mlflow:pg-pass@db:5432/mlflow", "pg-pass", "postgresql://***@db:5432/mlflow"),
])
def test_redact(text, secret, kept):
    out = redact(text)
    assert secret not in out and kept in out
    assert redact(out) == out


def test_secret_environment_values_and_every_message_type_are_redacted(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pa55word-xyz")
    assert "pa55word-xyz" not in str(InputError("http://u:p@h", "rejected pa55word-xyz"))
    assert str(InputError("http://u:p@h", "x")) == "http://***@h: x"
    assert "p@h" not in str(TrackingError("http://u:p@h:1", "refused by http://u:p@h:1/api"))
    assert str(JobFailed("cannot log to http://u:pw@h:5000")) == "cannot log to http://***@h:5000"


def test_logs_are_redacted_by_the_cli(images, tmp_path, caplog, capsys):
    main(_harmonize(images, tmp_path / "out.png"))  # installs the redaction, as every command does
    capsys.readouterr()
    with caplog.at_level(logging.WARNING):
        logging.getLogger("mlflow.test").warning("retrying %s", "http://u:topsecret@host:5000")
        logging.getLogger("urllib3.connectionpool").warning("http://h/?access_token=tok123 failed")
    assert "topsecret" not in caplog.text and "http://***@host:5000" in caplog.text
    assert "tok123" not in caplog.text and "access_token=***" in caplog.text


def test_http_bounds_last_for_the_command_only(images, tmp_path, monkeypatch, capsys):
    for key in HTTP_BOUNDS:
        monkeypatch.delenv(key, raising=False)
    main(_harmonize(images, tmp_path / "out.png"))
    capsys.readouterr()
    assert not any(key in os.environ for key in HTTP_BOUNDS)  # a test or notebook keeps MLflow's defaults


# --- pixel limits on every decoder --------------------------------------------------------------------------------

def _exr_claiming(path: Path, width: int, height: int) -> Path:
    """A real small EXR whose header's dataWindow claims width x height: a few hundred bytes asking the decoder
    for gigabytes."""
    write_hdr(path, np.ones((4, 6, 3), np.float32))
    data = bytearray(path.read_bytes())
    at = data.index(b"dataWindow\0box2i\0") + len(b"dataWindow\0box2i\0") + 4
    data[at:at + 16] = struct.pack("<4i", 0, 0, width - 1, height - 1)
    path.write_bytes(bytes(data))
    return path


def test_8k_exr_is_refused_from_its_header_before_decoding(tmp_path, monkeypatch):
    import relightful.io.images as images_module

    monkeypatch.delenv("RELIGHTFUL_MAX_HDR_PIXELS", raising=False)
    path = _exr_claiming(tmp_path / "huge.exr", 8192, 4096)
    assert path.stat().st_size < 2000

    def never(*args, **kwargs):
        raise AssertionError("decoded despite the limit")

    monkeypatch.setattr(images_module.cv2, "imdecode", never)
    start = time.monotonic()
    with pytest.raises(InputError) as info:
        read_hdr(path)
    assert time.monotonic() - start < 1
    assert str(info.value) == (f"{path}: 8192x4096 is 33.6 MP, over the limit of 16.8 MP "
                               f"(RELIGHTFUL_MAX_HDR_PIXELS, the limit for HDR maps: raise it to read this file)")
    # the same bytes named .png, read as an image: still recognised as an EXR by its content
    disguised = tmp_path / "huge.png"
    disguised.write_bytes(path.read_bytes())
    with pytest.raises(InputError, match="RELIGHTFUL_MAX_HDR_PIXELS"):
        read_ldr(disguised)
    # a 4k map (8.4 MP) is within the default
    assert check_pixels(_exr_claiming(tmp_path / "4k.exr", 4096, 2048)) == (4096, 2048)


def test_radiance_header_is_bounded_too(tmp_path, monkeypatch):
    monkeypatch.delenv("RELIGHTFUL_MAX_HDR_PIXELS", raising=False)
    write_hdr(tmp_path / "ok.hdr", np.ones((8, 16, 3), np.float32))
    assert read_hdr(tmp_path / "ok.hdr").shape == (8, 16, 3)
    huge = tmp_path / "huge.hdr"
    huge.write_bytes(b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 40000 +X 80000\n" + b"\0" * 64)
    with pytest.raises(InputError, match=r"huge\.hdr: 80000x40000 is 3200\.0 MP, over the limit"):
        read_hdr(huge)


def test_limits_are_set_by_environment_or_parameter(tmp_path, monkeypatch):
    write_hdr(tmp_path / "map.exr", np.ones((16, 32, 3), np.float32))
    write_ldr(tmp_path / "img.png", np.full((20, 20, 3), 0.5, np.float32))
    write_matte(tmp_path / "matte.png", np.full((20, 20), 0.5, np.float32))
    monkeypatch.setenv("RELIGHTFUL_MAX_HDR_PIXELS", "500")
    with pytest.raises(InputError, match=r"map\.exr: 32x16 is 0\.0 MP.*RELIGHTFUL_MAX_HDR_PIXELS"):
        read_hdr(tmp_path / "map.exr")
    monkeypatch.setenv("RELIGHTFUL_MAX_HDR_PIXELS", "512")
    assert read_hdr(tmp_path / "map.exr").shape == (16, 32, 3)
    monkeypatch.setenv("RELIGHTFUL_MAX_PIXELS", "399")
    for reader, name in ((read_ldr, "img.png"), (read_matte, "matte.png")):
        with pytest.raises(InputError, match=rf"{name}: 20x20 .* \(RELIGHTFUL_MAX_PIXELS, the limit for images"):
            reader(tmp_path / name)
        reader(tmp_path / name, max_pixels=400)  # a parameter overrides the environment
        with pytest.raises(InputError, match=r"over the limit of 0\.0001 MP \(max_pixels\)|over the limit"):
            reader(tmp_path / name, max_pixels=10)
    with pytest.raises(InputError, match="upload: 20x20"):
        read_ldr((tmp_path / "img.png").read_bytes(), "upload")  # bytes (uploads) as well
    monkeypatch.setenv("RELIGHTFUL_MAX_PIXELS", "lots")
    with pytest.raises(InputError, match="RELIGHTFUL_MAX_PIXELS: expected a positive whole number of pixels"):
        read_ldr(tmp_path / "img.png")


def test_corrupt_exr_header_is_named(tmp_path):
    path = _exr_claiming(tmp_path / "cut.exr", 8, 8)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(InputError, match=r"cut\.exr: cannot read the image header \(truncated header\)"):
        read_hdr(path)


def test_starter_maps_are_within_the_default_limit(monkeypatch):
    """The real maps of the workflow (data/raw/hdri, when fetched) pass the default: ingest-hdr keeps working."""
    monkeypatch.delenv("RELIGHTFUL_MAX_HDR_PIXELS", raising=False)
    maps = sorted((ROOT / "data" / "raw" / "hdri").glob("*.exr")) + sorted((ROOT / "data" / "raw").rglob("*.hdr"))
    if not maps:
        pytest.skip("no starter maps in data/raw (make data first)")
    for path in maps:
        width, height = check_pixels(path)
        assert width * height <= 1 << 24

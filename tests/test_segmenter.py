"""The person segmenter (MediaPipe's selfie segmenter through LiteRT, weights from `relightful fetch-weights`):
real people over other photos, photos without one, missing weights, and `relightful matte` / harmonize without a
matte end to end."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data

from relightful.augment import segmenter
from relightful.augment.segmenter import (NoPersonFound, SELFIE_SEGMENTER, WeightsFile, WeightsMissing,
                                          fetch_weights, guided_filter, segmenter_matte)
from relightful.cli import main
from relightful.io import read_ldr, read_matte, write_ldr


def grace_hopper() -> np.ndarray:
    import matplotlib.cbook

    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        image = cv2.imdecode(np.frombuffer(f.read(), np.uint8), cv2.IMREAD_COLOR)
    return np.ascontiguousarray(image[..., ::-1])


PORTRAITS = {"astronaut": skimage.data.astronaut, "grace_hopper": grace_hopper}


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


@pytest.mark.parametrize("name", sorted(PORTRAITS))
def test_a_real_person_pasted_over_other_photos_is_found_again(name):
    """The known matte: the person's pixels (as the segmenter cut them from the photo) pasted over other photos;
    the segmenter must find exactly them again, whatever the new background."""
    photo = PORTRAITS[name]()
    person = segmenter_matte(photo) > 0.5
    assert 0.2 < person.mean() < 0.9
    h, w = person.shape
    for background in (skimage.data.rocket(), skimage.data.coffee(), np.full((h, w, 3), (40, 90, 160), np.uint8)):
        bg = cv2.resize(background, (w, h), interpolation=cv2.INTER_AREA)
        composite = np.where(person[..., None], photo, bg)
        found = segmenter_matte(composite) > 0.5
        assert iou(found, person) >= 0.9, name


def test_edges_are_soft_and_narrow():
    """A soft alpha along the person's outline (not the 256² grid's hard steps), and only there."""
    photo = skimage.data.astronaut()
    matte = segmenter_matte(photo)
    assert matte.dtype == np.float32 and matte.shape == photo.shape[:2]
    soft = (matte > 0.05) & (matte < 0.95)
    assert 0.005 < soft.mean() < 0.08
    constant = np.full((32, 32), 0.3, np.float32)  # the filter keeps what is already smooth
    assert np.allclose(guided_filter(np.random.default_rng(0).random((32, 32), np.float32), constant, 3, 1e-3),
                       constant, atol=1e-5)


@pytest.mark.parametrize("name", ["rocket", "coffee"])
def test_a_photo_without_a_person_is_refused(name, tmp_path, capsys):
    with pytest.raises(NoPersonFound, match="no person found"):
        segmenter_matte(getattr(skimage.data, name)())
    image = tmp_path / f"{name}.png"
    write_ldr(image, getattr(skimage.data, name)().astype(np.float32) / 255.0)
    assert main(["matte", "--image", str(image), "--out", str(tmp_path / "m.png")]) == 1
    err = capsys.readouterr().err
    assert f"{name}.png" in err and "no person found" in err
    assert not (tmp_path / "m.png").exists()


def test_missing_weights_name_the_setup_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RELIGHTFUL_WEIGHTS", str(tmp_path / "empty"))
    with pytest.raises(WeightsMissing, match="relightful fetch-weights"):
        segmenter_matte(skimage.data.astronaut())
    image = tmp_path / "a.png"
    write_ldr(image, skimage.data.astronaut().astype(np.float32) / 255.0)
    assert main(["matte", "--image", str(image), "--out", str(tmp_path / "m.png")]) == 1
    assert "relightful fetch-weights" in capsys.readouterr().err


def test_fetched_weights_are_checked_against_their_hash(tmp_path, monkeypatch):
    payload = io.BytesIO()
    with tarfile.open(fileobj=payload, mode="w:gz") as tar:
        data = b"not the model"
        info = tarfile.TarInfo("package/model.tflite")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    class Response(io.BytesIO):
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(segmenter.urllib.request, "urlopen", lambda url, timeout: Response(payload.getvalue()))
    spec = WeightsFile("model.tflite", "https://registry.example/model.tgz", "package/model.tflite", "0" * 64, "x")
    with pytest.raises(RuntimeError, match="SHA-256"):
        fetch_weights(spec, tmp_path)
    assert not (tmp_path / "model.tflite").exists()
    good = WeightsFile("model.tflite", spec.url, spec.member, __import__("hashlib").sha256(data).hexdigest(), "x")
    assert fetch_weights(good, tmp_path).read_bytes() == data
    assert SELFIE_SEGMENTER.licence == "Apache-2.0" and SELFIE_SEGMENTER.url.startswith("https://registry.npmjs.org/")


def test_matte_command_and_harmonize_without_a_matte(tmp_path, capsys):
    import torch

    from relightful.models import ModelConfig, RelightModel

    portrait, bg = tmp_path / "hopper.jpg", tmp_path / "bg.png"
    write_ldr(portrait, grace_hopper().astype(np.float32) / 255.0)
    write_ldr(bg, skimage.data.coffee().astype(np.float32) / 255.0)
    assert main(["matte", "--image", str(portrait), "--out", str(tmp_path / "matte.png")]) == 0
    matte = read_matte(tmp_path / "matte.png")
    assert matte.shape == (600, 512) and 0.3 < (matte > 0.5).mean() < 0.9
    torch.manual_seed(0)
    RelightModel(ModelConfig()).save_pretrained(tmp_path / "model")
    out = tmp_path / "out.png"
    assert main(["harmonize", "--model", str(tmp_path / "model"), "--fg", str(portrait), "--bg", str(bg),
                 "--out", str(out), "--steps", "1", "--quiet", "--device", "cpu"]) == 0
    result = read_ldr(out)
    assert result.shape == (600, 512, 3)
    # where the segmenter saw no person the output is the background, so it differs from the portrait there
    outside = matte < 0.01
    assert np.abs(result[outside] - read_ldr(portrait)[outside]).mean() > 0.05


@pytest.mark.parametrize("name", sorted(PORTRAITS))
def test_the_two_segmenters_agree_on_the_starter_portraits(name):
    """MediaPipe's selfie segmenter and ISNet (a salient-object model, 1024²) are independent models: on the
    starter portraits their mattes agree (measured: astronaut 0.97, Grace Hopper 0.99)."""
    from relightful.augment.isnet import isnet_matte

    photo = PORTRAITS[name]()
    fine = isnet_matte(photo)
    assert fine.shape == photo.shape[:2] and 0.0 <= fine.min() and fine.max() <= 1.0
    assert iou(segmenter_matte(photo) > 0.5, fine > 0.5) >= 0.9


def test_matte_command_with_isnet_and_its_missing_weights(tmp_path, monkeypatch, capsys):
    image = tmp_path / "hopper.png"
    write_ldr(image, grace_hopper().astype(np.float32) / 255.0)
    assert main(["matte", "--image", str(image), "--out", str(tmp_path / "m.png"), "--method", "isnet"]) == 0
    assert 0.3 < (read_matte(tmp_path / "m.png") > 0.5).mean() < 0.9
    monkeypatch.setenv("RELIGHTFUL_WEIGHTS", str(tmp_path / "empty"))
    assert main(["matte", "--image", str(image), "--out", str(tmp_path / "m2.png"), "--method", "isnet"]) == 1
    assert "relightful fetch-weights --isnet" in capsys.readouterr().err

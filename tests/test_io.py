"""Image and tensor I/O: round trips keep values, bad files name themselves, writes are atomic."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from relightful.io import (InputError, load_tensors, read_hdr, read_ldr, read_matte, save_tensors, srgb_decode,
                           srgb_encode, write_hdr, write_ldr, write_matte)


def _hdr_image(seed=0):
    rng = np.random.default_rng(seed)
    return (np.exp(rng.normal(0, 2, size=(12, 24, 3)))).astype(np.float32)


def test_exr_round_trip_is_exact(tmp_path):
    image = _hdr_image()
    write_hdr(tmp_path / "a.exr", image)
    np.testing.assert_array_equal(read_hdr(tmp_path / "a.exr"), image)


def test_hdr_round_trip_within_rgbe_precision(tmp_path):
    image = _hdr_image(1)
    write_hdr(tmp_path / "a.hdr", image)
    back = read_hdr(tmp_path / "a.hdr")
    # RGBE shares one 8-bit exponent per pixel: the error is relative to the pixel's brightest channel.
    err = np.abs(back - image) / image.max(axis=-1, keepdims=True)
    assert err.max() < 1.0 / 128


def test_hdr_write_accepts_torch(tmp_path):
    image = torch.rand(4, 8, 3)
    write_hdr(tmp_path / "t.exr", image)
    np.testing.assert_array_equal(read_hdr(tmp_path / "t.exr"), image.numpy())


def test_truncated_exr_names_the_file(tmp_path):
    write_hdr(tmp_path / "ok.exr", _hdr_image())
    data = (tmp_path / "ok.exr").read_bytes()
    (tmp_path / "cut.exr").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"cut\.exr.*(truncated|corrupt)"):
        read_hdr(tmp_path / "cut.exr")


def test_non_finite_pixels_are_rejected(tmp_path):
    image = _hdr_image()
    image[3, 4, 1] = np.nan
    image[5, 6, 0] = np.inf
    import cv2

    ok, buf = cv2.imencode(".exr", image[..., ::-1].copy(), [cv2.IMWRITE_EXR_TYPE, cv2.IMWRITE_EXR_TYPE_FLOAT])
    (tmp_path / "nan.exr").write_bytes(buf.tobytes())
    with pytest.raises(InputError, match=r"nan\.exr: 2 pixels are NaN or infinite"):
        read_hdr(tmp_path / "nan.exr")


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_hdr(tmp_path / "nope.exr")
    (tmp_path / "empty.hdr").write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        read_hdr(tmp_path / "empty.hdr")


def test_failed_write_leaves_nothing(tmp_path):
    image = _hdr_image()
    image[0, 0, 0] = np.nan
    with pytest.raises(ValueError):
        write_hdr(tmp_path / "bad.exr", image)
    assert list(tmp_path.iterdir()) == []


def test_ldr_and_matte_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.uniform(size=(9, 7, 3)).astype(np.float32)
    write_ldr(tmp_path / "a.png", image)
    assert np.abs(read_ldr(tmp_path / "a.png") - image).max() <= 0.5 / 255 + 1e-6
    write_ldr(tmp_path / "b.png", image, bits=16)
    assert np.abs(read_ldr(tmp_path / "b.png") - image).max() <= 0.5 / 65535 + 1e-6
    matte = rng.uniform(size=(9, 7)).astype(np.float32)
    write_matte(tmp_path / "m.png", matte)
    assert np.abs(read_matte(tmp_path / "m.png") - matte).max() <= 0.5 / 65535 + 1e-6


def test_srgb_curve_inverts_and_matches_reference_points():
    x = np.linspace(0, 1, 101, dtype=np.float32)
    np.testing.assert_allclose(srgb_decode(srgb_encode(x)), x, atol=1e-6)
    assert abs(float(srgb_encode(np.float32(0.18)[None])[0]) - 0.4614) < 1e-3  # middle grey
    assert isinstance(srgb_encode(torch.tensor([0.5])), torch.Tensor)


def test_corrupt_safetensors_is_refused_without_unpickling(tmp_path):
    save_tensors(tmp_path / "w.safetensors", {"a": torch.arange(6.0)})
    assert torch.equal(load_tensors(tmp_path / "w.safetensors")["a"], torch.arange(6.0))
    (tmp_path / "bad.safetensors").write_bytes(b"\x80\x04garbage-that-is-not-a-header")
    with pytest.raises(InputError, match=r"bad\.safetensors: not a valid safetensors file"):
        load_tensors(tmp_path / "bad.safetensors")


def test_tensor_shape_reads_only_the_header(tmp_path):
    from relightful.io.tensors import tensor_shape

    save_tensors(tmp_path / "s.safetensors", {"matte": torch.zeros(3, 1, 16, 16), "w_a": torch.zeros(3, 5, 3)},
                 drop_from_cache=True)
    assert tensor_shape(tmp_path / "s.safetensors", "matte") == (3, 1, 16, 16)
    assert torch.equal(load_tensors(tmp_path / "s.safetensors")["w_a"], torch.zeros(3, 5, 3))  # written through
    with pytest.raises(InputError, match=r"s\.safetensors: no tensor 'x_a'"):
        tensor_shape(tmp_path / "s.safetensors", "x_a")
    (tmp_path / "bad.safetensors").write_bytes(b"xx")
    with pytest.raises(InputError, match=r"bad\.safetensors: not a valid safetensors file"):
        tensor_shape(tmp_path / "bad.safetensors", "matte")


@pytest.mark.parametrize("suffix,shape", [(".exr", (24, 48, 3)), (".hdr", (24, 48, 3)), (".exr", (7, 5, 3)),
                                          (".png", (9, 13, 3)), (".jpg", (16, 8, 3)), (".tif", (5, 6, 3))])
def test_header_size_agrees_with_the_decoded_image(tmp_path, suffix, shape):
    """The pixel limit is checked on the header's size: it must be the size the decoder then produces, for every
    format (EXR and Radiance are parsed by relightful, the others by Pillow), from a path or from bytes."""
    from relightful.io import image_header, write_ldr

    path = tmp_path / f"x{suffix}"
    image = np.random.default_rng(0).uniform(0, 1, shape).astype(np.float32)
    hdr = suffix in (".exr", ".hdr")
    (write_hdr if hdr else write_ldr)(path, image)
    decoded = (read_hdr if hdr else read_ldr)(path)
    assert image_header(path) == (decoded.shape[1], decoded.shape[0], hdr)
    assert image_header(path.read_bytes()) == (decoded.shape[1], decoded.shape[0], hdr)

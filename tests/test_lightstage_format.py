"""The OLAT-set loader refuses bad captures with a message that names the file."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import sphere_olat
from relightful.io import InputError, write_hdr
from relightful.lighting import LedRig
from relightful.lightstage import load_olat_set, make_default_rig, write_olat_set


@pytest.fixture
def rig():
    return make_default_rig(n_leds=6, name="six", gain_jitter=0.3, seed=1)


def test_exr_folder_round_trip_divides_gains_out(tmp_path, rig):
    olat, matte = sphere_olat(rig, 10)
    write_olat_set(tmp_path / "s", olat, matte, rig, layout="exr")
    assert sorted(p.name for p in (tmp_path / "s" / "olat").iterdir())[:2] == ["000.exr", "001.exr"]
    back, back_matte = load_olat_set(tmp_path / "s", rig)
    np.testing.assert_allclose(back, olat, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(back_matte, matte, atol=1e-4)


def test_stack_layout_round_trip(tmp_path, rig):
    olat, matte = sphere_olat(rig, 10)
    write_olat_set(tmp_path / "s", olat, matte, rig)
    back, _ = load_olat_set(tmp_path / "s", rig)
    np.testing.assert_allclose(back, olat, rtol=2e-3, atol=1e-4)  # float16 stack


def test_missing_led_image(tmp_path, rig):
    olat, matte = sphere_olat(rig, 8)
    write_olat_set(tmp_path / "s", olat, matte, rig, layout="exr")
    (tmp_path / "s" / "olat" / "003.exr").unlink()
    with pytest.raises(InputError, match=r"003\.exr: missing image for LED 3"):
        load_olat_set(tmp_path / "s", rig)


def test_mismatched_sizes(tmp_path, rig):
    olat, matte = sphere_olat(rig, 8)
    write_olat_set(tmp_path / "s", olat, matte, rig, layout="exr")
    write_hdr(tmp_path / "s" / "olat" / "002.exr", np.ones((9, 8, 3), np.float32))
    with pytest.raises(InputError, match=r"002\.exr: size 8x9 differs"):
        load_olat_set(tmp_path / "s", rig)


def test_missing_matte(tmp_path, rig):
    olat, matte = sphere_olat(rig, 8)
    write_olat_set(tmp_path / "s", olat, matte, rig)
    (tmp_path / "s" / "matte.png").unlink()
    with pytest.raises(InputError, match=r"matte\.png: matte missing"):
        load_olat_set(tmp_path / "s", rig)


def test_stack_with_wrong_led_count(tmp_path, rig):
    other = make_default_rig(n_leds=5)
    olat, matte = sphere_olat(other, 8)
    write_olat_set(tmp_path / "s", olat, matte, other)
    with pytest.raises(InputError, match=r"olat\.safetensors: has 5 OLAT images but rig 'six' has 6 LEDs"):
        load_olat_set(tmp_path / "s", rig)


def test_rig_with_zero_direction_names_file(tmp_path, rig):
    rig.to_json(tmp_path / "rig.json")
    spec = json.loads((tmp_path / "rig.json").read_text())
    spec["leds"][2]["direction"] = [0, 0, 0]
    (tmp_path / "bad.json").write_text(json.dumps(spec))
    with pytest.raises(InputError, match=r"bad\.json: invalid rig: .*LED\(s\) \[2\] have a zero"):
        LedRig.from_json(tmp_path / "bad.json")


def test_rig_json_round_trip_normalises(tmp_path, rig):
    rig.to_json(tmp_path / "rig.json")
    spec = json.loads((tmp_path / "rig.json").read_text())
    spec["leds"][0]["direction"] = [0, 5, 0]
    (tmp_path / "r2.json").write_text(json.dumps(spec))
    back = LedRig.from_json(tmp_path / "r2.json")
    np.testing.assert_allclose(back.directions[0], [0, 1, 0])
    np.testing.assert_allclose(back.rgb_gain, rig.rgb_gain, atol=1e-8)

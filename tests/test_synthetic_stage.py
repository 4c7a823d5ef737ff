"""The synthetic light stage: procedural busts rendered per LED, written and read back as OLAT sets."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from relightful.lighting import LedRig
from relightful.lightstage import load_olat_set, make_default_rig
from relightful.lightstage.synthetic import (
    PART_NAMES,
    SubjectSpec,
    random_subject,
    render_subject,
    sphere_subject,
    subject_seed,
    write_synthetic_stage,
)

SIZE = (48, 48)


@pytest.fixture(scope="module")
def small_rig() -> LedRig:
    return make_default_rig(n_leds=32)


@pytest.fixture(scope="module")
def lambertian(small_rig):
    """A bust rendered without highlights, so OLAT_k = a/π · max(0, n·d_k) · visibility exactly."""
    return render_subject(random_subject(1), small_rig, size=SIZE, specular=False)


def _unshadowed(subject, rig: LedRig) -> np.ndarray:
    """(N, H, W, 3) a/π · max(0, n·d_k): what each LED would give without visibility."""
    cos = np.einsum("hwc,nc->nhw", subject.normals, rig.directions.astype(np.float32)).clip(min=0.0)
    return cos[..., None] * subject.albedo[None] / np.float32(math.pi)


def test_random_subject_is_deterministic_and_varied():
    assert random_subject(7) == random_subject(7)
    specs = [random_subject(s) for s in range(12)]
    assert len({s.skin.albedo for s in specs}) == 12
    assert len({s.head.radii for s in specs}) == 12
    luminance = [float(np.dot(s.skin.albedo, [0.2126, 0.7152, 0.0722])) for s in specs]
    assert max(luminance) / min(luminance) > 2.0  # light and dark skin tones both occur


def test_spec_round_trips_through_json():
    for seed in range(5):
        spec = random_subject(seed)
        assert SubjectSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_render_shapes_matte_and_background(small_rig):
    h, w = 40, 56  # non-square: x spans [-W/H, W/H]
    s = render_subject(random_subject(2), small_rig, size=(h, w))
    assert s.olat.shape == (small_rig.n_leds, h, w, 3) and s.olat.dtype == np.float32
    assert s.matte.shape == (h, w) and s.matte.dtype == np.float32
    assert s.albedo.shape == s.normals.shape == (h, w, 3)
    assert s.unoccluded.shape == (h, w) and s.unoccluded.dtype == bool
    assert np.isfinite(s.olat).all() and (s.olat >= 0).all()
    assert 0.0 <= s.matte.min() and s.matte.max() <= 1.0
    edge = (s.matte > 0) & (s.matte < 1)
    assert edge.sum() > 10  # antialiased silhouette
    # A portrait: shoulders cut by the bottom edge, free space above the head.
    assert s.matte[-1].mean() > 0.6 and s.matte[0].max() == 0.0
    background = s.matte == 0
    assert (s.olat[:, background] == 0).all()
    assert (s.albedo[background] == 0).all() and (s.normals[background] == 0).all()
    assert not s.unoccluded[background].any()
    fg = ~background
    np.testing.assert_allclose(np.linalg.norm(s.normals[fg], axis=-1), 1.0, atol=1e-5)
    assert (s.normals[fg][:, 2] > -1e-3).all()  # every visible normal faces the camera (+z)
    assert (s.olat.max(axis=0)[fg] > 0).any(axis=-1).all()  # every foreground pixel is lit by some LED
    assert set(np.unique(s.parts[fg])) == {PART_NAMES.index(p) for p in ("head", "neck", "hair", "clothing")} or \
        set(np.unique(s.parts[fg])) == {PART_NAMES.index(p) for p in ("head", "neck", "clothing")}


def test_lambertian_olat_is_cosine_times_visibility(lambertian, small_rig):
    s = lambertian
    expected = _unshadowed(s, small_rig)
    lit = s.olat > 0
    np.testing.assert_allclose(s.olat[lit], expected[lit], rtol=1e-5, atol=1e-7)
    # On points with no occluder, every LED gives exactly the unshadowed value.
    np.testing.assert_allclose(s.olat[:, s.unoccluded], expected[:, s.unoccluded], rtol=1e-5, atol=1e-7)
    assert s.unoccluded.sum() > 20


def test_self_shadowing_darkens_the_neck(lambertian, small_rig):
    """Some LED leaves part of the neck dark (under the chin) that the cosine alone would light."""
    s = lambertian
    neck = s.parts == PART_NAMES.index("neck")
    assert neck.sum() > 10
    cos = np.einsum("hwc,nc->nhw", s.normals, small_rig.directions.astype(np.float32))
    would_be_lit = cos > 0.5
    dark = s.olat[..., 1] == 0
    shadowed = would_be_lit & dark & neck[None]
    assert shadowed.any(), "no cast shadow on the neck"
    # The shadow comes from above: LEDs that shadow the neck are above the horizon.
    leds = np.flatnonzero(shadowed.any(axis=(1, 2)))
    assert (small_rig.directions[leds, 1] > 0).any()


def test_convex_sphere_is_never_occluded(small_rig):
    s = render_subject(sphere_subject(0.7), small_rig, size=(32, 32), specular=False)
    assert (s.unoccluded == (s.matte > 0)).all()
    assert s.unoccluded.sum() > 0.3 * 32 * 32


def test_specular_only_adds_light(small_rig):
    spec = random_subject(4)
    diffuse = render_subject(spec, small_rig, size=(32, 32), specular=False)
    shiny = render_subject(spec, small_rig, size=(32, 32), specular=True)
    assert (shiny.olat >= diffuse.olat - 1e-7).all()
    assert (shiny.olat > diffuse.olat + 1e-4).any()
    np.testing.assert_array_equal(shiny.matte, diffuse.matte)


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_stage_is_deterministic_and_loads_back_with_gains_divided_out(tmp_path):
    rig = make_default_rig(n_leds=24, gain_jitter=0.2, seed=3)
    size = (32, 32)
    ids = write_synthetic_stage(tmp_path / "a", rig, n_subjects=2, size=size, seed=11)
    assert ids == ["synth-000", "synth-001"]
    write_synthetic_stage(tmp_path / "b", rig, n_subjects=2, size=size, seed=11)
    files_a, files_b = _tree_bytes(tmp_path / "a"), _tree_bytes(tmp_path / "b")
    assert files_a.keys() == files_b.keys() and files_a == files_b
    assert {"rig.json", "subjects/synth-000/olat.safetensors", "subjects/synth-000/matte.png",
            "subjects/synth-000/subject.json"} <= files_a.keys()
    assert not any(Path(k).name.startswith(".") for k in files_a)  # no temp files left behind

    loaded_rig = LedRig.from_json(tmp_path / "a" / "rig.json")
    np.testing.assert_allclose(loaded_rig.rgb_gain, rig.rgb_gain, atol=1e-8)
    for index, subject_id in enumerate(ids):
        olat, matte = load_olat_set(tmp_path / "a" / "subjects" / subject_id, loaded_rig)
        info = json.loads((tmp_path / "a" / "subjects" / subject_id / "subject.json").read_text())
        spec = SubjectSpec.from_dict(info["spec"])
        assert spec == random_subject(subject_seed(11, index))
        truth = render_subject(spec, rig, size=size)
        assert olat.shape == truth.olat.shape and matte.shape == size
        # float16 storage of gain-multiplied radiance, gain divided out on load
        np.testing.assert_allclose(olat, truth.olat, rtol=2e-3, atol=1e-6)
        np.testing.assert_allclose(matte, truth.matte, atol=1 / 65535 + 1e-7)

    write_synthetic_stage(tmp_path / "c", rig, n_subjects=1, size=size, seed=12)
    assert _tree_bytes(tmp_path / "c")["subjects/synth-000/olat.safetensors"] != \
        files_a["subjects/synth-000/olat.safetensors"]


def test_stage_exr_layout_loads_back(tmp_path):
    rig = make_default_rig(n_leds=6, gain_jitter=0.2, seed=1)
    write_synthetic_stage(tmp_path, rig, n_subjects=1, size=(24, 24), seed=0, layout="exr")
    assert len(list((tmp_path / "subjects" / "synth-000" / "olat").glob("*.exr"))) == 6
    olat, matte = load_olat_set(tmp_path / "subjects" / "synth-000", LedRig.from_json(tmp_path / "rig.json"))
    truth = render_subject(random_subject(subject_seed(0, 0)), rig, size=(24, 24))
    np.testing.assert_allclose(olat, truth.olat, rtol=1e-6, atol=1e-7)

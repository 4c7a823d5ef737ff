"""The synthetic light stage: procedural busts rendered per LED, written and read back as OLAT sets."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from relightful.lighting import LedRig
from relightful.lightstage import load_olat_set, make_default_rig
from relightful.lightstage.raytrace import render_subject
from relightful.lightstage.subjects import PART_NAMES, SubjectSpec, random_subject, sphere_subject
from relightful.lightstage.synthetic_stage import subject_seed, write_synthetic_stage

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


# ----------------------------------------------------------------------------------------------------------------
# Faces: MediaPipe's canonical face mesh on the procedural heads


def test_canonical_face_mesh_is_a_symmetric_face():
    from relightful.lightstage.face_mesh import BROWS, EYES, LIPS, NOSE_TIP, canonical_face_mesh

    mesh = canonical_face_mesh()
    assert mesh.vertices.shape == (468, 3) and mesh.triangles.shape == (898, 3) and mesh.uvs.shape == (468, 2)
    edges = {tuple(sorted(e)) for t in mesh.triangles.tolist() for e in ((t[0], t[1]), (t[1], t[2]), (t[2], t[0]))}
    assert len(mesh.vertices) - len(edges) + len(mesh.triangles) == 1  # one open surface without holes (a disc)
    mirrored = mesh.vertices * [-1.0, 1.0, 1.0]
    nearest = np.linalg.norm(mirrored[:, None] - mesh.vertices[None], axis=-1).min(1)
    assert nearest.max() < 1e-3  # left-right symmetric
    v = mesh.vertices
    assert v[:, 2].argmax() == NOSE_TIP  # the nose tip is the front-most point
    lips, eyes, brows = v[list(LIPS), 1].mean(), v[list(EYES[0]), 1].mean(), v[list(BROWS[0]), 1].mean()
    assert lips < v[NOSE_TIP, 1] < eyes < brows


def _frontal(seed: int, **face) -> SubjectSpec:
    """random_subject(seed) looking straight at the camera, without hair (so nothing but the face shades the face)."""
    spec = random_subject(seed)
    head = dataclasses.replace(spec.head, rotation_deg=(0.0, 0.0, 0.0))
    return dataclasses.replace(spec, head=head, hair=None, face=dataclasses.replace(spec.face, **face))


def _nose_pixel(spec: SubjectSpec, size: int) -> tuple[int, int]:
    from relightful.lightstage.face_mesh import NOSE_TIP, fitted_vertices

    xy, _ = fitted_vertices(spec.face, spec.head.radii)
    x, y = xy[NOSE_TIP] + spec.head.center[:2]
    pixel = 2.0 / size
    return int((1.0 - y) / pixel), int((x + 1.0) / pixel)


@pytest.mark.parametrize("seed", [0, 5])
def test_a_light_from_the_left_casts_the_nose_shadow_to_the_right(seed):
    size = 128
    d = np.array([-0.9, 0.15, 0.4])
    rig = LedRig(name="left-right", ids=(0, 1), directions=np.stack([d, d * [-1, 1, 1]]) / np.linalg.norm(d),
                 sigma_deg=8.0)
    spec = _frontal(seed)
    s = render_subject(spec, rig, size=(size, size), specular=False)
    row, col = _nose_pixel(spec, size)
    assert s.parts[row, col] == PART_NAMES.index("head")
    cos = np.einsum("hwc,nc->nhw", s.normals, rig.directions.astype(np.float32))
    shadow = (cos > 0.05) & (s.olat[..., 1] == 0)  # facing the light, yet unlit: a cast shadow
    rows = slice(row - 10, row + 4)  # from the eyes to just below the nose tip
    right = shadow[:, rows, col + 1:col + 10].sum(axis=(1, 2))
    left = shadow[:, rows, col - 9:col].sum(axis=(1, 2))
    assert right[0] >= 8 and left[0] == 0, (right, left)  # lit from the left: the shadow falls right of the nose
    assert left[1] >= 8 and right[1] == 0, (right, left)  # and mirrored
    # The ellipsoid head of before, without the face, has no such shadow.
    bald = render_subject(dataclasses.replace(spec, face=None), rig, size=(size, size), specular=False)
    cos = np.einsum("hwc,nc->nhw", bald.normals, rig.directions.astype(np.float32))
    assert not ((cos > 0.05) & (bald.olat[..., 1] == 0))[:, rows, col - 9:col + 10].any()


def test_faces_vary_and_are_painted():
    from relightful.lightstage.face_mesh import face_relief, fitted_vertices

    spec = _frontal(3)
    flat = fitted_vertices(dataclasses.replace(spec.face, depth=0.5), spec.head.radii)[1]
    deep = fitted_vertices(dataclasses.replace(spec.face, depth=1.5), spec.head.radii)[1]
    np.testing.assert_allclose(deep, 3 * flat, rtol=1e-9)
    narrow = fitted_vertices(dataclasses.replace(spec.face, width=0.9), spec.head.radii)[0]
    wide = fitted_vertices(dataclasses.replace(spec.face, width=1.1), spec.head.radii)[0]
    assert np.ptp(wide[:, 0]) / np.ptp(narrow[:, 0]) == pytest.approx(1.1 / 0.9)
    relief = face_relief(spec.face, spec.head.radii, spec.skin.albedo, spec.hair_material.albedo)
    skin = np.asarray(spec.skin.albedo, np.float32)
    rgb = relief.albedo.reshape(-1, 3)
    assert np.isclose(rgb, skin, atol=1e-6).all(1).mean() > 0.8  # mostly skin
    assert (rgb.max(1) > skin.max() + 0.05).any()  # the whites of the eyes
    redder = rgb[:, 0] / rgb[:, 1] > skin[0] / skin[1] * 1.1
    assert redder.any()  # lips
    border = np.concatenate([relief.displacement[0], relief.displacement[-1], relief.displacement[:, 0],
                             relief.displacement[:, -1]])
    assert np.abs(border).max() < 1e-4  # the face meets the head without a seam

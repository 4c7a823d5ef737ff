"""Behavioural physics of the light-transport core (DESIGN 3.1-3.3), checked against hand computations and the
synthetic light stage rather than against the implementation's own formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from relightful.lighting import (
    LedRig,
    envmap_to_led_weights,
    latlong_directions,
    latlong_solid_angles,
    led_weights_to_envmap,
    perspective_crop,
    project_to_pixel,
    relight,
    rotate_envmap,
)
from relightful.lightstage import make_default_rig
from relightful.lightstage import random_subject, render_subject, sphere_subject


@pytest.fixture(scope="module")
def rig() -> LedRig:
    return make_default_rig()


def _integral(env: np.ndarray) -> np.ndarray:
    """∫ L dω per channel, float64, with the pixel solid angles of DESIGN 3.1."""
    omega = latlong_solid_angles(env.shape[0]).astype(np.float64)
    return (env.astype(np.float64) * omega[..., None]).sum(axis=(0, 1))


def _sky_with_sun(height: int = 64) -> np.ndarray:
    """A realistic-looking map: blue sky gradient, brown ground, and a small sun 5000x brighter than the sky."""
    d = latlong_directions(height).astype(np.float64)
    up = d[..., 1:2]
    sky = np.where(up > 0, np.array([0.35, 0.55, 1.0]) * (0.4 + 0.6 * up) + 0.3 * (1 - up) ** 4,
                   np.array([0.12, 0.09, 0.06]) * (1 + up))
    sun_dir = np.array([0.4, 0.6, -0.5])
    sun_dir /= np.linalg.norm(sun_dir)
    sun = (d @ sun_dir > math.cos(math.radians(2.5)))[..., None] * np.array([5000.0, 4700.0, 4200.0])
    return (sky + sun).astype(np.float32)


def _blob(height: int, direction, sigma_deg: float = 1.2) -> np.ndarray:
    """A small Gaussian spot of light around a unit direction, on an (H, 2H, 3) map."""
    d = latlong_directions(height).astype(np.float64)
    angle = np.arccos(np.clip(d @ np.asarray(direction, dtype=np.float64), -1, 1))
    return np.repeat(np.exp(-(angle / math.radians(sigma_deg)) ** 2 / 2)[..., None], 3, axis=-1).astype(np.float32)


def _dir(longitude_deg: float, elevation_deg: float) -> np.ndarray:
    """Unit direction at a longitude φ (0 = −z, 90 = +x) and elevation above the horizon (DESIGN 3.1)."""
    phi, el = math.radians(longitude_deg), math.radians(elevation_deg)
    return np.array([math.cos(el) * math.sin(phi), math.sin(el), -math.cos(el) * math.cos(phi)])


# ----------------------------------------------------------------------------------------------------------------
# Energy conservation of the LED basis


@pytest.mark.parametrize("height", [8, 16, 32, 64])
def test_led_weights_conserve_energy_for_random_maps(rig, height):
    rng = np.random.default_rng(height)
    env = (rng.lognormal(0.0, 2.0, size=(height, 2 * height, 3))).astype(np.float32)
    w = envmap_to_led_weights(env, rig)
    assert w.shape == (rig.n_leds, 3) and w.dtype == np.float64
    np.testing.assert_allclose(w.sum(axis=0), _integral(env), rtol=1e-4)


def test_led_weights_conserve_energy_for_a_sky_with_a_sun(rig):
    env = _sky_with_sun(64)
    w = envmap_to_led_weights(env, rig)
    np.testing.assert_allclose(w.sum(axis=0), _integral(env), rtol=1e-4)
    assert (w >= 0).all()
    # The sun's energy lands on the LEDs near the sun.
    sun_dir = np.array([0.4, 0.6, -0.5]) / np.linalg.norm([0.4, 0.6, -0.5])
    near = rig.directions @ sun_dir > math.cos(math.radians(25))
    assert w[near, 0].sum() > 0.8 * w[:, 0].sum()


def test_batched_weights_equal_single_maps(rig):
    rng = np.random.default_rng(0)
    envs = rng.uniform(0, 3, size=(3, 16, 32, 3)).astype(np.float32)
    batched = envmap_to_led_weights(envs, rig)
    assert batched.shape == (3, rig.n_leds, 3)
    for b in range(3):
        np.testing.assert_allclose(batched[b], envmap_to_led_weights(envs[b], rig), rtol=1e-12)
    t = envmap_to_led_weights(torch.from_numpy(envs), rig)
    assert isinstance(t, torch.Tensor)
    np.testing.assert_allclose(t.numpy(), batched, rtol=1e-12)


def test_led_weights_match_a_naive_reference(rig):
    """Per-pixel Python loop straight from DESIGN 3.1-3.2: Gaussian lobes, softmax, sin θ·(π/H)·(2π/W)."""
    h, w = 8, 16
    env = np.random.default_rng(5).uniform(0.0, 2.0, size=(h, w, 3)).astype(np.float32)
    sigma = math.radians(rig.sigma_deg)
    expected = np.zeros((rig.n_leds, 3))
    for i in range(h):
        theta = math.pi * (i + 0.5) / h
        for j in range(w):
            phi = 2 * math.pi * (j + 0.5) / w - math.pi
            d = np.array([math.sin(theta) * math.sin(phi), math.cos(theta), -math.sin(theta) * math.cos(phi)])
            logits = -np.arccos(np.clip(rig.directions @ d, -1, 1)) ** 2 / (2 * sigma**2)
            basis = np.exp(logits - logits.max())
            basis /= basis.sum()
            solid_angle = math.sin(theta) * (math.pi / h) * (2 * math.pi / w)
            expected += basis[:, None] * solid_angle * env[i, j].astype(np.float64)
    np.testing.assert_allclose(envmap_to_led_weights(env, rig), expected, rtol=1e-9, atol=1e-12)


def test_basis_is_exact_below_the_floor(rig):
    """Directions far from every LED (under the floor gap) still count fully: the softmax never underflows."""
    env = np.zeros((32, 64, 3), np.float32)
    env[-1] = 1.0  # the row nearest straight down, > 15° from the lowest LEDs
    np.testing.assert_allclose(envmap_to_led_weights(env, rig).sum(axis=0), _integral(env), rtol=1e-6)


def test_led_weights_to_envmap_preserves_energy(rig):
    env = _sky_with_sun(32)
    w = envmap_to_led_weights(env, rig)
    for height in (16, 32):
        small = led_weights_to_envmap(w, rig, height)
        assert small.shape == (height, 2 * height, 3) and small.dtype == np.float32
        assert (small >= 0).all()
        np.testing.assert_allclose(_integral(small), w.sum(axis=0), rtol=1e-5)
    batch = led_weights_to_envmap(torch.from_numpy(np.stack([w, 2 * w])), rig)
    assert isinstance(batch, torch.Tensor) and batch.shape == (2, 16, 32, 3)
    np.testing.assert_allclose(batch[1].numpy(), 2 * batch[0].numpy(), rtol=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# Relighting the synthetic stage


def test_white_furnace_gives_back_the_albedo(rig):
    """Uniform radiance 1 relights an unoccluded Lambertian point to its albedo: Σ_k w_k max(0, n·d_k)/π ≈ 1."""
    white = np.ones((32, 64, 3), np.float32)
    weights = envmap_to_led_weights(white, rig)
    errors = []
    for spec in (sphere_subject(0.8, albedo=(0.7, 0.5, 0.3)), random_subject(0), random_subject(3)):
        s = render_subject(spec, rig, size=(64, 64), specular=False)
        image = relight(s.olat, weights)
        points = s.unoccluded
        assert points.sum() > 50
        errors.append(np.abs(image[points] / s.albedo[points] - 1.0).max())
    assert max(errors) < 0.03, f"white-furnace error {max(errors):.4f}"


def _sun_map(height: int = 32) -> np.ndarray:
    """Dim ambient light plus a small bright sun on the left (−x): column W/4 at the horizon row."""
    env = np.full((height, 2 * height, 3), 0.02, np.float32)
    row, col = height // 2, (2 * height) // 4
    env[row - 1:row + 1, col - 1:col + 1] = 500.0  # the 2x2 pixels around direction −x
    return env


def test_sun_on_the_left_lights_the_left_half_and_rotation_moves_it(rig):
    sphere = render_subject(sphere_subject(0.8), rig, size=(32, 32), specular=False)
    env = _sun_map()
    sun = latlong_directions(32)[15:17, 15:17].reshape(-1, 3).mean(axis=0)
    np.testing.assert_allclose(sun / np.linalg.norm(sun), [-1.0, 0.0, 0.0], atol=1e-6)

    def halves(lighting):
        image = relight(sphere.olat, envmap_to_led_weights(lighting, rig)).mean(axis=-1)
        return image[:, :16].sum(), image[:, 16:].sum()

    left, right = halves(env)
    assert left > 5 * right
    rotated = rotate_envmap(env, 180)
    assert rotated[15:17, 47:49].min() == 500.0  # now around +x (column 3W/4)
    left, right = halves(rotated)
    assert right > 5 * left


def test_rotation_identities():
    env = _sky_with_sun(16)
    np.testing.assert_array_equal(rotate_envmap(env, 360), env)
    np.testing.assert_array_equal(rotate_envmap(env, 0), env)
    np.testing.assert_array_equal(rotate_envmap(rotate_envmap(env, 90), 270), env)
    np.testing.assert_array_equal(rotate_envmap(rotate_envmap(env, 45), -45), env)
    t = torch.from_numpy(env)
    out = rotate_envmap(t, 360)
    assert isinstance(out, torch.Tensor) and torch.equal(out, t)


def test_rotation_moves_light_towards_larger_longitude():
    """Radiance from longitude φ comes from φ + Δφ after rotate_envmap(env, Δφ)."""
    env = _blob(32, _dir(-40, 10))
    rotated = rotate_envmap(env, 90)  # 90° = 16 columns of a 64-wide map
    np.testing.assert_array_equal(rotated, np.roll(env, 16, axis=1))
    peak = np.unravel_index(rotated[..., 0].argmax(), rotated.shape[:2])
    d = latlong_directions(32)[peak]
    assert math.degrees(math.atan2(d[0], -d[2])) == pytest.approx(50, abs=6)
    # A fractional rotation conserves energy (per row, hence in ∫ L dω).
    np.testing.assert_allclose(_integral(rotate_envmap(env, 33.3)), _integral(env), rtol=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# Perspective crops


def _centroid(crop: np.ndarray) -> tuple[float, float]:
    """Intensity-weighted (row, column) with pixel centres at integer + 0.5."""
    lum = crop[..., 0].astype(np.float64)
    rows, cols = np.mgrid[0:crop.shape[0], 0:crop.shape[1]] + 0.5
    return (lum * rows).sum() / lum.sum(), (lum * cols).sum() / lum.sum()


CROP = dict(fov_deg=60.0, size=(96, 128))
FOCAL = 64 / math.tan(math.radians(30))  # pixels: half width / tan(half fov)


@pytest.mark.parametrize("yaw, pitch, longitude, elevation, expected", [
    # Looking along −z at the horizon: hand-computed pinhole projections.
    (0, 0, 0, 0, (48.0, 64.0)),
    (0, 0, 15, 0, (48.0, 64 + FOCAL * math.tan(math.radians(15)))),  # +x appears to the right
    (0, 0, 0, 10, (48 - FOCAL * math.tan(math.radians(10)), 64.0)),  # up appears at the top
    # Turning right (yaw > 0, towards +x) brings a light at longitude +40° to the centre.
    (40, 0, 40, 0, (48.0, 64.0)),
    (40, 0, 50, 0, (48.0, 64 + FOCAL * math.tan(math.radians(10)))),
    (40, 0, 40, -12, (48 + FOCAL * math.tan(math.radians(12)), 64.0)),
    (-70, 0, -70, 0, (48.0, 64.0)),
    # Looking up (pitch > 0).
    (0, 25, 0, 25, (48.0, 64.0)),
    (0, 25, 0, 35, (48 - FOCAL * math.tan(math.radians(10)), 64.0)),
    (120, -20, 120, -20, (48.0, 64.0)),
])
def test_perspective_crop_puts_a_marked_direction_where_a_pinhole_predicts(yaw, pitch, longitude, elevation, expected):
    direction = _dir(longitude, elevation)
    crop = perspective_crop(_blob(256, direction), yaw_deg=yaw, pitch_deg=pitch, **CROP)
    assert crop.shape == (96, 128, 3) and crop.dtype == np.float32
    row, col = _centroid(crop)
    assert row == pytest.approx(expected[0], abs=0.35) and col == pytest.approx(expected[1], abs=0.35)
    predicted = project_to_pixel(direction, yaw_deg=yaw, pitch_deg=pitch, **CROP)
    assert predicted == pytest.approx(expected, abs=1e-6)


def test_perspective_crop_general_pose_agrees_with_project_to_pixel():
    direction = _dir(25, 18)
    crop = perspective_crop(_blob(256, direction), yaw_deg=15, pitch_deg=10, **CROP)
    row, col = _centroid(crop)
    expected = project_to_pixel(direction, yaw_deg=15, pitch_deg=10, **CROP)
    assert (row, col) == pytest.approx(expected, abs=0.35)
    # Independent check: rotate the direction into the camera frame (undo yaw about y, then pitch about x).
    yaw, pitch = math.radians(15), math.radians(10)
    x, y, z = direction
    x, z = x * math.cos(yaw) + z * math.sin(yaw), -x * math.sin(yaw) + z * math.cos(yaw)
    y, z = y * math.cos(pitch) + z * math.sin(pitch), -y * math.sin(pitch) + z * math.cos(pitch)
    assert expected == pytest.approx((48 - FOCAL * y / -z, 64 + FOCAL * x / -z), abs=1e-9)


def test_perspective_crop_of_a_constant_map_is_constant_and_torch_in_torch_out():
    env = np.full((16, 32, 3), 0.25, np.float32)
    np.testing.assert_allclose(perspective_crop(env, 90.0, 30.0, -10.0, size=(8, 12)), 0.25, rtol=1e-6)
    out = perspective_crop(torch.from_numpy(env), 90.0, size=(8, 12))
    assert isinstance(out, torch.Tensor) and out.shape == (8, 12, 3)


# ----------------------------------------------------------------------------------------------------------------
# relight()


def test_relight_returns_the_input_kind_and_batches():
    rng = np.random.default_rng(1)
    olat = rng.uniform(0, 1, size=(10, 6, 7, 3)).astype(np.float32)
    weights = rng.uniform(0, 1, size=(4, 10, 3))
    single = relight(olat, weights[0])
    assert isinstance(single, np.ndarray) and single.shape == (6, 7, 3)
    np.testing.assert_allclose(single, np.einsum("nhwc,nc->hwc", olat, weights[0]), rtol=1e-5)
    batched = relight(olat, weights)
    assert isinstance(batched, np.ndarray) and batched.shape == (4, 6, 7, 3)
    for b in range(4):
        np.testing.assert_allclose(batched[b], relight(olat, weights[b]), rtol=1e-6, atol=1e-7)
    t = relight(torch.from_numpy(olat), torch.from_numpy(weights))
    assert isinstance(t, torch.Tensor) and t.shape == (4, 6, 7, 3)
    np.testing.assert_allclose(t.numpy(), batched, rtol=1e-6)
    assert isinstance(relight(torch.from_numpy(olat), weights[0]), torch.Tensor)


def test_relighting_is_linear_in_the_lighting(rig):
    subject = render_subject(random_subject(5), rig, size=(24, 24))
    a, b = _sky_with_sun(16), np.roll(_sky_with_sun(16), 9, axis=1)
    wa, wb = envmap_to_led_weights(a, rig), envmap_to_led_weights(b, rig)
    both = relight(subject.olat, envmap_to_led_weights(a + 2 * b, rig))
    np.testing.assert_allclose(both, relight(subject.olat, wa) + 2 * relight(subject.olat, wb), rtol=1e-4, atol=1e-6)

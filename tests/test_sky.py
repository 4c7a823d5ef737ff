"""The analytic sky: geometry of the sun, its energy and size, colours, clouds, ground, variety, determinism."""

import dataclasses
import math

import numpy as np
import pytest

from relightful.lighting import latlong_directions, latlong_solid_angles, rotate_envmap
from relightful.lighting.sky import (
    SUN_RADIUS_DEG,
    cloud_mask,
    cloud_transmittance,
    preetham_sky,
    random_sky,
    random_sky_params,
    sky_envmap,
    sun_footprint,
    sun_radiance,
)

LUM = np.array([0.2126, 0.7152, 0.0722])
OMEGA_SUN = 2 * math.pi * (1 - math.cos(math.radians(SUN_RADIUS_DEG)))


def _angles_of(d):
    return math.degrees(math.asin(d[1])), math.degrees(math.atan2(d[0], -d[2]))


def _horizontal_irradiance(env):
    h = env.shape[0]
    d = latlong_directions(h)
    w = (np.maximum(d[..., 1], 0) * latlong_solid_angles(h)).astype(np.float64)
    return (env.astype(np.float64) * w[..., None]).sum(axis=(0, 1))


def test_shape_finite_non_negative():
    env = sky_envmap(32, 40.0, 10.0, 3.0)
    assert env.shape == (32, 64, 3) and env.dtype == np.float32
    assert np.isfinite(env).all() and env.min() >= 0.0


@pytest.mark.parametrize("height,pixel", [(16, (3, 5)), (64, (10, 70)), (64, (30, 100)), (256, (20, 400))])
def test_sun_lands_on_the_pixel_of_its_direction(height, pixel):
    elevation, azimuth = _angles_of(latlong_directions(height)[pixel].astype(np.float64))
    env = sky_envmap(height, elevation, azimuth, 3.0)
    lum = env @ LUM.astype(np.float32)
    assert np.unravel_index(np.argmax(lum), lum.shape) == pixel


@pytest.mark.parametrize("height", [8, 32, 128])
def test_sun_off_centre_stays_within_a_pixel(height):
    rng = np.random.default_rng(height)
    dirs = latlong_directions(height).reshape(-1, 3)
    for _ in range(5):
        elevation, azimuth = rng.uniform(5, 80), rng.uniform(-180, 180)
        env = sky_envmap(height, elevation, azimuth)
        peak = dirs[np.argmax(env @ LUM.astype(np.float32))]
        s = np.array([math.cos(math.radians(elevation)) * math.sin(math.radians(azimuth)),
                      math.sin(math.radians(elevation)),
                      -math.cos(math.radians(elevation)) * math.cos(math.radians(azimuth))])
        assert math.degrees(math.acos(min(1.0, float(peak @ s)))) < 180.0 / height * 1.5


@pytest.mark.parametrize("height", [4, 16, 64, 200])
def test_sun_energy_is_radiance_times_disc_solid_angle(height):
    elevation, azimuth, turbidity = 47.0, -33.0, 2.5
    sun_part = sky_envmap(height, elevation, azimuth, turbidity) - sky_envmap(height, elevation, azimuth, turbidity,
                                                                              sun=False)
    integral = (sun_part.astype(np.float64) * latlong_solid_angles(height)[..., None]).sum(axis=(0, 1))
    np.testing.assert_allclose(integral, sun_radiance(elevation, turbidity) * OMEGA_SUN, rtol=1e-4)


def test_sun_disc_has_its_real_size_when_pixels_are_small():
    rows, cols, weights = sun_footprint(4096, 30.0, 20.0)
    omega = latlong_solid_angles(4096)[rows, cols]
    covered = omega[weights > 0].sum()
    assert 1.0 < covered / OMEGA_SUN < 1.6  # edge pixels are partly covered
    # centre radiance / mean radiance of a limb-darkened disc = 1 / (1 - u/3) = 1.25 for u = 0.6
    assert weights.max() * OMEGA_SUN == pytest.approx(1.25, rel=0.05)
    np.testing.assert_allclose((weights * omega).sum(), 1.0, rtol=1e-5)


def test_sun_footprint_at_the_zenith_and_at_tiny_resolution():
    for height in (2, 16):
        rows, cols, weights = sun_footprint(height, 90.0, 0.0)
        np.testing.assert_allclose((weights * latlong_solid_angles(height)[rows, cols]).sum(), 1.0, rtol=1e-6)
        assert set(rows.tolist()) == {0}


def test_sun_carries_most_irradiance_at_high_elevation():
    env = sky_envmap(64, 75.0, 0.0, 2.0)
    sky_only = sky_envmap(64, 75.0, 0.0, 2.0, sun=False)
    sun_e = _horizontal_irradiance(env - sky_only) @ LUM
    sky_e = _horizontal_irradiance(sky_only) @ LUM
    assert sun_e / sky_e > 3.0
    # plausible absolute scale (kcd/m² -> klx): direct ≈ 80-120 klx, diffuse ≈ 10-40 klx
    assert 80 < sun_e < 120 and 10 < sky_e < 40


def test_zenith_luminance_matches_preetham_in_kcd():
    # Preetham 1999: Yz = (4.0453 T - 4.9710) tan χ - 0.2155 T + 2.4192, χ = (4/9 - T/120)(π - 2θs)
    t, theta_s = 2.0, math.radians(30.0)
    chi = (4 / 9 - t / 120) * (math.pi - 2 * theta_s)
    expected = (4.0453 * t - 4.9710) * math.tan(chi) - 0.2155 * t + 2.4192
    zenith = preetham_sky(np.array([0.0, 1.0, 0.0]), 60.0, 0.0, t)
    assert zenith @ LUM == pytest.approx(expected, rel=1e-3)


def test_low_sun_is_redder_than_high_sun():
    low, high = sun_radiance(8.0, 3.0), sun_radiance(70.0, 3.0)
    assert low[0] / low[2] > 2 * high[0] / high[2]
    assert high[0] >= high[1] >= high[2] > 0  # a high sun is near white, slightly warm
    # a face turned towards the sun (normal −z, the sun straight ahead) is lit warmer by a low sun
    d = latlong_directions(32)
    w = (np.maximum(-d[..., 2], 0) * latlong_solid_angles(32)).astype(np.float64)[..., None]
    e_low = (sky_envmap(32, 8.0, 0.0, 3.0) * w).sum(axis=(0, 1))
    e_high = (sky_envmap(32, 70.0, 0.0, 3.0) * w).sum(axis=(0, 1))
    assert e_low[0] / e_low[2] > 1.2 * e_high[0] / e_high[2]


def test_sky_is_bluish():
    zenith = preetham_sky(np.array([0.0, 1.0, 0.0]), 45.0, 0.0, 3.0)
    assert zenith[2] > zenith[1] > zenith[0]


@pytest.mark.parametrize("elevation", [10.0, 45.0, 80.0])
def test_ground_is_darker_than_sky(elevation):
    height = 32
    env = sky_envmap(height, elevation, 0.0, 3.0, sun=False)
    omega = latlong_solid_angles(height)
    up = latlong_directions(height)[..., 1] > 0
    sky_mean = (env[up] @ LUM * omega[up]).sum() / omega[up].sum()
    ground = env[~up] @ LUM
    assert np.allclose(ground, ground[0], rtol=1e-5)  # uniform Lambertian ground
    assert ground[0] < sky_mean


def test_azimuth_follows_the_map_longitude():
    # +azimuth is a rotation of the map (DESIGN 3.1 rotate_envmap), exact for whole pixels
    height = 32
    step = 360.0 / (2 * height)
    a = sky_envmap(height, 35.0, 10.0, 3.0)
    b = sky_envmap(height, 35.0, 10.0 + 5 * step, 3.0)
    np.testing.assert_allclose(rotate_envmap(a, 5 * step), b, rtol=1e-4, atol=1e-4)
    # azimuth 90 puts the sun on the right (+x), column 3W/4
    lum = sky_envmap(height, 20.0, 90.0) @ LUM.astype(np.float32)
    assert abs(np.unravel_index(np.argmax(lum), lum.shape)[1] - 3 * 2 * height // 4) <= 1


def test_random_sky_is_deterministic_and_in_range():
    np.testing.assert_array_equal(random_sky(7, 16), random_sky(7, 16))
    np.testing.assert_array_equal(random_sky(np.random.default_rng(7), 16), random_sky(7, 16))
    assert not np.array_equal(random_sky(7, 16), random_sky(8, 16))
    rng = np.random.default_rng(0)
    for _ in range(50):
        p = random_sky_params(rng)
        assert 2 <= p.elevation_deg <= 85 and -180 <= p.azimuth_deg < 180 and 2 <= p.turbidity <= 6
        assert 0.05 <= p.ground_albedo <= 0.85 and 0.0 <= p.cloud_cover <= 1.0
        assert sky_envmap(4, **dataclasses.asdict(p)).min() >= 0.0


def test_random_skies_vary_in_sun_clouds_haze_and_ground():
    """Training generalises only if maps vary: 200 draws cover low and high suns, every azimuth quadrant, clear,
    scattered and overcast skies, clear and hazy air, dark and bright grounds of several colours."""
    rng = np.random.default_rng(1)
    ps = [random_sky_params(rng) for _ in range(200)]
    elevation = np.array([p.elevation_deg for p in ps])
    cover = np.array([p.cloud_cover for p in ps])
    assert (elevation < 15).mean() > 0.1 and (elevation > 60).mean() > 0.2
    assert len({int((p.azimuth_deg + 180) // 90) for p in ps}) == 4
    assert 0.25 < (cover == 0).mean() < 0.45 and 0.15 < (cover >= 0.85).mean() < 0.35
    assert ((cover > 0.1) & (cover < 0.75)).mean() > 0.3
    turbidity = np.array([p.turbidity for p in ps])
    assert turbidity.min() < 2.5 and turbidity.max() > 5.5
    albedo = np.array([p.ground_albedo for p in ps])
    assert albedo.min() < 0.1 and albedo.max() > 0.6
    assert len({p.ground_tint for p in ps}) >= 5
    assert len({p.cloud_seed for p in ps}) == 200


def _sun_part(height, **kw):
    return sky_envmap(height, **kw) - sky_envmap(height, **kw, sun=False)


def test_overcast_sky_hides_the_sun_and_dims_the_light():
    height, kw = 64, dict(elevation_deg=50.0, azimuth_deg=20.0, turbidity=3.0)
    clear = sky_envmap(height, **kw)
    overcast = sky_envmap(height, **kw, cloud_cover=1.0, cloud_seed=5)
    assert np.abs(_sun_part(height, **kw, cloud_cover=1.0, cloud_seed=5)).max() == 0.0  # no sun disc
    ratio = _horizontal_irradiance(overcast) / _horizontal_irradiance(clear)
    np.testing.assert_allclose(ratio, cloud_transmittance(1.0), rtol=1e-2)  # of all light, through the clouds
    # soft light: the brightest sky pixel is within a few times the mean, against about 10^5 for the clear sky
    up = latlong_directions(height)[..., 1] > 0
    lum, lum_clear = overcast @ LUM, clear @ LUM
    assert lum[up].max() / lum[up].mean() < 3.0 and lum_clear[up].max() / lum_clear[up].mean() > 1e3
    # brighter towards the zenith (CIE overcast sky), a near-neutral colour
    assert lum[1].mean() > 2.0 * lum[height // 2 - 1].mean()
    zenith = overcast[0].mean(axis=0)
    assert zenith.max() / zenith.min() < 1.5


@pytest.mark.parametrize("cover", [0.2, 0.5, 0.8])
def test_cloud_cover_is_the_covered_fraction_of_the_sky(cover):
    height = 64
    d = latlong_directions(height).astype(np.float64)
    omega = latlong_solid_angles(height).astype(np.float64)
    mask, at = cloud_mask(d, omega, cover, seed=3, at=d[5, 7])
    up = d[..., 1] > 0
    assert (mask[up] * omega[up]).sum() / omega[up].sum() == pytest.approx(cover, abs=0.05)
    assert at == pytest.approx(mask[5, 7])  # the sun's opacity uses the same field and threshold
    assert 0.0 <= mask.min() and mask.max() <= 1.0


def test_scattered_clouds_either_show_or_hide_the_sun():
    """The sun disc is dimmed by the cloud in its direction: some seeds leave it visible, others hide it."""
    shown = []
    for seed in range(12):
        sun = _sun_part(32, elevation_deg=40.0, azimuth_deg=0.0, cloud_cover=0.5, cloud_seed=seed)
        full = _sun_part(32, elevation_deg=40.0, azimuth_deg=0.0)
        shown.append(float(sun.sum() / full.sum()))
    shown = np.array(shown)
    assert ((shown > 0.9).sum() >= 2) and ((shown < 0.1).sum() >= 2)
    assert np.all((shown >= 0.0) & (shown <= 1.0 + 1e-6))
    a = sky_envmap(16, 40.0, 0.0, cloud_cover=0.5, cloud_seed=1)
    np.testing.assert_array_equal(a, sky_envmap(16, 40.0, 0.0, cloud_cover=0.5, cloud_seed=1))
    assert not np.array_equal(a, sky_envmap(16, 40.0, 0.0, cloud_cover=0.5, cloud_seed=2))


def test_ground_tint_colours_the_ground_at_its_albedo():
    height = 16
    up = latlong_directions(height)[..., 1] > 0
    grey = sky_envmap(height, 45.0, 0.0, ground_albedo=0.2)[~up][0].astype(np.float64)
    grass = sky_envmap(height, 45.0, 0.0, ground_albedo=0.2, ground_tint=(0.5, 1.0, 0.3))[~up][0].astype(np.float64)
    tint = np.array([0.5, 1.0, 0.3])
    np.testing.assert_allclose(grass, grey * tint / (tint @ LUM), rtol=1e-5)  # per channel, luminance albedo 0.2
    assert grass[1] > grass[0] > grass[2]
    with pytest.raises(ValueError, match="tint"):
        sky_envmap(height, 45.0, 0.0, ground_tint=(0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="above 1"):
        sky_envmap(height, 45.0, 0.0, ground_albedo=0.9, ground_tint=(0.05, 0.05, 1.0))


def test_rejects_bad_parameters():
    with pytest.raises(ValueError, match="elevation"):
        sky_envmap(8, 95.0, 0.0)
    with pytest.raises(ValueError, match="turbidity"):
        sky_envmap(8, 45.0, 0.0, turbidity=20.0)
    with pytest.raises(ValueError, match="albedo"):
        sky_envmap(8, 45.0, 0.0, ground_albedo=1.5)
    with pytest.raises(ValueError, match="cloud cover"):
        sky_envmap(8, 45.0, 0.0, cloud_cover=1.2)

"""Analytic sky environment maps: Preetham sky, a physically sized sun disc, procedural clouds, an albedo-lit ground.

The sky is the Preetham, Shirley & Smits (1999) model ("A practical analytic model for daylight"), with its published
Perez coefficients and zenith luminance/chromaticity fits for turbidity T in [2, 10]. The sun's colour and strength
come from a spectral Beer-Lambert transmittance (Rayleigh optical depth of Leckner 1978, Ångström aerosol depth with
Preetham's β(T), Kasten & Young 1989 air mass) applied to a 5778 K black body scaled to the solar luminous constant,
integrated against the CIE 1931 observer (analytic fit of Wyman, Sloan & Shirley 2013). Ozone and water vapour
absorption are left out.

Horizontal illuminance, sun / sky in klx (measured at H = 128): T = 2: 16/21 at 15° elevation, 45/24 at 30°, 92/24 at
60°, 108/24 at 80°; T = 3: 11/17, 37/24, 82/32, 97/35. The direct part is close to measured clear days; the sky
part is above the 10-20 klx typical of measured clear skies (see Zotti et al. 2007 for Preetham's deviations from
the CIE sky models), so the sun's share is on the low side of reality.

Units: linear sRGB (Rec. 709 primaries, D65 white) in kcd/m², i.e. the luminance 0.2126 R + 0.7152 G + 0.0722 B of a
pixel is its luminance in thousands of candela per m². A clear zenith is a few units, the sun disc about 10⁶.

Geometry follows DESIGN 3.1: the sun's azimuth is the map longitude φ (0 = the view direction −z, the centre column;
+90 = +x, column 3W/4), elevation is measured up from the horizon (y = 0).

Clouds (`cloud_cover` > 0): a band-limited noise field on the sphere (a sum of random plane waves in 3D, drawn from
`cloud_seed`) thresholded at the solid-angle quantile that covers `cloud_cover` of the sky, with soft edges. Where
the mask is 1 the sky is the CIE overcast sky (Moon & Spencer 1942: L ∝ (1 + 2 sin e)/3) scaled so that a fully
covered sky passes `cloud_transmittance(cloud_cover)` (0.6 for scattered clouds down to 0.3 overcast) of the clear
sky's horizontal illuminance, tinted by its colour (warm at a low sun); the sun disc is dimmed by the mask in its
direction, so it is visible, veiled or hidden. `cloud_cover = 1` is an overcast sky: soft light, no sun. The ground
is Lambertian with a grey `ground_albedo` times a colour `ground_tint` (luminance 1: grass, soil, snow, asphalt).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from relightful.lighting.envmap import latlong_directions, latlong_solid_angles

SUN_RADIUS_DEG = 0.2665  # angular radius of the solar disc (mean diameter 0.533°)
SOLAR_LUMINOUS_CONSTANT_KLX = 133.8  # extraterrestrial normal illuminance (Darula et al. 2005)
SUN_TEMPERATURE_K = 5778.0
LIMB_DARKENING = 0.6  # linear limb-darkening coefficient in the visible

_XYZ_TO_SRGB = np.array([[3.2404542, -1.5371385, -0.4985314],
                         [-0.9692660, 1.8760108, 0.0415560],
                         [0.0556434, -0.2040259, 1.0572252]])

# Preetham et al. 1999, appendix A.2: Perez coefficients (A..E) = M @ (T, 1).
_PEREZ_Y = np.array([[0.1787, -1.4630], [-0.3554, 0.4275], [-0.0227, 5.3251], [0.1206, -2.5771], [-0.0670, 0.3703]])
_PEREZ_X = np.array([[-0.0193, -0.2592], [-0.0665, 0.0008], [-0.0004, 0.2125], [-0.0641, -0.8989], [-0.0033, 0.0452]])
_PEREZ_YC = np.array([[-0.0167, -0.2608], [-0.0950, 0.0092], [-0.0079, 0.2102], [-0.0441, -1.6537], [-0.0109, 0.0529]])
# Zenith chromaticity: (T², T, 1) @ M @ (θs³, θs², θs, 1).
_ZENITH_X = np.array([[0.00166, -0.00375, 0.00209, 0.0],
                      [-0.02903, 0.06377, -0.03202, 0.00394],
                      [0.11693, -0.21196, 0.06052, 0.25886]])
_ZENITH_Y = np.array([[0.00275, -0.00610, 0.00317, 0.0],
                      [-0.04214, 0.08970, -0.04153, 0.00516],
                      [0.15346, -0.26756, 0.06670, 0.26688]])


LUMINANCE = np.array([0.2126, 0.7152, 0.0722])  # Rec. 709 luminance of linear sRGB
CLOUD_WAVES = 48  # plane waves of the cloud noise
CLOUD_EDGE = 0.35  # soft edge of a cloud, in standard deviations of the noise


@dataclass(frozen=True)
class SkyParams:
    """Parameters of one sky: sun position in degrees, Preetham turbidity, ground albedo and colour, clouds."""

    elevation_deg: float
    azimuth_deg: float
    turbidity: float = 3.0
    ground_albedo: float = 0.15
    ground_tint: tuple[float, float, float] = (1.0, 1.0, 1.0)  # ground colour, normalised to luminance 1
    cloud_cover: float = 0.0  # fraction of the sky (by solid angle) under cloud, 0 clear .. 1 overcast
    cloud_seed: int = 0


def sun_direction(elevation_deg: float, azimuth_deg: float) -> np.ndarray:
    """Unit vector towards the sun (float64 (3,)) in the camera space of DESIGN 3.1."""
    e, a = math.radians(elevation_deg), math.radians(azimuth_deg)
    return np.array([math.cos(e) * math.sin(a), math.sin(e), -math.cos(e) * math.cos(a)])


def _perez(cos_theta, gamma, coeffs):
    a, b, c, d, e = coeffs
    return (1.0 + a * np.exp(b / cos_theta)) * (1.0 + c * np.exp(d * gamma) + e * np.cos(gamma) ** 2)


def _xyY_to_srgb(x, y, lum):
    y = np.maximum(y, 1e-6)
    xyz = np.stack([x * lum / y, lum, (1.0 - x - y) * lum / y], axis=-1)
    return xyz @ _XYZ_TO_SRGB.T


def preetham_sky(directions: np.ndarray, elevation_deg: float, azimuth_deg: float, turbidity: float) -> np.ndarray:
    """Sky radiance (..., 3) float64 in kcd/m² (linear sRGB) for unit directions (..., 3); zero below the horizon."""
    if not 1.7 <= turbidity <= 10.0:
        raise ValueError(f"turbidity must be in [1.7, 10] (Preetham's fitted range), got {turbidity}")
    t = float(turbidity)
    theta_s = math.pi / 2 - math.radians(elevation_deg)
    s = sun_direction(elevation_deg, azimuth_deg)
    d = np.asarray(directions, dtype=np.float64)
    cos_theta = np.maximum(d[..., 1], 1e-3)
    gamma = np.arccos(np.clip(d @ s, -1.0, 1.0))

    chi = (4.0 / 9.0 - t / 120.0) * (math.pi - 2.0 * theta_s)
    zenith_lum = (4.0453 * t - 4.9710) * math.tan(chi) - 0.2155 * t + 2.4192
    tv, sv = np.array([t * t, t, 1.0]), np.array([theta_s ** 3, theta_s ** 2, theta_s, 1.0])
    zenith = {"Y": zenith_lum, "x": tv @ _ZENITH_X @ sv, "y": tv @ _ZENITH_Y @ sv}
    out = {}
    for key, table in (("Y", _PEREZ_Y), ("x", _PEREZ_X), ("y", _PEREZ_YC)):
        coeffs = table @ np.array([t, 1.0])
        out[key] = zenith[key] * _perez(cos_theta, gamma, coeffs) / _perez(1.0, theta_s, coeffs)
    rgb = np.maximum(_xyY_to_srgb(out["x"], out["y"], np.maximum(out["Y"], 0.0)), 0.0)
    return np.where((d[..., 1] > 0)[..., None], rgb, 0.0)


def _cie_cmf(lam_nm: np.ndarray) -> np.ndarray:
    """CIE 1931 2° colour matching functions (N, 3), multi-lobe Gaussian fit of Wyman, Sloan & Shirley (2013)."""

    def g(mu, s1, s2):
        return np.exp(-0.5 * ((lam_nm - mu) / np.where(lam_nm < mu, s1, s2)) ** 2)

    x = 1.056 * g(599.8, 37.9, 31.0) + 0.362 * g(442.0, 16.0, 26.7) - 0.065 * g(501.1, 20.4, 26.2)
    y = 0.821 * g(568.8, 46.9, 40.5) + 0.286 * g(530.9, 16.3, 31.1)
    z = 1.217 * g(437.0, 11.8, 36.0) + 0.681 * g(459.0, 26.0, 13.8)
    return np.stack([x, y, z], axis=-1)


def air_mass(elevation_deg: float) -> float:
    """Relative optical air mass (Kasten & Young 1989), 1 at the zenith, about 38 at the horizon."""
    z = 90.0 - float(elevation_deg)
    return 1.0 / (math.cos(math.radians(z)) + 0.50572 * (96.07995 - z) ** -1.6364)


def sun_radiance(elevation_deg: float, turbidity: float) -> np.ndarray:
    """Mean radiance of the solar disc seen from the ground, (3,) float64 linear sRGB in kcd/m²."""
    lam = np.arange(380.0, 781.0, 5.0)
    um = lam / 1000.0
    planck = um ** -5 / np.expm1(14387.77 / (um * SUN_TEMPERATURE_K))
    beta = 0.04608 * turbidity - 0.04586  # Ångström turbidity coefficient from T (Preetham, appendix)
    tau = 0.008735 * um ** -4.08 + beta * um ** -1.3
    trans = np.exp(-air_mass(max(elevation_deg, 0.0)) * tau)
    cmf = _cie_cmf(lam)
    omega_sun = 2 * math.pi * (1 - math.cos(math.radians(SUN_RADIUS_DEG)))
    top_lum = SOLAR_LUMINOUS_CONSTANT_KLX / omega_sun  # klx / sr = kcd/m²
    xyz = (planck * trans) @ cmf * (top_lum / (planck @ cmf[:, 1]))
    return np.maximum(_XYZ_TO_SRGB @ xyz, 0.0)


def sun_footprint(height: int, elevation_deg: float, azimuth_deg: float,
                  radius_deg: float = SUN_RADIUS_DEG) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixels covered by the sun disc: (rows, cols, weights) with Σ weights · pixel solid angle = 1.

    Coverage is measured with sub-pixel samples spaced at most a quarter of the sun's radius (limb-darkened), so the
    disc has its true size when pixels are smaller than the sun, and its energy lands on the one to four pixels it
    touches when they are larger. Pixels wider than 16 sun radii (H < 43) take the whole disc in the pixel holding
    its centre. Multiply the weights by the sun's irradiance at normal incidence to get radiance.
    """
    h, w = height, 2 * height
    step = math.pi / h
    r = math.radians(radius_deg)
    theta_s = math.pi / 2 - math.radians(elevation_deg)
    phi_s = (math.radians(azimuth_deg) + math.pi) % (2 * math.pi) - math.pi
    n = max(2, math.ceil(4 * step / r))
    if n > 64:
        i, j = min(int(theta_s / step), h - 1), int((phi_s + math.pi) / step) % w
        return np.array([i]), np.array([j]), np.array([1.0 / float(latlong_solid_angles(h)[i, j])])
    rows = np.arange(max(0, int((theta_s - r) / step) - 1), min(h, int((theta_s + r) / step) + 2))
    top = theta_s - r - step
    half = (r / math.sin(top) + step) if top > 0 else math.pi
    if half >= math.pi:
        cols = np.arange(w)
    else:
        centre = (phi_s + math.pi) / step
        cols = np.unique(np.arange(int(centre - half / step) - 1, int(centre + half / step) + 2) % w)
    sub = (np.arange(n) + 0.5) / n
    theta = (rows[:, None, None, None] + sub[None, None, :, None]) * step  # (R, 1, n, 1)
    phi = (cols[None, :, None, None] + sub[None, None, None, :]) * step - math.pi  # (1, C, 1, n)
    s = sun_direction(elevation_deg, azimuth_deg)
    cos_gamma = np.sin(theta) * np.sin(phi) * s[0] + np.cos(theta) * s[1] - np.sin(theta) * np.cos(phi) * s[2]
    rho2 = np.clip((1.0 - cos_gamma ** 2) / math.sin(r) ** 2, 0.0, 1.0)
    limb = np.where(cos_gamma >= math.cos(r), 1.0 - LIMB_DARKENING * (1.0 - np.sqrt(1.0 - rho2)), 0.0)
    area = np.broadcast_to(np.sin(theta), limb.shape)
    coverage = (limb * area).sum(axis=(2, 3)) / area.sum(axis=(2, 3))
    omega = latlong_solid_angles(h)[rows][:, cols].astype(np.float64)
    total = (coverage * omega).sum()
    if total <= 0:
        raise RuntimeError("sun disc fell between sub-samples; this is a bug")
    ii, jj = np.nonzero(coverage)
    return rows[ii], cols[jj], coverage[ii, jj] / total


def cloud_noise(directions: np.ndarray, seed: int) -> np.ndarray:
    """A smooth random field on the sphere (...,) float64 of unit variance: plane waves of 1-12 cycles per radian with
    a 1/f amplitude spectrum, so clouds have a few large shapes and some detail. Same seed, same field."""
    rng = np.random.default_rng([int(seed), 0x5C1])
    axes = rng.standard_normal((CLOUD_WAVES, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    freq = np.exp(rng.uniform(math.log(1.0), math.log(12.0), CLOUD_WAVES))
    phase = rng.uniform(0.0, 2 * math.pi, CLOUD_WAVES)
    amp = 1.0 / freq
    field = np.cos(np.asarray(directions, dtype=np.float64) @ (axes * freq[:, None]).T + phase) @ amp
    return field / math.sqrt(0.5 * float(amp @ amp))


def cloud_transmittance(cloud_cover: float) -> float:
    """Horizontal illuminance of a fully cloud-covered sky over that of the clear sky: thick clouds for overcast."""
    return 0.6 - 0.3 * float(cloud_cover)


def _overcast_pattern(directions: np.ndarray, omega: np.ndarray) -> np.ndarray:
    """CIE overcast luminance (1 + 2 sin e)/3 above the horizon, scaled to unit horizontal irradiance; 0 below."""
    e = np.maximum(directions[..., 1], 0.0)
    pattern = np.where(directions[..., 1] > 0, (1.0 + 2.0 * e) / 3.0, 0.0)
    return pattern / float((pattern * e * omega).sum())


def cloud_mask(directions: np.ndarray, omega: np.ndarray, cloud_cover: float, seed: int,
               at: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Cloud opacity in [0, 1] at `directions` (its upper-hemisphere, solid-angle weighted mean ≈ `cloud_cover`),
    and at the extra directions `at` (e.g. the sun) with the same threshold."""
    if cloud_cover <= 0.0:
        return np.zeros(directions.shape[:-1]), None if at is None else np.zeros(np.shape(at)[:-1])
    noise = cloud_noise(directions, seed)
    up = directions[..., 1] > 0
    values, weights = noise[up], omega[up]
    order = np.argsort(values)
    cdf = np.cumsum(weights[order]) / weights.sum()
    threshold = float(np.interp(1.0 - cloud_cover, cdf, values[order])) if cloud_cover < 1.0 else -np.inf

    def opacity(n):
        if not np.isfinite(threshold):
            return np.ones_like(n)
        t = np.clip((n - threshold) / CLOUD_EDGE + 0.5, 0.0, 1.0)
        return t * t * (3.0 - 2.0 * t)  # smoothstep across the edge

    return opacity(noise), None if at is None else opacity(cloud_noise(at, seed))


def sky_envmap(height: int, elevation_deg: float, azimuth_deg: float, turbidity: float = 3.0,
               ground_albedo: float = 0.15, sun: bool = True, ground_tint=(1.0, 1.0, 1.0),
               cloud_cover: float = 0.0, cloud_seed: int = 0) -> np.ndarray:
    """Sky lat-long map (H, 2H, 3) float32, kcd/m² linear sRGB: Preetham sky, sun disc, clouds, Lambertian ground.

    The ground (below the horizon) has radiance albedo · tint / π times the horizontal irradiance of sky plus sun.
    `sun=False` leaves the disc out (sky and ground unchanged), for measuring the sun's share.
    """
    if not 0.0 <= elevation_deg <= 90.0:
        raise ValueError(f"sun elevation must be in [0, 90] degrees, got {elevation_deg}")
    if not 0.0 <= ground_albedo <= 1.0:
        raise ValueError(f"ground albedo must be in [0, 1], got {ground_albedo}")
    if not 0.0 <= cloud_cover <= 1.0:
        raise ValueError(f"cloud cover must be in [0, 1], got {cloud_cover}")
    tint = np.asarray(ground_tint, dtype=np.float64)
    if tint.shape != (3,) or not np.isfinite(tint).all() or tint.min() < 0 or tint @ LUMINANCE <= 0:
        raise ValueError(f"ground tint must be 3 non-negative numbers with a positive luminance, got {ground_tint}")
    ground_rgb = ground_albedo * tint / float(tint @ LUMINANCE)
    if ground_rgb.max() > 1.0:
        raise ValueError(f"ground albedo {ground_albedo} with tint {tuple(ground_tint)} gives a channel albedo above 1")
    dirs = latlong_directions(height).astype(np.float64)
    omega = latlong_solid_angles(height).astype(np.float64)
    env = preetham_sky(dirs, elevation_deg, azimuth_deg, turbidity)
    up = dirs[..., 1] > 0
    cos_up = np.maximum(dirs[..., 1], 0.0) * omega

    def horizontal_sky(radiance):
        return (radiance * cos_up[..., None]).sum(axis=(0, 1))

    sun_normal = sun_radiance(elevation_deg, turbidity) * 2 * math.pi * (1 - math.cos(math.radians(SUN_RADIUS_DEG)))
    sun_vertical = math.sin(math.radians(elevation_deg))
    sun_dir = sun_direction(elevation_deg, azimuth_deg)
    mask, mask_sun = cloud_mask(dirs, omega, cloud_cover, cloud_seed, at=sun_dir)
    if cloud_cover > 0.0:
        clear_global = horizontal_sky(env) + sun_normal * sun_vertical
        # thicker and thinner parts: ±30 % of the cloud's radiance from a second, independent field
        shading = 1.0 + 0.3 * np.tanh(cloud_noise(dirs, cloud_seed + 1))
        shading /= float((shading * mask * cos_up).sum() / max(float((mask * cos_up).sum()), 1e-12))
        clouds = (cloud_transmittance(cloud_cover) * _overcast_pattern(dirs, omega) * shading)[..., None] * clear_global
        env = (1.0 - mask[..., None]) * env + mask[..., None] * clouds
        sun_normal = sun_normal * (1.0 - float(mask_sun))
    horizontal = horizontal_sky(env) + sun_normal * sun_vertical
    env[~up] = ground_rgb / math.pi * horizontal
    if sun:
        rows, cols, weights = sun_footprint(height, elevation_deg, azimuth_deg)
        np.add.at(env, (rows, cols), weights[:, None] * sun_normal)
    return env.astype(np.float32)


# Ground colours (linear RGB, luminance-normalised by sky_envmap) and albedo ranges: what a sky stands over.
GROUNDS = {
    "grass": ((0.55, 1.0, 0.30), (0.08, 0.25)),
    "soil": ((1.0, 0.80, 0.55), (0.10, 0.30)),
    "sand": ((1.0, 0.90, 0.70), (0.25, 0.45)),
    "asphalt": ((1.0, 1.0, 1.0), (0.05, 0.15)),
    "concrete": ((1.0, 0.98, 0.95), (0.20, 0.35)),
    "snow": ((0.97, 0.99, 1.0), (0.60, 0.85)),
}
CLOUD_KINDS = (("clear", 0.35), ("scattered", 0.40), ("overcast", 0.25))  # how often each sky kind is drawn


def random_sky_params(rng_or_seed) -> SkyParams:
    """Draw a sky: elevation uniform in [2°, 85°], azimuth in [−180°, 180°), turbidity in [2, 6] (clear to hazy);
    clear (35 %), scattered clouds covering 10-75 % of the sky (40 %) or overcast, 85-100 % (25 %); a ground from
    `GROUNDS` (grass, soil, sand, asphalt, concrete, snow) with its albedo range."""
    rng = np.random.default_rng(rng_or_seed)
    elevation, azimuth = float(rng.uniform(2.0, 85.0)), float(rng.uniform(-180.0, 180.0))
    turbidity = float(rng.uniform(2.0, 6.0))
    kind = CLOUD_KINDS[int(rng.choice(len(CLOUD_KINDS), p=[p for _, p in CLOUD_KINDS]))][0]
    cover = {"clear": 0.0, "scattered": float(rng.uniform(0.10, 0.75)), "overcast": float(rng.uniform(0.85, 1.0))}[kind]
    ground = sorted(GROUNDS)[int(rng.integers(len(GROUNDS)))]
    tint, (lo, hi) = GROUNDS[ground]
    return SkyParams(elevation_deg=elevation, azimuth_deg=azimuth, turbidity=turbidity,
                     ground_albedo=float(rng.uniform(lo, hi)), ground_tint=tuple(float(c) for c in tint),
                     cloud_cover=cover, cloud_seed=int(rng.integers(2**31)))


def random_sky(rng_or_seed, height: int) -> np.ndarray:
    """A random sky (H, 2H, 3) float32; `rng_or_seed` is an int seed or a numpy Generator."""
    p = random_sky_params(rng_or_seed)
    return sky_envmap(height, p.elevation_deg, p.azimuth_deg, p.turbidity, p.ground_albedo,
                      ground_tint=p.ground_tint, cloud_cover=p.cloud_cover, cloud_seed=p.cloud_seed)

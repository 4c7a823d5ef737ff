"""The `shading` baseline (DESIGN 3.9): no learning, re-shading in the spirit of Careaga et al. 2023, "Intrinsic
Harmonization for Illumination-Aware Compositing": estimate the foreground's own shading and the background's
lighting, divide the one out and multiply the other in.

    out = fg · clamp(ρ₀ · S_t(n) / S_s(n), 1/16, 16)          per channel, linear light

- Normals n: the silhouette's union of inscribed spheres, `lighting/silhouette.py` (no geometry is
  known), computed at most NORMALS_SIDE pixels per side and upsampled.
- Source shading S_s(n) = a·max(0, n·d_s) + b: the clamped-cosine lobe plus ambient fitted to the foreground's own
  luminance (`light_direction.fit_lighting`). It carries the subject's albedo level too, so fg / S_s is a
  relative albedo of mean ≈ 1; ρ₀ = REFLECTANCE puts back an assumed mean reflectance (nothing in one photo
  separates albedo from light level). S_s is floored at SHADOW_FLOOR of its maximum: hard shadows hold no
  information to re-light and must not blow up.
- Target shading S_t(n) = A + D·max(0, n·d_t), RGB, in units of E/π (what a white Lambertian surface shows), from
  the background alone, seen as a pinhole of FOV_DEG looking along −z (DESIGN 3.1): each visible pixel is a
  direction and its linear colour the radiance from there.
  * A (ambient) is the mean colour of the visible background without its hot spot: an environment of uniform
    radiance L gives E/π = L exactly.
  * A compact hot spot (pixels brighter than HOT_RATIO × the median, at most HOT_MAX_FRACTION of the frame) is a
    light *in view*: it lies behind the subject (z < 0), so d_t is the brightness-weighted mean direction of
    those pixels and D = Σ (C − A)·Ω_pixel / π, the irradiance it delivers (a backlight: rim light only).
  * Otherwise the key light is *out of view*, and for a portrait most likely behind the camera, lighting the
    scene we see and the subject's front alike. The frame then tells only its side: the brightness-weighted
    centroid of the brighter-than-average pixels (in tangent space, x/f and y/f) points towards it, so
    d_t = normalise(EXTRAPOLATE·o_x, EXTRAPOLATE·o_y + ELEVATION_PRIOR, 1) (light beyond the frame's edge, a
    little above, in front). Its strength cannot be measured from the frame: D = KEY_TO_FILL · A (the 2:1
    key-to-fill ratio of a standard portrait), in the colour of the brightest pixels.

Known limit: a sky whose sun is out of view says nothing of the sun's strength, so on light-stage pairs lit by an
unseen sun the result is too dark (on 64 test pairs of synthetic busts under procedural skies: 13.9 dB fg PSNR,
paste 15.9 dB), although its light direction is the closest of the baselines to the target's (51° vs paste's 61°).
"""

from __future__ import annotations

import math

import torch

from relightful.evaluation.light_direction import LUMA, fit_lighting
from relightful.lighting.silhouette import silhouette_normals

FOV_DEG = 55.0            # assumed horizontal field of view of a background photo
REFLECTANCE = 0.4         # ρ₀: assumed mean reflectance of a portrait (skin and clothes), linear luminance
SHADOW_FLOOR = 0.05       # S_s never below this fraction of its maximum
HOT_RATIO = 8.0           # a light in view is 3 stops above the frame's median
HOT_MAX_FRACTION = 0.05   # ... and compact: at most this fraction of the visible pixels
EXTRAPOLATE = 2.0         # an out-of-view light lies beyond the bright side of the frame
ELEVATION_PRIOR = 0.35    # ... and a little above the horizon (tan 19°)
KEY_TO_FILL = 1.0         # out of view: the key light's E/π equal to the ambient's (2:1 key-to-fill)
RATIO_LIMITS = (1 / 16, 16.0)
NORMALS_SIDE = 128         # normals are computed at most this many pixels per side


def pinhole_rays(height: int, width: int, fov_deg: float = FOV_DEG) -> tuple[torch.Tensor, torch.Tensor]:
    """(H, W, 3) unit directions of a pinhole camera looking along −z (+x right, +y up), and each pixel's solid
    angle (H, W): cos³θ / f² with f the focal length in pixels."""
    f = (width / 2) / math.tan(math.radians(fov_deg) / 2)
    x = (torch.arange(width, dtype=torch.float64) + 0.5 - width / 2) / f
    y = -(torch.arange(height, dtype=torch.float64) + 0.5 - height / 2) / f
    yy, xx = torch.meshgrid(y, x, indexing="ij")
    rays = torch.stack([xx, yy, -torch.ones_like(xx)], dim=-1)
    norm = rays.norm(dim=-1)
    return rays / norm[..., None], (1 / norm) ** 3 / f ** 2


def background_lighting(bg: torch.Tensor, matte: torch.Tensor, fov_deg: float = FOV_DEG) -> dict[str, torch.Tensor]:
    """The target lighting of each background (B, 3, H, W) linear, seen around the matte (B, 1, H, W):
    "direction" (B, 3), "ambient" A and "direct" D (B, 3) RGB in E/π units, "in_view" (B,) bool (module docstring)."""
    bg, vis = bg.double().clamp_min(0), (matte[:, 0] < 0.5)
    b, _, h, w = bg.shape
    rays, omega = pinhole_rays(h, w, fov_deg)
    tangent = rays[..., :2] / (-rays[..., 2:])                               # (x/f, y/f) per pixel
    luma = torch.einsum("c,bchw->bhw", torch.tensor(LUMA, dtype=torch.float64), bg)
    out = {"direction": torch.zeros(b, 3, dtype=torch.float64), "ambient": torch.zeros(b, 3, dtype=torch.float64),
           "direct": torch.zeros(b, 3, dtype=torch.float64), "in_view": torch.zeros(b, dtype=torch.bool)}
    for i in range(b):  # per image: the visible pixel sets differ in size
        v = vis[i]
        if int(v.sum()) < 4:                 # no background visible: frontal key over a grey ambient
            out["direction"][i] = torch.tensor([0.0, ELEVATION_PRIOR, 1.0]) / math.hypot(ELEVATION_PRIOR, 1.0)
            out["ambient"][i] = out["direct"][i] = 0.5
            continue
        y, colour = luma[i][v], bg[i].permute(1, 2, 0)[v]                   # (P,), (P, 3)
        median = y.median().clamp_min(1e-6)
        hot = y > HOT_RATIO * median
        fraction = float(hot.double().mean())
        if 0 < fraction <= HOT_MAX_FRACTION:
            ambient = colour[~hot].mean(0)
            excess = (colour[hot] - ambient).clamp_min(0)                     # (K, 3)
            weight = excess @ torch.tensor(LUMA, dtype=torch.float64)
            d = (weight[:, None] * rays[v][hot]).sum(0)
            out["direct"][i] = (excess * omega[v][hot][:, None]).sum(0) / math.pi
            out["in_view"][i] = True
        else:
            ambient = colour.mean(0)
            above = (y - y.mean()).clamp_min(0)
            o = (above[:, None] * tangent[v]).sum(0) / above.sum().clamp_min(1e-12)
            d = torch.stack([EXTRAPOLATE * o[0], EXTRAPOLATE * o[1] + ELEVATION_PRIOR, torch.ones((), dtype=o.dtype)])
            top = y >= torch.quantile(y, 0.9)
            tint = colour[top].mean(0)
            tint = tint / (tint @ torch.tensor(LUMA, dtype=torch.float64)).clamp_min(1e-12)
            out["direct"][i] = KEY_TO_FILL * float(ambient @ torch.tensor(LUMA, dtype=torch.float64)) * tint
        out["direction"][i] = d / d.norm().clamp_min(1e-12)
        out["ambient"][i] = ambient
    return out


def source_lighting(fg: torch.Tensor, matte: torch.Tensor) -> dict[str, torch.Tensor]:
    """The foreground's own lighting, from its luminance (`fit_lighting`): "direction" (B, 3), "amplitude" a and
    "ambient" b (B,), "ok" (B,) False where the subject is too small to fit (then a frontal lobe is assumed)."""
    b = fg.shape[0]
    out = {"direction": torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64).repeat(b, 1),
           "amplitude": torch.zeros(b, dtype=torch.float64), "ambient": torch.ones(b, dtype=torch.float64),
           "ok": torch.zeros(b, dtype=torch.bool)}
    for i in range(b):  # one subject (and silhouette) per pair
        try:
            fit = fit_lighting(fg[i:i + 1].double().cpu(), matte[i, 0].double().cpu().numpy())
        except ValueError:
            continue
        out["direction"][i] = torch.from_numpy(fit["direction"][0])
        out["amplitude"][i], out["ambient"][i] = float(fit["amplitude"][0]), float(fit["ambient"][0])
        out["ok"][i] = True
    return out


def reshade(fg: torch.Tensor, matte: torch.Tensor, bg: torch.Tensor, fov_deg: float = FOV_DEG) -> torch.Tensor:
    """The baseline's foreground layer (B, 3, H, W), linear: fg · ρ₀ S_t / S_s (module docstring)."""
    n = silhouette_normals(matte, NORMALS_SIDE)                                     # (B, 3, H, W)
    src, tgt = source_lighting(fg, matte), background_lighting(bg, matte, fov_deg)
    cos_s = torch.einsum("bchw,bc->bhw", n, src["direction"]).clamp_min(0)
    s_s = src["amplitude"][:, None, None] * cos_s + src["ambient"][:, None, None]
    peak = s_s.flatten(1).amax(1).clamp_min(1e-9)
    s_s = torch.maximum(s_s, SHADOW_FLOOR * peak[:, None, None])[:, None]           # (B, 1, H, W)
    cos_t = torch.einsum("bchw,bc->bhw", n, tgt["direction"]).clamp_min(0)[:, None]
    s_t = tgt["ambient"][..., None, None] + tgt["direct"][..., None, None] * cos_t  # (B, 3, H, W)
    ratio = (REFLECTANCE * s_t / s_s).clamp(*RATIO_LIMITS)
    return (fg.double() * ratio).to(fg.dtype)


__all__ = ["background_lighting", "pinhole_rays", "reshade", "source_lighting"]

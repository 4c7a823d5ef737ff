"""The dominant light direction of a lit subject, estimated from its shading, and the angle between two of them.

Geometry. A portrait has no known geometry, so the surface is approximated from its silhouette as the union of
its inscribed spheres (lighting/silhouette.py).

Fit. The luminance inside the matte is fitted with a clamped cosine lobe plus an ambient term,
`Y ≈ a·max(0, n·d) + b` with a > 0, over a Fibonacci sphere of candidate directions (closed-form least squares per
candidate, all candidates in one matrix product), refined on a finer cap around the best (`fit_lighting`). The fit
is invariant to the image's colour and intensity, so a recoloured input keeps the input's direction.

The error between a prediction and its target is the angle between their two estimates: albedo and geometry
errors of the approximation are largely shared by both images of a pair. Validated in tests/test_light_direction.py
on known rotations of the light (20-60° of yaw, ±25-30° of elevation): on a Lambertian sphere the error equals the
true angle within 1°; on synthetic light-stage busts with faces (dark hair, clothes, highlights, cast shadows)
within 8.2° on average (median 5.9°, worst 30.8°, first 8 subjects; 7.4° / 5.4° / 26.5° on the faceless busts of
before). The first version inflated the whole silhouette with one radius, `h = sqrt(2·R·D − D²)` (R the maximum of
D) and treated the frame's edges as the silhouette's: the head then inherited the torso's radius and the shoulders
curled away at the bottom edge; on the faceless busts it was off by 13.4° on average (median 10.5°, worst 44.5°),
so it was replaced. Comparing the prediction's shading with the target's through their ratio (albedo cancels) was
tried too and rejected: the target's own fit still carries its albedo, and the ratio spread that error (mean 8.8°,
worst 57°)."""

from __future__ import annotations

import math

import numpy as np
import torch

from relightful.lighting.silhouette import normals_from_matte, shrink  # noqa: F401 (normals: re-exported)

LUMA = (0.2126, 0.7152, 0.0722)  # Rec. 709 weights of linear RGB


def fibonacci_sphere(n: int) -> torch.Tensor:
    """(n, 3) nearly uniform unit vectors."""
    i = torch.arange(n, dtype=torch.float64) + 0.5
    y = 1 - 2 * i / n
    r = (1 - y ** 2).sqrt()
    phi = math.pi * (3 - math.sqrt(5)) * i
    return torch.stack([r * torch.cos(phi), y, r * torch.sin(phi)], dim=1)


def _cap(centre: torch.Tensor, radius_deg: float, n: int) -> torch.Tensor:
    """(n, 3) directions spread over a spherical cap around `centre` (a Fibonacci spiral on the cap)."""
    i = torch.arange(n, dtype=torch.float64) + 0.5
    cos_r = math.cos(math.radians(radius_deg))
    z = 1 - (1 - cos_r) * i / n
    r = (1 - z ** 2).clamp_min(0).sqrt()
    phi = math.pi * (3 - math.sqrt(5)) * i
    local = torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], dim=1)
    helper = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    if abs(float(centre @ helper)) > 0.9:
        helper = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    u = torch.linalg.cross(helper, centre)
    u = u / u.norm()
    v = torch.linalg.cross(centre, u)
    return local[:, :1] * u + local[:, 1:2] * v + local[:, 2:] * centre


def _explained(normals: torch.Tensor, luma: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """(M, K): for each of M luminance vectors (M, P) and each candidate direction, the fraction of the
    luminance's variance a clamped-cosine lobe towards it explains (0 where the best lobe would be negative)."""
    shading = (normals @ candidates.T).clamp_min(0)                  # (P, K)
    s_c = shading - shading.mean(dim=0)
    y_c = luma - luma.mean(dim=1, keepdim=True)
    cov = y_c @ s_c                                                   # (M, K)
    var = (s_c ** 2).sum(dim=0).clamp_min(1e-12)
    total = (y_c ** 2).sum(dim=1, keepdim=True).clamp_min(1e-12)
    return torch.where(cov > 0, cov ** 2 / var, torch.zeros_like(cov)) / total


def _sweep(n: torch.Tensor, luma: torch.Tensor, coarse: int, fine: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best lobe directions (M, 3) and their R² (M,) for luminance vectors (M, P) over normals (P, 3): one coarse
    sweep for all M, then a cap per image around its best."""
    candidates = fibonacci_sphere(coarse)
    best = candidates[_explained(n, luma, candidates).argmax(dim=1)]
    spacing = math.degrees(math.sqrt(4 * math.pi / coarse))
    directions, r2 = torch.empty_like(best), torch.empty(len(best), dtype=torch.float64)
    for i in range(len(best)):  # each image refines on its own cap
        local = torch.cat([best[i:i + 1], _cap(best[i], 2 * spacing, fine)])
        score = _explained(n, luma[i:i + 1], local)[0]
        directions[i], r2[i] = local[score.argmax()], score.max()
    return directions, r2


def _lobe(n: torch.Tensor, luma: torch.Tensor, directions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form amplitude a ≥ 0 and ambient b (M,) of `Y ≈ a·max(0, n·d) + b` at given directions (M, 3)."""
    shade = (n @ directions.T).clamp_min(0).T                                   # (M, P)
    s_c = shade - shade.mean(dim=1, keepdim=True)
    amplitude = ((luma - luma.mean(dim=1, keepdim=True)) * s_c).sum(1) / (s_c ** 2).sum(1).clamp_min(1e-12)
    amplitude = amplitude.clamp_min(0)
    return amplitude, luma.mean(dim=1) - amplitude * shade.mean(dim=1)


def _prepare(images, matte, max_side: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Normals (P, 3) and luminance (M, P) of the interior pixels of a subject's images (M, 3, H, W)."""
    img = shrink(torch.as_tensor(np.asarray(images), dtype=torch.float64), max_side)
    matte = shrink(torch.as_tensor(np.asarray(matte), dtype=torch.float64)[None, None], max_side)[0, 0].numpy()
    normals, mask = normals_from_matte(matte)
    if mask.sum() < 16:
        raise ValueError(f"the matte has {int(mask.sum())} interior pixels: too few to estimate a light direction")
    mask_t = torch.from_numpy(mask)
    luma = torch.einsum("c,mchw->mhw", torch.tensor(LUMA, dtype=torch.float64), img)[:, mask_t]
    return torch.from_numpy(normals)[mask_t], luma


def fit_lighting(images: np.ndarray | torch.Tensor, matte: np.ndarray | torch.Tensor, coarse: int = 2048,
                 fine: int = 256, max_side: int | None = 128) -> dict[str, np.ndarray]:
    """Images (M, 3, H, W) linear RGB of one subject and its matte (H, W) -> the clamped-cosine lighting of each,
    `Y ≈ amplitude·max(0, n·direction) + ambient` over the silhouette's normals: "direction" (M, 3) unit vectors
    towards the light, "amplitude" (M,), "ambient" (M,) in the images' luminance units, "r2" (M,) the fraction of
    the luminance variance explained. Images larger than `max_side` are area-downsampled first. A subject too
    small to fit (fewer than 16 interior pixels) raises ValueError."""
    n, luma = _prepare(images, matte, max_side)
    directions, r2 = _sweep(n, luma, coarse, fine)
    amplitude, ambient = _lobe(n, luma, directions)
    return {"direction": directions.numpy(), "amplitude": amplitude.numpy(), "ambient": ambient.numpy(),
            "r2": r2.numpy()}


def dominant_light_directions(images: np.ndarray | torch.Tensor, matte: np.ndarray | torch.Tensor,
                              coarse: int = 2048, fine: int = 256,
                              max_side: int | None = 128) -> tuple[np.ndarray, np.ndarray]:
    """Images (M, 3, H, W) linear RGB of one subject and its matte (H, W) -> unit directions (M, 3) towards the
    light, and the R² of each fit (M,), each image fitted on its own (see `fit_lighting`)."""
    fit = fit_lighting(images, matte, coarse, fine, max_side)
    return fit["direction"], fit["r2"]


def dominant_light_direction(image, matte) -> tuple[np.ndarray, float]:
    """One image (3, H, W) linear RGB and its matte (H, W) -> (unit direction (3,), R² of the fit)."""
    directions, r2 = dominant_light_directions(np.asarray(image)[None], matte)
    return directions[0], float(r2[0])


def angle_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angles in degrees between directions (..., 3)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def light_direction_errors(preds: dict[str, torch.Tensor], target: torch.Tensor,
                           matte: torch.Tensor) -> dict[str, np.ndarray]:
    """For each method, (B,) degrees between the dominant light directions of its subjects and the targets':
    preds name -> (B, 3, H, W) linear, target the same, matte (B, 1, H, W). Pairs whose subject is too small get
    NaN. Per pair, the target and all methods share one sweep (and one set of normals)."""
    names = list(preds)
    out = {k: np.full(target.shape[0], np.nan) for k in names}
    for b in range(target.shape[0]):
        stack = torch.stack([target[b]] + [preds[k][b] for k in names]).cpu()
        try:
            directions, _ = dominant_light_directions(stack, matte[b, 0].float().cpu().numpy())
        except ValueError:
            continue
        for k, e in zip(names, angle_deg(directions[1:], directions[:1])):
            out[k][b] = e
    return out

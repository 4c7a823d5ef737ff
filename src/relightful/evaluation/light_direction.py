"""The dominant light direction of a lit subject, estimated from its shading, and the angle between two of them.

A portrait has no known geometry, so the surface is approximated from its silhouette: the matte is "inflated" into
a height field `h = sqrt(2·R·D − D²)` (D: distance to the silhouette's edge, R: its maximum), which is exactly a
hemisphere for a disc and a rounded blob for any other shape; normals come from its gradient (camera space of
DESIGN 3.1: +x right, +y up, +z towards the camera). The luminance inside the matte is then fitted with a clamped
cosine lobe plus an ambient term, `Y ≈ a·max(0, n·d) + b` with a > 0, over a Fibonacci sphere of candidate
directions (closed-form least squares per candidate, all candidates in one matrix product), refined on a finer cap
around the best. The error between a prediction and its target is the angle between their two estimates:
albedo and geometry errors of the approximation are shared by both images of a pair.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch

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


def normals_from_matte(matte: np.ndarray, threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) matte -> normals (H, W, 3) of the inflated silhouette, and the mask (H, W) of pixels to fit
    (inside the matte, away from the outermost pixel ring where the normals turn sideways)."""
    inside = (np.asarray(matte) > threshold).astype(np.uint8)
    dist = cv2.distanceTransform(np.pad(inside, 1), cv2.DIST_L2, 5)[1:-1, 1:-1].astype(np.float64)
    radius = max(float(dist.max()), 1.0)
    height = np.sqrt(np.clip(2 * radius * dist - dist ** 2, 0, None))
    d_row, d_col = np.gradient(height)
    normals = np.stack([-d_col, d_row, np.ones_like(height)], axis=-1)  # rows grow downwards: +y is −row
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
    return normals, (dist > 1.0)


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


def dominant_light_directions(images: np.ndarray | torch.Tensor, matte: np.ndarray | torch.Tensor,
                              coarse: int = 2048, fine: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Images (M, 3, H, W) linear RGB of one subject and its matte (H, W) -> unit directions (M, 3) towards the
    light, and the R² of each fit (M,). The coarse sweep is one matrix product for all M images. A subject too
    small to fit (fewer than 16 interior pixels) raises ValueError."""
    img = torch.as_tensor(np.asarray(images), dtype=torch.float64)
    normals, mask = normals_from_matte(np.asarray(matte, dtype=np.float64))
    if mask.sum() < 16:
        raise ValueError(f"the matte has {int(mask.sum())} interior pixels: too few to estimate a light direction")
    mask_t = torch.from_numpy(mask)
    luma = torch.einsum("c,mchw->mhw", torch.tensor(LUMA, dtype=torch.float64), img)[:, mask_t]  # (M, P)
    n = torch.from_numpy(normals)[mask_t]
    candidates = fibonacci_sphere(coarse)
    best = candidates[_explained(n, luma, candidates).argmax(dim=1)]
    spacing = math.degrees(math.sqrt(4 * math.pi / coarse))
    directions, r2 = torch.empty_like(best), torch.empty(len(best), dtype=torch.float64)
    for i in range(len(best)):  # each image refines on its own cap
        local = torch.cat([best[i:i + 1], _cap(best[i], 2 * spacing, fine)])
        score = _explained(n, luma[i:i + 1], local)[0]
        directions[i], r2[i] = local[score.argmax()], score.max()
    return directions.numpy(), r2.numpy()


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
    NaN. Per pair, the target and all methods share one sweep."""
    names = list(preds)
    out = {k: np.full(target.shape[0], np.nan) for k in names}
    for b in range(target.shape[0]):
        stack = torch.stack([target[b]] + [preds[k][b] for k in names]).cpu()
        try:
            directions, _ = dominant_light_directions(stack, matte[b, 0].float().cpu().numpy())
        except ValueError:
            continue
        errors = angle_deg(directions[1:], directions[:1])
        for k, e in zip(names, errors):
            out[k][b] = e
    return out

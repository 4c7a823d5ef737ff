"""The renderer of the synthetic light stage: a vectorised ray caster of the procedural busts, one image per LED.

The camera is orthographic and looks along −z; the frame spans y ∈ [−1, 1] and x ∈ [−W/H, W/H], and the shoulders
are cut by the bottom edge like a portrait. Each LED is a directional light of unit irradiance:

    OLAT_k = (a/π · max(0, n·d_k) + k_s · (s+8)/(8π) · max(0, n·h_k)^s · max(0, n·d_k)) · visibility_k,

with h_k the half vector between d_k and the view direction +z (normalised Blinn-Phong, white highlight), and the
visibility a shadow ray from the surface point towards d_k against every solid. Two kinds of solid:
- convex analytic ones (ears, hair cap, neck, clothing): the shadow test of P points against N LEDs is one (P, N)
  matrix per solid, built from a matrix product;
- the head with its face (`faced_head.py`): an ellipsoid whose front is displaced by a relief map, found by marching
  along each ray inside its bounding box (a bilinear lookup per sample, all rays of a chunk at once), the first hit
  refined by bisection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from relightful.lighting.rig import LedRig
from relightful.lightstage.convex_solids import ellipsoid_solid, neck_solid
from relightful.lightstage.faced_head import faced_head
from relightful.lightstage.subjects import PART_NAMES, SubjectSpec

_SHADOW_OFFSET = 1e-3  # shadow rays start this far off the surface along the normal (frame half-height is 1)
_CAMERA_Z = 10.0  # orthographic rays start at z = 10, in front of every solid


@dataclass
class SyntheticSubject:
    """A rendered subject. `olat` is calibrated radiance (no rig gain) of the foreground colour, not premultiplied by
    the matte, as the composite m·x + (1−m)·y expects; it is 0 where the matte is 0."""

    olat: np.ndarray  # (N, H, W, 3) float32
    matte: np.ndarray  # (H, W) float32 in [0, 1], supersampled coverage
    albedo: np.ndarray  # (H, W, 3) float32, 0 on the background
    normals: np.ndarray  # (H, W, 3) float32 unit camera-space normals, 0 on the background
    unoccluded: np.ndarray  # (H, W) bool: visibility 1 for every LED in the point's upper hemisphere
    parts: np.ndarray  # (H, W) uint8 index into PART_NAMES: which primitive each pixel shows


def _solids(spec: SubjectSpec) -> list:
    """The solids of a subject: the head (with its face when the spec has one) first, then the convex extras."""
    head_part = PART_NAMES.index("head")
    head = faced_head(spec) if spec.face is not None else ellipsoid_solid(spec.head, head_part, spec.skin)
    solids = [head] + [ellipsoid_solid(e, head_part, spec.skin) for e in spec.features]
    if spec.hair is not None:
        n = np.asarray(spec.hair.cut_normal, dtype=np.float64)
        n /= np.linalg.norm(n)
        # keep n·(p − c) ≥ offset, i.e. (−n)·p ≤ −(offset + n·c)
        plane = (-n, float(-(spec.hair.cut_offset + n @ np.asarray(spec.hair.shell.center))))
        solids.append(ellipsoid_solid(spec.hair.shell, PART_NAMES.index("hair"), spec.hair_material, [plane]))
    if spec.neck is not None:
        solids.append(neck_solid(spec.neck, spec.skin))
    for e in ((spec.torso,) if spec.torso is not None else ()) + tuple(spec.shoulders):
        solids.append(ellipsoid_solid(e, PART_NAMES.index("clothing"), spec.clothing))
    return solids


# ----------------------------------------------------------------------------------------------------------------
# Tracing a subject


def _first_hits(solids: list, xy: torch.Tensor):
    """Orthographic primary rays at image-plane points xy (P, 2): (hit (P,), solid index (P,), point, normal)."""
    origins = torch.cat([xy, torch.full_like(xy[:, :1], _CAMERA_Z)], dim=1)
    view = torch.tensor([[0.0, 0.0, -1.0]])
    best_t = torch.full((xy.shape[0],), math.inf)
    best_solid = torch.full((xy.shape[0],), -1, dtype=torch.long)
    best_entry = torch.full((xy.shape[0],), -1, dtype=torch.int8)
    for i, s in enumerate(solids):
        t, entry = s.first_hit(origins, view)
        closer = t < best_t
        best_t = torch.where(closer, t, best_t)
        best_solid = torch.where(closer, i, best_solid)
        best_entry = torch.where(closer, entry, best_entry)
    hit = best_solid >= 0
    points = origins + best_t.where(hit, 0.0)[:, None] * view
    normals = torch.zeros_like(points)
    for i, s in enumerate(solids):
        sel = best_solid == i
        if bool(sel.any()):
            normals[sel] = s.normals(points[sel], best_entry[sel])
    # A point the camera sees faces it: bend the few normals that a discretised relief tilts away back to the rim.
    away = normals[:, 2] < 0
    if bool(away.any()):
        bent = normals[away] * torch.tensor([1.0, 1.0, 0.0])
        normals[away] = bent / bent.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return hit, best_solid, points, normals


def _visibility(solids: list, points: torch.Tensor, normals: torch.Tensor, dirs: torch.Tensor,
                needed: torch.Tensor) -> torch.Tensor:
    """(P, N) bool: the shadow ray from each (slightly lifted) point towards each LED leaves every solid unblocked.
    Only the pairs in `needed` (P, N) are certain to be tested; the others may be reported either way."""
    origins = points + _SHADOW_OFFSET * normals
    blocked = torch.zeros(points.shape[0], dirs.shape[0], dtype=torch.bool)
    for s in solids:
        blocked |= s.blocks(origins, dirs, needed & ~blocked)
    return ~blocked


def _subsample_offsets(supersample: int) -> torch.Tensor:
    """(1 + S², 2) offsets inside a pixel, in pixel units: the centre first, then an S×S grid nearest-first."""
    g = (torch.arange(supersample, dtype=torch.float32) + 0.5) / supersample - 0.5
    grid = torch.stack(torch.meshgrid(g, g, indexing="ij"), dim=-1).reshape(-1, 2)
    grid = grid[torch.argsort(grid.norm(dim=1), stable=True)]
    return torch.cat([torch.zeros(1, 2), grid])


def render_subject(spec: SubjectSpec, rig: LedRig, size: tuple[int, int] = (256, 256), specular: bool = True,
                   supersample: int = 4, chunk: int = 8192) -> SyntheticSubject:
    """Render a subject under each LED of `rig` (orthographic camera along −z, frame y ∈ [−1, 1]).

    The matte is the coverage of `supersample`² sub-pixel rays; each foreground pixel is shaded at its centre, or at
    the covered sub-pixel ray nearest to it on the silhouette. `chunk` bounds memory: points shaded at a time.
    """
    h, w = size
    solids = _solids(spec)
    dirs = torch.tensor(rig.directions, dtype=torch.float32)  # (N, 3)
    n_leds = dirs.shape[0]

    # Pixel centres in frame units: x to the right, y up, one pixel = 2/H.
    pixel = 2.0 / h
    ys = 1.0 - (torch.arange(h, dtype=torch.float32) + 0.5) * pixel
    xs = (torch.arange(w, dtype=torch.float32) + 0.5) * pixel - w / h
    centres = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).reshape(-1, 2)  # (HW, 2) as (x, y)

    # Coverage from sub-pixel rays; the first covered one (centre first) is the pixel's shading point.
    offsets = _subsample_offsets(supersample) * torch.tensor([pixel, -pixel])
    hits = torch.stack([_first_hits(solids, centres + off)[0] for off in offsets])  # (1 + S², HW)
    matte = hits[1:].float().mean(0)
    fg = torch.nonzero(hits.any(0)).squeeze(1)
    first = hits[:, fg].to(torch.uint8).argmax(0)  # index of the first covered sub-pixel ray
    _, solid_idx, points, normals = _first_hits(solids, centres[fg] + offsets[first])

    spec_of = torch.tensor([s.material.specular if specular else 0.0 for s in solids], dtype=torch.float32)
    shin_of = torch.tensor([s.material.shininess for s in solids], dtype=torch.float32)
    part_of = torch.tensor([s.part for s in solids], dtype=torch.uint8)
    albedo = torch.zeros_like(points)
    for i, s in enumerate(solids):
        sel = solid_idx == i
        if bool(sel.any()):
            albedo[sel] = s.albedo(points[sel])

    olat = torch.zeros(n_leds, h * w, 3)
    unoccluded = torch.zeros(h * w, dtype=torch.bool)
    half_vectors = dirs + torch.tensor([0.0, 0.0, 1.0])
    half_vectors = half_vectors / half_vectors.norm(dim=1, keepdim=True).clamp_min(1e-12)
    for start in range(0, fg.numel(), chunk):
        sl = slice(start, start + chunk)
        n = normals[sl]
        cos = n @ dirs.T  # (P, N)
        vis = _visibility(solids, points[sl], n, dirs, cos > 0)
        unoccluded[fg[sl]] = (vis | (cos <= 0)).all(1)
        lit = cos.clamp_min(0.0) * vis
        radiance = lit[:, :, None] * (albedo[sl, None, :] / math.pi)
        ks, s = spec_of[solid_idx[sl]], shin_of[solid_idx[sl]]
        if bool((ks > 0).any()):
            lobe = (n @ half_vectors.T).clamp_min(0.0) ** s[:, None] * ((s + 8.0) / (8.0 * math.pi))[:, None]
            radiance = radiance + (ks[:, None] * lobe * lit)[:, :, None]
        olat[:, fg[sl]] = radiance.transpose(0, 1)

    def image(values: torch.Tensor) -> np.ndarray:
        """Scatter per-foreground-point values (P, ...) into an (H, W, ...) image that is 0 on the background."""
        out = torch.zeros(h * w, *values.shape[1:], dtype=values.dtype)
        out[fg] = values
        return out.reshape(h, w, *values.shape[1:]).numpy()

    return SyntheticSubject(
        olat=olat.reshape(n_leds, h, w, 3).numpy(),
        matte=matte.reshape(h, w).numpy(),
        albedo=image(albedo),
        normals=image(normals),
        unoccluded=unoccluded.reshape(h, w).numpy(),
        parts=image(part_of[solid_idx]),
    )



"""The head with its face: an ellipsoid whose front surface is displaced by the face's relief map (`face_mesh.py`).

The solid is not convex, so rays are marched through its bounding box: a bilinear lookup of the relief per sample,
all rays of a block at once, the first hit of a camera ray refined by bisection. Shadow rays are marched only for the
(point, LED) pairs that need them (the LED above the point's surface, the ray through the box).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from relightful.lightstage.face_mesh import face_relief
from relightful.lightstage.subjects import PART_NAMES, Material, SubjectSpec, rotation_matrix

_VIEW_STEPS = 128  # march samples of a camera ray through the head's box
_SHADOW_STEPS = 64  # march samples of a shadow ray through the head's box
_BISECTIONS = 14
_PAIRS_PER_BLOCK = 16384  # ray-box pairs marched at a time (bounds memory: pairs × steps samples)


@dataclass
class FacedHead:
    """In the head's local frame q = (p − center) @ rotation, the solid is every q with x²/a² + y²/b² ≤ 1 and
    −z_e ≤ z ≤ z_e + D(x, y), where z_e = c·√(1 − x²/a² − y²/b²) and D is the face's relief (`FaceRelief`)."""

    center: torch.Tensor  # (3,)
    rotation: torch.Tensor  # (3, 3) columns = local axes
    radii: torch.Tensor  # (3,) a, b, c
    maps: torch.Tensor  # (1, 6, Gy, Gx): displacement, ∂D/∂x, ∂D/∂y, albedo RGB
    box_low: torch.Tensor  # (3,) local bounding box of the solid
    box_high: torch.Tensor  # (3,)
    part: int
    material: Material

    def _sample(self, q: torch.Tensor, channels: slice) -> torch.Tensor:
        """Bilinear lookup of map channels at local points q (M, 3) -> (M, C)."""
        grid = (q[:, :2] / self.radii[:2]).reshape(1, 1, -1, 2)
        out = F.grid_sample(self.maps[:, channels], grid, mode="bilinear", padding_mode="border", align_corners=False)
        return out[0, :, 0].T

    def _surfaces(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(front height, back height, inside the ellipse) at the local x, y of points q (M, 3)."""
        a, b, c = self.radii
        e = (q[:, 0] / a) ** 2 + (q[:, 1] / b) ** 2
        ze = c * (1.0 - e).clamp_min(0.0).sqrt()
        return ze + self._sample(q, slice(0, 1))[:, 0], -ze, e <= 1.0

    def _inside(self, q: torch.Tensor) -> torch.Tensor:
        front, back, within = self._surfaces(q)
        return within & (q[:, 2] >= back) & (q[:, 2] <= front)

    def _box(self, q0: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Entry and exit distances of rays q0 (..., 3) + t·d (..., 3) through the local bounding box."""
        d = torch.where(d.abs() < 1e-9, torch.full_like(d, 1e-9), d)
        t_a, t_b = (self.box_low - q0) / d, (self.box_high - q0) / d
        return torch.minimum(t_a, t_b).amax(-1), torch.maximum(t_a, t_b).amin(-1)

    def _march(self, q0: torch.Tensor, d: torch.Tensor, t0: torch.Tensor, t1: torch.Tensor, steps: int):
        """First sample index (M,) inside the solid along each ray between t0 and t1 (M,), or −1, and the sample
        distances (M, steps)."""
        ts = t0[:, None] + (t1 - t0)[:, None] * ((torch.arange(steps) + 0.5) / steps)
        inside = self._inside((q0[:, None, :] + ts[..., None] * d[:, None, :]).reshape(-1, 3)).reshape(ts.shape)
        first = torch.where(inside.any(1), inside.to(torch.uint8).argmax(1), -1)
        return first, ts

    def first_hit(self, origins: torch.Tensor, view: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q0 = (origins - self.center) @ self.rotation
        d = (view @ self.rotation).expand_as(q0)
        t0, t1 = self._box(q0, d)
        t = torch.full((q0.shape[0],), math.inf)
        for block in torch.nonzero((t0 < t1) & (t1 > 0)).squeeze(1).split(_PAIRS_PER_BLOCK):
            qb, db, lo = q0[block], d[block], t0[block].clamp_min(0.0)
            first, ts = self._march(qb, db, lo, t1[block], _VIEW_STEPS)
            hit = first >= 0
            hi = ts.gather(1, first.clamp_min(0)[:, None])[:, 0]
            lo = torch.where(first > 0, ts.gather(1, (first - 1).clamp_min(0)[:, None])[:, 0], lo)
            for _ in range(_BISECTIONS):
                mid = (lo + hi) / 2
                inside = self._inside(qb + mid[:, None] * db)
                hi, lo = torch.where(inside, mid, hi), torch.where(inside, lo, mid)
            t[block[hit]] = hi[hit]
        return t, torch.zeros_like(t, dtype=torch.int8)

    def normals(self, points: torch.Tensor, entry: torch.Tensor) -> torch.Tensor:
        """The relief's normal (x/a² − D_x·z_e/c², y/b² − D_y·z_e/c², z_e/c²) on the front (the gradient of
        z − z_e − D scaled by z_e/c², finite at the rim), the ellipsoid's on the back."""
        q = (points - self.center) @ self.rotation
        a, b, c = self.radii
        front, back, _ = self._surfaces(q)
        ze = -back
        gradient = self._sample(q, slice(1, 3))
        on_front = (q[:, 2] - front).abs() <= (q[:, 2] - back).abs()
        scale = torch.where(on_front, ze / c**2, 0.0)
        z = torch.where(on_front, ze, q[:, 2]) / c**2
        n = torch.stack([q[:, 0] / a**2 - gradient[:, 0] * scale, q[:, 1] / b**2 - gradient[:, 1] * scale, z], 1)
        n = n @ self.rotation.T
        return n / n.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def blocks(self, origins: torch.Tensor, dirs: torch.Tensor, needed: torch.Tensor) -> torch.Tensor:
        """(P, N) bool: whether each needed ray meets the solid (pairs not needed are reported unblocked)."""
        q0 = (origins - self.center) @ self.rotation
        d = dirs @ self.rotation
        t0, t1 = self._box(q0[:, None, :], d[None, :, :])
        blocked = torch.zeros_like(needed)
        pairs = torch.nonzero(needed & (t0 < t1) & (t1 > 0))
        for block in pairs.split(_PAIRS_PER_BLOCK):
            p, n = block[:, 0], block[:, 1]
            first, _ = self._march(q0[p], d[n], t0[p, n].clamp_min(0.0), t1[p, n], _SHADOW_STEPS)
            blocked[p, n] = first >= 0
        return blocked

    def albedo(self, points: torch.Tensor) -> torch.Tensor:
        q = (points - self.center) @ self.rotation
        painted = self._sample(q, slice(3, 6))
        return torch.where((q[:, 2] > 0)[:, None], painted, torch.tensor(self.material.albedo, dtype=torch.float32))


def faced_head(spec: SubjectSpec) -> FacedHead:
    relief = face_relief(spec.face, spec.head.radii, spec.skin.albedo, spec.hair_material.albedo)
    maps = np.concatenate([relief.displacement[None], relief.gradient, relief.albedo.transpose(2, 0, 1)])
    a, b, c = spec.head.radii
    rise = max(float(relief.displacement.max()), 0.0)
    return FacedHead(torch.tensor(spec.head.center, dtype=torch.float32),
                     torch.from_numpy(rotation_matrix(spec.head.rotation_deg)).float(),
                     torch.tensor(spec.head.radii, dtype=torch.float32), torch.from_numpy(maps)[None].float(),
                     torch.tensor([-a, -b, -c], dtype=torch.float32),
                     torch.tensor([a, b, c + rise], dtype=torch.float32), PART_NAMES.index("head"), spec.skin)

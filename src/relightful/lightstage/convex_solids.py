"""Convex analytic solids of the synthetic busts (ears, hair cap, neck, clothing; the head when it has no face).

A solid is a quadric (an ellipsoid, or an infinite cylinder along its local y) cut by half-spaces n·p ≤ h, in camera
space. Its ray intervals are closed-form, so the shadow test of P points against N LEDs is one (P, N) matrix per solid,
built from a matrix product.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from relightful.lightstage.subjects import PART_NAMES, Ellipsoid, Material, Neck, rotation_matrix


@dataclass
class ConvexSolid:
    """A convex solid: a quadric (ellipsoid, or an infinite cylinder along local y when mask = (1, 0, 1)) intersected
    with half-spaces n·p ≤ h, all in camera space, float32."""

    center: torch.Tensor  # (3,)
    rotation: torch.Tensor  # (3, 3) columns = local axes
    radii: torch.Tensor  # (3,)
    mask: torch.Tensor  # (3,)
    plane_normals: torch.Tensor  # (K, 3)
    plane_offsets: torch.Tensor  # (K,)
    part: int
    material: Material

    def first_hit(self, origins: torch.Tensor, view: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Distance (P,) along the one direction `view` (1, 3) to the entry point, inf on a miss, and the entry code
        (P,) int8 that `normals` takes: −1 through the quadric, else the plane index."""
        t_in, t_out, entry = (x[:, 0] for x in _intervals(self, origins, view))
        return torch.where((t_in <= t_out) & (t_in > 0), t_in, math.inf), entry

    def normals(self, points: torch.Tensor, entry: torch.Tensor) -> torch.Tensor:
        n = _quadric_normals(self, points)
        for k in range(self.plane_normals.shape[0]):
            n = torch.where((entry == k)[:, None], self.plane_normals[k], n)
        return n

    def blocks(self, origins: torch.Tensor, dirs: torch.Tensor, needed: torch.Tensor) -> torch.Tensor:
        """(P, N) bool: the ray from each origin along each direction passes through the solid (all pairs tested)."""
        t_in, t_out, _ = _intervals(self, origins, dirs)
        return (t_in <= t_out) & (t_out > 0)

    def albedo(self, points: torch.Tensor) -> torch.Tensor:
        return torch.tensor(self.material.albedo, dtype=torch.float32).expand(points.shape[0], 3)


def ellipsoid_solid(e: Ellipsoid, part: int, material: Material, planes=()) -> ConvexSolid:
    normals = torch.tensor(np.array([p[0] for p in planes], dtype=np.float32).reshape(-1, 3))
    offsets = torch.tensor(np.array([p[1] for p in planes], dtype=np.float32).reshape(-1))
    return ConvexSolid(torch.tensor(e.center, dtype=torch.float32),
                       torch.from_numpy(rotation_matrix(e.rotation_deg)).float(),
                       torch.tensor(e.radii, dtype=torch.float32), torch.ones(3), normals, offsets, part, material)


def neck_solid(neck: Neck, material: Material) -> ConvexSolid:
    bottom, top = np.asarray(neck.bottom, dtype=np.float64), np.asarray(neck.top, dtype=np.float64)
    axis = top - bottom
    half = np.linalg.norm(axis) / 2
    y = axis / (2 * half)
    x = np.cross(y, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    z = np.cross(x, y)
    center = (top + bottom) / 2
    planes = [(y, float(y @ center + half)), (-y, float(-y @ center + half))]
    return ConvexSolid(torch.tensor(center, dtype=torch.float32), torch.tensor(np.stack([x, y, z], axis=1)).float(),
                       torch.tensor([neck.radius, 1.0, neck.radius * neck.depth_scale], dtype=torch.float32),
                       torch.tensor([1.0, 0.0, 1.0]), torch.tensor(np.stack([p[0] for p in planes])).float(),
                       torch.tensor([p[1] for p in planes], dtype=torch.float32), PART_NAMES.index("neck"), material)


def _intervals(s: ConvexSolid, origins: torch.Tensor, dirs: torch.Tensor):
    """Entry/exit distances of rays origins (P, 3) × dirs (N, 3) through a solid: (t_in, t_out, entry) each (P, N);
    the ray hits where t_in ≤ t_out, and `entry` is −1 where it enters through the quadric, else the plane index."""
    o = ((origins - s.center) @ s.rotation) / s.radii  # local, unit-sphere coordinates
    d = (dirs @ s.rotation) / s.radii
    a = (d * d * s.mask).sum(-1)  # (N,)
    b = (o * s.mask) @ d.T  # (P, N), half the linear coefficient
    c = (o * o * s.mask).sum(-1, keepdim=True) - 1.0  # (P, 1)
    disc = b * b - a * c
    root = disc.clamp_min(0.0).sqrt()
    a_safe = a.clamp_min(1e-12)
    t_in = torch.where(disc >= 0, (-b - root) / a_safe, math.inf)
    t_out = torch.where(disc >= 0, (-b + root) / a_safe, -math.inf)
    parallel = a < 1e-10  # a ray along a cylinder's axis: inside for all t, or never
    if bool(parallel.any()):
        inside = c <= 0
        t_in = torch.where(parallel, torch.where(inside, -math.inf, math.inf), t_in)
        t_out = torch.where(parallel, torch.where(inside, math.inf, -math.inf), t_out)
    entry = torch.full_like(t_in, -1, dtype=torch.int8)
    for k in range(s.plane_normals.shape[0]):
        n, h = s.plane_normals[k], s.plane_offsets[k]
        nd = dirs @ n  # (N,)
        slack = (h - origins @ n)[:, None]  # (P, 1): the constraint is t · nd ≤ slack
        bound = slack / torch.where(nd.abs() < 1e-12, torch.ones_like(nd), nd)
        exits, enters = nd > 1e-12, nd < -1e-12
        t_out = torch.where(exits, torch.minimum(t_out, bound), t_out)
        later = enters & (bound > t_in)
        t_in = torch.where(later, bound, t_in)
        entry = torch.where(later, torch.tensor(k, dtype=torch.int8), entry)
        t_in = torch.where(~exits & ~enters & (slack < 0), math.inf, t_in)
    return t_in, t_out, entry


def _quadric_normals(s: ConvexSolid, points: torch.Tensor) -> torch.Tensor:
    local = ((points - s.center) @ s.rotation) / s.radii
    n = (local * s.mask / s.radii) @ s.rotation.T
    return n / n.norm(dim=-1, keepdim=True).clamp_min(1e-12)

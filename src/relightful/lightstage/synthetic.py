"""A synthetic light stage: procedural busts rendered once per LED into OLAT sets (DESIGN 3.2).

Why: the whole workflow (pairs, training, evaluation) must run without a real light stage, and the physics checks
(white furnace, energy, shadows) need subjects whose ground truth (albedo, normals, visibility) is known exactly.

A subject is a union of convex analytic solids in camera space (+x right, +y up, camera looking along −z): an
ellipsoid head with a nose and ears, an optional hair cap (a larger ellipsoid cut by a plane, covering the top and
back of the head), a cylindrical neck, and clothing (a chest ellipsoid, a flat shoulder girdle and two upper arms).
The camera is orthographic and looks along −z; the frame spans y ∈ [−1, 1] and x ∈ [−W/H, W/H], and the shoulders
are cut by the bottom edge like a portrait. Each LED is a directional light of unit irradiance:

    OLAT_k = (a/π · max(0, n·d_k) + k_s · (s+8)/(8π) · max(0, n·h_k)^s · max(0, n·d_k)) · visibility_k,

with h_k the half vector between d_k and the view direction +z (normalised Blinn-Phong, white highlight), and the
visibility a shadow ray from the surface point towards d_k against every solid. Everything is vectorised in torch:
the shadow test of P points against N LEDs is one (P, N) matrix per solid, built from a matrix product.
"""

from __future__ import annotations

import colorsys
import json
import math
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from relightful.io.atomic import atomic_write_text
from relightful.lighting.rig import LedRig
from relightful.lightstage.format import write_olat_set
from relightful.lightstage.rigs import make_default_rig

Vec3 = tuple[float, float, float]

#: Labels of `SyntheticSubject.parts`.
PART_NAMES = ("background", "head", "neck", "hair", "clothing")

_SHADOW_OFFSET = 1e-3  # shadow rays start this far off the surface along the normal (frame half-height is 1)
_CAMERA_Z = 10.0  # orthographic rays start at z = 10, in front of every solid


@dataclass(frozen=True)
class Material:
    """Linear RGB albedo plus a white Blinn-Phong highlight of strength `specular` and `roughness` in (0, 1]."""

    albedo: Vec3
    specular: float = 0.0
    roughness: float = 0.5

    @property
    def shininess(self) -> float:
        """Blinn-Phong exponent matching a Beckmann-like roughness α: s = 2/α² − 2."""
        return max(2.0 / self.roughness**2 - 2.0, 1.0)


@dataclass(frozen=True)
class Ellipsoid:
    """An ellipsoid: centre, semi-axes along its local x/y/z, and rotation (pitch about x, yaw about y, roll about z,
    degrees, applied in that order) taking local axes to camera space."""

    center: Vec3
    radii: Vec3
    rotation_deg: Vec3 = (0.0, 0.0, 0.0)


@dataclass(frozen=True)
class Neck:
    """A solid elliptic cylinder from `bottom` to `top` (its ends hide inside the torso and the head)."""

    bottom: Vec3
    top: Vec3
    radius: float
    depth_scale: float = 0.9  # front-to-back radius / side-to-side radius


@dataclass(frozen=True)
class Hair:
    """A hair cap over the top and back of the head: the part of `shell` where cut_normal · (p − c) ≥ cut_offset."""

    shell: Ellipsoid
    cut_normal: Vec3
    cut_offset: float


@dataclass(frozen=True)
class SubjectSpec:
    """Procedural parameters of a bust, all in camera space. Only the head is required (a sphere is a valid subject)."""

    head: Ellipsoid
    skin: Material
    features: tuple[Ellipsoid, ...] = ()  # skin-coloured extras fixed to the head: nose, ears
    neck: Neck | None = None
    torso: Ellipsoid | None = None
    shoulders: tuple[Ellipsoid, ...] = ()
    hair: Hair | None = None
    hair_material: Material = Material((0.05, 0.03, 0.02), 0.1, 0.35)
    clothing: Material = Material((0.3, 0.3, 0.3), 0.01, 0.8)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SubjectSpec":
        def ell(e):
            return None if e is None else Ellipsoid(tuple(e["center"]), tuple(e["radii"]), tuple(e["rotation_deg"]))

        def mat(m):
            return Material(tuple(m["albedo"]), float(m["specular"]), float(m["roughness"]))

        neck = d.get("neck")
        hair = d.get("hair")
        return cls(
            head=ell(d["head"]), skin=mat(d["skin"]), features=tuple(ell(f) for f in d.get("features", ())),
            neck=None if neck is None else Neck(tuple(neck["bottom"]), tuple(neck["top"]), float(neck["radius"]),
                                                float(neck["depth_scale"])),
            torso=ell(d.get("torso")), shoulders=tuple(ell(s) for s in d.get("shoulders", ())),
            hair=None if hair is None else Hair(ell(hair["shell"]), tuple(hair["cut_normal"]),
                                                float(hair["cut_offset"])),
            hair_material=mat(d["hair_material"]), clothing=mat(d["clothing"]),
        )


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


# ----------------------------------------------------------------------------------------------------------------
# Random subjects

# Linear-RGB skin albedos from very light to very dark; a subject's skin is a point on this path plus a little jitter.
_SKIN_TONES = np.array([
    [0.68, 0.50, 0.41], [0.58, 0.40, 0.30], [0.44, 0.28, 0.19], [0.30, 0.18, 0.11], [0.17, 0.10, 0.06],
    [0.09, 0.055, 0.035],
])
_HAIR_COLOURS = np.array([
    [0.020, 0.016, 0.014], [0.05, 0.030, 0.018], [0.13, 0.075, 0.040], [0.40, 0.29, 0.15], [0.28, 0.09, 0.035],
    [0.36, 0.35, 0.34],
])


def _rng_vec(rng: np.random.Generator, lo, hi) -> np.ndarray:
    return rng.uniform(np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64))


def _tuple(v) -> tuple[float, ...]:
    return tuple(round(float(x), 6) for x in v)


def _rotation(rotation_deg) -> np.ndarray:
    """3x3 matrix whose columns are the local axes in camera space: Rz(roll) · Ry(yaw) · Rx(pitch)."""
    px, py, pz = np.radians(np.asarray(rotation_deg, dtype=np.float64))
    rx = np.array([[1, 0, 0], [0, np.cos(px), -np.sin(px)], [0, np.sin(px), np.cos(px)]])
    ry = np.array([[np.cos(py), 0, np.sin(py)], [0, 1, 0], [-np.sin(py), 0, np.cos(py)]])
    rz = np.array([[np.cos(pz), -np.sin(pz), 0], [np.sin(pz), np.cos(pz), 0], [0, 0, 1]])
    return rz @ ry @ rx


def random_subject(seed: int) -> SubjectSpec:
    """A plausible, varied bust, deterministic for `seed`: head and hair shape, pose, skin tone, hair and clothes."""
    rng = np.random.default_rng(seed)
    # Head: a slightly tall ellipsoid above the frame centre, nodding/turning/tilting a little.
    head_radii = np.array([0.34, 0.45, 0.39]) * rng.uniform(0.9, 1.08) * _rng_vec(rng, [0.94] * 3, [1.06] * 3)
    head_center = _rng_vec(rng, [-0.06, 0.10, -0.02], [0.06, 0.22, 0.04])
    head_rot = _rng_vec(rng, [-8.0, -20.0, -7.0], [8.0, 20.0, 7.0])
    rot = _rotation(head_rot)
    head = Ellipsoid(_tuple(head_center), _tuple(head_radii), _tuple(head_rot))

    # Nose and ears: small skin-coloured ellipsoids fixed to the head, for the familiar cast shadows.
    rx, ry, rz = head_radii
    nose_size = rng.uniform(0.85, 1.2)
    features = [Ellipsoid(_tuple(head_center + rot @ np.array([0.0, -0.12 * ry, 0.9 * rz])),
                          _tuple(np.array([0.04, 0.1, 0.065]) * nose_size), _tuple(head_rot + [-15.0, 0.0, 0.0]))]
    for side in (-1.0, 1.0):
        features.append(Ellipsoid(_tuple(head_center + rot @ np.array([side * 0.97 * rx, -0.05 * ry, -0.05 * rz])),
                                  _tuple([0.035, 0.09, 0.06]), _tuple(head_rot + [0.0, side * 20.0, 0.0])))

    # Neck: from inside the torso up into the head, slightly behind the head centre.
    neck_radius = rx * rng.uniform(0.45, 0.58)
    neck_top = head_center + np.array([0.0, -0.1, -0.06])
    neck_bottom = np.array([head_center[0] * 0.5, -0.85, -0.1])
    neck = Neck(_tuple(neck_bottom), _tuple(neck_top), round(float(neck_radius), 6),
                round(float(rng.uniform(0.85, 1.0)), 6))

    # Torso: a chest ellipsoid cut by the bottom edge, a wide flat shoulder girdle, and upper arms going down out of
    # the frame at its ends.
    width = rng.uniform(0.82, 0.98)
    shoulder_y = head_center[1] - ry - rng.uniform(0.17, 0.3)  # top of the shoulder line, below the chin
    lean = rng.uniform(-3, 3)
    torso = Ellipsoid(_tuple([0.0, shoulder_y - 0.62, -0.12]), _tuple([width * 0.85, 0.66, 0.32]),
                      _tuple([0.0, rng.uniform(-8, 8), lean]))
    girdle_ry = rng.uniform(0.15, 0.2)
    shoulders = [Ellipsoid(_tuple([0.0, shoulder_y - girdle_ry, -0.1]), _tuple([width - 0.06, girdle_ry, 0.24]),
                           _tuple([0.0, 0.0, lean]))]
    arm = rng.uniform(0.16, 0.2)
    for side in (-1.0, 1.0):
        shoulders.append(Ellipsoid(_tuple([side * (width - arm), shoulder_y - 0.6 * girdle_ry - 0.62, -0.1]),
                                   _tuple([arm, 0.62, arm]),
                                   _tuple([0.0, 0.0, side * rng.uniform(2, 6)])))

    # Hair: a shell a little larger than the head, cut by a plane tilted towards the back (hairline on the forehead).
    hair = None
    if rng.uniform() > 0.12:
        scale = _rng_vec(rng, [1.04, 1.03, 1.04], [1.14, 1.12, 1.12])
        shift_local = np.array([0.0, rng.uniform(0.0, 0.04), -rng.uniform(0.0, 0.04)])
        tilt = np.radians(rng.uniform(25, 50))
        cut_local = np.array([0.0, np.cos(tilt), -np.sin(tilt)])
        hair = Hair(Ellipsoid(_tuple(head_center + rot @ shift_local), _tuple(head_radii * scale), _tuple(head_rot)),
                    _tuple(rot @ cut_local), round(float(rng.uniform(-0.15, 0.05)), 6))

    tone = rng.uniform(0, len(_SKIN_TONES) - 1)
    i = min(int(tone), len(_SKIN_TONES) - 2)
    skin_rgb = (_SKIN_TONES[i] + (tone - i) * (_SKIN_TONES[i + 1] - _SKIN_TONES[i])) * _rng_vec(rng, [0.94] * 3,
                                                                                                [1.06] * 3)
    skin = Material(_tuple(skin_rgb), round(float(rng.uniform(0.02, 0.07)), 6), round(float(rng.uniform(0.3, 0.5)), 6))
    hair_rgb = _HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))] * _rng_vec(rng, [0.8] * 3, [1.2] * 3)
    hair_material = Material(_tuple(hair_rgb), round(float(rng.uniform(0.04, 0.15)), 6),
                             round(float(rng.uniform(0.25, 0.45)), 6))
    r, g, b = colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.0, 0.8), rng.uniform(0.15, 0.9))
    cloth_rgb = np.array([r, g, b]) ** 2.2 * 0.85 + 0.02  # display-like colour to linear, kept in [0.02, 0.87]
    clothing = Material(_tuple(cloth_rgb), round(float(rng.uniform(0.0, 0.03)), 6),
                        round(float(rng.uniform(0.6, 0.9)), 6))
    return SubjectSpec(head=head, skin=skin, features=tuple(features), neck=neck, torso=torso,
                       shoulders=tuple(shoulders), hair=hair, hair_material=hair_material, clothing=clothing)


def sphere_subject(radius: float = 0.7, albedo: Vec3 = (0.6, 0.6, 0.6), specular: float = 0.0,
                   roughness: float = 0.4) -> SubjectSpec:
    """A single sphere at the frame centre: the simplest subject for physics checks."""
    return SubjectSpec(head=Ellipsoid((0.0, 0.0, 0.0), (radius, radius, radius)),
                       skin=Material(tuple(albedo), specular, roughness))


# ----------------------------------------------------------------------------------------------------------------
# Ray casting against convex solids


@dataclass
class _Solid:
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


def _ellipsoid_solid(e: Ellipsoid, part: int, material: Material, planes=()) -> _Solid:
    normals = torch.tensor(np.array([p[0] for p in planes], dtype=np.float32).reshape(-1, 3))
    offsets = torch.tensor(np.array([p[1] for p in planes], dtype=np.float32).reshape(-1))
    return _Solid(torch.tensor(e.center, dtype=torch.float32), torch.from_numpy(_rotation(e.rotation_deg)).float(),
                  torch.tensor(e.radii, dtype=torch.float32), torch.ones(3), normals, offsets, part, material)


def _neck_solid(neck: Neck, material: Material) -> _Solid:
    bottom, top = np.asarray(neck.bottom, dtype=np.float64), np.asarray(neck.top, dtype=np.float64)
    axis = top - bottom
    half = np.linalg.norm(axis) / 2
    y = axis / (2 * half)
    x = np.cross(y, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    z = np.cross(x, y)
    center = (top + bottom) / 2
    planes = [(y, float(y @ center + half)), (-y, float(-y @ center + half))]
    return _Solid(torch.tensor(center, dtype=torch.float32), torch.tensor(np.stack([x, y, z], axis=1)).float(),
                  torch.tensor([neck.radius, 1.0, neck.radius * neck.depth_scale], dtype=torch.float32),
                  torch.tensor([1.0, 0.0, 1.0]), torch.tensor(np.stack([p[0] for p in planes])).float(),
                  torch.tensor([p[1] for p in planes], dtype=torch.float32), PART_NAMES.index("neck"), material)


def _solids(spec: SubjectSpec) -> list[_Solid]:
    solids = [_ellipsoid_solid(e, PART_NAMES.index("head"), spec.skin) for e in (spec.head, *spec.features)]
    if spec.hair is not None:
        n = np.asarray(spec.hair.cut_normal, dtype=np.float64)
        n /= np.linalg.norm(n)
        # keep n·(p − c) ≥ offset, i.e. (−n)·p ≤ −(offset + n·c)
        plane = (-n, float(-(spec.hair.cut_offset + n @ np.asarray(spec.hair.shell.center))))
        solids.append(_ellipsoid_solid(spec.hair.shell, PART_NAMES.index("hair"), spec.hair_material, [plane]))
    if spec.neck is not None:
        solids.append(_neck_solid(spec.neck, spec.skin))
    for e in ((spec.torso,) if spec.torso is not None else ()) + tuple(spec.shoulders):
        solids.append(_ellipsoid_solid(e, PART_NAMES.index("clothing"), spec.clothing))
    return solids


def _intervals(s: _Solid, origins: torch.Tensor, dirs: torch.Tensor):
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


def _quadric_normals(s: _Solid, points: torch.Tensor) -> torch.Tensor:
    local = ((points - s.center) @ s.rotation) / s.radii
    n = (local * s.mask / s.radii) @ s.rotation.T
    return n / n.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _first_hits(solids: list[_Solid], xy: torch.Tensor):
    """Orthographic primary rays at image-plane points xy (P, 2): (hit (P,), solid index (P,), point, normal)."""
    origins = torch.cat([xy, torch.full_like(xy[:, :1], _CAMERA_Z)], dim=1)
    view = torch.tensor([[0.0, 0.0, -1.0]])
    best_t = torch.full((xy.shape[0],), math.inf)
    best_solid = torch.full((xy.shape[0],), -1, dtype=torch.long)
    best_entry = torch.full((xy.shape[0],), -1, dtype=torch.int8)
    for i, s in enumerate(solids):
        t_in, t_out, entry = (x[:, 0] for x in _intervals(s, origins, view))
        closer = (t_in <= t_out) & (t_in > 0) & (t_in < best_t)
        best_t = torch.where(closer, t_in, best_t)
        best_solid = torch.where(closer, i, best_solid)
        best_entry = torch.where(closer, entry, best_entry)
    hit = best_solid >= 0
    points = origins + best_t.where(hit, 0.0)[:, None] * view
    normals = torch.zeros_like(points)
    for i, s in enumerate(solids):
        sel = best_solid == i
        if not bool(sel.any()):
            continue
        n = _quadric_normals(s, points[sel])
        for k in range(s.plane_normals.shape[0]):
            n = torch.where((best_entry[sel] == k)[:, None], s.plane_normals[k], n)
        normals[sel] = n
    return hit, best_solid, points, normals


def _visibility(solids: list[_Solid], points: torch.Tensor, normals: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
    """(P, N) bool: the shadow ray from each (slightly lifted) point towards each LED leaves every solid unblocked."""
    origins = points + _SHADOW_OFFSET * normals
    blocked = torch.zeros(points.shape[0], dirs.shape[0], dtype=torch.bool)
    for s in solids:
        t_in, t_out, _ = _intervals(s, origins, dirs)
        blocked |= (t_in <= t_out) & (t_out > 0)
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

    albedo_of = torch.tensor([s.material.albedo for s in solids], dtype=torch.float32)
    spec_of = torch.tensor([s.material.specular if specular else 0.0 for s in solids], dtype=torch.float32)
    shin_of = torch.tensor([s.material.shininess for s in solids], dtype=torch.float32)
    part_of = torch.tensor([s.part for s in solids], dtype=torch.uint8)
    albedo = albedo_of[solid_idx]

    olat = torch.zeros(n_leds, h * w, 3)
    unoccluded = torch.zeros(h * w, dtype=torch.bool)
    half_vectors = dirs + torch.tensor([0.0, 0.0, 1.0])
    half_vectors = half_vectors / half_vectors.norm(dim=1, keepdim=True).clamp_min(1e-12)
    for start in range(0, fg.numel(), chunk):
        sl = slice(start, start + chunk)
        n = normals[sl]
        cos = n @ dirs.T  # (P, N)
        vis = _visibility(solids, points[sl], n, dirs)
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


# ----------------------------------------------------------------------------------------------------------------
# A whole synthetic stage on disk


def subject_seed(seed: int, index: int) -> int:
    """The seed of subject `index` of a stage generated with `seed` (independent streams per subject)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def synthetic_subject_ids(n_subjects: int) -> list[str]:
    """The subject ids `write_synthetic_stage` gives `n_subjects` subjects (known without rendering them)."""
    return [f"synth-{index:03d}" for index in range(n_subjects)]


@dataclass(frozen=True)
class SyntheticStageConfig:
    """The `lightstage` section of params.yaml: the rig and the procedural subjects."""

    n_subjects: int = 10
    size: int = 128
    n_leds: int = 156
    min_elevation_deg: float = -70.0
    sigma_deg: float = 8.0
    gain_jitter: float = 0.0
    seed: int = 0
    layout: str = "safetensors"


def build_synthetic_stage(out_dir: str | Path, config: SyntheticStageConfig, progress: bool = True) -> list[str]:
    """The default rig of `config` plus its synthetic subjects, written in the light-stage folder format."""
    rig = make_default_rig(config.n_leds, config.min_elevation_deg, config.sigma_deg,
                           gain_jitter=config.gain_jitter, seed=config.seed)
    return write_synthetic_stage(out_dir, rig, config.n_subjects, (config.size, config.size), config.seed,
                                 config.layout, progress)


def write_synthetic_stage(out_dir: str | Path, rig: LedRig, n_subjects: int, size: tuple[int, int] = (256, 256),
                          seed: int = 0, layout: str = "safetensors", progress: bool = True) -> list[str]:
    """Render `n_subjects` random busts and write `out_dir/rig.json` plus `out_dir/subjects/synth-XXX/` OLAT sets
    (with a `subject.json` holding the spec). Same arguments, byte-identical files. Returns the subject ids.

    Synthetic subjects of an earlier, larger run are removed so the folder holds exactly this stage.
    """
    out_dir = Path(out_dir)
    rig.to_json(out_dir / "rig.json")
    ids = []
    for index, subject_id in enumerate(tqdm(synthetic_subject_ids(n_subjects), desc="synthetic subjects",
                                            unit="subject", disable=not progress)):
        spec = random_subject(subject_seed(seed, index))
        subject = render_subject(spec, rig, size=size)
        subject_dir = out_dir / "subjects" / subject_id
        write_olat_set(subject_dir, subject.olat, subject.matte, rig, layout=layout)
        info = {"subject_id": subject_id, "seed": seed, "index": index, "size": list(size),
                "rig": rig.fingerprint, "spec": spec.to_dict()}
        atomic_write_text(subject_dir / "subject.json", json.dumps(info, indent=1) + "\n")
        ids.append(subject_id)
    for stale in (out_dir / "subjects").glob("synth-*"):
        if stale.name not in ids:
            shutil.rmtree(stale)
    return ids

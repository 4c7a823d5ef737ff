"""Cube maps to lat-long maps (DESIGN 3.1), and a check that a cube map's faces join without a seam.

Faces are (6, N, N, 3) in OpenGL order (+X, −X, +Y, −Y, +Z, −Z), row k at t = (k + 0.5)/N, column l at
s = (l + 0.5)/N. A direction d picks the face of its major axis and (s, t) = ((sc/|ma| + 1)/2, (tc/|ma| + 1)/2) with
(the OpenGL specification's table of cube map face selection):

    face  ma   sc    tc          face  ma   sc    tc
    +X    +x   −z    −y          −X    −x   +z    −y
    +Y    +y   +x    +z          −Y    −y   +x    −z
    +Z    +z   +x    −y          −Z    −z   −x    −y

Directions are taken as they are (no mirror, no turn): a lat-long pixel of direction d shows what the cube shows at d,
so the lat-long map's centre column is the cube's −Z and its row 0 the cube's +Y. Filament's cmgen (which made the
open3d skyboxes) writes faces with this very table and mirrors x by default so that a right-handed renderer sampling
them at world directions sees its source panorama unmirrored; the orientation checks on the real files are in
`relightful.data.starter_data`.
"""

from __future__ import annotations

import numpy as np

from relightful.lighting.envmap import latlong_directions

FACE_NAMES = ("+x", "-x", "+y", "-y", "+z", "-z")
# per face, in FACE_NAMES order: (major axis, (axis, sign) of sc, (axis, sign) of tc), the table above
_FACE_AXES = ((0, (2, -1), (1, -1)), (0, (2, 1), (1, -1)),
              (1, (0, 1), (2, 1)), (1, (0, 1), (2, -1)),
              (2, (0, 1), (1, -1)), (2, (0, -1), (1, -1)))


def cube_face_coordinates(directions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(face index 0-5, s, t) of directions (..., 3) under the OpenGL table; s and t in [0, 1]."""
    d = np.asarray(directions, dtype=np.float64)
    major = np.argmax(np.abs(d), axis=-1)
    value = np.take_along_axis(d, major[..., None], axis=-1)[..., 0]
    face = 2 * major + (value < 0)
    s = np.empty(face.shape)
    t = np.empty(face.shape)
    for index, (axis, (s_axis, s_sign), (t_axis, t_sign)) in enumerate(_FACE_AXES):
        on = face == index
        ma = np.abs(d[..., axis][on])
        s[on] = (s_sign * d[..., s_axis][on] / ma + 1.0) / 2.0
        t[on] = (t_sign * d[..., t_axis][on] / ma + 1.0) / 2.0
    return face, s, t


def sample_cubemap(faces: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """Bilinear lookup of (6, N, N, C) faces at directions (..., 3), clamped to each face's edge texels."""
    n = faces.shape[1]
    face, s, t = cube_face_coordinates(directions)
    x = np.clip(s * n - 0.5, 0.0, n - 1.0)
    y = np.clip(t * n - 0.5, 0.0, n - 1.0)
    x0 = np.clip(np.floor(x), 0, max(n - 2, 0)).astype(np.int64)  # x1 = x0 + 1 stays on the face; fx reaches 1
    y0 = np.clip(np.floor(y), 0, max(n - 2, 0)).astype(np.int64)
    x1 = np.minimum(x0 + 1, n - 1)
    y1 = np.minimum(y0 + 1, n - 1)
    fx = (x - x0)[..., None]
    fy = (y - y0)[..., None]
    top = faces[face, y0, x0] * (1 - fx) + faces[face, y0, x1] * fx
    bottom = faces[face, y1, x0] * (1 - fx) + faces[face, y1, x1] * fx
    return (top * (1 - fy) + bottom * fy).astype(faces.dtype, copy=False)


def cubemap_to_latlong(faces: np.ndarray, height: int, supersample: int = 2) -> np.ndarray:
    """An (H, 2H, C) lat-long map of the cube map: each pixel the mean of `supersample`² bilinear lookups spread over
    it, so that a bright texel (a sun) keeps its energy instead of falling between two lookups."""
    if height < 1 or supersample < 1:
        raise ValueError(f"need height >= 1 and supersample >= 1, got {height}, {supersample}")
    fine = sample_cubemap(faces, latlong_directions(height * supersample, dtype=np.float64))
    h, w, c = height, 2 * height, fine.shape[-1]
    return fine.reshape(h, supersample, w, supersample, c).mean(axis=(1, 3), dtype=np.float64).astype(faces.dtype)


def _shift(a: np.ndarray, k: int, axis: int) -> np.ndarray:
    """`a` moved so that index i holds a[i + k] along `axis`: columns wrap around, rows repeat their edge."""
    if axis == 1:
        return np.roll(a, -k, axis=1)
    if k >= 0:
        return np.concatenate([a[k:], np.repeat(a[-1:], k, axis=0)])
    return np.concatenate([np.repeat(a[:1], -k, axis=0), a[:k]])


def _seam_pairs(log_map: np.ndarray, face: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(seam id, |Δ log| across it, mean |Δ log| of the flanking pairs) for every pair of neighbours along `axis`
    that straddles a face seam and whose flanking pairs (just before and just after) lie within one face each. The
    seam id is 6·(lower face) + (higher face)."""
    jump = np.abs(_shift(log_map, 1, axis) - log_map)
    flank = 0.5 * (_shift(jump, -1, axis) + _shift(jump, 1, axis))
    face_b = _shift(face, 1, axis)
    keep = (face != face_b) & (_shift(face, -1, axis) == face) & (_shift(face, 2, axis) == face_b)
    if axis == 0:  # rows do not wrap: the first and the last two rows lack a pair on one side
        keep[:1] = keep[-2:] = False
    seam = 6 * np.minimum(face, face_b) + np.maximum(face, face_b)
    return seam[keep], jump[keep], flank[keep]


def seam_jumps(faces: np.ndarray, height: int = 128) -> dict[str, float]:
    """Per face seam ("+x|+y", ...): the median jump of log luminance between lat-long neighbours on the two sides
    of the seam over the median jump of the neighbour pairs just beside them (within one face). About 1 where faces
    join continuously; a face stored flipped or turned shows as a jump several times larger. Medians, so that a real
    edge of the scene lying along part of a seam (a door frame) does not read as a seam."""
    latlong = cubemap_to_latlong(faces, height, supersample=1).astype(np.float64)
    luminance = latlong.mean(axis=-1)
    log_map = np.log(luminance + 1e-3 * max(float(luminance.mean()), 1e-12))
    face = cube_face_coordinates(latlong_directions(height, dtype=np.float64))[0]
    seam, jump, flank = (np.concatenate(parts) for parts in zip(*(_seam_pairs(log_map, face, a) for a in (0, 1))))
    return {f"{FACE_NAMES[k // 6]}|{FACE_NAMES[k % 6]}": float(np.median(jump[seam == k]) /
                                                             max(float(np.median(flank[seam == k])), 1e-12))
            for k in np.unique(seam)}

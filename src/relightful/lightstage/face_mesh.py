"""Faces for the synthetic busts: MediaPipe's canonical face mesh fitted onto the head's ellipsoid as a relief map.

Why a relief map: the head stays an analytic ellipsoid (exact silhouette, exact normals at the back), and the face is
a displacement D(x, y) of its front surface along the head's local +z, so the renderer can ray-march it with one
bilinear lookup per sample and every shadow (nose on cheek, brow on eye socket, chin on neck) is a real cast shadow.

The mesh (468 vertices, 898 triangles, centimetres, +y up, +z out of the face; Apache-2.0, Copyright 2020 The
MediaPipe Authors) ships as `canonical_face_mesh.safetensors`, extracted from the npm package `@mediapipe/face_mesh`
by `scripts/extract_face_mesh.py`. Fitting, in the head's local frame (semi-axes a, b, c):
- the mesh is scaled so its width is `_FACE_WIDTH` of the head's, its chin sits at `_CHIN` of the head's height;
- its depth is fitted to the ellipsoid's front (a scale and an offset, least squares); each vertex's relief is what
  is left over the ellipsoid: the nose and chin stand out, the eye sockets sink in;
- the triangles are rasterised (front-most wins) and the relief fades to 0 over a band inside the outline, so the face
  meets the head without a seam; a small blur makes the normals smooth instead of faceted.
Lips, brows, eyes (sclera and iris) are painted into an albedo map from the mesh's landmark contours.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import relightful  # noqa: F401  (sets OPENCV_IO_ENABLE_OPENEXR before cv2 is imported)
import cv2
import numpy as np
from safetensors.numpy import load_file

from relightful.lightstage.subjects import Face

MESH_FILE = Path(__file__).with_name("canonical_face_mesh.safetensors")

#: Landmark contours of the canonical mesh (MediaPipe's face_mesh_connections), each a closed polygon.
LIPS = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185)
EYES = ((33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246),
        (263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466))
BROWS = ((46, 53, 52, 65, 55, 107, 66, 105, 63, 70), (276, 283, 282, 295, 285, 336, 296, 334, 293, 300))
NOSE_TIP = 4

_FACE_WIDTH = 0.9   # mesh half-width / head semi-axis a
_CHIN = -0.85       # mesh chin height / head semi-axis b
_BAND = 0.25        # relief fades in over this fraction of the head's semi-axis a inside the outline
_CELLS = 128        # relief-map cells across the head's width
_SCLERA = np.array([0.55, 0.52, 0.5])


@dataclass(frozen=True)
class FaceMesh:
    vertices: np.ndarray  # (468, 3) float64 centimetres
    uvs: np.ndarray  # (468, 2)
    triangles: np.ndarray  # (898, 3) int


@dataclass
class FaceRelief:
    """A face on an ellipsoid head with semi-axes `radii`, as maps over the head's local x ∈ [−a, a], y ∈ [−b, b]
    (row 0 at y = −b, column 0 at x = −a): the front surface is z = c·√(1 − x²/a² − y²/b²) + displacement(x, y)."""

    radii: tuple[float, float, float]
    displacement: np.ndarray  # (Gy, Gx) float32
    gradient: np.ndarray  # (2, Gy, Gx) float32: ∂D/∂x, ∂D/∂y
    albedo: np.ndarray  # (Gy, Gx, 3) float32 linear RGB of the head's front (skin where no feature is painted)


@cache
def canonical_face_mesh() -> FaceMesh:
    """The canonical face mesh shipped with the package."""
    tensors = load_file(str(MESH_FILE))
    return FaceMesh(tensors["vertices"].astype(np.float64), tensors["uvs"].astype(np.float64),
                    tensors["triangles"].astype(np.int64))


def _front_depth(x: np.ndarray, y: np.ndarray, radii) -> np.ndarray:
    a, b, c = radii
    return c * np.sqrt(np.clip(1.0 - (x / a) ** 2 - (y / b) ** 2, 0.0, None))


def fitted_vertices(face: Face, radii) -> tuple[np.ndarray, np.ndarray]:
    """The mesh's vertices in the head's local frame, varied by `face`: (V, 2) x, y and (V,) relief over the head."""
    mesh = canonical_face_mesh()
    a, b, _ = radii
    v = mesh.vertices
    x, y = v[:, 0].copy(), v[:, 1]
    # jaw: scale x below the mouth, fading in from the mouth down to the chin
    mouth, chin = v[list(LIPS), 1].mean(), y.min()
    x *= 1.0 + (face.jaw - 1.0) * np.clip((mouth - y) / (mouth - chin), 0.0, 1.0)
    scale = _FACE_WIDTH * a / np.abs(v[:, 0]).max()
    xy = np.stack([x * scale * face.width, (y - chin) * scale + _CHIN * b], axis=1)
    # The mesh's depth, scaled and shifted to fit the ellipsoid's front best (least squares): the relief left over is
    # the face's own shape (nose, sockets, lips, chin), not the difference between a face's and an egg's curvature.
    head = _front_depth(xy[:, 0], xy[:, 1], radii)
    fit = np.stack([v[:, 2], np.ones(len(v))], axis=1)
    relief = (fit @ np.linalg.lstsq(fit, head, rcond=None)[0] - head) * face.depth
    near_nose = np.exp(-((v - v[NOSE_TIP]) ** 2).sum(1) / (2 * 2.2 ** 2))  # 2.2 cm around the nose tip
    relief *= 1.0 + (face.nose - 1.0) * near_nose
    return xy, relief


def _rasterise(xy_cells: np.ndarray, values: np.ndarray, triangles: np.ndarray, shape) -> tuple[np.ndarray, np.ndarray]:
    """Barycentric interpolation of per-vertex `values` over the triangles onto cell centres, the largest value where
    triangles overlap (the front-most surface). Returns (values, covered)."""
    out = np.full(shape, -np.inf)
    for tri in triangles:
        p = xy_cells[tri]
        lo = np.maximum(np.floor(p.min(0) - 0.5).astype(int), 0)
        hi = np.minimum(np.ceil(p.max(0) + 0.5).astype(int), [shape[1] - 1, shape[0] - 1])
        if (hi < lo).any():
            continue
        gx, gy = np.meshgrid(np.arange(lo[0], hi[0] + 1) + 0.5, np.arange(lo[1], hi[1] + 1) + 0.5)
        (x0, y0), (x1, y1), (x2, y2) = p
        det = (y1 - y2) * (x0 - x2) + (x2 - x1) * (y0 - y2)
        if abs(det) < 1e-12:
            continue
        w0 = ((y1 - y2) * (gx - x2) + (x2 - x1) * (gy - y2)) / det
        w1 = ((y2 - y0) * (gx - x2) + (x0 - x2) * (gy - y2)) / det
        w2 = 1.0 - w0 - w1
        inside = (w0 >= -1e-9) & (w1 >= -1e-9) & (w2 >= -1e-9)
        value = np.where(inside, w0 * values[tri[0]] + w1 * values[tri[1]] + w2 * values[tri[2]], -np.inf)
        window = out[lo[1]:hi[1] + 1, lo[0]:hi[0] + 1]
        np.maximum(window, value, out=window)
    covered = np.isfinite(out)
    return np.where(covered, out, 0.0), covered


def _paint(canvas: np.ndarray, polygon: np.ndarray, oversample: int) -> np.ndarray:
    """Coverage (Gy, Gx) in [0, 1] of a polygon given in cell units, antialiased by `oversample`²."""
    big = np.zeros((canvas.shape[0] * oversample, canvas.shape[1] * oversample), np.uint8)
    cv2.fillPoly(big, [np.round(polygon * oversample * 16).astype(np.int32)], 255, lineType=cv2.LINE_AA, shift=4)
    return cv2.resize(big, (canvas.shape[1], canvas.shape[0]), interpolation=cv2.INTER_AREA).astype(np.float64) / 255


def face_relief(face: Face, radii, skin, hair) -> FaceRelief:
    """Fit the canonical mesh onto an ellipsoid head of semi-axes `radii`, with albedos `skin` and `hair` (RGB)."""
    a, b, _ = (float(r) for r in radii)
    shape = (round(_CELLS * b / a), _CELLS)
    cell = np.array([2.0 * a / shape[1], 2.0 * b / shape[0]])  # x, y sizes (nearly square)
    xy, relief = fitted_vertices(face, radii)
    xy_cells = (xy + [a, b]) / cell
    mesh = canonical_face_mesh()
    displacement, covered = _rasterise(xy_cells, relief, mesh.triangles, shape)
    inside = cv2.distanceTransform(covered.astype(np.uint8), cv2.DIST_L2, 5) * cell.mean()
    t = np.clip(inside / (_BAND * a), 0.0, 1.0)
    displacement *= t * t * (3.0 - 2.0 * t)  # smoothstep: no seam where the face meets the head
    displacement = cv2.GaussianBlur(displacement, (0, 0), 1.5)
    gy, gx = np.gradient(displacement, cell[1], cell[0])

    albedo = np.empty((*shape, 3))
    albedo[:] = np.asarray(skin, np.float64)
    layers = [(_paint(albedo, xy_cells[list(LIPS)], 4), np.asarray(skin) * np.asarray(face.lip_tint))]
    layers += [(0.8 * _paint(albedo, xy_cells[list(brow)], 4), np.asarray(hair)) for brow in BROWS]
    for eye in EYES:
        opening = _paint(albedo, xy_cells[list(eye)], 4)
        centre, width = xy_cells[list(eye)].mean(0), np.ptp(xy_cells[list(eye), 0])
        iris = np.zeros(shape, np.uint8)
        cv2.circle(iris, tuple(int(v) for v in np.round(centre * 16)), int(round(0.21 * width * 16)), 255, -1,
                   lineType=cv2.LINE_AA, shift=4)
        layers += [(opening, _SCLERA), (opening * iris / 255.0, np.asarray(face.iris))]
    for coverage, colour in layers:
        albedo += coverage[..., None] * (colour - albedo)
    return FaceRelief(radii=(a, b, float(radii[2])), displacement=displacement.astype(np.float32),
                      gradient=np.stack([gx, gy]).astype(np.float32), albedo=albedo.astype(np.float32))


__all__ = ["BROWS", "EYES", "FaceMesh", "FaceRelief", "LIPS", "NOSE_TIP", "canonical_face_mesh", "face_relief",
           "fitted_vertices"]

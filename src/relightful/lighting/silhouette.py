"""The surface of a subject with no known geometry, from its silhouette: the union of its inscribed spheres.

Every point q on the ridge of the matte's distance transform D (the medial axis) carries the sphere of radius D(q)
that touches the silhouette's edge, and the height field is `h(p) = max_q sqrt(D(q)² − |p − q|²)`. For a disc that
is exactly the hemisphere; for a bust it is a rounded head on a neck on a rounded torso. The frame's edges are not
silhouette edges: shoulders cut by the bottom of a portrait continue beyond it. Normals come from the gradient of h
(camera space of DESIGN 3.1: +x right, +y up, +z towards the camera).

The light-direction metric and the `shading` baseline fit lightings on these normals (evaluation/); the model can
take them as three more input channels (`ModelConfig.silhouette_normals`), since for a Lambertian subject the
relighting gain is a ratio of two shadings of the normals (on the tiny profile it read level on val:
docs/model.md).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import distance_transform_edt


def _ridge(dist: np.ndarray) -> np.ndarray:
    """Pixels where the distance transform is a local maximum along at least one of the 4 axes: its ridge (the
    medial axis, thickened a little)."""
    p = np.pad(dist, 1)
    c = p[1:-1, 1:-1]
    h, w = c.shape
    shifted = lambda dy, dx: p[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
    ridge = np.zeros(c.shape, bool)
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        ridge |= (c >= shifted(dy, dx)) & (c >= shifted(-dy, -dx))
    return ridge & (c > 0.5)


def normals_from_matte(matte: np.ndarray, threshold: float = 0.5, max_centres: int = 4096,
                       chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) matte -> normals (H, W, 3) of the silhouette's union of inscribed spheres (module docstring), and the
    mask (H, W) of pixels to fit (inside the matte, away from the outermost pixel ring where the normals turn
    sideways). At most `max_centres` ridge points are used (evenly thinned); `chunk` bounds the memory."""
    inside = (np.asarray(matte) > threshold).astype(np.uint8)
    if inside.all():  # no silhouette edge in the frame: a flat height field
        normals = np.zeros((*inside.shape, 3))
        normals[..., 2] = 1.0
        return normals, np.ones(inside.shape, bool)
    # The exact Euclidean distance to the nearest background pixel. No padding: it measures to background pixels
    # only, so a subject cut by the frame (shoulders at the bottom edge of a portrait) continues beyond it instead of
    # curling away at the frame. SciPy's, not OpenCV's DIST_MASK_PRECISE: that one gives different values from
    # call to call on the same matte (seen on the synthetic busts), which made the evaluation not reproducible.
    dist = distance_transform_edt(inside)
    qy, qx = np.nonzero(_ridge(dist))
    if len(qy) > max_centres:
        keep = np.linspace(0, len(qy) - 1, max_centres).round().astype(int)
        qy, qx = qy[keep], qx[keep]
    radius2 = dist[qy, qx] ** 2
    py, px = np.nonzero(inside)
    height2 = np.zeros(len(py))
    for s in range(0, len(py), chunk):  # chunks of pixels against all sphere centres at once
        d2 = (py[s:s + chunk, None] - qy[None]) ** 2 + (px[s:s + chunk, None] - qx[None]) ** 2
        height2[s:s + chunk] = (radius2[None] - d2).max(axis=1, initial=0.0)
    height = np.zeros_like(dist)
    height[py, px] = np.sqrt(np.clip(height2, 0, None))
    d_row, d_col = np.gradient(height)
    normals = np.stack([-d_col, d_row, np.ones_like(height)], axis=-1)  # rows grow downwards: +y is −row
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
    return normals, (dist > 1.0)


def shrink(x: torch.Tensor, max_side: int | None) -> torch.Tensor:
    """Area-downsample (B, C, H, W) so the longer side is at most `max_side`: a lighting fit needs the shading's
    shape, not its pixels, and the silhouette's height field costs pixels × ridge points."""
    h, w = x.shape[-2:]
    if max_side is None or max(h, w) <= max_side:
        return x
    size = (max(1, round(h * max_side / max(h, w))), max(1, round(w * max_side / max(h, w))))
    return torch.nn.functional.interpolate(x, size=size, mode="area")


def silhouette_normals(matte: torch.Tensor, max_side: int | None = 128) -> torch.Tensor:
    """(B, 3, H, W) normals of each matte (B, 1, H, W) in [0, 1], computed at most `max_side` pixels per side and
    resized back (the shading is smooth; the height field costs pixels × ridge points). Identical mattes (the pairs
    of one light-stage subject) are computed once. Away from the silhouette the normal faces the camera, (0, 0, 1).
    float64, on the CPU."""
    h, w = matte.shape[-2:]
    small = shrink(matte.detach().double().cpu(), max_side)
    unique, inverse = torch.unique(small.flatten(1), dim=0, return_inverse=True)
    size = small.shape[-2:]
    normals = torch.stack([torch.from_numpy(normals_from_matte(m.view(size).numpy())[0]).permute(2, 0, 1)
                           for m in unique])[inverse]
    if normals.shape[-2:] != (h, w):
        normals = F.interpolate(normals, size=(h, w), mode="bilinear", align_corners=False)
        normals = normals / normals.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return normals

"""The relighting maths of a light-stage pair (DESIGN 3.2, 3.4): a subject's OLAT set brought to the pair size, the
LED weights of a rotated map, the background a camera sees in it, and the relit foreground of both lightings.

Apart from the `render-pairs` job (render_pairs.py) so that the oracle of the evaluation (the renderer's own answer)
and the benchmark use the same maths without the job. Work is grouped by subject so all lightings of a subject are
one batched matrix product (`OlatStack`). The LED weights of a rotated map come from a table of the weights of every
whole-column roll, interpolated linearly: weights are linear in the map, so this equals the weights of
`rotate_envmap`'s interpolated map, at no cost per pair.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from relightful.lighting import LedRig, OlatStack, led_projection_matrix, resize_envmap
from relightful.lighting.camera import crop_grid
from relightful.lightstage import load_olat_set

FLOAT16_MAX = 65504.0


def roll_weight_table(env: np.ndarray, rig: LedRig, height: int) -> torch.Tensor:
    """(W, N, 3) float32: LED weights of the map rolled by 0..W−1 columns, at lat-long height `height`.

    Rolling the map by k columns gives weights c[k] = Σ_j P[j + k] L[j] per row (a circular cross-correlation of
    the projection matrix P with the map L along longitude), so all W rolls cost a few FFTs, not W products.
    """
    small = torch.from_numpy(resize_envmap(env, height)).double()  # (H, W, 3)
    width = small.shape[1]
    proj = led_projection_matrix(rig, height).reshape(rig.n_leds, height, width)
    spectrum = torch.einsum("nhf,hfc->nfc", torch.fft.rfft(proj, dim=2), torch.fft.rfft(small, dim=1).conj())
    weights = torch.fft.irfft(spectrum, n=width, dim=1)  # (N, W, 3)
    return weights.permute(1, 0, 2).float().contiguous()


@dataclass
class PreparedSubject:
    matte: torch.Tensor     # (S, S) float32
    inside: torch.Tensor    # (S·S,) bool: matte > 0.5, where the subject's maximum is taken
    olat_sums: torch.Tensor  # (N, 3): Σ_pixels matte · OLAT_k, so matte-weighted means cost O(N) per lighting
    fg_index: torch.Tensor  # (F,) the pixels with matte > 0 (all, if none is), those with matte > 0.5 first
    n_peak: int             # how many of them lead: where the subject's maximum is taken
    fg_stack: OlatStack     # the OLAT at those pixels, in that order: all that is ever relit


def centre_square(x: torch.Tensor) -> torch.Tensor:
    """Crop (..., H, W) to its centred square."""
    h, w = x.shape[-2:]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return x[..., top:top + s, left:left + s]


def prepare_subject(subject_dir: Path, rig: LedRig, size: int) -> PreparedSubject:
    """Load an OLAT set and bring it to the render size (centre square, area resampling)."""
    olat, matte = load_olat_set(subject_dir, rig)
    chw = centre_square(torch.from_numpy(olat).permute(0, 3, 1, 2))
    m = centre_square(torch.from_numpy(matte))[None, None]
    if chw.shape[-1] != size:
        chw = F.interpolate(chw, size=(size, size), mode="area" if chw.shape[-1] > size else "bilinear")
        m = F.interpolate(m, size=(size, size), mode="area" if m.shape[-1] > size else "bilinear")
    m = m[0, 0].clamp(0, 1)
    flat = m.reshape(-1)
    inside = flat > 0.5
    fg = flat > 0 if (flat > 0).any() else torch.ones_like(inside)
    peak = inside if inside.any() else fg
    fg_index = torch.cat([peak.nonzero()[:, 0], (fg & ~peak).nonzero()[:, 0]])
    pixels = chw.reshape(chw.shape[0], 3, -1)  # (N, 3, S·S): already channel planes
    fg_planar = pixels[:, :, fg_index].float().transpose(0, 1)  # (3, N, F)
    sums = (fg_planar * flat[fg_index]).sum(dim=2).T  # (N, 3): the matte is 0 elsewhere
    return PreparedSubject(m, inside, sums, fg_index, int(peak.sum()), OlatStack.from_planar(fg_planar))


@dataclass
class RollTables:
    """The `roll_weight_table` of every map, stacked once, so a batch of (map, angle) lookups is one gather."""
    index: dict[str, int]
    stacked: torch.Tensor  # (M, W, N, 3)

    @classmethod
    def build(cls, envmaps: dict[str, np.ndarray], rig: LedRig, height: int, progress: bool = False) -> "RollTables":
        ids = sorted(envmaps)
        tables = [roll_weight_table(envmaps[m], rig, height)
                  for m in tqdm(ids, desc="LED weights", unit="map", disable=not progress)]
        return cls({m: i for i, m in enumerate(ids)}, torch.stack(tables))


def lookup_weights(tables: RollTables, map_ids, degrees) -> torch.Tensor:
    """(P, N, 3) LED weights of each map rotated by its angle, interpolated between the two nearest rolls."""
    which = torch.tensor([tables.index[m] for m in map_ids], dtype=torch.long)
    width = tables.stacked.shape[1]
    shift = (np.asarray(degrees, dtype=np.float64) % 360.0) / 360.0 * width
    whole = np.floor(shift)
    frac = torch.from_numpy(shift - whole).float()[:, None, None]
    k = torch.from_numpy(whole.astype(np.int64)) % width
    return (1 - frac) * tables.stacked[which, k] + frac * tables.stacked[which, (k + 1) % width]


def background_crops(padded_maps: dict[str, torch.Tensor], rows: pd.DataFrame, size: int,
                     oversampling: float, gain: torch.Tensor | None = None) -> torch.Tensor:
    """(P, 3, S, S) linear views of each pair's map b, as the camera sees it after the map is rotated, times the
    pair's `gain` (P,) and clamped to float16's range.

    Looking at a map rotated by Δ at yaw 0 is looking at the unrotated map at yaw −Δ: one interpolation, not two.
    The views are sampled at `oversampling` samples per map pixel across the field of view (the map holds no finer
    detail) and bilinearly resized to the pair size: the same image as sampling every pixel, at a fraction of
    the cost. All views of one map are one `grid_sample` call (their grids stacked), so no map is copied per pair.
    Gain and clamp come before the resize: bilinear resizing is a convex combination, so that is the same image
    for a fraction of the work.
    """
    map_height = next(iter(padded_maps.values())).shape[-2]
    res = min(size, max(8, math.ceil(oversampling * 2 * map_height * float(rows.fov_deg.max()) / 360.0)))
    grids = crop_grid(rows.fov_deg.values, -rows.rotation_b_deg.values, rows.pitch_deg.values, (res, res), map_height)
    crops = torch.empty(len(rows), 3, res, res)
    env_b = rows.env_b.values
    for map_id in dict.fromkeys(env_b):
        idx = torch.from_numpy(np.flatnonzero(env_b == map_id))
        views = F.grid_sample(padded_maps[map_id][None], grids[idx].reshape(1, len(idx) * res, res, 2),
                              mode="bilinear", padding_mode="border", align_corners=False)  # (1, 3, n·res, res)
        crops[idx] = views.reshape(3, len(idx), res, res).transpose(0, 1)
    if gain is not None:
        crops.mul_(gain[:, None, None, None])
    crops.clamp_(0, FLOAT16_MAX)
    if res != size:
        crops = F.interpolate(crops, size=(size, size), mode="bilinear", align_corners=False)
    return crops


RELIGHT_BUFFER_BYTES = 256 << 20  # float32 working set of one relighting product; larger batches go in chunks


def relight_pairs(subject: PreparedSubject, w_a: torch.Tensor, w_b: torch.Tensor, x_a: torch.Tensor,
                  x_b: torch.Tensor) -> torch.Tensor:
    """Relight P pairs into the float16 images x_a, x_b (P, 3, S, S), scaled so the subject's maximum over x_a and
    x_b is 1; returns that maximum before scaling (P,).

    Only the pixels inside the matte are relit (one batched product for both lightings of every pair): the
    composite `m·x + (1−m)·y_b` never reads the others, so they are written as 0. The maximum comes from the
    pixels with matte > 0.5 of the same product, then the scale is applied on the way to float16.
    """
    p, n_fg = len(w_a), subject.fg_index.numel()
    chunk = max(1, RELIGHT_BUFFER_BYTES // (2 * 3 * 4 * max(n_fg, 1)))
    fg_max = torch.empty(p)
    x_a.zero_()
    x_b.zero_()
    planes_a, planes_b = x_a.view(p, 3, -1), x_b.view(p, 3, -1)
    for c0 in range(0, p, chunk):
        c1 = min(p, c0 + chunk)
        both = torch.cat([w_a[c0:c1], w_b[c0:c1]]).float().permute(2, 0, 1)  # (3, 2C, N)
        lit = torch.bmm(both, subject.fg_stack.planar)                     # (3, 2C, F)
        peak = lit[:, :, :subject.n_peak].amax(dim=(0, 2))
        n = c1 - c0
        fg_max[c0:c1] = torch.maximum(peak[:n], peak[n:])
        lit.mul_((1.0 / fg_max[c0:c1].clamp_min(1e-12)).repeat(2)[None, :, None]).clamp_(0, FLOAT16_MAX)
        lit = lit.to(torch.float16).transpose(0, 1)                      # (2C, 3, F)
        planes_a[c0:c1].index_copy_(2, subject.fg_index, lit[:n])
        planes_b[c0:c1].index_copy_(2, subject.fg_index, lit[n:])
    return fg_max


class SubjectCache:
    """Keeps the last few prepared subjects: shards are grouped by subject, so one or two suffice."""

    def __init__(self, subjects_dir: Path, rig: LedRig, size: int, capacity: int = 2):
        self.subjects_dir, self.rig, self.size, self.capacity = subjects_dir, rig, size, capacity
        self._items: OrderedDict[str, PreparedSubject] = OrderedDict()

    def get(self, subject_id: str) -> PreparedSubject:
        if subject_id not in self._items:
            self._items[subject_id] = prepare_subject(self.subjects_dir / subject_id, self.rig, self.size)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        self._items.move_to_end(subject_id)
        return self._items[subject_id]


__all__ = ["FLOAT16_MAX", "PreparedSubject", "RollTables", "SubjectCache", "background_crops", "lookup_weights",
           "prepare_subject", "relight_pairs", "roll_weight_table"]

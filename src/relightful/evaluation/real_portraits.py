"""The paper's third scenario: real portraits on real backgrounds, with no ground truth to score against.

Every portrait of a portraits folder (the `augment` input format: image + matte) is harmonised onto every background
photo of a folder (photos and tone-mapped views of the HDR maps, as `natural-starter` writes them), at the
portrait's full resolution, by the same `Harmonizer` call a user makes. What a person judges is shown side by side:
the paste (the portrait composited unchanged) and the result, in `real.png` and the report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from relightful.augment.portraits import scan_backgrounds, scan_portraits
from relightful.evaluation.report import label_strip
from relightful.io import read_ldr, read_matte, to_uint8
from relightful.models.compositing import paste

CELL_HEIGHT = 128   # display height of each image in real.png (the results themselves are full resolution)
CELLS_PER_ROW = 6   # (paste | result) pairs per row


@dataclass
class RealScenario:
    cells: list[dict] = field(default_factory=list)    # {"portrait", "background", "paste", "result"} uint8
    skipped: dict[str, str] = field(default_factory=dict)
    shape: dict[str, tuple[int, int]] = field(default_factory=dict)  # portrait -> (H, W) of its results


def harmonise_all(harmonizer, portraits_dir: str | Path, backgrounds_dir: str | Path, seed: int = 0) -> RealScenario:
    """Every portrait on every background (sorted by id): paste and result at the portrait's resolution."""
    portraits, skipped = scan_portraits(portraits_dir)
    backgrounds, bad_backgrounds = scan_backgrounds(backgrounds_dir)
    out = RealScenario(skipped={**skipped, **bad_backgrounds})
    photos = {b.background_id: to_uint8(read_ldr(b.path)) for b in backgrounds}
    for portrait in portraits:
        fg8, matte = to_uint8(read_ldr(portrait.image)), read_matte(portrait.matte)
        out.shape[portrait.portrait_id] = fg8.shape[:2]
        for background_id, bg8 in photos.items():
            out.cells.append({"portrait": portrait.portrait_id, "background": background_id,
                              "paste": paste(fg8, matte, bg8), "result": harmonizer(fg8, matte, bg8, seed=seed)})
    return out


def _fit(image: np.ndarray, height: int) -> np.ndarray:
    h, w = image.shape[:2]
    return cv2.resize(image, (max(1, round(w * height / h)), height), interpolation=cv2.INTER_AREA)


def real_grid(scenario: RealScenario) -> np.ndarray | None:
    """`CELLS_PER_ROW` (paste | result) pairs per row, each labelled "portrait on background"."""
    if not scenario.cells:
        return None
    tiles = []
    for cell in scenario.cells:
        pair = np.concatenate([_fit(cell["paste"], CELL_HEIGHT), _fit(cell["result"], CELL_HEIGHT)], axis=1)
        label = label_strip(f"{cell['portrait']} / {cell['background']}", pair.shape[1])
        tiles.append(np.concatenate([label, pair], axis=0))
    width = max(t.shape[1] for t in tiles)
    tiles = [np.pad(t, ((0, 0), (0, width - t.shape[1] + 4), (0, 0)), constant_values=255) for t in tiles]
    blank = np.full_like(tiles[0], 255)
    rows = []
    for i in range(0, len(tiles), CELLS_PER_ROW):
        row = tiles[i:i + CELLS_PER_ROW]
        rows.append(np.concatenate(row + [blank] * (CELLS_PER_ROW - len(row)), axis=1))
    return np.concatenate(rows, axis=0)

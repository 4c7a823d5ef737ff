"""The oracle relight of light-stage pairs: the subject's OLAT set relit with the target map's LED weights.

This is the renderer's own answer (DESIGN 3.2, `relight_pairs` with the pair's stored weights), recomputed from the
raw captures rather than read from the shard,
so it is the upper bound of the light-stage scenario: it knows the HDR map and the subject's reflectance, and only
float16 storage and the 8-bit output separate it from the target. A low score here means the pairs, the raw data
and the evaluation disagree, which is worth knowing before trusting any other number.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from relightful.data.pair_relighting import SubjectCache, relight_pairs
from relightful.lighting import LedRig


class OracleRelighter:
    def __init__(self, subjects_dir: str | Path, rig: LedRig, size: int):
        self.subjects = SubjectCache(Path(subjects_dir), rig, size)

    def __call__(self, rows: pd.DataFrame, w_a: torch.Tensor, w_b: torch.Tensor) -> torch.Tensor:
        """The subject_id of B pairs and their weights (B, N, 3) -> x_b (B, 3, S, S) linear."""
        size = self.subjects.size
        x_a = torch.empty(len(rows), 3, size, size, dtype=torch.float16)
        x_b = torch.empty_like(x_a)
        for i, subject_id in enumerate(rows.subject_id):
            relight_pairs(self.subjects.get(subject_id), w_a[i:i + 1], w_b[i:i + 1], x_a[i:i + 1], x_b[i:i + 1])
        return x_b.float()

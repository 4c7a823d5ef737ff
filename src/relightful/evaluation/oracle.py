"""The oracle relight of light-stage pairs: the subject's OLAT set relit with the target map's LED weights.

This is the renderer's own answer (DESIGN 3.2), recomputed from the raw captures rather than read from the shard,
so it is the upper bound of the light-stage scenario: it knows the HDR map and the subject's reflectance, and only
float16 storage and the 8-bit output separate it from the target. A low score here means the pairs, the raw data
and the evaluation disagree, which is worth knowing before trusting any other number.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from relightful.data.pairs import FLOAT16_MAX, SubjectCache
from relightful.lighting import LedRig


class OracleRelighter:
    def __init__(self, subjects_dir: str | Path, rig: LedRig, size: int):
        self.subjects = SubjectCache(Path(subjects_dir), rig, size)

    def __call__(self, rows: pd.DataFrame, w_b: torch.Tensor) -> torch.Tensor:
        """rows (subject_id, scale) of B pairs and their target weights (B, N, 3) -> x_b (B, 3, S, S) linear."""
        out = []
        scale = torch.tensor(rows.scale.to_numpy(dtype=np.float32))
        for i, subject_id in enumerate(rows.subject_id):
            stack = self.subjects.get(subject_id).stack
            out.append(stack.relight_chw(w_b[i:i + 1].float() * scale[i]))
        return torch.cat(out).clamp(0, FLOAT16_MAX)

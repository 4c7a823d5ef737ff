"""The pair plan: which subject, maps, rotations and camera each training tuple uses, and which shard holds it.

The plan is a pure function of the subject ids, map ids and the config, so every pod of a sharded render computes
the same plan and renders its own part of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from relightful.data.schema import SPLITS
from relightful.data.splits import assign_splits, stable_hash


@dataclass(frozen=True)
class PlanConfig:
    pairs_per_subject: int = 32
    pairs_per_shard: int = 64
    fov_range: tuple[float, float] = (40.0, 70.0)
    pitch_range: tuple[float, float] = (-5.0, 10.0)
    exposure_jitter_stops: float = 1.0  # each lighting's intensity varies by 2^U(−j, j): the model learns strength
    split_fractions: dict[str, float] = field(default_factory=lambda: {"train": 0.8, "val": 0.1, "test": 0.1})
    seed: int = 0


def shard_name(number: int) -> str:
    return f"shard-{number:05d}.safetensors"


def plan_pairs(subject_ids: list[str], map_ids: list[str], config: PlanConfig) -> pd.DataFrame:
    """One row per pair with the manifest's identity columns; subjects and maps never cross splits.

    Each subject draws from its own generator (seeded by the seed and its id), so adding a subject leaves the
    other subjects' pairs unchanged. Shards never mix splits.
    """
    subject_split = assign_splits(subject_ids, config.split_fractions, config.seed, min_per_split=1)
    map_split = assign_splits(map_ids, config.split_fractions, config.seed + 1, min_per_split=2)
    maps_of = {s: sorted(m for m, ms in map_split.items() if ms == s) for s in SPLITS}
    rows = []
    for split in SPLITS:
        for subject in sorted(s for s, ss in subject_split.items() if ss == split):
            rng = np.random.default_rng(stable_hash(config.seed, "pairs", subject))
            maps = maps_of[split]
            for k in range(config.pairs_per_subject):
                a, b = rng.choice(len(maps), size=2, replace=False)
                rows.append({
                    "pair_id": f"{split}-{subject}-{k:05d}", "subject_id": subject, "split": split,
                    "env_a": maps[a], "env_b": maps[b],
                    "rotation_a_deg": float(rng.uniform(0.0, 360.0)) % 360.0,
                    "rotation_b_deg": float(rng.uniform(0.0, 360.0)) % 360.0,
                    "fov_deg": float(rng.uniform(*config.fov_range)),
                    "pitch_deg": float(rng.uniform(*config.pitch_range)),
                    "exposure_a_stops": float(rng.uniform(-1, 1) * config.exposure_jitter_stops),
                    "exposure_b_stops": float(rng.uniform(-1, 1) * config.exposure_jitter_stops),
                })
    plan = pd.DataFrame(rows)
    if plan.empty:
        raise ValueError("the plan is empty: no subjects or no pairs per subject")
    shard, index, number = [], [], -1
    for split, group in plan.groupby("split", sort=False):
        for start in range(0, len(group), config.pairs_per_shard):
            number += 1
            count = min(config.pairs_per_shard, len(group) - start)
            shard += [shard_name(number)] * count
            index += list(range(count))
    plan["shard"], plan["index"] = shard, index
    return plan

"""The pair plan: which subject, maps, rotations and camera each training tuple uses, and which shard holds it.

The plan is a pure function of the subject ids, map ids and the config, so every pod of a sharded render computes
the same plan and renders its own part of it.

Split sizes: subjects and maps are split by `split_fractions`, but a held-out split never gets fewer than
`min_subjects[split]` subjects or `min_maps[split]` maps (e.g. `{val: 2, test: 3}`), so a small set still has a
test split that can tell methods apart; train takes the rest. Maps are stratified by source (the id's prefix before
"-": pmndrs, blender, sky) when `stratify_maps` is on, so each split holds real and procedural maps in proportion.
Maps of a source in `train_only_sources` (e.g. the starter set's ``sky_train``) go to train alone and count in no
split's fraction: adding them widens the lighting training sees without moving a val or test map.
`pairs_per_subject` is one count for every split or one per split (`{train: 768, val: 48, test: 96}`): training
wants many pairs, evaluation only enough to measure.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from relightful.data.schema import SPLITS
from relightful.data.shards import shard_name
from relightful.data.splits import assign_splits, check_splits, source_of, stable_hash


MIN_SUBJECTS_PER_SPLIT = 1  # every split with a fraction > 0 has a subject
MIN_MAPS_PER_SPLIT = 2      # and two maps: a pair lights its subject with two different maps


def _whole_counts(value: dict, what: str) -> dict[str, int]:
    """A {split: count} mapping with whole, non-negative counts (kfp sends numbers as floats)."""
    if not isinstance(value, dict):
        raise ValueError(f"{what}: expected a mapping of split -> count, got {value!r}")
    check_splits(value, what)
    out = {}
    for split, count in value.items():
        if isinstance(count, bool) or not isinstance(count, (int, float)) or float(count) != int(count) or count < 0:
            raise ValueError(f"{what}.{split}: expected a whole number >= 0, got {count!r}")
        out[split] = int(count)
    return out


@dataclass(frozen=True)
class PlanConfig:
    pairs_per_subject: int | dict[str, int] = 32  # one count for all splits, or {train: n, val: n, test: n}
    pairs_per_shard: int = 64
    fov_range: tuple[float, float] = (40.0, 70.0)
    pitch_range: tuple[float, float] = (-5.0, 10.0)
    exposure_jitter_stops: float = 1.0  # each lighting's intensity varies by 2^U(−j, j): the model learns strength
    split_fractions: dict[str, float] = field(default_factory=lambda: {"train": 0.8, "val": 0.1, "test": 0.1})
    min_subjects: dict[str, int] = field(default_factory=dict)  # per-split floors, e.g. {val: 2, test: 3}
    min_maps: dict[str, int] = field(default_factory=dict)      # e.g. {val: 4, test: 6}
    stratify_maps: bool = True  # each split holds every map source (id prefix before "-") in proportion
    train_only_sources: tuple[str, ...] = ()  # map sources (id prefix) that only train uses (module doc)
    seed: int = 0

    def __post_init__(self):
        if isinstance(self.pairs_per_subject, dict):
            counts = _whole_counts(self.pairs_per_subject, "plan.pairs_per_subject")
            missing = [s for s in SPLITS if s not in counts]
            if missing:
                raise ValueError(f"plan.pairs_per_subject: no count for split(s) {missing} (give all of "
                                 f"{list(SPLITS)}, or one number for every split)")
            object.__setattr__(self, "pairs_per_subject", counts)
        else:
            _whole_counts({"train": self.pairs_per_subject}, "plan.pairs_per_subject")
            object.__setattr__(self, "pairs_per_subject", int(self.pairs_per_subject))
        object.__setattr__(self, "min_subjects", _whole_counts(self.min_subjects, "plan.min_subjects"))
        object.__setattr__(self, "min_maps", _whole_counts(self.min_maps, "plan.min_maps"))
        if isinstance(self.train_only_sources, str):
            raise ValueError(f"plan.train_only_sources: expected a list of map sources, got {self.train_only_sources!r}")
        object.__setattr__(self, "train_only_sources", tuple(self.train_only_sources))

    def pairs_for(self, split: str) -> int:
        """Pairs per subject of `split`."""
        if isinstance(self.pairs_per_subject, dict):
            return self.pairs_per_subject[split]
        return self.pairs_per_subject


def plan_splits(subject_ids: list[str], map_ids: list[str],
                config: PlanConfig) -> tuple[dict[str, str], dict[str, str]]:
    """(subject -> split, map -> split): disjoint, stable under additions, sized by fractions and floors; maps of a
    `train_only_sources` source go to train and leave the others' assignment as it is without them."""
    subject_split = assign_splits(subject_ids, config.split_fractions, config.seed,
                                  min_per_split=MIN_SUBJECTS_PER_SPLIT, min_counts=config.min_subjects)
    train_only = sorted(m for m in set(map_ids) if source_of(m) in config.train_only_sources)
    held_out_candidates = [m for m in map_ids if source_of(m) not in config.train_only_sources]
    map_split = assign_splits(held_out_candidates, config.split_fractions, config.seed + 1,
                              min_per_split=MIN_MAPS_PER_SPLIT, min_counts=config.min_maps,
                              group_of=source_of if config.stratify_maps else None)
    map_split.update({m: "train" for m in train_only})
    n_maps = {s: sum(1 for v in map_split.values() if v == s) for s in SPLITS}
    starved = sorted(s for s in set(subject_split.values()) if n_maps[s] < 2 and config.pairs_for(s) > 0)
    if starved:
        raise ValueError(f"split(s) {starved} get subjects but fewer than 2 maps ({n_maps}): a pair needs two maps; "
                         f"check split_fractions, min_subjects and min_maps")
    return subject_split, map_split


def plan_pairs(subject_ids: list[str], map_ids: list[str], config: PlanConfig) -> pd.DataFrame:
    """One row per pair with the manifest's identity columns; subjects and maps never cross splits.

    Each subject draws from its own generator (seeded by the seed and its id), so adding a subject leaves the
    other subjects' pairs unchanged. Shards never mix splits.
    """
    subject_split, map_split = plan_splits(subject_ids, map_ids, config)
    maps_of = {s: sorted(m for m, ms in map_split.items() if ms == s) for s in SPLITS}
    rows = []
    for split in SPLITS:
        for subject in sorted(s for s, ss in subject_split.items() if ss == split):
            rng = np.random.default_rng(stable_hash(config.seed, "pairs", subject))
            maps = maps_of[split]
            for k in range(config.pairs_for(split)):
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

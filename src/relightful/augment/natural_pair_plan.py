"""The natural-pair plan: which background each pair relights its portrait to, its split, its shard.

A pure function of the portrait ids, background ids and the config, like the light-stage plan (data/pair_plan.py).
Splits are by portrait, so a photo (the target) is never in two splits. Backgrounds are shared by all splits: a
background only sets the lighting the input subject is relit to; it appears neither in the composite (whose
background is the photo's own) nor in the target, so sharing it leaks nothing about held-out targets.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from relightful.data.shards import shard_name
from relightful.data.schema import SPLITS
from relightful.data.splits import assign_splits, stable_hash

log = logging.getLogger(__name__)

SPLIT_PRIORITY = ("train", "test", "val")  # which splits get a portrait first when there are too few to fill all


def portrait_splits(ids: list[str], fractions: dict[str, float], seed: int) -> dict[str, str]:
    """Each portrait's split (disjoint, stable under additions). With fewer portraits than wanted splits, the
    splits are filled in the order train, test, val and the rest stay empty (a starter set of one portrait still
    trains), with a warning."""
    wanted = [s for s in SPLIT_PRIORITY if fractions.get(s, 0.0) > 0]
    if not wanted:
        raise ValueError(f"split_fractions {fractions} selects no split")
    kept = wanted[:len(set(ids))]
    if len(kept) < len(wanted):
        log.warning("only %d portrait(s): splits %s stay empty", len(set(ids)), sorted(set(wanted) - set(kept)))
    return assign_splits(ids, {s: fractions[s] for s in kept}, seed, min_per_split=1)


def plan_natural_pairs(portrait_ids: list[str], background_ids: list[str], pairs_per_portrait: int,
                       pairs_per_shard: int, split_fractions: dict[str, float], seed: int) -> pd.DataFrame:
    """One row per pair: pair_id, subject_id (the portrait), split, background_id, shard, index.

    Each portrait draws its backgrounds from its own generator, without repetition while there are enough, never
    the background whose id is the portrait's own. Shards never mix splits.
    """
    if not portrait_ids or not background_ids:
        raise ValueError("the plan needs at least one portrait and one background")
    split_of = portrait_splits(portrait_ids, split_fractions, seed)
    rows = []
    for split in SPLITS:
        for portrait in sorted(p for p, s in split_of.items() if s == split):
            choices = sorted(b for b in set(background_ids) if b != portrait)
            if not choices:
                raise ValueError(f"portrait {portrait!r} has no other background to be relit to")
            rng = np.random.default_rng(stable_hash(seed, "natural-pairs", portrait))
            picks = rng.choice(len(choices), size=pairs_per_portrait, replace=len(choices) < pairs_per_portrait)
            rows += [{"pair_id": f"{split}-{portrait}-{k:05d}", "subject_id": portrait, "split": split,
                      "background_id": choices[b]} for k, b in enumerate(picks)]
    plan = pd.DataFrame(rows)
    shard, index, number = [], [], -1
    for _, group in plan.groupby("split", sort=False):
        for start in range(0, len(group), pairs_per_shard):
            number += 1
            count = min(pairs_per_shard, len(group) - start)
            shard += [shard_name(number)] * count
            index += list(range(count))
    plan["shard"], plan["index"] = shard, index
    return plan


__all__ = ["plan_natural_pairs", "portrait_splits"]

"""Split assignment that keeps subjects and maps disjoint across train/val/test and is stable under additions.

Items are ranked by a hash of (seed, id); test takes the first of that order, then val, the rest train. Adding a
new subject or map inserts it somewhere in the order and moves at most the few items at a split boundary.

How many items each split gets (`split_counts`): val and test get `round(fraction · n)`, but never fewer than a
floor (`min_per_split` for every split, and a per-split `min_counts` such as `{"val": 2, "test": 3}`), so that a
small set still has held-out splits large enough to measure; train gets the rest and must keep its own floor.

Stratified ranking (`group_of`): items are ordered by their quantile within their group (e.g. the source of a map,
the prefix of its id) with a random phase per group, so every prefix of the order, hence every split, holds each
group in proportion to its size (systematic sampling); with one group it is the plain hash order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping

from relightful.data.schema import SPLITS


def stable_hash(*parts: object) -> int:
    """A 64-bit hash that, unlike `hash()`, is the same in every process."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def check_splits(mapping: Mapping[str, object], what: str) -> None:
    unknown = sorted(set(mapping) - set(SPLITS))
    if unknown:
        raise ValueError(f"{what}: unknown split(s) {unknown}; splits are {list(SPLITS)}")


def split_counts(n: int, fractions: Mapping[str, float], min_per_split: int = 1,
                 min_counts: Mapping[str, int] | None = None) -> dict[str, int]:
    """How many of `n` items go to each split.

    A split is wanted when its fraction or its `min_counts` entry is > 0. Each wanted val/test split gets
    `max(round(fraction · n), min_per_split, min_counts[split])`; train gets the rest, which must reach
    `max(min_per_split, min_counts["train"])` when train is wanted. Raises ValueError when `n` cannot fill them.
    """
    min_counts = dict(min_counts or {})
    check_splits(fractions, "split fractions")
    check_splits(min_counts, "minimum split counts")
    if any(v < 0 for v in fractions.values()) or any(v < 0 for v in min_counts.values()):
        raise ValueError(f"split fractions {dict(fractions)} and minimum counts {min_counts} must be >= 0")
    wanted = [s for s in SPLITS if fractions.get(s, 0.0) > 0 or min_counts.get(s, 0) > 0]
    floor = {s: max(min_per_split, int(min_counts.get(s, 0))) for s in wanted}
    if n < sum(floor.values()):
        raise ValueError(f"{n} items cannot fill splits {wanted} with at least {floor} items")
    counts = {s: 0 for s in SPLITS}
    for s in wanted:
        if s != "train":
            counts[s] = max(floor[s], round(fractions.get(s, 0.0) * n))
    counts["train"] = n - counts["val"] - counts["test"]
    if counts["train"] < 0:
        raise ValueError(f"{n} items cannot fill val and test with {counts['val']} and {counts['test']} items")
    if "train" in wanted and counts["train"] < floor["train"]:
        raise ValueError(f"{n} items leave {counts['train']} for train (at least {floor['train']} wanted) with "
                         f"fractions {dict(fractions)} and minimum counts {min_counts}")
    return counts


def rank_items(ids: list[str], seed: int, group_of: Callable[[str], str] | None = None) -> list[str]:
    """The distinct ids in split order: by hash of (seed, id); with `group_of`, stratified by group (module doc)."""
    unique = sorted(set(ids))
    if group_of is None:
        return sorted(unique, key=lambda i: (stable_hash(seed, i), i))
    groups: dict[str, list[str]] = {}
    for item in unique:
        groups.setdefault(group_of(item), []).append(item)
    key = {}
    for group, members in groups.items():
        phase = stable_hash(seed, "group-phase", group) / 2.0 ** 64  # [0, 1): where the group's first item falls
        for rank, item in enumerate(sorted(members, key=lambda i: (stable_hash(seed, i), i))):
            key[item] = ((rank + phase) / len(members), stable_hash(seed, item), item)
    return sorted(unique, key=key.__getitem__)


def assign_splits(ids: list[str], fractions: Mapping[str, float], seed: int, min_per_split: int = 1,
                  min_counts: Mapping[str, int] | None = None,
                  group_of: Callable[[str], str] | None = None) -> dict[str, str]:
    """Map each id to 'train', 'val' or 'test': test first, then val, the rest train, in `rank_items` order."""
    ranked = rank_items(ids, seed, group_of)
    counts = split_counts(len(ranked), fractions, min_per_split, min_counts)
    out, start = {}, 0
    for split in ("test", "val", "train"):
        for item in ranked[start:start + counts[split]]:
            out[item] = split
        start += counts[split]
    return out


def source_of(item_id: str) -> str:
    """The source of a map id: the part before its first "-" (``pmndrs-city`` -> ``pmndrs``, ``sky-003`` -> ``sky``)."""
    return item_id.split("-", 1)[0]

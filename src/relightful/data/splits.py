"""Split assignment that keeps subjects and maps disjoint across train/val/test and is stable under additions.

Items are ranked by a hash of (seed, id), so adding a new subject or map moves few existing ones.
"""

from __future__ import annotations

import hashlib

from relightful.data.schema import SPLITS


def stable_hash(*parts: object) -> int:
    """A 64-bit hash that, unlike `hash()`, is the same in every process."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def split_counts(n: int, fractions: dict[str, float], min_per_split: int) -> dict[str, int]:
    """How many of `n` items go to each split: at least `min_per_split` for every split with a fraction > 0."""
    wanted = [s for s in SPLITS if fractions.get(s, 0.0) > 0]
    if n < min_per_split * len(wanted):
        raise ValueError(f"{n} items cannot fill splits {wanted} with at least {min_per_split} each")
    counts = {s: 0 for s in SPLITS}
    for s in wanted:
        if s != "train":
            counts[s] = max(min_per_split, round(fractions[s] * n))
    counts["train"] = n - counts["val"] - counts["test"]
    if "train" in wanted and counts["train"] < min_per_split:
        raise ValueError(f"{n} items leave fewer than {min_per_split} for train with fractions {fractions}")
    return counts


def assign_splits(ids: list[str], fractions: dict[str, float], seed: int, min_per_split: int = 1) -> dict[str, str]:
    """Map each id to 'train', 'val' or 'test' (test first, then val, the rest train, in hash order)."""
    ranked = sorted(set(ids), key=lambda i: (stable_hash(seed, i), i))
    counts = split_counts(len(ranked), fractions, min_per_split)
    out, start = {}, 0
    for split in ("test", "val", "train"):
        for item in ranked[start:start + counts[split]]:
            out[item] = split
        start += counts[split]
    return out

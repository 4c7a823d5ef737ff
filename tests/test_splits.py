"""Split controls of the pair plan: floors per split, per-split pair counts, stratified maps, stability; and the tiny
profile's light-stage splits are large enough for the evaluation to tell methods apart (DESIGN 4)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from relightful.config import apply_overrides, from_dict, load_config, load_section
from relightful.data.pair_plan import PlanConfig, plan_pairs, plan_splits
from relightful.data.render_pairs import RenderConfig
from relightful.data.splits import assign_splits, rank_items, source_of, split_counts
from relightful.data.starter_data import StarterConfig, starter_map_ids
from relightful.lightstage.synthetic_stage import SyntheticStageConfig, synthetic_subject_ids

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
SPLITS = ("train", "val", "test")


def _profile_ids(profile: str, drop_source: str | None = None) -> tuple[list[str], list[str], PlanConfig]:
    """The subject and map ids a profile's starter-data and synthetic-stage write, and its plan config."""
    starter = load_config(StarterConfig, PARAMS, "starter_data", profile=profile)
    stage = load_config(SyntheticStageConfig, PARAMS, "synthetic_stage", profile=profile)
    plan = load_config(RenderConfig, PARAMS, "render_pairs", profile=profile).plan
    maps = [m for m in starter_map_ids(starter.sources, starter.n_skies, starter.n_train_skies)
            if source_of(m) != drop_source]
    return synthetic_subject_ids(stage.n_subjects), maps, plan


def _summary(plan) -> dict[str, dict]:
    out = {}
    for split in SPLITS:
        rows = plan[plan.split == split]
        out[split] = {"subjects": set(rows.subject_id), "maps": set(rows.env_a) | set(rows.env_b), "pairs": len(rows)}
    return out


# --- the tiny profile ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("drop_source", [None, "pmndrs", "blender"])
def test_tiny_profile_test_split_can_tell_methods_apart(drop_source):
    """≥ 3 test subjects, ≥ 6 test maps, ≥ 192 test pairs, ≥ 2 val subjects with ≥ 4 maps, nothing shared with
    train, and train keeps most of the data; also when a whole package source is missing (ingest rejected it)."""
    subjects, maps, config = _profile_ids("tiny", drop_source)
    assert len(subjects) == load_section(PARAMS, "synthetic_stage", "tiny")["n_subjects"]
    summary = _summary(plan_pairs(subjects, maps, config))
    test, val, train = summary["test"], summary["val"], summary["train"]
    assert len(test["subjects"]) >= 3 and len(test["maps"]) >= 6 and test["pairs"] >= 192
    assert len(val["subjects"]) >= 2 and len(val["maps"]) >= 4 and val["pairs"] > 0
    for held_out in (val, test):
        assert not held_out["subjects"] & train["subjects"] and not held_out["maps"] & train["maps"]
    assert not val["subjects"] & test["subjects"] and not val["maps"] & test["maps"]
    assert len(train["subjects"]) >= 12 and len(train["maps"]) >= 50 and train["pairs"] >= 6400
    assert train["pairs"] > 10 * (val["pairs"] + test["pairs"]) / 2  # training gets many pairs, evaluation enough


def test_tiny_profile_test_maps_mix_real_and_procedural_maps():
    subjects, maps, config = _profile_ids("tiny")
    _, map_split = plan_splits(subjects, maps, config)
    for split in ("val", "test"):
        sources = Counter(source_of(m) for m, s in map_split.items() if s == split)
        assert sources["sky"] >= 1 and sources["pmndrs"] + sources["blender"] >= 2, (split, sources)


def test_smoke_profile_plan_has_every_split():
    subjects, maps, config = _profile_ids("smoke")
    summary = _summary(plan_pairs(subjects, maps, config))
    assert all(summary[s]["pairs"] > 0 for s in SPLITS)
    assert sum(s["pairs"] for s in summary.values()) <= 128  # stays tiny


def test_gpu_profile_splits_clear_the_bar_by_far():
    subjects, maps, config = _profile_ids("gpu")
    subject_split, map_split = plan_splits(subjects, maps, config)  # (its 400,000 pairs are not planned here)
    n_subjects, n_maps = Counter(subject_split.values()), Counter(map_split.values())
    assert n_subjects["test"] >= 3 and n_maps["test"] >= 6 and n_subjects["val"] >= 2 and n_maps["val"] >= 4
    assert n_subjects["test"] * config.pairs_for("test") >= 500  # the paper's 500 test pairs
    assert n_subjects["train"] * config.pairs_for("train") >= 300_000


# --- split_counts and assign_splits --------------------------------------------------------------------------

FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}


def test_floors_lift_small_splits_and_fractions_rule_large_sets():
    assert split_counts(20, FRACTIONS, 1) == {"train": 16, "val": 2, "test": 2}
    assert split_counts(20, FRACTIONS, 1, {"val": 2, "test": 3}) == {"train": 15, "val": 2, "test": 3}
    assert split_counts(89, FRACTIONS, 2, {"val": 4, "test": 6}) == {"train": 71, "val": 9, "test": 9}
    assert split_counts(200, FRACTIONS, 1, {"test": 3}) == {"train": 160, "val": 20, "test": 20}
    assert split_counts(10, {"train": 1.0}, 1, {"test": 2}) == {"train": 8, "val": 0, "test": 2}  # floor adds a split
    assert split_counts(12, {"train": 0.5, "test": 0.5}, 1) == {"train": 6, "val": 0, "test": 6}


def test_split_counts_refuse_what_cannot_be_filled():
    with pytest.raises(ValueError, match="cannot fill"):
        split_counts(5, FRACTIONS, 1, {"val": 2, "test": 3})  # nothing left for train
    with pytest.raises(ValueError, match="for train"):
        split_counts(8, {"train": 0.1, "val": 0.45, "test": 0.45}, 1, {"train": 2})
    with pytest.raises(ValueError, match="unknown split"):
        split_counts(10, FRACTIONS, 1, {"tst": 3})
    with pytest.raises(ValueError, match=">= 0"):
        split_counts(10, FRACTIONS, 1, {"test": -1})
    with pytest.raises(ValueError, match="val and test"):
        split_counts(3, {"val": 0.5, "test": 0.5}, 1)


def test_assign_splits_is_disjoint_exact_and_stable_under_additions():
    ids = [f"s{i:02d}" for i in range(40)]
    before = assign_splits(ids, FRACTIONS, seed=0, min_counts={"val": 5, "test": 6})
    assert Counter(before.values()) == {"train": 29, "val": 5, "test": 6}
    assert before == assign_splits(list(reversed(ids)), FRACTIONS, seed=0, min_counts={"val": 5, "test": 6})
    for extra in ("new-a", "new-b", "zz"):
        after = assign_splits(ids + [extra], FRACTIONS, seed=0, min_counts={"val": 5, "test": 6})
        moved = [i for i in ids if after[i] != before[i]]
        assert len(moved) <= 2  # only items at a split boundary move
    assert assign_splits(ids, FRACTIONS, seed=1) != assign_splits(ids, FRACTIONS, seed=0)


def test_stratified_ranking_gives_every_split_each_group_in_proportion():
    ids = [f"a-{i}" for i in range(6)] + [f"b-{i}" for i in range(18)] + [f"c-{i}" for i in range(56)]
    sizes, worst_plain = {"a": 6, "b": 18, "c": 56}, 0
    for seed in range(20):
        split = assign_splits(ids, FRACTIONS, seed, min_counts={"test": 8}, group_of=source_of)
        test = Counter(source_of(i) for i, s in split.items() if s == "test")
        for group, size in sizes.items():
            assert abs(test[group] - 8 * size / 80) <= 1, (seed, test)
        plain = assign_splits(ids, FRACTIONS, seed, min_counts={"test": 8})
        plain_test = Counter(source_of(i) for i, s in plain.items() if s == "test")
        worst_plain = max(worst_plain, max(abs(plain_test[g] - 8 * n / 80) for g, n in sizes.items()))
    assert worst_plain > 1  # without strata, some seeds give a split far too few or too many of a group


def test_one_group_stratified_is_the_plain_hash_order():
    ids = [f"sky-{i:03d}" for i in range(30)]
    assert rank_items(ids, 4, group_of=source_of) == rank_items(ids, 4)


# --- PlanConfig ----------------------------------------------------------------------------------------------

SUBJECTS = [f"synth-{i:03d}" for i in range(10)]
MAPS = [f"pmndrs-{i}" for i in range(6)] + [f"sky-{i:03d}" for i in range(20)]


def test_pairs_per_subject_per_split():
    config = PlanConfig(pairs_per_subject={"train": 40, "val": 6, "test": 10}, pairs_per_shard=16,
                        min_subjects={"val": 2, "test": 3}, min_maps={"val": 4, "test": 6})
    plan = plan_pairs(SUBJECTS, MAPS, config)
    per_subject = plan.groupby(["split", "subject_id"]).size()
    assert set(per_subject["train"]) == {40} and set(per_subject["val"]) == {6} and set(per_subject["test"]) == {10}
    assert plan.groupby("split").subject_id.nunique().to_dict() == {"train": 5, "val": 2, "test": 3}
    maps = {s: set(plan.env_a[plan.split == s]) | set(plan.env_b[plan.split == s]) for s in SPLITS}
    assert len(maps["test"]) <= 6 and len(maps["val"]) <= 4 and not maps["train"] & (maps["val"] | maps["test"])
    assert plan.pair_id.is_unique and plan.groupby("shard").split.nunique().max() == 1
    # a train subject's first pairs are those of a smaller count: raising it only adds pairs
    small = plan_pairs(SUBJECTS, MAPS, PlanConfig(pairs_per_subject={"train": 8, "val": 6, "test": 10},
                                                   min_subjects={"val": 2, "test": 3}, min_maps={"val": 4, "test": 6}))
    cols = ["pair_id", "env_a", "env_b", "rotation_a_deg", "fov_deg"]
    assert small[cols].set_index("pair_id").equals(plan[cols].set_index("pair_id").loc[small.pair_id])


def test_an_int_count_still_means_every_split():
    plan = plan_pairs(SUBJECTS, MAPS, PlanConfig(pairs_per_subject=7))
    assert set(plan.groupby("subject_id").size()) == {7}
    assert plan_pairs(SUBJECTS, MAPS, PlanConfig(pairs_per_subject={"train": 7, "val": 7, "test": 7})).equals(plan)


def test_plan_config_from_params_and_pipeline_floats():
    raw = {"pairs_per_subject": {"train": 768, "val": 48, "test": 96}, "min_subjects": {"val": 2, "test": 3},
           "min_maps": {"val": 4, "test": 6}}
    config = from_dict(PlanConfig, raw)
    assert config.pairs_for("train") == 768 and config.pairs_for("test") == 96
    floats = from_dict(PlanConfig, {"pairs_per_subject": {"train": 768.0, "val": 48.0, "test": 96.0},
                                    "min_subjects": {"val": 2.0, "test": 3.0}, "min_maps": {"val": 4.0, "test": 6.0}})
    assert floats == config and isinstance(floats.pairs_per_subject["train"], int)
    assert from_dict(PlanConfig, {"pairs_per_subject": 64.0}).pairs_for("val") == 64
    over = from_dict(PlanConfig, apply_overrides(raw, ["pairs_per_subject.train=1024"]))
    assert over.pairs_for("train") == 1024 and over.pairs_for("val") == 48
    assert from_dict(PlanConfig, apply_overrides(raw, ["pairs_per_subject=128"])).pairs_for("test") == 128


@pytest.mark.parametrize("bad,match", [
    ({"pairs_per_subject": {"train": 10, "val": 2}}, "no count for split"),
    ({"pairs_per_subject": {"train": 10, "val": 2, "test": 2, "dev": 1}}, "unknown split"),
    ({"pairs_per_subject": {"train": 10.5, "val": 2, "test": 2}}, "whole number"),
    ({"pairs_per_subject": -1}, "whole number"),
    ({"min_subjects": {"test": 1.5}}, "whole number"),
    ({"min_maps": [4, 6]}, "mapping"),
])
def test_plan_config_rejects_bad_counts(bad, match):
    with pytest.raises(ValueError, match=match):
        from_dict(PlanConfig, bad)


def test_train_only_maps_train_and_move_no_held_out_map():
    """Maps of a `train_only_sources` source go to train, are used there, and leave val and test as they were."""
    extra = [f"sky_train-{i:03d}" for i in range(40)]
    floors = {"min_subjects": {"val": 2, "test": 3}, "min_maps": {"val": 4, "test": 6}}
    config = PlanConfig(pairs_per_subject={"train": 64, "val": 6, "test": 10}, train_only_sources=("sky_train",),
                        **floors)
    _, without = plan_splits(SUBJECTS, MAPS, config)
    _, with_extra = plan_splits(SUBJECTS, MAPS + extra, config)
    assert {m: s for m, s in with_extra.items() if m not in extra} == without
    assert all(with_extra[m] == "train" for m in extra)
    plan = plan_pairs(SUBJECTS, MAPS + extra, config)
    train_maps = set(plan.env_a[plan.split == "train"]) | set(plan.env_b[plan.split == "train"])
    assert len(train_maps & set(extra)) > 30  # training draws from them in proportion
    held_out = plan[plan.split != "train"]
    assert not (set(held_out.env_a) | set(held_out.env_b)) & set(extra)
    # without the option the same maps are split like any other source
    _, plain = plan_splits(SUBJECTS, MAPS + extra, PlanConfig(**floors))
    assert {plain[m] for m in extra} != {"train"}
    with pytest.raises(ValueError, match="list of map sources"):
        PlanConfig(train_only_sources="sky_train")


def test_tiny_profile_training_only_skies_keep_the_held_out_maps():
    """The tiny profile's `sky_train` maps all train; val and test keep the maps they hold without them."""
    subjects, maps, config = _profile_ids("tiny")
    assert "sky_train" in config.train_only_sources and sum(source_of(m) == "sky_train" for m in maps) >= 100
    _, map_split = plan_splits(subjects, maps, config)
    _, without = plan_splits(subjects, [m for m in maps if source_of(m) != "sky_train"], config)
    assert {m: s for m, s in map_split.items() if source_of(m) != "sky_train"} == without
    assert {s for m, s in map_split.items() if source_of(m) == "sky_train"} == {"train"}


def test_floors_that_cannot_be_met_fail_with_the_reason():
    with pytest.raises(ValueError, match="cannot fill"):
        plan_pairs(SUBJECTS[:4], MAPS, PlanConfig(min_subjects={"val": 2, "test": 3}))
    with pytest.raises(ValueError, match="cannot fill"):
        plan_pairs(SUBJECTS, MAPS[:8], PlanConfig(min_maps={"val": 4, "test": 6}))

"""Data expectations: good manifests pass; each kind of corruption fails and the report names the failing rows."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from relightful.data.expectations import MAX_IDS, envmap_suite, pair_suite, validate_envmaps, validate_pairs
from relightful.data.validate_data import validate_data
from relightful.data.validation_report import ValidationReport
from relightful.data.schema import ENVMAP_COLUMNS, PAIR_COLUMNS
from relightful.io import InputError

FOV = (30.0, 70.0)
MATTE = (0.05, 0.9)
# Maps never cross splits: train uses m0, m1, val m2, m3, test m4, m5.
SPLIT_MAPS = {"train": ("m0", "m1"), "val": ("m2", "m3"), "test": ("m4", "m5")}
SPLIT_SUBJECTS = {"train": ("s0", "s1", "s2"), "val": ("s3",), "test": ("s4",)}


def good_envmaps() -> pd.DataFrame:
    rows = []
    for i in range(6):
        rows.append({
            "map_id": f"m{i}", "source_file": f"hdri/m{i}.exr", "status": "ok", "reason": "", "sha256": f"{i:064x}",
            "height": 64, "width": 128, "integral_r": 3.1 + i, "integral_g": 3.0 + i, "integral_b": 2.9 + i,
            "mean_radiance": (3.0 + i) / (4 * math.pi), "max_radiance": 50.0 + i, "dynamic_range": 2.5,
            "negative_fraction": 0.001, "exposure": 0.5 + i,
        })
    rows.append({
        "map_id": "broken", "source_file": "hdri/broken.exr", "status": "rejected",
        "reason": "cannot decode image (truncated, corrupt or unsupported format)", "sha256": "0" * 64,
        "height": 0, "width": 0, "integral_r": float("nan"), "integral_g": float("nan"), "integral_b": float("nan"),
        "mean_radiance": float("nan"), "max_radiance": float("nan"), "dynamic_range": float("nan"),
        "negative_fraction": float("nan"), "exposure": float("nan"),
    })
    df = pd.DataFrame(rows)
    assert list(df.columns) == list(ENVMAP_COLUMNS)
    return df


def good_pairs() -> pd.DataFrame:
    rows = []
    index = 0
    for split, subjects in SPLIT_SUBJECTS.items():
        a, b = SPLIT_MAPS[split]
        for subject in subjects:
            for n, (env_a, env_b) in enumerate(((a, b), (b, a))):
                rows.append({
                    "pair_id": f"{split}-{subject}-{n:04d}", "shard": f"shard-{index // 4:05d}.safetensors",
                    "index": index % 4, "shard_fingerprint": f"{index // 4:064x}", "subject_id": subject, "env_a": env_a, "env_b": env_b,
                    "rotation_a_deg": 10.0 * index, "rotation_b_deg": 359.5 - index, "fov_deg": 40.0 + index,
                    "pitch_deg": -5.0, "exposure_a_stops": 0.5, "exposure_b_stops": -0.25, "split": split, "scale": 0.8, "matte_coverage": 0.3, "fg_mean_a": 0.2,
                    "fg_mean_b": 0.25, "fg_max": 1.0, "bg_mean": 0.4, "bg_max": 3.5,
                })
                index += 1
    df = pd.DataFrame(rows)
    assert list(df.columns) == list(PAIR_COLUMNS)
    return df


def write_shards(folder: Path, pairs: pd.DataFrame) -> None:
    """Header-only stand-ins for the shards of `pairs`: the fingerprint and pair ids validate-data compares."""
    import torch

    from relightful.io import save_tensors

    for shard, rows in pairs.groupby("shard"):
        rows = rows.sort_values("index")
        save_tensors(folder / shard, {"matte": torch.zeros(len(rows), 1, 1, 1)},
                     {"fingerprint": rows.shard_fingerprint.iloc[0], "pair_ids": ",".join(rows.pair_id)})


def run(tmp_path: Path, envmaps: pd.DataFrame | None, pairs: pd.DataFrame | None) -> tuple[ValidationReport, dict]:
    """Write the manifests as parquet (the pairs beside the shards of the good plan), validate them through the
    public entry point, read the report back."""
    env_path = pair_path = None
    if envmaps is not None:
        env_path = tmp_path / "envmaps" / "manifest.parquet"
        env_path.parent.mkdir(parents=True, exist_ok=True)
        envmaps.to_parquet(env_path, index=False)
    if pairs is not None:
        pair_path = tmp_path / "pairs" / "manifest.parquet"
        pair_path.parent.mkdir(parents=True, exist_ok=True)
        write_shards(pair_path.parent, good_pairs())
        pairs.to_parquet(pair_path, index=False)
    report_path = tmp_path / "reports" / "data_validation.json"
    report = validate_data(env_path, pair_path, report_path, FOV, MATTE)
    written = json.loads(report_path.read_text())
    assert written["success"] is report.success
    assert report_path.with_suffix(".md").read_text() == report.to_markdown()
    return report, written


def failing(report: ValidationReport, needle: str):
    """The failed checks whose description contains `needle`."""
    return [r for r in report.failures if needle in r.description]


# ---------------------------------------------------------------------------------------------------------------


def test_good_manifests_pass(tmp_path):
    report, written = run(tmp_path, good_envmaps(), good_pairs())
    assert report.success, report.to_markdown()
    assert written["failed"] == 0 and written["checks"] == len(report.results) > 60
    assert written["tables"]["pairs"]["rows"] == len(good_pairs())
    assert "PASSED" in report.to_markdown()


def test_each_manifest_alone(tmp_path):
    assert run(tmp_path, good_envmaps(), None)[0].success
    assert run(tmp_path, None, good_pairs())[0].success


def test_suites_are_cached():
    assert envmap_suite() is envmap_suite()
    assert pair_suite(FOV, MATTE) is pair_suite(list(FOV), list(MATTE))


def _nan_statistic(env, pairs):
    env.loc[env.map_id == "m1", "integral_g"] = float("nan")
    return ["integral_g is not null"], ["m1"]


def _inf_statistic(env, pairs):
    env.loc[env.map_id == "m2", "max_radiance"] = float("inf")
    return ["max_radiance is finite"], ["m2"]


def _three_to_one_map(env, pairs):
    env.loc[env.map_id == "m3", "width"] = 3 * 64
    return ["width == 2 * height"], ["m3"]


def _negative_integral(env, pairs):
    env.loc[env.map_id == "m0", "integral_r"] = -1.0
    return ["integral_r is finite, in [0, inf]"], ["m0"]


def _rejected_without_reason(env, pairs):
    env.loc[env.map_id == "broken", "reason"] = ""
    return ["reason is not blank (rejected maps)"], ["broken"]


def _unknown_status(env, pairs):
    env.loc[env.map_id == "broken", "status"] = "maybe"
    return ["status is 'ok' or 'rejected'"], ["broken"]


def _duplicate_map_id(env, pairs):
    env.loc[env.map_id == "m4", "map_id"] = "m5"
    return ["map_id is unique (ok maps)"], ["m5"]


def _duplicate_pair_id(env, pairs):
    pairs.loc[3, "pair_id"] = pairs.loc[2, "pair_id"]
    return ["pair_id is unique"], [pairs.loc[2, "pair_id"]]


def _subject_in_two_splits(env, pairs):
    pairs.loc[pairs.pair_id == "val-s3-0000", "subject_id"] = "s0"  # s0 is a train subject
    return ["each subject_id is in exactly one split"], ["val-s3-0000", "train-s0-0000", "train-s0-0001"]


def _map_in_train_and_test(env, pairs):
    pairs.loc[pairs.pair_id == "test-s4-0001", "env_b"] = "m0"  # m0 is a train map
    return ["each map (env_b) is in exactly one split", "each map (env_a) is in exactly one split"], [
        "test-s4-0001", "train-s0-0000",
    ]


def _fov_out_of_range(env, pairs):
    pairs.loc[pairs.pair_id == "train-s1-0001", "fov_deg"] = 95.0
    return ["fov_deg is finite, in [30, 70]"], ["train-s1-0001"]


def _matte_out_of_range(env, pairs):
    pairs.loc[pairs.pair_id == "test-s4-0000", "matte_coverage"] = 0.0
    return ["matte_coverage is finite"], ["test-s4-0000"]


def _rotation_360(env, pairs):
    pairs.loc[pairs.pair_id == "val-s3-0001", "rotation_a_deg"] = 360.0
    return ["rotation_a_deg is finite, in [0, 360)"], ["val-s3-0001"]


def _same_map_twice(env, pairs):
    pairs.loc[pairs.pair_id == "train-s2-0000", "env_b"] = pairs.loc[pairs.pair_id == "train-s2-0000", "env_a"]
    return ["env_a != env_b"], ["train-s2-0000"]


def _fg_not_normalised(env, pairs):
    pairs.loc[pairs.pair_id == "train-s0-0001", "fg_max"] = 1.5
    return ["fg_max is finite, in (0, 1.001]"], ["train-s0-0001"]


def _bad_scale(env, pairs):
    pairs.loc[pairs.pair_id == "train-s0-0000", "scale"] = 0.0
    return ["scale is finite, in (0, inf]"], ["train-s0-0000"]


def _nan_pair_statistic(env, pairs):
    pairs.loc[pairs.pair_id == "val-s3-0000", "bg_mean"] = float("nan")
    return ["bg_mean is not null"], ["val-s3-0000"]


def _shard_row_twice(env, pairs):
    pairs.loc[1, ["shard", "index"]] = pairs.loc[0, ["shard", "index"]].to_numpy()
    return ["(shard, index) is unique"], [pairs.loc[0, "pair_id"], pairs.loc[1, "pair_id"]]


def _pair_uses_rejected_map(env, pairs):
    pairs.loc[pairs.pair_id == "test-s4-0000", "env_a"] = "broken"
    return ["env_a is an ok map of the envmap manifest"], ["test-s4-0000"]


CORRUPTIONS: dict[str, Callable] = {f.__name__.lstrip("_"): f for f in (
    _nan_statistic, _inf_statistic, _three_to_one_map, _negative_integral, _rejected_without_reason,
    _unknown_status, _duplicate_map_id, _duplicate_pair_id, _subject_in_two_splits, _map_in_train_and_test,
    _fov_out_of_range, _matte_out_of_range, _rotation_360, _same_map_twice, _fg_not_normalised, _bad_scale,
    _nan_pair_statistic, _shard_row_twice, _pair_uses_rejected_map,
)}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_corruption_fails_and_names_rows(tmp_path, name):
    env, pairs = good_envmaps(), good_pairs()
    rules, ids = CORRUPTIONS[name](env, pairs)
    # validate the pair manifest only when the corruption touched it (saves time; pairs need the maps anyway)
    report, written = run(tmp_path, env, None if pairs.equals(good_pairs()) else pairs)
    assert not report.success and not written["success"]
    for rule in rules:
        hits = failing(report, rule)
        assert hits, f"expected a failure of {rule!r}, got:\n{report.to_markdown()}"
    named = {i for rule in rules for r in failing(report, rule) for i in r.failing_ids}
    assert set(ids) <= named, (ids, named)
    # the written report names them too, in JSON and in the markdown next to it
    json_ids = {i for f in written["failures"] for i in f["failing_ids"]}
    assert set(ids) <= json_ids
    markdown = (tmp_path / "reports" / "data_validation.md").read_text()
    assert "FAILED" in markdown and all(f"`{i}`" in markdown for i in ids)


def test_missing_column_fails(tmp_path):
    pairs = good_pairs().drop(columns=["bg_max"])
    report, written = run(tmp_path, good_envmaps(), pairs)
    assert not report.success
    (columns,) = failing(report, "all columns of the schema are present")
    assert columns.observed == "missing columns: bg_max"
    # the checks on that column report it as not evaluated rather than crashing
    assert any(r.error and "bg_max" in r.error for r in report.failures)
    assert "missing columns: bg_max" in report.to_markdown()
    assert "missing columns: bg_max" in json.dumps(written["failures"])


def test_missing_id_column_still_reports_rows(tmp_path):
    env = good_envmaps().drop(columns=["map_id"])
    env.loc[2, "width"] = 999
    report = validate_envmaps(env)
    assert not report.success
    assert failing(report, "all columns of the schema are present")[0].observed == "missing columns: map_id"
    (aspect,) = failing(report, "width == 2 * height")
    assert aspect.failing_ids == ("row 2",)


def test_no_ok_map_and_empty_pairs_fail():
    env = good_envmaps()
    env["status"], env["reason"] = "rejected", "no good"
    assert failing(validate_envmaps(env), "at least one map is ok")
    empty = good_pairs().iloc[:0]
    assert failing(validate_pairs(empty, FOV, MATTE), "at least one pair")


def test_failing_ids_are_capped_with_total_count():
    pairs = good_pairs()
    pairs = pd.concat([pairs] * 4, ignore_index=True)
    pairs["pair_id"] = [f"p{i}" for i in range(len(pairs))]
    pairs["shard"], pairs["index"] = "shard-00000.safetensors", range(len(pairs))
    pairs["fov_deg"] = 10.0  # every row out of range
    report = validate_pairs(pairs, FOV, MATTE)
    (fov,) = failing(report, "fov_deg is finite, in [30, 70]")
    assert fov.unexpected_count == len(pairs) > MAX_IDS
    assert len(fov.failing_ids) == MAX_IDS
    assert f"and {len(pairs) - MAX_IDS} more" in report.to_markdown()


def test_bad_ranges_are_rejected():
    with pytest.raises(ValueError, match="fov_range"):
        pair_suite((70.0, 30.0), MATTE)


def test_missing_or_unreadable_manifest_is_input_error(tmp_path):
    report_path = tmp_path / "report.json"
    missing = tmp_path / "nope.parquet"
    with pytest.raises(InputError, match="nope.parquet"):
        validate_data(missing, None, report_path, FOV, MATTE)
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"not a parquet file")
    with pytest.raises(InputError, match="garbage.parquet"):
        validate_data(None, garbage, report_path, FOV, MATTE)
    assert not report_path.exists()


def test_null_cells_are_failures_not_crashes():
    pairs = good_pairs()
    pairs.loc[0, "split"] = None
    pairs.loc[1, "subject_id"] = None
    report = validate_pairs(pairs, FOV, MATTE)
    assert failing(report, "split is not null")[0].failing_ids == (pairs.loc[0, "pair_id"],)
    assert failing(report, "subject_id is not null")[0].failing_ids == (pairs.loc[1, "pair_id"],)


def test_rejected_duplicate_stem_is_allowed():
    """ingest-hdr records a second file with an accepted map's stem as a rejected row under the same id."""
    env = good_envmaps()
    env.loc[env.map_id == "broken", ["map_id", "reason"]] = ["m5", "duplicate map id 'm5'"]
    env = pd.concat([env.iloc[-1:], env.iloc[:-1]], ignore_index=True)  # the rejected row first
    assert validate_envmaps(env).success
    assert validate_pairs(good_pairs(), FOV, MATTE, envmaps=env).success  # m5 still counts as ok

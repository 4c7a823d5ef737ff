"""Data expectations for the dataset manifests (DESIGN 3.4, 3.7), with great-expectations 1.x.

Two manifests are checked before any training:

- ``data/envmaps/manifest.parquet`` (``ENVMAP_COLUMNS``): one row per input map, ``ok`` or ``rejected``;
- ``data/pairs/manifest.parquet`` (``PAIR_COLUMNS``): one row per training pair.

Each check is one GE expectation, so the report says which rule failed and names the failing rows by their id
(``map_id`` / ``pair_id``). GE has no grouped checks, so rules about groups of rows (a subject or a map seen in more
than one split, the aspect ratio of a map) are computed in pandas as derived per-row columns first, and GE checks
those. Rules that only apply to some rows (``status == "ok"``) use GE row conditions.

great_expectations takes about 2 s to import and is chatty (progress bars, logs, deprecation warnings), so it is
imported lazily inside the functions and silenced; one ephemeral context is built per process and reused.

Here: the suites, the derived columns and the translation of GE's results into a report (validation_report.py);
the `validate-data` job that reads the manifests and writes the report is validate_data.py.
"""

from __future__ import annotations

import functools
import logging
import math
import numbers
import sys
import warnings
from collections.abc import Sequence
from typing import Any

import pandas as pd

from relightful.data.schema import ENVMAP_COLUMNS, PAIR_COLUMNS, SPLITS
from relightful.data.shards import SHARD_PATTERN, shard_file_status
from relightful.data.validation_report import ENVMAPS, PAIRS, CheckResult, ValidationReport

MAX_IDS = 20  # failing row ids kept per check (the total count is always kept)
_BIG = sys.float_info.max  # "finite" = between -_BIG and _BIG, plus not null (GE counts NaN as missing, not failing)

# Derived columns (computed in pandas before validation; not part of the manifests).
ASPECT = "aspect_ratio"  # width / height
SUBJECT_SPLITS = "subject_splits"  # "+"-joined sorted splits the row's subject appears in
ENV_A_SPLITS = "env_a_splits"  # splits the row's env_a map appears in (as env_a or env_b of any pair)
ENV_B_SPLITS = "env_b_splits"
ENV_A_STATUS = "env_a_status"  # status of env_a in the envmap manifest ("missing" when absent)
ENV_B_STATUS = "env_b_status"
SHARD_STATUS = "shard_status"  # "ok", or what is wrong with the row's shard file (data/shards.py shard_file_status)
# For a failing derived value, the manifest column that says which entity it is about.
_CONTEXT = {
    SUBJECT_SPLITS: "subject_id",
    ENV_A_SPLITS: "env_a",
    ENV_B_SPLITS: "env_b",
    ENV_A_STATUS: "env_a",
    ENV_B_STATUS: "env_b",
    SHARD_STATUS: "shard",
}


# --------------------------------------------------------------------------------------------------------------
# great_expectations plumbing (lazy, cached, quiet)


@functools.lru_cache(maxsize=1)
def _gx():
    """Import great_expectations once, quietly (its import alone takes about 2 s)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import great_expectations as gx
            import great_expectations.expectations as gxe
            from great_expectations.data_context.types.base import ProgressBarsConfig
            from great_expectations.expectations.row_conditions import Column
        except ImportError as err:  # an [inference]-only install
            raise ValueError(f"validating data needs great-expectations ({err}): pip install 'relightful[mlops]'") from None
    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    return gx, gxe, Column, ProgressBarsConfig


@functools.lru_cache(maxsize=1)
def _batch_definitions() -> dict[str, Any]:
    """One ephemeral context per process, with one in-memory dataframe asset per manifest."""
    gx, _, _, ProgressBarsConfig = _gx()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
        source = context.data_sources.add_pandas("relightful-manifests")
        return {
            table: source.add_dataframe_asset(table).add_batch_definition_whole_dataframe(f"{table}-whole")
            for table in (ENVMAPS, PAIRS)
        }


def _finite(gxe, column: str, lo: float = -_BIG, hi: float = _BIG, **kw) -> list:
    """`column` is not NaN and lies in [lo, hi] (inf fails any finite bound)."""
    lo_s = "-inf" if lo == -_BIG else f"{lo:g}"
    hi_s = "inf" if hi == _BIG else f"{hi:g}"
    open_lo, open_hi = kw.pop("strict_min", False), kw.pop("strict_max", False)
    rng = f"{'(' if open_lo else '['}{lo_s}, {hi_s}{')' if open_hi else ']'}"
    when = kw.pop("when", "")
    rule = "finite" if (lo == -_BIG and hi == _BIG) else f"finite, in {rng}"
    return [
        gxe.ExpectColumnValuesToNotBeNull(column=column, description=f"{column} is not null{when}", **kw),
        gxe.ExpectColumnValuesToBeBetween(
            column=column, min_value=lo, max_value=hi, strict_min=open_lo, strict_max=open_hi,
            description=f"{column} is {rule}{when}", **kw,
        ),
    ]


def _columns_exist(gxe, columns: Sequence[str]) -> list:
    """One check for all schema columns (extra columns are allowed); the report lists the missing ones."""
    return [gxe.ExpectTableColumnsToMatchSet(
        column_set=list(columns), exact_match=False, description="all columns of the schema are present"
    )]


@functools.lru_cache(maxsize=None)
def envmap_suite():
    """The rules of the env-map manifest: every row has an id and a status; ok maps are 2:1 with sane statistics;
    rejected ones say why."""
    gx, gxe, Column, _ = _gx()
    ok = {"row_condition": Column("status") == "ok", "when": " (ok maps)"}
    rejected = {"row_condition": Column("status") == "rejected"}
    exps = _columns_exist(gxe, list(ENVMAP_COLUMNS))
    exps += [
        gxe.ExpectColumnValuesToNotBeNull(column="map_id", description="map_id is not null"),
        # ingest-hdr logs a second file with the same stem as a rejected row under the same id, so only the
        # accepted ids (the ones pairs refer to) must be unique
        gxe.ExpectColumnValuesToBeUnique(
            column="map_id", row_condition=ok["row_condition"], description="map_id is unique (ok maps)"
        ),
        gxe.ExpectColumnValuesToNotBeNull(column="status", description="status is not null"),
        gxe.ExpectColumnValuesToBeInSet(
            column="status", value_set=["ok", "rejected"], description="status is 'ok' or 'rejected'"
        ),
        gxe.ExpectColumnDistinctValuesToContainSet(
            column="status", value_set=["ok"], description="at least one map is ok"
        ),
    ]
    exps += _finite(gxe, "height", 0, strict_min=True, **ok)
    exps += [  # a NaN ratio means width or height is missing
        gxe.ExpectColumnValuesToNotBeNull(
            column=ASPECT, row_condition=ok["row_condition"], description="width and height are given (ok maps)"
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column=ASPECT, min_value=2.0, max_value=2.0, row_condition=ok["row_condition"],
            description="width == 2 * height, i.e. aspect_ratio = width / height is 2 (ok maps)",
        ),
    ]
    for col in ("integral_r", "integral_g", "integral_b", "mean_radiance", "max_radiance"):
        exps += _finite(gxe, col, 0.0, **ok)
    exps += _finite(gxe, "dynamic_range", **ok)
    exps += _finite(gxe, "negative_fraction", 0.0, 1.0, **ok)
    exps += _finite(gxe, "exposure", 0.0, strict_min=True, **ok)
    exps += [
        gxe.ExpectColumnValuesToBeInSet(
            column="reason", value_set=[""], row_condition=ok["row_condition"], description="reason is empty (ok maps)"
        ),
        gxe.ExpectColumnValuesToNotBeNull(column="reason", description="reason is given (rejected maps)", **rejected),
        gxe.ExpectColumnValuesToMatchRegex(
            column="reason", regex=r"\S", description="reason is not blank (rejected maps)", **rejected
        ),
    ]
    return gx.ExpectationSuite(name="relightful-envmaps", expectations=exps)


def _range(name: str, rng: Sequence[float]) -> tuple[float, float]:
    lo, hi = (float(v) for v in rng)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
        raise ValueError(f"{name} must be a finite (lo, hi) with lo <= hi, got {tuple(rng)!r}")
    return lo, hi


@functools.lru_cache(maxsize=16)
def _pair_suite(fov_range: tuple[float, float], matte_range: tuple[float, float], check_map_refs: bool,
                check_shard_files: bool = False):
    gx, gxe, _, _ = _gx()
    exps = _columns_exist(gxe, list(PAIR_COLUMNS))
    exps.append(gxe.ExpectTableRowCountToBeBetween(min_value=1, description="the manifest has at least one pair"))
    for col in ("pair_id", "shard", "subject_id", "env_a", "env_b", "split"):
        exps.append(gxe.ExpectColumnValuesToNotBeNull(column=col, description=f"{col} is not null"))
    exps += [
        gxe.ExpectColumnValuesToBeUnique(column="pair_id", description="pair_id is unique"),
        gxe.ExpectCompoundColumnsToBeUnique(
            column_list=["shard", "index"], description="(shard, index) is unique: no two pairs share a shard row"
        ),
        gxe.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS), description=f"split is one of {SPLITS}"),
        gxe.ExpectSelectColumnValuesToBeUniqueWithinRecord(
            column_list=["env_a", "env_b"], description="env_a != env_b (input and target lighting differ)"
        ),
        # a shard name is read as a path: only the names the writer makes (relative, no folders, no '..')
        gxe.ExpectColumnValuesToMatchRegex(
            column="shard", regex=SHARD_PATTERN,
            description="shard is a file name of the pair folder, shard-NNNNN.safetensors (not a path)",
        ),
        gxe.ExpectColumnValuesToNotBeNull(column="shard_fingerprint", description="shard_fingerprint is not null"),
    ]
    exps += _finite(gxe, "index", 0)
    exps += _finite(gxe, "rotation_a_deg", 0.0, 360.0, strict_max=True)
    exps += _finite(gxe, "rotation_b_deg", 0.0, 360.0, strict_max=True)
    exps += _finite(gxe, "fov_deg", *fov_range)
    exps += _finite(gxe, "pitch_deg", -90.0, 90.0)
    exps += _finite(gxe, "exposure_a_stops")
    exps += _finite(gxe, "exposure_b_stops")
    exps += _finite(gxe, "matte_coverage", *matte_range)
    exps += _finite(gxe, "scale", 0.0, strict_min=True)
    for col in ("fg_mean_a", "fg_mean_b", "bg_mean", "bg_max"):
        exps += _finite(gxe, col, 0.0)
    exps += _finite(gxe, "fg_max", 0.0, 1.0 + 1e-3, strict_min=True)
    splits = list(SPLITS)
    exps += [
        gxe.ExpectColumnValuesToBeInSet(
            column=SUBJECT_SPLITS, value_set=splits, description="each subject_id is in exactly one split"
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column=ENV_A_SPLITS, value_set=splits, description="each map (env_a) is in exactly one split"
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column=ENV_B_SPLITS, value_set=splits, description="each map (env_b) is in exactly one split"
        ),
    ]
    if check_map_refs:
        exps += [
            gxe.ExpectColumnValuesToBeInSet(
                column=c, value_set=["ok"], description=f"{c[:5]} is an ok map of the envmap manifest"
            )
            for c in (ENV_A_STATUS, ENV_B_STATUS)
        ]
    if check_shard_files:
        exps.append(gxe.ExpectColumnValuesToBeInSet(
            column=SHARD_STATUS, value_set=["ok"],
            description="each shard resolves inside the pair folder and has the fingerprint and pairs the manifest "
                        "records",
        ))
    return gx.ExpectationSuite(name="relightful-pairs", expectations=exps)


def pair_suite(
    fov_range: Sequence[float], matte_coverage_range: Sequence[float], *, check_map_refs: bool = False,
    check_shard_files: bool = False,
):
    """The rules of the pair manifest. The FoV and matte-coverage ranges come from params.yaml (the render settings),
    so a render with other settings than the ones trained with is caught. With `check_map_refs`, every env_a/env_b
    must be an ok map of the envmap manifest (needs the derived columns that `validate_pairs(envmaps=...)` adds).
    With `check_shard_files`, each row's shard file must match the manifest (`validate_pairs(pairs_dir=...)`)."""
    return _pair_suite(_range("fov_range", fov_range), _range("matte_coverage_range", matte_coverage_range),
                       bool(check_map_refs), bool(check_shard_files))


# --------------------------------------------------------------------------------------------------------------
# Derived columns (pandas) and running a suite


def _joined_splits(keys: pd.Series, splits: pd.Series) -> pd.Series:
    """key -> "+"-joined sorted distinct splits it occurs in (e.g. "test+train")."""
    names = [("null" if pd.isna(v) else str(v)) for v in splits]  # a null split is reported, not crashed on
    frame = pd.DataFrame({"key": keys.to_numpy(), "split": names}).dropna(subset=["key"])
    return frame.groupby("key")["split"].agg(lambda s: "+".join(sorted(set(s))))


def _with_envmap_derived(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    if {"width", "height"} <= set(df.columns):
        w = pd.to_numeric(df["width"], errors="coerce").astype("float64")
        h = pd.to_numeric(df["height"], errors="coerce").astype("float64")
        out[ASPECT] = (w / h.where(h != 0)).astype("float64")
    return out


def _with_pair_derived(df: pd.DataFrame, envmaps: pd.DataFrame | None, pairs_dir=None) -> pd.DataFrame:
    out = df.copy()
    cols = set(df.columns)
    if pairs_dir is not None and {"shard", "pair_id", "index"} <= cols:
        status = shard_file_status(pairs_dir, df)  # one header read per shard, mapped onto its rows
        out[SHARD_STATUS] = df["shard"].map(lambda s: status.get(s, "missing")).astype(str)
    if {"subject_id", "split"} <= cols:
        out[SUBJECT_SPLITS] = df["subject_id"].map(_joined_splits(df["subject_id"], df["split"]))
    if {"env_a", "env_b", "split"} <= cols:
        maps = _joined_splits(pd.concat([df["env_a"], df["env_b"]]), pd.concat([df["split"], df["split"]]))
        out[ENV_A_SPLITS] = df["env_a"].map(maps)
        out[ENV_B_SPLITS] = df["env_b"].map(maps)
    if envmaps is not None and {"map_id", "status"} <= set(envmaps.columns):
        ranked = envmaps.assign(_ok=envmaps["status"] != "ok").sort_values("_ok", kind="stable")  # ok rows first
        status = ranked.drop_duplicates("map_id").set_index("map_id")["status"].astype(str)
        for src, dst in (("env_a", ENV_A_STATUS), ("env_b", ENV_B_STATUS)):
            if src in cols:
                out[dst] = df[src].map(status).fillna("missing").astype(str)
    return out


def _fmt(value: Any) -> str:
    """A cell value as short text: 3, 0.25, nan, inf, null, '' ."""
    if value is None or value is pd.NA:
        return "null"
    if isinstance(value, (bool, str)):
        return repr(value) if isinstance(value, str) and not value.strip() else str(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        return f"{float(value):.6g}"
    return str(value)


def _error(exception_info: Any) -> str | None:
    if not isinstance(exception_info, dict):
        return None
    infos = [exception_info] if "raised_exception" in exception_info else list(exception_info.values())
    messages = [i.get("exception_message") for i in infos if isinstance(i, dict) and i.get("raised_exception")]
    messages = [str(m).removeprefix("Error: ").strip() for m in messages if m]
    return "; ".join(dict.fromkeys(messages)) or None  # GE repeats one cause once per metric


def _to_check(table: str, id_col: str | None, er: Any) -> CheckResult:
    cfg = er.expectation_config
    kw = cfg.kwargs
    res = er.result or {}
    column = kw.get("column")
    multi = kw.get("column_list")
    col_label = column or (", ".join(multi) if multi else None)
    ids: list[str] = []
    values: list[str] = []
    idx_list = res.get("partial_unexpected_index_list") or []
    raw_values = res.get("partial_unexpected_list") or []
    for i, entry in enumerate(idx_list[:MAX_IDS]):
        if isinstance(entry, dict):
            ids.append(_fmt(entry.get(id_col)) if id_col else "?")
            if column and column in _CONTEXT and _CONTEXT[column] in entry:
                what = "splits" if column.endswith("_splits") else "status"
                values.append(f"{_CONTEXT[column]}={_fmt(entry[_CONTEXT[column]])} {what}={_fmt(entry.get(column))}")
            elif column and column != id_col:
                values.append(f"{column}={_fmt(entry.get(column))}")
            elif multi:
                values.append(", ".join(f"{c}={_fmt(entry.get(c))}" for c in multi if c != id_col))
            else:
                values.append("")
        else:  # no id column in the data: GE gives the row number
            ids.append(f"row {entry}")
            values.append(f"{col_label}={_fmt(raw_values[i])}" if i < len(raw_values) and column else "")
    observed = res.get("observed_value")
    missing = (res.get("details") or {}).get("mismatched", {}).get("missing")
    if missing:  # columns-to-match-set: name what is absent, not everything that is there
        observed = "missing columns: " + ", ".join(map(str, missing))
    elif observed is None and res.get("partial_missing_list"):
        observed = "missing values: " + ", ".join(map(str, res["partial_missing_list"]))
    return CheckResult(
        table=table,
        expectation=cfg.type,
        column=col_label,
        description=cfg.description or cfg.type,
        success=bool(er.success),
        unexpected_count=int(res.get("unexpected_count") or 0),
        failing_ids=tuple(ids),
        failing_values=tuple(values),
        observed=None if observed is None else observed if isinstance(observed, str) else _fmt(observed),
        error=_error(er.exception_info),
    )


def _run(table: str, suite: Any, df: pd.DataFrame, id_col: str, context_cols: Sequence[str] = ()) -> ValidationReport:
    """Validate `df` against `suite`; failing rows are named by `id_col` (and `context_cols`, when present)."""
    index_cols = [c for c in (id_col, *context_cols) if c in df.columns]
    result_format: dict[str, Any] = {
        "result_format": "SUMMARY",
        "partial_unexpected_count": MAX_IDS,
        "return_unexpected_index_query": False,
    }
    if index_cols:
        result_format["unexpected_index_column_names"] = index_cols
    batch_definition = _batch_definitions()[table]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batch = batch_definition.get_batch(batch_parameters={"dataframe": df})
        result = batch.validate(suite, result_format=result_format)
    order = {e.description: i for i, e in enumerate(suite.expectations)}
    checks = [_to_check(table, id_col if id_col in df.columns else None, er) for er in result.results]
    checks.sort(key=lambda c: order.get(c.description, len(order)))
    return ValidationReport(
        success=all(c.success for c in checks), results=checks, tables={table: {"rows": len(df), "source": None}}
    )


# --------------------------------------------------------------------------------------------------------------
# Public entry points


def validate_envmaps(df: pd.DataFrame) -> ValidationReport:
    """Check the env-map manifest (written by `relightful ingest-hdr`)."""
    return _run(ENVMAPS, envmap_suite(), _with_envmap_derived(df), "map_id")


def validate_pairs(
    df: pd.DataFrame,
    fov_range: Sequence[float],
    matte_coverage_range: Sequence[float],
    *,
    envmaps: pd.DataFrame | None = None,
    pairs_dir=None,
) -> ValidationReport:
    """Check the pair manifest (written by `relightful render-pairs`); with `envmaps`, also that every pair uses
    maps that the envmap manifest accepted; with `pairs_dir` (the folder of the manifest), also that each shard
    file lies inside it and carries the plan fingerprint and the pairs the manifest records."""
    suite = pair_suite(fov_range, matte_coverage_range, check_map_refs=envmaps is not None,
                       check_shard_files=pairs_dir is not None)
    derived = _with_pair_derived(df, envmaps, pairs_dir)
    return _run(PAIRS, suite, derived, "pair_id", context_cols=("subject_id", "env_a", "env_b", "shard"))


__all__ = ["MAX_IDS", "envmap_suite", "pair_suite", "validate_envmaps", "validate_pairs"]

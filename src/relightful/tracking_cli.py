"""MLflow on the command line: `relightful retrain-check`, `relightful promote`, and the tracking of
`relightful train` (`--track/--no-track`). Kept apart from cli.py (as the inference and augment commands are);
cli.py registers the commands with `add_tracking_parsers(sub)` and calls `start_tracking`/`track_training`
around training. Nothing here imports mlflow at module level: `relightful --help` starts without it."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import sys
from pathlib import Path

from relightful.io.errors import InputError

CANNOT_DECIDE = 3  # retrain-check's exit status when the data version or the registry could not be read


def _cli():
    """cli.py's option helpers and JobFailed, imported when used (cli.py imports this module)."""
    from relightful import cli

    return cli


# --- training --------------------------------------------------------------------------------------------------

def add_train_tracking_options(p: argparse.ArgumentParser) -> None:
    """`--lock` for `relightful train` (its `--track` comes with every job's options)."""
    p.add_argument("--lock", type=Path, default=Path("dvc.lock"),
                   help="dvc.lock to read the data version of --pairs from (tagged on the model version)")


def tracking_enabled(flag: bool | None) -> bool:
    if flag is False:
        return False
    installed = importlib.util.find_spec("mlflow") is not None
    if flag is True:  # asked for on the command line: wins over RELIGHTFUL_TRACKING
        if not installed:
            raise _cli().JobFailed("--track needs mlflow (pip install 'relightful[mlops]')")
        return True
    return installed and os.environ.get("RELIGHTFUL_TRACKING", "1") != "0"


def start_tracking(args: argparse.Namespace) -> bool:
    """Before training: whether to track, and when so, that the tracking store answers (a long run must not
    find out at its end that its results cannot be recorded)."""
    if not tracking_enabled(args.track):
        return False
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 logs (and creates a fresh sqlite store)
        return True
    from relightful.tracking.jobs import check_tracking
    from relightful.tracking.runs import TrackingError

    try:
        check_tracking()
    except TrackingError as err:
        raise _cli().JobFailed(f"{err} (train with --no-track or RELIGHTFUL_TRACKING=0 to skip tracking)") from None
    return True


def track_training(args: argparse.Namespace, result, out: Path, model_cfg, train_cfg) -> None:
    """After training: one MLflow run with params, losses, grids and metrics file; the model registered."""
    from relightful.tracking.jobs import log_training
    from relightful.tracking.runs import TrackingError

    model_config = result.model.config if result.model is not None else model_cfg
    params = {"init": str(args.init) if args.init else None, "out": str(out),
              "model": dataclasses.asdict(model_config), "train": dataclasses.asdict(train_cfg)}
    try:
        version = log_training(args.stage, out, result.history, params, args.pairs, args.lock, args.samples,
                               args.metrics)
    except TrackingError as err:
        raise _cli().JobFailed(f"{err}; the model folder {out} is written, but not tracked") from None
    print(f"train: registered {version.uri} (run {version.run_id})")


# --- data jobs ---------------------------------------------------------------------------------------------------

_OUTPUT_OPTIONS = ("out", "output", "report")  # where each data job writes (a folder, or validate-data's report)


def _job_outputs(args: argparse.Namespace) -> list[Path]:
    """The report files a data job wrote: `report.json` in its output folder, or its report files."""
    found = []
    for name in _OUTPUT_OPTIONS:
        path = getattr(args, name, None)
        if path is None:
            continue
        path = Path(path)
        if path.is_dir() and (path / "report.json").is_file():
            found.append(path / "report.json")
        elif path.is_file():
            found += [p for p in (path, path.with_suffix(".md")) if p.is_file()]
    return found


def track_job(args: argparse.Namespace) -> None:
    """After a data job succeeded: one MLflow run named after the command, with its config and paths as params,
    its reports as artifacts and their top-level numbers as metrics."""
    if not tracking_enabled(getattr(args, "track", None)):
        return
    from relightful.tracking.jobs import log_job
    from relightful.tracking.runs import TrackingError

    params: dict = {k: str(getattr(args, k)) for k in ("input", "output", "out", "subjects", "envmaps", "pairs",
                                                        "portraits", "backgrounds", "model", "hdri", "rig", "report")
                    if getattr(args, k, None) is not None}
    if hasattr(args, "job_config"):
        section, cfg = args.job_config
        params[section] = dataclasses.asdict(cfg)
    try:
        run_id = log_job(args.command, params, _job_outputs(args))
    except TrackingError as err:
        raise _cli().JobFailed(f"{err}; the job's outputs are written, but not tracked (--no-track or "
                               f"RELIGHTFUL_TRACKING=0 to skip tracking)") from None
    if not getattr(args, "quiet", False):
        print(f"{args.command}: logged to MLflow run {run_id}")


# --- retrain-check ---------------------------------------------------------------------------------------------

def cmd_retrain_check(args: argparse.Namespace) -> int:
    from relightful.tracking.lineage import data_version
    from relightful.tracking.retrain import champion_version, decide_retrain
    from relightful.tracking.models import default_tracking_uri
    from relightful.tracking.runs import TrackingError, make_client, tracking_errors

    uri = default_tracking_uri()
    try:
        current = data_version(args.pairs, args.lock)
        client = make_client(uri)
        with tracking_errors(uri, f"cannot read {args.model_name}@{args.alias}"):
            decision = decide_retrain(champion_version(client, args.model_name, args.alias), current)
    except (TrackingError, InputError) as err:  # neither answer: a scheduler must not read it as "up to date"
        print(f"relightful retrain-check: error: {err}", file=sys.stderr)
        return CANNOT_DECIDE
    print(decision.message(args.model_name, args.alias))
    return 0 if decision.retrain else 1


# --- promote ---------------------------------------------------------------------------------------------------

def cmd_promote(args: argparse.Namespace) -> None:
    from relightful.tracking.promotion import PromoteConfig, PromotionError, promote
    from relightful.tracking.runs import TrackingError

    cfg = _cli()._config(PromoteConfig, args, "promote")
    try:
        from relightful.evaluation import holdout_scores
    except ImportError as err:
        raise _cli().JobFailed(f"promote scores models with relightful.evaluation.holdout_scores ({err})") from None

    def score(folder: Path) -> dict[str, float]:
        return holdout_scores(folder, args.pairs, split=cfg.split, max_pairs=cfg.max_pairs, seed=cfg.seed)

    try:
        version = args.version if args.model is None else _version_of_folder(args.model, args.model_name)
        result = promote(args.model_name, score, cfg, version=version)
    except (TrackingError, PromotionError) as err:
        raise _cli().JobFailed(str(err)) from None
    print(result.message())
    if args.report is not None:
        import json

        from relightful.io import atomic_write_text

        atomic_write_text(args.report, json.dumps(dataclasses.asdict(result), indent=2, sort_keys=True))


def _version_of_folder(model_dir: Path, name: str) -> str:
    """The version of `name` registered from the model folder `model_dir` (matched by the digest of its files)."""
    from relightful.tracking.registry import find_version_of_folder
    from relightful.tracking.models import default_tracking_uri
    from relightful.tracking.runs import make_client, tracking_errors

    if not Path(model_dir).is_dir():
        raise InputError(model_dir, "model folder not found")
    uri = default_tracking_uri()
    with tracking_errors(uri, f"looking up the version of {name} registered from {model_dir}"):
        version = find_version_of_folder(make_client(uri), model_dir, [name])
    if version is None:
        raise _cli().JobFailed(f"{model_dir}: no version of {name} was registered from this folder (train it with "
                               f"tracking on, or give --version)")
    return str(version.version)


def add_tracking_parsers(subparsers) -> None:
    """Add `retrain-check` and `promote` to `relightful`'s sub-parsers."""
    p = subparsers.add_parser(
        "retrain-check", help="exit 0 when the model should be retrained (data changed, or no champion), 1 if not",
        description="Compares the data_version tag of MODEL_NAME@ALIAS with the current data version of --pairs "
                    "(its dvc.lock record, or the md5 of its manifest) and prints both. Exit 0: retrain (the data "
                    "changed, or there is no champion); 1: up to date; 2: usage error; 3: the data version or the "
                    "registry could not be read (message on stderr).")
    p.add_argument("--pairs", type=Path, default=Path("data/natural_pairs"),
                   help="the training data of the model (stage 3: data/natural_pairs)")
    p.add_argument("--lock", type=Path, default=Path("dvc.lock"), help="dvc.lock recording the data version")
    p.add_argument("--model-name", default="relightful-stage3")
    p.add_argument("--alias", default="champion")
    p.set_defaults(func=cmd_retrain_check)

    p = subparsers.add_parser(
        "promote", help="move the champion alias to a candidate version only if it wins on held-out pairs",
        description="Scores the candidate version (--version or --model; default: the latest) and the champion of "
                    "MODEL_NAME on the same held-out pairs (params.yaml `promote`: metric, margin, split, max_pairs, "
                    "seed). The candidate "
                    "becomes champion when its metric beats the champion's by more than the margin (or when there "
                    "is no champion), challenger otherwise; the decision and both metric sets are tagged on the "
                    "version (promotion.*). Re-running changes nothing.")
    p.add_argument("--model-name", default="relightful-stage3")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--version", default=None, help="the candidate version (default: the latest version)")
    which.add_argument("--model", type=Path, default=None,
                       help="the candidate as a model folder: the version registered from it (by its files' digest)")
    p.add_argument("--pairs", type=Path, default=Path("data/pairs"),
                   help="pairs whose held-out split both models are scored on")
    p.add_argument("--report", type=Path, default=None, help="also write the decision and both metric sets here (JSON)")
    _cli()._add_params(p)
    p.set_defaults(func=cmd_promote)


__all__ = ["add_tracking_parsers", "add_train_tracking_options", "cmd_promote", "cmd_retrain_check",
           "start_tracking", "track_training", "tracking_enabled"]

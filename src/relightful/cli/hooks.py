"""The MLflow tracking done around jobs: whether to track (`--track/--no-track`, RELIGHTFUL_TRACKING), the check
before a long job that the store answers, and the run each job logs after it succeeded (training, evaluation, the
data jobs). The `promote` and `retrain-check` commands are in registry.py. Nothing here imports mlflow at module
level: `relightful --help` starts without it."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
from pathlib import Path

from relightful.cli.common import JobFailed

# Jobs tracked here, after they succeed, as one MLflow run each (config, output reports, their numbers); training
# and evaluation log richer runs of their own.
DATA_JOBS = ("starter-data", "synthetic-stage", "ingest-hdr", "render-pairs", "validate-data", "natural-starter",
             "augment")


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
            raise JobFailed("--track needs mlflow (pip install 'relightful[mlops]')")
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
        raise JobFailed(f"{err} (train with --no-track or RELIGHTFUL_TRACKING=0 to skip tracking)") from None
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
        raise JobFailed(f"{err}; the model folder {out} is written, but not tracked") from None
    print(f"train: registered {version.uri} (run {version.run_id})")


def track_evaluation(model, metrics: dict, out: Path) -> None:
    """After evaluation: its metrics and report logged, on the model's registered version when there is one."""
    from relightful.tracking.jobs import log_evaluation
    from relightful.tracking.runs import TrackingError

    try:
        run_id, version = log_evaluation(model, metrics, out)
    except TrackingError as err:
        raise JobFailed(f"{err}; the report in {out} is written, but not tracked") from None
    print(f"evaluate: logged to run {run_id}" + (f" of {version}" if version else " (the model is not registered)"))


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
        raise JobFailed(f"{err}; the job's outputs are written, but not tracked (--no-track or "
                        f"RELIGHTFUL_TRACKING=0 to skip tracking)") from None
    if not getattr(args, "quiet", False):
        print(f"{args.command}: logged to MLflow run {run_id}")


__all__ = ["DATA_JOBS", "add_train_tracking_options", "start_tracking", "track_evaluation", "track_job",
           "track_training", "tracking_enabled"]

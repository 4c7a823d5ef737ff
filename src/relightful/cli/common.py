"""What every command module of `relightful` shares: the job error, the params options and config loading.

A leaf: it imports no other command module, so each of them can import it (DESIGN 2).
"""

from __future__ import annotations

import argparse
from pathlib import Path


class JobFailed(RuntimeError):
    """A job ran but could not do all of its work (the message says what)."""


def add_params(p: argparse.ArgumentParser) -> None:
    """The options of every job that reads a section of params.yaml."""
    p.add_argument("--params", type=Path, default=None, help="params.yaml to read this job's section from")
    p.add_argument("--profile", default=None, help="profile of params.yaml to use (default: its 'profile' key)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set plan.seed=3 (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--track", action=argparse.BooleanOptionalAction, default=None,
                   help="log this job as an MLflow run (default: on when mlflow is installed and RELIGHTFUL_TRACKING "
                        "is not 0; URI from MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)")


def positive_int(text: str) -> int:
    """argparse type: an integer ≥ 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be ≥ 1, got {value}")
    return value


def add_model_options(p: argparse.ArgumentParser) -> None:
    """`--model` and `--device`, for the commands that run a trained model."""
    p.add_argument("--model", required=True, metavar="MODEL",
                   help="model folder, or an MLflow URI such as models:/relightful-stage3@champion")
    p.add_argument("--device", default="auto", help="torch device: auto (CUDA when available), cpu, cuda, cuda:1 ...")


def job_config(cls, args: argparse.Namespace, section: str):
    """The job's `section` of params.yaml (with `--set` overrides) as a `cls`; kept on `args` for its MLflow run."""
    from relightful.config import load_config

    cfg = load_config(cls, args.params, section, args.overrides, args.profile)
    args.job_config = (section, cfg)  # what the job ran with, for its MLflow run
    return cfg


__all__ = ["JobFailed", "add_model_options", "add_params", "job_config", "positive_int"]

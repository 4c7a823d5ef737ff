"""`relightful retrain-check` and `relightful promote`: the model registry on the command line (the tracking of
each job's run is in hooks.py). Nothing here imports mlflow at module level: `relightful --help` starts without it."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from relightful.cli.common import JobFailed, add_params, job_config
from relightful.io.errors import InputError

CANNOT_DECIDE = 3  # retrain-check's exit status when the data version or the registry could not be read


# --- retrain-check ---------------------------------------------------------------------------------------------

def cmd_retrain_check(args: argparse.Namespace) -> int:
    from relightful.tracking.lineage import data_version
    from relightful.tracking.model_uri import default_tracking_uri
    from relightful.tracking.retrain import champion_version, decide_retrain
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

    cfg = job_config(PromoteConfig, args, "promote")
    try:
        from relightful.evaluation import holdout_scores
    except ImportError as err:
        raise JobFailed(f"promote scores models with relightful.evaluation.holdout_scores ({err})") from None

    def score(folder: Path) -> dict[str, float]:
        return holdout_scores(folder, args.pairs, split=cfg.split, max_pairs=cfg.max_pairs, seed=cfg.seed)

    try:
        version = args.version if args.model is None else _version_of_folder(args.model, args.model_name)
        result = promote(args.model_name, score, cfg, version=version)
    except (TrackingError, PromotionError) as err:
        raise JobFailed(str(err)) from None
    print(result.message())
    if args.report is not None:
        import json

        from relightful.io import atomic_write_text

        atomic_write_text(args.report, json.dumps(dataclasses.asdict(result), indent=2, sort_keys=True))


def _version_of_folder(model_dir: Path, name: str) -> str:
    """The version of `name` registered from the model folder `model_dir` (matched by the digest of its files)."""
    from relightful.tracking.model_uri import default_tracking_uri
    from relightful.tracking.registry import find_version_of_folder
    from relightful.tracking.runs import make_client, tracking_errors

    if not Path(model_dir).is_dir():
        raise InputError(model_dir, "model folder not found")
    uri = default_tracking_uri()
    with tracking_errors(uri, f"looking up the version of {name} registered from {model_dir}"):
        version = find_version_of_folder(make_client(uri), model_dir, [name])
    if version is None:
        raise JobFailed(f"{model_dir}: no version of {name} was registered from this folder (train it with "
                        f"tracking on, or give --version)")
    return str(version.version)


def add_registry_parsers(subparsers) -> None:
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
    add_params(p)
    p.set_defaults(func=cmd_promote)


__all__ = ["CANNOT_DECIDE", "add_registry_parsers", "cmd_promote", "cmd_retrain_check"]

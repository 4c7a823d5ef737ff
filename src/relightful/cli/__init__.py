"""The `relightful` command: every job of the workflow is a sub-command.

Each sub-command reads the block of its name in `params.yaml` (`--params`, active profile or `--profile`), accepts
`--set key=value` overrides, and exits 0 only on success: 1 when input was rejected or a job failed, 2 on usage
errors.

One module per group of jobs (`data`, `training`, `inference`, `serving`, `augment`, `registry`, `evaluation`), each
importing the leaf `common` (the job error, the params and model options, config loading); `hooks` is the MLflow
tracking around jobs.
"""

from __future__ import annotations

import argparse
import logging
import sys

from relightful.cli.augment import add_augment_parsers
from relightful.cli.common import JobFailed
from relightful.cli.data import add_data_parsers
from relightful.cli.evaluation import add_evaluate_parser
from relightful.cli.hooks import DATA_JOBS, track_job
from relightful.cli.inference import add_inference_parsers
from relightful.cli.registry import add_registry_parsers
from relightful.cli.serving import add_serving_parser
from relightful.cli.training import add_train_parser
from relightful.io.errors import InputError

log = logging.getLogger("relightful")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("relightful")
    except PackageNotFoundError:  # run from a source tree that was not installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relightful", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_data_parsers(sub)
    add_train_parser(sub)
    add_inference_parsers(sub)
    add_serving_parser(sub)
    add_augment_parsers(sub)
    add_registry_parsers(sub)
    add_evaluate_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        status = args.func(args)  # None, or the exit status of a command that answers a question (retrain-check)
        if args.command in DATA_JOBS:
            track_job(args)
    except (InputError, JobFailed, ValueError) as err:
        print(f"relightful {args.command}: error: {err}", file=sys.stderr)
        return 1
    return status if isinstance(status, int) else 0


__all__ = ["JobFailed", "build_parser", "main"]

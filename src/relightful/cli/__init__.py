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
from relightful.config import ConfigError, config_error_source
from relightful.io.errors import InputError, redact
from relightful.tracking.http import http_retry_bounds
from relightful.tracking.runs import TrackingError

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


def install_log_redaction() -> None:
    """Mask credentials (`relightful.io.errors.redact`) in every log record of the process, whichever logger and
    handler it goes to: libraries (MLflow, urllib3, boto) log the URIs they use, and MLflow's own logger has a
    handler of its own that a root-handler filter would miss. Done once, at record creation (only records that pass
    their logger's level are created)."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "redacts", False):
        return

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a malformed call: left to logging's own error report
            return record
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return record

    factory.redacts = True
    logging.setLogRecordFactory(factory)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "profile", None) is not None and getattr(args, "params", None) is None:
        # without a params file there is no profile to choose: the job would silently run on the code's defaults
        parser.error(f"{args.command}: --profile {args.profile} chooses a profile of a params file: "
                     "give --params (e.g. --params params.yaml)")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    install_log_redaction()
    try:
        with http_retry_bounds():  # an unreachable MLflow server fails in seconds, not minutes (tracking.http)
            status = args.func(args)  # None, or the exit status of a command that answers a question (retrain-check)
            if args.command in DATA_JOBS:
                track_job(args)
    except ConfigError as err:  # a config built outside load_config (train's model and stage blocks)
        where = config_error_source(err, getattr(args, "params", None), getattr(args, "overrides", None))
        print(f"relightful {args.command}: error: {redact(InputError(where, str(err)))}", file=sys.stderr)
        return 1
    except (InputError, JobFailed, ValueError, TrackingError) as err:
        print(f"relightful {args.command}: error: {redact(err)}", file=sys.stderr)
        return 1
    return status if isinstance(status, int) else 0


__all__ = ["JobFailed", "build_parser", "install_log_redaction", "main"]

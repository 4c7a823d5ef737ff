"""The `relightful` command: every job of the workflow is a sub-command.

Each sub-command reads its section of `params.yaml` (`--params`, active profile or `--profile`), accepts
`--set key=value` overrides, and exits 0 only on success: 1 when input was rejected or a job failed, 2 on usage
errors.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from relightful.augment_cli import add_augment_parsers
from relightful.evaluation_cli import add_evaluate_parser
from relightful.inference_cli import add_harmonize_parser
from relightful.tracking_cli import add_tracking_parsers, add_train_tracking_options
from relightful.io.errors import InputError

log = logging.getLogger("relightful")


# Jobs tracked here, after they succeed, as one MLflow run each (config, output reports, their numbers); training
# and evaluation log richer runs of their own.
DATA_JOBS = ("starter-data", "synthetic-stage", "ingest-hdr", "render-pairs", "validate-data", "natural-starter",
             "augment")


class JobFailed(RuntimeError):
    """A job ran but could not do all of its work (the message says what)."""


def _add_params(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", type=Path, default=None, help="params.yaml to read this job's section from")
    p.add_argument("--profile", default=None, help="profile of params.yaml to use (default: its 'profile' key)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set plan.seed=3 (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--track", action=argparse.BooleanOptionalAction, default=None,
                   help="log this job as an MLflow run (default: on when mlflow is installed and RELIGHTFUL_TRACKING "
                        "is not 0; URI from MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)")


def _config(cls, args, section: str):
    from relightful.config import load_config

    cfg = load_config(cls, args.params, section, args.overrides, args.profile)
    args.job_config = (section, cfg)  # what the job ran with, for its MLflow run
    return cfg


# --- jobs --------------------------------------------------------------------------------------------------------

def cmd_starter_data(args) -> None:
    from relightful.data.starter import StarterConfig, StarterDataError, build_starter_set

    cfg = _config(StarterConfig, args, "starter")
    try:
        entries = build_starter_set(args.out, cfg.sources, cfg.n_skies, cfg.sky_height, cfg.seed,
                                    progress=not args.quiet)
    except StarterDataError as err:
        raise JobFailed(str(err)) from None
    print(f"starter-data: {len(entries)} maps -> {args.out}")


def cmd_synthetic_stage(args) -> None:
    from relightful.lightstage.synthetic import SyntheticStageConfig, build_synthetic_stage

    cfg = _config(SyntheticStageConfig, args, "lightstage")
    ids = build_synthetic_stage(args.out, cfg, progress=not args.quiet)
    print(f"synthetic-stage: {len(ids)} subjects, {cfg.n_leds} LEDs -> {args.out}")


def cmd_ingest_hdr(args) -> None:
    from relightful.data.envmaps import IngestConfig, ingest_hdr
    from relightful.lighting import LedRig

    cfg = _config(IngestConfig, args, "envmaps")
    manifest = ingest_hdr(args.input, args.output, LedRig.from_json(args.rig), cfg, progress=not args.quiet)
    rejected = manifest[manifest.status == "rejected"]
    print(f"ingest-hdr: {len(manifest) - len(rejected)} maps accepted, {len(rejected)} rejected -> {args.output}")
    for f, r in zip(rejected.source_file, rejected.reason):
        print(f"  rejected {f}: {r}", file=sys.stderr)
    if len(rejected) > args.max_rejected:
        raise JobFailed(f"{len(rejected)} map(s) rejected, more than --max-rejected {args.max_rejected}")


def cmd_render_pairs(args) -> None:
    from relightful.data.pairs import RenderConfig, merge_parts, render_pairs
    from relightful.lighting import LedRig

    cfg = _config(RenderConfig, args, "render")
    rig = LedRig.from_json(args.rig)
    if args.merge:
        manifest = merge_parts(args.subjects, rig, args.envmaps, args.out, cfg, args.num_shards)
        print(f"render-pairs: merged {args.num_shards} parts, {len(manifest)} pairs -> {args.out}")
        return
    manifest = render_pairs(args.subjects, rig, args.envmaps, args.out, cfg, args.shard_index, args.num_shards,
                            progress=not args.quiet)
    report = Path(args.out) / ("report.json" if args.num_shards == 1 else
                               f"report.part-{args.shard_index:05d}-of-{args.num_shards:05d}.json")
    failed = json.loads(report.read_text())["failed_subjects"]
    print(f"render-pairs: {len(manifest)} pairs in {manifest.shard.nunique()} shards -> {args.out}")
    for f in failed:
        print(f"  skipped subject {f['subject_id']}: {f['error']}", file=sys.stderr)
    if len(failed) > args.max_rejected:
        raise JobFailed(f"{len(failed)} subject(s) could not be loaded, more than --max-rejected {args.max_rejected}")


def cmd_validate_data(args) -> None:
    from relightful.data.expectations import ValidationConfig, validate_data
    from relightful.data.pairs import RenderConfig

    from relightful.config import load_config

    cfg = _config(ValidationConfig, args, "validate")
    render = load_config(RenderConfig, args.params, "render", profile=args.profile) if args.params else RenderConfig()
    report = validate_data(args.envmaps, args.pairs, args.report, render.plan.fov_range, cfg.matte_coverage_range)
    print(report.to_markdown())
    if not report.success:
        raise JobFailed(f"data expectations failed; report written to {args.report}")


def cmd_train(args) -> None:
    from relightful.config import apply_overrides, deep_merge, from_dict, load_section
    from relightful.models import ModelConfig
    from relightful.training import TrainConfig, train_stage
    from relightful.training.loop import write_history
    from relightful.tracking_cli import start_tracking, track_training

    def section(name: str) -> dict:
        return load_section(args.params, name, args.profile) if args.params else {}

    model_over = [o[len("model."):] for o in args.overrides if o.startswith("model.")]
    train_over = [o for o in args.overrides if not o.startswith("model.")]
    model_cfg = from_dict(ModelConfig, apply_overrides(section("model"), model_over), "model")
    stage_values = deep_merge(section("train"), section(f"stage{args.stage}") if args.params else {})
    train_cfg = from_dict(TrainConfig, apply_overrides(stage_values, train_over), f"stage{args.stage}")
    if args.stage > 1 and args.init is None:
        raise JobFailed(f"stage {args.stage} starts from the previous stage's model: give --init models/stage{args.stage - 1}")
    out = args.out or Path(f"models/stage{args.stage}")
    run_dir = args.run_dir or Path(f"runs/stage{args.stage}")
    tracking = start_tracking(args)  # fails fast when the MLflow store cannot be reached
    result = train_stage(args.stage, args.pairs, out, run_dir, train_cfg, model_cfg, args.init, args.cache,
                         progress=not args.quiet, samples_dir=args.samples)
    if result.model_dir is not None:
        if args.metrics:
            write_history(args.metrics, result.history)
        last = result.history[-1] if result.history else {}
        print(f"train: stage {args.stage}, {result.steps} steps, final loss {last.get('loss', float('nan')):.4f}, "
              f"{result.samples_per_s:.1f} samples/s -> {out}")
        if tracking:
            track_training(args, result, out, model_cfg, train_cfg)


# --- parser ------------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relightful", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("starter-data", help="write the CC0 HDR maps and procedural skies of the starter set")
    p.add_argument("--out", type=Path, default=Path("data/raw/hdri"))
    _add_params(p)
    p.set_defaults(func=cmd_starter_data)

    p = sub.add_parser("synthetic-stage", help="render procedural subjects into OLAT sets and write the rig")
    p.add_argument("--out", type=Path, default=Path("data/raw/lightstage"))
    _add_params(p)
    p.set_defaults(func=cmd_synthetic_stage)

    p = sub.add_parser("ingest-hdr", help="validate and normalise HDR maps, compute their LED weights")
    p.add_argument("--input", type=Path, default=Path("data/raw/hdri"))
    p.add_argument("--output", type=Path, default=Path("data/envmaps"))
    p.add_argument("--rig", type=Path, default=Path("data/raw/lightstage/rig.json"))
    p.add_argument("--max-rejected", type=int, default=0, help="rejected files allowed before exiting non-zero")
    _add_params(p)
    p.set_defaults(func=cmd_ingest_hdr)

    p = sub.add_parser("render-pairs", help="render training tuples into safetensors shards + manifest")
    p.add_argument("--subjects", type=Path, default=Path("data/raw/lightstage/subjects"))
    p.add_argument("--rig", type=Path, default=Path("data/raw/lightstage/rig.json"))
    p.add_argument("--envmaps", type=Path, default=Path("data/envmaps"))
    p.add_argument("--out", type=Path, default=Path("data/pairs"))
    p.add_argument("--shard-index", type=int, default=0, help="this worker's index (0-based)")
    p.add_argument("--num-shards", type=int, default=1, help="number of workers the shards are spread over")
    p.add_argument("--merge", action="store_true", help="combine the parts of --num-shards finished workers")
    p.add_argument("--max-rejected", type=int, default=0, help="unloadable subjects allowed before exiting non-zero")
    _add_params(p)
    p.set_defaults(func=cmd_render_pairs)

    p = sub.add_parser("validate-data", help="check the map and pair manifests against the data expectations")
    p.add_argument("--envmaps", type=Path, default=Path("data/envmaps/manifest.parquet"))
    p.add_argument("--pairs", type=Path, default=Path("data/pairs/manifest.parquet"))
    p.add_argument("--report", type=Path, default=Path("reports/data_validation.json"))
    _add_params(p)
    p.set_defaults(func=cmd_validate_data)

    p = sub.add_parser("train", help="train one stage of the model with DeepSpeed (launch with torchrun for more ranks)")
    p.add_argument("--stage", type=int, choices=(1, 2, 3), required=True)
    p.add_argument("--pairs", type=Path, default=Path("data/pairs"), help="pair shards + manifest to train on")
    p.add_argument("--init", type=Path, default=None, help="model folder to start from (stages 2-3: the previous stage)")
    p.add_argument("--out", type=Path, default=None, help="model folder to write (default models/stageN)")
    p.add_argument("--run-dir", type=Path, default=None, help="checkpoints, for resuming (default runs/stageN)")
    p.add_argument("--cache", type=Path, default=None, help="latent cache folder (default: cache/latents beside --pairs)")
    p.add_argument("--metrics", type=Path, default=None, help="write the loss history (JSON list) here")
    p.add_argument("--samples", type=Path, default=None,
                   help="write validation grids (composite | model | target) here every validate_every steps")
    add_train_tracking_options(p)
    _add_params(p)
    p.set_defaults(func=cmd_train)

    add_harmonize_parser(sub)
    add_augment_parsers(sub)
    add_tracking_parsers(sub)
    add_evaluate_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        status = args.func(args)  # None, or the exit status of a command that answers a question (retrain-check)
        if args.command in DATA_JOBS:
            from relightful.tracking_cli import track_job

            track_job(args)
    except (InputError, JobFailed, ValueError) as err:
        print(f"relightful {args.command}: error: {err}", file=sys.stderr)
        return 1
    return status if isinstance(status, int) else 0


if __name__ == "__main__":
    sys.exit(main())

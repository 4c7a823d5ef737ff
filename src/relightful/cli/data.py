"""The data jobs of `relightful`: `starter-data`, `synthetic-stage`, `ingest-hdr`, `render-pairs`,
`validate-data`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from relightful.cli.common import JobFailed, add_params, job_config
from relightful.data.shards import MANIFEST


def cmd_starter_data(args) -> None:
    from relightful.data.starter_data import StarterConfig, StarterDataError, build_starter_set

    cfg = job_config(StarterConfig, args, "starter_data")
    try:
        entries = build_starter_set(args.out, cfg.sources, cfg.n_skies, cfg.sky_height, cfg.seed,
                                    progress=not args.quiet, n_train_skies=cfg.n_train_skies)
    except StarterDataError as err:
        raise JobFailed(str(err)) from None
    print(f"starter-data: {len(entries)} maps -> {args.out}")


def cmd_synthetic_stage(args) -> None:
    from relightful.lightstage.synthetic_stage import SyntheticStageConfig, build_synthetic_stage

    cfg = job_config(SyntheticStageConfig, args, "synthetic_stage")
    ids = build_synthetic_stage(args.out, cfg, progress=not args.quiet)
    print(f"synthetic-stage: {len(ids)} subjects, {cfg.n_leds} LEDs -> {args.out}")


def cmd_ingest_hdr(args) -> None:
    from relightful.data.ingest_hdr import IngestConfig, ingest_hdr
    from relightful.lighting import LedRig

    cfg = job_config(IngestConfig, args, "ingest_hdr")
    manifest = ingest_hdr(args.input, args.output, LedRig.from_json(args.rig), cfg, progress=not args.quiet)
    rejected = manifest[manifest.status == "rejected"]
    print(f"ingest-hdr: {len(manifest) - len(rejected)} maps accepted, {len(rejected)} rejected -> {args.output}")
    for f, r in zip(rejected.source_file, rejected.reason):
        print(f"  rejected {f}: {r}", file=sys.stderr)
    if len(rejected) > args.max_rejected:
        raise JobFailed(f"{len(rejected)} map(s) rejected, more than --max-rejected {args.max_rejected}")


def cmd_render_pairs(args) -> None:
    from relightful.data.render_pairs import RenderConfig, merge_parts, render_pairs
    from relightful.lighting import LedRig

    cfg = job_config(RenderConfig, args, "render_pairs")
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
    from relightful.config import load_config
    from relightful.data.render_pairs import RenderConfig
    from relightful.data.validate_data import ValidationConfig, validate_data

    cfg = job_config(ValidationConfig, args, "validate_data")
    render = (load_config(RenderConfig, args.params, "render_pairs", profile=args.profile) if args.params
              else RenderConfig())  # the FoV range the pairs were rendered with
    report = validate_data(args.envmaps, args.pairs, args.report, render.plan.fov_range, cfg.matte_coverage_range)
    print(report.to_markdown())
    if not report.success:
        raise JobFailed(f"data expectations failed; report written to {args.report}")


RIG = Path("data/raw/lightstage/rig.json")


def _path_options(p, **defaults) -> None:
    """`--name PATH` options (underscores become dashes), in the order given, with their default paths."""
    for name, default in defaults.items():
        p.add_argument(f"--{name.replace('_', '-')}", type=Path, default=Path(default))


def add_data_parsers(sub) -> None:
    """Add the data jobs to `relightful`'s sub-parsers."""
    p = sub.add_parser("starter-data", help="write the starter set's HDR maps: real ones from packages "
                       "(pmndrs, blender, open3d) and procedural skies (sky, sky_train)")
    _path_options(p, out="data/raw/hdri")
    add_params(p)
    p.set_defaults(func=cmd_starter_data)

    p = sub.add_parser("synthetic-stage", help="render procedural subjects into OLAT sets and write the rig")
    _path_options(p, out="data/raw/lightstage")
    add_params(p)
    p.set_defaults(func=cmd_synthetic_stage)

    p = sub.add_parser("ingest-hdr", help="validate and normalise HDR maps, compute their LED weights")
    _path_options(p, input="data/raw/hdri", output="data/envmaps", rig=RIG)
    p.add_argument("--max-rejected", type=int, default=0, help="rejected files allowed before exiting non-zero")
    add_params(p)
    p.set_defaults(func=cmd_ingest_hdr)

    p = sub.add_parser("render-pairs", help="render training tuples into safetensors shards + manifest")
    _path_options(p, subjects="data/raw/lightstage/subjects", rig=RIG, envmaps="data/envmaps", out="data/pairs")
    p.add_argument("--shard-index", type=int, default=0, help="this worker's index (0-based)")
    p.add_argument("--num-shards", type=int, default=1, help="number of workers the shards are spread over")
    p.add_argument("--merge", action="store_true", help="combine the parts of --num-shards finished workers")
    p.add_argument("--max-rejected", type=int, default=0, help="unloadable subjects allowed before exiting non-zero")
    add_params(p)
    p.set_defaults(func=cmd_render_pairs)

    p = sub.add_parser("validate-data", help="check the map and pair manifests against the data expectations")
    _path_options(p, envmaps=Path("data/envmaps") / MANIFEST, pairs=Path("data/pairs") / MANIFEST,
                  report="reports/data_validation.json")
    add_params(p)
    p.set_defaults(func=cmd_validate_data)


__all__ = ["add_data_parsers", "cmd_ingest_hdr", "cmd_render_pairs", "cmd_starter_data", "cmd_synthetic_stage",
           "cmd_validate_data"]

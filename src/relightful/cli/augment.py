"""`relightful augment` and `relightful natural-starter`: the stage-3 data jobs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from relightful.cli.common import JobFailed, add_params, job_config


def cmd_augment(args: argparse.Namespace) -> None:
    from relightful.augment import AugmentConfig
    from relightful.augment.augment_pairs import augment_pairs
    from relightful.tracking.model_uri import resolve_model

    cfg = job_config(AugmentConfig, args, "augment")
    result = augment_pairs(args.portraits, args.backgrounds, args.model, args.out, cfg, progress=not args.quiet,
                           resolve=resolve_model)
    m = result.manifest
    splits = ", ".join(f"{s} {n}" for s, n in m.split.value_counts().sort_index().items())
    print(f"augment: {len(m)} pairs ({splits}) from {m.subject_id.nunique()} portraits in {m.shard.nunique()} shards "
          f"({len(result.rendered_shards)} rendered, {len(result.kept_shards)} kept) -> {args.out}")
    for pid, err in sorted(result.failed_portraits.items()):
        print(f"  skipped portrait {pid}: {err}", file=sys.stderr)
    for name, err in sorted(result.failed_backgrounds.items()):
        print(f"  skipped background {name}: {err}", file=sys.stderr)
    rejected = len(result.failed_portraits) + len(result.failed_backgrounds)
    if rejected > args.max_rejected:
        raise JobFailed(f"{rejected} input(s) skipped, more than --max-rejected {args.max_rejected} "
                        f"(the others' pairs are written)")


def cmd_natural_starter(args: argparse.Namespace) -> None:
    from relightful.augment import NaturalStarterConfig
    from relightful.augment.natural_starter import NaturalStarterError, build_natural_starter

    cfg = job_config(NaturalStarterConfig, args, "natural_starter")
    try:
        sources = build_natural_starter(args.out, cfg, args.hdri, progress=not args.quiet)
    except NaturalStarterError as err:
        raise JobFailed(str(err)) from None
    kinds = [f["kind"] for f in sources["files"]]
    print(f"natural-starter: {kinds.count('portrait')} portraits, {kinds.count('background')} backgrounds "
          f"-> {args.out}")
    for s in sources["skipped"]:
        print(f"  skipped HDR map {s['source']}: {s['error']}", file=sys.stderr)


def add_augment_parsers(subparsers) -> None:
    """Add `augment` and `natural-starter` to `relightful`'s sub-parsers."""
    p = subparsers.add_parser(
        "augment", help="synthesise stage-3 pairs: natural portraits relit by the stage-2 model",
        description="For each portrait and a random other background, the stage-2 model relights the subject; the "
                    "relit subject over the photo's own background is the input, the photo the target. Writes pair "
                    "shards + manifest.parquet for `relightful train --stage 3`; a re-run keeps finished shards.")
    p.add_argument("--portraits", type=Path, default=Path("data/raw/natural/portraits"),
                   help="folder of <id>/image.(png|jpg) + <id>/matte.png")
    p.add_argument("--backgrounds", type=Path, default=Path("data/raw/natural/backgrounds"),
                   help="folder of background photos (*.png, *.jpg)")
    p.add_argument("--model", default="models/stage2", metavar="MODEL",
                   help="the stage-2 model folder, or an MLflow URI such as models:/relightful-stage2@champion")
    p.add_argument("--out", type=Path, default=Path("data/natural_pairs"))
    p.add_argument("--max-rejected", type=int, default=0,
                   help="skipped portraits/backgrounds allowed before exiting non-zero")
    add_params(p)
    p.set_defaults(func=cmd_augment)

    p = subparsers.add_parser("natural-starter", help="write the offline natural portraits and background photos",
                              description="Real portraits and background photos bundled with scikit-image (mattes "
                                          "derived offline), plus tone-mapped views of HDR maps when --hdri is given.")
    p.add_argument("--out", type=Path, default=Path("data/raw/natural"))
    p.add_argument("--hdri", type=Path, default=None, help="HDR maps to add perspective views of (e.g. data/raw/hdri)")
    add_params(p)
    p.set_defaults(func=cmd_natural_starter)


__all__ = ["add_augment_parsers", "cmd_augment", "cmd_natural_starter"]

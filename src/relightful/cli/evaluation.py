"""`relightful evaluate`: the model against the baselines on the held-out pairs, with the report a person reads."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from relightful.cli.common import JobFailed, add_params, job_config
from relightful.cli.hooks import start_tracking, track_evaluation


def cmd_evaluate(args: argparse.Namespace) -> None:
    from relightful.data.shards import MANIFEST
    from relightful.evaluation import EvalConfig, evaluate_model
    from relightful.tracking.model_uri import resolve_model

    cfg = job_config(EvalConfig, args, "evaluate")
    compare = parse_compare(args.compare)
    tracking = start_tracking(args)  # fails fast when the MLflow store cannot be reached
    natural = args.natural_pairs if args.natural_pairs and (args.natural_pairs / MANIFEST).is_file() else None
    if args.natural_pairs and natural is None:
        raise JobFailed(f"{args.natural_pairs / MANIFEST}: natural pair manifest not found")
    if (args.portraits is None) != (args.backgrounds is None):
        raise JobFailed("--portraits and --backgrounds go together (the real-portrait scenario needs both)")
    metrics = evaluate_model(args.model, args.pairs, args.out, cfg, natural, args.subjects, progress=not args.quiet,
                             compare=compare, portraits_dir=args.portraits, backgrounds_dir=args.backgrounds,
                             resolve=resolve_model)
    for scenario in ("lightstage", "natural"):
        block = metrics.get(scenario)
        if block is None:
            continue
        print(f"evaluate {scenario}: {block['n_pairs']} {cfg.split} pairs")
        for method, values in block["methods"].items():
            shown = ", ".join(f"{k} {values[k]:.4f}" for k in ("fg_psnr", "fg_ssim", "psnr", "ssim")
                              if values.get(k) is not None)
            err = values.get("light_dir_err_deg")
            print(f"  {method:<16} {shown}" + ("" if err is None else f", light dir err {err:.1f}°"))
        if block.get("headroom_share") is not None:
            print(f"  share of the headroom up to oracle_shading (fg PSNR): {block['headroom_share']:.3f}")
        if block.get("stage_comparison"):
            print(f"  {block['stage_comparison']['statement']}")
    if "real" in metrics:
        print(f"evaluate real: {metrics['real']['n_images']} portraits-on-backgrounds shown (no ground truth)")
    print(metrics["quality_bar"]["statement"])
    if not metrics["lpips"]["computed"]:
        print(f"LPIPS not computed: {metrics['lpips']['reason']}")
    print(f"evaluate: report -> {args.out}/report.html, metrics -> {args.out}/metrics.json")
    if tracking:
        track_evaluation(args.model, metrics, args.out)
    skipped = {f: e for block in ("lightstage", "natural", "gain_regression") for f, e in
               (metrics.get(block) or {}).get("skipped_shards", {}).items()}
    if skipped:
        raise JobFailed(f"{len(skipped)} shard(s) could not be read and were left out of the report: "
                            + "; ".join(skipped.values()))
    if args.require_quality_bar and not metrics["quality_bar"]["passed"]:
        raise JobFailed("the quality bar is not met (--require-quality-bar)")


def parse_compare(items: list[str] | None) -> dict[str, str]:
    """`--compare NAME=MODEL` values -> {NAME: MODEL}; NAME becomes the method "model_NAME"."""
    out: dict[str, str] = {}
    for item in items or []:
        name, sep, model = item.partition("=")
        if not sep or not model or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name):
            raise JobFailed(f"--compare {item!r}: expected NAME=MODEL, NAME of letters, digits, '_' or '-'")
        if name in out or name == "panorama":
            raise JobFailed(f"--compare {item!r}: the name {name!r} is "
                                + ("given twice" if name in out else "taken (model_panorama)"))
        out[name] = model
    return out


def add_evaluate_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="score the model and the baselines on the test pairs; write the report")
    p.add_argument("--model", default="models/stage3", help="model folder or MLflow URI")
    p.add_argument("--pairs", type=Path, default=Path("data/pairs"), help="light-stage pair shards + manifest")
    p.add_argument("--natural-pairs", type=Path, default=None, help="natural (stage-3) pair shards + manifest")
    p.add_argument("--subjects", type=Path, default=None,
                   help="the light stage's OLAT subjects folder: enables the oracle relight (upper bound)")
    p.add_argument("--portraits", type=Path, default=None,
                   help="real portraits (image + matte folders, as natural-starter writes them): with --backgrounds, "
                        "each is harmonised onto each background and shown in the report (no ground truth)")
    p.add_argument("--backgrounds", type=Path, default=None, help="real background photos for --portraits")
    p.add_argument("--compare", action="append", default=[], metavar="NAME=MODEL",
                   help="also score MODEL (folder or MLflow URI) as method model_NAME on both scenarios, e.g. "
                        "--compare stage1=models/stage1 --compare stage2=models/stage2 (repeatable; with both of "
                        "those the report states the effect of stage 2's alignment)")
    p.add_argument("--out", type=Path, default=Path("reports/eval"))
    p.add_argument("--require-quality-bar", action="store_true",
                   help="exit 1 unless the model meets DESIGN 4's bar on the light-stage test pairs (fg PSNR ≥ "
                        "composite + 3 dB and ≥ gain_regression + 1 dB, fg PSNR and SSIM above every baseline, "
                        "light-direction error ≤ 35°)")
    add_params(p)
    p.set_defaults(func=cmd_evaluate)


__all__ = ["add_evaluate_parser", "cmd_evaluate", "parse_compare"]

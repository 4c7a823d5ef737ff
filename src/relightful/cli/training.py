"""`relightful train`: one stage of the model with DeepSpeed, tracked as an MLflow run (hooks.py)."""

from __future__ import annotations

from pathlib import Path

from relightful.cli.common import JobFailed, add_params, check_output_folder
from relightful.cli.hooks import add_train_tracking_options, start_tracking, track_training


def cmd_train(args) -> None:
    from relightful.config import apply_overrides, deep_merge, from_dict, load_section
    from relightful.models import ModelConfig
    from relightful.training import TrainConfig, train_stage
    from relightful.training.loop import write_history

    def section(name: str) -> dict:
        return load_section(args.params, name, args.profile) if args.params else {}

    model_over = [o[len("model."):] for o in args.overrides if o.startswith("model.")]
    train_over = [o for o in args.overrides if not o.startswith("model.")]
    model_cfg = from_dict(ModelConfig, apply_overrides(section("model"), model_over), "model")
    block = f"train_stage{args.stage}"  # the dvc stage's name, over the shared `train` block
    stage_values = deep_merge(section("train"), section(block) if args.params else {})
    train_cfg = from_dict(TrainConfig, apply_overrides(stage_values, train_over), block)
    if args.stage > 1 and args.init is None:
        raise JobFailed(f"stage {args.stage} starts from the previous stage's model: give --init models/stage{args.stage - 1}")
    out = args.out or Path(f"models/stage{args.stage}")
    run_dir = args.run_dir or Path(f"runs/stage{args.stage}")
    if train_cfg.replay_fraction and args.replay is None:
        raise JobFailed(f"{block}.replay_fraction is {train_cfg.replay_fraction}: give the pairs to replay "
                        "(--replay data/pairs)")
    # before hours of training
    check_output_folder(out, {"--init": args.init, "--pairs": args.pairs, "--replay": args.replay})
    tracking = start_tracking(args)  # fails fast when the MLflow store cannot be reached
    result = train_stage(args.stage, args.pairs, out, run_dir, train_cfg, model_cfg, args.init, args.cache,
                         progress=not args.quiet, samples_dir=args.samples, replay_dir=args.replay)
    if result.model_dir is not None:
        if args.metrics:
            write_history(args.metrics, result.history)
        write_card(args, out, result.history)
        last = result.history[-1] if result.history else {}
        print(f"train: stage {args.stage}, {result.steps} steps, final loss {last.get('loss', float('nan')):.4f}, "
              f"{result.samples_per_s:.1f} samples/s -> {out}")
        if tracking:
            track_training(args, result, out, model_cfg, train_cfg)


def write_card(args, out: Path, history: list[dict]) -> None:
    """The model card beside the weights (relightful.models.model_card)."""
    import yaml

    from relightful.data.shards import MANIFEST
    from relightful.models.model_card import CardFacts, write_model_card
    from relightful.tracking.lineage import data_version

    profile = args.profile
    if profile is None and args.params and Path(args.params).is_file():
        profile = (yaml.safe_load(Path(args.params).read_text()) or {}).get("profile")
    version = data_version(args.pairs, args.lock).value if (Path(args.pairs) / MANIFEST).is_file() else None
    write_model_card(out, CardFacts(args.stage, profile, str(args.pairs), version,
                                    str(args.init) if args.init else None, history))


def add_train_parser(sub) -> None:
    """Add `train` to `relightful`'s sub-parsers."""
    p = sub.add_parser("train", help="train one stage of the model with DeepSpeed (launch with torchrun for more ranks)")
    p.add_argument("--stage", type=int, choices=(1, 2, 3), required=True)
    p.add_argument("--pairs", type=Path, default=Path("data/pairs"), help="pair shards + manifest to train on")
    p.add_argument("--init", type=Path, default=None, help="model folder to start from (stages 2-3: the previous stage)")
    p.add_argument("--out", type=Path, default=None, help="model folder to write (default models/stageN)")
    p.add_argument("--run-dir", type=Path, default=None, help="checkpoints, for resuming (default runs/stageN)")
    p.add_argument("--replay", type=Path, default=None,
                   help="light-stage pairs mixed into every batch at train.replay_fraction (stage 3: data/pairs)")
    p.add_argument("--cache", type=Path, default=None, help="latent cache folder (default: cache/latents beside --pairs)")
    p.add_argument("--metrics", type=Path, default=None, help="write the loss history (JSON list) here")
    p.add_argument("--samples", type=Path, default=None,
                   help="write validation grids (composite | model | target) here every validate_every steps")
    add_train_tracking_options(p)
    add_params(p)
    p.set_defaults(func=cmd_train)


__all__ = ["add_train_parser", "cmd_train"]

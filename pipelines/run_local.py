"""Run the whole pipeline on this machine with kfp's local runner: every step is a subprocess of this Python (the
installed package stands in for the image), artifacts land under ROOT/pipeline-root/<run>/<task>/.

    python -m pipelines.run_local --profile smoke --root runs/kfp

Tracking follows MLFLOW_TRACKING_URI (else `sqlite:///mlflow.db` in the working folder), as for `dvc repro`.
"""

import argparse
import os
from pathlib import Path

from pipelines.relightful_pipeline import PARAMS_YAML, make_pipeline, profile_params

REPO = Path(__file__).resolve().parents[1]


def run_local(root: Path, profile: "str | None" = None, params_path: Path = PARAMS_YAML, render_workers: int = 2,
              track: bool = True, require_quality_bar: bool = False, force_retrain: bool = False) -> Path:
    """Run the pipeline; returns the folder of this run's artifacts (one sub-folder per task; the steps under the
    retrain condition and the loops sit in their group's sub-folder). Training runs only when retrain-check says
    so (data changed, no champion yet) or with `force_retrain`."""
    from kfp import local

    root = Path(root).resolve()
    pipeline_root = root / "pipeline-root"
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root),
               raise_on_error=True)
    name, params = profile_params(profile, params_path)
    before = set(pipeline_root.glob("*")) if pipeline_root.exists() else set()
    make_pipeline(name, params, gpus=False, local=True)(
        workspace=str(root / "workspace"), render_workers=render_workers, track=track,
        require_quality_bar=require_quality_bar, force_retrain=force_retrain)
    (run,) = set(pipeline_root.glob("*")) - before
    return run


def main(argv: "list[str] | None" = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default=None, help="profile of params.yaml (default: its active profile)")
    ap.add_argument("--params", type=Path, default=PARAMS_YAML)
    ap.add_argument("--root", type=Path, default=Path("runs/kfp"))
    ap.add_argument("--render-workers", type=int, default=2)
    ap.add_argument("--track", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--require-quality-bar", action="store_true")
    ap.add_argument("--force-retrain", action="store_true", help="train even when the data did not change")
    args = ap.parse_args(argv)
    run = run_local(args.root, args.profile, args.params, args.render_workers, args.track, args.require_quality_bar,
                    args.force_retrain)
    print(f"pipeline finished: artifacts in {run}")


if __name__ == "__main__":
    main()

"""Training component: one stage of the model, resumable, on one node's GPUs (torchrun when more than one)."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from components.images import CUDA_IMAGE


@dsl.component(base_image=CUDA_IMAGE)
def train_stage(stage: int, pairs: Input[Dataset], params: dict, profile: str, track: bool, workspace: str,
                run_id: str, nproc_per_node: int, model: Output[Model], metrics: Output[Metrics],
                samples: Output[HTML], init: Input[Model] = None):
    """Train stage 1, 2 or 3 into the `model` folder (stages 2-3 start from `init`).

    Checkpoints and the latent cache go to `workspace/runs/<run_id>/stageN` (a volume on the cluster), so a retried
    task resumes where the failed one stopped; with an empty `workspace` they live in a temporary folder. The final
    loss and throughput are logged as metrics, the last validation grid as an HTML page.
    """
    import base64
    import json
    import os
    import tempfile
    from pathlib import Path

    from components.job import run_distributed, run_job

    root = Path(workspace) if workspace else Path(tempfile.mkdtemp(prefix="relightful-runs-"))
    run_dir = root / "runs" / (run_id or "local") / f"stage{stage}"
    history = run_dir / "history.json"
    grids = run_dir / "samples"
    argv = ["train", "--stage", str(stage), "--pairs", pairs.path, "--out", model.path, "--run-dir", str(run_dir),
            "--cache", str(run_dir / "cache"), "--metrics", str(history), "--samples", str(grids)]
    if init is not None:
        argv += ["--init", init.path]
    if nproc_per_node > 1:
        run_distributed(argv, params, profile, track, nproc_per_node)
    else:
        run_job(argv, params, profile, track)

    last = json.loads(history.read_text())[-1]
    for key in ("loss", "diffusion_loss", "align_loss", "samples_per_s"):
        if key in last:
            metrics.log_metric(key, float(last[key]))
    metrics.log_metric("steps", float(last["step"]))
    model.metadata.update({"stage": stage, "framework": "diffusers", "format": "safetensors"})
    pngs = sorted(grids.glob("*.png"))
    body = "<p>no validation grid was written</p>"
    if pngs:
        data = base64.b64encode(pngs[-1].read_bytes()).decode()
        body = f"<h3>stage {stage}: {pngs[-1].name} (composite | model | target)</h3><img src='data:image/png;base64,{data}'>"
    os.makedirs(os.path.dirname(samples.path) or ".", exist_ok=True)
    Path(samples.path).write_text(f"<html><body>{body}</body></html>")

"""What every component does inside its container: run one `relightful` job with the pipeline's parameters.

Imported by the component functions at run time (the image puts this package on PYTHONPATH), never at compile time.
"""

from __future__ import annotations

import os
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


class JobError(RuntimeError):
    """The job exited non-zero: the task fails with the job's status in the message (its stderr is in the log)."""


def params_text(params: dict, profile: str) -> str:
    """A params.yaml holding `params` as the block of profile `profile` (written by YAML's own dumper: JSON's
    `3e-05` would read back as a string)."""
    import yaml

    return yaml.safe_dump({"profile": profile, profile: params}, sort_keys=True)


@contextmanager
def params_file(params: dict, profile: str):
    """`params_text` in a temporary params.yaml."""
    with tempfile.TemporaryDirectory(prefix="relightful-params-") as tmp:
        path = Path(tmp) / "params.yaml"
        path.write_text(params_text(params, profile))
        yield path


def job_argv(argv: list[str], params_path: Path, profile: str, track: bool) -> list[str]:
    return [*argv, "--params", str(params_path), "--profile", profile, "--track" if track else "--no-track", "--quiet"]


def run_job(argv: list[str], params: dict, profile: str, track: bool) -> None:
    """`relightful ARGV` with the pipeline's params; raises JobError (failing the task) unless it exits 0."""
    from relightful.cli import main

    with params_file(params, profile) as path:
        status = main(job_argv(argv, path, profile, track))
    if status != 0:
        raise JobError(f"relightful {argv[0]} exited with status {status}")


def run_distributed(argv: list[str], params: dict, profile: str, track: bool, nproc_per_node: int) -> None:
    """The same job under torchrun with `nproc_per_node` ranks on this node (a pod's GPUs)."""
    import subprocess

    with params_file(params, profile) as path:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc_per_node}",
               "-m", "relightful.cli", *job_argv(argv, path, profile, track)]
        status = subprocess.run(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"}).returncode
    if status != 0:
        raise JobError(f"torchrun relightful {argv[0]} exited with status {status}")


@dataclass(frozen=True)
class StagePaths:
    run_dir: Path   # checkpoints (a retried step resumes from them), latent cache, history, validation grids

    @property
    def history(self) -> Path:
        return self.run_dir / "history.json"

    @property
    def grids(self) -> Path:
        return self.run_dir / "samples"


def stage_paths(workspace: str, run_id: str, stage: int) -> StagePaths:
    """`workspace/runs/<run_id>/stageN`; a temporary folder when there is no workspace (no resuming then)."""
    root = Path(workspace) if workspace else Path(tempfile.mkdtemp(prefix="relightful-runs-"))
    return StagePaths(root / "runs" / (run_id or "local") / f"stage{stage}")


def train_argv(stage: int, pairs: str, out: str, paths: StagePaths, init: str | None) -> list[str]:
    argv = ["train", "--stage", str(stage), "--pairs", pairs, "--out", out, "--run-dir", str(paths.run_dir),
            "--cache", str(paths.run_dir / "cache"), "--metrics", str(paths.history), "--samples", str(paths.grids)]
    return argv + (["--init", init] if init is not None else [])


def write_training_outputs(stage: int, paths: StagePaths, model, metrics, samples) -> None:
    """The final loss and throughput as run metrics, the model's metadata, the last validation grid as a page."""
    import base64
    import json

    last = json.loads(paths.history.read_text())[-1]
    for key in ("loss", "diffusion_loss", "align_loss", "samples_per_s"):
        if key in last:
            metrics.log_metric(key, float(last[key]))
    metrics.log_metric("steps", float(last["step"]))
    model.metadata.update({"stage": stage, "framework": "diffusers", "format": "safetensors"})
    pngs = sorted(paths.grids.glob("*.png"))
    body = "<p>no validation grid was written</p>"
    if pngs:
        data = base64.b64encode(pngs[-1].read_bytes()).decode()
        body = (f"<h3>stage {stage}: {pngs[-1].name} (composite | model | target)</h3>"
                f"<img src='data:image/png;base64,{data}'>")
    Path(samples.path).parent.mkdir(parents=True, exist_ok=True)
    Path(samples.path).write_text(f"<html><body>{body}</body></html>")

"""What every component does inside its container: run one `relightful` job with the pipeline's parameters.

Imported by the component functions at run time (the image puts this package on PYTHONPATH); at compile time only
for its constants (module level imports nothing but the standard library).
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


def train_argv(stage: int, pairs: str, out: str, paths: StagePaths, init: str | None,
               replay: str | None = None) -> list[str]:
    argv = ["train", "--stage", str(stage), "--pairs", pairs, "--out", out, "--run-dir", str(paths.run_dir),
            "--cache", str(paths.run_dir / "cache"), "--metrics", str(paths.history), "--samples", str(paths.grids)]
    return argv + (["--init", init] if init is not None else []) + (["--replay", replay] if replay is not None else [])


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


RETRAIN, UP_TO_DATE = "retrain", "up-to-date"  # the answers of the retrain-check step (its `dsl.If` compares them)


def retrain_decision(pairs: str, model_name: str, alias: str, track: bool, force: bool) -> str:
    """`relightful retrain-check` on the pairs folder `pairs` against `model_name@alias`: RETRAIN when the data
    changed or there is no such version, UP_TO_DATE when it was trained on exactly this data. `force` answers
    RETRAIN without asking; so does a pipeline without tracking (no registry to compare with). A check that cannot
    decide (exit 3: registry or data version unreadable) raises JobError: the run fails rather than read it as
    either answer."""
    if force:
        print(f"{RETRAIN}: forced (force_retrain)")
        return RETRAIN
    if not track:
        print(f"{RETRAIN}: tracking is off, so there is no registry to compare the data with")
        return RETRAIN
    from relightful.cli import main

    status = main(["retrain-check", "--pairs", str(pairs), "--model-name", model_name, "--alias", alias])
    if status == 0:
        return RETRAIN
    if status == 1:
        return UP_TO_DATE
    raise JobError(f"relightful retrain-check exited with status {status}: cannot tell whether to retrain")


def mark_lineage(models: dict[str, str], champion_name: str, alias: str, decision: dict) -> dict[str, str]:
    """After `decision` (promote's report) made a version of `champion_name` the champion: move `alias` of each
    model name in `models` (name -> model folder of this run, e.g. relightful-stage1 -> its folder) to the version
    registered from that folder, so `relightful-stage1@champion` is the stage-1 model the champion was built from
    and its `data_version` tag the light-stage pairs it learnt from (the pipeline's retrain-check compares with
    it). Nothing moves unless `champion_name@alias` is still the decided version. Returns name -> version moved."""
    from relightful.tracking.model_uri import default_tracking_uri
    from relightful.tracking.promotion import alias_version
    from relightful.tracking.registry import find_version_of_folder
    from relightful.tracking.runs import make_client, tracking_errors

    if decision.get("decision") != alias:
        return {}
    uri = default_tracking_uri()
    client = make_client(uri)
    moved: dict[str, str] = {}
    with tracking_errors(uri, f"cannot mark the lineage of {champion_name}@{alias}"):
        if alias_version(client, champion_name, alias) != str(decision.get("version")):
            return {}  # another run promoted since: its own step marks its lineage
        for name, folder in models.items():
            version = find_version_of_folder(client, folder, [name])
            if version is None:
                raise JobError(f"{folder} is not registered as a version of {name}: cannot mark it {alias}")
            client.set_registered_model_alias(name, alias, version.version)
            moved[name] = str(version.version)
    return moved

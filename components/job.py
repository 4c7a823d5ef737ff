"""What every component does inside its container: run one `relightful` job with the pipeline's parameters.

Imported by the component functions at run time (the image puts this package on PYTHONPATH), never at compile time.
"""

from __future__ import annotations

import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path


class JobError(RuntimeError):
    """The job exited non-zero: the task fails with the job's status in the message (its stderr is in the log)."""


@contextmanager
def params_file(params: dict, profile: str):
    """A params.yaml holding `params` as the block of profile `profile` (written by YAML's own dumper: JSON's
    `3e-05` would read back as a string)."""
    import yaml

    with tempfile.TemporaryDirectory(prefix="relightful-params-") as tmp:
        path = Path(tmp) / "params.yaml"
        path.write_text(yaml.safe_dump({"profile": profile, profile: params}, sort_keys=True))
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


def copy_tree(src: str | Path, dst: str | Path) -> None:
    """Copy the files of folder `src` into folder `dst` (created), keeping sub-folders."""
    import shutil

    shutil.copytree(src, dst, dirs_exist_ok=True)

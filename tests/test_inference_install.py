"""`pip install '.[inference]'` in a fresh virtual environment relights a portrait, without DeepSpeed,
great-expectations, DVC or kfp (issue 15). Slow: it installs torch, diffusers and MLflow from the package index."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from relightful.io import read_ldr, to_uint8, write_ldr, write_matte
from relightful.models import RelightModel
from relightful.models.harmonizer import Harmonizer

from conftest import micro_model_config

ROOT = Path(__file__).resolve().parents[1]
LEFT_OUT = {"deepspeed", "great-expectations", "great_expectations", "kfp", "dvc"}


def _run(cmd: list, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{cmd}: {result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result


@pytest.mark.slow
def test_inference_extra_in_a_fresh_venv_runs_harmonize(tmp_path: Path):
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv])
    pip = [venv / "bin" / "python", "-m", "pip", "install", "--quiet"]
    _run([*pip, "torch==2.13.0"])  # the CPU wheel first, as the Makefile does
    _run([*pip, "-c", ROOT / "constraints.txt", f"{ROOT}[inference]"], timeout=1800)
    installed = {line.split("==")[0].lower() for line in
                 _run([venv / "bin" / "python", "-m", "pip", "freeze"]).stdout.splitlines()}
    assert not installed & LEFT_OUT, installed & LEFT_OUT
    assert {"diffusers", "mlflow", "fastapi", "uvicorn"} <= installed

    torch.manual_seed(0)
    RelightModel(micro_model_config(32)).save_pretrained(tmp_path / "model")
    rng = np.random.default_rng(0)
    fg = rng.random((40, 30, 3), dtype=np.float32)
    matte = np.zeros((40, 30), np.float32)
    matte[8:36, 6:24] = 1
    write_ldr(tmp_path / "fg.png", fg)
    write_matte(tmp_path / "matte.png", matte)
    write_ldr(tmp_path / "bg.png", rng.random((50, 70, 3), dtype=np.float32))
    relightful = venv / "bin" / "relightful"
    assert _run([relightful, "--version"]).stdout.startswith("relightful 0.")
    _run([relightful, "harmonize", "--model", tmp_path / "model", "--fg", tmp_path / "fg.png", "--matte",
          tmp_path / "matte.png", "--bg", tmp_path / "bg.png", "--out", tmp_path / "out.png", "--steps", "2",
          "--quiet"], cwd=tmp_path, timeout=600)
    expected = Harmonizer.from_pretrained(tmp_path / "model")(
        to_uint8(read_ldr(tmp_path / "fg.png")), matte, to_uint8(read_ldr(tmp_path / "bg.png")), steps=2, seed=0)
    assert np.array_equal(to_uint8(read_ldr(tmp_path / "out.png")), expected)
    # the MLflow model's code imports there too (what `mlflow models serve` runs)
    _run([venv / "bin" / "python", "-c", "import relightful.serving.mlflow_entry, relightful.serving.app"])

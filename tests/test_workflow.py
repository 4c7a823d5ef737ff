"""The whole DVC chain on the `smoke` profile in a fresh copy of the repository: `dvc repro` runs every stage,
registers the three stage models with their lineage, evaluates and promotes; a second `dvc repro` runs nothing;
`dvc exp run -S` on one parameter re-runs only what depends on it. (CI runs this once; ~2 minutes.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _run(args: list[str], cwd: Path, env: dict, timeout: int = 900) -> subprocess.CompletedProcess:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> tuple[Path, dict]:
    """The working tree's files (tracked and new, not ignored) in a new git repository, on the smoke profile."""
    root = tmp_path_factory.mktemp("workflow") / "repo"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        if (REPO / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)
    params = (root / "params.yaml").read_text()
    (root / "params.yaml").write_text(params.replace("\nprofile: tiny\n", "\nprofile: smoke\n", 1))
    # not this process's settings: its tracking switches, nor the process-group address an in-process training
    # test left in os.environ (the stages would try to listen on the port this process still holds)
    launcher = {"RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_", "RELIGHTFUL_", "DVC_")) and k not in launcher}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", HF_HUB_OFFLINE="1", GIT_AUTHOR_NAME="t",
               GIT_AUTHOR_EMAIL="t@example.com", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.com")
    _run(["git", "init", "-q"], root, env)
    _run(["git", "add", "-A"], root, env)
    _run(["git", "commit", "-qm", "workspace"], root, env)
    return root, env


@pytest.fixture(scope="module")
def repro(workspace) -> tuple[Path, dict, str]:
    root, env = workspace
    out = _run([str(BIN / "dvc"), "repro"], root, env).stdout
    return root, env, out


def test_repro_runs_the_whole_chain(repro):
    root, _, out = repro
    for stage in ("starter_data", "synthetic_stage", "ingest_hdr", "render_pairs", "validate_data", "train_stage1",
                  "train_stage2", "natural_starter", "augment", "train_stage3", "evaluate", "promote"):
        assert f"Running stage '{stage}'" in out
    for n in (1, 2, 3):
        assert (root / "models" / f"stage{n}" / "relightful.json").is_file()
    metrics = json.loads((root / "reports" / "eval" / "metrics.json").read_text())
    assert set(metrics["lightstage"]["methods"]) == {
        "composite", "model", "model_panorama", "model_stage1", "model_stage2", "reinhard", "histogram",
        "gain_regression", "shading", "oracle_gain", "oracle_shading", "oracle"}
    assert metrics["lightstage"]["stage_comparison"]  # with and without stage 2's alignment
    assert (root / "reports" / "eval" / "report.html").is_file() and (root / "reports" / "eval" / "grid.png").is_file()
    decision = json.loads((root / "reports" / "promotion.json").read_text())
    assert decision["decision"] == "champion" and decision["champion_after"] == decision["version"]


def test_every_stage_model_is_registered_with_its_lineage(repro):
    from mlflow.tracking import MlflowClient

    root, _, _ = repro
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
    for n, pairs in ((1, "data/pairs"), (2, "data/pairs"), (3, "data/natural_pairs")):
        versions = client.search_model_versions(f"name='relightful-stage{n}'")
        assert len(versions) == 1
        tags = versions[0].tags
        recorded = next(d["md5"] for d in lock[f"train_stage{n}"]["deps"] if d["path"] == pairs)
        assert tags["data_version"] == recorded and tags["git_commit"] == commit
    champion = client.get_model_version_by_alias("relightful-stage3", "champion")
    assert champion.tags["promotion.decision"] == "champion"
    assert "eval.lightstage.model.fg_psnr" in client.get_run(champion.run_id).data.metrics


def test_second_repro_runs_nothing_and_retrain_check_says_up_to_date(repro):
    root, env, _ = repro
    start = time.perf_counter()
    out = _run([str(BIN / "dvc"), "repro"], root, env).stdout
    assert "Running stage" not in out and "Data and pipelines are up to date" in out
    assert time.perf_counter() - start < 60
    check = subprocess.run([str(BIN / "relightful"), "retrain-check"], cwd=root, env=env, capture_output=True,
                           text=True)
    assert check.returncode == 1, check.stdout + check.stderr  # the champion was trained on today's data


def test_exp_run_with_one_parameter_reruns_only_what_depends_on_it(repro):
    root, env, _ = repro
    _run(["git", "add", "-A"], root, env)
    _run(["git", "commit", "-qm", "first repro"], root, env)
    out = _run([str(BIN / "dvc"), "exp", "run", "-S", "smoke.evaluate.n_visual=1"], root, env).stdout
    assert "Running stage 'evaluate'" in out
    for stage in ("render_pairs", "train_stage1", "train_stage2", "augment", "train_stage3"):
        assert f"Running stage '{stage}'" not in out
    assert "n_visual: 1" in (root / "params.yaml").read_text()

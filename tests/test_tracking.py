"""Tracking against real services on 127.0.0.1: an MLflow server (local and S3-proxied artifacts), a moto S3
server, DVC pushing to it. Runs, registry lineage, `relightful train` tracking, retrain-check, the promotion gate,
checksummed S3 transfers."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from relightful.cli import main
from relightful.models import RelightModel
from relightful.tracking.lineage import data_version, git_commit
from relightful.tracking.model_uri import resolve_model
from relightful.tracking.registry import register_stage_model
from relightful.tracking.jobs import log_training
from relightful.tracking.promotion import CHAMPION, PromoteConfig, PromotionError, promote
from relightful.tracking.runs import RunTracker, TrackingError, flatten, make_client

from conftest import micro_model_config
from services import clean_env as _clean_env, free_port, serve

mlflow = pytest.importorskip("mlflow")
boto3 = pytest.importorskip("boto3")

BIN = Path(sys.executable).parent
BUCKET = "relightful-test"
AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


# --- services ------------------------------------------------------------------------------------------------------

def mlflow_server(root: Path, artifacts: str, **env: str):
    port = free_port()
    cmd = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", artifacts]
    return port, serve(cmd, _clean_env(**env), root / "server.log", f"http://127.0.0.1:{port}/health")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """An MLflow tracking server with a sqlite store and proxied local artifacts."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port, ctx = mlflow_server(root, str(root / "artifacts"))
    with ctx:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    """A moto S3 server; yields its endpoint URL. The bucket BUCKET exists."""
    root = tmp_path_factory.mktemp("moto")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with serve([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], _clean_env(), root / "moto.log",
               f"{url}/moto-api/", timeout=30):
        boto3.client("s3", endpoint_url=url, **_keys()).create_bucket(Bucket=BUCKET)
        yield url


def _keys() -> dict[str, str]:
    return {"aws_access_key_id": AWS_ENV["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": AWS_ENV["AWS_SECRET_ACCESS_KEY"], "region_name": AWS_ENV["AWS_DEFAULT_REGION"]}


@pytest.fixture
def aws(monkeypatch, moto):
    """Dummy credentials and the moto endpoint in this process's environment."""
    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto)
    return moto


@pytest.fixture
def sqlite_uri(tmp_path, monkeypatch) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    return uri


# --- helpers -------------------------------------------------------------------------------------------------------

def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A real (untrained) micro model folder: safetensors + JSON."""
    import torch

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("model") / "micro"
    RelightModel(micro_model_config()).save_pretrained(folder)
    return folder


def pairs_copy(rendered_pairs: Path, dst: Path) -> Path:
    shutil.copytree(rendered_pairs, dst)
    return dst


def drop_a_row(pairs: Path) -> None:
    manifest = pd.read_parquet(pairs / "manifest.parquet")
    manifest.iloc[1:].to_parquet(pairs / "manifest.parquet")


def fake_model(folder: Path, quality: float) -> Path:
    """A folder that resolve_model accepts, carrying the score the test scorer reads back."""
    folder.mkdir(parents=True)
    (folder / "relightful.json").write_text(json.dumps({"quality": quality}))
    return folder


def quality_scorer(calls: list | None = None, before=None):
    def score(folder: Path) -> dict[str, float]:
        if before is not None:
            before(len(calls) if calls is not None else 0)
        if calls is not None:
            calls.append(folder)
        q = json.loads((folder / "relightful.json").read_text())["quality"]
        return {"fg_psnr": q, "fg_ssim": q / 100}
    return score


def register_fakes(tmp_path: Path, uri: str, name_stage: int, qualities: list[float]) -> list[str]:
    versions = []
    for i, q in enumerate(qualities):
        with RunTracker.start(f"fake-{i}", uri=uri) as run:
            versions.append(register_stage_model(name_stage, fake_model(tmp_path / f"m{i}", q), run,
                                                 {"data_version": "d", "git_commit": "c"}).version)
    return versions


def registry_state(client, name: str) -> dict:
    versions = client.search_model_versions(f"name='{name}'")
    aliases = client.get_registered_model(name).aliases
    return {"aliases": {k: str(v) for k, v in aliases.items()},
            "tags": {str(v.version): dict(v.tags) for v in versions}}


# --- lineage -------------------------------------------------------------------------------------------------------

def test_data_version_from_lock_or_manifest(rendered_pairs, tmp_path):
    pairs = pairs_copy(rendered_pairs, tmp_path / "data" / "pairs")
    manifest_md5 = hashlib.md5((pairs / "manifest.parquet").read_bytes()).hexdigest()
    assert data_version(pairs, tmp_path / "dvc.lock") == data_version(pairs, tmp_path / "missing.lock")
    v = data_version(pairs, tmp_path / "dvc.lock")
    assert (v.value, v.source, v.manifest_md5) == (manifest_md5, "manifest", manifest_md5)
    files = [p for p in pairs.rglob("*") if p.is_file()]
    entry = {"path": "data/pairs", "hash": "md5", "md5": "0123abcd.dir", "nfiles": len(files),
             "size": sum(p.stat().st_size for p in files)}
    lock = {"schema": "2.0", "stages": {"train_stage1": {"cmd": "x", "deps": [entry]}}}
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    v = data_version(pairs, tmp_path / "dvc.lock")
    assert (v.value, v.source, v.manifest_md5) == ("0123abcd.dir", "dvc.lock", manifest_md5)
    assert v.tags() == {"data_version": "0123abcd.dir", "data_version_source": "dvc.lock",
                        "data_manifest_md5": manifest_md5}
    drop_a_row(pairs)  # the lock is stale now: the manifest is the version
    v2 = data_version(pairs, tmp_path / "dvc.lock")
    assert v2.source == "manifest" and v2.value not in (manifest_md5, "0123abcd.dir")
    with pytest.raises(ValueError, match="manifest.parquet: pairs manifest not found"):
        data_version(tmp_path / "nowhere", tmp_path / "dvc.lock")


def test_git_commit(tmp_path, monkeypatch):
    monkeypatch.delenv("GIT_COMMIT", raising=False)
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], cwd=repo, check=True)
    (repo / "f").write_text("x")
    subprocess.run([*git, "add", "f"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "m"], cwd=repo, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    assert git_commit(repo) == head and len(head) == 40
    outside = tmp_path / "no-git"
    outside.mkdir()
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    assert git_commit(outside) == "unknown"
    monkeypatch.setenv("GIT_COMMIT", "abc123")
    assert git_commit(outside) == "abc123"


def test_flatten_params():
    flat = flatten({"model": {"unet": {"block_out_channels": (16, 32), "init_from": None}}, "lr": 1e-3, "e": {}})
    assert flat == {"model.unet.block_out_channels": "[16, 32]", "model.unet.init_from": "None", "lr": "0.001",
                    "e": "{}"}
    assert len(flatten({"long": "x" * 7000})["long"]) == 6000


# --- runs and registry ---------------------------------------------------------------------------------------------

def test_stage_model_registered_on_server_resolves_to_identical_weights(server, model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    with RunTracker.start("train-stage1", uri=server) as run:
        run.log_params({"model": dataclasses.asdict(micro_model_config()), "stage": 1})
        run.log_metrics([{"step": 5, "loss": 0.5, "lr": 1e-3}, {"step": 10, "loss": 0.25, "lr": 5e-4}])
        version = register_stage_model(1, model_dir, run, {"data_version": "abc.dir", "git_commit": "deadbeef"})
    client = make_client(server)
    mv = client.get_model_version("relightful-stage1", version.version)
    from relightful.io.digest import folder_digest

    assert mv.tags == {"data_version": "abc.dir", "git_commit": "deadbeef", "stage": "1",
                       "model_digest": folder_digest(model_dir)}
    # an MLflow model logged by the run (MLflow 3's logged model), which the version points at
    assert mv.run_id == run.run_id and mv.source == version.source and mv.source.startswith("models:/m-")
    assert client.get_logged_model(mv.source[len("models:/"):]).source_run_id == run.run_id
    got = client.get_run(run.run_id)
    assert got.info.status == "FINISHED" and got.data.params["model.unet.block_out_channels"] == "[16, 32]"
    assert [(m.step, m.value) for m in client.get_metric_history(run.run_id, "loss")] == [(5, 0.5), (10, 0.25)]
    again = register_stage_model(1, model_dir, run.run_id, {"data_version": "abc.dir"})  # by run id, URI from env
    assert int(again.version) == int(version.version) + 1 and again.run_id == version.run_id
    client.set_registered_model_alias("relightful-stage1", "champion", version.version)
    for uri in (version.uri, "models:/relightful-stage1@champion"):
        folder = resolve_model(uri, dst=tmp_path / uri.split("/")[-1].replace("@", "-"))
        assert folder_bytes(folder) == folder_bytes(model_dir)
    # a folder without relightful.json is refused before anything is logged
    with RunTracker.start("bad", uri=server) as run:
        with pytest.raises(ValueError, match="relightful.json: not a relightful model folder"):
            register_stage_model(1, tmp_path, run, {})


def _write_params(path: Path, steps: int = 4) -> Path:
    def lists(x):
        return {k: lists(v) for k, v in x.items()} if isinstance(x, dict) else list(x) if isinstance(x, tuple) else x

    train = {"steps": steps, "log_every": 1, "checkpoint_every": 100, "validate_every": 2, "validation_pairs": 2,
             "prediction_type": "sample", "zero_snr": True, "sampling": {"steps": 1},
             "optim": {"lr": 2e-3, "warmup_steps": 1}, "deepspeed": {"micro_batch": 4}}
    model = {**lists(dataclasses.asdict(micro_model_config())), "residual": True}
    path.write_text(yaml.safe_dump({"profile": "micro", "micro": {"model": model, "train": train,
                                                                  "train_stage1": {}}}))
    return path


def _train_args(tmp_path: Path, pairs: Path, *extra: str) -> list[str]:
    return ["train", "--stage", "1", "--pairs", str(pairs), "--out", str(tmp_path / "model"),
            "--run-dir", str(tmp_path / "run"), "--cache", str(tmp_path / "cache"),
            "--metrics", str(tmp_path / "stage1.json"), "--samples", str(tmp_path / "samples"),
            "--params", str(_write_params(tmp_path / "params.yaml")), "--lock", str(tmp_path / "dvc.lock"),
            "--quiet", *extra]


@pytest.mark.parametrize("store", ["embedded", "server"])
def test_train_command_logs_the_run_and_registers_the_model(store, request, rendered_pairs, tmp_path, monkeypatch,
                                                            capsys):
    monkeypatch.delenv("RELIGHTFUL_TRACKING", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    if store == "server":
        uri = request.getfixturevalue("server")
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    else:  # the embedded default: sqlite:///<cwd>/mlflow.db, artifacts in <cwd>/mlartifacts
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        monkeypatch.chdir(tmp_path)
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(_train_args(tmp_path, rendered_pairs)) == 0
    out = capsys.readouterr().out
    assert "registered models:/relightful-stage1/" in out
    client = make_client(uri)
    experiment = client.get_experiment_by_name("relightful")
    if store == "embedded":
        assert (tmp_path / "mlflow.db").is_file()
        assert experiment.artifact_location == (tmp_path / "mlartifacts").as_uri()
    run = client.search_runs([experiment.experiment_id], order_by=["attribute.start_time DESC"])[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "train-stage1"
    history = json.loads((tmp_path / "stage1.json").read_text())
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss")] == \
        [(r["step"], r["loss"]) for r in history] and len(history) == 4
    assert run.data.params["train.steps"] == "4" and run.data.params["model.unet.block_out_channels"] == "[16, 32]"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"samples", "metrics"} <= artifacts
    assert {a.path for a in client.list_artifacts(run.info.run_id, "samples")} == \
        {"samples/step-00000002.png", "samples/step-00000004.png"}
    version = client.search_model_versions(f"run_id='{run.info.run_id}'")[0]
    manifest_md5 = hashlib.md5((rendered_pairs / "manifest.parquet").read_bytes()).hexdigest()
    assert version.name == "relightful-stage1"
    assert version.tags["data_version"] == manifest_md5 and version.tags["data_version_source"] == "manifest"
    assert version.tags["git_commit"] == git_commit() and version.tags["stage"] == "1"
    # the model card beside the weights, and its opening as the version's description
    card = (tmp_path / "model" / "README.md").read_text()
    assert card.startswith("# relightful stage 1\n") and "Profile: `micro`; 4 steps" in card
    assert f"data version `{manifest_md5}`" in card and "## Intended use" in card and "## Limits" in card
    assert version.description == card.split("\n## Evaluation")[0].strip()
    folder = resolve_model(f"models:/relightful-stage1/{version.version}", tracking_uri=uri, dst=tmp_path / "back")
    assert folder_bytes(folder) == folder_bytes(tmp_path / "model")


def test_train_fails_fast_naming_an_unreachable_store(rendered_pairs, tmp_path, monkeypatch, capsys):
    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", dead)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.delenv("RELIGHTFUL_TRACKING", raising=False)
    assert main(_train_args(tmp_path, rendered_pairs, "--track")) == 1
    err = capsys.readouterr().err
    assert f"MLflow tracking at {dead}" in err and "cannot be reached" in err
    assert not (tmp_path / "model").exists()  # failed before training
    # tracking off: trains with the same unreachable URI
    monkeypatch.setenv("RELIGHTFUL_TRACKING", "0")
    assert main(_train_args(tmp_path, rendered_pairs)) == 0
    assert (tmp_path / "model" / "relightful.json").is_file()
    monkeypatch.delenv("RELIGHTFUL_TRACKING")
    (tmp_path / "again").mkdir()
    assert main(_train_args(tmp_path / "again", rendered_pairs, "--no-track")) == 0
    # the store going away after training: logging fails with the URI named, not silently
    with pytest.raises(TrackingError, match=f"MLflow tracking at {dead}: cannot start a run"):
        log_training(1, tmp_path / "model", [{"step": 1, "loss": 1.0}], {}, rendered_pairs, tmp_path / "dvc.lock")


# --- retrain-check -------------------------------------------------------------------------------------------------

def test_retrain_check_flips_when_the_data_changes(rendered_pairs, tmp_path, sqlite_uri, capsys, monkeypatch):
    pairs = pairs_copy(rendered_pairs, tmp_path / "pairs")
    check = ["retrain-check", "--pairs", str(pairs), "--lock", str(tmp_path / "dvc.lock")]
    assert main(check) == 0  # no champion yet
    assert "retrain: no champion exists" in capsys.readouterr().out
    current = data_version(pairs, tmp_path / "dvc.lock")
    with RunTracker.start("train-stage3") as run:
        v = register_stage_model(3, fake_model(tmp_path / "m", 1.0), run, {**current.tags(), "git_commit": "c"})
    client = make_client(sqlite_uri)
    client.set_registered_model_alias("relightful-stage3", "champion", v.version)
    assert main(check) == 1
    out = capsys.readouterr().out
    assert out.startswith("up to date") and out.count(current.value) == 2
    drop_a_row(pairs)
    assert main(check) == 0
    out = capsys.readouterr().out
    assert out.startswith("retrain: the data changed") and current.value in out
    assert data_version(pairs, tmp_path / "dvc.lock").value in out
    # a champion tagged from dvc.lock is compared through its manifest md5 when the lock is not there now
    now = data_version(pairs, tmp_path / "dvc.lock")
    for key, value in {"data_version": "feed.dir", "data_version_source": "dvc.lock",
                       "data_manifest_md5": now.manifest_md5}.items():
        client.set_model_version_tag("relightful-stage3", v.version, key, value)
    assert main(check) == 1
    assert main([*check, "--model-name", "relightful-other"]) == 0  # no such model: no champion
    # an unreachable registry is neither answer
    capsys.readouterr()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    assert main(check) == 3
    assert "retrain-check: error: MLflow tracking at http://127.0.0.1:" in capsys.readouterr().err


# --- promotion gate ------------------------------------------------------------------------------------------------

CFG = PromoteConfig(metric="fg_psnr", margin=0.5)


def test_promotion_moves_champion_when_better_on_server(server, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    v1, v2 = register_fakes(tmp_path, server, 3, [20.0, 21.0])
    client = make_client(server)
    first = promote("relightful-stage3", quality_scorer(), CFG, version=v1)
    assert (first.decision, first.champion_before, first.champion_after) == ("champion", None, v1)
    second = promote("relightful-stage3", quality_scorer(), CFG)  # the latest version: v2
    assert (second.version, second.decision, second.champion_before, second.champion_after) == \
        (v2, "champion", v1, v2)
    assert str(client.get_model_version_by_alias("relightful-stage3", CHAMPION).version) == v2
    tags = client.get_model_version("relightful-stage3", v2).tags
    assert tags["promotion.decision"] == "champion" and tags["promotion.compared_to_version"] == v1
    assert float(tags["promotion.metrics.fg_psnr"]) == 21.0
    assert float(tags["promotion.champion_metrics.fg_psnr"]) == 20.0
    assert float(tags["promotion.metrics.fg_ssim"]) == 0.21


def test_promotion_sets_challenger_when_not_better_by_the_margin(tmp_path, sqlite_uri):
    v1, v2, v3 = register_fakes(tmp_path, sqlite_uri, 3, [20.0, 20.4, 19.0])
    promote("relightful-stage3", quality_scorer(), CFG, version=v1)
    with pytest.raises(PromotionError, match="no 'lpips'"):
        promote("relightful-stage3", quality_scorer(), PromoteConfig(metric="lpips"), version=v2)
    for v in (v2, v3):  # within the margin, then worse
        r = promote("relightful-stage3", quality_scorer(), CFG, version=v)
        assert (r.decision, r.champion_after) == ("challenger", v1)
        client = make_client(sqlite_uri)
        assert str(client.get_model_version_by_alias("relightful-stage3", "challenger").version) == v
        assert str(client.get_model_version_by_alias("relightful-stage3", CHAMPION).version) == v1
        assert client.get_model_version("relightful-stage3", v).tags["promotion.decision"] == "challenger"


def test_promotion_on_an_error_metric_wants_it_lower(tmp_path, sqlite_uri):
    """fg_psnr 20 -> 21 means a larger "error" under metric fg_ssim read as lower-is-better: not promoted."""
    v1, v2 = register_fakes(tmp_path, sqlite_uri, 3, [20.0, 21.0])
    lower = PromoteConfig(metric="fg_ssim", margin=0.001, higher_is_better=False)
    promote("relightful-stage3", quality_scorer(), lower, version=v1)
    r = promote("relightful-stage3", quality_scorer(), lower, version=v2)
    assert (r.decision, r.champion_after) == ("challenger", v1) and "lower is better" in r.reason
    v3, = register_fakes(tmp_path / "more", sqlite_uri, 3, [19.0])
    assert promote("relightful-stage3", quality_scorer(), lower, version=v3).decision == "champion"


def test_promotion_rerun_changes_nothing(tmp_path, sqlite_uri):
    v1, v2 = register_fakes(tmp_path, sqlite_uri, 3, [20.0, 19.0])
    promote("relightful-stage3", quality_scorer(), CFG, version=v1)
    promote("relightful-stage3", quality_scorer(), CFG, version=v2)
    client = make_client(sqlite_uri)
    before = registry_state(client, "relightful-stage3")
    assert before["aliases"] == {"champion": v1, "challenger": v2}
    calls: list = []
    for v in (v1, v2, None):
        r = promote("relightful-stage3", quality_scorer(calls), CFG, version=v)
        assert r.decision == "unchanged" and not r.changed
    assert calls == [] and registry_state(client, "relightful-stage3") == before


def test_promotion_race_never_demotes_a_newer_champion(tmp_path, sqlite_uri):
    v1, v2, v3 = register_fakes(tmp_path, sqlite_uri, 3, [20.0, 25.0, 22.0])
    promote("relightful-stage3", quality_scorer(), CFG, version=v1)

    def other_gate(n_calls: int) -> None:  # while v2 is being scored, another gate promotes v3
        if n_calls == 0:
            assert promote("relightful-stage3", quality_scorer(), CFG, version=v3).decision == "champion"

    result = promote("relightful-stage3", quality_scorer([], before=other_gate), CFG, version=v2)
    client = make_client(sqlite_uri)
    assert str(client.get_model_version_by_alias("relightful-stage3", CHAMPION).version) == v3
    assert (result.decision, result.champion_before, result.champion_after) == ("challenger", v3, v3)
    tags = client.get_model_version("relightful-stage3", v2).tags
    assert tags["promotion.compared_to_version"] == v3 and float(tags["promotion.champion_metrics.fg_psnr"]) == 22.0


def test_promotion_gives_champion_back_to_a_newer_version_promoted_in_the_alias_window(tmp_path, sqlite_uri):
    """The other gate finishes between this gate's last champion read and its alias move: the newer champion
    is restored right after."""
    v1, v2, v3 = register_fakes(tmp_path, sqlite_uri, 3, [20.0, 25.0, 26.0])
    promote("relightful-stage3", quality_scorer(), CFG, version=v1)
    real = make_client(sqlite_uri)

    class Racing:
        def __init__(self):
            self.fired = False

        def __getattr__(self, name):
            return getattr(real, name)

        def set_registered_model_alias(self, name, alias, version):
            if not self.fired and alias == CHAMPION and version == v2:
                self.fired = True
                assert promote("relightful-stage3", quality_scorer(), CFG, version=v3).champion_after == v3
            return real.set_registered_model_alias(name, alias, version)

    racing = Racing()
    result = promote("relightful-stage3", quality_scorer(), CFG, version=v2, client=racing)
    assert racing.fired and result.decision == "champion" and result.champion_after == v3
    assert str(real.get_model_version_by_alias("relightful-stage3", CHAMPION).version) == v3


def test_promote_command_scores_real_models_on_held_out_pairs(rendered_pairs, tmp_path, sqlite_uri, capsys):
    """`relightful promote` wired to relightful.evaluation.holdout_scores, on two real micro models."""
    import torch

    sampling = {"sampling": {"steps": 1, "image_guidance": 1.0, "lighting_guidance": 1.0}}  # as the tiny profile's
    for seed in (0, 1):
        torch.manual_seed(seed)
        folder = tmp_path / f"model{seed}"
        RelightModel(micro_model_config()).save_pretrained(folder, extra=sampling)
        with RunTracker.start("train-stage3") as run:
            register_stage_model(3, folder, run, {"data_version": "d", "git_commit": "c"})
    args = ["promote", "--pairs", str(rendered_pairs), "--set", "max_pairs=3", "--set", "metric=fg_psnr", "--quiet"]
    assert main(args) == 0  # the latest version (2), no champion yet
    assert "promote relightful-stage3 version 2: champion (no champion yet)" in capsys.readouterr().out
    assert main([*args, "--version", "1"]) == 0
    out = capsys.readouterr().out
    assert "version 1: challenger (older than champion 2" in out
    client = make_client(sqlite_uri)
    tags = client.get_model_version("relightful-stage3", "1").tags
    psnr, champion_psnr = float(tags["promotion.metrics.fg_psnr"]), float(tags["promotion.champion_metrics.fg_psnr"])
    assert 0 < psnr < 100 and 0 < champion_psnr < 100 and psnr != champion_psnr
    assert main([*args, "--version", "1"]) == 0 and "unchanged" in capsys.readouterr().out
    assert main([*args, "--version", "7"]) == 1  # no such version: a clear error, exit 1
    assert "relightful-stage3" in capsys.readouterr().err
    # the candidate named by its folder: the version registered from those files
    assert main([*args, "--model", str(tmp_path / "model0")]) == 0
    assert "promote relightful-stage3 version 1: unchanged" in capsys.readouterr().out
    RelightModel(micro_model_config()).save_pretrained(tmp_path / "unregistered", extra=sampling)
    assert main([*args, "--model", str(tmp_path / "unregistered")]) == 1
    assert "no version of relightful-stage3 was registered from this folder" in capsys.readouterr().err


# --- S3 ------------------------------------------------------------------------------------------------------------

def test_s3_upload_download_verifies_checksums(aws, tmp_path):
    from relightful.tracking import s3

    src = tmp_path / "w.safetensors"
    src.write_bytes(os.urandom(50_000))
    obj = s3.upload_file(src, BUCKET, "models/w.safetensors", max_attempts=3)
    assert obj.sha256 == hashlib.sha256(src.read_bytes()).hexdigest() and obj.size == 50_000
    raw = boto3.client("s3", endpoint_url=aws)
    head = raw.head_object(Bucket=BUCKET, Key="models/w.safetensors")
    assert head["Metadata"]["sha256"] == obj.sha256
    dst = tmp_path / "down" / "w.safetensors"
    s3.download_file(BUCKET, "models/w.safetensors", dst)
    assert dst.read_bytes() == src.read_bytes()
    # overwritten behind our back, keeping the recorded checksum: refused, destination untouched
    raw.put_object(Bucket=BUCKET, Key="models/w.safetensors", Body=b"x" * 50_000, Metadata={"sha256": obj.sha256})
    with pytest.raises(s3.ChecksumMismatch, match=f"s3://{BUCKET}/models/w.safetensors: downloaded bytes"):
        s3.download_file(BUCKET, "models/w.safetensors", dst)
    assert dst.read_bytes() == src.read_bytes() and [p.name for p in dst.parent.iterdir()] == ["w.safetensors"]
    raw.put_object(Bucket=BUCKET, Key="models/w.safetensors", Body=b"y")  # no checksum at all
    with pytest.raises(s3.ChecksumMismatch, match="no sha256 metadata"):
        s3.download_file(BUCKET, "models/w.safetensors", dst)


def test_s3_model_folder_round_trip(aws, model_dir, tmp_path):
    from relightful.tracking import s3

    sent = s3.upload_folder(model_dir, BUCKET, "cluster/stage1/")
    assert sorted(o.key for o in sent) == sorted(f"cluster/stage1/{k}" for k in folder_bytes(model_dir))
    s3.download_folder(BUCKET, "cluster/stage1", tmp_path / "stage1")
    assert folder_bytes(tmp_path / "stage1") == folder_bytes(model_dir)
    with pytest.raises(FileNotFoundError, match="no objects"):
        s3.download_folder(BUCKET, "cluster/none", tmp_path / "x")


def test_s3_retries_up_to_max_attempts(aws, tmp_path, monkeypatch):
    from botocore.exceptions import EndpointConnectionError

    from relightful.tracking import s3

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens
    client = s3.make_client(max_attempts=3, retry_mode="standard")
    sends: list = []
    client.meta.events.register("before-send.s3.HeadObject", lambda **kw: sends.append(1))
    with pytest.raises(EndpointConnectionError):
        client.head_object(Bucket=BUCKET, Key="k")
    assert len(sends) == 3
    with pytest.raises(ValueError, match="retry_mode"):
        s3.make_client(retry_mode="sometimes")


def test_mlflow_artifacts_in_s3_proxied_and_direct(aws, tmp_path, monkeypatch):
    raw = boto3.client("s3", endpoint_url=aws)
    artifact = tmp_path / "report.json"
    artifact.write_text('{"fg_psnr": 30.0}')
    # proxied: the server writes to s3://BUCKET/mlflow; the client only talks HTTP
    port, ctx = mlflow_server(tmp_path, f"s3://{BUCKET}/mlflow", MLFLOW_S3_ENDPOINT_URL=aws, **AWS_ENV)
    with ctx:
        uri = f"http://127.0.0.1:{port}"
        with RunTracker.start("evaluate", uri=uri) as run:
            run.log_artifact(artifact, "eval")
        keys = [o["Key"] for o in raw.list_objects_v2(Bucket=BUCKET, Prefix="mlflow/").get("Contents", [])]
        assert any(k.endswith(f"{run.run_id}/artifacts/eval/report.json") for k in keys), keys
        back = mlflow.artifacts.download_artifacts(run_id=run.run_id, artifact_path="eval/report.json",
                                                   tracking_uri=uri, dst_path=str(tmp_path / "proxied"))
        assert Path(back).read_text() == artifact.read_text()
    # direct: a client-side store whose experiment keeps artifacts in S3
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", aws)
    local = f"sqlite:///{tmp_path / 'direct.db'}"
    make_client(local).create_experiment("relightful", artifact_location=f"s3://{BUCKET}/direct")
    with RunTracker.start("evaluate", uri=local) as run:
        run.log_artifact(artifact, "eval")
    obj = raw.get_object(Bucket=BUCKET, Key=f"direct/{run.run_id}/artifacts/eval/report.json")
    assert obj["Body"].read() == artifact.read_bytes()


# --- DVC -----------------------------------------------------------------------------------------------------------

def test_dvc_push_pull_through_s3_and_lock_lineage(aws, rendered_pairs, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "GIT_CEILING_DIRECTORIES": str(tmp_path)}
    env.pop("AWS_ENDPOINT_URL")  # the remote's endpointurl must be what DVC uses

    def run(*cmd: str) -> str:
        proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{cmd}: {proc.stdout[-2000:]} {proc.stderr[-2000:]}"
        return proc.stdout

    dvc = str(BIN / "dvc")
    run("git", "init", "-q")
    run(dvc, "init", "-q")
    pairs = pairs_copy(rendered_pairs, repo / "pairs")
    original = folder_bytes(pairs)
    run(dvc, "add", "-q", "pairs")
    run(dvc, "remote", "add", "-d", "s3", f"s3://{BUCKET}/dvc")
    run(dvc, "remote", "modify", "s3", "endpointurl", aws)
    assert "secret" not in (repo / ".dvc" / "config").read_text().lower()  # credentials stay in the environment
    run(dvc, "push", "-q")
    keys = [o["Key"] for o in boto3.client("s3", endpoint_url=aws).list_objects_v2(
        Bucket=BUCKET, Prefix="dvc/").get("Contents", [])]
    assert len(keys) == len(original) + 1  # every file and the folder listing
    shutil.rmtree(pairs)
    shutil.rmtree(repo / ".dvc" / "cache")
    run(dvc, "pull", "-q")
    assert folder_bytes(pairs) == original

    # lineage: the md5 DVC records for the folder in dvc.lock is the data version
    run(dvc, "stage", "add", "-q", "-n", "consume", "-d", "pairs", "true")
    run(dvc, "repro", "-q")
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    recorded = lock["stages"]["consume"]["deps"][0]["md5"]
    assert recorded == yaml.safe_load((repo / "pairs.dvc").read_text())["outs"][0]["md5"]
    v = data_version(pairs, repo / "dvc.lock")
    assert (v.value, v.source) == (recorded, "dvc.lock")
    drop_a_row(pairs)  # changed outside DVC: the lock no longer describes it
    assert data_version(pairs, repo / "dvc.lock").source == "manifest"


def test_data_jobs_log_a_run_with_their_config_and_reports(workspace, sqlite_uri, monkeypatch):
    """Every job logs a run: ingest-hdr and render-pairs record their params block, report and its numbers."""
    monkeypatch.chdir(workspace["root"])
    rig = str(workspace["rig"])
    assert main(["ingest-hdr", "--input", str(workspace["hdri"]), "--output", str(workspace["envmaps"]), "--rig", rig,
                 "--quiet", "--track", "--set", "height=16"]) == 0
    assert main(["render-pairs", "--subjects", str(workspace["subjects"]), "--rig", rig, "--envmaps",
                 str(workspace["envmaps"]), "--out", str(workspace["pairs"]), "--quiet", "--track", "--set", "size=16",
                 "--set", "weights_height=8", "--set", "panorama_height=8", "--set", "plan.pairs_per_subject=4"]) == 0
    assert main(["ingest-hdr", "--input", str(workspace["hdri"]), "--output", str(workspace["envmaps"]), "--rig", rig,
                 "--quiet", "--no-track", "--set", "height=16"]) == 0  # not logged
    client = make_client(sqlite_uri)
    runs = {r.info.run_name: r for r in client.search_runs(
        [client.get_experiment_by_name("relightful").experiment_id])}
    assert sorted(runs) == ["ingest-hdr", "render-pairs"]
    render = runs["render-pairs"]
    assert render.data.params["render_pairs.size"] == "16" and render.data.params["out"] == str(workspace["pairs"])
    n_pairs = json.loads((workspace["pairs"] / "report.json").read_text())["n_pairs"]
    assert render.data.metrics["n_pairs"] == n_pairs > 0
    assert [f.path for f in client.list_artifacts(render.info.run_id, "reports")] == ["reports/report.json"]
    assert runs["ingest-hdr"].data.params["ingest_hdr.height"] == "16"


def test_unreachable_store_check_is_bounded_redacted_and_names_the_setting(monkeypatch):
    """What `train` runs before training, against a dead server whose URI carries a password: it fails within the
    CLI's retry bounds, names the URI without the password, and says which setting to raise."""
    import time

    from relightful.tracking.jobs import check_tracking
    from relightful.tracking.http import HTTP_BOUNDS, http_retry_bounds

    for key in HTTP_BOUNDS:
        monkeypatch.delenv(key, raising=False)
    port = free_port()
    start = time.monotonic()
    with http_retry_bounds(), pytest.raises(TrackingError) as info:
        check_tracking(f"http://mlflow-user:pw-9f8e7d@127.0.0.1:{port}")
    assert time.monotonic() - start < 30
    message = str(info.value)
    assert message.startswith(f"MLflow tracking at http://***@127.0.0.1:{port}: the tracking store cannot be reached")
    assert "pw-9f8e7d" not in message and "mlflow-user" not in message
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES=2" in message and "raise these settings" in message
    assert not any(key in os.environ for key in HTTP_BOUNDS)

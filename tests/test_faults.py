"""Faults survived (issue 16, item 3), with real processes and real signals: training SIGKILLed while it writes a
checkpoint, the MLflow server killed while a job trains, the S3 endpoint gone during `dvc push`. Each re-run
finishes with the same result as a run that was never interrupted."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from conftest import micro_model_config
from services import clean_env, free_port, serve

BIN = Path(sys.executable).parent


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _params(path: Path, steps: int) -> Path:
    def lists(x):
        return {k: lists(v) for k, v in x.items()} if isinstance(x, dict) else list(x) if isinstance(x, tuple) else x

    train = {"steps": steps, "log_every": 1, "checkpoint_every": 1, "keep_checkpoints": 2, "validate_every": 0,
             "prediction_type": "sample", "zero_snr": True, "sampling": {"steps": 1},
             "optim": {"lr": 2e-3, "warmup_steps": 1}, "deepspeed": {"micro_batch": 4}}
    model = lists(dataclasses.asdict(micro_model_config()))
    path.write_text(yaml.safe_dump({"profile": "micro", "micro": {"model": model, "train": train,
                                                                  "train_stage1": {}}}))
    return path


def _train_cmd(root: Path, pairs: Path, steps: int, *extra: str) -> list[str]:
    return [str(BIN / "python"), "-m", "relightful", "train", "--stage", "1", "--pairs", str(pairs),
            "--out", str(root / "model"), "--run-dir", str(root / "run"), "--cache", str(root / "cache"),
            "--params", str(_params(root / "params.yaml", steps)), "--lock", str(root / "dvc.lock"), "--quiet", *extra]


def _env(**extra: str) -> dict[str, str]:
    return clean_env(RELIGHTFUL_TRACKING="0", HF_HUB_OFFLINE="1", MLFLOW_DISABLE_TELEMETRY="true", **extra)


def _run(cmd: list[str], env: dict[str, str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _kill_when(proc: subprocess.Popen, seen, timeout: float = 300) -> bool:
    """SIGKILL `proc` as soon as `seen()` is true (polled every millisecond); False when it ended first."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if seen():
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            return True
        time.sleep(0.001)
    return False


# --- training killed while it writes a checkpoint ------------------------------------------------------------------

def test_training_killed_during_a_checkpoint_write_resumes_to_identical_outputs(rendered_pairs, tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    for root in (whole, killed):
        root.mkdir()
    env = _env()
    done = _run(_train_cmd(whole, rendered_pairs, 6), env, whole)
    assert done.returncode == 0, done.stderr[-3000:]

    proc = subprocess.Popen(_train_cmd(killed, rendered_pairs, 6), env=env, cwd=killed,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    checkpoints = killed / "run" / "checkpoints"
    # the temp folder of the 3rd checkpoint exists only while that checkpoint is being written
    assert _kill_when(proc, lambda: (checkpoints / ".step-00000003.tmp").exists()), "training ended before the kill"
    assert not (killed / "model").exists()
    again = _run(_train_cmd(killed, rendered_pairs, 6), env, killed)
    assert again.returncode == 0, again.stderr[-3000:]
    assert folder_bytes(killed / "model") == folder_bytes(whole / "model")
    assert not list(checkpoints.glob(".*.tmp"))  # the killed write's temp folder is gone


def test_a_checkpoint_replaced_when_killed_falls_back_to_the_newest_complete_one(tmp_path):
    """`latest` naming a folder that a kill left missing (between removing the old folder of that name and renaming
    the new one into place) resumes from the newest complete checkpoint instead of failing."""
    from relightful.training.checkpoint import latest_checkpoint

    root = tmp_path / "run" / "checkpoints"
    for step in (2, 4):
        (root / f"step-{step:08d}").mkdir(parents=True)
        for name in ("state.json", "trainable.safetensors"):
            (root / f"step-{step:08d}" / name).write_text("x")
    (root / "latest").write_text("step-00000006")
    (root / ".step-00000006.tmp").mkdir()
    assert latest_checkpoint(tmp_path / "run") == root / "step-00000004"
    shutil.rmtree(root / "step-00000004")
    shutil.rmtree(root / "step-00000002")
    with pytest.raises(ValueError, match="latest: points to step-00000006, which is not a complete checkpoint"):
        latest_checkpoint(tmp_path / "run")


# --- the MLflow server killed during training ----------------------------------------------------------------------

def _mlflow_server(root: Path, port: int):
    cmd = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "artifacts")]
    return serve(cmd, clean_env(), root / f"server-{time.monotonic_ns()}.log", f"http://127.0.0.1:{port}/health")


def test_mlflow_server_killed_during_training(rendered_pairs, tmp_path):
    """The model folder is still written, the job exits non-zero naming the tracking URI, and once the server is
    back a re-run logs and registers (resuming the finished run, not training again)."""
    from relightful.tracking.runs import make_client

    store, work = tmp_path / "store", tmp_path / "work"
    store.mkdir()
    work.mkdir()
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    env = _env(MLFLOW_TRACKING_URI=uri, MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="5")
    cmd = _train_cmd(work, rendered_pairs, 8, "--track")
    with _mlflow_server(store, port) as server:
        proc = subprocess.Popen(cmd, env=env, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        checkpoints = work / "run" / "checkpoints"
        deadline = time.monotonic() + 300
        while not (checkpoints / "latest").is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        os.killpg(server.pid, signal.SIGKILL)  # the store is gone while the job trains
        server.wait(30)
        _, err = proc.communicate(timeout=600)
    assert proc.returncode == 1, err[-3000:]
    assert uri in err and "the model folder" in err and "is written, but not tracked" in err
    assert (work / "model" / "relightful.json").is_file()
    written = folder_bytes(work / "model")

    with _mlflow_server(store, port):
        again = _run(cmd, env, work)
        assert again.returncode == 0, again.stderr[-3000:]
        assert "registered models:/relightful-stage1/" in again.stdout
        versions = make_client(uri).search_model_versions("name='relightful-stage1'")
        assert len(versions) == 1
    assert folder_bytes(work / "model") == written  # the same weights: the finished run was resumed


# --- the S3 endpoint stopped during dvc push -----------------------------------------------------------------------

class Endpoint:
    """A TCP forwarder in front of the S3 server: `stop()` makes the endpoint vanish for clients (connections
    refused, open ones cut) while the server keeps what it stored; `start()` brings it back on the same port."""

    def __init__(self, port: int, target: int):
        self.port, self.target = port, target
        self.listener: socket.socket | None = None
        self.open: list[socket.socket] = []
        self.lock = threading.Lock()

    def start(self) -> None:
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", self.port))
        self.listener.listen(64)
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def stop(self) -> None:
        self.listener.close()
        with self.lock:
            for conn in self.open:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                conn.close()
            self.open.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            with self.lock:
                self.open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def test_s3_endpoint_stopped_during_dvc_push(tmp_path):
    """`dvc push` to an S3 endpoint that disappears half-way fails with a clear error; once it is back, a push
    completes and a fresh clone's `dvc pull` gets every file back."""
    import boto3
    import numpy as np

    keys = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    moto_port, port = free_port(), free_port()
    moto_url, url = f"http://127.0.0.1:{moto_port}", f"http://127.0.0.1:{port}"
    # two attempts per request: botocore's default of five, each with back-off, makes a push whose endpoint died
    # take minutes per remaining file before it reports (docs/tracking.md)
    env = {**clean_env(**keys), "AWS_MAX_ATTEMPTS": "2", "DVC_NO_ANALYTICS": "1",
           "GIT_CEILING_DIRECTORIES": str(tmp_path)}
    repo = tmp_path / "repo"
    data = repo / "data"
    data.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(30):  # 30 files of 1 MiB: long enough a push to cut in the middle
        (data / f"part-{i:04d}.bin").write_bytes(rng.bytes(1 << 20))

    def run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
        assert not check or result.returncode == 0, f"{cmd}: {result.stdout[-2000:]} {result.stderr[-2000:]}"
        return result

    dvc = str(BIN / "dvc")
    with serve([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(moto_port)], clean_env(), tmp_path / "moto.log",
               f"{moto_url}/moto-api/", timeout=30):
        s3 = boto3.client("s3", endpoint_url=moto_url, **{k.lower(): v for k, v in keys.items()
                                                           if k != "AWS_DEFAULT_REGION"}, region_name="us-east-1")
        s3.create_bucket(Bucket="relightful-test")
        endpoint = Endpoint(port, moto_port)
        endpoint.start()
        run("git", "init", "-q")
        run(dvc, "init", "-q")
        run(dvc, "add", "-q", "data")
        run(dvc, "remote", "add", "-d", "s3", "s3://relightful-test/dvc")
        run(dvc, "remote", "modify", "s3", "endpointurl", url)
        run("git", "add", "-A")
        run("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "data")

        def stored() -> int:
            return s3.list_objects_v2(Bucket="relightful-test", Prefix="dvc/").get("KeyCount", 0)

        push = subprocess.Popen([dvc, "push", "-j", "2"], cwd=repo, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 120
        while stored() < 10 and push.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert push.poll() is None, "the push ended before the endpoint could be stopped"
        endpoint.stop()
        output, _ = push.communicate(timeout=600)
        partial = stored()
        assert push.returncode != 0 and 0 < partial < 31
        assert "failed to push" in output.lower() and "files failed to upload" in output, output[-2000:]
        status = run(dvc, "status", "-c", check=False)
        assert status.returncode != 0 or "new" in status.stdout or "missing" in status.stdout

        endpoint.start()
        again = run(dvc, "push", "-j", "2")
        assert stored() == 31, again.stdout  # every file and the folder listing
        clone = tmp_path / "clone"
        subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True, env=env)
        pull = subprocess.run([dvc, "pull", "-q"], cwd=clone, env=env, capture_output=True, text=True, timeout=600)
        assert pull.returncode == 0, pull.stderr[-2000:]
        assert folder_bytes(clone / "data") == folder_bytes(data)
        endpoint.stop()

"""The CPU image, built for real and run (issue 17): docker/build-local.sh builds docker/cpu.Dockerfile with podman on
a Debian base made by debootstrap (no Docker engine, no container registry), once for this module; then

- the command line answers as the image's user, offline;
- jobs run with a read-only root file system, /tmp a tmpfs and only the workspace writable, without network;
- the pipeline's own components run in the image through kfp's local DockerRunner (podman's Docker API), from
  starter-data to validate-data and one short training, and their artifacts equal what the library computes here;
- a failing component fails its run (podman 4.3's API loses exit statuses of auto-removed containers, so the runner
  keeps them: tests/image_chain.py);
- the installed packages are exactly docker/cpu-lock.txt, and a source change rebuilds only the last layers.

Marker `container`, in the default selection: CI runs it once. It needs root (debootstrap, rootful podman); it skips
only where podman cannot be had (not root, or neither podman nor apt-get) or cannot run containers here. `make install`
apt-installs podman, debootstrap and runc as root; so does this module when they are missing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pandas as pd
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
TAG = f"ghcr.io/relightful/relightful:{VERSION}-cpu"  # the README's tag: the components' default CPU image
LOCK = ROOT / "docker" / "cpu-lock.txt"
UID = 1000  # the image's user
CONTAINERS_CONF = """[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]
[engine]
runtime = "runc"
"""
TOOLS = ("podman", "debootstrap", "runc")

pytestmark = [pytest.mark.container, pytest.mark.timeout(1800)]


def _tail(done: subprocess.CompletedProcess, n: int = 6000) -> str:
    return f"exit {done.returncode}\n--- stdout\n{(done.stdout or '')[-n:]}\n--- stderr\n{(done.stderr or '')[-n:]}"


@pytest.fixture(scope="module")
def podman_env(tmp_path_factory) -> dict:
    """The environment of every podman command: CONTAINERS_CONF selects runc (crun fails on this kernel's hybrid
    cgroups) and file limits that need no CAP_SYS_RESOURCE (../shared/NOTES.md, "Containers")."""
    if os.geteuid() != 0:
        pytest.skip("the image test needs root: debootstrap makes the base, podman runs rootful")
    missing = [t for t in TOOLS if not shutil.which(t)]
    if missing:
        if not shutil.which("apt-get"):
            pytest.skip(f"{', '.join(missing)} missing and no apt-get to install them")
        apt = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *TOOLS]
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        done = subprocess.run(apt, env=env, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
            done = subprocess.run(apt, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"apt-get could not install {missing}:\n{_tail(done)}"
    conf = tmp_path_factory.mktemp("podman") / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    env = {**os.environ, "CONTAINERS_CONF": str(conf)}
    probe = subprocess.run(["podman", "info"], env=env, capture_output=True, text=True, timeout=120)
    if probe.returncode != 0:
        pytest.skip(f"podman cannot run here: {probe.stderr.strip()[-500:]}")
    return env


@pytest.fixture(scope="module")
def image(podman_env) -> str:
    """docker/build-local.sh, as a user runs it: the base once per machine, then the layers podman has not cached."""
    start = time.perf_counter()
    done = subprocess.run(["bash", str(ROOT / "docker" / "build-local.sh")], cwd=ROOT,
                          env={**podman_env, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, f"docker/build-local.sh failed:\n{_tail(done)}"
    summary = [ln for ln in done.stdout.splitlines() if ln.startswith("== built")]
    print(f"{summary[-1] if summary else ''} [{time.perf_counter() - start:.0f} s in this test]")
    return TAG


def podman(env: dict, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["podman", *args], env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert done.returncode == 0, f"podman {' '.join(args[:6])} ...:\n{_tail(done)}"
    return done


def test_command_line_as_the_image_user(image, podman_env):
    config = json.loads(podman(podman_env, "image", "inspect", image).stdout)[0]["Config"]
    assert config["User"] == f"{UID}:{UID}" and config["WorkingDir"] == "/workspace"
    assert "HF_HUB_OFFLINE=1" in config["Env"] and not config.get("Entrypoint")
    assert config["Cmd"] == ["relightful", "--help"]
    run = ("run", "--rm", "--pull=never", "--network=none", "-e", "HF_HUB_OFFLINE=1", image)
    assert podman(podman_env, *run, "id", "-u").stdout.strip() == str(UID)
    assert podman(podman_env, *run, "relightful", "--version").stdout.strip() == f"relightful {VERSION}"
    helped = podman(podman_env, *run, "relightful", "--help").stdout
    for job in ("starter-data", "synthetic-stage", "ingest-hdr", "render-pairs", "validate-data", "train", "harmonize",
                "serve", "fetch-weights", "retrain-check"):
        assert f"    {job}" in helped, job
    assert podman(podman_env, "run", "--rm", "--pull=never", image).stdout == helped  # the image's default command


READ_ONLY_SCRIPT = """set -e
args="--params /opt/relightful/params.yaml --profile smoke --no-track --quiet"
relightful synthetic-stage --out /workspace/stage --set n_subjects=1 $args
relightful starter-data --out /workspace/hdri --set 'sources=[pmndrs,blender,sky]' $args
relightful ingest-hdr --input /workspace/hdri --rig /workspace/stage/rig.json --output /workspace/envmaps $args
relightful fetch-weights --isnet
for d in / /etc /usr /opt/venv /opt/relightful /opt/relightful/weights /home/relightful /var/tmp /run /workspace /tmp; do
  if touch "$d/.probe" 2>/dev/null; then echo "writable $d"; else echo "read-only $d"; fi
done
"""


def test_jobs_run_on_a_read_only_root(image, podman_env, tmp_path):
    """The pods' hardening: read-only root, /tmp an emptyDir (here a tmpfs) with TMPDIR and HOME in it, every
    capability dropped, no network. OpenCV decodes EXR through /tmp; the starter set and the segmenter's weights
    come from the image (`fetch-weights` only checks their hashes)."""
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    os.chown(workspace, UID, UID)
    done = podman(podman_env, "run", "--rm", "--pull=never", "--read-only", "--read-only-tmpfs=false",
                  "--tmpfs", "/tmp:rw,mode=1777,size=1g", "--volume", f"{workspace}:/workspace", "--network=none",
                  "--cap-drop=all", "--security-opt=no-new-privileges", "-e", "TMPDIR=/tmp", "-e", "HOME=/tmp/home",
                  "-e", "HF_HUB_OFFLINE=1", image, "sh", "-c", READ_ONLY_SCRIPT, timeout=600)
    probes = dict(reversed(ln.split(" ", 1)) for ln in done.stdout.splitlines()
                  if ln.startswith(("writable ", "read-only ")))
    assert {d for d, state in probes.items() if state == "writable"} == {"/workspace", "/tmp"}, probes
    assert "sha256 verified" in done.stdout  # the baked weights, offline
    manifest = pd.read_parquet(workspace / "envmaps" / "manifest.parquet")
    sources = json.loads((workspace / "hdri" / "SOURCES.json").read_text())
    assert len(manifest) == 33 and len(list((workspace / "hdri").glob("*.exr"))) == 33, sources
    assert {m.split("-")[0] for m in manifest["map_id"]} == {"pmndrs", "blender", "sky"}
    assert (workspace / "stage" / "rig.json").is_file()


def _image_chain(mode: str, root: Path, env: dict, *extra: str) -> dict:
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "image_chain.py"), mode, str(root), "--image", TAG,
                           *extra], cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, _tail(done)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["log"] = done.stdout
    result["containers"] = [json.loads(ln) for ln in (root / "containers.jsonl").read_text().splitlines()]
    return result


@pytest.fixture(scope="module")
def docker_host(podman_env, tmp_path_factory):
    """podman's Docker API on a socket of its own, for the docker SDK of kfp's DockerRunner; stopped afterwards."""
    sock = tmp_path_factory.mktemp("podman-api") / "podman.sock"
    log = sock.with_name("service.log").open("w")
    service = subprocess.Popen(["podman", "system", "service", "--time=0", f"unix://{sock}"], env=podman_env,
                               stdout=log, stderr=subprocess.STDOUT)
    try:
        import docker

        deadline = time.monotonic() + 60
        while True:
            try:
                docker.DockerClient(base_url=f"unix://{sock}").ping()
                break
            except Exception:  # noqa: BLE001 -- not up yet
                assert service.poll() is None and time.monotonic() < deadline, sock.with_name("service.log").read_text()
                time.sleep(0.5)
        yield f"unix://{sock}"
    finally:
        service.terminate()
        try:
            service.wait(timeout=30)
        except subprocess.TimeoutExpired:
            service.kill()
            service.wait()
        log.close()


@pytest.fixture(scope="module")
def chain_env(image, docker_host) -> dict:
    launcher = {"RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RELIGHTFUL_")) and k not in launcher}
    return {**env, "DOCKER_HOST": docker_host, "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def chain(chain_env, tmp_path_factory) -> tuple[Path, Path, dict]:
    """(root, run folder, result) of the chain in containers; the pipeline root belongs to the image's user."""
    root = tmp_path_factory.mktemp("image-chain")
    (root / "pipeline-root").mkdir()
    os.chown(root / "pipeline-root", UID, UID)
    result = _image_chain("chain", root, chain_env, "--train")
    print(f"chain in containers: {result['seconds']} s, {len(result['containers'])} containers")
    assert result["error"] is None, result["log"][-6000:]
    return root, Path(result["run"]), result


def _task(run: Path, name: str) -> Path:
    found = [p for p in run.rglob(name) if (p / "executor_output.json").is_file()]
    assert len(found) == 1, f"{name}: {found}"
    return found[0]


def test_components_run_in_the_image(chain, tmp_path):
    from relightful.config import load_config
    from relightful.data.render_pairs import RenderConfig, render_pairs
    from relightful.io import load_tensors
    from relightful.lighting import LedRig
    from relightful.models.relight_model import RelightModel

    _, run, result = chain
    steps = ["starter_data", "synthetic_stage", "ingest_hdr", "worker_indices", "render_pairs_part", "merge_pairs",
             "validate_data", "train_stage"]
    ran = [c for c in result["containers"] if any(s in " ".join(c["command"]) for s in steps)]
    assert len(ran) == len(steps) + 1 and all(c["status"] == 0 for c in ran), result["containers"]  # 2 renderers
    # the pairs rendered in the image equal those the library renders here from the same stage and maps
    stage, envmaps = _task(run, "synthetic-stage") / "lightstage", _task(run, "ingest-hdr") / "envmaps"
    assert len(pd.read_parquet(envmaps / "manifest.parquet")) == 8  # the smoke profile's 8 skies
    config = load_config(RenderConfig, ROOT / "params.yaml", "render_pairs", profile="smoke")
    here = render_pairs(stage / "subjects", LedRig.from_json(stage / "rig.json"), envmaps, tmp_path / "here", config,
                        progress=False)
    merged = _task(run, "merge-pairs") / "pairs"
    pd.testing.assert_frame_equal(pd.read_parquet(merged / "manifest.parquet"), here)
    shards = sorted((tmp_path / "here").glob("shard-*.safetensors"))
    assert shards
    for shard in shards:
        a, b = load_tensors(shard), load_tensors(merged / shard.name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), shard.name
    checked = _task(run, "validate-data")
    assert json.loads((checked / "validation" / "data_validation.json").read_text())["success"] is True
    assert "Passed checks" in (checked / "report").read_text()
    # one short training step of stage 1: a model folder that the library loads here, its metrics logged
    trained = _task(run, "train-stage")
    model = RelightModel.from_pretrained(trained / "model")
    assert sum(p.numel() for p in model.parameters()) > 0
    assert json.loads((trained / "model" / "relightful.json").read_text())["format"] == "relightful-model"
    outputs = json.loads((trained / "executor_output.json").read_text())["artifacts"]
    metrics = outputs["metrics"]["artifacts"][0]["metadata"]
    assert metrics["steps"] == 2 and metrics["loss"] > 0 and outputs["model"]["artifacts"][0]["metadata"]["stage"] == 1


def test_a_failing_component_fails_its_run(chain, chain_env):
    """ingest-hdr on a corrupt map exits 1: the task fails, the run fails, and the step after it never starts."""
    root, run, _ = chain
    failing = root / "failing"
    (failing / "pipeline-root").mkdir(parents=True)
    os.chown(failing / "pipeline-root", UID, UID)
    lightstage = failing / "pipeline-root" / "lightstage"
    shutil.copytree(_task(run, "synthetic-stage") / "lightstage", lightstage)
    result = _image_chain("fail", failing, chain_env, "--lightstage", str(lightstage))
    assert result["error"] and "ingest-hdr" in result["error"] and "FAILURE" in result["error"], result["error"]
    ingest = [c for c in result["containers"] if "ingest_hdr" in " ".join(c["command"])]
    assert [c["status"] for c in ingest] == [1], result["containers"]
    assert not [c for c in result["containers"] if "worker_indices" in " ".join(c["command"])]
    assert "broken.exr: cannot read the image header" in result["log"]  # the job's message, in the container's log
    # the Docker API itself reports a container's exit status when nothing removes it first
    import docker

    client = docker.DockerClient(base_url=chain_env["DOCKER_HOST"])
    container = client.containers.run(TAG, ["sh", "-c", "exit 3"], detach=True, network_mode="none")
    try:
        assert container.wait()["StatusCode"] == 3
    finally:
        container.remove(force=True)


def test_packages_are_the_lock(image, podman_env):
    """Every build of a commit installs the same set: docker/cpu-lock.txt, the CPU torch wheel and the package."""
    frozen = podman(podman_env, "run", "--rm", "--pull=never", "--network=none", image,
                    "pip", "freeze", "--all", "--exclude", "pip", "--exclude", "relightful").stdout.splitlines()
    locked = [ln for ln in LOCK.read_text().splitlines() if ln and not ln.startswith("#")]
    assert "torch==2.13.0+cpu" in frozen
    assert sorted(set(frozen) - {"torch==2.13.0+cpu"}) == sorted(locked), (
        "the image's packages differ from docker/cpu-lock.txt (run docker/build-local.sh --update-lock after a "
        f"dependency change): extra {sorted(set(frozen) - set(locked))}, missing {sorted(set(locked) - set(frozen))}")
    assert not [p for p in frozen if p.lower().startswith(("nvidia-", "triton"))]
    shown = podman(podman_env, "run", "--rm", "--pull=never", "--network=none", image, "pip", "show", "relightful").stdout
    assert f"Version: {VERSION}" in shown


def _context_copy(dest: Path) -> Path:
    """The repository's files as git sees them (tracked and new, not ignored), without .git."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


def test_a_source_change_rebuilds_only_the_last_layers(image, podman_env, tmp_path):
    context = _context_copy(tmp_path / "context")
    source = context / "src" / "relightful" / "__init__.py"
    source.write_text(source.read_text() + "\n# touched by tests/test_image.py\n")
    tag = "localhost/relightful-layer-test:latest"
    start = time.perf_counter()
    done = subprocess.run(["bash", str(context / "docker" / "build-local.sh"), "--tag", tag], cwd=context,
                          env={**podman_env, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=900)
    seconds = time.perf_counter() - start
    try:
        assert done.returncode == 0, _tail(done)
        steps = _build_steps(done.stdout)
        cached = [s for s, hit in steps if hit]
        rebuilt = [s for s, hit in steps if not hit]
        first = next(i for i, (s, _) in enumerate(steps) if s.startswith("COPY src "))
        assert all(hit for _, hit in steps[:first]), rebuilt  # base, lock, torch, starter set: reused
        assert rebuilt[0].startswith("COPY src ") and any("cpu-lock.txt" in s for s in cached)
        print(f"rebuild after touching {source.relative_to(context)}: {seconds:.0f} s, "
              f"{len(rebuilt)} of {len(steps)} steps run")
    finally:
        podman(podman_env, "rmi", "--force", tag, check=False)


def _build_steps(out: str) -> list[tuple[str, bool]]:
    """(instruction, cache hit) of each step of the final stage in podman build's output. A step that produces no
    layer (ARG, ENV, USER ...) counts as a hit when the layer before it was one."""
    steps: list[tuple[str, bool]] = []
    lines = out.splitlines()
    for i, line in enumerate(lines):
        stage = re.match(r"\[(\d+)/(\d+)\] STEP ", line)
        if stage and stage.group(1) == stage.group(2) and ": " in line:
            instruction = line.split(": ", 1)[1]
            if instruction.startswith("FROM "):
                continue
            hit = i + 1 < len(lines) and lines[i + 1].startswith("--> Using cache")
            steps.append((instruction, hit))
    return steps

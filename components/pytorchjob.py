"""Training across nodes from a pipeline step: the step writes a Kubeflow Training Operator (v1) `PyTorchJob` whose
pods run `torchrun -m relightful.cli train ...` on the shared workspace volume, waits for it, and reads the model
back. Runs inside the component's container (in-cluster credentials of the `relightful-pipeline` service account),
or wherever a kubeconfig points.

The pods get from the operator MASTER_ADDR/MASTER_PORT and PET_NNODES/PET_NODE_RANK/PET_NPROC_PER_NODE, which
torchrun reads; the same pod layout as k8s/training/base/pytorchjob-train.yaml.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

GROUP, VERSION, PLURAL = "kubeflow.org", "v1", "pytorchjobs"
NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class PyTorchJobFailed(RuntimeError):
    """The job ended in the Failed condition (its message says why), or did not end in time."""


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
    shm_size: str = "16Gi"


def manifest(job: TrainJob) -> dict:
    """The PyTorchJob object for `job`."""
    resources = {"limits": {"nvidia.com/gpu": job.nproc_per_node}} if job.gpus else {}
    container = {
        "name": "pytorch",  # the operator's required container name
        "image": job.image,
        "command": ["torchrun"],
        "args": ["--master-addr=$(MASTER_ADDR)", "--master-port=$(MASTER_PORT)", *job.args],
        "ports": [{"name": "pytorchjob-port", "containerPort": 23456}],
        "envFrom": [{"configMapRef": {"name": job.config_map, "optional": True}},
                    {"secretRef": {"name": job.secret, "optional": True}}],
        "resources": resources,
        "volumeMounts": [{"name": "workspace", "mountPath": job.workspace}, {"name": "dshm", "mountPath": "/dev/shm"}],
    }
    pod = {"spec": {
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000},
        "containers": [container],
        "volumes": [{"name": "workspace", "persistentVolumeClaim": {"claimName": job.workspace_pvc}},
                    {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": job.shm_size}}],
    }}
    if job.gpus:
        pod["spec"]["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    replicas = {"Master": {"replicas": 1, "restartPolicy": "OnFailure", "template": pod}}
    if job.num_nodes > 1:
        replicas["Worker"] = {"replicas": job.num_nodes - 1, "restartPolicy": "OnFailure", "template": pod}
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

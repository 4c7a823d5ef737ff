"""The kfp v2 DAG of the whole workflow, the same chain as dvc.yaml, with the retrain decision before training:

    starter-data ─┬─ ingest-hdr ─ render-pairs ×N workers ─ merge ─ validate ─ retrain-check
    synthetic ────┘                                                  natural-starter
    if retrain-check says "retrain" (the data changed, no champion yet, or force_retrain):
        train 1 ─ train 2 ─ augment ─ train 3 ─ evaluate ─ promote (when tracking)

Parameters are those of params.yaml: `params` is one profile's block (the compile-time default is the profile
named when compiling) and `profile` its name; `<data|infer|train>_<cpu|memory>_<request|limit>` size the steps
(RESOURCES). Caching is explicit per step (CACHED): on for the deterministic data steps, so a scheduled run whose
params did not change reuses their outputs and the first step it runs is retrain-check. Cluster wiring
(kfp-kubernetes): every step gets the MLflow/S3 settings from the ConfigMap `relightful-config`, the S3 keys from the
Secret `relightful-s3` and its MLflow user (MLFLOW_TRACKING_USERNAME/PASSWORD: the server runs MLflow's basic-auth
app) from the Secret `relightful-mlflow-client`, and an emptyDir at /tmp with TMPDIR=/tmp and HOME=/tmp/home (the
pods' root file system may be read-only); training mounts the volume `relightful-workspace` (checkpoints survive a
retried task) and, with `gpus`, the node's GPUs and a memory-backed /dev/shm. The local runner ignores resources,
caching and the cluster wiring, not the condition; `make_pipeline(..., local=True)` (pipelines.run_local) leaves out
TMPDIR and HOME, which it would apply to this machine's processes.
"""


from pathlib import Path

import yaml
from kfp import dsl, kubernetes

from components.augment import augment
from components.data import (ingest_hdr, merge_pairs, natural_starter, render_pairs_part, starter_data,
                             synthetic_stage, validate_data, worker_indices)
from components.evaluation import evaluate, promote
from components.images import CPU_IMAGE, CUDA_IMAGE
from components.job import RETRAIN
from components.registry import retrain_check
from components.training import train_stage, train_stage_across_nodes

PIPELINE_NAME = "relightful"
PARAMS_YAML = Path(__file__).resolve().parents[1] / "params.yaml"
CONFIG_MAP = "relightful-config"
CONFIG_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL")
S3_SECRET = "relightful-s3"
SECRET_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
# the application's MLflow user, sent as HTTP basic auth by MLflow's client; required: without it the step cannot
# start (CreateContainerConfigError naming the Secret) instead of failing later on a 401
MLFLOW_SECRET = "relightful-mlflow-client"
MLFLOW_SECRET_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
# every step's writable scratch: an emptyDir at /tmp (OpenCV decodes EXR/HDR through temporary files, MLflow downloads
# models there, torch and DeepSpeed keep caches under HOME), as in the project's other pods
TMP_VOLUME, TMP, TMP_SIZE = "tmp", "/tmp", "20Gi"
TMP_ENV = {"TMPDIR": TMP, "HOME": f"{TMP}/home"}
WORKSPACE_PVC = "relightful-workspace"
WORKSPACE = "/workspace"
MODEL_NAME = "relightful-stage3"


def profile_params(profile: "str | None" = None, path: Path = PARAMS_YAML) -> "tuple[str, dict]":
    """(name, block) of a profile of params.yaml (default: its active profile), without its null values.

    A pipeline parameter cannot hold null, and every key params.yaml leaves null means "the job's default", which
    is null too (tests/test_pipeline.py checks it), so leaving them out changes nothing.
    """
    params = yaml.safe_load(path.read_text())
    name = profile or params.get("profile", "tiny")
    if name not in params:
        raise KeyError(f"{path}: no profile {name!r}")
    return name, without_nulls(params[name])


def without_nulls(block: dict) -> dict:
    return {k: without_nulls(v) if isinstance(v, dict) else v for k, v in block.items() if v is not None}


def _cluster_env(task: dsl.PipelineTask, local: bool = False) -> dsl.PipelineTask:
    """Settings, credentials and the /tmp emptyDir of every step. `local`: without TMPDIR/HOME, the only part of this
    wiring that kfp's local runner applies (to processes of this machine, whose HOME holds caches)."""
    kubernetes.use_config_map_as_env(task, CONFIG_MAP, {k: k for k in CONFIG_ENV}, optional=True)
    kubernetes.use_secret_as_env(task, S3_SECRET, {k: k for k in SECRET_ENV}, optional=True)
    kubernetes.use_secret_as_env(task, MLFLOW_SECRET, {k: k for k in MLFLOW_SECRET_ENV})
    kubernetes.empty_dir_mount(task, volume_name=TMP_VOLUME, mount_path=TMP, size_limit=TMP_SIZE)
    if not local:
        for name, value in TMP_ENV.items():
            task.set_env_variable(name, value)
    return task


def _on_gpu(task: dsl.PipelineTask, count) -> dsl.PipelineTask:
    task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(count)
    kubernetes.add_toleration(task, key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")
    kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory")
    return task


# CPU and memory of each class of step, the defaults of the pipeline parameters `<class>_<cpu|memory>_<request|limit>`
# (Kubernetes quantities, as strings): `data` the data steps, retrain-check and the PyTorchJob launchers, `infer`
# augmentation, evaluation and promotion (a model's inference), `train` a training step (per pod: raise `train_*`
# with `nproc_per_node`). The compiled profile picks the set; profiles not listed get `tiny`'s.
RESOURCE_CLASSES = ("data", "infer", "train")
RESOURCES = {
    "gpu": {"data": ("4", "8", "16Gi", "16Gi"), "infer": ("8", "16", "48Gi", "48Gi"),
            "train": ("8", "16", "64Gi", "64Gi")},
    "tiny": {"data": ("1", "2", "4Gi", "4Gi"), "infer": ("2", "4", "8Gi", "8Gi"),
             "train": ("2", "4", "8Gi", "8Gi")},
}
RESOURCE_FIELDS = ("cpu_request", "cpu_limit", "memory_request", "memory_limit")

# caching, explicit per step (the component's name -> on/off). On: deterministic functions of their inputs (the data
# steps, whose cached outputs a scheduled run reuses when params did not change). Off: steps whose effect is outside
# their outputs or whose answer changes with the registry: retrain-check, training (registers versions), evaluation
# (logs to the candidate's run, tags its version), promotion (moves aliases).
CACHED = {"starter-data": True, "synthetic-stage": True, "ingest-hdr": True, "worker-indices": True,
          "render-pairs-part": True, "merge-pairs": True, "validate-data": True, "natural-starter": True,
          "augment": True, "retrain-check": False, "train-stage": False, "train-stage-across-nodes": False,
          "evaluate": False, "promote": False}
RETRAIN_ALIAS = "champion"  # retrain-check compares with relightful-stage1@champion, the champion's stage-1 model
RETRAIN_MODEL = "relightful-stage1"


def resource_defaults(profile: str) -> dict:
    """{"data_cpu_request": "1", ...}: the resource parameters' defaults for a compiled profile."""
    table = RESOURCES.get(profile, RESOURCES["tiny"])
    return {f"{cls}_{field}": value for cls in RESOURCE_CLASSES for field, value in zip(RESOURCE_FIELDS, table[cls])}


def make_pipeline(profile: str, params: dict, gpus: bool = True, num_nodes: int = 1, local: bool = False):
    """The pipeline function with `params` (the block of `profile`) as its defaults; `gpus` asks for GPUs for the
    training, augmentation, evaluation and promotion steps (off for CPU-only clusters); `num_nodes` > 1 trains each
    stage as a PyTorchJob of that many pods (`nproc_per_node` ranks each, sized by the `train_*` parameters) instead
    of in the step's own pod; `local`: for kfp's local runner (no TMPDIR/HOME of the cluster's pods).

    The run: the data steps (cached), then `retrain-check` on the light-stage pairs; everything that trains,
    evaluates or promotes runs under `dsl.If` on its answer, so a run whose data did not change trains nothing
    (`force_retrain` trains anyway)."""
    res = resource_defaults(profile)

    @dsl.pipeline(name=PIPELINE_NAME, description="Relightful Harmonization: light-stage data, retrain check, three "
                  "training stages, natural-pair augmentation, evaluation and promotion")
    def relightful_pipeline(params: dict = params, profile: str = profile, track: bool = True,
                            render_workers: int = 2, nproc_per_node: int = 1, workspace: str = WORKSPACE,
                            require_quality_bar: bool = False, force_retrain: bool = False,
                            data_cpu_request: str = res["data_cpu_request"],
                            data_cpu_limit: str = res["data_cpu_limit"],
                            data_memory_request: str = res["data_memory_request"],
                            data_memory_limit: str = res["data_memory_limit"],
                            infer_cpu_request: str = res["infer_cpu_request"],
                            infer_cpu_limit: str = res["infer_cpu_limit"],
                            infer_memory_request: str = res["infer_memory_request"],
                            infer_memory_limit: str = res["infer_memory_limit"],
                            train_cpu_request: str = res["train_cpu_request"],
                            train_cpu_limit: str = res["train_cpu_limit"],
                            train_memory_request: str = res["train_memory_request"],
                            train_memory_limit: str = res["train_memory_limit"]):
        resources = {"data": (data_cpu_request, data_cpu_limit, data_memory_request, data_memory_limit),
                     "infer": (infer_cpu_request, infer_cpu_limit, infer_memory_request, infer_memory_limit),
                     "train": (train_cpu_request, train_cpu_limit, train_memory_request, train_memory_limit)}

        def step(task: dsl.PipelineTask, kind: str = "data") -> dsl.PipelineTask:
            """Cluster settings, this class's CPU and memory, the step's caching (CACHED: a step missing there is
            an error, so a new step cannot inherit kfp's default silently)."""
            cpu_request, cpu_limit, memory_request, memory_limit = resources[kind]
            task.set_cpu_request(cpu_request).set_cpu_limit(cpu_limit)
            task.set_memory_request(memory_request).set_memory_limit(memory_limit)
            # kfp 2.17 passes a channel used only in a resource setting to the step but not to the loop or condition
            # it sits in (the step's input would dangle on the cluster): register it as an input of the step
            task.register_pipeline_channels([cpu_request, cpu_limit, memory_request, memory_limit])
            task.set_caching_options(enable_caching=CACHED[task.component_spec.name.replace("_", "-")])
            return _cluster_env(task, local)

        common = dict(params=params, profile=profile, track=track)
        hdri = step(starter_data(**common))
        stage = step(synthetic_stage(**common))
        envmaps = step(ingest_hdr(hdri=hdri.outputs["hdri"], lightstage=stage.outputs["lightstage"], **common))
        workers = step(worker_indices(num_workers=render_workers))
        with dsl.ParallelFor(items=workers.output, name="render-workers") as worker:
            part = step(render_pairs_part(lightstage=stage.outputs["lightstage"], envmaps=envmaps.outputs["envmaps"],
                                          worker=worker, num_workers=render_workers, **common))
        pairs = step(merge_pairs(parts=dsl.Collected(part.outputs["part"]), lightstage=stage.outputs["lightstage"],
                                 envmaps=envmaps.outputs["envmaps"], num_workers=render_workers, **common))
        checked = step(validate_data(envmaps=envmaps.outputs["envmaps"], pairs=pairs.outputs["pairs"], **common))
        natural = step(natural_starter(hdri=hdri.outputs["hdri"], **common))
        decision = step(retrain_check(pairs=pairs.outputs["pairs"], track=track, force=force_retrain,
                                      model_name=RETRAIN_MODEL, alias=RETRAIN_ALIAS).after(checked))

        def train(stage_number: int, data, init=None, replay=None):
            start = dict(stage=stage_number, pairs=data, workspace=workspace, nproc_per_node=nproc_per_node,
                         run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, **({} if init is None else {"init": init}),
                         **({} if replay is None else {"replay": replay}), **common)
            if num_nodes > 1:  # this step only launches and follows the job: no GPU of its own
                task = step(train_stage_across_nodes(num_nodes=num_nodes, gpus=gpus,
                                                     image=CUDA_IMAGE if gpus else CPU_IMAGE,
                                                     pod_cpu_request=train_cpu_request,
                                                     pod_cpu_limit=train_cpu_limit,
                                                     pod_memory_request=train_memory_request,
                                                     pod_memory_limit=train_memory_limit, **start), "data")
            else:
                task = step(train_stage(**start), "train")
            task.set_display_name(f"train-stage{stage_number}").set_retry(num_retries=2, backoff_duration="60s")
            kubernetes.mount_pvc(task, pvc_name=WORKSPACE_PVC, mount_path=WORKSPACE)
            return _on_gpu(task, nproc_per_node) if gpus and num_nodes == 1 else task

        with dsl.If(decision.output == RETRAIN, name="data-changed"):
            stage1 = train(1, pairs.outputs["pairs"]).after(checked)
            stage2 = train(2, pairs.outputs["pairs"], stage1.outputs["model"])
            natural_pairs = step(augment(natural=natural.outputs["natural"], stage2=stage2.outputs["model"],
                                         **common), "infer")
            stage3 = train(3, natural_pairs.outputs["natural_pairs"], stage2.outputs["model"],
                           replay=pairs.outputs["pairs"])
            scored = step(evaluate(model=stage3.outputs["model"], stage1=stage1.outputs["model"],
                                   stage2=stage2.outputs["model"], pairs=pairs.outputs["pairs"],
                                   natural_pairs=natural_pairs.outputs["natural_pairs"],
                                   natural=natural.outputs["natural"], lightstage=stage.outputs["lightstage"],
                                   require_quality_bar=require_quality_bar, **common), "infer")
            for task in (natural_pairs, scored):
                if gpus:
                    _on_gpu(task, 1)
            with dsl.If(track == True, name="tracked"):  # noqa: E712 (a pipeline condition, not Python's)
                gate = step(promote(model=stage3.outputs["model"], stage1=stage1.outputs["model"],
                                    stage2=stage2.outputs["model"], pairs=pairs.outputs["pairs"], params=params,
                                    profile=profile, model_name=MODEL_NAME).after(scored), "infer")
                if gpus:
                    _on_gpu(gate, 1)

    return relightful_pipeline

"""The kfp v2 DAG of the whole workflow, the same chain as dvc.yaml:

    starter-data ─┬─ ingest-hdr ─ render-pairs ×N workers ─ merge ─ validate ─ train 1 ─ train 2 ─ augment ─ train 3
    synthetic ────┘                                                                           natural-starter ┘
    ─ evaluate ─ promote

Parameters are those of params.yaml: `params` is one profile's block (the compile-time default is the profile
named when compiling) and `profile` its name. Cluster wiring (kfp-kubernetes): every step gets the MLflow/S3
settings from the ConfigMap `relightful-config` and the credentials from the Secret `relightful-s3`; training
mounts the volume `relightful-workspace` (checkpoints survive a retried task) and, with `gpus`, the node's GPUs
and a memory-backed /dev/shm. The local runner ignores all of it.
"""


from pathlib import Path

import yaml
from kfp import dsl, kubernetes

from components.augment import augment
from components.data import (ingest_hdr, merge_pairs, natural_starter, render_pairs_part, starter_data,
                             synthetic_stage, validate_data, worker_indices)
from components.evaluation import evaluate, promote
from components.images import CPU_IMAGE, CUDA_IMAGE
from components.training import train_stage, train_stage_across_nodes

PIPELINE_NAME = "relightful"
PARAMS_YAML = Path(__file__).resolve().parents[1] / "params.yaml"
CONFIG_MAP = "relightful-config"
CONFIG_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL")
S3_SECRET = "relightful-s3"
SECRET_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
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


def _cluster_env(task: dsl.PipelineTask) -> dsl.PipelineTask:
    kubernetes.use_config_map_as_env(task, CONFIG_MAP, {k: k for k in CONFIG_ENV}, optional=True)
    kubernetes.use_secret_as_env(task, S3_SECRET, {k: k for k in SECRET_ENV}, optional=True)
    return task


def _on_gpu(task: dsl.PipelineTask, count) -> dsl.PipelineTask:
    task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(count)
    kubernetes.add_toleration(task, key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")
    kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory")
    return task


def make_pipeline(profile: str, params: dict, gpus: bool = True, num_nodes: int = 1):
    """The pipeline function with `params` (the block of `profile`) as its defaults; `gpus` asks for GPUs for the
    training, augmentation, evaluation and promotion steps (off for CPU-only clusters); `num_nodes` > 1 trains each
    stage as a PyTorchJob of that many pods (`nproc_per_node` ranks each) instead of in the step's own pod."""

    @dsl.pipeline(name=PIPELINE_NAME, description="Relightful Harmonization: light-stage data, three training "
                  "stages, natural-pair augmentation, evaluation and promotion")
    def relightful_pipeline(params: dict = params, profile: str = profile, track: bool = True,
                            render_workers: int = 2, nproc_per_node: int = 1, workspace: str = WORKSPACE,
                            require_quality_bar: bool = False):
        common = dict(params=params, profile=profile, track=track)
        hdri = _cluster_env(starter_data(**common))
        stage = _cluster_env(synthetic_stage(**common))
        envmaps = _cluster_env(ingest_hdr(hdri=hdri.outputs["hdri"], lightstage=stage.outputs["lightstage"],
                                          **common))
        workers = worker_indices(num_workers=render_workers)
        with dsl.ParallelFor(items=workers.output, name="render-workers") as worker:
            part = _cluster_env(render_pairs_part(lightstage=stage.outputs["lightstage"],
                                                  envmaps=envmaps.outputs["envmaps"], worker=worker,
                                                  num_workers=render_workers, **common))
        pairs = _cluster_env(merge_pairs(parts=dsl.Collected(part.outputs["part"]),
                                         lightstage=stage.outputs["lightstage"], envmaps=envmaps.outputs["envmaps"],
                                         num_workers=render_workers, **common))
        checked = _cluster_env(validate_data(envmaps=envmaps.outputs["envmaps"], pairs=pairs.outputs["pairs"],
                                             **common))

        def train(stage_number: int, data, init=None):
            start = dict(stage=stage_number, pairs=data, workspace=workspace, nproc_per_node=nproc_per_node,
                         run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, **({} if init is None else {"init": init}), **common)
            if num_nodes > 1:  # this step only launches and follows the job: no GPU of its own
                task = train_stage_across_nodes(num_nodes=num_nodes, gpus=gpus,
                                                image=CUDA_IMAGE if gpus else CPU_IMAGE, **start)
            else:
                task = train_stage(**start)
            task.set_display_name(f"train-stage{stage_number}").set_retry(num_retries=2, backoff_duration="60s")
            kubernetes.mount_pvc(task, pvc_name=WORKSPACE_PVC, mount_path=WORKSPACE)
            return _on_gpu(_cluster_env(task), nproc_per_node) if gpus and num_nodes == 1 else _cluster_env(task)

        stage1 = train(1, pairs.outputs["pairs"]).after(checked)
        stage2 = train(2, pairs.outputs["pairs"], stage1.outputs["model"])
        natural = _cluster_env(natural_starter(hdri=hdri.outputs["hdri"], **common))
        natural_pairs = _cluster_env(augment(natural=natural.outputs["natural"], stage2=stage2.outputs["model"],
                                             **common))
        stage3 = train(3, natural_pairs.outputs["natural_pairs"], stage2.outputs["model"])
        scored = _cluster_env(evaluate(model=stage3.outputs["model"], stage1=stage1.outputs["model"],
                                       stage2=stage2.outputs["model"], pairs=pairs.outputs["pairs"],
                                       natural_pairs=natural_pairs.outputs["natural_pairs"],
                                       natural=natural.outputs["natural"], lightstage=stage.outputs["lightstage"],
                                       require_quality_bar=require_quality_bar, **common))
        for task in (natural_pairs, scored):
            if gpus:
                _on_gpu(task, 1)
        with dsl.If(track == True, name="tracked"):  # noqa: E712 (a pipeline condition, not Python's)
            gate = _cluster_env(promote(model=stage3.outputs["model"], pairs=pairs.outputs["pairs"], params=params,
                                        profile=profile, model_name=MODEL_NAME).after(scored))
            if gpus:
                _on_gpu(gate, 1)

    return relightful_pipeline

"""The Kubeflow pipeline: the committed YAML is what the code compiles to, the DAG and its cluster wiring are the
ones documented, the pipeline's parameters mean what params.yaml means, and the whole DAG runs on kfp's local
runner (smoke profile, two rendering workers) with the same results as the jobs run directly."""

from __future__ import annotations

import copy
import http.server
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from relightful.config import from_dict, load_config
from relightful.io import load_tensors

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipelines.compile import COMPILED, compile_pipeline  # noqa: E402
from pipelines.relightful_pipeline import (CONFIG_MAP, MLFLOW_SECRET, RESOURCES, S3_SECRET, WORKSPACE,  # noqa: E402
                                           WORKSPACE_PVC, make_pipeline, profile_params, without_nulls)

TRAINING_MANIFEST = REPO / "k8s" / "training" / "base" / "pytorchjob-train.yaml"  # the hand-started job


def _floats(x):
    """Every number as a float, as a kfp dict parameter carries it (protobuf Struct)."""
    if isinstance(x, dict):
        return {k: _floats(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_floats(v) for v in x]
    return float(x) if isinstance(x, int) and not isinstance(x, bool) else x


def _config_classes():
    from relightful.augment import AugmentConfig
    from relightful.data.render_pairs import RenderConfig
    from relightful.evaluation.config import EvalConfig
    from relightful.models import ModelConfig

    return {"augment": AugmentConfig, "evaluate": EvalConfig, "model": ModelConfig, "render_pairs": RenderConfig}


# --- compiled YAML ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def compiled() -> tuple[dict, dict]:
    """(pipeline spec, platform spec) of the committed YAML."""
    docs = list(yaml.safe_load_all(COMPILED.read_text()))
    return docs[0], docs[1]


def _walk(spec: dict, dag: dict | None = None, above: tuple = ()):
    """(name, task, the group tasks above it, outermost first) of every task of the compiled pipeline, those in
    loops and conditions included."""
    dag = spec["root"]["dag"] if dag is None else dag
    for name, task in dag["tasks"].items():
        yield name, task, above
        component = spec["components"][task["componentRef"]["name"]]
        if "dag" in component:
            yield from _walk(spec, component["dag"], above + (task,))


def _steps(spec: dict) -> dict[str, tuple[dict, tuple]]:
    """name -> (task, groups above it) of the tasks that run a container (not loops or conditions)."""
    return {name: (task, above) for name, task, above in _walk(spec)
            if "dag" not in spec["components"][task["componentRef"]["name"]]}


def _upstream(task: dict) -> set[str]:
    found = set(task.get("dependentTasks", []))
    for value in task.get("inputs", {}).get("artifacts", {}).values():
        found.add(value.get("taskOutputArtifact", {}).get("producerTask"))
    for value in task.get("inputs", {}).get("parameters", {}).values():
        found.add(value.get("taskOutputParameter", {}).get("producerTask"))
    return found - {None}


# what trains, and what must wait for (and obey) the retrain decision
TRAINING = {"train-stage", "train-stage-2", "train-stage-3", "augment", "evaluate", "promote"}
# caching by step: on for the deterministic data steps, off for the retrain decision, training, evaluation (its
# tracking: metrics to the candidate's run, tags on its version) and promotion
CACHE_ON = {"starter-data", "synthetic-stage", "ingest-hdr", "worker-indices", "render-pairs-part", "merge-pairs",
            "validate-data", "natural-starter", "augment"}
CACHE_OFF = {"retrain-check", "train-stage", "train-stage-2", "train-stage-3", "evaluate", "promote"}
# the class of CPU and memory parameters each step is sized by
RESOURCE_CLASS = {**{name: "data" for name in CACHE_ON | {"retrain-check"}}, "augment": "infer", "evaluate": "infer",
                  "promote": "infer", "train-stage": "train", "train-stage-2": "train", "train-stage-3": "train"}
RESOURCE_FIELDS = {"resourceCpuRequest": "cpu_request", "resourceCpuLimit": "cpu_limit",
                   "resourceMemoryRequest": "memory_request", "resourceMemoryLimit": "memory_limit"}


@pytest.mark.skipif(bool(os.environ.get("RELIGHTFUL_IMAGE") or os.environ.get("RELIGHTFUL_CUDA_IMAGE")),
                    reason="compiling for another registry")
def test_committed_yaml_is_what_the_code_compiles_to(tmp_path):
    from kfp import components

    out = compile_pipeline(tmp_path / "p.yaml")
    assert out.read_text() == COMPILED.read_text(), "run `python -m pipelines.compile` and commit the YAML"
    loaded = components.load_component_from_file(str(COMPILED))  # what the Kubeflow UI and Client upload
    assert loaded.name == "relightful" and {"params", "profile", "render_workers"} <= set(loaded.component_spec.inputs)


def test_dag_follows_the_workflow(compiled):
    spec, _ = compiled
    steps = _steps(spec)

    def upstream(name: str) -> set[str]:  # a step's own inputs and those of the groups it sits in
        task, above = steps[name]
        return set().union(_upstream(task), *(_upstream(group) for group in above))

    assert {"starter-data", "synthetic-stage"} <= upstream("ingest-hdr")
    assert {"merge-pairs", "validate-data"} <= upstream("train-stage")
    assert "train-stage" in upstream("train-stage-2")
    assert {"natural-starter", "train-stage-2"} <= upstream("augment")
    assert {"augment", "train-stage-2"} <= upstream("train-stage-3")
    assert {"train-stage-3", "merge-pairs", "augment", "synthetic-stage"} <= upstream("evaluate")
    assert {"train-stage", "train-stage-2"} <= upstream("evaluate")  # stages 1-2 scored beside stage 3
    assert {"train-stage", "train-stage-2", "train-stage-3", "evaluate"} <= upstream("promote")
    # rendering fans out over workers, the merge collects them all
    tasks = spec["root"]["dag"]["tasks"]
    loop = next(t for t in tasks.values() if "iteratorPolicy" in t or "parameterIterator" in t)
    assert loop["parameterIterator"]["items"]["inputParameter"]
    assert "render-pairs-part" in spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"]
    # promotion only when tracking is on (inside the retrain condition)
    _, above = steps["promote"]
    assert "pipelinechannel--track'] == true" in above[-1]["triggerPolicy"]["condition"]


def test_retrain_check_comes_first(compiled):
    """retrain-check runs on the validated data before anything trains; every step that trains, evaluates or
    promotes sits under the condition on its answer (and so waits for it); `force_retrain` is a parameter."""
    spec, _ = compiled
    steps = _steps(spec)
    check, above = steps["retrain-check"]
    assert above == ()  # a step of the pipeline itself, not itself conditioned
    assert _upstream(check) == {"merge-pairs", "validate-data"}  # the data it checks, validated
    assert not TRAINING & set(_upstream(check))
    assert check["inputs"]["artifacts"]["pairs"]["taskOutputArtifact"] == {"outputArtifactKey": "pairs",
                                                                           "producerTask": "merge-pairs"}
    assert check["inputs"]["parameters"]["force"]["componentInputParameter"] == "force_retrain"
    assert check["inputs"]["parameters"]["model_name"]["runtimeValue"]["constant"] == "relightful-stage1"
    assert check["inputs"]["parameters"]["alias"]["runtimeValue"]["constant"] == "champion"
    outputs = spec["components"][check["componentRef"]["name"]]["outputDefinitions"]["parameters"]
    assert outputs["Output"]["parameterType"] == "STRING"
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert inputs["force_retrain"]["parameterType"] == "BOOLEAN" and inputs["force_retrain"]["defaultValue"] is False

    gate = "inputs.parameter_values['pipelinechannel--retrain-check-Output'] == 'retrain'"
    conditioned = {name for name, (task, above) in steps.items()
                   if any(g.get("triggerPolicy", {}).get("condition") == gate and "retrain-check" in
                          g.get("dependentTasks", []) for g in above)}
    assert conditioned == TRAINING  # all of training, and nothing else
    for name in TRAINING:  # the decision is the only condition a training step needs besides `track` for promote
        conditions = [g["triggerPolicy"]["condition"] for g in steps[name][1] if "triggerPolicy" in g]
        assert conditions[0] == gate, name


def test_caching_is_explicit_per_step(compiled):
    spec, _ = compiled
    steps = _steps(spec)
    assert set(steps) == CACHE_ON | CACHE_OFF  # a new step must be added here, with its caching decided
    for name, (task, _) in steps.items():
        assert "cachingOptions" in task, name
        assert task["cachingOptions"].get("enableCache", False) is (name in CACHE_ON), name


def test_every_step_has_cpu_and_memory_requests_and_limits_from_parameters(compiled):
    spec, _ = compiled
    steps = _steps(spec)
    executors = spec["deploymentSpec"]["executors"]
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    for name, (task, above) in steps.items():
        component = spec["components"][task["componentRef"]["name"]]
        resources = executors[component["executorLabel"]]["container"]["resources"]
        assert not {"cpuLimit", "memoryLimit", "cpuRequest", "memoryRequest"} & set(resources), name  # no constants
        for field, suffix in RESOURCE_FIELDS.items():
            parameter = f"{RESOURCE_CLASS[name]}_{suffix}"
            channel = f"pipelinechannel--{parameter}"
            assert resources[field] == f"{{{{$.inputs.parameters['{channel}']}}}}", (name, field)
            # fed from the pipeline parameter, through every group the step sits in
            for holder in (task, *above):
                assert holder["inputs"]["parameters"][channel]["componentInputParameter"] in (parameter, channel)
            assert inputs[parameter]["parameterType"] == "STRING"
    cpu, memory = r"^([0-9]*[.])?[0-9]+m?$", r"^[0-9]+(Ei|Pi|Ti|Gi|Mi|Ki|E|P|T|G|M|K)?$"
    for kind, (cpu_request, cpu_limit, memory_request, memory_limit) in RESOURCES["gpu"].items():
        assert inputs[f"{kind}_cpu_request"]["defaultValue"] == cpu_request
        assert inputs[f"{kind}_memory_limit"]["defaultValue"] == memory_limit
    for table in RESOURCES.values():  # defaults are Kubernetes quantities, requests within limits
        for cpu_request, cpu_limit, memory_request, memory_limit in table.values():
            assert all(re.match(cpu, v) for v in (cpu_request, cpu_limit))
            assert all(re.match(memory, v) for v in (memory_request, memory_limit))
            assert float(cpu_request) <= float(cpu_limit)
            assert _bytes(memory_request) <= _bytes(memory_limit)


def _bytes(quantity: str) -> int:
    number, unit = re.match(r"^([0-9]+)([A-Za-z]*)$", quantity).groups()
    return int(number) * {"": 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "K": 10**3, "M": 10**6,
                          "G": 10**9, "T": 10**12}[unit]


def test_tiny_compile_has_the_tiny_resources(tmp_path):
    spec, _ = yaml.safe_load_all(compile_pipeline(tmp_path / "tiny.yaml", profile="tiny", gpus=False).read_text())
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    for kind, values in RESOURCES["tiny"].items():
        got = tuple(inputs[f"{kind}_{f}"]["defaultValue"] for f in ("cpu_request", "cpu_limit", "memory_request",
                                                                    "memory_limit"))
        assert got == values, kind
    executors = spec["deploymentSpec"]["executors"]
    assert all("accelerator" not in e["container"]["resources"] for e in executors.values())


def test_validation_report_is_a_markdown_artifact(compiled):
    spec, _ = compiled
    outputs = spec["components"]["comp-validate-data"]["outputDefinitions"]["artifacts"]
    assert outputs["report"]["artifactType"]["schemaTitle"] == "system.Markdown"
    assert outputs["validation"]["artifactType"]["schemaTitle"] == "system.Artifact"


def test_defaults_are_the_gpu_profile(compiled):
    spec, _ = compiled
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    name, params = profile_params("gpu")
    assert inputs["profile"]["defaultValue"] == "gpu"
    assert _floats(inputs["params"]["defaultValue"]) == _floats(params)
    assert inputs["render_workers"]["defaultValue"] == 2 and inputs["workspace"]["defaultValue"] == WORKSPACE


def _check_step_wiring(spec: dict, platform: dict) -> None:
    """Every step of a compiled pipeline: the MLflow/S3 settings of the ConfigMap, the S3 keys and the MLflow user
    (basic auth) from their Secrets, by reference only, and a writable /tmp (an emptyDir) that TMPDIR and HOME point
    into: the pods' root file system may be read-only."""
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    containers = spec["deploymentSpec"]["executors"]
    steps = _steps(spec)
    used = {spec["components"][task["componentRef"]["name"]]["executorLabel"] for task, _ in steps.values()}
    assert used == set(containers) == set(executors)  # every step has its platform settings
    for name, config in executors.items():
        assert config["configMapAsEnv"][0]["configMapName"] == CONFIG_MAP
        secrets = {s["secretName"]: s for s in config["secretAsEnv"]}
        assert set(secrets) == {S3_SECRET, MLFLOW_SECRET}, name
        assert {e["secretKey"]: e["envVar"] for e in secrets[S3_SECRET]["keyToEnv"]} == \
            {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"}, name
        client = secrets[MLFLOW_SECRET]
        assert {e["secretKey"]: e["envVar"] for e in client["keyToEnv"]} == \
            {"MLFLOW_TRACKING_USERNAME": "MLFLOW_TRACKING_USERNAME",
             "MLFLOW_TRACKING_PASSWORD": "MLFLOW_TRACKING_PASSWORD"}, name
        assert client.get("optional", False) is False, name  # a missing Secret stops the pod, not a 401 mid-run
        assert client["secretNameParameter"]["runtimeValue"]["constant"] == MLFLOW_SECRET
        tmp = [m for m in config.get("emptyDirMounts", []) if m["mountPath"] == "/tmp"]
        assert len(tmp) == 1 and "medium" not in tmp[0], name  # on disk: model downloads and decoded images
        names = [m["volumeName"] for m in config["emptyDirMounts"]]
        assert len(names) == len(set(names)), name
        env = {e["name"]: e["value"] for e in containers[name]["container"].get("env", [])}
        assert env.get("TMPDIR") == "/tmp" and env.get("HOME") == "/tmp/home", name


def test_cluster_wiring(compiled):
    spec, platform = compiled
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    containers = spec["deploymentSpec"]["executors"]
    _check_step_wiring(spec, platform)
    training = [n for n in containers if n.startswith("exec-train-stage")]
    assert len(training) == 3
    for name in training:
        pvc = executors[name]["pvcMount"][0]
        assert pvc["mountPath"] == WORKSPACE and pvc["constant"] == WORKSPACE_PVC
        shm = [m for m in executors[name]["emptyDirMounts"] if m["mountPath"] == "/dev/shm"]
        assert len(shm) == 1 and shm[0]["medium"] == "Memory"
        resources = containers[name]["container"]["resources"]
        assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
        assert containers[name]["container"]["image"].endswith("-cuda")
    assert containers["exec-ingest-hdr"]["container"]["image"].endswith("-cpu")
    for name, executor in containers.items():  # the images carry kfp: a step installs nothing when it starts
        assert "pip install" not in " ".join(executor["container"]["command"]), name
    assert "accelerator" not in containers["exec-ingest-hdr"]["container"]["resources"]
    retried = [name for name, (t, _) in _steps(spec).items() if "retryPolicy" in t]
    assert sorted(retried) == ["train-stage", "train-stage-2", "train-stage-3"]


def test_across_nodes_compiles_to_launcher_steps(tmp_path):
    """--num-nodes 2: the training steps launch PyTorchJobs in the CUDA image and hold no GPU themselves."""
    spec, platform = yaml.safe_load_all(compile_pipeline(tmp_path / "mn.yaml", num_nodes=2).read_text())
    tasks = {name: task for name, (task, _) in _steps(spec).items()}
    launchers = [n for n in tasks if n.startswith("train-stage-across-nodes")]
    assert len(launchers) == 3 and not any(n.startswith("train-stage") and n not in launchers for n in tasks)
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for name in launchers:
        constants = tasks[name]["inputs"]["parameters"]
        assert constants["num_nodes"]["runtimeValue"]["constant"] == 2
        assert constants["image"]["runtimeValue"]["constant"].endswith("-cuda")
        container = spec["deploymentSpec"]["executors"][f"exec-{name}"]["container"]
        assert "accelerator" not in container.get("resources", {})
        assert container["resources"]["resourceCpuRequest"].endswith("data_cpu_request']}}")  # a launcher only
        assert tasks[name]["cachingOptions"].get("enableCache", False) is False
        assert executors[f"exec-{name}"]["pvcMount"][0]["mountPath"] == WORKSPACE
        for field in ("cpu_request", "cpu_limit", "memory_request", "memory_limit"):  # the job's pods: train_*
            source = constants[f"pod_{field}"]["componentInputParameter"]
            assert source in (f"train_{field}", f"pipelinechannel--train_{field}"), (name, field)
    _check_step_wiring(spec, platform)


def test_local_runner_pipeline_leaves_out_the_pods_home(tmp_path):
    """kfp's local runner applies a step's env to processes of this machine: `local=True` leaves TMPDIR and HOME out
    (the cluster-only settings of the platform spec, which the local runner ignores, stay)."""
    from kfp import compiler

    name, params = profile_params("smoke")
    out = tmp_path / "local.yaml"
    compiler.Compiler().compile(make_pipeline(name, params, gpus=False, local=True), str(out))
    spec, platform = yaml.safe_load_all(out.read_text())
    for name, executor in spec["deploymentSpec"]["executors"].items():
        assert not {"TMPDIR", "HOME"} & {e["name"] for e in executor["container"].get("env", [])}, name
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert all(any(s["secretName"] == MLFLOW_SECRET for s in c["secretAsEnv"]) for c in executors.values())


def test_retrain_check_step_answers(tmp_path, monkeypatch):
    """The step's answers without a pipeline: forced or untracked runs retrain without asking the registry; a check
    that cannot decide (no manifest, so no data version) fails the step instead of reading as either answer."""
    from kfp.dsl import Dataset

    from components.job import JobError
    from components.registry import retrain_check

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    empty = Dataset(name="pairs", uri=str(tmp_path / "no-pairs"))
    ask = dict(pairs=empty, model_name="relightful-stage1", alias="champion")
    assert retrain_check.python_func(track=True, force=True, **ask) == "retrain"
    assert retrain_check.python_func(track=False, force=False, **ask) == "retrain"
    with pytest.raises(JobError, match="cannot tell whether to retrain"):
        retrain_check.python_func(track=True, force=False, **ask)


# --- parameters ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("profile", ["tiny", "gpu", "smoke"])
def test_pipeline_params_mean_what_params_yaml_means(profile):
    """Leaving nulls out, and numbers arriving as floats, build the same job configs as params.yaml itself."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())[profile]
    _, block = profile_params(profile)
    sent = _floats(block)
    for section, cls in _config_classes().items():
        assert from_dict(cls, sent.get(section, {}), section) == from_dict(cls, raw.get(section, {}), section)
    nulls_in = {s for s, v in raw.items() if isinstance(v, dict) and without_nulls(v) != v}
    assert nulls_in <= set(_config_classes()), f"map {nulls_in - set(_config_classes())} in this test"


def test_whole_numbers_only_for_integer_fields():
    from relightful.data.pair_plan import PlanConfig

    assert from_dict(PlanConfig, {"seed": 3.0}).seed == 3
    with pytest.raises(ValueError, match="seed"):
        from_dict(PlanConfig, {"seed": 3.5})


# --- the local run ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def local_setup(tmp_path_factory) -> tuple[Path, dict, str]:
    """(root, environment, tracking URI) of the local runs: a fresh MLflow store, no launcher variables."""
    root = tmp_path_factory.mktemp("kfp")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    launcher = {"RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RELIGHTFUL_")) and k not in launcher}
    env.update(MLFLOW_TRACKING_URI=uri, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    return root, env, uri


def _run_local(root: Path, env: dict) -> Path:
    """One whole run on the smoke profile, in a clean subprocess; returns its artifacts folder."""
    before = set((root / "pipeline-root").glob("*"))
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pipelines.run_local", "--profile", "smoke", "--root", str(root),
                           "--render-workers", "2"], cwd=root, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, f"local run failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    (run,) = set((root / "pipeline-root").glob("*")) - before
    print(f"local run {run.name}: {time.perf_counter() - start:.0f} s")
    return run


@pytest.fixture(scope="module")
def local_run(local_setup) -> tuple[Path, str]:
    """The whole pipeline on the smoke profile, tracked to a fresh MLflow store: no champion yet, so it trains."""
    root, env, uri = local_setup
    return _run_local(root, env), uri


def _task(run: Path, name: str) -> Path:
    """The folder of task `name` in a local run (tasks in loops and conditions sit in their group's folder)."""
    found = [p for p in run.rglob(name) if (p / "executor_output.json").is_file()]
    assert len(found) == 1, f"{name}: {found}"
    return found[0]


def _outputs(task_dir: Path) -> dict:
    return json.loads((task_dir / "executor_output.json").read_text())


def test_sharded_render_equals_one_run(local_run, tmp_path):
    from relightful.data.render_pairs import RenderConfig, render_pairs
    from relightful.lighting import LedRig

    run, _ = local_run
    stage, envmaps = _task(run, "synthetic-stage") / "lightstage", _task(run, "ingest-hdr") / "envmaps"
    parts = sorted(run.glob("for-loop-*/render-pairs-part/part"))
    assert len(parts) == 2 and all(any(p.glob("shard-*.safetensors")) for p in parts)
    config = load_config(RenderConfig, REPO / "params.yaml", "render_pairs", profile="smoke")
    single = render_pairs(stage / "subjects", LedRig.from_json(stage / "rig.json"), envmaps, tmp_path / "one", config,
                          progress=False)
    merged = _task(run, "merge-pairs") / "pairs"
    pd.testing.assert_frame_equal(pd.read_parquet(merged / "manifest.parquet"), single)
    for shard in sorted((tmp_path / "one").glob("shard-*.safetensors")):
        a, b = load_tensors(shard), load_tensors(merged / shard.name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # one worker: its part is the whole folder, which the merge step passes on as it is
    from kfp.dsl import Dataset

    from components.data import merge_pairs

    name, params = profile_params("smoke")
    merge_pairs.python_func(parts=[Dataset(name="part", uri=str(tmp_path / "one"))],
                            lightstage=Dataset(name="lightstage", uri=str(stage)),
                            envmaps=Dataset(name="envmaps", uri=str(envmaps)), num_workers=1,
                            params=_floats(params), profile=name, track=False,
                            pairs=Dataset(name="pairs", uri=str(tmp_path / "merged-one")))
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "merged-one" / "manifest.parquet"), single)
    assert sorted(p.name for p in (tmp_path / "merged-one").iterdir()) == \
        sorted(p.name for p in (tmp_path / "one").iterdir())
    checked = _task(run, "validate-data")
    report = json.loads((checked / "validation" / "data_validation.json").read_text())
    assert report["success"] is True
    markdown = (checked / "report").read_text()  # the Markdown artifact the Kubeflow UI shows
    assert markdown == (checked / "validation" / "data_validation.md").read_text()
    assert markdown.lstrip().startswith("#") and "Passed checks" in markdown


def test_models_registered_evaluated_and_promoted(local_run):
    from mlflow import MlflowClient

    from relightful.tracking.registry import find_version_of_folder

    run, uri = local_run
    client = MlflowClient(uri)
    assert _outputs(_task(run, "retrain-check"))["parameterValues"]["Output"] == "retrain"  # no champion yet
    stage3 = _task(run, "train-stage-3") / "model"
    for task, name in (("train-stage", "relightful-stage1"), ("train-stage-2", "relightful-stage2"),
                       ("train-stage-3", "relightful-stage3")):
        version = find_version_of_folder(client, _task(run, task) / "model", [name])
        assert version is not None, f"{task}'s model is not registered as {name}"
        metrics = _outputs(_task(run, task))["artifacts"]["metrics"]["artifacts"][0]["metadata"]
        assert metrics["steps"] > 0 and metrics["loss"] > 0
        assert "<img src='data:image/png;base64," in (_task(run, task) / "samples").read_text()
        if name != "relightful-stage3":  # the champion's lineage: what the next run's retrain-check compares with
            lineage = client.get_model_version_by_alias(name, "champion")
            assert str(lineage.version) == str(version.version), name
    champion = client.get_model_version_by_alias("relightful-stage3", "champion")
    assert str(champion.version) == str(find_version_of_folder(client, stage3, ["relightful-stage3"]).version)
    gate = _task(run, "promote")
    decision = json.loads((gate / "decision").read_text())
    assert decision["decision"] == "champion" and decision["version"] == str(champion.version)
    assert _outputs(gate)["parameterValues"]["Output"] == "champion"

    scored = _task(run, "evaluate")
    summary = json.loads((scored / "evaluation" / "metrics.json").read_text())
    logged = _outputs(scored)["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    model = summary["lightstage"]["methods"]["model"]
    assert logged["lightstage.model.fg_psnr"] == pytest.approx(model["fg_psnr"])
    assert (scored / "report").read_text().lstrip().lower().startswith(("<!doctype", "<html"))
    assert client.get_model_version("relightful-stage3", champion.version).tags.get("eval.fg_psnr")


def test_a_second_run_on_the_same_data_trains_nothing(local_setup, local_run):
    """The same params again: the data steps give the same pairs, retrain-check finds them in the champion's
    lineage and answers "up-to-date", and nothing under its condition runs: no training, evaluation or promotion,
    no new model version."""
    from mlflow import MlflowClient

    root, env, uri = local_setup
    first, _ = local_run
    client = MlflowClient(uri)
    versions = {n: len(client.search_model_versions(f"name='{n}'")) for n in
                ("relightful-stage1", "relightful-stage2", "relightful-stage3")}
    run = _run_local(root, env)
    assert _outputs(_task(run, "retrain-check"))["parameterValues"]["Output"] == "up-to-date"
    assert (_task(run, "merge-pairs") / "pairs" / "manifest.parquet").read_bytes() == \
        (_task(first, "merge-pairs") / "pairs" / "manifest.parquet").read_bytes()
    ran = {p.name for p in run.rglob("*") if (p / "executor_output.json").is_file()}
    assert not ran & {"train-stage", "train-stage-2", "train-stage-3", "augment", "evaluate", "promote"}, ran
    assert {n: len(client.search_model_versions(f"name='{n}'")) for n in versions} == versions


# --- stand-ins for the cluster's APIs ----------------------------------------------------------------------------

class JsonApi:
    """An HTTP server on 127.0.0.1 (a free port) answering JSON, in a thread: subclasses `serve` a subclass of
    `Handler` with their do_* methods, which reach the instance as `self.api`."""

    class Handler(http.server.BaseHTTPRequestHandler):
        api = None  # the JsonApi instance, set per server

        def log_message(self, *args):
            pass

        def _reply(self, body: dict, status: int = 200):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> dict:
            return json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")

    def serve(self, handler: type) -> None:
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), type("Bound", (handler,), {"api": self}))
        self.host = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


# --- scheduled retraining through the KFP API --------------------------------------------------------------------

class FakeKfpApi(JsonApi):
    """The few KFP v2beta1 REST endpoints the schedule uses, on 127.0.0.1, recording what it was sent: the real
    `kfp.Client` talks to it over HTTP (no cluster here)."""

    def __init__(self):
        self.experiments: dict[str, dict] = {}
        self.recurring: dict[str, dict] = {}
        self.runs: list[dict] = []
        self.ids = iter(range(100, 1_000_000))

        class Handler(JsonApi.Handler):
            def do_GET(self):
                from urllib.parse import parse_qs, unquote, urlparse

                url = urlparse(self.path)
                query = parse_qs(url.query)
                if url.path == "/apis/v2beta1/healthz":
                    return self._reply({"multi_user": False, "tag_name": "2.5.0"})
                if url.path == "/apis/v2beta1/experiments":
                    predicate = json.loads(unquote(query["filter"][0]))["predicates"][0] if "filter" in query else {}
                    wanted = predicate.get("stringValue")
                    found = [e for e in self.api.experiments.values() if wanted in (None, e["display_name"])]
                    return self._reply({"experiments": found, "total_size": len(found)})
                if url.path == "/apis/v2beta1/recurringruns":
                    exp = query.get("experiment_id", [None])[0]
                    found = [r for r in self.api.recurring.values() if exp in (None, r["experiment_id"])]
                    return self._reply({"recurringRuns": found, "total_size": len(found)})
                return self._reply({"error": self.path}, 404)

            def do_POST(self):
                body = self._body()
                if self.path == "/apis/v2beta1/experiments":
                    exp = {**body, "experiment_id": f"exp-{len(self.api.experiments)}"}
                    self.api.experiments[exp["experiment_id"]] = exp
                    return self._reply(exp)
                if self.path == "/apis/v2beta1/recurringruns":
                    rec = {**body, "recurring_run_id": f"rec-{next(self.api.ids)}"}
                    self.api.recurring[rec["recurring_run_id"]] = rec
                    return self._reply(rec)
                if self.path.startswith("/apis/v2beta1/runs"):
                    run = {**body, "run_id": f"run-{len(self.api.runs)}"}
                    self.api.runs.append(run)
                    return self._reply(run)
                return self._reply({"error": self.path}, 404)

            def do_DELETE(self):
                self.api.recurring.pop(self.path.rsplit("/", 1)[-1], None)
                return self._reply({})

        self.serve(Handler)


@pytest.fixture()
def kfp_api(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))  # no kfp context file of the user's
    api = FakeKfpApi()
    yield api
    api.close()


def test_recurring_retraining_is_created_once_and_replaced(kfp_api):
    from pipelines.schedule import main

    assert main(["--host", kfp_api.host, "recurring", "--cron", "0 0 3 * * 1"]) == 0
    assert main(["--host", kfp_api.host, "--profile", "smoke", "recurring", "--cron", "0 30 4 * * *"]) == 0
    (rec,) = kfp_api.recurring.values()  # the second call replaced the first
    assert rec["display_name"] == "relightful-retrain" and len(kfp_api.experiments) == 1
    assert rec["trigger"]["cron_schedule"]["cron"] == "0 30 4 * * *"
    assert rec["max_concurrency"] in (1, "1") and rec["no_catchup"] is True and rec["mode"] == "ENABLE"
    spec = rec["pipeline_spec"]  # the committed package, with its Kubernetes settings
    assert spec["pipeline_spec"]["pipelineInfo"]["name"] == "relightful"
    assert "kubernetes" in spec["platform_spec"]["platforms"]
    sent = rec["runtime_config"]["parameters"]
    assert sent["profile"] == "smoke" and _floats(sent["params"]) == _floats(profile_params("smoke")[1])


def test_one_run_now_and_a_bad_cron(kfp_api, capsys):
    from pipelines.schedule import main

    assert main(["--host", kfp_api.host, "run"]) == 0
    (run,) = kfp_api.runs
    spec = run["pipeline_spec"].get("pipeline_spec", run["pipeline_spec"])
    assert spec["root"]["inputDefinitions"]["parameters"]["profile"]["defaultValue"] == "gpu"
    assert run["runtime_config"].get("parameters", {}) == {}  # the compiled defaults
    assert main(["--host", kfp_api.host, "recurring", "--cron", "0 3 * * 1"]) == 2
    assert "6 (seconds first)" in capsys.readouterr().err and not kfp_api.recurring


def test_training_component_on_two_ranks(local_run, tmp_path):
    """`nproc_per_node` 2: the component runs the stage under torchrun; the model folder, the metrics and the page
    of the validation grid come back as with one rank, and the model loads."""
    from kfp.dsl import HTML, Dataset, Metrics, Model

    from components.training import train_stage
    from relightful.models import RelightModel

    run, _ = local_run
    name, params = profile_params("smoke")
    model = Model(name="model", uri=str(tmp_path / "model"))
    metrics, samples = Metrics(name="metrics", uri=str(tmp_path / "metrics")), HTML(name="samples",
                                                                                       uri=str(tmp_path / "s.html"))
    train_stage.python_func(stage=1, pairs=Dataset(name="pairs", uri=str(run / "merge-pairs" / "pairs")),
                            params=_floats(params), profile=name, track=False, workspace=str(tmp_path / "ws"),
                            run_id="two-ranks", nproc_per_node=2, model=model, metrics=metrics, samples=samples)
    history = json.loads((tmp_path / "ws" / "runs" / "two-ranks" / "stage1" / "history.json").read_text())
    assert history[-1]["step"] == params["train_stage1"]["steps"] == metrics.metadata["steps"]
    assert metrics.metadata["loss"] == pytest.approx(history[-1]["loss"])
    assert RelightModel.from_pretrained(tmp_path / "model").config is not None
    assert "data:image/png;base64," in (tmp_path / "s.html").read_text()


# --- training across nodes: a PyTorchJob -----------------------------------------------------------------------

def _component_job(**kw):
    from components import pytorchjob

    job = dict(name="relightful-run-stage1", namespace="relightful", image="ghcr.io/relightful/relightful:0.1.0-cuda",
               args=["-m", "relightful.cli", "train", "--stage=1"], num_nodes=2, nproc_per_node=1, gpus=True)
    return pytorchjob.manifest(pytorchjob.TrainJob(**{**job, **kw}))


def _without_optional(env_from: list[dict]) -> list[dict]:
    return [{kind: {k: v for k, v in ref.items() if k != "optional"} for kind, ref in source.items()}
            for source in env_from]


def test_pipeline_pytorchjob_pods_are_the_manifests():
    """The pod the component builds is the one of k8s/training/base/pytorchjob-train.yaml (Master and Worker), field
    by field: security contexts, service-account token and service links, env (TMPDIR, HOME, TORCH_EXTENSIONS_DIR),
    volumes and mounts (/tmp, /dev/shm, the workspace), envFrom (the MLflow user's Secret), resources, labels, ports.
    What may differ: the image and arguments (given to the component), the GPU toleration (the overlays add it with
    a nodeSelector), the component's optional ConfigMap and S3 Secret."""
    hand = yaml.safe_load(TRAINING_MANIFEST.read_text())
    replicas = hand["spec"]["pytorchReplicaSpecs"]
    container = replicas["Master"]["template"]["spec"]["containers"][0]
    assert container["args"][:2] == ["--master-addr=$(MASTER_ADDR)", "--master-port=$(MASTER_PORT)"]
    built = _component_job(image=container["image"], args=container["args"][2:])
    assert built["spec"]["nprocPerNode"] == hand["spec"]["nprocPerNode"]
    assert {k: v for k, v in built["spec"]["runPolicy"].items() if k != "ttlSecondsAfterFinished"} == \
        hand["spec"]["runPolicy"]
    assert set(built["spec"]["pytorchReplicaSpecs"]) == set(replicas)
    for kind, replica in replicas.items():
        mine = copy.deepcopy(built["spec"]["pytorchReplicaSpecs"][kind])
        assert mine["template"]["spec"].pop("tolerations") == [{"key": "nvidia.com/gpu", "operator": "Exists",
                                                                 "effect": "NoSchedule"}]
        ours, theirs = mine["template"]["spec"]["containers"][0], replica["template"]["spec"]["containers"][0]
        assert _without_optional(ours["envFrom"]) == theirs["envFrom"], kind
        ours["envFrom"] = theirs["envFrom"]
        assert mine == replica, kind


def test_pipeline_pytorchjob_meets_the_restricted_profile():
    """Every pod of the jobs the component builds (GPU or CPU, Master and Workers): the "restricted" Pod Security
    Standard as the admission plugin evaluates it, set explicitly as on the platform's pods; a read-only root with an
    emptyDir at /tmp holding TMPDIR, HOME and TORCH_EXTENSIONS_DIR; no service-account token; CPU and memory requests
    and limits (the step's); the MLflow user's Secret; a valid Kubernetes 1.30 Pod and a PyTorchJob of the Training
    Operator's model."""
    import kubernetes_validate
    from kubeflow.training.api_client import ApiClient

    from test_deploy import K8S_VERSION, _restricted_violations

    for gpus in (True, False):
        job = _component_job(gpus=gpus, num_nodes=3, nproc_per_node=2, cpu_request="2", cpu_limit="4",
                             memory_request="8Gi", memory_limit="8Gi")
        typed = ApiClient().deserialize(type("R", (), {"data": json.dumps(job)})(), "KubeflowOrgV1PyTorchJob")
        assert {k: v.replicas for k, v in typed.spec.pytorch_replica_specs.items()} == {"Master": 1, "Worker": 2}
        for kind, replica in job["spec"]["pytorchReplicaSpecs"].items():
            where = f"gpus={gpus} {kind}"
            pod = replica["template"]["spec"]
            kubernetes_validate.validate({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": pod},
                                         K8S_VERSION, strict=True)
            assert _restricted_violations(pod) == [], where
            assert pod["automountServiceAccountToken"] is False and pod["enableServiceLinks"] is False, where
            (c,) = pod["containers"]
            sc, eff = c["securityContext"], {**pod["securityContext"], **c["securityContext"]}
            assert eff["runAsNonRoot"] is True and eff["runAsUser"] == eff["runAsGroup"] == 1000, where
            assert eff["seccompProfile"] == {"type": "RuntimeDefault"}, where
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}, where
            assert sc["readOnlyRootFilesystem"] is True, where
            volumes = {v["name"]: v for v in pod["volumes"]}
            mounts = {m["mountPath"]: volumes[m["name"]] for m in c["volumeMounts"]}
            assert "emptyDir" in mounts["/tmp"] and "medium" not in mounts["/tmp"]["emptyDir"], where
            env = {e["name"]: e["value"] for e in c["env"]}
            assert env["TMPDIR"] == "/tmp" and env["HOME"] == "/tmp/home", where
            for var in ("TMPDIR", "HOME", "TORCH_EXTENSIONS_DIR"):  # every writable place on an emptyDir
                assert any(env[var] == p or env[var].startswith(p.rstrip("/") + "/") for p, v in mounts.items()
                           if "emptyDir" in v), f"{where}: {var}"
            assert c["resources"]["requests"] == {"cpu": "2", "memory": "8Gi"}, where
            assert {k: v for k, v in c["resources"]["limits"].items() if k != "nvidia.com/gpu"} == \
                {"cpu": "4", "memory": "8Gi"}, where
            assert c["resources"]["limits"].get("nvidia.com/gpu") == (2 if gpus else None), where
            refs = [next(iter(source.values())) for source in c["envFrom"]]
            assert {"name": MLFLOW_SECRET} in refs and any(r["name"] == S3_SECRET for r in refs), where
            assert ("tolerations" in pod) is gpus, where


class FakeTrainingOperator(JsonApi):
    """A Kubernetes API on 127.0.0.1 that knows PyTorchJobs and, like the Training Operator, runs their pods: here
    as local processes, with the variables the operator gives each pod (MASTER_ADDR/MASTER_PORT, PET_NNODES,
    PET_NODE_RANK, PET_NPROC_PER_NODE) and `$(VAR)` references in the arguments expanded as the kubelet does. The
    pods' workspace volume is the test's workspace folder, mounted at the same path."""

    def __init__(self):
        self.jobs: dict[str, dict] = {}
        self.logs: dict[str, list[str]] = {}
        self.created = 0

        class Handler(JsonApi.Handler):
            def do_POST(self):
                operator, body = self.api, self._body()
                name = body["metadata"]["name"]
                if not self.path.endswith("/pytorchjobs"):
                    return self._reply({"kind": "Status", "code": 404}, 404)
                if name in operator.jobs:
                    return self._reply({"kind": "Status", "code": 409, "reason": "AlreadyExists"}, 409)
                body["status"] = {"conditions": [{"type": "Created", "status": "True"}]}
                operator.jobs[name] = body
                operator.created += 1
                threading.Thread(target=operator._run_pods, args=(body,), daemon=True).start()
                return self._reply(body, 201)

            def do_GET(self):
                operator, name = self.api, self.path.rsplit("/", 1)[-1]
                if name not in operator.jobs:
                    return self._reply({"kind": "Status", "code": 404}, 404)
                return self._reply(operator.jobs[name])

        self.serve(Handler)

    def _run_pods(self, job: dict) -> None:
        import re
        import socket

        specs = job["spec"]["pytorchReplicaSpecs"]
        pods = [(kind, spec["template"]["spec"]["containers"][0]) for kind, spec in specs.items()
                for _ in range(spec["replicas"])]
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        base = {k: v for k, v in os.environ.items()
                if k not in {"RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}}
        procs = []
        for node_rank, (kind, container) in enumerate(pods):
            env = {**base, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "PET_NNODES": str(len(pods)),
                   "PET_NODE_RANK": str(node_rank), "PET_NPROC_PER_NODE": job["spec"]["nprocPerNode"],
                   "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
            args = [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in container["args"]]
            command = [sys.executable, "-m", "torch.distributed.run"] if container["command"] == ["torchrun"] \
                else container["command"]
            procs.append(subprocess.Popen([*command, *args], env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True))
        outputs = [p.communicate()[0] for p in procs]
        self.logs[job["metadata"]["name"]] = outputs
        failed = sum(p.returncode != 0 for p in procs)
        name = job["metadata"]["name"]  # the operator's wording
        state = {"type": "Failed", "status": "True", "message": f"PyTorchJob {name} is failed because {failed} "
                 f"replica(s) failed."} if failed else \
            {"type": "Succeeded", "status": "True", "message": f"PyTorchJob {name} is successfully completed."}
        job["status"] = {"conditions": [{"type": "Running", "status": "False"}, state]}

    def kubeconfig(self, path: Path, namespace: str = "relightful") -> Path:
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "test", "cluster": {"server": self.host}}],
            "users": [{"name": "test", "user": {"token": "test"}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test", "namespace": namespace}}]}))
        return path


def test_training_across_nodes_as_a_pytorchjob(local_run, tmp_path, monkeypatch):
    """Stage 1 as a PyTorchJob of two pods (one rank each): the step stages its inputs on the workspace, the pods
    train together (a world of 2), the model comes back as the step's output. A retried step follows the job it
    started; a job that fails fails the step with the pods' reason."""
    from kfp.dsl import HTML, Dataset, Metrics, Model
    from kubeflow.training.models import KubeflowOrgV1PyTorchJob
    from kubeflow.training.api_client import ApiClient

    from components import pytorchjob
    from components.training import train_stage_across_nodes
    from relightful.models import RelightModel

    run, _ = local_run
    operator = FakeTrainingOperator()
    monkeypatch.setenv("KUBECONFIG", str(operator.kubeconfig(tmp_path / "kubeconfig")))
    real_sleep = time.sleep
    monkeypatch.setattr(pytorchjob.time, "sleep", lambda s: real_sleep(min(s, 0.5)))  # poll every 0.5 s, not 15
    name, params = profile_params("smoke")

    def step(stage: int, run_id: str, out: Path):
        outputs = dict(model=Model(name="model", uri=str(out / "model")),
                       metrics=Metrics(name="metrics", uri=str(out / "metrics")),
                       samples=HTML(name="samples", uri=str(out / "samples.html")))
        train_stage_across_nodes.python_func(
            stage=stage, pairs=Dataset(name="pairs", uri=str(run / "merge-pairs" / "pairs")), params=_floats(params),
            profile=name, track=False, workspace=str(tmp_path / "ws"), run_id=run_id, num_nodes=2,
            nproc_per_node=1, gpus=False, image="ghcr.io/relightful/relightful:0.1.0-cpu", pod_cpu_request="1",
            pod_cpu_limit="2", pod_memory_request="4Gi", pod_memory_limit="4Gi", **outputs)
        return outputs

    try:
        outputs = step(1, "Run_A", tmp_path / "a")
        (job,) = operator.jobs.values()
        typed = ApiClient().deserialize(type("R", (), {"data": json.dumps(job)})(), "KubeflowOrgV1PyTorchJob")
        assert isinstance(typed, KubeflowOrgV1PyTorchJob)  # the Training Operator's own model of the object
        assert typed.metadata.name == "relightful-run-a-stage1" and typed.metadata.namespace == "relightful"
        assert {k: v.replicas for k, v in typed.spec.pytorch_replica_specs.items()} == {"Master": 1, "Worker": 1}
        pod = job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]
        assert pod["containers"][0]["name"] == "pytorch"
        assert pod["containers"][0]["resources"] == {"requests": {"cpu": "1", "memory": "4Gi"},
                                                     "limits": {"cpu": "2", "memory": "4Gi"}}  # the step's
        assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == WORKSPACE_PVC
        stage_dir = tmp_path / "ws" / "runs" / "Run_A" / "stage1"
        args = pod["containers"][0]["args"]
        assert args[args.index("--pairs") + 1] == str(stage_dir / "inputs" / "pairs")
        latest = stage_dir / "checkpoints" / (stage_dir / "checkpoints" / "latest").read_text().strip()
        state = json.loads((latest / "state.json").read_text())
        assert (latest / "optimizer-rank00001.safetensors").is_file()  # the second pod's rank wrote its shard
        assert state["world"] == 2 and state["step"] == params["train_stage1"]["steps"]
        assert outputs["metrics"].metadata["steps"] == params["train_stage1"]["steps"]
        assert RelightModel.from_pretrained(tmp_path / "a" / "model").config is not None

        step(1, "Run_A", tmp_path / "retry")  # a retried step: no second job, the finished one's model
        assert operator.created == 1
        assert sorted(p.name for p in (tmp_path / "retry" / "model").iterdir()) == \
            sorted(p.name for p in (tmp_path / "a" / "model").iterdir())

        with pytest.raises(pytorchjob.PyTorchJobFailed, match="relightful/relightful-run-b-stage2 failed: .* 2 replica"
                           r".*kubectl -n relightful logs -l training.kubeflow.org/job-name=relightful-run-b-stage2"):
            step(2, "Run_B", tmp_path / "b")  # stage 2 without the model to start from: the pods exit 1
        assert all("give --init" in log for log in operator.logs["relightful-run-b-stage2"])
    finally:
        operator.close()

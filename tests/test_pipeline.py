"""The Kubeflow pipeline: the committed YAML is what the code compiles to, the DAG and its cluster wiring are the
ones documented, the pipeline's parameters mean what params.yaml means, and the whole DAG runs on kfp's local
runner (smoke profile, two rendering workers) with the same results as the jobs run directly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
from pipelines.relightful_pipeline import (CONFIG_MAP, S3_SECRET, WORKSPACE, WORKSPACE_PVC,  # noqa: E402
                                           profile_params, without_nulls)


def _floats(x):
    """Every number as a float, as a kfp dict parameter carries it (protobuf Struct)."""
    if isinstance(x, dict):
        return {k: _floats(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_floats(v) for v in x]
    return float(x) if isinstance(x, int) and not isinstance(x, bool) else x


def _config_classes():
    from relightful.augment import AugmentConfig
    from relightful.data.pairs import RenderConfig
    from relightful.evaluation.config import EvalConfig
    from relightful.models import ModelConfig

    return {"augment": AugmentConfig, "evaluate": EvalConfig, "model": ModelConfig, "render": RenderConfig}


# --- compiled YAML ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def compiled() -> tuple[dict, dict]:
    """(pipeline spec, platform spec) of the committed YAML."""
    docs = list(yaml.safe_load_all(COMPILED.read_text()))
    return docs[0], docs[1]


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
    tasks = spec["root"]["dag"]["tasks"]

    def upstream(name: str) -> set[str]:
        task = tasks[name]
        found = set(task.get("dependentTasks", []))
        for value in task.get("inputs", {}).get("artifacts", {}).values():
            found.add(value.get("taskOutputArtifact", {}).get("producerTask"))
        return found - {None}

    assert {"starter-data", "synthetic-stage"} <= upstream("ingest-hdr")
    assert {"merge-pairs", "validate-data"} <= upstream("train-stage")
    assert "train-stage" in upstream("train-stage-2")
    assert {"natural-starter", "train-stage-2"} <= upstream("augment")
    assert {"augment", "train-stage-2"} <= upstream("train-stage-3")
    assert {"train-stage-3", "merge-pairs", "augment", "synthetic-stage"} <= upstream("evaluate")
    # rendering fans out over workers, the merge collects them all
    loop = next(t for t in tasks.values() if "iteratorPolicy" in t or "parameterIterator" in t)
    assert loop["parameterIterator"]["items"]["inputParameter"]
    assert "render-pairs-part" in spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"]
    # promotion only when tracking is on
    condition = next(t for t in tasks.values() if t.get("triggerPolicy", {}).get("condition"))
    assert "track" in condition["triggerPolicy"]["condition"]
    assert "promote" in spec["components"][condition["componentRef"]["name"]]["dag"]["tasks"]


def test_defaults_are_the_gpu_profile(compiled):
    spec, _ = compiled
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    name, params = profile_params("gpu")
    assert inputs["profile"]["defaultValue"] == "gpu"
    assert _floats(inputs["params"]["defaultValue"]) == _floats(params)
    assert inputs["render_workers"]["defaultValue"] == 2 and inputs["workspace"]["defaultValue"] == WORKSPACE


def test_cluster_wiring(compiled):
    spec, platform = compiled
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    containers = spec["deploymentSpec"]["executors"]
    for name, config in executors.items():  # every step: MLflow/S3 settings and credentials by reference only
        assert config["secretAsEnv"][0]["secretName"] == S3_SECRET
        assert {e["secretKey"] for e in config["secretAsEnv"][0]["keyToEnv"]} == {"AWS_ACCESS_KEY_ID",
                                                                                 "AWS_SECRET_ACCESS_KEY"}
        assert config["configMapAsEnv"][0]["configMapName"] == CONFIG_MAP
    training = [n for n in containers if n.startswith("exec-train-stage")]
    assert len(training) == 3
    for name in training:
        pvc = executors[name]["pvcMount"][0]
        assert pvc["mountPath"] == WORKSPACE and pvc["constant"] == WORKSPACE_PVC
        assert executors[name]["emptyDirMounts"][0]["mountPath"] == "/dev/shm"
        resources = containers[name]["container"]["resources"]
        assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
        assert containers[name]["container"]["image"].endswith("-cuda")
    assert containers["exec-ingest-hdr"]["container"]["image"].endswith("-cpu")
    assert "resources" not in containers["exec-ingest-hdr"]["container"]
    retried = [t for t in spec["root"]["dag"]["tasks"].values() if "retryPolicy" in t]
    assert len(retried) == 3


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
    from relightful.data.plan import PlanConfig

    assert from_dict(PlanConfig, {"seed": 3.0}).seed == 3
    with pytest.raises(ValueError, match="seed"):
        from_dict(PlanConfig, {"seed": 3.5})


# --- the local run ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def local_run(tmp_path_factory) -> tuple[Path, str]:
    """The whole pipeline on the smoke profile, tracked to a fresh MLflow store, in a clean subprocess."""
    root = tmp_path_factory.mktemp("kfp")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    launcher = {"RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RELIGHTFUL_")) and k not in launcher}
    env.update(MLFLOW_TRACKING_URI=uri, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    done = subprocess.run([sys.executable, "-m", "pipelines.run_local", "--profile", "smoke", "--root", str(root),
                           "--render-workers", "2"], cwd=root, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, f"local run failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    (run,) = (root / "pipeline-root").iterdir()
    return run, uri


def _outputs(task_dir: Path) -> dict:
    return json.loads((task_dir / "executor_output.json").read_text())


def test_sharded_render_equals_one_run(local_run, tmp_path):
    from relightful.data.pairs import RenderConfig, render_pairs
    from relightful.lighting import LedRig

    run, _ = local_run
    stage, envmaps = run / "synthetic-stage" / "lightstage", run / "ingest-hdr" / "envmaps"
    parts = sorted(run.glob("for-loop-*/render-pairs-part/part"))
    assert len(parts) == 2 and all(any(p.glob("shard-*.safetensors")) for p in parts)
    config = load_config(RenderConfig, REPO / "params.yaml", "render", profile="smoke")
    single = render_pairs(stage / "subjects", LedRig.from_json(stage / "rig.json"), envmaps, tmp_path / "one", config,
                          progress=False)
    merged = run / "merge-pairs" / "pairs"
    pd.testing.assert_frame_equal(pd.read_parquet(merged / "manifest.parquet"), single)
    for shard in sorted((tmp_path / "one").glob("shard-*.safetensors")):
        a, b = load_tensors(shard), load_tensors(merged / shard.name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    report = json.loads((run / "validate-data" / "report" / "data_validation.json").read_text())
    assert report["success"] is True


def test_models_registered_evaluated_and_promoted(local_run):
    from mlflow import MlflowClient

    from relightful.tracking.registry import find_version_of_folder

    run, uri = local_run
    client = MlflowClient(uri)
    stage3 = run / "train-stage-3" / "model"
    for task, name in (("train-stage", "relightful-stage1"), ("train-stage-2", "relightful-stage2"),
                       ("train-stage-3", "relightful-stage3")):
        version = find_version_of_folder(client, run / task / "model", [name])
        assert version is not None, f"{task}'s model is not registered as {name}"
        metrics = _outputs(run / task)["artifacts"]["metrics"]["artifacts"][0]["metadata"]
        assert metrics["steps"] > 0 and metrics["loss"] > 0
        assert "<img src='data:image/png;base64," in (run / task / "samples").read_text()
    champion = client.get_model_version_by_alias("relightful-stage3", "champion")
    assert str(champion.version) == str(find_version_of_folder(client, stage3, ["relightful-stage3"]).version)
    decision = json.loads((run / "promote" / "decision").read_text())
    assert decision["decision"] == "champion" and decision["version"] == str(champion.version)
    assert _outputs(run / "promote")["parameterValues"]["Output"] == "champion"

    summary = json.loads((run / "evaluate" / "evaluation" / "metrics.json").read_text())
    logged = _outputs(run / "evaluate")["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    model = summary["lightstage"]["methods"]["model"]
    assert logged["lightstage.model.fg_psnr"] == pytest.approx(model["fg_psnr"])
    assert (run / "evaluate" / "report").read_text().lstrip().lower().startswith(("<!doctype", "<html"))
    assert client.get_model_version("relightful-stage3", champion.version).tags.get("eval.fg_psnr")


# --- scheduled retraining through the KFP API --------------------------------------------------------------------

class FakeKfpApi:
    """The few KFP v2beta1 REST endpoints the schedule uses, on 127.0.0.1, recording what it was sent: the real
    `kfp.Client` talks to it over HTTP (no cluster here)."""

    def __init__(self):
        import http.server
        import threading

        self.experiments: dict[str, dict] = {}
        self.recurring: dict[str, dict] = {}
        self.runs: list[dict] = []
        self.ids = iter(range(100, 1_000_000))
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
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

            def do_GET(self):
                from urllib.parse import parse_qs, unquote, urlparse

                url = urlparse(self.path)
                query = parse_qs(url.query)
                if url.path == "/apis/v2beta1/healthz":
                    return self._reply({"multi_user": False, "tag_name": "2.5.0"})
                if url.path == "/apis/v2beta1/experiments":
                    predicate = json.loads(unquote(query["filter"][0]))["predicates"][0] if "filter" in query else {}
                    wanted = predicate.get("stringValue")
                    found = [e for e in api.experiments.values() if wanted in (None, e["display_name"])]
                    return self._reply({"experiments": found, "total_size": len(found)})
                if url.path == "/apis/v2beta1/recurringruns":
                    exp = query.get("experiment_id", [None])[0]
                    found = [r for r in api.recurring.values() if exp in (None, r["experiment_id"])]
                    return self._reply({"recurringRuns": found, "total_size": len(found)})
                return self._reply({"error": self.path}, 404)

            def do_POST(self):
                body = self._body()
                if self.path == "/apis/v2beta1/experiments":
                    exp = {**body, "experiment_id": f"exp-{len(api.experiments)}"}
                    api.experiments[exp["experiment_id"]] = exp
                    return self._reply(exp)
                if self.path == "/apis/v2beta1/recurringruns":
                    rec = {**body, "recurring_run_id": f"rec-{next(api.ids)}"}
                    api.recurring[rec["recurring_run_id"]] = rec
                    return self._reply(rec)
                if self.path.startswith("/apis/v2beta1/runs"):
                    run = {**body, "run_id": f"run-{len(api.runs)}"}
                    api.runs.append(run)
                    return self._reply(run)
                return self._reply({"error": self.path}, 404)

            def do_DELETE(self):
                api.recurring.pop(self.path.rsplit("/", 1)[-1], None)
                return self._reply({})

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


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
    assert history[-1]["step"] == params["stage1"]["steps"] == metrics.metadata["steps"]
    assert metrics.metadata["loss"] == pytest.approx(history[-1]["loss"])
    assert RelightModel.from_pretrained(tmp_path / "model").config is not None
    assert "data:image/png;base64," in (tmp_path / "s.html").read_text()

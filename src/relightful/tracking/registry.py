"""Registering a trained stage as a version of `relightful-stage{N}` (DESIGN 3.8, 3.10).

The model folder is logged as an MLflow model of the `python_function` flavour (`relightful.serving.pyfunc`):
`MLmodel`, a signature, an input example, and the folder itself as the artifact `model`, logged from code so that
nothing is pickled. In MLflow 3 that makes a *logged model* of the run (`models:/m-...`), and the registered
version points at it, so `mlflow.pyfunc.load_model("models:/relightful-stage3@champion")` and `mlflow models
serve` work, while `relightful.tracking.resolve_model` finds the model folder inside the downloaded MLflow model.

MLflow's `log_model` reads the *global* tracking URI; the tracker's own URI is set for the duration of the call
only, so that registering never changes what the rest of the process talks to.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from relightful.io.digest import folder_digest
from relightful.io.errors import InputError
from relightful.tracking.model_uri import CONFIG_FILE
from relightful.tracking.runs import RunTracker, tracking_errors

MODEL_ARTIFACT = "model"
DIGEST_TAG = "model_digest"  # sha256 of the model folder's files: finds the version of a local folder


def stage_model_name(stage: int) -> str:
    return f"relightful-stage{stage}"


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: str
    source: str
    run_id: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def ensure_registered_model(client, name: str) -> None:
    """Create registered model `name` unless it exists (a concurrent creation is fine)."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name)
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def pip_requirements() -> list[str]:
    """What an environment needs to load the model: this package's inference extra at this version, and MLflow."""
    from importlib.metadata import PackageNotFoundError, version

    import relightful

    try:
        mlflow_version = version("mlflow")
    except PackageNotFoundError:
        mlflow_version = version("mlflow-skinny")
    return [f"relightful[inference]=={relightful.__version__}", f"mlflow=={mlflow_version}"]


@contextlib.contextmanager
def _tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's global tracking URI set to `uri` inside the block only (`log_model` has no client of its own).
    MLflow's own context manager mirrors the URI into `MLFLOW_TRACKING_URI` and *unsets* it on the way out, so
    the variable is put back as it was."""
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    before = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        with _use_tracking_uri(uri):
            yield
    finally:
        if before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before


def log_mlflow_model(model_dir: str | Path, run: RunTracker):
    """Log `model_dir` as the `python_function` MLflow model `model` of `run`; returns MLflow's `ModelInfo`."""
    import mlflow.pyfunc
    from mlflow.models import Model

    from relightful.tracking.mlflow_model import ENTRY_FILE, MODEL_ARTIFACT_KEY, input_example, signature

    with tracking_errors(run.uri, f"cannot log {model_dir} as an MLflow model of run {run.run_id}"), \
            _tracking_uri(run.uri):
        # made here, in the run's experiment (Model.log would put it in the *active* experiment)
        experiment_id = run.client.get_run(run.run_id).info.experiment_id
        logged = run.client.create_logged_model(experiment_id, name=MODEL_ARTIFACT, source_run_id=run.run_id)
        return Model.log(artifact_path=None, name=MODEL_ARTIFACT, flavor=mlflow.pyfunc, flavor_name="python_function",
                         run_id=run.run_id, model_id=logged.model_id, python_model=str(ENTRY_FILE),
                         artifacts={MODEL_ARTIFACT_KEY: str(Path(model_dir).resolve())},
                         signature=signature(), input_example=input_example(), pip_requirements=pip_requirements(),
                         await_registration_for=0)


def register_stage_model(stage: int, model_dir: str | Path, run: RunTracker | str,
                         tags: Mapping[str, str] | None = None) -> RegisteredVersion:
    """Log `model_dir` as the MLflow model `model` of `run` (a tracker, or a run id in the store of
    `default_tracking_uri()`) and register it as a new version of `relightful-stage{stage}`, tagged with `tags`
    (data_version, git_commit, ...), `stage` and the folder's digest, described by the model card's opening."""
    from relightful.models.model_card import card_summary

    if isinstance(run, str):
        run = RunTracker.attach(run)
    model_dir = Path(model_dir)
    if not (model_dir / CONFIG_FILE).is_file():
        raise InputError(model_dir / CONFIG_FILE, "not a relightful model folder (file missing): nothing to register")
    name = stage_model_name(stage)
    info = log_mlflow_model(model_dir, run)
    version_tags = {**{k: str(v) for k, v in (tags or {}).items()}, "stage": str(stage),
                    DIGEST_TAG: folder_digest(model_dir)}
    # the registry looks the logged model up in the *global* tracking store: the run's, for the call
    with tracking_errors(run.uri, f"cannot register {model_dir} as a version of {name}"), _tracking_uri(run.uri):
        ensure_registered_model(run.client, name)
        version = run.client.create_model_version(name, source=info.model_uri, run_id=run.run_id, tags=version_tags,
                                                  description=card_summary(model_dir) or None,
                                                  model_id=info.model_id)
    return RegisteredVersion(name, str(version.version), info.model_uri, run.run_id)


def find_version_of_folder(client, model_dir: str | Path, names: list[str]):
    """The newest registered version among `names` whose files are those of `model_dir` (by digest), or None."""
    digest = folder_digest(model_dir)
    found = [v for name in names for v in client.search_model_versions(f"name='{name}'")
             if (v.tags or {}).get(DIGEST_TAG) == digest]
    return max(found, key=lambda v: int(v.creation_timestamp or 0), default=None)


__all__ = ["DIGEST_TAG", "MODEL_ARTIFACT", "RegisteredVersion", "ensure_registered_model", "find_version_of_folder",
           "log_mlflow_model", "pip_requirements", "register_stage_model", "stage_model_name"]

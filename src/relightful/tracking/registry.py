"""Registering a trained stage as a version of `relightful-stage{N}` (DESIGN 3.8).

The model folder (safetensors + JSON, no MLmodel file) is logged as the run's artifact folder `model`, and the
version's source is that folder's artifact URI. `mlflow.register_model("runs:/<id>/model")` does not do: in
MLflow 3 it looks for a *logged model* under the run and fails for a plain artifact folder, so the version is
made with `create_model_version(name, source=<artifact URI>, run_id=...)`, which the server accepts because the
source lies inside that run's artifact root. The version is then what `models:/relightful-stageN/<v>` (or
`@alias`) resolves to with `relightful.tracking.resolve_model`.
"""

from __future__ import annotations

from collections.abc import Mapping
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


def register_stage_model(stage: int, model_dir: str | Path, run: RunTracker | str,
                         tags: Mapping[str, str] | None = None) -> RegisteredVersion:
    """Log `model_dir` as artifact `model` of `run` (a tracker, or a run id in the store of `default_tracking_uri()`) and
    register it as a new version of `relightful-stage{stage}`, tagged with `tags` (data_version, git_commit, ...)
    and `stage`."""
    if isinstance(run, str):
        run = RunTracker.attach(run)
    model_dir = Path(model_dir)
    if not (model_dir / CONFIG_FILE).is_file():
        raise InputError(model_dir / CONFIG_FILE, "not a relightful model folder (file missing): nothing to register")
    name = stage_model_name(stage)
    run.log_artifact(model_dir, MODEL_ARTIFACT)
    source = run.artifact_uri(MODEL_ARTIFACT)
    version_tags = {**{k: str(v) for k, v in (tags or {}).items()}, "stage": str(stage),
                    DIGEST_TAG: folder_digest(model_dir)}
    with tracking_errors(run.uri, f"cannot register {model_dir} as a version of {name}"):
        ensure_registered_model(run.client, name)
        version = run.client.create_model_version(name, source=source, run_id=run.run_id, tags=version_tags)
    return RegisteredVersion(name, str(version.version), source, run.run_id)


def find_version_of_folder(client, model_dir: str | Path, names: list[str]):
    """The newest registered version among `names` whose files are those of `model_dir` (by digest), or None."""
    digest = folder_digest(model_dir)
    found = [v for name in names for v in client.search_model_versions(f"name='{name}'")
             if (v.tags or {}).get(DIGEST_TAG) == digest]
    return max(found, key=lambda v: int(v.creation_timestamp or 0), default=None)


__all__ = ["DIGEST_TAG", "MODEL_ARTIFACT", "RegisteredVersion", "ensure_registered_model", "find_version_of_folder",
           "register_stage_model", "stage_model_name"]

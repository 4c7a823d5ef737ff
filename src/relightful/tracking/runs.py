"""One MLflow run per job, in the experiment `relightful` (DESIGN 3.8).

`RunTracker` wraps `MlflowClient` (not the fluent API, whose global active run would leak between jobs in one
process). The tracking URI is `MLFLOW_TRACKING_URI`, else the embedded store `sqlite:///<cwd>/mlflow.db`; with a
local sqlite store the experiment is created with its artifacts in `mlartifacts/` beside the database, so nothing
lands in MLflow's cwd-relative `./mlruns` default. Every failure to reach or write the store raises
`TrackingError` naming the tracking URI: a job never finishes with its tracking silently lost.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from relightful.io.errors import redact
from relightful.tracking.http import unreachable_hint
from relightful.tracking.model_uri import default_tracking_uri

log = logging.getLogger(__name__)

EXPERIMENT = "relightful"
_PARAMS_PER_BATCH, _METRICS_PER_BATCH, _PARAM_MAX = 100, 1000, 6000  # mlflow.utils.validation limits


class TrackingError(RuntimeError):
    """The tracking server or store could not be used; the message names the tracking URI and the reason."""

    def __init__(self, uri: str, reason: str):
        self.uri, self.reason = redact(uri), redact(reason)  # a URI may hold user:password@ or ?token=
        super().__init__(f"MLflow tracking at {self.uri}: {self.reason}")


def local_artifact_root(uri: str) -> Path | None:
    """`mlartifacts/` beside an embedded sqlite store's database file; None for a server or other store."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]  # "/abs/mlflow.db" (sqlite:////...) or "relative.db"
    if not path or path == ":memory:":
        return Path.cwd() / "mlartifacts"
    return Path(path).resolve().parent / "mlartifacts"


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> {"a.b.c": "value"} with MLflow's value length limit (longer values are cut, marked)."""
    out: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{name}."))
        else:
            text = str(list(value) if isinstance(value, tuple) else value)
            out[name] = text if len(text) <= _PARAM_MAX else text[:_PARAM_MAX - 3] + "..."
    return out


def _chunks(items: list, n: int) -> Iterator[list]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


class RunTracker:
    """A run of the `relightful` experiment: `with RunTracker.start("train-stage1") as run: run.log_params(...)`.

    Leaving the block ends the run as FINISHED, or FAILED when the block raised."""

    def __init__(self, client, run_id: str, uri: str):
        self.client, self.run_id, self.uri = client, run_id, uri

    @classmethod
    def start(cls, run_name: str, tags: Mapping[str, str] | None = None, uri: str | None = None,
              experiment: str = EXPERIMENT) -> "RunTracker":
        uri = uri or default_tracking_uri()
        client = make_client(uri)
        with tracking_errors(uri, "cannot start a run"):
            experiment_id = ensure_experiment(client, experiment, uri)
            run = client.create_run(experiment_id, run_name=run_name, tags=dict(tags or {}))
        return cls(client, run.info.run_id, uri)

    @classmethod
    def attach(cls, run_id: str, uri: str | None = None) -> "RunTracker":
        """An existing run (e.g. evaluation logging to the candidate's training run); `end` is up to the caller."""
        uri = uri or default_tracking_uri()
        return cls(make_client(uri), run_id, uri)

    def __enter__(self) -> "RunTracker":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.end("FAILED" if exc_type else "FINISHED", quiet=exc_type is not None)

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in flatten(params).items()]
        with tracking_errors(self.uri, f"cannot log params of run {self.run_id}"):
            for chunk in _chunks(items, _PARAMS_PER_BATCH):
                self.client.log_batch(self.run_id, params=chunk)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        with tracking_errors(self.uri, f"cannot tag run {self.run_id}"):
            for chunk in _chunks([RunTag(k, str(v)) for k, v in tags.items()], _PARAMS_PER_BATCH):
                self.client.log_batch(self.run_id, tags=chunk)

    def log_metrics(self, rows: list[Mapping[str, float]], step_key: str = "step") -> None:
        """One metric point per key of each row, at the row's `step_key` (non-numeric values are skipped; a NaN
        loss is logged as NaN: a diverged run must show it)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        points = [Metric(k, float(v), now, int(row[step_key]))
                  for row in rows for k, v in row.items()
                  if k != step_key and isinstance(v, (int, float)) and not isinstance(v, bool)]
        with tracking_errors(self.uri, f"cannot log metrics of run {self.run_id}"):
            for chunk in _chunks(points, _METRICS_PER_BATCH):
                self.client.log_batch(self.run_id, metrics=chunk)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """A file, or a folder's content, under `artifact_path` of the run."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: artifact to log not found")
        with tracking_errors(self.uri, f"cannot upload {path} to run {self.run_id}"):
            if path.is_dir():
                self.client.log_artifacts(self.run_id, str(path), artifact_path)
            else:
                self.client.log_artifact(self.run_id, str(path), artifact_path)

    def artifact_uri(self, artifact_path: str = "") -> str:
        with tracking_errors(self.uri, f"cannot read run {self.run_id}"):
            root = self.client.get_run(self.run_id).info.artifact_uri.rstrip("/")
        return f"{root}/{artifact_path}" if artifact_path else root

    def end(self, status: str = "FINISHED", quiet: bool = False) -> None:
        try:
            with tracking_errors(self.uri, f"cannot end run {self.run_id}"):
                self.client.set_terminated(self.run_id, status)
        except TrackingError:
            if not quiet:
                raise
            log.warning("could not mark run %s %s at %s", self.run_id, status, redact(self.uri))


def make_client(uri: str):
    try:
        from mlflow import MlflowClient
    except ImportError:
        raise TrackingError(uri, "mlflow is not installed (pip install 'relightful[mlops]')") from None
    return MlflowClient(tracking_uri=uri, registry_uri=os.environ.get("MLFLOW_REGISTRY_URI") or uri)


def ensure_experiment(client, name: str, uri: str) -> str:
    """The id of experiment `name`, created when missing (artifacts in `mlartifacts/` for a local store)."""
    from mlflow.exceptions import MlflowException

    root = local_artifact_root(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, artifact_location=root.as_uri() if root else None)
        except MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":  # else: created by a concurrent job
                raise
            experiment = client.get_experiment_by_name(name)
    location = experiment.artifact_location or ""
    if root is not None and location.startswith("file:") and location != root.as_uri():  # S3 etc.: deliberate
        log.warning("experiment %r at %s keeps its artifacts in %s (not %s)", name, redact(uri),
                    redact(experiment.artifact_location), root.as_uri())
    return experiment.experiment_id


@contextlib.contextmanager
def tracking_errors(uri: str, what: str) -> Iterator[None]:
    """Turn MLflow, HTTP and storage errors inside the block into `TrackingError(uri, "what (reason)")`."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except TrackingError:
        raise
    except Exception as exc:
        if not (isinstance(exc, (MlflowException, OSError)) or type(exc).__module__.startswith(
                ("requests", "urllib3", "botocore", "boto3", "sqlalchemy"))):
            raise
        message = getattr(exc, "message", None) or str(exc)
        raise TrackingError(uri, f"{what} ({type(exc).__name__}: {message[:500]}){unreachable_hint(exc)}") from exc


__all__ = ["EXPERIMENT", "RunTracker", "TrackingError", "ensure_experiment", "flatten", "local_artifact_root",
           "make_client", "tracking_errors"]

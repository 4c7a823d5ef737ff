"""`--model` resolution: a model folder, or an MLflow URI (`models:/relightful-stage3@champion`, `runs:/<id>/model`,
`s3://...`) downloaded to a local folder (DESIGN 3.7, 3.8)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from relightful.io.errors import InputError

CONFIG_FILE = "relightful.json"  # the marker file of a model folder (relightful.models.relight_model.CONFIG_FILE)
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")  # a scheme of 2+ characters: "models:", "runs:", "s3:", not "C:"


def default_tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI`, else the embedded store `sqlite:///mlflow.db` in the current directory (DESIGN 3.8)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def is_model_uri(model: str) -> bool:
    return bool(_URI.match(model)) and not Path(model).exists()


def _model_folder(root: Path, source: str) -> Path:
    """The folder holding relightful.json in `root` (itself, or the shallowest one below it)."""
    if (root / CONFIG_FILE).is_file():
        return root
    found = sorted(root.rglob(CONFIG_FILE), key=lambda p: (len(p.parts), str(p))) if root.is_dir() else []
    if not found:
        raise InputError(source, f"no {CONFIG_FILE} in the downloaded artifacts ({root}): not a relightful model")
    return found[0].parent


def resolve_model(model: str | Path, tracking_uri: str | None = None, dst: str | Path | None = None) -> Path:
    """A local model folder for `model`: a folder is checked and returned as is; a URI is downloaded with
    `mlflow.artifacts.download_artifacts` (into `dst`, or a new temporary folder; a local artifact store's own
    folder is returned directly). Anything unusable raises `InputError` naming the folder or URI."""
    text = str(model)
    if not is_model_uri(text):
        folder = Path(text)
        if not folder.is_dir():
            raise InputError(folder, "model folder not found (give a model folder or an MLflow URI such as "
                                     "models:/relightful-stage3@champion)")
        if not (folder / CONFIG_FILE).is_file():
            raise InputError(folder / CONFIG_FILE, "not a relightful model folder (file missing)")
        return folder
    try:
        import mlflow.artifacts
        from mlflow.exceptions import MlflowException
    except ImportError:
        raise InputError(text, "resolving an MLflow URI needs mlflow (pip install 'relightful[mlops]')") from None
    uri = tracking_uri or default_tracking_uri()
    registry = os.environ.get("MLFLOW_REGISTRY_URI") or uri
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=text, dst_path=None if dst is None else str(dst),
                                                    tracking_uri=uri, registry_uri=registry)
    except MlflowException as err:  # InputError redacts the URI and message (user:password@, ?token=)
        from relightful.tracking.http import unreachable_hint

        raise InputError(text, f"cannot resolve the MLflow URI against {uri} ({err.message}){unreachable_hint(err)}"
                         ) from None
    except OSError as err:
        raise InputError(text, f"cannot download the model artifacts from {uri} ({err})") from None
    return _model_folder(Path(local), text)

"""What each job sends to MLflow, so that the command line stays free of MLflow calls and the training library
never imports mlflow: the CLI trains, then hands the result here."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from relightful.tracking.lineage import data_version, git_commit
from relightful.tracking.model_uri import default_tracking_uri
from relightful.tracking.registry import RegisteredVersion, register_stage_model
from relightful.tracking.runs import RunTracker, make_client, tracking_errors


def check_tracking(uri: str | None = None) -> str:
    """Reach the tracking store and make sure the experiment exists, before a long job starts; returns the URI.
    Raises `TrackingError` naming the URI when the store cannot be used."""
    from relightful.tracking.runs import EXPERIMENT, ensure_experiment

    uri = uri or default_tracking_uri()
    client = make_client(uri)
    with tracking_errors(uri, "the tracking store cannot be reached"):
        ensure_experiment(client, EXPERIMENT, uri)
    return uri


def log_training(stage: int, model_dir: str | Path, history: list[Mapping[str, float]], params: Mapping[str, Any],
                 pairs_dir: str | Path, lock_path: str | Path = "dvc.lock", samples_dir: str | Path | None = None,
                 metrics_file: str | Path | None = None, uri: str | None = None) -> RegisteredVersion:
    """One run `train-stage{N}`: params (flattened), the loss history per step, the sample grids and the metrics
    file as artifacts, and the model folder registered as a version of `relightful-stage{N}` tagged with the data
    version of `pairs_dir` and the git commit. Raises `TrackingError` (naming the URI) when anything fails; the
    run is then marked FAILED when the store still answers."""
    lineage = {**data_version(pairs_dir, lock_path).tags(), "git_commit": git_commit(), "stage": str(stage)}
    with RunTracker.start(f"train-stage{stage}", tags=lineage, uri=uri) as run:
        run.log_params({"stage": stage, "pairs": str(pairs_dir), **params})
        run.log_metrics(list(history))
        if samples_dir is not None and Path(samples_dir).is_dir():
            run.log_artifact(samples_dir, "samples")
        if metrics_file is not None and Path(metrics_file).is_file():
            run.log_artifact(metrics_file, "metrics")
        return register_stage_model(stage, model_dir, run, lineage)


def log_job(command: str, params: Mapping[str, Any], reports: list[Path], uri: str | None = None) -> str:
    """One run named `command` (a data job): params flattened, each report file as an artifact under `reports/`,
    and the numbers at the top level of JSON reports (`n_pairs`, ...) as metrics. Returns the run id; raises
    `TrackingError` naming the URI."""
    import json

    metrics: dict[str, float] = {}
    for path in reports:
        if path.suffix == ".json":
            try:
                content = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(content, dict):
                metrics.update({k: v for k, v in content.items()
                                if isinstance(v, (int, float)) and not isinstance(v, bool)})
    with RunTracker.start(command, tags={"job": command, "git_commit": git_commit()}, uri=uri) as run:
        run.log_params(params)
        if metrics:
            run.log_metrics([{"step": 0, **metrics}])
        for path in reports:
            run.log_artifact(path, "reports")
        return run.run_id


def _candidate_version(client, model: str):
    """The registered version `model` refers to: an MLflow `models:/name/N` or `models:/name@alias` URI, or a
    local folder found by its digest among the stage models; None when it was never registered."""
    from relightful.tracking.model_uri import is_model_uri
    from relightful.tracking.registry import find_version_of_folder, stage_model_name

    if is_model_uri(model):
        if not model.startswith("models:/"):
            return None
        name, _, ref = model[len("models:/"):].partition("@")
        if ref:
            return client.get_model_version_by_alias(name, ref)
        name, _, number = name.partition("/")
        return client.get_model_version(name, number)
    return find_version_of_folder(client, model, [stage_model_name(s) for s in (3, 2, 1)])


def log_evaluation(model: str | Path, metrics: Mapping[str, Any], report_dir: str | Path,
                   uri: str | None = None) -> tuple[str, str | None]:
    """Evaluation logs to the candidate's run (DESIGN 3.8): the run that registered `model` (folder or URI) gets
    the metrics as `eval.<scenario>.<method>.<metric>` and the report under `eval/`, and its version the tags
    `eval.fg_psnr`, `eval.fg_ssim` and `eval.quality_bar`. An unregistered model gets a run `evaluate` of its own.
    Returns (run id, "models:/name/N" or None). Raises `TrackingError` naming the URI."""
    from relightful.io.digest import folder_digest

    uri = uri or default_tracking_uri()
    client = make_client(uri)
    with tracking_errors(uri, f"cannot look up the registered version of {model}"):
        version = _candidate_version(client, str(model))
    row = {"step": 0}
    for scenario in ("lightstage", "natural"):
        for method, values in (metrics.get(scenario) or {}).get("methods", {}).items():
            row.update({f"eval.{scenario}.{method}.{k}": v for k, v in values.items() if v is not None})
    if version is None:
        tags = {"model_digest": folder_digest(model)} if Path(str(model)).is_dir() else {}
        run = RunTracker.start("evaluate", tags={"model": str(model), **tags}, uri=uri)
    else:
        run = RunTracker.attach(version.run_id, uri=uri)
    run.log_metrics([row])
    run.log_artifact(report_dir, "eval")
    if version is None:
        run.end()
        return run.run_id, None
    model_scores = (metrics.get("lightstage") or {}).get("methods", {}).get("model", {})
    tags = {f"eval.{k}": str(model_scores[k]) for k in ("fg_psnr", "fg_ssim") if model_scores.get(k) is not None}
    tags["eval.quality_bar"] = str(metrics["quality_bar"]["passed"])
    with tracking_errors(uri, f"cannot tag {version.name} version {version.version}"):
        for k, v in tags.items():
            client.set_model_version_tag(version.name, version.version, k, v)
        described = (version.description or "").split(EVALUATION_HEADING)[0].rstrip()
        client.update_model_version(version.name, version.version,
                                    description=f"{described}\n\n{evaluation_summary(metrics)}".lstrip())
    return version.run_id, f"models:/{version.name}/{version.version}"


EVALUATION_HEADING = "## Held-out evaluation"


def evaluation_summary(metrics: Mapping[str, Any]) -> str:
    """The held-out figures of `relightful evaluate`'s metrics, as Markdown for the version's description (the model
    card in the folder was written before they existed)."""
    lines = [EVALUATION_HEADING]
    for scenario in ("lightstage", "natural"):
        block = metrics.get(scenario) or {}
        methods = block.get("methods", {})
        if "model" not in methods:
            continue
        figures = (("fg_psnr", "fg PSNR", 2, " dB"), ("fg_ssim", "fg SSIM", 3, ""))
        if scenario == "lightstage":  # the light direction is known only for light-stage targets
            figures += (("light_dir_err_deg", "light-direction error", 1, "°"),)
        row = lambda name: ", ".join(f"{label} {methods[name][key]:.{digits}f}{unit}"  # noqa: E731
                                     for key, label, digits, unit in figures if methods[name].get(key) is not None)
        lines.append(f"- {scenario} ({block.get('n_pairs', '?')} pairs): model {row('model')}; "
                     + "; ".join(f"{name} {row(name)}" for name in ("composite", "gain_regression", "shading")
                                 if name in methods))
    bar = metrics.get("quality_bar") or {}
    if bar.get("statement"):
        lines.append(f"- {bar['statement']}")
    return "\n".join(lines)


__all__ = ["check_tracking", "evaluation_summary", "log_evaluation", "log_job", "log_training"]

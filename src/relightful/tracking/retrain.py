"""Should the model be retrained? Yes when the data changed since the champion was trained, or when there is no
champion (DESIGN 1: retrain on a schedule, but only when there is something new to learn from)."""

from __future__ import annotations

from dataclasses import dataclass

from relightful.tracking.lineage import SOURCE_MANIFEST, DataVersion


@dataclass(frozen=True)
class RetrainDecision:
    retrain: bool
    reason: str
    champion_version: str | None
    champion_data_version: str | None
    current_data_version: str

    def message(self, name: str, alias: str) -> str:
        head = "retrain" if self.retrain else "up to date"
        if self.champion_version is None:
            return f"{head}: {self.reason} ({name}@{alias}); the current data version is {self.current_data_version}"
        return (f"{head}: {self.reason}; {name}@{alias} (version {self.champion_version}) was trained on data "
                f"version {self.champion_data_version or 'unknown'}, the current data version is "
                f"{self.current_data_version}")


def champion_version(client, name: str, alias: str):
    """The version behind `name@alias`, or None when the model or the alias does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as err:
        missing_alias = err.error_code == "INVALID_PARAMETER_VALUE" and "alias" in err.message  # how a server says it
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND") or missing_alias:
            return None
        raise


def decide_retrain(version, current: DataVersion) -> RetrainDecision:
    """Compare the data lineage tags of `version` (None: no champion) with the current data version. Versions
    from different sources (dvc.lock vs manifest) are compared through their manifest md5s."""
    if version is None:
        return RetrainDecision(True, "no champion exists", None, None, current.value)
    tags = dict(version.tags or {})
    recorded = tags.get("data_version")
    if recorded is None:
        return RetrainDecision(True, "the champion has no data_version tag", str(version.version), None,
                               current.value)
    if tags.get("data_version_source", SOURCE_MANIFEST) == current.source:
        same = recorded == current.value
    else:
        same = tags.get("data_manifest_md5") == current.manifest_md5
    reason = "the data is the one the champion was trained on" if same else "the data changed"
    return RetrainDecision(not same, reason, str(version.version), recorded, current.value)


__all__ = ["RetrainDecision", "champion_version", "decide_retrain"]

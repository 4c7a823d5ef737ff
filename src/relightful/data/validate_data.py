"""The `validate-data` job: the data expectations (expectations.py) on the env-map and pair manifests, before any
training; the report (validation_report.py) is written whether or not they pass, and the caller decides the exit
status.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from relightful.data.expectations import validate_envmaps, validate_pairs
from relightful.data.shards import read_manifest
from relightful.data.validation_report import ENVMAPS, PAIRS, ValidationReport


@dataclass(frozen=True)
class ValidationConfig:
    """The `validate_data` block of params.yaml (the FoV range comes from `render_pairs.plan`)."""

    matte_coverage_range: tuple[float, float] = (0.05, 0.95)


def validate_data(
    envmap_manifest: str | Path | None,
    pair_manifest: str | Path | None,
    report_path: str | Path,
    fov_range: Sequence[float],
    matte_coverage_range: Sequence[float],
) -> ValidationReport:
    """Validate the manifests that are given, write the JSON report (and `.md` next to it) atomically, return it.

    When both are given, pairs are also checked to use only maps the envmap manifest accepted. The shards beside
    the pair manifest are checked against it (inside the folder, plan fingerprint, pairs at their indices).
    `report.success` is False if any check failed; the caller decides the exit status.
    """
    if envmap_manifest is None and pair_manifest is None:
        raise ValueError("validate_data: give at least one of envmap_manifest, pair_manifest")
    reports = []
    envmaps = None
    if envmap_manifest is not None:
        envmaps = read_manifest(envmap_manifest)
        rep = validate_envmaps(envmaps)
        rep.tables[ENVMAPS]["source"] = str(envmap_manifest)
        reports.append(rep)
    if pair_manifest is not None:
        pairs = read_manifest(pair_manifest)
        rep = validate_pairs(pairs, fov_range, matte_coverage_range, envmaps=envmaps,
                             pairs_dir=Path(pair_manifest).parent)
        rep.tables[PAIRS]["source"] = str(pair_manifest)
        reports.append(rep)
    report = ValidationReport.combine(*reports)
    report.write(report_path)
    return report


__all__ = ["ValidationConfig", "validate_data"]

"""The promotion gate: `champion` of `relightful-stage3` moves to a candidate only when it beats the champion on
the same held-out pairs by a margin; otherwise the candidate becomes `challenger` (DESIGN 3.8).

Both models are scored by one function `score(model_folder) -> {metric: value}` (higher is better). The decision
and both metric sets are written as tags of the candidate version (`promotion.*`), so the registry says why each
alias is where it is.

Idempotent: a candidate that is champion already, or that was decided against the current champion
(`promotion.compared_to_version`), is left as it is.

Concurrency: MLflow has no compare-and-set for aliases, so the gate (1) re-reads the champion after scoring and,
when another promotion won meanwhile, scores the new champion and decides again; (2) never promotes a candidate
whose version number is lower than the current champion's (champions only move forward, so a late writer cannot
demote a newer one); (3) tags its decision before moving the alias and, after moving it, checks for a newer
version promoted since this gate started (whose alias move it may have overwritten in the remaining window of a
few milliseconds) and gives the alias back to it. (3) compares timestamps of the promoting machines.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

CHAMPION, CHALLENGER = "champion", "challenger"
PREFIX = "promotion."
DECISION, COMPARED_TO, DECIDED_AT = PREFIX + "decision", PREFIX + "compared_to_version", PREFIX + "decided_at"
NO_CHAMPION = "none"

Scorer = Callable[[Path], Mapping[str, float]]


@dataclass(frozen=True)
class PromoteConfig:
    """`promote` block of params.yaml: the metric that decides, the margin it must win by, the held-out pairs."""
    metric: str = "fg_psnr"
    margin: float = 0.1
    split: str = "test"
    max_pairs: int = 64
    seed: int = 0
    higher_is_better: bool = True  # false for errors (fg_mse, light_dir_err_deg, lpips)


class PromotionError(RuntimeError):
    """The gate could not decide (missing metric, non-finite score, no version to promote)."""


@dataclass(frozen=True)
class PromotionResult:
    name: str
    version: str
    decision: str                    # "champion", "challenger" or "unchanged"
    changed: bool
    reason: str
    champion_before: str | None
    champion_after: str | None
    metrics: dict[str, float] = field(default_factory=dict)
    champion_metrics: dict[str, float] = field(default_factory=dict)

    def message(self) -> str:
        def fmt(m: dict[str, float]) -> str:
            return ", ".join(f"{k} {v:.4f}" for k, v in sorted(m.items())) or "-"
        return (f"promote {self.name} version {self.version}: {self.decision} ({self.reason}); champion "
                f"{self.champion_before or '-'} -> {self.champion_after or '-'}; candidate: {fmt(self.metrics)}; "
                f"champion: {fmt(self.champion_metrics)}")


def alias_version(client, name: str, alias: str) -> str | None:
    """The version number behind `name@alias`, None when the alias (or the model) does not exist."""
    from relightful.tracking.retrain import champion_version

    v = champion_version(client, name, alias)
    return None if v is None else str(v.version)


def latest_version(client, name: str) -> str:
    versions = client.search_model_versions(f"name='{name}'")
    if not versions:
        raise PromotionError(f"registered model {name} has no versions to promote")
    return str(max(int(v.version) for v in versions))


def promote(name: str, score: Scorer, config: PromoteConfig, version: str | int | None = None,
            uri: str | None = None, client=None, max_rounds: int = 5) -> PromotionResult:
    """Run the gate for `version` of `name` (default: its latest version); see the module docstring."""
    from relightful.tracking.model_uri import default_tracking_uri
    from relightful.tracking.runs import make_client, tracking_errors

    uri = uri or default_tracking_uri()
    client = client or make_client(uri)
    with tracking_errors(uri, f"promotion of {name}"):
        return _promote(client, uri, name, score, config, version, max_rounds)


def _promote(client, uri, name, score, config, version, max_rounds) -> PromotionResult:
    started = time.time()
    cand = str(version) if version is not None else latest_version(client, name)
    tags = dict(client.get_model_version(name, cand).tags or {})
    champ = alias_version(client, name, CHAMPION)
    if champ == cand:
        return _unchanged(name, cand, champ, "already the champion")
    if tags.get(COMPARED_TO) == (champ or NO_CHAMPION) and DECISION in tags:
        return _unchanged(name, cand, champ, f"already decided against champion {champ or NO_CHAMPION} "
                                             f"({tags[DECISION]})")
    scores = _score(client, uri, name, cand, score, config.metric)
    for _ in range(max_rounds):
        champ_scores = _score(client, uri, name, champ, score, config.metric) if champ else {}
        now = alias_version(client, name, CHAMPION)
        if now == champ:
            break
        champ = now  # another promotion won while we scored: decide against the new champion
        if champ == cand:
            return _unchanged(name, cand, champ, "promoted by a concurrent gate")
    else:
        raise PromotionError(f"{name}: the champion changed {max_rounds} times while scoring; try again")

    if champ is None:
        wins, reason = True, "no champion yet"
    elif int(cand) < int(champ):
        wins, reason = False, f"older than champion {champ} (champions only move to newer versions)"
    else:
        m, c = scores[config.metric], champ_scores[config.metric]
        lead = m - c if config.higher_is_better else c - m
        wins = lead > config.margin
        better = "higher" if config.higher_is_better else "lower"
        reason = (f"{config.metric} {m:.4f} vs champion {c:.4f}: {lead:+.4f} {'>' if wins else '<='} margin "
                  f"{config.margin} ({better} is better)")
    decision = CHAMPION if wins else CHALLENGER
    record = {DECISION: decision, DECIDED_AT: f"{started:.3f}", PREFIX + "reason": reason,
              **{f"{PREFIX}metrics.{k}": repr(float(v)) for k, v in scores.items()},
              **{f"{PREFIX}champion_metrics.{k}": repr(float(v)) for k, v in champ_scores.items()}}
    for key, value in record.items():
        client.set_model_version_tag(name, cand, key, value)
    client.set_registered_model_alias(name, decision, cand)
    if wins:
        newer = _newer_promotions(client, name, cand, started)
        if newer is not None:  # a newer version was promoted since we started: it keeps the alias
            client.set_registered_model_alias(name, CHAMPION, newer)
            reason += f"; then gave champion back to version {newer}, promoted concurrently"
    client.set_model_version_tag(name, cand, COMPARED_TO, champ or NO_CHAMPION)  # last: marks the decision done
    return PromotionResult(name, cand, decision, True, reason, champ, alias_version(client, name, CHAMPION),
                           dict(scores), dict(champ_scores))


def _newer_promotions(client, name: str, cand: str, started: float) -> str | None:
    newer = [int(v.version) for v in client.search_model_versions(f"name='{name}'")
             if int(v.version) > int(cand) and (v.tags or {}).get(DECISION) == CHAMPION
             and float((v.tags or {}).get(DECIDED_AT, "0")) >= started - 1.0]
    return str(max(newer)) if newer else None


def _score(client, uri: str, name: str, version: str, score: Scorer, metric: str) -> dict[str, float]:
    """Download `name` version `version` to a temporary folder and score it."""
    from relightful.tracking.model_uri import resolve_model

    with tempfile.TemporaryDirectory(prefix="relightful-promote-") as tmp:
        folder = resolve_model(f"models:/{name}/{version}", tracking_uri=uri, dst=tmp)
        scores = {k: float(v) for k, v in score(folder).items()}
    if metric not in scores:
        raise PromotionError(f"{name} version {version}: the score has no {metric!r} (got {sorted(scores)})")
    if not math.isfinite(scores[metric]):
        raise PromotionError(f"{name} version {version}: {metric} is {scores[metric]} (not finite)")
    return scores


def _unchanged(name: str, version: str, champion: str | None, reason: str) -> PromotionResult:
    return PromotionResult(name, version, "unchanged", False, reason, champion, champion)


__all__ = ["CHALLENGER", "CHAMPION", "PromoteConfig", "PromotionError", "PromotionResult", "Scorer",
           "alias_version", "latest_version", "promote"]

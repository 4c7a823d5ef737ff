"""Scoring a model against the baselines and the reference bounds on held-out pairs (DESIGN 3.6, 3.9).

Scenarios: `lightstage` (rendered test pairs: ground truth from the light stage, plus the reference bounds, the
panorama-conditioned model and, with the raw OLAT sets, the oracle relight) and `natural` (stage-3 test pairs: the
target is the real photo). For every pair, every method produces a foreground layer that is composited the same way,
`m·fg + (1−m)·y_b` in linear light, and delivered as 8-bit sRGB, the format `relightful harmonize` writes; it is
then compared with the target in sRGB (unquantised) by the metrics of `metrics.py`, the light-direction error of
`light_direction.py` and, when weights are given, LPIPS.

Methods (methods.py, in report order): `composite`, `model`, `model_panorama` (F_env(z_b) instead of F_bg(y_b);
light-stage only), `model_<NAME>` for each `--compare NAME=MODEL`, the baselines `reinhard`, `histogram`,
`gain_regression` (fitted here on at most `gain_regression_pairs` light-stage *train* pairs, applied to both
scenarios), `shading`, and the light-stage bounds `oracle_gain`, `oracle_shading` (bounds.py) and `oracle`.
Every model and compared model samples with the same seed per batch.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from relightful.data.shards import MANIFEST
from relightful.evaluation.baselines import histogram_match, reinhard
from relightful.evaluation.bounds import oracle_gain, oracle_shading, target_image
from relightful.evaluation.config import EvalConfig
from relightful.evaluation.light_direction import light_direction_errors
from relightful.evaluation.methods import compare_method
from relightful.evaluation.metrics import image_metrics
from relightful.evaluation.pairs import Panoramas, deliver, iter_batches, select_pairs
from relightful.evaluation.report import grid_image, write_report
from relightful.evaluation.shading import reshade
from relightful.evaluation.summary import headroom_share, margins, quality_bar, stage_comparison, summarise
from relightful.io import InputError, srgb_decode
from relightful.io.tensors import tensor_shape

log = logging.getLogger(__name__)


@dataclass
class ScenarioResult:
    per_pair: pd.DataFrame                                      # one row per (pair, method)
    visual: list[dict[str, np.ndarray]] = field(default_factory=list)  # per shown pair: column -> (H, W, 3) uint8
    n_pairs: int = 0
    skipped: dict[str, str] = field(default_factory=dict)     # unreadable shard -> why (its pairs are not scored)


@dataclass
class Scenario:
    """What one pair set allows: the reference bounds (ground truth x_b of the light stage) and the panoramas z_b."""
    bounds: bool = False
    panoramas: Panoramas | None = None


class Evaluator:
    """Runs every method on batches of pairs and scores them; `harmonizer` is None for baseline-only runs.
    `compare` maps NAME -> another Harmonizer, scored as "model_NAME"; `gain_regression` is a fitted
    `GainRegression` (None: that baseline is left out)."""

    def __init__(self, harmonizer, config: EvalConfig, lpips=None, oracle=None, baselines: bool = True,
                 compare: dict | None = None, gain_regression=None):
        self.h, self.config, self.lpips, self.oracle = harmonizer, config, lpips, oracle
        self.baselines, self.compare, self.gain_regression = baselines, dict(compare or {}), gain_regression

    def _relight(self, harmonizer, fg, m, bg, seed, panorama=None) -> torch.Tensor:
        cfg = self.config
        extra = {} if panorama is None else {"panorama": panorama}
        return harmonizer.relight_batch(fg, m, bg, seed, cfg.steps, cfg.image_guidance, cfg.lighting_guidance,
                                        **extra)

    def gain_sigma(self, size: int) -> float:
        """The σ of `oracle_shading` in pixels of pairs of side `size`: the model's detail_sigma (else the gain
        field's default σ) in model pixels, scaled to the pairs; 1 without a model."""
        if self.h is None:
            return 1.0
        return self.h.relight_sigma * size / self.h.model.config.image_size

    def methods(self, rows: pd.DataFrame, t: dict[str, torch.Tensor], seed: int,
                scenario: Scenario | None = None) -> dict[str, torch.Tensor]:
        """Each method's foreground layer (B, 3, H, W), linear, in report order."""
        fg, m, bg = t["x_a"], t["matte"], t["y_b"]
        scenario = scenario or Scenario()
        out = {"composite": fg} if self.baselines else {}
        if self.h is not None:
            out["model"] = self._relight(self.h, fg, m, bg, seed)
            if scenario.panoramas is not None:
                out["model_panorama"] = self._relight(self.h, fg, m, bg, seed, panorama=scenario.panoramas(rows))
        for name, harmonizer in self.compare.items():
            out[compare_method(name)] = self._relight(harmonizer, fg, m, bg, seed)
        if self.baselines:
            out["reinhard"] = reinhard(fg, m, bg)
            out["histogram"] = histogram_match(fg, m, bg)
            if self.gain_regression is not None:
                out["gain_regression"] = self.gain_regression.relight(fg, m, bg)
            out["shading"] = reshade(fg, m, bg)
        if scenario.bounds:
            out["oracle_gain"] = oracle_gain(fg, t["x_b"], m, bg)
            out["oracle_shading"] = oracle_shading(fg, t["x_b"], m, bg, self.gain_sigma(fg.shape[-1]))
        if self.oracle is not None and "w_b" in t:
            out["oracle"] = self.oracle(rows, t["w_a"], t["w_b"])
        return out

    def score(self, rows: pd.DataFrame, t: dict[str, torch.Tensor], seed: int, keep_visual: int = 0,
              scenario: Scenario | None = None) -> tuple[pd.DataFrame, list[dict[str, np.ndarray]]]:
        m, bg = t["matte"], t["y_b"]
        target = target_image(t["x_b"], m, bg)
        delivered = {k: deliver(fg, m, bg) for k, fg in self.methods(rows, t, seed, scenario).items()}
        directions = light_direction_errors({k: srgb_decode(v) for k, v in delivered.items()}, srgb_decode(target), m)
        frames = []
        for name, image in delivered.items():
            values = {k: v.numpy() for k, v in image_metrics(image, target, m).items()}
            values["light_dir_err_deg"] = directions[name]
            if self.lpips is not None:
                dist = self.lpips(image, target, spatial=True)
                values["lpips"] = dist.mean(dim=(1, 2, 3)).numpy()
                values["fg_lpips"] = ((dist * m).sum(dim=(1, 2, 3)) / m.sum(dim=(1, 2, 3)).clamp_min(1e-12)).numpy()
            frames.append(pd.DataFrame({"pair_id": rows.pair_id.to_numpy(), "method": name, **values}))
        visual = []
        for i in range(min(keep_visual, len(rows))):
            row = {k: _uint8(v[i]) for k, v in delivered.items()}
            row["target"] = _uint8(target[i])
            row["pair_id"] = str(rows.pair_id.iloc[i])
            visual.append(row)
        return pd.concat(frames, ignore_index=True), visual


def _uint8(image: torch.Tensor) -> np.ndarray:
    return (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def evaluate_scenario(evaluator: Evaluator, pairs_dir: str | Path, with_weights: bool = False,
                      progress: bool = False, desc: str = "evaluate",
                      scenario: Scenario | None = None) -> ScenarioResult:
    """Score every method on the configured split of one pair set."""
    cfg, pairs_dir = evaluator.config, Path(pairs_dir)
    rows = select_pairs(pairs_dir, cfg.split, cfg.max_pairs)
    if rows.empty:
        return ScenarioResult(pd.DataFrame(), [], 0)
    frames, visual, skipped = [], [], {}
    bar = tqdm(total=len(rows), desc=desc, unit="pair", disable=not progress, leave=False)
    for b, (part, tensors) in enumerate(iter_batches(pairs_dir, rows, cfg.batch, with_weights, skipped)):
        frame, shown = evaluator.score(part, tensors, cfg.seed + b, cfg.n_visual - len(visual), scenario)
        frames.append(frame)
        visual += shown
        bar.update(len(part))
    bar.close()
    per_pair = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return ScenarioResult(per_pair, visual, per_pair.pair_id.nunique() if frames else 0, skipped)


# --- the job -------------------------------------------------------------------------------------------------------

def load_lpips(config: EvalConfig):
    """(LPIPS network or None, why not)."""
    if config.lpips_weights is None:
        return None, "no weights given (evaluate.lpips_weights: a local safetensors file; nothing is downloaded)"
    from relightful.evaluation.lpips import LPIPS

    return LPIPS.from_file(config.lpips_weights), ""


def evaluate_model(model: str | Path, lightstage_pairs: str | Path, out_dir: str | Path,
                   config: EvalConfig = EvalConfig(), natural_pairs: str | Path | None = None,
                   subjects_dir: str | Path | None = None, progress: bool = False,
                   compare: dict[str, str | Path] | None = None, portraits_dir: str | Path | None = None,
                   backgrounds_dir: str | Path | None = None, resolve=Path) -> dict:
    """Score `model` (a model folder; any other reference, such as an MLflow URI, when `resolve` maps it to one:
    the CLI passes `relightful.tracking.resolve_model`), the models of `compare` (NAME -> folder or URI, scored as
    "model_NAME"), the baselines and the bounds on both scenarios; with `portraits_dir` and `backgrounds_dir`, also
    show every real portrait harmonised onto every real background (the third scenario, real_portraits.py); write
    the report (report.py) to `out_dir`; return metrics.json's content. A scenario whose split is empty is
    reported with 0 pairs."""
    from relightful.evaluation.gain_regression import fit_gain_regression
    from relightful.evaluation.oracle import OracleRelighter
    from relightful.lighting import LedRig
    from relightful.models.harmonizer import Harmonizer

    harmonizer = Harmonizer.from_pretrained(resolve(model), device=config.device)
    others = {name: Harmonizer.from_pretrained(resolve(path), device=config.device)
              for name, path in (compare or {}).items()}
    lpips, lpips_reason = load_lpips(config)
    oracle, oracle_reason = None, "no light-stage subjects folder given"
    lightstage_pairs = Path(lightstage_pairs)
    if subjects_dir is not None:
        rig = LedRig.from_json(lightstage_pairs / "rig.json")
        oracle, oracle_reason = OracleRelighter(subjects_dir, rig, _pair_size(lightstage_pairs)), ""
    fit_skipped: dict[str, str] = {}
    regression, regression_reason = fit_gain_regression(lightstage_pairs, "train", config.gain_regression_pairs,
                                                        skipped=fit_skipped)
    panoramas = Panoramas.from_pairs(lightstage_pairs)
    evaluator = Evaluator(harmonizer, config, lpips, oracle, compare=others, gain_regression=regression)
    metrics: dict = {"model": str(model), "split": config.split,
                     "compare": {name: str(path) for name, path in (compare or {}).items()}}
    frames, grids = [], {}
    scenarios = [("lightstage", lightstage_pairs, True, Scenario(bounds=True, panoramas=panoramas))]
    if natural_pairs is not None:
        scenarios.append(("natural", Path(natural_pairs), False, Scenario()))
    for name, pairs_dir, weights, scenario in scenarios:
        result = evaluate_scenario(evaluator, pairs_dir, with_weights=weights and oracle is not None,
                                   progress=progress, desc=f"evaluate {name}", scenario=scenario)
        summary = summarise(result.per_pair)
        block = metrics[name] = {"n_pairs": result.n_pairs, "methods": summary, "margins": margins(summary),
                                 "headroom_share": headroom_share(summary), "skipped_shards": result.skipped}
        comparison = stage_comparison(summary)
        if comparison is not None:
            block["stage_comparison"] = comparison
        if result.n_pairs == 0 and not result.skipped:
            block["note"] = (f"no {config.split!r} pairs in {pairs_dir}: every subject/portrait is in another "
                             f"split (add more to get a {config.split} split)")
        if not result.per_pair.empty:
            frames.append(result.per_pair.assign(scenario=name))
        grids[name] = grid_image(result.visual, f"{name} test pairs")
    if portraits_dir is not None and backgrounds_dir is not None:
        from relightful.evaluation.real_portraits import harmonise_all, real_grid

        real = harmonise_all(harmonizer, portraits_dir, backgrounds_dir, config.seed)
        metrics["real"] = {"n_images": len(real.cells), "portraits": {k: list(v) for k, v in real.shape.items()},
                           "backgrounds": sorted({c["background"] for c in real.cells}), "skipped": real.skipped}
        grids["real"] = real_grid(real)
    metrics["quality_bar"] = quality_bar(metrics["lightstage"])
    metrics["lpips"] = {"computed": lpips is not None, "reason": lpips_reason}
    metrics["oracle"] = {"computed": oracle is not None, "reason": oracle_reason}
    metrics["gain_regression"] = {"computed": regression is not None, "reason": regression_reason,
                                  **(regression.summary() if regression is not None else {}),
                                  "skipped_shards": fit_skipped}
    metrics["model_panorama"] = {"computed": panoramas is not None,
                                 "reason": "" if panoramas is not None else f"no maps store in {lightstage_pairs}"}
    empty = pd.DataFrame(columns=["scenario", "pair_id", "method"])
    per_pair = pd.concat(frames, ignore_index=True) if frames else empty
    per_pair = per_pair[["scenario"] + [c for c in per_pair.columns if c != "scenario"]]
    write_report(out_dir, metrics, per_pair, grids)
    return metrics


def _pair_size(pairs_dir: Path) -> int:
    """The side of the pairs in a shard folder (from its first shard's header)."""
    first = sorted(pairs_dir.glob("shard-*.safetensors"))
    if not first:
        raise InputError(pairs_dir, "no shard-*.safetensors files")
    return int(tensor_shape(first[0], "matte")[-1])


def holdout_scores(model: str | Path, pairs_dir: str | Path, split: str = "test", max_pairs: int = 64,
                   seed: int = 0, config: EvalConfig | None = None) -> dict[str, float]:
    """The model's mean metrics on held-out pairs (higher is better for psnr/ssim, lower for mse and errors):
    what the promotion gate compares between a candidate and the champion, on the very same pairs and seeds."""
    from relightful.models.harmonizer import Harmonizer

    base = config or EvalConfig()
    cfg = dataclasses.replace(base, split=split, max_pairs=max_pairs, seed=seed, n_visual=0)
    evaluator = Evaluator(Harmonizer.from_pretrained(model, device=cfg.device), cfg, load_lpips(cfg)[0],
                          baselines=False)
    result = evaluate_scenario(evaluator, pairs_dir)
    if result.skipped:  # a gate must compare on the full held-out set, never on what happened to be readable
        path, why = next(iter(result.skipped.items()))
        raise InputError(path, why)
    if result.per_pair.empty:
        raise InputError(Path(pairs_dir) / MANIFEST, f"no {split!r} pairs to score the model on")
    return {k: v for k, v in summarise(result.per_pair)["model"].items() if v is not None}

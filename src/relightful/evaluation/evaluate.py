"""Scoring a model against the baselines on held-out pairs (the paper's evaluation, DESIGN 3.6).

Scenarios: `lightstage` (rendered test pairs: ground truth from the light stage, plus the oracle relight) and
`natural` (stage-3 test pairs: the target is the real photo). For every pair, every method produces a foreground
layer that is composited the same way, `m·fg + (1−m)·y_b` in linear light, and delivered as 8-bit sRGB, the format
`relightful harmonize` writes; it is then compared with the target in sRGB (unquantised) by the metrics of
`metrics.py`, the light-direction error of `light_direction.py` and, when weights are given, LPIPS.

Methods: `composite` (paste the foreground unchanged), `model`, `reinhard`, `histogram`, and `oracle` (light-stage
only, when the raw OLAT sets are given).
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

from relightful.evaluation.baselines import histogram_match, reinhard
from relightful.evaluation.config import EvalConfig
from relightful.evaluation.light_direction import light_direction_errors
from relightful.evaluation.metrics import image_metrics
from relightful.io import InputError, load_tensors, srgb_decode, srgb_encode
from relightful.io.tensors import tensor_shape
from relightful.training.data import MANIFEST, read_manifest

log = logging.getLogger(__name__)

IMAGE_KEYS = ("x_a", "x_b", "y_b", "matte")
# Column order of the visual report: the composite, ours, each baseline, the oracle, the target.
METHODS = ("composite", "model", "reinhard", "histogram", "oracle")
HIGHER_IS_BETTER = {"mse": False, "psnr": True, "ssim": True, "fg_mse": False, "fg_psnr": True, "fg_ssim": True,
                    "light_dir_err_deg": False, "lpips": False, "fg_lpips": False}


@dataclass
class ScenarioResult:
    per_pair: pd.DataFrame                                      # one row per (pair, method)
    visual: list[dict[str, np.ndarray]] = field(default_factory=list)  # per shown pair: column -> (H, W, 3) uint8
    n_pairs: int = 0
    skipped: dict[str, str] = field(default_factory=dict)     # unreadable shard -> why (its pairs are not scored)


def select_pairs(pairs_dir: Path, split: str, max_pairs: int) -> pd.DataFrame:
    """The rows of `split`, in (shard, index) order, thinned evenly to at most `max_pairs` (a fixed set)."""
    manifest = read_manifest(pairs_dir)
    rows = manifest[manifest.split == split].sort_values(["shard", "index"]).reset_index(drop=True)
    if len(rows) > max_pairs:
        rows = rows.iloc[np.linspace(0, len(rows) - 1, max_pairs).round().astype(int)].reset_index(drop=True)
    return rows


def _read_shard(path: Path, group: pd.DataFrame, keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
    tensors = load_tensors(path)
    missing = [k for k in keys if k not in tensors]
    if missing:
        raise InputError(path, f"shard lacks {missing}")
    n = len(tensors["matte"])
    if group["index"].max() >= n:
        raise InputError(path, f"manifest refers to pair {group['index'].max()} but the shard holds {n}")
    return tensors


def iter_batches(pairs_dir: Path, rows: pd.DataFrame, batch: int, with_weights: bool,
                 skipped: dict[str, str] | None = None):
    """(rows, tensors) per batch, float32 linear images; each shard file is read once. An unreadable shard is
    recorded in `skipped` (when given; else it raises `InputError`) and the other shards go on."""
    keys = IMAGE_KEYS + (("w_a", "w_b") if with_weights else ())
    for shard, group in rows.groupby("shard", sort=False):
        path = pairs_dir / shard
        try:
            tensors = _read_shard(path, group, keys)
        except InputError as err:
            if skipped is None:
                raise
            log.warning("skipping %s", err)
            skipped[str(path)] = str(err)
            continue
        for start in range(0, len(group), batch):
            part = group.iloc[start:start + batch]
            idx = torch.tensor(part["index"].to_numpy(dtype=np.int64))
            yield part, {k: tensors[k][idx].float() for k in keys}


def deliver(fg: torch.Tensor, matte: torch.Tensor, bg: torch.Tensor) -> torch.Tensor:
    """Composite in linear light and quantise as an 8-bit sRGB file would: (B, 3, H, W) sRGB in [0, 1]."""
    out = srgb_encode((matte * fg + (1 - matte) * bg).clamp(0, 1))
    return (out * 255).round() / 255


class Evaluator:
    """Runs every method on batches of pairs and scores them; `harmonizer` is None for baseline-only runs."""

    def __init__(self, harmonizer, config: EvalConfig, lpips=None, oracle=None, baselines: bool = True):
        self.h, self.config, self.lpips, self.oracle = harmonizer, config, lpips, oracle
        self.baselines = baselines

    def methods(self, rows: pd.DataFrame, t: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
        """Each method's foreground layer (B, 3, H, W), linear."""
        fg, m, bg = t["x_a"], t["matte"], t["y_b"]
        out = {"composite": fg} if self.baselines else {}
        if self.h is not None:
            cfg = self.config
            out["model"] = self.h.relight_batch(fg, m, bg, seed, cfg.steps, cfg.image_guidance, cfg.lighting_guidance)
        if self.baselines:
            out["reinhard"] = reinhard(fg, m, bg)
            out["histogram"] = histogram_match(fg, m, bg)
        if self.oracle is not None and "w_b" in t:
            out["oracle"] = self.oracle(rows, t["w_a"], t["w_b"])
        return out

    def score(self, rows: pd.DataFrame, t: dict[str, torch.Tensor], seed: int,
              keep_visual: int = 0) -> tuple[pd.DataFrame, list[dict[str, np.ndarray]]]:
        m, bg = t["matte"], t["y_b"]
        target = srgb_encode((m * t["x_b"] + (1 - m) * bg).clamp(0, 1))
        delivered = {k: deliver(fg, m, bg) for k, fg in self.methods(rows, t, seed).items()}
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
                      progress: bool = False, desc: str = "evaluate") -> ScenarioResult:
    """Score every method on the configured split of one pair set."""
    cfg, pairs_dir = evaluator.config, Path(pairs_dir)
    rows = select_pairs(pairs_dir, cfg.split, cfg.max_pairs)
    if rows.empty:
        return ScenarioResult(pd.DataFrame(), [], 0)
    frames, visual, skipped = [], [], {}
    bar = tqdm(total=len(rows), desc=desc, unit="pair", disable=not progress, leave=False)
    for b, (part, tensors) in enumerate(iter_batches(pairs_dir, rows, cfg.batch, with_weights, skipped)):
        frame, shown = evaluator.score(part, tensors, cfg.seed + b, keep_visual=cfg.n_visual - len(visual))
        frames.append(frame)
        visual += shown
        bar.update(len(part))
    bar.close()
    per_pair = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return ScenarioResult(per_pair, visual, per_pair.pair_id.nunique() if frames else 0, skipped)


def summarise(per_pair: pd.DataFrame) -> dict[str, dict[str, float]]:
    """method -> metric -> mean over pairs (NaN light-direction errors, from too-small subjects, are skipped)."""
    if per_pair.empty:
        return {}
    metrics = [c for c in per_pair.columns if c not in ("pair_id", "method", "scenario")]
    means = per_pair.groupby("method", sort=False)[metrics].mean()
    return {method: {k: (None if np.isnan(v) else round(float(v), 6)) for k, v in row.items()}
            for method, row in means.iterrows()}


def margins(summary: dict[str, dict[str, float]], metrics=("fg_psnr", "fg_ssim"),
            baselines=("composite", "reinhard")) -> dict[str, float]:
    """The model's lead over each baseline ("fg_psnr_vs_composite": model − composite), signed so that > 0 is a win."""
    out = {}
    if "model" not in summary:
        return out
    for metric in metrics:
        sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
        for base in baselines:
            if base in summary:
                out[f"{metric}_vs_{base}"] = round(sign * (summary["model"][metric] - summary[base][metric]), 6)
    return out


# --- the job -------------------------------------------------------------------------------------------------------

def load_lpips(config: EvalConfig):
    """(LPIPS network or None, why not)."""
    if config.lpips_weights is None:
        return None, "no weights given (evaluate.lpips_weights: a local safetensors file; nothing is downloaded)"
    from relightful.evaluation.lpips import LPIPS

    return LPIPS.from_file(config.lpips_weights), ""


def evaluate_model(model: str | Path, lightstage_pairs: str | Path, out_dir: str | Path,
                   config: EvalConfig = EvalConfig(), natural_pairs: str | Path | None = None,
                   subjects_dir: str | Path | None = None, progress: bool = False) -> dict:
    """Score `model` (folder or MLflow URI) and the baselines on both scenarios; write the report (report.py) to
    `out_dir`; return metrics.json's content. A scenario whose split is empty is reported with 0 pairs."""
    from relightful.evaluation.oracle import OracleRelighter
    from relightful.evaluation.report import grid_image, quality_statement, write_report
    from relightful.lighting import LedRig
    from relightful.models.pipeline import Harmonizer

    harmonizer = Harmonizer.from_pretrained(model, device=config.device)
    lpips, lpips_reason = load_lpips(config)
    oracle, oracle_reason = None, "no light-stage subjects folder given"
    lightstage_pairs = Path(lightstage_pairs)
    if subjects_dir is not None:
        rig = LedRig.from_json(lightstage_pairs / "rig.json")
        oracle, oracle_reason = OracleRelighter(subjects_dir, rig, _pair_size(lightstage_pairs)), ""
    evaluator = Evaluator(harmonizer, config, lpips, oracle)
    metrics: dict = {"model": str(model), "split": config.split}
    frames, grids = [], {}
    scenarios = [("lightstage", lightstage_pairs, True)]
    if natural_pairs is not None:
        scenarios.append(("natural", Path(natural_pairs), False))
    for name, pairs_dir, weights in scenarios:
        result = evaluate_scenario(evaluator, pairs_dir, with_weights=weights and oracle is not None,
                                   progress=progress, desc=f"evaluate {name}")
        summary = summarise(result.per_pair)
        metrics[name] = {"n_pairs": result.n_pairs, "methods": summary, "margins": margins(summary),
                         "skipped_shards": result.skipped}
        if result.n_pairs == 0 and not result.skipped:
            metrics[name]["note"] = (f"no {config.split!r} pairs in {pairs_dir}: every subject/portrait is in another "
                                     f"split (add more to get a {config.split} split)")
        if not result.per_pair.empty:
            frames.append(result.per_pair.assign(scenario=name))
        grids[name] = grid_image(result.visual, f"{name} test pairs")
    passed, statement = quality_statement(metrics["lightstage"]["margins"])
    metrics["quality_bar"] = {"passed": passed, "statement": statement}
    metrics["lpips"] = {"computed": lpips is not None, "reason": lpips_reason}
    metrics["oracle"] = {"computed": oracle is not None, "reason": oracle_reason}
    per_pair = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["scenario", "pair_id", "method"])
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
    from relightful.models.pipeline import Harmonizer

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

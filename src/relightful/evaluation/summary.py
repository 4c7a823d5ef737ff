"""From per-pair scores to what the report claims: means, the model's margins over every baseline, its share of
the headroom up to `oracle_shading`, the quality bar of DESIGN 4 and the stage-1 / stage-2 comparison."""

from __future__ import annotations

import numpy as np
import pandas as pd

from relightful.evaluation.methods import BASELINES, HIGHER_IS_BETTER, compare_method, method_order

MARGIN_METRICS = ("fg_psnr", "fg_ssim", "light_dir_err_deg")
# DESIGN 4: on the light-stage test pairs, fg PSNR ≥ composite + 3 dB and ≥ gain_regression + 1 dB, fg PSNR and SSIM
# above every baseline of 3.9, and the light-direction error at most 35°.
BAR_PSNR_OVER_COMPOSITE_DB = 3.0
BAR_PSNR_OVER_GAIN_REGRESSION_DB = 1.0
BAR_LIGHT_DIR_ERR_DEG = 35.0


def summarise(per_pair: pd.DataFrame) -> dict[str, dict[str, float]]:
    """method -> metric -> mean over pairs, methods in report order (NaN light-direction errors, from too-small
    subjects, are skipped)."""
    if per_pair.empty:
        return {}
    metrics = [c for c in per_pair.columns if c not in ("pair_id", "method", "scenario")]
    means = per_pair.groupby("method", sort=False)[metrics].mean()
    means = means.reindex(method_order(means.index))
    return {method: {k: (None if np.isnan(v) else round(float(v), 6)) for k, v in row.items()}
            for method, row in means.iterrows()}


def margins(summary: dict[str, dict[str, float]], metrics=MARGIN_METRICS, baselines=BASELINES,
            model: str = "model") -> dict[str, float]:
    """The model's lead over each baseline present ("fg_psnr_vs_composite": model − composite), signed so that
    > 0 is a win (for an error such as light_dir_err_deg: baseline − model)."""
    out = {}
    if model not in summary:
        return out
    for metric in metrics:
        sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
        for base in baselines:
            ours, theirs = summary[model].get(metric), summary.get(base, {}).get(metric)
            if ours is not None and theirs is not None:
                out[f"{metric}_vs_{base}"] = round(sign * (ours - theirs), 6)
    return out


def headroom_share(summary: dict[str, dict[str, float]], metric: str = "fg_psnr",
                   model: str = "model") -> float | None:
    """(model − composite) / (oracle_shading − composite) on `metric`: 0 is paste, 1 the best smooth gain field at
    the model's σ. None when a term is missing or the bound does not lie above the paste."""
    try:
        ours, paste, bound = (summary[k][metric] for k in (model, "composite", "oracle_shading"))
    except KeyError:
        return None
    if None in (ours, paste, bound) or bound - paste <= 1e-9:
        return None
    return round((ours - paste) / (bound - paste), 6)


_OPS = {">=": lambda v, t: v >= t, ">": lambda v, t: v > t, "<=": lambda v, t: v <= t}


def quality_bar(block: dict) -> dict:
    """DESIGN 4's bar on one scenario's block ({"methods", "margins"}): {"passed", "statement", "conditions": [
    {"condition", "value", "op", "threshold", "passed"}]}. A condition that could not be measured (its baseline
    was not computed) fails."""
    summary, lead = block.get("methods", {}), block.get("margins", {})
    if "model" not in summary:
        return {"passed": False, "conditions": [],
                "statement": "Quality bar not measured: the light-stage scenario has no model results."}
    conditions = []

    def add(text: str, value, op: str, threshold: float) -> None:
        conditions.append({"condition": text, "value": value, "op": op, "threshold": threshold,
                           "passed": bool(value is not None and _OPS[op](value, threshold))})

    add("fg PSNR − composite (dB)", lead.get("fg_psnr_vs_composite"), ">=", BAR_PSNR_OVER_COMPOSITE_DB)
    add("fg PSNR − gain_regression (dB)", lead.get("fg_psnr_vs_gain_regression"), ">=",
        BAR_PSNR_OVER_GAIN_REGRESSION_DB)
    for base in BASELINES:  # "above every baseline"; composite and gain_regression have their stricter rows above
        if base not in ("composite", "gain_regression"):
            add(f"fg PSNR − {base} (dB)", lead.get(f"fg_psnr_vs_{base}"), ">", 0.0)
    for base in BASELINES:
        add(f"fg SSIM − {base}", lead.get(f"fg_ssim_vs_{base}"), ">", 0.0)
    add("light-direction error (°)", summary["model"].get("light_dir_err_deg"), "<=", BAR_LIGHT_DIR_ERR_DEG)
    passed = all(c["passed"] for c in conditions)
    parts = "; ".join(f"{c['condition']} {'not measured' if c['value'] is None else format(c['value'], '.3f')} "
                      f"(needs {c['op']} {c['threshold']:g}) {'pass' if c['passed'] else 'FAIL'}" for c in conditions)
    verdict = "PASSED" if passed else "NOT MET"
    return {"passed": passed, "conditions": conditions,
            "statement": f"Quality bar (DESIGN 4) on the light-stage test pairs: {verdict}. {parts}."}


def stage_comparison(summary: dict[str, dict[str, float]], without: str = "stage1",
                     with_: str = "stage2") -> dict | None:
    """Compared models `model_stage1` (no alignment) and `model_stage2` (F_bg aligned to F_env): their means and
    the difference on each margin metric, with a sentence; None unless both were scored."""
    a, b = compare_method(without), compare_method(with_)
    if a not in summary or b not in summary:
        return None
    out, parts = {}, []
    for metric in MARGIN_METRICS:
        va, vb = summary[a].get(metric), summary[b].get(metric)
        if va is None or vb is None:
            continue
        out[metric] = {without: va, with_: vb, f"{with_}_minus_{without}": round(vb - va, 6)}
        parts.append(f"{metric} {vb:.3f} vs {va:.3f} ({vb - va:+.3f})")
    out["statement"] = (f"With and without stage 2's alignment ({with_}: F_bg aligned to F_env; {without}: "
                        f"F_bg alone), {with_} vs {without}: " + "; ".join(parts) + ".")
    return out

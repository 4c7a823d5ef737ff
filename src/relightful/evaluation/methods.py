"""The names of the evaluation's methods (DESIGN 3.9) and their order in every table, plot and grid.

A leaf module: `evaluate.py`, `summary.py` and `report.py` all import it, so none of them needs another to learn
the names (which was an import circle between the evaluator and the report).
"""

from __future__ import annotations

# Column order of the report: the paste, the model (background- and panorama-conditioned, then the compared
# models), the baselines, the reference bounds from the ground truth, the target.
METHODS = ("composite", "model", "model_panorama", "reinhard", "histogram", "gain_regression", "shading",
           "oracle_gain", "oracle_shading", "oracle")
BASELINES = ("composite", "reinhard", "histogram", "gain_regression", "shading")
BOUNDS = ("oracle_gain", "oracle_shading", "oracle")
COMPARE_PREFIX = "model_"  # `--compare NAME=MODEL` is scored as method "model_NAME"

HIGHER_IS_BETTER = {"mse": False, "psnr": True, "ssim": True, "fg_mse": False, "fg_psnr": True, "fg_ssim": True,
                    "light_dir_err_deg": False, "lpips": False, "fg_lpips": False}


def compare_method(name: str) -> str:
    """The method name of a compared model (`--compare stage1=...` -> "model_stage1")."""
    return COMPARE_PREFIX + name


def method_order(names) -> list[str]:
    """`names` in report order: METHODS' order, compared models ("model_<NAME>", in the order given) right after
    model_panorama, anything unknown last."""
    names = list(dict.fromkeys(names))
    compared = [n for n in names if n.startswith(COMPARE_PREFIX) and n not in METHODS]
    order = list(METHODS[:3]) + compared + list(METHODS[3:])
    return [n for n in order if n in names] + [n for n in names if n not in order]

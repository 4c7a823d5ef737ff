"""Evaluation: metrics, baselines, the light-direction error, LPIPS from local weights, and the report."""

from relightful.evaluation.config import EvalConfig
from relightful.evaluation.evaluate import evaluate_model, holdout_scores

__all__ = ["EvalConfig", "evaluate_model", "holdout_scores"]

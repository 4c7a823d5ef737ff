"""Evaluation and promotion components."""

from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from components.images import CUDA_IMAGE, project_component


@project_component(CUDA_IMAGE)
def evaluate(model: Input[Model], stage1: Input[Model], stage2: Input[Model], pairs: Input[Dataset],
             natural_pairs: Input[Dataset], natural: Input[Dataset], lightstage: Input[Dataset], params: dict, profile: str, track: bool,
             require_quality_bar: bool, report: Output[HTML], metrics: Output[Metrics], evaluation: Output[Artifact]):
    """Score the model, stages 1 and 2 (with and without the alignment) and the baselines on the test pairs; the
    report as HTML, the means as run metrics, the whole evaluation folder (metrics.json, per_pair.csv, plots,
    grid, with every real portrait of `natural` on every real background) as an artifact."""
    import json
    import os
    import shutil

    from components.job import run_job

    argv = ["evaluate", "--model", model.path, "--pairs", pairs.path, "--natural-pairs", natural_pairs.path,
            "--subjects", os.path.join(lightstage.path, "subjects"), "--out", evaluation.path,
            "--compare", f"stage1={stage1.path}", "--compare", f"stage2={stage2.path}",
            "--portraits", os.path.join(natural.path, "portraits"),
            "--backgrounds", os.path.join(natural.path, "backgrounds")]
    run_job(argv + (["--require-quality-bar"] if require_quality_bar else []), params, profile, track)
    shutil.copyfile(os.path.join(evaluation.path, "report.html"), report.path)
    summary = json.load(open(os.path.join(evaluation.path, "metrics.json")))
    for scenario in ("lightstage", "natural"):
        for method, values in summary[scenario]["methods"].items():
            for name, value in values.items():
                if value is not None:  # a metric that could not be computed (LPIPS without weights) is left out
                    metrics.log_metric(f"{scenario}.{method}.{name}", float(value))
    metrics.log_metric("quality_bar_passed", float(bool(summary["quality_bar"]["passed"])))


@project_component(CUDA_IMAGE)
def promote(model: Input[Model], stage1: Input[Model], stage2: Input[Model], pairs: Input[Dataset], params: dict,
            profile: str, model_name: str, decision: Output[Artifact]) -> str:
    """Move `model_name@champion` to the version registered from `model` only if it beats the champion on the
    held-out pairs (else it becomes `challenger`); returns the decision: champion, challenger or unchanged. A new
    champion's lineage gets the alias too: `relightful-stage1@champion` and `relightful-stage2@champion` are the
    versions registered from `stage1` and `stage2`, so the next run's retrain-check knows the data it learnt from."""
    import json

    from components.job import mark_lineage, run_job

    run_job(["promote", "--model", model.path, "--model-name", model_name, "--pairs", pairs.path,
             "--report", decision.path], params, profile, track=True)
    result = json.load(open(decision.path))
    moved = mark_lineage({"relightful-stage1": stage1.path, "relightful-stage2": stage2.path}, model_name,
                         "champion", result)
    for name, version in moved.items():
        print(f"{name}@champion -> version {version} (the lineage of {model_name}@champion)")
    return result["decision"]

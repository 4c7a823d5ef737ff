"""Data components: starter data, synthetic light stage, HDR ingest, sharded pair rendering, validation, natural
portraits. Each output is a folder artifact laid out as the job writes it under `data/` in the DVC workflow."""

from typing import List

from kfp.dsl import Artifact, Dataset, Input, Markdown, Output

from components.images import CPU_IMAGE, project_component


@project_component(CPU_IMAGE)
def starter_data(params: dict, profile: str, track: bool, hdri: Output[Dataset]):
    """The starter HDR maps (real maps from the image's packages + procedural skies)."""
    from components.job import run_job

    run_job(["starter-data", "--out", hdri.path], params, profile, track)


@project_component(CPU_IMAGE)
def synthetic_stage(params: dict, profile: str, track: bool, lightstage: Output[Dataset]):
    """Procedural subjects rendered per LED: OLAT sets in `subjects/` and the rig in `rig.json`."""
    from components.job import run_job

    run_job(["synthetic-stage", "--out", lightstage.path], params, profile, track)


@project_component(CPU_IMAGE)
def ingest_hdr(hdri: Input[Dataset], lightstage: Input[Dataset], params: dict, profile: str, track: bool,
               envmaps: Output[Dataset]):
    """Validated, resampled maps with their LED weights and manifest."""
    import os

    from components.job import run_job

    run_job(["ingest-hdr", "--input", hdri.path, "--rig", os.path.join(lightstage.path, "rig.json"),
             "--output", envmaps.path], params, profile, track)


@project_component(CPU_IMAGE)
def worker_indices(num_workers: int) -> List[int]:
    """0..num_workers-1: the items of the rendering fan-out."""
    if num_workers < 1:
        raise ValueError(f"num_workers must be at least 1, got {num_workers}")
    return list(range(num_workers))


@project_component(CPU_IMAGE)
def render_pairs_part(lightstage: Input[Dataset], envmaps: Input[Dataset], worker: int, num_workers: int,
                      params: dict, profile: str, track: bool, part: Output[Dataset]):
    """One worker's shards of the pair rendering (every shard ≡ worker mod num_workers) and its manifest part."""
    import os

    from components.job import run_job

    run_job(["render-pairs", "--subjects", os.path.join(lightstage.path, "subjects"),
             "--rig", os.path.join(lightstage.path, "rig.json"), "--envmaps", envmaps.path, "--out", part.path,
             "--shard-index", str(int(worker)), "--num-shards", str(num_workers)], params, profile, track)


@project_component(CPU_IMAGE)
def merge_pairs(parts: Input[List[Dataset]], lightstage: Input[Dataset], envmaps: Input[Dataset], num_workers: int,
                params: dict, profile: str, track: bool, pairs: Output[Dataset]):
    """The workers' parts in one folder, then the manifest and map store: the folder a single run writes."""
    import os
    import shutil

    from components.job import run_job

    if len(parts) != num_workers:
        raise ValueError(f"expected {num_workers} rendered parts, got {len(parts)}")
    for part in parts:
        shutil.copytree(part.path, pairs.path, dirs_exist_ok=True)
    if num_workers == 1:  # one worker rendered the whole plan: its folder is already complete, with its manifest
        return
    run_job(["render-pairs", "--merge", "--subjects", os.path.join(lightstage.path, "subjects"),
             "--rig", os.path.join(lightstage.path, "rig.json"), "--envmaps", envmaps.path, "--out", pairs.path,
             "--num-shards", str(num_workers)], params, profile, track)


@project_component(CPU_IMAGE)
def validate_data(envmaps: Input[Dataset], pairs: Input[Dataset], params: dict, profile: str, track: bool,
                  report: Output[Markdown], validation: Output[Artifact]):
    """The data expectations on both manifests; a failed expectation fails the task (and so the run). `report` is
    the readable report (Markdown, shown by the Kubeflow UI); `validation` the folder the job writes, with
    `data_validation.json` and the same `data_validation.md`."""
    import os
    import shutil

    from components.job import run_job

    os.makedirs(validation.path, exist_ok=True)
    try:
        run_job(["validate-data", "--envmaps", os.path.join(envmaps.path, "manifest.parquet"),
                 "--pairs", os.path.join(pairs.path, "manifest.parquet"),
                 "--report", os.path.join(validation.path, "data_validation.json")], params, profile, track)
    finally:  # also when an expectation failed: the report says which
        written = os.path.join(validation.path, "data_validation.md")
        if os.path.isfile(written):
            os.makedirs(os.path.dirname(report.path) or ".", exist_ok=True)
            shutil.copyfile(written, report.path)


@project_component(CPU_IMAGE)
def natural_starter(hdri: Input[Dataset], params: dict, profile: str, track: bool, natural: Output[Dataset]):
    """Starter natural portraits (with mattes) in `portraits/` and backgrounds in `backgrounds/`."""
    from components.job import run_job

    run_job(["natural-starter", "--hdri", hdri.path, "--out", natural.path], params, profile, track)

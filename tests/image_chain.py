"""The pipeline's own components run in the project image through kfp's local DockerRunner (tests/test_image.py).

    DOCKER_HOST=unix:///.../podman.sock python tests/image_chain.py chain ROOT --image TAG [--train]
    DOCKER_HOST=unix:///.../podman.sock python tests/image_chain.py fail ROOT --image TAG --lightstage DIR

`chain`: starter-data, synthetic-stage → ingest-hdr → render-pairs (two workers) → merge → validate-data on the smoke
profile, untracked, and with --train one short stage-1 training on those pairs. `fail`: ingest-hdr fed a corrupt map
(the job exits 1), followed by a step that must not run; the run must fail. Artifacts land under ROOT/pipeline-root
(mounted into the containers at the same path); ROOT/containers.jsonl gets one line per container: its command and
the exit status the Docker API reported. Prints one JSON line: the run's folder, or the error that failed it.

Run in its own process: it sets RELIGHTFUL_IMAGE / RELIGHTFUL_CUDA_IMAGE before the components are imported (every
step, training included, in the one CPU image) and replaces kfp's container runner, whose `auto_remove=True` loses
exit statuses on podman 4.3's Docker API (../shared/NOTES.md, "Containers"): a failed step could pass as a success.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_container(client, image: str, command: list[str], volumes: dict, **run_args) -> int:
    """kfp.local.docker_task_handler.run_docker_container without auto-removal: wait for the container, read its
    exit status, then remove it. Never pulls (the image is local; a missing one is an error)."""
    run_args.pop("auto_remove", None)
    client.images.get(image)
    container = client.containers.run(image=image, command=command, detach=True, stdout=True, stderr=True,
                                      volumes=volumes, auto_remove=False, **run_args)
    try:
        for line in container.logs(stream=True, follow=True):
            print(line.decode(errors="replace"), end="")
        status = int(container.wait()["StatusCode"])
    finally:
        container.remove(force=True)
    with open(os.environ["IMAGE_CHAIN_LOG"], "a") as log:
        log.write(json.dumps({"command": command, "status": status}) + "\n")
    return status


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=["chain", "fail"])
    ap.add_argument("root", type=Path)
    ap.add_argument("--image", required=True)
    ap.add_argument("--train", action="store_true", help="chain: add one short stage-1 training")
    ap.add_argument("--lightstage", type=Path, help="fail: a synthetic-stage output under ROOT/pipeline-root")
    args = ap.parse_args(argv)

    os.environ["RELIGHTFUL_IMAGE"] = os.environ["RELIGHTFUL_CUDA_IMAGE"] = args.image
    os.environ["IMAGE_CHAIN_LOG"] = str(args.root / "containers.jsonl")
    sys.path.insert(0, str(REPO))
    from kfp import dsl, local
    from kfp.dsl import Dataset
    from kfp.local import docker_task_handler

    from components.data import (ingest_hdr, merge_pairs, render_pairs_part, starter_data, synthetic_stage,
                                 validate_data, worker_indices)
    from components.training import train_stage
    from pipelines.relightful_pipeline import profile_params

    docker_task_handler.run_docker_container = run_container
    pipeline_root = args.root / "pipeline-root"
    # the containers run as the image's user (1000) and write into the mounted pipeline root
    local.init(runner=local.DockerRunner(network_mode="none"), pipeline_root=str(pipeline_root), raise_on_error=True)
    profile, params = profile_params("smoke")
    params["train_stage1"] = {"steps": 2}
    params["train"] = {**params["train"], "checkpoint_every": 2, "log_every": 1}
    common = dict(params=params, profile=profile, track=False)

    if args.mode == "chain":
        @dsl.pipeline(name="image-chain")
        def pipeline():
            hdri = starter_data(**common)
            stage = synthetic_stage(**common)
            envmaps = ingest_hdr(hdri=hdri.outputs["hdri"], lightstage=stage.outputs["lightstage"], **common)
            # two workers, as the pipeline's default (with one, merge-pairs finds no manifest parts to merge)
            workers = worker_indices(num_workers=2)
            with dsl.ParallelFor(items=workers.output, name="render-workers") as worker:
                part = render_pairs_part(lightstage=stage.outputs["lightstage"], envmaps=envmaps.outputs["envmaps"],
                                         worker=worker, num_workers=2, **common)
            pairs = merge_pairs(parts=dsl.Collected(part.outputs["part"]), lightstage=stage.outputs["lightstage"],
                                envmaps=envmaps.outputs["envmaps"], num_workers=2, **common)
            checked = validate_data(envmaps=envmaps.outputs["envmaps"], pairs=pairs.outputs["pairs"], **common)
            if args.train:
                train_stage(stage=1, pairs=pairs.outputs["pairs"], workspace="", run_id="image-chain",
                            nproc_per_node=1, **common).after(checked)
    else:
        bad = pipeline_root / "inputs" / "hdri"
        bad.mkdir(parents=True, exist_ok=True)
        (bad / "broken.exr").write_bytes(b"v/1\x01 not an OpenEXR file")

        @dsl.pipeline(name="image-failure")
        def pipeline():
            hdri = dsl.importer(artifact_uri=str(bad), artifact_class=Dataset)
            stage = dsl.importer(artifact_uri=str(args.lightstage), artifact_class=Dataset)
            envmaps = ingest_hdr(hdri=hdri.output, lightstage=stage.output, **common)
            worker_indices(num_workers=1).after(envmaps)  # must never run

    before = set(pipeline_root.glob("image-*"))
    start = time.perf_counter()
    try:
        pipeline()
        error = None
    except Exception as err:  # noqa: BLE001 -- reported to the test, which decides
        error = f"{type(err).__name__}: {err}"
    runs = sorted(set(pipeline_root.glob("image-*")) - before)
    print(json.dumps({"run": str(runs[-1]) if runs else None, "error": error,
                      "seconds": round(time.perf_counter() - start, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

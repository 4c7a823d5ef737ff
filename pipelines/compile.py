"""Compile the pipeline to the YAML the Kubeflow UI uploads:

    python -m pipelines.compile                       # gpu profile -> pipelines/relightful_pipeline.yaml
    python -m pipelines.compile --profile tiny --no-gpus --out /tmp/tiny.yaml
    python -m pipelines.compile --num-nodes 4 --out /tmp/multinode.yaml   # each stage a PyTorchJob of 4 pods
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml
from kfp import compiler

from pipelines.relightful_pipeline import PARAMS_YAML, make_pipeline, profile_params

COMPILED = Path(__file__).resolve().parent / "relightful_pipeline.yaml"


def compile_pipeline(out: Path = COMPILED, profile: str = "gpu", gpus: bool = True,
                     params_path: Path = PARAMS_YAML, num_nodes: int = 1) -> Path:
    """Compile to `out`, atomically, with sorted keys: kfp writes a parameter's dict default in protobuf's map
    order, which changes from run to run; sorted, the same code always gives the same file (and a readable diff)."""
    name, params = profile_params(profile, params_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp.yaml")
    try:
        compiler.Compiler().compile(make_pipeline(name, params, gpus, num_nodes), str(tmp))
        docs = list(yaml.safe_load_all(tmp.read_text()))
        header = (f"# The relightful pipeline, compiled by `python -m pipelines.compile --profile {name}"
                  f"{'' if gpus else ' --no-gpus'}{f' --num-nodes {num_nodes}' if num_nodes > 1 else ''}` from pipelines/relightful_pipeline.py: edit that, not this.\n")
        tmp.write_text(header + yaml.safe_dump_all(docs, sort_keys=True, width=120))
        tmp.replace(out)  # atomic: a reader never sees half a pipeline
    finally:
        tmp.unlink(missing_ok=True)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="gpu", help="profile of params.yaml whose block is the default 'params'")
    ap.add_argument("--params", type=Path, default=PARAMS_YAML)
    ap.add_argument("--gpus", action=argparse.BooleanOptionalAction, default=True,
                    help="request GPUs for training, augmentation, evaluation and promotion")
    ap.add_argument("--num-nodes", type=int, default=1,
                    help="train each stage as a PyTorchJob of this many pods (1: in the pipeline step's own pod)")
    ap.add_argument("--out", type=Path, default=COMPILED)
    args = ap.parse_args(argv)
    if args.num_nodes < 1:
        ap.error("--num-nodes must be at least 1")
    print(compile_pipeline(args.out, args.profile, args.gpus, args.params, args.num_nodes))


if __name__ == "__main__":
    main()

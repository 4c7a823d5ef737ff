"""Stage-1 training throughput and model-FLOPs utilisation, against a reference step written the way diffusers'
`train_instruct_pix2pix.py` does it, on the same device, model shape and DeepSpeed settings, measured in one run.

- ours: `relightful.training` as the stage runs it: the latents of the composite and the target were encoded once
  and cached (`training.data`); each step gathers a cached batch, applies the profile's runtime settings
  (`train.runtime`: channels-last, compile, gradient checkpointing) and runs UNet + F_bg forward/backward and
  the fused AdamW step.
- reference: every step builds the composite and target from the linear pair images and encodes both with the
  codec (for a VAE `latent_dist.sample()`, as the script does), with no runtime settings; the same model shape,
  precision, ZeRO stage and micro-batch.
- mfu: FLOPs per sample (matmuls, convolutions, attention; forward and backward, counted by torch's
  FlopCounterMode) × samples/s, over the rate of a large GEMM in the step's precision measured here in the same
  run (`mfu_datasheet`: over the GPU's dense bf16 peak, for known GPUs).

Prints, as its last line, one JSON object of these figures.

    python benchmarks/train_step.py --profile tiny                     # params.yaml's tiny model and step
    python benchmarks/train_step.py --profile gpu --micro-batch 12     # SD-1.5 shapes, 512², bf16 ZeRO-2 (a GPU)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

from profile_model import model_config, train_config  # noqa: E402

from relightful.io import load_tensors, save_tensors  # noqa: E402
from relightful.models import RelightModel  # noqa: E402
from relightful.models.codecs import VaeCodec, to_model_space  # noqa: E402
from relightful.training.config import RuntimeConfig  # noqa: E402
from relightful.data.shards import read_pair_manifest  # noqa: E402
from relightful.training.data import PairStream, build_cache  # noqa: E402
from relightful.training.engine import build_engine, init_distributed  # noqa: E402
from relightful.training.flops import count_flops, datasheet_peak, gemm_flops_per_s, mfu  # noqa: E402
from relightful.training.loop import draw_step, step_generator  # noqa: E402
from relightful.training.objectives import StageObjective, param_groups, set_trainable  # noqa: E402
from relightful.training.runtime import batch_to_device, prepare_model, to_device  # noqa: E402


def make_pairs(root: Path, n: int, size: int) -> Path:
    """Random linear pair images in the shard format (the content does not change the cost)."""
    g = torch.Generator().manual_seed(0)
    shard = {k: torch.rand(n, 3, size, size, generator=g).half() for k in ("x_a", "x_b", "y_b")}
    shard["matte"] = (torch.rand(n, 1, size, size, generator=g) > 0.5).half()
    pairs = root / "pairs"
    save_tensors(pairs / "shard-00000.safetensors", shard)
    pd.DataFrame({"pair_id": [f"p{i}" for i in range(n)], "shard": "shard-00000.safetensors", "index": range(n),
                  "split": "train"}).to_parquet(pairs / "manifest.parquet")
    return pairs


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="tiny", help="a profile of --params (its model and stage-1 step settings)")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--image-size", type=int, default=None, help="override the profile's model resolution")
    ap.add_argument("--micro-batch", type=int, default=None, help="default: the profile's")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default=None, help="default: the profile's")
    ap.add_argument("--zero-stage", type=int, default=None, help="default: the profile's")
    for flag in ("channels-last", "compile", "gradient-checkpointing"):
        ap.add_argument(f"--{flag}", action=argparse.BooleanOptionalAction, default=None,
                        help="default: the profile's train.runtime")
    ap.add_argument("--steps", type=int, default=20, help="timed steps of each variant and repetition")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--pairs", type=int, default=64)
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    init_distributed()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        config = model_config(args.profile, root, args.params, args.image_size)
        train = train_config(args.profile, args.params, micro_batch=args.micro_batch, precision=args.precision,
                             zero_stage=args.zero_stage)
        runtime = dataclasses.replace(train.runtime, **{k: v for k, v in (
            ("channels_last", args.channels_last), ("compile", args.compile),
            ("gradient_checkpointing", args.gradient_checkpointing)) if v is not None})
        train = dataclasses.replace(train, runtime=runtime)
        mb = train.deepspeed.micro_batch

        def engine_for(runtime: RuntimeConfig):
            torch.manual_seed(0)
            model = RelightModel(config).to(device)
            set_trainable(model, 1)
            prepare_model(model, runtime)
            objective = StageObjective.from_config(model, 1, train)
            return model, build_engine(objective, param_groups(model, 1), train, 1)[0]

        model, ours = engine_for(runtime)
        reference_model, reference = engine_for(RuntimeConfig())
        pairs = make_pairs(root, args.pairs, config.image_size)
        stream = PairStream(read_pair_manifest(pairs), build_cache(pairs, root / "cache", model, progress=False),
                            "train", mb)
        raw = {k: v.to(device) for k, v in load_tensors(pairs / "shard-00000.safetensors").items()}
        weights = (None if train.timestep_bias.strategy == "none"
                   else train.timestep_bias.weights(train.num_train_timesteps))

        def encode(codec, images):
            if isinstance(codec, VaeCodec):  # as the diffusers script does: a draw from the posterior
                vae = codec.vae
                return vae.encode(images.to(vae.dtype)).latent_dist.sample().float() * vae.config.scaling_factor
            return codec.encode(images)

        def reference_batch(step: int) -> dict[str, torch.Tensor]:
            idx = torch.arange(step * mb, (step + 1) * mb, device=device) % args.pairs
            x_a, x_b, y_b, m = (raw[k][idx].float() for k in ("x_a", "x_b", "y_b", "matte"))
            with torch.no_grad():
                composite = encode(reference_model.codec, to_model_space(m * x_a + (1 - m) * y_b))
                target = encode(reference_model.codec, to_model_space(m * x_b + (1 - m) * y_b))
            return {"composite": composite, "target": target, "matte": reference_model.matte_latent(m),
                    "background": to_model_space(y_b)}

        def step_once(engine, batch, step: int, runtime: RuntimeConfig) -> None:
            drawn = draw_step(batch, step_generator(train.seed, step, 0, 0), train.num_train_timesteps,
                              train.cond_dropout, weights)
            batch = batch_to_device(batch, device, runtime)
            noise, t, keep_image, keep_light = (to_device(x, device, runtime) for x in drawn)
            loss, _ = engine(batch, noise, t, keep_image, keep_light)
            engine.backward(loss)
            engine.step()

        def run_ours(step: int) -> None:
            step_once(ours, stream.batch(step), step, runtime)

        def run_reference(step: int) -> None:
            step_once(reference, reference_batch(step), step, RuntimeConfig())

        def rate(run, steps: int, offset: int) -> float:
            synchronize(device)
            t0 = time.perf_counter()
            for step in range(offset, offset + steps):
                run(step)
            synchronize(device)
            return steps * mb / (time.perf_counter() - t0)

        flops_per_sample = count_flops(lambda: step_once(reference, stream.batch(0), 0, RuntimeConfig())) / mb
        t0 = time.perf_counter()
        run_ours(0)  # compiles, when asked
        synchronize(device)
        first_step_s = time.perf_counter() - t0
        rate(run_ours, args.warmup, 1)
        rate(run_reference, args.warmup, 1)
        ours_rates, reference_rates = [], []
        for rep in range(2):  # interleaved, so drift of the machine's speed hits both alike
            ours_rates.append(rate(run_ours, args.steps, 100 + rep * args.steps))
            reference_rates.append(rate(run_reference, args.steps, 100 + rep * args.steps))
        dtype = torch.bfloat16 if train.deepspeed.precision == "bf16" else torch.float32
        gemm = gemm_flops_per_s(device, dtype)
        peak = datasheet_peak(device)

    best, best_reference = max(ours_rates), max(reference_rates)
    result = {"profile": args.profile, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "threads": torch.get_num_threads(), "precision": train.deepspeed.precision,
              "zero_stage": train.deepspeed.zero_stage, "micro_batch": mb, "image_size": config.image_size,
              "runtime": dataclasses.asdict(runtime),
              "unet_params_m": round(sum(p.numel() for p in model.unet.parameters()) / 1e6, 1),
              "gflop_per_sample": round(flops_per_sample / 1e9, 3),
              "samples_per_s": round(best, 2), "reference_samples_per_s": round(best_reference, 2),
              "samples_per_s_ratio": round(best / best_reference, 3),
              "gemm_tflop_per_s": round(gemm / 1e12, 3), "mfu": round(mfu(flops_per_sample, best, gemm), 3),
              "reference_mfu": round(mfu(flops_per_sample, best_reference, gemm), 3),
              "first_step_s": round(first_step_s, 2)}
    if peak:
        result.update(datasheet_tflop_per_s=round(peak / 1e12, 1), mfu_datasheet=round(mfu(flops_per_sample, best, peak), 3))
    if device.type == "cuda":
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    print(f"ours {result['samples_per_s']} samples/s (mfu {result['mfu']}) | reference {best_reference:.2f} "
          f"samples/s | ratio {result['samples_per_s_ratio']} | {result['gflop_per_sample']} GFLOP/sample, GEMM "
          f"{result['gemm_tflop_per_s']} TFLOP/s")
    print(json.dumps(result))


if __name__ == "__main__":
    main()

"""Stage-1 training throughput against a reference step written the way diffusers' `train_instruct_pix2pix.py`
does it, on the same device, UNet, lighting encoder, codec and DeepSpeed engine, measured in one run.

- ours: the latents of the composite and the target were encoded once and cached (`training.data`); a step reads
  a cached batch and runs the UNet + F_bg forward/backward and the optimizer.
- reference: every step builds the composite and target from the linear pair images, encodes both with the VAE
  (`latent_dist.sample()`, as the script does), then the same forward/backward/optimizer step.

Prints, as its last line, one JSON object with both samples/s and their ratio (ours / reference).

    python benchmarks/train_step.py --profile tiny          # SD-shaped VAE at 1/8 width, tiny UNet, CPU fp32
    python benchmarks/train_step.py --profile gpu --precision bf16 --micro-batch 12   # SD-1.5 shapes, on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from relightful.io import save_tensors  # noqa: E402
from relightful.models import CodecConfig, EncoderConfig, ModelConfig, PanoramaConfig, RelightModel, UNetConfig  # noqa: E402
from relightful.training import TrainConfig  # noqa: E402
from relightful.training.config import DeepSpeedConfig  # noqa: E402
from relightful.models.codecs import to_model_space  # noqa: E402
from relightful.training.data import PairStream, build_cache, read_manifest  # noqa: E402
from relightful.training.engine import build_engine, init_distributed  # noqa: E402
from relightful.training.loop import draw_step, step_generator  # noqa: E402
from relightful.training.objectives import StageObjective, set_trainable  # noqa: E402

PROFILES = {
    # SD's AutoencoderKL architecture (4 levels, 8x downsampling, 2 layers per level) at 1/8 of its width, so the
    # tiny UNet sees 32x32x4 latents of 256x256 images: the tiny profile's latent size, SD's image:latent ratio.
    "tiny": dict(vae=dict(block_out_channels=(16, 32, 64, 64), down_block_types=("DownEncoderBlock2D",) * 4,
                          up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, norm_num_groups=8,
                          layers_per_block=2, sample_size=256),
                 unet=UNetConfig(), widths=(32, 64, 64), image_size=256),
    "gpu": dict(vae=dict(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, norm_num_groups=32,
                         layers_per_block=2, sample_size=512),
                unet=UNetConfig(block_out_channels=(320, 640, 1280, 1280),
                                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, layers_per_block=2,
                                cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32, null_tokens=77),
                widths=(320, 640, 1280, 1280), image_size=512),
}


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", choices=sorted(PROFILES), default="tiny")
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--zero-stage", type=int, default=0)
    ap.add_argument("--steps", type=int, default=20, help="timed steps of each variant")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--pairs", type=int, default=64)
    args = ap.parse_args()
    profile = PROFILES[args.profile]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    init_distributed()

    from diffusers import AutoencoderKL

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        torch.manual_seed(0)
        AutoencoderKL(**profile["vae"]).save_pretrained(root / "vae", safe_serialization=True)
        n_scales = len(profile["widths"])
        config = ModelConfig(image_size=profile["image_size"], codec=CodecConfig(kind="vae", vae_path=str(root / "vae")),
                             unet=profile["unet"], lighting=EncoderConfig(widths=profile["widths"]),
                             panorama=PanoramaConfig(widths=profile["widths"][:n_scales]))
        model = RelightModel(config)
        pairs = make_pairs(root, args.pairs, config.image_size)
        files = build_cache(pairs, root / "cache", model.to(device), progress=False)
        manifest = read_manifest(pairs)
        stream = PairStream(manifest, files, "train", args.micro_batch)
        from relightful.io import load_tensors

        raw = {k: v.to(device) for k, v in load_tensors(pairs / "shard-00000.safetensors").items()}
        train = TrainConfig(deepspeed=DeepSpeedConfig(micro_batch=args.micro_batch, precision=args.precision,
                                                      zero_stage=args.zero_stage))
        params = set_trainable(model, 1)
        objective = StageObjective(model, 1)
        engine, _, _ = build_engine(objective, params, train, 1)
        vae = model.codec.vae

        def cached_batch(step):
            return {k: v.to(device, non_blocking=True) for k, v in stream.batch(step).items()}

        def reference_batch(step):
            idx = torch.arange(step * args.micro_batch, (step + 1) * args.micro_batch, device=device) % args.pairs
            x_a, x_b, y_b, m = (raw[k][idx].float() for k in ("x_a", "x_b", "y_b", "matte"))
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
                composite = vae.encode(to_model_space(m * x_a + (1 - m) * y_b)).latent_dist.sample()
                target = vae.encode(to_model_space(m * x_b + (1 - m) * y_b)).latent_dist.sample()
            s = vae.config.scaling_factor
            return {"composite": composite.float() * s, "target": target.float() * s, "matte": model.matte_latent(m),
                    "background": to_model_space(y_b)}

        def run(make_batch, steps: int, offset: int) -> float:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for step in range(offset, offset + steps):
                batch = make_batch(step)
                noise, t, keep_image, keep_light = draw_step(batch, step_generator(0, step, 0, 0), 1000, 0.05)
                loss, _ = engine(batch, noise.to(device), t.to(device), keep_image.to(device), keep_light.to(device))
                engine.backward(loss)
                engine.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            return steps * args.micro_batch / (time.perf_counter() - t0)

        run(cached_batch, args.warmup, 0)
        run(reference_batch, args.warmup, 0)
        ours, ref = [], []
        for rep in range(2):  # interleaved, so drift of the machine's speed hits both alike
            ours.append(run(cached_batch, args.steps, 100 + rep * args.steps))
            ref.append(run(reference_batch, args.steps, 100 + rep * args.steps))
    result = {"profile": args.profile, "device": str(device), "precision": args.precision,
              "micro_batch": args.micro_batch, "unet_params_m": round(sum(p.numel() for p in model.unet.parameters()) / 1e6, 1),
              "samples_per_s": round(max(ours), 2), "reference_samples_per_s": round(max(ref), 2),
              "samples_per_s_ratio": round(max(ours) / max(ref), 3)}
    if device.type == "cuda":
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    print(f"ours {result['samples_per_s']} samples/s | reference (VAE encode per step) "
          f"{result['reference_samples_per_s']} samples/s | ratio {result['samples_per_s_ratio']}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# The device check: one run on one lent GPU, under 8 minutes, printing one JSON line of
#   - gpu-profile stage-1 training samples/s at 512², bf16, ZeRO-2 (SDPA attention, channels-last, torch.compile),
#     the diffusers-InstructPix2Pix-style reference step's samples/s and the ratio (benchmarks/train_step.py);
#   - peak GPU memory; MFU against a bf16 GEMM measured in the same run and against the datasheet's dense peak;
#   - inference seconds per 512² image with 20 sampler steps and both guidance scales (benchmarks/inference.py);
#   - the goals: ≥ 45 samples/s, ≥ 1.5× the reference, ≤ 1.0 s per image.
#
#   bash benchmarks/device_check.sh --dry-run        # on a CPU: tiny shapes, the same code path but compile (< 1 min)
#   bash benchmarks/device_check.sh --fetch-wheels   # here, before a device run: what the GPU image lacks, in .whl/
#   bash benchmarks/device_check.sh                  # on the GPU machine (device tool: carry .whl)
set -euo pipefail
cd "$(dirname "$0")/.."

mode=${1:-device}
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python

if [ "$mode" = "--fetch-wheels" ]; then
    # The GPU image has torch, numpy, pandas, pyarrow, safetensors, transformers, huggingface-hub, ... but not these
    # (Python 3.12 there). DeepSpeed is a source package: its wheel is pure Python, built here without isolation.
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    mkdir -p .whl
    "$PY" -m pip wheel --quiet --no-deps --no-build-isolation -w .whl deepspeed==0.19.8
    "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
        diffusers==0.42.1 hjson==3.1.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 \
        typing-inspection==0.4.5 importlib-metadata==9.1.0   # the versions that resolved with the rest here
    ls .whl
    exit 0
fi

if [ -d .whl ] && [ "$mode" != "--dry-run" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1

if [ "$mode" = "--dry-run" ]; then
    # the device run's settings but compilation (minutes on a CPU)
    train=(--profile tiny --precision bf16 --zero-stage 2 --micro-batch 4 --channels-last --no-compile
           --steps 2 --warmup 1 --pairs 8)
    infer=(--profile tiny --precision bf16 --sizes 64 --steps 2 --repeats 1 --device cpu)
elif [ "$mode" = "device" ]; then
    train=(--profile gpu --precision bf16 --zero-stage 2 --micro-batch 12 --channels-last --compile
           --steps 20 --warmup 5 --pairs 96)
    infer=(--profile gpu --precision bf16 --sizes 512 --steps 20 --repeats 3)
else
    echo "usage: $0 [--dry-run | --fetch-wheels]" >&2
    exit 2
fi

train_json=$("$PY" benchmarks/train_step.py "${train[@]}" | tail -n 1)
infer_json=$("$PY" benchmarks/inference.py "${infer[@]}" | tail -n 1)
"$PY" - "$mode" "$train_json" "$infer_json" <<'PYEOF'
import json, sys

mode, train, infer = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
size = max(int(k.rsplit("_", 1)[1]) for k in infer if k.startswith("s_per_image_") and k.count("_") == 3)
s_per_image = infer[f"s_per_image_{size}"]
peak = train.get("peak_memory_gib")
print(json.dumps({
    "dry_run": mode == "--dry-run", "device": train["device"],
    "samples_per_s": train["samples_per_s"], "reference_samples_per_s": train["reference_samples_per_s"],
    "samples_per_s_ratio": train["samples_per_s_ratio"], "mfu": train["mfu"],
    "mfu_datasheet": train.get("mfu_datasheet"), "peak_memory_gib": peak,
    "inference_peak_gpu_gib": infer.get(f"peak_gpu_gib_{size}"),
    "gflop_per_sample": train["gflop_per_sample"], "first_step_s": train["first_step_s"],
    f"s_per_image_{size}": s_per_image, "inference_steps": infer["steps"],
    "goals_met": {"samples_per_s>=45": train["samples_per_s"] >= 45, "ratio>=1.5": train["samples_per_s_ratio"] >= 1.5,
                  "s_per_image<=1.0": s_per_image <= 1.0},
    "train": train, "inference": infer}))
PYEOF

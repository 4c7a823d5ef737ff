"""Inference speed: seconds per image of `Harmonizer` at several input resolutions, against the same sampler running
the three classifier-free-guidance passes one by one (the reference), measured in the same run, and the process's
peak memory during each call.

Prints, as its last line, one JSON object: `s_per_image_<size>` (ours, batched guidance), `..._reference`
(unbatched), `..._ratio` = reference / ours (higher is better) and `peak_rss_gib_<size>` (the process's peak
resident memory while ours ran; on a GPU also `peak_gpu_gib_<size>`) for each input size, plus the setup. The
sampler settings are the profile's `train.sampling` (the defaults a trained model folder carries) unless given.

    python benchmarks/inference.py --sizes 512 1024 2048                             # the tiny profile's model
    python benchmarks/inference.py --profile gpu --precision bf16 --sizes 512         # SD-1.5 shapes, on a GPU
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

from profile_model import model_config, train_config  # noqa: E402

from relightful.models import RelightModel  # noqa: E402
from relightful.models.harmonizer import Harmonizer  # noqa: E402


def inputs(size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A square portrait-like input: noise foreground, soft disc matte, a 4:3 background of another size."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot((yy + 0.5) / size - 0.5, (xx + 0.5) / size - 0.5)
    matte = np.clip((0.4 - r) / 0.02, 0, 1).astype(np.float32)
    fg = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    bg = rng.integers(0, 256, (3 * size // 2, 2 * size, 3), dtype=np.uint8)
    return fg, matte, bg


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRss:
    """The process's peak resident memory while the `with` block runs (sampled every 2 ms by a thread)."""

    def __enter__(self):
        self.peak, self._stop = rss_bytes(), threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def seconds_per_image(harmonizer: Harmonizer, size: int, steps: int | None, repeats: int) -> tuple[float, int]:
    """(best seconds per image, peak resident bytes during the runs)."""
    fg, matte, bg = inputs(size)
    harmonizer(fg, matte, bg, steps=steps)  # warm-up (first calls run slower)
    times = []
    with PeakRss() as rss:
        for i in range(repeats):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            harmonizer(fg, matte, bg, steps=steps, seed=i)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    return min(times), rss.peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="sampler steps per image (default: the profile's)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048], help="input resolutions (square)")
    parser.add_argument("--profile", default="tiny", help="a profile of --params: its model, random weights")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--image-size", type=int, default=None, help="override the profile's model resolution")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per figure (the best is kept)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        config = model_config(args.profile, Path(tmp), args.params, args.image_size)
        torch.manual_seed(0)
        model = RelightModel(config).eval()
    model = model.to(args.device, torch.bfloat16 if args.precision == "bf16" else torch.float32)
    defaults = dataclasses.asdict(train_config(args.profile, args.params).sampling)
    ours, reference = Harmonizer(model, defaults=defaults), Harmonizer(model, batch_guidance=False, defaults=defaults)
    result: dict = {"profile": args.profile, "steps": args.steps or defaults["steps"],
                    "ensemble": ours.ensemble, "detail_sigma": ours.detail_sigma, "image_size": config.image_size,
                    "precision": args.precision, "device": str(args.device), "threads": torch.get_num_threads(),
                    "cpus": os.cpu_count()}
    for size in args.sizes:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        t_ours, rss = seconds_per_image(ours, size, args.steps, args.repeats)
        if torch.cuda.is_available():
            result[f"peak_gpu_gib_{size}"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        t_ref, _ = seconds_per_image(reference, size, args.steps, args.repeats)
        print(f"{size}x{size}: {t_ours:.3f} s/image, peak memory {rss / 2**30:.2f} GiB (three passes unbatched: "
              f"{t_ref:.3f} s, {t_ref / t_ours:.2f}x)", flush=True)
        result.update({f"s_per_image_{size}": round(t_ours, 4), f"s_per_image_{size}_reference": round(t_ref, 4),
                       f"s_per_image_{size}_ratio": round(t_ref / t_ours, 3),
                       f"peak_rss_gib_{size}": round(rss / 2**30, 3)})
    print(json.dumps(result))


if __name__ == "__main__":
    main()

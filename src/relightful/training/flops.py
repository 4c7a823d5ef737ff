"""Model-FLOPs utilisation (MFU): the FLOPs a training step does per second, over what the device can do.

FLOPs are counted by torch's `FlopCounterMode`: matrix products, convolutions and attention, forward and backward
(the convention of MFU; elementwise work is not counted). The rate they are compared with is measured, not taken
from a datasheet: a large square GEMM in the step's precision, on the same threads or device, in the same run, so
that the figure says how close the step runs to this machine's own matmul speed.
"""

from __future__ import annotations

import time
from typing import Callable

import torch

# Dense bf16 tensor-core peaks from the vendors' datasheets (FLOP/s, without sparsity), matched on the device name.
BF16_DENSE_PEAK = {"H200": 989.4e12, "H100": 989.4e12, "GH200": 989.4e12, "A100": 312e12, "L40S": 362.1e12,
                   "L4": 121e12, "A10G": 70e12}


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of `fn` (e.g. a forward, backward and optimizer step)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gemm_flops_per_s(device: torch.device | str, dtype: torch.dtype, size: int | None = None,
                     seconds: float = 0.5) -> float:
    """The best rate of an n×n×n matrix product in `dtype` on `device` (n = 2048 on a CPU, 8192 on a GPU),
    each repetition timed for about `seconds`."""
    device = torch.device(device)
    n = size or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b  # the first call pays for the kernel choice
    _synchronize(device)
    flops = 2.0 * n**3
    best = 0.0
    for _ in range(3):
        t0, calls = time.perf_counter(), 0
        while True:
            a @ b
            calls += 1
            _synchronize(device)
            elapsed = time.perf_counter() - t0
            if elapsed >= seconds / 3:
                break
        best = max(best, flops * calls / elapsed)
    return best


def datasheet_peak(device: torch.device | str) -> float | None:
    """The dense bf16 peak of a known GPU (FLOP/s), or None (CPUs, unknown GPUs)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key in sorted(BF16_DENSE_PEAK, key=len, reverse=True):  # "GH200" before "H200"
        if key in name:
            return BF16_DENSE_PEAK[key]
    return None


def mfu(flops_per_sample: float, samples_per_s: float, peak_flops_per_s: float) -> float:
    return flops_per_sample * samples_per_s / peak_flops_per_s

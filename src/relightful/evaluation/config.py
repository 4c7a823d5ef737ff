"""The typed config of `relightful evaluate` and of the promotion gate's scoring: the `evaluate` block of params.yaml."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EvalConfig:
    split: str = "test"                  # which split of each pair set is evaluated
    max_pairs: int = 64                  # per scenario, spread evenly over the split (the paper: 500 light-stage)
    batch: int = 16                      # pairs per sampler call
    steps: int | None = None             # sampler steps and guidance; None: the model folder's "sampling"
    image_guidance: float | None = None
    lighting_guidance: float | None = None
    seed: int = 0
    n_visual: int = 6                    # test pairs shown in the visual report (the first ones, a fixed set)
    device: str = "auto"                 # auto (CUDA when available) | cpu | cuda | cuda:N
    lpips_weights: str | None = None     # local safetensors of LPIPS-alex (evaluation/lpips.py); None: not computed
    gain_regression_pairs: int = 2048    # light-stage train pairs the gain_regression baseline is fitted on

    def __post_init__(self):
        if min(self.max_pairs, self.batch) < 1 or self.n_visual < 0 or self.gain_regression_pairs < 2:
            raise ValueError("evaluate: max_pairs and batch ≥ 1, n_visual ≥ 0, gain_regression_pairs ≥ 2 required")

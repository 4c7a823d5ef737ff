"""Typed configs of the two augment jobs: the `augment` and `natural_starter` sections of params.yaml."""

from __future__ import annotations

from dataclasses import dataclass, field

MATTING_METHODS = ("none", "segmenter", "isnet", "grabcut")


@dataclass(frozen=True)
class AugmentConfig:
    """Stage-3 pair synthesis (DESIGN 3.6 stage 3): how many pairs, their size, and how the stage-2 model samples."""

    size: int = 64                      # pairs are size x size (photos: cover + centre crop)
    pairs_per_portrait: int = 16        # each with its own random other background
    pairs_per_shard: int = 64
    split_fractions: dict[str, float] = field(default_factory=lambda: {"train": 0.8, "val": 0.1, "test": 0.1})
    seed: int = 0
    batch: int = 8                      # pairs per sampler call (guidance makes the UNet batch up to 3x this)
    steps: int | None = None            # sampler steps and guidance scales; None: the model folder's "sampling"
    image_guidance: float | None = None  # values (as `relightful harmonize` uses), else 20, 1.5, 3.0
    lighting_guidance: float | None = None
    auto_matte: str = "none"            # for portraits without matte.png: none (skip them) | segmenter | isnet | grabcut
    matte_coverage_range: tuple[float, float] = (0.01, 0.99)  # fraction of matte > 0.5 a usable portrait has
    device: str = "auto"                # auto (CUDA when available) | cpu | cuda | cuda:N
    precision: str = "fp32"             # fp32 | bf16 | fp16 (the model is cast for sampling)

    def __post_init__(self):
        if self.size < 8 or min(self.pairs_per_portrait, self.pairs_per_shard, self.batch, self.steps or 1) < 1:
            raise ValueError("augment: size ≥ 8 and pairs_per_portrait, pairs_per_shard, batch, steps ≥ 1 required")
        if self.auto_matte not in MATTING_METHODS:
            raise ValueError(f"augment.auto_matte must be one of {MATTING_METHODS}, got {self.auto_matte!r}")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"augment.precision must be fp32, bf16 or fp16, got {self.precision!r}")
        lo, hi = self.matte_coverage_range
        if not 0.0 <= lo < hi <= 1.0:
            raise ValueError("augment.matte_coverage_range must satisfy 0 ≤ lo < hi ≤ 1, "
                             f"got {self.matte_coverage_range}")


@dataclass(frozen=True)
class NaturalStarterConfig:
    """The natural starter set: real photos that ship inside scikit-image, plus views of the HDR starter maps."""

    portraits: tuple[str, ...] = ("astronaut",)
    backgrounds: tuple[str, ...] = ("coffee", "rocket", "chelsea")
    hdri_crops_per_map: int = 1         # perspective views per HDR map (when an HDR folder is given)
    # the map sources (id prefix before "-") that give views; null: every map. Training-only skies (`sky_train`) are
    # there to widen the light-stage lighting, not to outnumber the real maps among natural backgrounds
    hdri_sources: tuple[str, ...] | None = None
    hdri_crop_size: tuple[int, int] = (384, 512)   # (height, width) of those views
    fov_range: tuple[float, float] = (50.0, 80.0)  # horizontal field of view of the views, degrees
    pitch_range: tuple[float, float] = (-5.0, 10.0)
    exposure_key: float = 0.18          # auto-exposure middle grey of the tone-mapped views
    matting: str = "segmenter"          # how the portraits' mattes are derived: segmenter | isnet | grabcut
    seed: int = 0

    def __post_init__(self):
        if self.matting not in ("segmenter", "isnet", "grabcut"):
            raise ValueError(f"natural_starter.matting must be segmenter, isnet or grabcut, got {self.matting!r}")

"""Stage-3 data: natural portraits become training pairs with the stage-2 model (DESIGN 3.6 stage 3).

    config.py             AugmentConfig (params section "augment"), NaturalStarterConfig ("natural_starter")
    portraits.py          the portrait/background folder format and its validating loader
    matting.py            mattes for portraits without one (the person segmenter; GrabCut as the fallback)
    segmenter.py          MediaPipe's selfie segmenter (LiteRT), its weights from the npm registry, guided-filter edges
    natural_pair_plan.py  which background each natural pair uses, its split (by portrait) and shard
    augment_pairs.py      the `augment` job, `augment_pairs`: batched relighting into natural-pair shards, resumable
    natural_starter.py    the `natural-starter` job, `build_natural_starter`: the real photos that can be had offline
"""

from relightful.augment.config import AugmentConfig, NaturalStarterConfig
from relightful.augment.portraits import Background, Portrait, scan_backgrounds, scan_portraits

__all__ = ["AugmentConfig", "Background", "NaturalStarterConfig", "Portrait", "scan_backgrounds", "scan_portraits"]

"""Column contracts of the dataset manifests, shared by the writers (ingest, render) and the data expectations."""

from __future__ import annotations

# data/envmaps/manifest.parquet: one row per input file that ingest-hdr looked at, accepted or rejected.
ENVMAP_COLUMNS: dict[str, str] = {
    "map_id": "str",            # file stem, unique; pairs reference maps by it
    "source_file": "str",       # path of the input file as given
    "status": "str",            # "ok" or "rejected"
    "reason": "str",            # why a file was rejected ("" when ok)
    "sha256": "str",            # checksum of the input file
    "height": "int",            # working size after resampling (0 when rejected)
    "width": "int",             # = 2 * height
    "integral_r": "float",      # ∫ L dω per channel of the normalised map (NaN when rejected)
    "integral_g": "float",
    "integral_b": "float",
    "mean_radiance": "float",   # mean of ∫ L dω / 4π over channels
    "max_radiance": "float",    # brightest pixel value
    "dynamic_range": "float",   # log10(max luminance / median luminance)
    "negative_fraction": "float",  # fraction of input pixel values that were < 0 and clipped
    "exposure": "float",        # factor applied to the input's radiance (mean-radiance normalisation; 1 if off)
}

# data/pairs/manifest.parquet: one row per training tuple (DESIGN 3.4).
PAIR_COLUMNS: dict[str, str] = {
    "pair_id": "str",           # "<split>-<subject>-<running number>", unique
    "shard": "str",             # shard file name, e.g. "shard-00000.safetensors"
    "index": "int",             # row of the pair inside the shard
    "shard_fingerprint": "str", # sha256 of the plan the shard was rendered from; equals its metadata "fingerprint"
    "subject_id": "str",
    "env_a": "str",             # map_id of the input lighting
    "env_b": "str",             # map_id of the target lighting (and background)
    "rotation_a_deg": "float",  # in [0, 360)
    "rotation_b_deg": "float",
    "fov_deg": "float",         # horizontal FoV of the background crop
    "pitch_deg": "float",       # background camera pitch
    "exposure_a_stops": "float",  # log2 intensity factor applied to map a (lighting-strength augmentation)
    "exposure_b_stops": "float",  # log2 intensity factor applied to map b, its lighting and its background alike
    "split": "str",             # "train" | "val" | "test"; subjects and maps never cross splits
    "scale": "float",           # the one factor applied to x_a, x_b, y_b (subject max over x_a, x_b -> 1)
    "matte_coverage": "float",  # fraction of pixels with matte > 0.5
    "fg_mean_a": "float",       # mean of x_a over the matte (linear, after scale)
    "fg_mean_b": "float",       # mean of x_b over the matte
    "fg_max": "float",          # max of x_a, x_b over the matte (1 by construction)
    "bg_mean": "float",         # mean of y_b
    "bg_max": "float",          # max of y_b
}

SPLITS = ("train", "val", "test")

# data/natural_pairs/manifest.parquet (`relightful augment`, DESIGN 3.6 stage 3): the pair columns above, where the
# light-stage-only ones (env_a ... exposure_b_stops) are null, "subject_id" is the portrait id and "scale" is 1
# (photos are display-referred), plus:
NATURAL_PAIR_COLUMNS: dict[str, str] = {
    **PAIR_COLUMNS,
    "background_id": "str",     # the other background the subject of x_a was relit to (file stem)
    "seed": "int",              # noise seed of the sampler call that relit the pair (one per batch)
    "matte_source": "str",      # "file" (the portrait's matte.png) or the matting method that computed it
    "model": "str",             # first 16 hex digits of the sha256 of the stage-2 model folder's files
    "steps": "int",             # sampler steps
    "image_guidance": "float",
    "lighting_guidance": "float",
    "fg_change": "float",       # mean |x_a − x_b| over the matte: how much the relighting changed the subject
}

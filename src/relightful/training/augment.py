"""Left-right mirroring of training samples (`train.hflip`): a mirrored portrait under the mirrored lighting is another
valid pair, so every subject and map is seen both ways round at no rendering cost.

Everything a sample holds is mirrored together: the composite and target latents (through the codec, exactly for
`pixel_unshuffle`), the matte, the background y_b, the panorama z_b and the lightings' mean directions. A lat-long
map whose centre column is the camera's view direction (DESIGN 3.1, lighting/envmap.py) mirrors about the camera's
vertical plane by reversing its columns: column j holds longitude φ, column W−1−j longitude −φ, and x = sin θ sin φ
changes sign (as it does in each camera-space vector of `light`, in the shading coefficients of the basis functions
odd in x, and in the x channel of the silhouette normals that
follow the matte in its tensor when the model takes them).
"""

from __future__ import annotations

import torch

from relightful.lighting.sh import mirror_coefficients

IMAGE_KEYS = ("matte", "background", "panorama")  # mirrored as images (last axis: width)
LATENT_KEYS = ("composite", "target")             # mirrored through the codec
VECTOR_KEYS = ("light",)                          # (B, 3k) camera-space vectors: x = every third entry
SHADING_KEYS = ("shading",)                       # (B, 8k) shading coefficients (lighting/sh.py)


def mirror_mask(gen: torch.Generator, n: int, probability: float) -> torch.Tensor:
    """(n,) bool: which samples of a micro-batch are mirrored, each with `probability`."""
    return torch.rand(n, generator=gen) < probability


def mirror_samples(batch: dict[str, torch.Tensor], codec, which: torch.Tensor) -> dict[str, torch.Tensor]:
    """`batch` with the samples selected by `which` (B,) mirrored left-right; the others are unchanged."""
    if not bool(which.any()):
        return batch
    out = dict(batch)
    for key, value in batch.items():
        if key in LATENT_KEYS:
            flipped = codec.mirror(value[which])
        elif key in IMAGE_KEYS:
            flipped = value[which].flip(-1)
            if key == "matte" and value.shape[1] == 4:  # matte, normal x, y, z: x points the other way
                flipped[:, 1] = -flipped[:, 1]
        elif key in SHADING_KEYS:
            flipped = mirror_coefficients(value[which])
        elif key in VECTOR_KEYS:
            flipped = value[which].clone()
            flipped[:, 0::3] = -flipped[:, 0::3]
        else:
            raise KeyError(f"don't know how to mirror the batch tensor {key!r}")
        out[key] = value.clone()
        out[key][which] = flipped.to(value.dtype)
    return out

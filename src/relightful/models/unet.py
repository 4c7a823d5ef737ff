"""The conditioned denoiser: a diffusers `UNet2DConditionModel` whose input channels are the noisy target latent,
the composite latent and the subject's shape at latent resolution, the matte and optionally its silhouette normals
(DESIGN 3.5; InstructPix2Pix has the first two).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from relightful.io.errors import InputError


@dataclass(frozen=True)
class UNetConfig:
    """The UNet's shape. The defaults are the tiny profile; `gpu` in params.yaml is SD-1.5's shape."""
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    down_block_types: tuple[str, ...] = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
    up_block_types: tuple[str, ...] = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")
    layers_per_block: int = 1
    cross_attention_dim: int = 32
    attention_head_dim: int = 8
    norm_num_groups: int = 8
    null_tokens: int = 1            # length of the fixed "null instruction" sequence (77 for SD/IP2P)
    init_from: str | None = None    # a local InstructPix2Pix folder (with unet/): initialise from its weights


def build_unet(config: UNetConfig, latent_channels: int, sample_size: int, condition_channels: int = 1):
    """A freshly initialised UNet for `latent_channels`-channel latents (inputs: 2·C + condition_channels: the shape
    and, with `prior_input`, the shading prior)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=2 * latent_channels + condition_channels,
        out_channels=latent_channels,
        block_out_channels=tuple(config.block_out_channels),
        down_block_types=tuple(config.down_block_types),
        up_block_types=tuple(config.up_block_types),
        layers_per_block=config.layers_per_block,
        cross_attention_dim=config.cross_attention_dim,
        attention_head_dim=config.attention_head_dim,
        norm_num_groups=config.norm_num_groups,
    )


def add_input_channels(unet, count: int = 1):
    """The same UNet with `count` more input channels (the shape inputs) whose weights are zero: its output is
    unchanged."""
    from diffusers import UNet2DConditionModel

    old = unet.conv_in
    config = dict(unet.config)
    config["in_channels"] = old.in_channels + count
    new_unet = UNet2DConditionModel.from_config(config)
    state = unet.state_dict()
    weight = torch.zeros(old.out_channels, old.in_channels + count, *old.kernel_size, dtype=old.weight.dtype)
    weight[:, :old.in_channels] = old.weight.detach()
    state["conv_in.weight"] = weight
    new_unet.load_state_dict(state)
    return new_unet.to(old.weight.dtype)


def load_instruct_pix2pix_unet(folder: str | Path, condition_channels: int = 1):
    """The UNet of a local InstructPix2Pix folder (`unet/` in diffusers layout, safetensors), with the condition
    input channels (shape, prior) added (zero weights)."""
    from diffusers import UNet2DConditionModel

    folder = Path(folder)
    unet_dir = folder / "unet" if (folder / "unet").is_dir() else folder
    if not (unet_dir / "config.json").is_file():
        raise InputError(folder, "no InstructPix2Pix UNet here (expected unet/config.json); nothing is downloaded")
    try:
        unet = UNet2DConditionModel.from_pretrained(unet_dir, local_files_only=True, use_safetensors=True)
    except (OSError, ValueError, RuntimeError) as err:
        raise InputError(unet_dir, f"cannot load the UNet ({err})") from None
    if unet.config.in_channels != 2 * unet.config.out_channels:
        raise InputError(unet_dir, f"not an InstructPix2Pix UNet: {unet.config.in_channels} input channels for "
                                   f"{unet.config.out_channels}-channel latents (expected twice as many)")
    return add_input_channels(unet, condition_channels)


NULL_EMBEDDING_FILE = "null_embedding.safetensors"


def load_null_embedding(folder: str | Path) -> torch.Tensor:
    """The checkpoint's empty-prompt embedding (1, T, D): InstructPix2Pix's UNet was trained with CLIP text
    embeddings, so the "null instruction" must be its encoding of "", not an arbitrary tensor.

    Read from `null_embedding.safetensors` when the folder has one (computed once, e.g. on a machine with the
    text encoder), else computed with the folder's own `text_encoder/` and `tokenizer/` (local files only)."""
    from relightful.io import load_tensors

    folder = Path(folder)
    if (folder / NULL_EMBEDDING_FILE).is_file():
        tensors = load_tensors(folder / NULL_EMBEDDING_FILE)
        if "null_embedding" not in tensors or tensors["null_embedding"].ndim != 3:
            raise InputError(folder / NULL_EMBEDDING_FILE, "expected a (1, T, D) tensor named null_embedding")
        return tensors["null_embedding"].float()
    if (folder / "text_encoder").is_dir() and (folder / "tokenizer").is_dir():
        try:
            from transformers import CLIPTextModel, CLIPTokenizer
        except ImportError:
            raise InputError(folder, f"computing the empty-prompt embedding needs `pip install transformers`; or "
                                     f"add {NULL_EMBEDDING_FILE} (a (1, 77, 768) tensor named null_embedding)") from None

        try:
            tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
            encoder = CLIPTextModel.from_pretrained(folder / "text_encoder", local_files_only=True,
                                                    use_safetensors=True)
        except (OSError, ValueError) as err:
            raise InputError(folder, f"cannot load the text encoder or tokenizer ({err})") from None
        ids = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids
        with torch.no_grad():
            return encoder(ids)[0].float()
    raise InputError(folder, f"no empty-prompt embedding: add {NULL_EMBEDDING_FILE} or text_encoder/ + tokenizer/")


def adapter_feature_shapes(unet, latent_hw: tuple[int, int]) -> list[tuple[int, int, int]]:
    """(channels, height, width) of the T2I-Adapter residual each down block adds (diffusers' rule).

    A cross-attention block adds its residual before it downsamples (at its input size), a plain block after it
    downsamples (at its output size). diffusers broadcasts a wrong shape silently, so the encoders are checked
    against this list.
    """
    h, w = latent_hw
    shapes = []
    for block, channels in zip(unet.down_blocks, unet.config.block_out_channels):
        downsamples = block.downsamplers is not None
        if getattr(block, "has_cross_attention", False):
            shapes.append((channels, h, w))
            if downsamples:
                h, w = (h + 1) // 2, (w + 1) // 2
        else:
            if downsamples:
                h, w = (h + 1) // 2, (w + 1) // 2
            shapes.append((channels, h, w))
    return shapes


def check_features(features: list[torch.Tensor], expected: list[tuple[int, int, int]], batch: int,
                   who: str = "lighting features") -> None:
    """Raise a clear ValueError unless `features` has one (batch, C, H, W) tensor per expected shape."""
    if len(features) != len(expected):
        raise ValueError(f"{who}: {len(features)} feature maps for a UNet with {len(expected)} down blocks")
    for i, (f, shape) in enumerate(zip(features, expected)):
        if tuple(f.shape) != (batch, *shape):
            raise ValueError(f"{who}: scale {i} has shape {tuple(f.shape)}, the UNet needs {(batch, *shape)}")

"""The lighting-aware diffusion model: latent codecs, conditioned UNet, lighting and panorama encoders."""

from relightful.models.codecs import (CodecConfig, PixelUnshuffleCodec, VaeCodec, build_codec, from_model_space,
                                      to_model_space)
from relightful.models.lighting_encoder import EncoderConfig, LightingEncoder
from relightful.models.panorama_encoder import PanoramaConfig, PanoramaEncoder
from relightful.models.relight_model import ModelConfig, RelightModel, read_model_meta
from relightful.models.unet import UNetConfig, adapter_feature_shapes, add_input_channels, build_unet

__all__ = [
    "CodecConfig", "EncoderConfig", "LightingEncoder", "ModelConfig", "PanoramaConfig", "PanoramaEncoder",
    "PixelUnshuffleCodec", "RelightModel", "UNetConfig", "VaeCodec", "adapter_feature_shapes", "add_input_channels",
    "build_codec", "build_unet", "from_model_space", "read_model_meta", "to_model_space",
]

"""The model's contracts: encoder outputs fit every UNet scale, the matte channel keeps a loaded InstructPix2Pix
UNet unchanged, codecs are exact, model folders refuse corrupt or mismatched weights."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel

from relightful.io import InputError
from relightful.models import (CodecConfig, EncoderConfig, ModelConfig, PanoramaConfig, PixelUnshuffleCodec,
                               RelightModel, UNetConfig)
from relightful.models.unet import load_instruct_pix2pix_unet

from conftest import micro_model_config

SD_LIKE = UNetConfig(block_out_channels=(16, 32, 32, 32),
                     down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                     up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                     cross_attention_dim=16, attention_head_dim=8, norm_num_groups=8, layers_per_block=1)
PLAIN_FIRST = UNetConfig(block_out_channels=(16, 32, 32), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D",
                                                                            "DownBlock2D"),
                         up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=16,
                         attention_head_dim=8, norm_num_groups=8)


def _model(unet: UNetConfig, size: int = 64, factor: int = 2) -> RelightModel:
    n = len(unet.block_out_channels)
    return RelightModel(ModelConfig(image_size=size, codec=CodecConfig(factor=factor), unet=unet,
                                    lighting=EncoderConfig(widths=(8,) * n),
                                    panorama=PanoramaConfig(widths=(8,) * n, code_dim=16, grid=2, trunk=8)))


@pytest.mark.parametrize("unet", [UNetConfig(), SD_LIKE, PLAIN_FIRST], ids=["tiny", "sd-like", "plain-first"])
def test_encoder_outputs_fit_every_unet_scale(unet):
    torch.manual_seed(0)
    model = _model(unet)
    bg = torch.rand(2, 3, 64, 64) * 2 - 1
    f_bg = model.background_features(bg)
    f_env = model.panorama_features(torch.rand(2, 3, 8, 16) * 5)
    assert [tuple(f.shape[1:]) for f in f_bg] == model.feature_shapes
    assert [tuple(f.shape[1:]) for f in f_env] == model.feature_shapes
    # the rule agrees with what diffusers does: a non-zero residual of exactly these shapes changes the output,
    # and diffusers consumes all of them (a leftover would be silently added to the mid block)
    x = torch.randn(2, model.codec.channels, 32, 32)
    t = torch.tensor([5, 500])
    ones = [torch.ones(2, *s) for s in model.feature_shapes]
    residuals = list(ones)
    model.unet(torch.cat([x, x, x[:, :1]], 1), t, encoder_hidden_states=model.null_embedding.expand(2, -1, -1),
               down_intrablock_additional_residuals=residuals)
    assert residuals == []
    base = model.denoise(x, t, x, x[:, :1], None)
    assert not torch.allclose(model.denoise(x, t, x, x[:, :1], ones), base)


def test_output_projections_start_at_zero():
    model = _model(UNetConfig())
    x = torch.randn(2, model.codec.channels, 32, 32)
    t = torch.tensor([5, 500])
    features = model.background_features(torch.rand(2, 3, 64, 64))
    assert all(float(f.detach().abs().max()) == 0.0 for f in features)
    torch.testing.assert_close(model.denoise(x, t, x, x[:, :1], features), model.denoise(x, t, x, x[:, :1], None))


def test_wrong_feature_shapes_are_refused():
    model = _model(UNetConfig())
    x = torch.randn(2, model.codec.channels, 32, 32)
    t = torch.tensor([1, 2])
    good = [torch.zeros(2, *s) for s in model.feature_shapes]
    with pytest.raises(ValueError, match=r"scale 1 has shape \(2, 64, 1, 1\), the UNet needs \(2, 64, 16, 16\)"):
        model.denoise(x, t, x, x[:, :1], [good[0], torch.zeros(2, 64, 1, 1), good[2]])
    with pytest.raises(ValueError, match="2 feature maps for a UNet with 3 down blocks"):
        model.denoise(x, t, x, x[:, :1], good[:2])
    with pytest.raises(ValueError, match="3 widths for 2 UNet scales"):
        RelightModel(ModelConfig(unet=micro_model_config().unet))  # default encoder widths have 3 scales


def test_pixel_unshuffle_codec_is_exact():
    codec = PixelUnshuffleCodec(4)
    x = torch.rand(2, 3, 64, 48) * 2 - 1
    z = codec.encode(x)
    assert z.shape == (2, 48, 16, 12)
    assert torch.equal(codec.decode(z), x)


def test_instruct_pix2pix_unet_is_unchanged_by_the_matte_channel(tmp_path):
    torch.manual_seed(0)
    ip2p = UNet2DConditionModel(sample_size=16, in_channels=8, out_channels=4, block_out_channels=(16, 32),
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                                attention_head_dim=8, norm_num_groups=8, layers_per_block=1)
    ip2p.save_pretrained(tmp_path / "ip2p" / "unet", safe_serialization=True)
    null = torch.randn(1, 2, 16)
    loaded = load_instruct_pix2pix_unet(tmp_path / "ip2p")
    assert loaded.config.in_channels == 9
    x = torch.randn(3, 8, 16, 16)
    t = torch.tensor([1, 400, 999])
    ctx = torch.randn(3, 2, 16)
    with torch.no_grad():
        before = ip2p(x, t, encoder_hidden_states=ctx).sample
        for matte in (torch.zeros(3, 1, 16, 16), torch.rand(3, 1, 16, 16)):
            after = loaded(torch.cat([x, matte], 1), t, encoder_hidden_states=ctx).sample
            assert torch.equal(before, after)
    # the UNet of a whole model (the gpu profile's path: VAE codec + InstructPix2Pix init), saved and reloaded
    from diffusers import AutoencoderKL

    AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8,
                  layers_per_block=1).save_pretrained(tmp_path / "vae", safe_serialization=True)
    encoders = dict(lighting=EncoderConfig(widths=(8, 8)), panorama=PanoramaConfig(widths=(8, 8), code_dim=8, grid=2,
                                                                                    trunk=8))
    config = ModelConfig(image_size=32, codec=CodecConfig(kind="vae", vae_path=str(tmp_path / "vae")),
                         unet=UNetConfig(init_from=str(tmp_path / "ip2p"), cross_attention_dim=16), **encoders)
    with pytest.raises(InputError, match="no empty-prompt embedding"):
        RelightModel(config)
    from relightful.io import save_tensors

    save_tensors(tmp_path / "ip2p" / "null_embedding.safetensors", {"null_embedding": null})
    model = RelightModel(config)
    # at step 0 the whole model is the InstructPix2Pix UNet under its empty-prompt embedding
    with torch.no_grad():
        z = torch.randn(3, 4, 16, 16)
        assert torch.equal(model.denoise(z, t, x[:, 4:], torch.rand(3, 1, 16, 16), None),
                           ip2p(torch.cat([z, x[:, 4:]], 1), t, encoder_hidden_states=null.expand(3, -1, -1)).sample)
    model.save_pretrained(tmp_path / "model")
    again = RelightModel.from_pretrained(tmp_path / "model")
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.equal(model.codec.encode(images), again.codec.encode(images))
    z = model.codec.encode(images)
    assert z.shape == (2, 4, 16, 16)
    t = torch.tensor([3, 300])
    assert torch.equal(again.null_embedding, null)
    torch.testing.assert_close(model.denoise(z, t, z, z[:, :1], None), again.denoise(z, t, z, z[:, :1], None),
                               rtol=0, atol=0)
    # a codec whose latents do not match the checkpoint is refused clearly
    with pytest.raises(ValueError, match="UNet takes 9 input channels; the codec, the shape and prior inputs need 97"):
        RelightModel(ModelConfig(image_size=32, codec=CodecConfig(factor=4),
                                 unet=UNetConfig(init_from=str(tmp_path / "ip2p")), **encoders))


def test_missing_weights_folder_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="no InstructPix2Pix UNet here"):
        RelightModel(ModelConfig(unet=UNetConfig(init_from=str(tmp_path / "nowhere"))))
    with pytest.raises(InputError, match="not a diffusers AutoencoderKL folder"):
        RelightModel(ModelConfig(codec=CodecConfig(kind="vae", vae_path=str(tmp_path / "nowhere"))))


def test_model_folder_round_trip_and_refusals(tmp_path):
    torch.manual_seed(0)
    model = RelightModel(micro_model_config())
    model.save_pretrained(tmp_path / "m")
    again = RelightModel.from_pretrained(tmp_path / "m")
    for (n, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), n
    # corrupt weights: refused, naming the file; nothing is unpickled (safetensors only)
    (tmp_path / "m" / "encoders.safetensors").write_bytes(b"\x80\x04garbage that is not a safetensors header")
    with pytest.raises(InputError, match="encoders.safetensors: not a valid safetensors file"):
        RelightModel.from_pretrained(tmp_path / "m")
    # weights of another architecture: refused, naming the file
    other = RelightModel(ModelConfig(image_size=32, unet=micro_model_config().unet,
                                     lighting=EncoderConfig(widths=(8, 8)),
                                     panorama=micro_model_config().panorama))
    other.save_pretrained(tmp_path / "other")
    (tmp_path / "m" / "encoders.safetensors").write_bytes((tmp_path / "other" / "encoders.safetensors").read_bytes())
    with pytest.raises(InputError, match="encoders.safetensors: weights do not fit the architecture"):
        RelightModel.from_pretrained(tmp_path / "m")
    (tmp_path / "m" / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"junk")
    with pytest.raises(InputError, match="unet: cannot load the UNet"):
        RelightModel.from_pretrained(tmp_path / "m")
    with pytest.raises(InputError, match="model folder not found"):
        RelightModel.from_pretrained(tmp_path / "missing")


def test_residual_model_predicts_the_composite_plus_the_unet_edit(rendered_pairs, tmp_path):
    import dataclasses

    from relightful.training import TrainConfig
    from relightful.training.loop import train_stage

    config = dataclasses.replace(micro_model_config(), residual=True)
    model = RelightModel(config)
    torch.nn.init.zeros_(model.unet.conv_out.weight)
    torch.nn.init.zeros_(model.unet.conv_out.bias)
    z = torch.randn(2, model.codec.channels, 16, 16)
    composite = torch.randn_like(z)
    assert torch.equal(model.denoise(z, torch.tensor([1, 999]), composite, z[:, :1], None), composite)
    with pytest.raises(ValueError, match="train it with prediction_type 'sample'"):
        train_stage(1, rendered_pairs, tmp_path / "m", tmp_path / "run", TrainConfig(steps=1), config,
                    cache_dir=tmp_path / "cache", progress=False)

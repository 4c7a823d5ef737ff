"""Small data made on the fly: tests never need the network, the starter set or a real light stage."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RELIGHTFUL_TRACKING", "0")  # jobs run by tests track only when a test asks (--track)

from relightful.io import write_hdr  # noqa: E402
from relightful.lighting import LedRig, latlong_directions  # noqa: E402
from relightful.lightstage import make_default_rig, write_olat_set  # noqa: E402


def sun_sky(height: int, sun_dir, sun_radiance: float = 2000.0, sky=(0.3, 0.4, 0.6), seed: int = 0) -> np.ndarray:
    """A sky gradient with a small bright sun and a little noise: a realistic-looking test map."""
    d = latlong_directions(height).astype(np.float64)
    sun = np.asarray(sun_dir, dtype=np.float64)
    sun /= np.linalg.norm(sun)
    up = np.clip(d[..., 1], 0, 1)[..., None]
    env = np.asarray(sky) * (0.3 + up) + 0.05
    env = env * np.where(d[..., 1:2] < 0, 0.3, 1.0)
    env = env + sun_radiance * (d @ sun > np.cos(np.radians(4.0)))[..., None] * np.array([1.0, 0.95, 0.85])
    env *= 1 + 0.05 * np.random.default_rng(seed).standard_normal(env.shape[:2])[..., None] ** 2
    return env.astype(np.float32)


def sphere_olat(rig: LedRig, size: int, albedo=(0.6, 0.45, 0.35), radius: float = 0.8):
    """OLAT stack (N, S, S, 3) and matte of a Lambertian sphere seen orthographically along −z."""
    c = (np.arange(size) + 0.5) / size * 2 - 1
    x, y = np.meshgrid(c, -c)
    r2 = (x**2 + y**2) / radius**2
    matte = (r2 <= 1.0).astype(np.float32)
    nz = np.sqrt(np.clip(1 - r2, 0, 1))
    normals = np.stack([x / radius, y / radius, nz], axis=-1) * matte[..., None]
    cos = np.clip(np.einsum("hwc,nc->nhw", normals, rig.directions), 0, None)
    olat = (np.asarray(albedo) / np.pi)[None, None, None, :] * cos[..., None] * matte[None, ..., None]
    return olat.astype(np.float32), matte


@pytest.fixture(scope="session")
def small_rig() -> LedRig:
    return make_default_rig(n_leds=48, sigma_deg=14.0, name="test-rig")


def make_maps(folder: Path, n: int, height: int = 16, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        az = rng.uniform(-np.pi, np.pi)
        el = rng.uniform(0.1, 1.2)
        sun = (np.cos(el) * np.sin(az), np.sin(el), -np.cos(el) * np.cos(az))
        path = folder / f"map-{i:02d}.exr"
        write_hdr(path, sun_sky(height, sun, sun_radiance=float(rng.uniform(200, 3000)), seed=i))
        paths.append(path)
    return paths


def make_subjects(folder: Path, rig: LedRig, n: int, size: int = 24) -> list[Path]:
    dirs = []
    for i in range(n):
        olat, matte = sphere_olat(rig, size, albedo=(0.3 + 0.1 * i, 0.4, 0.5 - 0.05 * i), radius=0.6 + 0.05 * i)
        write_olat_set(folder / f"subj-{i:02d}", olat, matte, rig)
        dirs.append(folder / f"subj-{i:02d}")
    return dirs


@pytest.fixture
def workspace(tmp_path: Path, small_rig: LedRig) -> dict[str, Path]:
    """A tiny raw data set: 12 maps, 5 sphere subjects, the rig."""
    hdri, stage = tmp_path / "raw" / "hdri", tmp_path / "raw" / "lightstage"
    make_maps(hdri, 12)
    make_subjects(stage / "subjects", small_rig, 5)
    small_rig.to_json(stage / "rig.json")
    return {"root": tmp_path, "hdri": hdri, "subjects": stage / "subjects", "rig": stage / "rig.json",
            "envmaps": tmp_path / "envmaps", "pairs": tmp_path / "pairs"}


@pytest.fixture(scope="session")
def rendered_pairs(tmp_path_factory, small_rig) -> Path:
    """A small rendered pair set (32×32 pairs of 6 sphere subjects under 12 maps) shared by the model tests."""
    from relightful.data.ingest_hdr import IngestConfig, ingest_hdr
    from relightful.data.pair_plan import PlanConfig
    from relightful.data.render_pairs import RenderConfig, render_pairs

    root = tmp_path_factory.mktemp("pairs-ws")
    make_maps(root / "hdri", 12)
    make_subjects(root / "subjects", small_rig, 6, size=32)
    ingest_hdr(root / "hdri", root / "envmaps", small_rig, IngestConfig(height=16), progress=False)
    config = RenderConfig(size=32, weights_height=8, panorama_height=8,
                          plan=PlanConfig(pairs_per_subject=16, pairs_per_shard=16,
                                          split_fractions={"train": 0.67, "val": 0.17, "test": 0.16}, seed=1))
    render_pairs(root / "subjects", small_rig, root / "envmaps", root / "pairs", config, progress=False)
    return root / "pairs"


@pytest.fixture(scope="module")
def micro_harmonizer(tmp_path_factory):
    """A `Harmonizer` on an untrained micro model (seed 0): what the serving tests need is a model, not a good one."""
    import torch

    from relightful.models import RelightModel
    from relightful.models.harmonizer import Harmonizer

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("micro-harmonizer") / "model"
    RelightModel(micro_model_config(32)).save_pretrained(folder)
    return Harmonizer.from_pretrained(folder)


def micro_model_config(image_size: int = 32):
    """A model small enough to train for a few steps in a test (same code path as the real one)."""
    from relightful.models import CodecConfig, EncoderConfig, ModelConfig, PanoramaConfig, UNetConfig

    return ModelConfig(
        image_size=image_size, codec=CodecConfig(factor=2),
        unet=UNetConfig(block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                        attention_head_dim=8, norm_num_groups=8),
        lighting=EncoderConfig(widths=(16, 32)), panorama=PanoramaConfig(widths=(16, 32), code_dim=32, grid=2, trunk=8))

"""render-pairs: the training tuples of DESIGN 3.4, deterministic, shardable, split-disjoint."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from relightful.cli import main
from relightful.data.ingest_hdr import IngestConfig, ingest_hdr, load_map
from relightful.data.pair_plan import PlanConfig
from relightful.data.render_pairs import RenderConfig, merge_parts, render_pairs
from relightful.io import load_tensors, read_metadata
from relightful.lighting import envmap_to_led_weights, perspective_crop, relight, rotate_envmap
from relightful.lightstage import load_olat_set

CONFIG = RenderConfig(size=24, weights_height=8, panorama_height=8,
                      plan=PlanConfig(pairs_per_subject=6, pairs_per_shard=4, seed=3))


@pytest.fixture
def ingested(workspace, small_rig):
    ingest_hdr(workspace["hdri"], workspace["envmaps"], small_rig, IngestConfig(height=16), progress=False)
    return workspace


def _render(ws, rig, out, **kw):
    return render_pairs(ws["subjects"], rig, ws["envmaps"], out, CONFIG, progress=False, **kw)


def test_manifest_and_shards(ingested, small_rig):
    manifest = _render(ingested, small_rig, ingested["pairs"])
    assert len(manifest) == 5 * 6 and manifest.pair_id.is_unique
    for split in ("train", "val", "test"):
        assert (manifest.split == split).any()
    # subjects and maps never cross splits
    assert manifest.groupby("subject_id").split.nunique().max() == 1
    maps = pd.concat([manifest[["env_a", "split"]].rename(columns={"env_a": "m"}),
                      manifest[["env_b", "split"]].rename(columns={"env_b": "m"})])
    assert maps.groupby("m").split.nunique().max() == 1
    assert (manifest.env_a != manifest.env_b).all()
    assert manifest.rotation_a_deg.between(0, 360, inclusive="left").all()
    assert manifest.fov_deg.between(*CONFIG.plan.fov_range).all()
    np.testing.assert_allclose(manifest.fg_max, 1.0, rtol=1e-5)
    shard = load_tensors(ingested["pairs"] / manifest.shard.iloc[0])
    assert shard["x_a"].shape == (4, 3, 24, 24) and shard["x_a"].dtype == torch.float16
    assert shard["matte"].shape == (4, 1, 24, 24) and shard["w_a"].shape == (4, small_rig.n_leds, 3)
    assert read_metadata(ingested["pairs"] / manifest.shard.iloc[0])["pair_ids"].split(",") == list(
        manifest[manifest.shard == manifest.shard.iloc[0]].pair_id)


def test_pair_content_matches_the_physics(ingested, small_rig):
    """x_a, x_b are the subject relit by the rotated maps; y_b the crop of the rotated map b; one scale for all."""
    manifest = _render(ingested, small_rig, ingested["pairs"])
    row = manifest.iloc[5]
    shard = load_tensors(ingested["pairs"] / row.shard)
    i = int(row["index"])
    olat, matte = load_olat_set(ingested["subjects"] / row.subject_id, small_rig)
    env_a = load_map(ingested["envmaps"] / "maps" / f"{row.env_a}.safetensors").envmap
    env_b = load_map(ingested["envmaps"] / "maps" / f"{row.env_b}.safetensors").envmap
    from relightful.lighting import resize_envmap

    def weights(env, deg, stops):
        return envmap_to_led_weights(rotate_envmap(resize_envmap(env, 8), deg), small_rig) * 2.0**stops

    w_a = weights(env_a, row.rotation_a_deg, row.exposure_a_stops)
    np.testing.assert_allclose(shard["w_a"][i].numpy(), w_a, rtol=1e-4, atol=1e-6)
    x_a = relight(olat, w_a) * row.scale
    np.testing.assert_allclose(shard["x_a"][i].permute(1, 2, 0).float().numpy(), x_a, rtol=2e-3, atol=2e-4)
    x_b = relight(olat, weights(env_b, row.rotation_b_deg, row.exposure_b_stops)) * row.scale
    np.testing.assert_allclose(shard["x_b"][i].permute(1, 2, 0).float().numpy(), x_b, rtol=2e-3, atol=2e-4)
    inside = matte > 0.5
    assert max(x_a[inside].max(), x_b[inside].max()) == pytest.approx(1.0, rel=1e-4)
    # the background: a crop of map b as rotated (rotating first, then cropping at yaw 0)
    y_b = perspective_crop(rotate_envmap(env_b, row.rotation_b_deg), row.fov_deg, 0.0, row.pitch_deg, (24, 24))
    y_b = y_b * row.scale * 2.0**row.exposure_b_stops
    got = shard["y_b"][i].permute(1, 2, 0).float().numpy()
    assert np.median(np.abs(got - y_b) / (y_b + 1e-3)) < 0.05
    np.testing.assert_allclose(shard["matte"][i, 0].float().numpy(), matte, atol=1e-3)


def test_deterministic_and_two_shards_equal_one_shot(ingested, small_rig):
    one = _render(ingested, small_rig, ingested["root"] / "one")
    again = _render(ingested, small_rig, ingested["root"] / "again")
    pd.testing.assert_frame_equal(one, again)
    sharded = ingested["root"] / "sharded"
    for k in range(2):
        _render(ingested, small_rig, sharded, shard_index=k, num_shards=2)
    merged = merge_parts(ingested["subjects"], small_rig, ingested["envmaps"], sharded, CONFIG, num_shards=2)
    pd.testing.assert_frame_equal(merged, one)
    names = sorted(p.name for p in (ingested["root"] / "one").iterdir())
    assert names == sorted(p.name for p in sharded.iterdir())
    for name in names:
        if name.endswith(".safetensors"):
            assert (sharded / name).read_bytes() == (ingested["root"] / "one" / name).read_bytes(), name


def test_merge_refuses_missing_parts(ingested, small_rig):
    out = ingested["root"] / "partial"
    _render(ingested, small_rig, out, shard_index=0, num_shards=3)
    from relightful.io import InputError

    with pytest.raises(InputError, match="missing manifest parts"):
        merge_parts(ingested["subjects"], small_rig, ingested["envmaps"], out, CONFIG, num_shards=3)
    assert not (out / "manifest.parquet").exists()


def test_bad_subject_is_skipped_and_reported(ingested, small_rig):
    (ingested["subjects"] / "subj-01" / "matte.png").unlink()
    args = ["render-pairs", "--subjects", str(ingested["subjects"]), "--rig", str(ingested["rig"]),
            "--envmaps", str(ingested["envmaps"]), "--out", str(ingested["pairs"]), "--quiet",
            "--set", "size=24", "--set", "weights_height=8", "--set", "panorama_height=8",
            "--set", "plan.pairs_per_subject=6", "--set", "plan.pairs_per_shard=4"]
    assert main(args) == 1
    manifest = pd.read_parquet(ingested["pairs"] / "manifest.parquet")
    assert "subj-01" not in set(manifest.subject_id) and manifest.subject_id.nunique() == 4
    assert main(args + ["--max-rejected", "1"]) == 0


def test_per_split_pair_counts_and_split_floors(ingested, small_rig):
    """`plan.pairs_per_subject` per split and `plan.min_subjects` / `min_maps` floors, through the CLI's --set."""
    args = ["render-pairs", "--subjects", str(ingested["subjects"]), "--rig", str(ingested["rig"]),
            "--envmaps", str(ingested["envmaps"]), "--out", str(ingested["pairs"]), "--quiet",
            "--set", "size=16", "--set", "weights_height=8", "--set", "panorama_height=8",
            "--set", "plan.pairs_per_subject={train: 5, val: 2, test: 3}", "--set", "plan.pairs_per_shard=4",
            "--set", "plan.min_subjects={test: 2}", "--set", "plan.min_maps={test: 3}"]
    assert main(args) == 0
    manifest = pd.read_parquet(ingested["pairs"] / "manifest.parquet")
    subjects = manifest.groupby("split").subject_id.nunique().to_dict()
    assert subjects == {"train": 2, "val": 1, "test": 2}  # 5 subjects: test lifted from 0.1·5 to 2
    assert manifest.groupby("split").size().to_dict() == {"train": 10, "val": 2, "test": 6}
    test_maps = set(manifest.env_a[manifest.split == "test"]) | set(manifest.env_b[manifest.split == "test"])
    assert 2 <= len(test_maps) <= 3 and not test_maps & set(manifest.env_a[manifest.split != "test"])
    assert manifest.groupby("shard").split.nunique().max() == 1


def test_panorama_store_gives_z_b(ingested, small_rig):
    manifest = _render(ingested, small_rig, ingested["pairs"])
    store = load_tensors(ingested["pairs"] / "envmaps.safetensors")
    assert set(store) == set(manifest.env_a) | set(manifest.env_b)
    row = manifest.iloc[0]
    z_b = rotate_envmap(store[row.env_b].float(), row.rotation_b_deg)
    assert z_b.shape == (8, 16, 3)


def test_only_the_matte_is_relit_and_the_rest_is_zero(tmp_path, small_rig):
    """A capture with a lit backdrop outside the matte: relight_pairs renders the matte's pixels exactly (scaled so
    the subject's maximum is 1) and writes 0 where the composite never looks."""
    from conftest import sphere_olat

    from relightful.data.pair_relighting import prepare_subject, relight_pairs
    from relightful.lightstage import write_olat_set

    olat, matte = sphere_olat(small_rig, 24)
    olat = olat + 0.3 * (1 - matte)[None, ..., None]  # the stage's backdrop, lit by every LED
    write_olat_set(tmp_path / "s", olat.astype(np.float32), matte, small_rig)
    subject = prepare_subject(tmp_path / "s", small_rig, 24)
    rng = np.random.default_rng(0)
    w = torch.from_numpy(rng.uniform(0, 1, size=(2, 2, small_rig.n_leds, 3))).float()
    x_a = torch.empty(2, 3, 24, 24, dtype=torch.float16)
    x_b = torch.empty_like(x_a)
    fg_max = relight_pairs(subject, w[0], w[1], x_a, x_b)
    loaded, _ = load_olat_set(tmp_path / "s", small_rig)
    inside = torch.from_numpy(matte > 0)
    for i in range(2):
        full_a = torch.from_numpy(relight(loaded, w[0, i].numpy())).permute(2, 0, 1)
        full_b = torch.from_numpy(relight(loaded, w[1, i].numpy())).permute(2, 0, 1)
        assert fg_max[i] == pytest.approx(float(torch.maximum(full_a[:, inside], full_b[:, inside]).max()), rel=1e-5)
        np.testing.assert_allclose(x_a[i][:, inside].float().numpy(), (full_a[:, inside] / fg_max[i]).numpy(),
                                   rtol=2e-3, atol=1e-4)
        assert x_a[i][:, ~inside].abs().max() == 0 and x_b[i][:, ~inside].abs().max() == 0

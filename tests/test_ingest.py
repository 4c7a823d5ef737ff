"""ingest-hdr: good maps are all written, bad ones are listed with their reason, the exit status says so."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from conftest import sun_sky
from relightful.cli import main
from relightful.data.ingest_hdr import IngestConfig, ingest_hdr, load_map
from relightful.io import write_hdr
from relightful.lighting import envmap_to_led_weights, latlong_solid_angles


def _add_bad_files(folder):
    import cv2

    good = folder / "map-00.exr"
    data = good.read_bytes()
    (folder / "cut.exr").write_bytes(data[: len(data) // 3])
    nan = sun_sky(16, (0, 1, 0))
    nan[2, 3] = np.nan
    ok, buf = cv2.imencode(".exr", nan[..., ::-1].copy(), [cv2.IMWRITE_EXR_TYPE, cv2.IMWRITE_EXR_TYPE_FLOAT])
    (folder / "nan.exr").write_bytes(buf.tobytes())
    write_hdr(folder / "wide.exr", np.ones((16, 48, 3), np.float32))


def test_ingest_keeps_good_maps_and_lists_bad_ones(workspace, small_rig):
    _add_bad_files(workspace["hdri"])
    manifest = ingest_hdr(workspace["hdri"], workspace["envmaps"], small_rig, IngestConfig(height=8), progress=False)
    rejected = manifest.set_index("map_id").loc[["cut", "nan", "wide"]]
    assert (rejected.status == "rejected").all()
    assert "truncated" in rejected.reason["cut"] and "NaN" in rejected.reason["nan"]
    assert "3:1" in rejected.reason["wide"]
    ok = manifest[manifest.status == "ok"]
    assert len(ok) == 12
    written = sorted(p.stem for p in (workspace["envmaps"] / "maps").iterdir())
    assert written == sorted(ok.map_id)
    assert not [p for p in workspace["envmaps"].rglob("*") if ".tmp" in p.name]
    report = json.loads((workspace["envmaps"] / "report.json").read_text())
    assert report["n_rejected"] == 3 and {r["file"].split("/")[-1] for r in report["rejected"]} == {
        "cut.exr", "nan.exr", "wide.exr"}
    assert pd.read_parquet(workspace["envmaps"] / "manifest.parquet").shape[0] == 15


def test_ingested_map_is_resampled_normalised_and_weights_conserve_energy(workspace, small_rig):
    manifest = ingest_hdr(workspace["hdri"], workspace["envmaps"], small_rig, IngestConfig(height=8), progress=False)
    np.testing.assert_allclose(manifest.mean_radiance, 1.0, rtol=1e-5)
    assert manifest.exposure.nunique() == len(manifest)
    item = load_map(workspace["envmaps"] / "maps" / "map-03.safetensors")
    assert item.envmap.shape == (8, 16, 3)
    np.testing.assert_allclose(item.weights, envmap_to_led_weights(item.envmap, small_rig))
    integral = (item.envmap * latlong_solid_angles(8)[..., None]).sum(axis=(0, 1))
    np.testing.assert_allclose(item.weights.sum(axis=0), integral, rtol=1e-4)


def test_cli_exit_status_and_allowance(workspace):
    _add_bad_files(workspace["hdri"])
    args = ["ingest-hdr", "--input", str(workspace["hdri"]), "--output", str(workspace["envmaps"]),
            "--rig", str(workspace["rig"]), "--set", "height=8", "--quiet"]
    assert main(args) == 1
    assert main(args + ["--max-rejected", "3"]) == 0


def test_downsampling_preserves_integral():
    from relightful.lighting import resize_envmap

    env = sun_sky(64, (0.3, 0.5, -0.8), sun_radiance=500.0)
    small = resize_envmap(env, 16)
    integral = lambda e: (e * latlong_solid_angles(e.shape[0])[..., None]).sum(axis=(0, 1))  # noqa: E731
    np.testing.assert_allclose(integral(small), integral(env), rtol=5e-3)


@pytest.mark.parametrize("bad", ["missing"])
def test_missing_input_folder(tmp_path, small_rig, bad):
    from relightful.io import InputError

    with pytest.raises(InputError, match="input folder not found"):
        ingest_hdr(tmp_path / bad, tmp_path / "out", small_rig, IngestConfig(), progress=False)

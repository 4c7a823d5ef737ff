"""The starter set of HDR environment maps: real maps from three packages plus procedural clear skies.

Sources (DESIGN 5):
- ``pmndrs``: the npm package ``@pmndrs/assets`` (pinned version below), 18 Poly Haven maps, 512×256 DWAB EXR stored
  base64 in ``hdri/*.exr.js``; fetched with ``npm pack``.
- ``blender``: Debian's ``blender-data``, 8 Poly Haven maps, 1024×512 DWAB EXR in
  ``datafiles/studiolights/world/``; fetched with ``apt-get download`` (the version the host's apt lists offer), read
  with ``dpkg-deb --fsys-tarfile`` (nothing is installed or unpacked to disk).
- ``open3d``: the PyPI wheel ``open3d-cpu`` (pinned version, platform and sha256 below), 9 HDR skyboxes
  (``open3d/resources/<name>_skybox.ktx``: KTX 1 cube maps, 6 faces of 256², packed floats GL_R11F_G11F_B10F, made by
  Filament's cmgen), converted to 512×256 lat-long maps (`relightful.io.ktx`, `relightful.lighting.cubemap`); fetched
  with ``pip download``, read from the wheel (a zip) in memory, never installed. The wheel is MIT-licensed; where the
  panoramas come from is not documented, so their licence is recorded as unknown (`OPEN3D_LICENSE`). Suns are kept
  (peaks up to 6.5·10⁴; the sun cores of ``crossroads`` and ``park`` touch the packer's ceiling of 64,512 in a few
  texels). ``default_skybox.ktx`` is a smooth grey gradient (peak 0.9), not a captured scene, and is left out. No
  profile uses them: training-only in the tiny profile they made the background's lighting estimator worse on val
  (docs/model.md); a profile adds them like ``sky_train`` (`render_pairs.plan.train_only_sources`).
- ``sky``: procedural skies of `relightful.lighting.sky` drawn from a seed (clear, scattered clouds or overcast, sun
  high or low, clear or hazy air, grounds of several colours): cheap (about 25 ms each at H = 128), so the tiny
  profile draws enough of them that training keeps many maps after val and test take theirs.
- ``sky_train``: more procedural skies (``sky_train-000``...), drawn from their own seed stream (never the same sky as
  a ``sky`` map). They exist to widen the lighting training sees: render-pairs' ``plan.train_only_sources`` keeps
  them out of val and test, so adding them moves no held-out map and keeps every earlier score comparable.

One Blender map is the same Poly Haven map as a pmndrs one (``sunrise``: correlation 0.99 of the log maps at zero
rotation; the others are below 0.85): when both sources are written it is left out, so that a map never sits in two
splits under two names (`BLENDER_DUPLICATES`). No open3d map is a pmndrs or Blender map: the highest correlation is
0.78 at zero rotation and 0.87 over every rotation and mirror (``konzerthaus`` and ``pmndrs-city``, two overcast
Berlin squares). `starter_map_ids` lists the ids a configuration writes without fetching or rendering anything (the
pair plan of a profile can be computed from it).

The open3d cube maps' orientation was checked on the 9 real files. Faces follow OpenGL's face table as cmgen writes
them, sampled at the lat-long directions as they are (`relightful.lighting.cubemap`): every face seam is continuous
(`seam_jumps` at most 1.57, median 0.9; turning, flipping or swapping any one face puts at least one seam of the 9
maps above 16), the sky is up (the upper hemisphere is brighter in every map, 1.04× to 23×; the brightest texel is
above the horizon in all 9) and nothing is mirrored: in ``nightlights`` (Shanghai's Bund at night) the Oriental Pearl
Tower stands left of the Lujiazui towers seen across the river, and in ``konzerthaus`` (Berlin's Gendarmenmarkt, the
Konzerthaus behind the camera) the French Cathedral is on the left with its church to its left, the German Cathedral
on the right with its domed church to its right, as on the square.

Downloads go through those package clients into a cache folder (``$RELIGHTFUL_STARTER_CACHE``, else
``$XDG_CACHE_HOME/relightful/starter``, else ``~/.cache/relightful/starter``); a cached package is never fetched again.
DWAB compression rings around bright suns and leaves negative radiance (in @pmndrs/assets up to −3894 next to a sun of
~3·10⁴, up to 11 % of a map's energy; the files themselves hold it, OpenEXR 3.5 decodes the same values): it is clipped
to 0 per channel, and the count and the clipped energy fraction are recorded so that users can filter maps. Some
pmndrs suns are damaged beyond clipping (``park``: the sun core keeps only its blue channel); Debian's maps are clean.
Every map is written atomically as 32-bit float ``.exr`` and listed in ``SOURCES.json`` (source package and version,
original file, licence, sha256 of the written file, size, peak value). Network access happens only in `fetch_pmndrs`,
`fetch_blender_data` and `fetch_open3d`; everything else is pure or local.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import relightful  # noqa: F401  (sets OPENCV_IO_ENABLE_OPENEXR before cv2 is imported)
import cv2
import numpy as np
from tqdm.auto import tqdm

from relightful.io import InputError, atomic_write_text, check_pixels, write_hdr
from relightful.io.digest import sha256_file
from relightful.io.ktx import read_ktx_cubemap
from relightful.lighting.cubemap import cubemap_to_latlong
from relightful.lighting.envmap import latlong_solid_angles
from relightful.lighting.sky import random_sky_params, sky_envmap

PMNDRS_PACKAGE = "@pmndrs/assets"
PMNDRS_VERSION = "1.7.0"
BLENDER_PACKAGE = "blender-data"
SOURCES_FILE = "SOURCES.json"
DEFAULT_OUT_DIR = Path("data/raw/hdri")
DEFAULT_SOURCES = ("pmndrs", "blender", "sky")
KNOWN_SOURCES = (*DEFAULT_SOURCES, "sky_train", "open3d")
SKY_STREAMS = {"sky": None, "sky_train": 1}  # a sky source's seed stream: None = the seed itself (the first skies)
POLY_HAVEN = "Poly Haven (polyhaven.com, formerly HDRI Haven), CC0-1.0"
CLIENT_TIMEOUT_S = 900
# The maps of the pinned @pmndrs/assets and of Debian's blender-data (the same 8 names since Blender 2.80).
PMNDRS_MAPS = ("apartment", "bridge", "city", "dawn", "esplanade", "forest", "hall", "lab", "lobby", "night", "park",
               "sky", "studio", "sunrise", "sunset", "venice", "warehouse", "workshop")
BLENDER_MAPS = ("city", "courtyard", "forest", "interior", "night", "studio", "sunrise", "sunset")
BLENDER_DUPLICATES = {"sunrise": "pmndrs-sunrise"}  # blender map -> the pmndrs map it duplicates
# The open3d-cpu wheel: version, platform and Python pinned so that every machine fetches this very file.
OPEN3D_PACKAGE = "open3d-cpu"
OPEN3D_VERSION = "0.20.0"
OPEN3D_PLATFORM = "manylinux_2_35_x86_64"
OPEN3D_PYTHON = "3.11"
OPEN3D_WHEEL = f"open3d_cpu-{OPEN3D_VERSION}-cp311-cp311-{OPEN3D_PLATFORM}.whl"
OPEN3D_SHA256 = "5b7b6ecd566e12fc7d55b1de476b5b35461deb632b40216ad52894cf402aed90"  # PyPI's digest of OPEN3D_WHEEL
OPEN3D_LICENSE = "unknown origin (not documented by Open3D); shipped in the open3d-cpu wheel, which is MIT-licensed"
OPEN3D_MAPS = ("brightday", "crossroads", "hall", "konzerthaus", "nightlights", "park", "park2", "pillars",
               "streetlamp")
OPEN3D_NOT_CAPTURED = ("default",)  # a smooth gradient, not a scene (module doc)
OPEN3D_HEIGHT = 256
OPEN3D_SUPERSAMPLE = 4  # lookups per pixel side: the maps' energy within 0.3 % of the cube maps', suns included
PIP_COMMAND = (sys.executable, "-m", "pip")

_PMNDRS_MEMBER = re.compile(r"(?:^|/)hdri/([A-Za-z0-9_.-]+)\.exr\.js$")
_BLENDER_MEMBER = re.compile(r"datafiles/studiolights/world/([A-Za-z0-9_.-]+)\.exr$")
_OPEN3D_MEMBER = re.compile(r"^open3d/resources/([A-Za-z0-9_.-]+)_skybox\.ktx$")
_WHEEL_METADATA = re.compile(r"^[^/]+\.dist-info/METADATA$")
_DATA_URL = re.compile(rb"data:[^;,'\"]*;base64,([A-Za-z0-9+/=\s]+)")


@dataclasses.dataclass(frozen=True)
class StarterConfig:
    """The `starter_data` block of params.yaml."""

    sources: tuple[str, ...] = DEFAULT_SOURCES
    n_skies: int = 32
    n_train_skies: int = 0  # skies of the `sky_train` source (training-only maps, see the module doc)
    sky_height: int = 256
    seed: int = 0


class StarterDataError(RuntimeError):
    """A package client or a source of the starter set failed; the message names which and why."""


@dataclasses.dataclass(frozen=True)
class RawMap:
    """One decoded map from a package, before cleaning: `name` is the stable short name, `original` its member path."""

    name: str
    original: str
    image: np.ndarray


def default_cache_dir() -> Path:
    """Where downloaded packages are kept between runs."""
    if os.environ.get("RELIGHTFUL_STARTER_CACHE"):
        return Path(os.environ["RELIGHTFUL_STARTER_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "relightful" / "starter"


# ---------------------------------------------------------------- decoding (pure)

def decode_exr_bytes(data: bytes, name: str = "<exr>") -> np.ndarray:
    """Decode an in-memory EXR into float32 RGB (H, W, 3), negatives kept; `InputError(name, ...)` if unusable or
    over the HDR pixel limit (read from its header, before decoding)."""
    if data:
        check_pixels(data, None, name)
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED) if data else None
    if image is None:
        raise InputError(name, "cannot decode EXR data (corrupt, or OpenCV without OpenEXR: needs "
                               "opencv-python-headless<5 and OPENCV_IO_ENABLE_OPENEXR=1 before cv2 is imported)")
    if not np.issubdtype(image.dtype, np.floating):
        raise InputError(name, f"EXR decoded as {image.dtype}, expected floating-point radiance")
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    elif image.shape[2] in (3, 4):
        image = image[..., 2::-1]  # BGR(A) -> RGB
    else:
        raise InputError(name, f"unexpected channel count {image.shape[2]}")
    rgb = np.ascontiguousarray(image, dtype=np.float32)
    if rgb.shape[1] != 2 * rgb.shape[0]:
        raise InputError(name, f"not a 2:1 lat-long map (size {rgb.shape[1]}x{rgb.shape[0]})")
    if not np.isfinite(rgb).all():
        raise InputError(name, "contains NaN or infinite values")
    return rgb


def decode_exr_js(module: str | bytes, name: str = "<exr.js>") -> np.ndarray:
    """Decode a JavaScript module whose default export is a base64 ``data:`` URL of an EXR (``*.exr.js``)."""
    text = module.encode("utf-8") if isinstance(module, str) else module
    match = _DATA_URL.search(text)
    if match is None:
        raise InputError(name, "no base64 data: URL found in the module")
    try:
        payload = base64.b64decode(re.sub(rb"\s+", b"", match.group(1)), validate=True)
    except (binascii.Error, ValueError) as err:
        raise InputError(name, f"invalid base64 payload ({err})") from err
    return decode_exr_bytes(payload, name)


def clip_negatives(image: np.ndarray) -> tuple[np.ndarray, int]:
    """Clip negative radiance (DWAB ringing) to 0; returns the clipped float32 image and how many values were < 0."""
    count = int((image < 0).sum())
    return np.maximum(image, 0.0).astype(np.float32, copy=False), count


def negative_energy_fraction(image: np.ndarray) -> float:
    """∫ max(−L, 0) dω / ∫ max(L, 0) dω over all channels of a lat-long map: how much clipping adds, relatively."""
    omega = latlong_solid_angles(image.shape[0]).astype(np.float64)[..., None]
    positive = float((np.maximum(image, 0.0) * omega).sum())
    return float((np.maximum(-image, 0.0) * omega).sum()) / max(positive, 1e-30)


def read_pmndrs_maps(tgz: str | Path) -> tuple[str, list[RawMap]]:
    """(package version, maps) from an ``npm pack`` tarball of @pmndrs/assets, read in memory."""
    tgz = Path(tgz)
    try:
        with tarfile.open(tgz, "r:*") as tar:
            version = "unknown"
            maps = []
            for member in tar:
                if not member.isfile():
                    continue
                if member.name.endswith("package/package.json") or member.name == "package.json":
                    version = str(json.loads(tar.extractfile(member).read()).get("version", "unknown"))
                elif match := _PMNDRS_MEMBER.search(member.name):
                    text = tar.extractfile(member).read()
                    maps.append(RawMap(match.group(1), member.name, decode_exr_js(text, f"{tgz}:{member.name}")))
    except (tarfile.TarError, OSError, json.JSONDecodeError) as err:
        raise InputError(tgz, f"not a readable npm tarball ({err})") from err
    if not maps:
        raise InputError(tgz, "no hdri/*.exr.js maps in the package")
    return version, sorted(maps, key=lambda m: m.name)


def read_blender_maps(deb: str | Path) -> tuple[str, list[RawMap]]:
    """(package version, maps) from a ``blender-data`` .deb, streamed through ``dpkg-deb --fsys-tarfile``."""
    deb = Path(deb)
    dpkg = _require_tool("dpkg-deb", "reading the blender-data .deb")
    version = _run([dpkg, "-f", str(deb), "Version"], f"dpkg-deb -f {deb} Version").strip() or "unknown"
    maps = []
    with subprocess.Popen([dpkg, "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        try:
            with tarfile.open(fileobj=proc.stdout, mode="r|*") as tar:
                for member in tar:
                    match = _BLENDER_MEMBER.search(member.name)
                    if match and member.isfile():
                        data = tar.extractfile(member).read()
                        maps.append(RawMap(match.group(1), member.name.lstrip("./"),
                                           decode_exr_bytes(data, f"{deb}:{member.name}")))
        except tarfile.TarError as err:
            raise InputError(deb, f"cannot read the package's file tree ({err})") from err
        finally:
            proc.stdout.close()
            stderr = proc.stderr.read().decode(errors="replace")
    if proc.returncode:
        raise StarterDataError(f"`dpkg-deb --fsys-tarfile {deb}` failed (exit {proc.returncode}): "
                               f"{stderr.strip()[-500:]}")
    if not maps:
        raise InputError(deb, "no datafiles/studiolights/world/*.exr maps in the package")
    return version, sorted(maps, key=lambda m: m.name)


def _wheel_version(wheel: zipfile.ZipFile) -> str:
    """The ``Version:`` of a wheel's METADATA, or "unknown"."""
    for name in wheel.namelist():
        if _WHEEL_METADATA.match(name):
            for line in wheel.read(name).decode("utf-8", errors="replace").splitlines():
                if line.startswith("Version:"):
                    return line.split(":", 1)[1].strip()
    return "unknown"


def read_open3d_maps(whl: str | Path, height: int = OPEN3D_HEIGHT) -> tuple[str, list[RawMap]]:
    """(package version, maps) from an open3d-cpu wheel: its ``*_skybox.ktx`` cube maps (not the prefiltered
    ``*_ibl.ktx``, nor the gradients of `OPEN3D_NOT_CAPTURED`) as lat-long maps of `height`, read in memory."""
    whl = Path(whl)
    maps = []
    try:
        with zipfile.ZipFile(whl) as wheel:
            version = _wheel_version(wheel)
            for member in wheel.namelist():
                match = _OPEN3D_MEMBER.match(member)
                if match and match.group(1) not in OPEN3D_NOT_CAPTURED:
                    faces = read_ktx_cubemap(wheel.read(member), f"{whl}:{member}")
                    maps.append(RawMap(match.group(1), member,
                                       cubemap_to_latlong(faces, height, OPEN3D_SUPERSAMPLE)))
    except (zipfile.BadZipFile, OSError) as err:
        raise InputError(whl, f"not a readable wheel ({err})") from err
    if not maps:
        raise InputError(whl, "no open3d/resources/*_skybox.ktx maps in the wheel")
    return version, sorted(maps, key=lambda m: m.name)


# ---------------------------------------------------------------- package clients (network)

def _require_tool(tool: str, purpose: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise StarterDataError(f"`{tool}` is not on PATH; it is needed for {purpose}")
    return path


def _run(cmd: list[str], what: str, cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=CLIENT_TIMEOUT_S)
    except subprocess.TimeoutExpired as err:
        raise StarterDataError(f"`{what}` timed out after {CLIENT_TIMEOUT_S} s") from err
    except OSError as err:
        raise StarterDataError(f"`{what}` could not start ({err})") from err
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip()[-800:]
        raise StarterDataError(f"`{what}` failed (exit {done.returncode}): {tail}")
    return done.stdout


def _download_into(cache_dir: Path, cmd: list[str], what: str, pattern: str,
                   check: Callable[[Path], None] | None = None) -> Path:
    """Run a client in a temp folder of the cache, then move the one file matching `pattern` into the cache (after
    `check`, which raises if the file must not be kept)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=cache_dir))
    try:
        _run(cmd, what, cwd=tmp)
        found = sorted(tmp.glob(pattern))
        if len(found) != 1:
            raise StarterDataError(f"`{what}` succeeded but left {len(found)} files matching {pattern} in {tmp}")
        if check is not None:
            check(found[0])
        target = cache_dir / found[0].name
        os.replace(found[0], target)
        return target
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def fetch_pmndrs(cache_dir: str | Path | None = None, version: str = PMNDRS_VERSION) -> Path:
    """The @pmndrs/assets tarball in the cache, fetched with ``npm pack`` if absent (network)."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    cached = cache_dir / f"pmndrs-assets-{version}.tgz"
    if cached.is_file():
        return cached
    npm = _require_tool("npm", f"fetching {PMNDRS_PACKAGE} (install Node.js and npm)")
    spec = f"{PMNDRS_PACKAGE}@{version}"
    return _download_into(cache_dir, [npm, "pack", spec, "--silent"], f"npm pack {spec}", "*.tgz")


def fetch_blender_data(cache_dir: str | Path | None = None) -> Path:
    """The blender-data .deb in the cache, fetched with ``apt-get download`` if absent (network; no root needed)."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    cached = sorted(cache_dir.glob(f"{BLENDER_PACKAGE}_*.deb"))
    if cached:
        return cached[-1]
    apt = _require_tool("apt-get", f"fetching the Debian/Ubuntu package {BLENDER_PACKAGE}")
    try:
        return _download_into(cache_dir, [apt, "download", BLENDER_PACKAGE], f"apt-get download {BLENDER_PACKAGE}",
                              f"{BLENDER_PACKAGE}_*.deb")
    except StarterDataError as err:
        raise StarterDataError(f"{err}\n(if apt does not know the package, run `apt-get update` as root first; "
                               f"it is in Debian main and Ubuntu universe)") from err


def _check_open3d_digest(path: Path) -> None:
    """Refuse a downloaded wheel that is not the pinned file (another build under the same name would change the
    maps silently)."""
    digest = sha256_file(path)
    if digest != OPEN3D_SHA256:
        raise StarterDataError(f"{path.name}: sha256 {digest} is not the pinned {OPEN3D_SHA256}")


def fetch_open3d(cache_dir: str | Path | None = None) -> Path:
    """The pinned open3d-cpu wheel in the cache, fetched with ``pip download`` if absent (network; nothing is
    installed, and version, platform and Python are pinned, so any pip on any machine fetches the same file)."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    cached = cache_dir / OPEN3D_WHEEL
    if cached.is_file():
        return cached
    spec = f"{OPEN3D_PACKAGE}=={OPEN3D_VERSION}"
    cmd = [*PIP_COMMAND, "download", spec, "--no-deps", "--only-binary=:all:", "--platform", OPEN3D_PLATFORM,
           "--python-version", OPEN3D_PYTHON, "--implementation", "cp", "--abi", "cp311", "--quiet",
           "--disable-pip-version-check", "-d", "."]
    return _download_into(cache_dir, cmd, f"pip download {spec} ({OPEN3D_PLATFORM})", OPEN3D_WHEEL,
                          _check_open3d_digest)


# ---------------------------------------------------------------- writing

def record_sources(out_dir: str | Path, entries: Iterable[dict], drop: Iterable[str] = ()) -> Path:
    """Merge entries (keyed by their "file") into ``out_dir/SOURCES.json``, atomically, leaving out the files in
    `drop`; returns its path."""
    path = Path(out_dir) / SOURCES_FILE
    maps: dict[str, dict] = {}
    if path.is_file():
        try:
            maps = {e["file"]: e for e in json.loads(path.read_text())["maps"]}
        except (ValueError, KeyError, TypeError):
            maps = {}  # an unreadable index is rebuilt from what this run writes
    for entry in entries:
        maps[entry["file"]] = entry
    for name in drop:
        maps.pop(name, None)
    doc = {"description": "HDR environment maps of the relightful starter set (lat-long, linear float32 EXR)",
           "maps": [maps[k] for k in sorted(maps)]}
    atomic_write_text(path, json.dumps(doc, indent=2) + "\n")
    return path


def _write_map(out_dir: Path, file_name: str, image: np.ndarray, info: dict) -> dict:
    path = out_dir / file_name
    write_hdr(path, image)
    return {"file": file_name, **info, "height": int(image.shape[0]), "width": int(image.shape[1]),
            "max": float(image.max()), "sha256": sha256_file(path)}


def write_package_maps(out_dir: str | Path, prefix: str, version: str, maps: Sequence[RawMap], package: str,
                       license_: str = POLY_HAVEN, progress: bool = True) -> list[dict]:
    """Clip and write `maps` as ``<prefix>-<name>.exr`` and record them; returns the SOURCES entries."""
    out_dir = Path(out_dir)
    entries = []
    try:
        for raw in tqdm(maps, desc=f"{prefix} maps", unit="map", disable=not progress):
            image, clipped = clip_negatives(raw.image)
            info = {"source": package, "version": version, "original": raw.original, "license": license_,
                    "negatives_clipped": clipped, "raw_min": float(raw.image.min()),
                    "negative_energy_fraction": negative_energy_fraction(raw.image)}
            entries.append(_write_map(out_dir, f"{prefix}-{raw.name}.exr", image, info))
    finally:
        record_sources(out_dir, entries)
    return entries


def write_pmndrs(out_dir: str | Path, cache_dir: str | Path | None = None, progress: bool = True) -> list[dict]:
    """Fetch (or reuse) @pmndrs/assets and write its 18 maps as ``pmndrs-<name>.exr``."""
    version, maps = read_pmndrs_maps(fetch_pmndrs(cache_dir))
    return write_package_maps(out_dir, "pmndrs", version, maps, f"npm:{PMNDRS_PACKAGE}", progress=progress)


def write_blender(out_dir: str | Path, cache_dir: str | Path | None = None, progress: bool = True,
                  skip: Iterable[str] = ()) -> list[dict]:
    """Fetch (or reuse) Debian's blender-data and write its 8 world maps as ``blender-<name>.exr``, but those named in
    `skip` (removed from `out_dir` and SOURCES.json if an earlier run wrote them)."""
    skip = set(skip)
    version, maps = read_blender_maps(fetch_blender_data(cache_dir))
    stale = [f"blender-{name}.exr" for name in sorted(skip)]
    for name in stale:
        (Path(out_dir) / name).unlink(missing_ok=True)
    if stale and (Path(out_dir) / SOURCES_FILE).is_file():
        record_sources(out_dir, [], drop=stale)
    return write_package_maps(out_dir, "blender", version, [m for m in maps if m.name not in skip],
                              f"deb:{BLENDER_PACKAGE}", progress=progress)


def write_open3d(out_dir: str | Path, cache_dir: str | Path | None = None, progress: bool = True) -> list[dict]:
    """Fetch (or reuse) the open3d-cpu wheel and write its 9 skyboxes as ``open3d-<name>.exr`` lat-long maps."""
    version, maps = read_open3d_maps(fetch_open3d(cache_dir))
    return write_package_maps(out_dir, "open3d", version, maps, f"pypi:{OPEN3D_PACKAGE}", OPEN3D_LICENSE, progress)


def write_skies(out_dir: str | Path, n: int, height: int = 256, seed: int = 0, progress: bool = True,
                source: str = "sky") -> list[dict]:
    """Write `n` random skies (`relightful.lighting.sky`) as ``<source>-000.exr``...; same seed, same files. Each sky
    source (`SKY_STREAMS`) draws from its own stream of the seed, so ``sky`` and ``sky_train`` never share a sky."""
    if n < 0 or height < 2:
        raise ValueError(f"need n >= 0 and height >= 2, got n={n}, height={height}")
    if source not in SKY_STREAMS:
        raise ValueError(f"unknown sky source {source!r}; choose from {sorted(SKY_STREAMS)}")
    out_dir = Path(out_dir)
    stream = SKY_STREAMS[source]
    rng = np.random.default_rng(seed if stream is None else [seed, stream])
    entries = []
    try:
        for k in tqdm(range(n), desc=f"{source} skies", unit="map", disable=not progress):
            params = random_sky_params(rng)
            image = sky_envmap(height, **dataclasses.asdict(params))
            info = {"source": "procedural:relightful.lighting.sky (Preetham 1999 sky, spectral sun, noise clouds over "
                              "a CIE overcast sky, Lambertian tinted ground)",
                    "version": relightful.__version__, "original": None, "license": "generated (no third-party rights)",
                    "seed": seed, "stream": stream, "index": k, "params": dataclasses.asdict(params),
                    "unit": "kcd/m^2 (luminance)"}
            entries.append(_write_map(out_dir, f"{source}-{k:03d}.exr", image, info))
    finally:
        record_sources(out_dir, entries)
    return entries


def build_starter_set(out_dir: str | Path = DEFAULT_OUT_DIR, sources: Sequence[str] = DEFAULT_SOURCES,
                      n_skies: int = 32, sky_height: int = 256, seed: int = 0,
                      cache_dir: str | Path | None = None, progress: bool = True,
                      n_train_skies: int = 0) -> list[dict]:
    """Write the starter set into `out_dir` and return its SOURCES entries.

    Each source runs even if another failed; what was written stays written (and listed in SOURCES.json). If any
    source failed, `StarterDataError` is raised at the end naming each failed source and its reason.
    """
    unknown = sorted(set(sources) - set(KNOWN_SOURCES))
    if unknown:
        raise ValueError(f"unknown starter sources {unknown}; choose from {KNOWN_SOURCES}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    duplicates = BLENDER_DUPLICATES if "pmndrs" in sources else {}
    jobs = {"pmndrs": lambda: write_pmndrs(out_dir, cache_dir, progress),
            "blender": lambda: write_blender(out_dir, cache_dir, progress, skip=duplicates),
            "sky": lambda: write_skies(out_dir, n_skies, sky_height, seed, progress),
            "sky_train": lambda: write_skies(out_dir, n_train_skies, sky_height, seed, progress, "sky_train"),
            "open3d": lambda: write_open3d(out_dir, cache_dir, progress)}
    entries, failures = [], []
    for name in sources:
        try:
            entries += jobs[name]()
        except (StarterDataError, InputError, OSError) as err:
            failures.append(f"{name}: {err}")
    if failures:
        raise StarterDataError(f"starter set in {out_dir} is incomplete ({len(entries)} maps written); failed:\n  "
                               + "\n  ".join(failures))
    return entries


def starter_map_ids(sources: Sequence[str] = DEFAULT_SOURCES, n_skies: int = 32, n_train_skies: int = 0) -> list[str]:
    """The map ids (file stems) `build_starter_set` writes for these sources, without fetching or rendering: the
    pinned pmndrs maps, Debian's Blender maps (less the duplicates of pmndrs ones), the skies and the open3d
    skyboxes."""
    ids = []
    if "pmndrs" in sources:
        ids += [f"pmndrs-{name}" for name in PMNDRS_MAPS]
    if "blender" in sources:
        skip = BLENDER_DUPLICATES if "pmndrs" in sources else {}
        ids += [f"blender-{name}" for name in BLENDER_MAPS if name not in skip]
    if "sky" in sources:
        ids += [f"sky-{k:03d}" for k in range(n_skies)]
    if "sky_train" in sources:
        ids += [f"sky_train-{k:03d}" for k in range(n_train_skies)]
    if "open3d" in sources:
        ids += [f"open3d-{name}" for name in OPEN3D_MAPS]
    return sorted(ids)

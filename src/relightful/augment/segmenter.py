"""Automatic person mattes from MediaPipe's selfie segmenter, refined to a soft alpha at the photo's resolution.

The weights (`selfie_segmentation.tflite`, 249 KB, Apache-2.0) come from the npm registry package
`@mediapipe/selfie_segmentation` at setup time (`relightful fetch-weights`, run by `make install` and the images'
builds), checked against a pinned SHA-256, and are read from `weights_dir()`; nothing is downloaded at run time.
The model runs through `ai-edge-litert` (the LiteRT interpreter; pip's `mediapipe` conflicts with numpy 2).

The segmenter sees a 256×256 letterbox of the photo; its probability map is upsampled and refined by a guided
filter (He et al. 2013) with the photo as guide, so the alpha follows the photo's own edges (hair, shoulders)
instead of the 256² grid's stair steps.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import relightful  # noqa: F401  (sets OPENCV_IO_ENABLE_OPENEXR before cv2 is imported)
import cv2
import numpy as np

from relightful.io import atomic_write_bytes

SIDE = 256                  # the model's input square
CONFIDENT = 0.9             # probability above which a pixel surely is the person
MIN_PERSON_FRACTION = 0.01  # less of the photo than this surely a person: no person found


@dataclass(frozen=True)
class WeightsFile:
    """One weights file inside a registry package, pinned by version and content hash."""
    name: str
    url: str
    member: str
    sha256: str
    licence: str


SELFIE_SEGMENTER = WeightsFile(
    name="selfie_segmentation.tflite",
    url="https://registry.npmjs.org/@mediapipe/selfie_segmentation/-/selfie_segmentation-0.1.1675465747.tgz",
    member="package/selfie_segmentation.tflite",
    sha256="8d13b7fae74af625c641226813616a2117bd6bca19eb3b75574621fc08557f27",
    licence="Apache-2.0")


class NoPersonFound(ValueError):
    """The segmenter found no person in the photo."""


class WeightsMissing(RuntimeError):
    """The segmenter's weights are not on this machine (`relightful fetch-weights` puts them there)."""


def weights_dir() -> Path:
    """Where fetched weights live: $RELIGHTFUL_WEIGHTS, else $XDG_CACHE_HOME/relightful (~/.cache/relightful)."""
    if os.environ.get("RELIGHTFUL_WEIGHTS"):
        return Path(os.environ["RELIGHTFUL_WEIGHTS"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "relightful"


@contextmanager
def registry_package(url: str, timeout: float = 60.0):
    """A reader of a registry package's files (name -> bytes), downloaded into memory; the package is not kept."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        archive = response.read()
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        def read(name: str) -> bytes:
            try:
                member = tar.extractfile(name)
            except KeyError:
                member = None
            if member is None:
                raise RuntimeError(f"{url}: no {name} in the package")
            return member.read()

        yield read


def is_stored(target: Path, sha256: str) -> bool:
    return target.is_file() and hashlib.sha256(target.read_bytes()).hexdigest() == sha256


def store_checked(target: Path, data: bytes, sha256: str, source: str) -> Path:
    """Write `data` to `target` atomically if its SHA-256 is the pinned one; else fail naming `source`."""
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise RuntimeError(f"{source} has SHA-256 {digest}, expected {sha256}")
    atomic_write_bytes(target, data)
    return target


def fetch_weights(spec: WeightsFile = SELFIE_SEGMENTER, folder: Path | None = None, timeout: float = 60.0) -> Path:
    """Download `spec`'s package from its registry, check the file's SHA-256 and write it atomically; a file already
    there with the right hash is kept. Returns its path."""
    target = (folder or weights_dir()) / spec.name
    if is_stored(target, spec.sha256):
        return target
    with registry_package(spec.url, timeout) as read:
        data = read(spec.member)
    return store_checked(target, data, spec.sha256, f"{spec.url}: {spec.member}")


@cache
def _interpreter(path: str):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path, num_threads=1)
    interpreter.allocate_tensors()
    return interpreter


def person_probability(image: np.ndarray) -> np.ndarray:
    """(H, W) float32 probability that each pixel is the person, for an (H, W, 3) uint8 RGB photo (256² letterbox,
    upsampled bilinearly)."""
    path = weights_dir() / SELFIE_SEGMENTER.name
    if not path.is_file():
        raise WeightsMissing(f"{path}: the person segmenter's weights are missing; run `relightful fetch-weights` "
                             "(it takes them from the npm registry package @mediapipe/selfie_segmentation)")
    h, w = image.shape[:2]
    scale = SIDE / max(h, w)
    sh, sw = max(1, round(h * scale)), max(1, round(w * scale))
    top, left = (SIDE - sh) // 2, (SIDE - sw) // 2
    small = cv2.resize(np.ascontiguousarray(image[..., :3]), (sw, sh), interpolation=cv2.INTER_AREA)
    square = cv2.copyMakeBorder(small, top, SIDE - sh - top, left, SIDE - sw - left, cv2.BORDER_REPLICATE)
    interpreter = _interpreter(str(path))
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"],
                           (square.astype(np.float32) / 255.0)[None])
    interpreter.invoke()
    prob = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])[0, ..., 0]
    prob = np.ascontiguousarray(prob[top:top + sh, left:left + sw], dtype=np.float32)
    return cv2.resize(prob, (w, h), interpolation=cv2.INTER_LINEAR)


def guided_filter(guide: np.ndarray, source: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """He et al.'s guided filter of `source` (H, W) by a grey `guide` (H, W), both float32 in [0, 1]: the output is
    locally a linear function of the guide, so it takes the guide's edges where `source` is only coarse."""
    box = lambda x: cv2.boxFilter(x, -1, (2 * radius + 1, 2 * radius + 1), borderType=cv2.BORDER_REFLECT)
    mean_i, mean_p = box(guide), box(source)
    cov = box(guide * source) - mean_i * mean_p
    var = box(guide * guide) - mean_i * mean_i
    a = cov / (var + eps)
    b = mean_p - a * mean_i
    return box(a) * guide + box(b)


def segmenter_matte(image: np.ndarray, eps: float = 1e-3) -> np.ndarray:
    """(H, W) float32 alpha in [0, 1] of the person in an (H, W, 3) uint8 RGB photo; `NoPersonFound` when the
    segmenter sees none."""
    prob = person_probability(image)
    if (prob > CONFIDENT).mean() < MIN_PERSON_FRACTION:
        raise NoPersonFound(f"no person found (under {MIN_PERSON_FRACTION:.0%} of the photo is surely one)")
    h, w = prob.shape
    radius = max(2, round(max(h, w) / SIDE * 2))  # about two of the segmenter's pixels
    guide = cv2.cvtColor(np.ascontiguousarray(image[..., :3]), cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
    return np.clip(guided_filter(guide, prob, radius, eps), 0.0, 1.0).astype(np.float32)


__all__ = ["NoPersonFound", "SELFIE_SEGMENTER", "WeightsMissing", "fetch_weights", "guided_filter", "is_stored",
           "person_probability", "registry_package", "segmenter_matte", "store_checked", "weights_dir"]

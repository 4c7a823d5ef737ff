"""Alpha mattes for portraits that come without one.

Two methods, both offline:
- ``segmenter`` (the default): MediaPipe's selfie segmenter run by ai-edge-litert, its weights fetched from the npm
  registry at setup (`relightful fetch-weights`), refined to a soft alpha by a guided filter
  (`relightful.augment.segmenter`).
- ``isnet``: ISNet through onnxruntime, much finer edges at 1024² (3-6 s a photo); its weights are fetched by
  `relightful fetch-weights --isnet` (`relightful.augment.isnet`).
- ``grabcut``: OpenCV's GrabCut, initialised with a head-and-shoulders prior placed on the largest frontal face
  that OpenCV's bundled Haar cascade finds (a centred prior when none is found). The fallback that needs no
  weights: rough on cluttered photos (it keeps background and leaves holes); check its output.
"""

from __future__ import annotations

import relightful  # noqa: F401  (sets OPENCV_IO_ENABLE_OPENEXR before cv2 is imported)
import cv2
import numpy as np

class MattingUnavailable(RuntimeError):
    """The requested matting method cannot run here (its weights are missing)."""


def _largest_face(gray: np.ndarray) -> tuple[int, int, int, int] | None:
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    h, w = gray.shape
    faces = cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(max(8, w // 16), max(8, h // 16)))
    if len(faces) == 0:
        return None
    return tuple(int(v) for v in max(faces, key=lambda f: f[2] * f[3]))


def person_prior(shape: tuple[int, int], face: tuple[int, int, int, int] | None) -> np.ndarray:
    """GrabCut's initial labels (uint8 GC_* codes): a head ellipse and a torso that widens below the chin are
    probable foreground, their cores (face centre, a strip down the neck and chest) sure foreground, the region
    around them probable background, the image outside the person's reach sure background."""
    h, w = shape
    if face is None:  # no face found: assume a centred, upright head-and-shoulders framing
        fw = fh = 0.3 * min(h, w)
        fx, fy = (w - fw) / 2, 0.15 * h
    else:
        fx, fy, fw, fh = face
    cx, cy = fx + fw / 2, fy + fh / 2
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    labels = np.full((h, w), cv2.GC_BGD, np.uint8)
    reach = (yy >= fy - 0.6 * fh) & (np.abs(xx - cx) <= 2.3 * fw)
    labels[reach] = cv2.GC_PR_BGD
    head = ((yy - cy) / (0.75 * fh)) ** 2 + ((xx - cx) / (0.65 * fw)) ** 2 <= 1
    below = np.clip((yy - fy - fh) / fh, 0, 1)
    torso = (yy >= fy + fh) & (np.abs(xx - cx) <= fw * (0.5 + 1.2 * below))
    labels[head | torso] = cv2.GC_PR_FGD
    core = ((yy - cy) / (0.4 * fh)) ** 2 + ((xx - cx) / (0.3 * fw)) ** 2 <= 1
    labels[core | ((yy >= fy + fh) & (np.abs(xx - cx) <= 0.2 * fw))] = cv2.GC_FGD
    return labels


def _clean(fg: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """Keep the connected parts touching the sure-foreground seed and fill their holes (GrabCut leaves islands
    in the background and holes where the subject's colours resemble it)."""
    _, parts = cv2.connectedComponents(fg.astype(np.uint8), connectivity=8)
    keep = np.isin(parts, np.unique(parts[seed & fg])) & (parts > 0)
    _, outside = cv2.connectedComponents((~keep).astype(np.uint8), connectivity=4)
    border = np.unique(np.concatenate([outside[0], outside[-1], outside[:, 0], outside[:, -1]]))
    return keep | ~np.isin(outside, border[border > 0])


def grabcut_matte(image: np.ndarray, iterations: int = 5, work_size: int = 512, feather_px: float = 1.0) -> np.ndarray:
    """(H, W) float32 matte in [0, 1] of the person in an (H, W, 3) uint8 RGB image, without any network or weights.

    GrabCut runs at most `work_size` pixels on the long side (its cost grows with the pixel count); the hard mask is
    upsampled and feathered by a Gaussian of `feather_px` output pixels, so edges are soft rather than stair-stepped.
    """
    h, w = image.shape[:2]
    scale = min(1.0, work_size / max(h, w))
    small = image
    if scale < 1.0:
        small = cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    bgr = np.ascontiguousarray(small[..., ::-1])
    labels = person_prior(small.shape[:2], _largest_face(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)))
    seed = labels == cv2.GC_FGD
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(0)  # GrabCut's k-means initialisation draws from OpenCV's global generator
    cv2.grabCut(bgr, labels, None, bgd, fgd, iterations, cv2.GC_INIT_WITH_MASK)
    mask = _clean(np.isin(labels, (cv2.GC_FGD, cv2.GC_PR_FGD)), seed).astype(np.float32)
    if scale != 1.0:
        mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_LINEAR)
    if feather_px > 0:
        mask = cv2.GaussianBlur(mask, (0, 0), feather_px)
    return np.clip(mask, 0.0, 1.0).astype(np.float32)


def segmenter_matte(image: np.ndarray) -> np.ndarray:
    """(H, W) float32 matte of the person in a uint8 RGB photo by the selfie segmenter; `NoPersonFound` (a
    ValueError) when it sees none, `MattingUnavailable` when its weights were never fetched."""
    from relightful.augment.segmenter import WeightsMissing, segmenter_matte as segment

    try:
        return segment(image)
    except WeightsMissing as err:
        raise MattingUnavailable(str(err)) from None


def isnet_matte(image: np.ndarray) -> np.ndarray:
    """(H, W) float32 matte of the salient subject (the person, and what they hold) by ISNet."""
    from relightful.augment.isnet import isnet_matte as segment
    from relightful.augment.segmenter import WeightsMissing

    try:
        return segment(image)
    except WeightsMissing as err:
        raise MattingUnavailable(str(err)) from None


METHODS = {"segmenter": segmenter_matte, "isnet": isnet_matte, "grabcut": grabcut_matte}


def compute_matte(image: np.ndarray, method: str) -> np.ndarray:
    """The matte of an (H, W, 3) uint8 RGB portrait by `method` (a key of METHODS)."""
    if method not in METHODS:
        raise ValueError(f"unknown matting method {method!r}; expected one of {sorted(METHODS)}")
    return METHODS[method](image)


__all__ = ["METHODS", "MattingUnavailable", "compute_matte", "grabcut_matte", "isnet_matte", "person_prior",
           "segmenter_matte"]
